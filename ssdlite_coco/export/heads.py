"""The head-only net: the deploy net cut before PriorBox and DetectionOutput, for toolchains without them.

It ends at two outputs, both from the layers the deploy net already has plus one Reshape each:

* ``loc``: ``[1, num_priors, 4]``, the concatenated ``mbox_loc`` (CENTER_SIZE offsets, not yet decoded);
* ``scores``: ``[1, num_priors, num_classes]``, the class scores after the net's Sigmoid or Softmax
  (column 0 is the background).

The priors, which depend only on the input and feature-map sizes, are a constant (``priors.npy``,
``[2, num_priors, 4]``: boxes ``xmin ymin xmax ymax`` normalized to the input, then their variances),
and ``ssdlite_coco.export.decode.decode_detections`` turns the two outputs and the priors into the
rows DetectionOutput gives.
"""

from __future__ import annotations

from typing import Any

from ssdlite_coco.caffe_tools.prototxt import single_layer
from ssdlite_coco.common.errors import SsdliteError

LOC, SCORES = "loc", "scores"
ACTIVATIONS = ("Sigmoid", "Softmax")


class HeadsError(SsdliteError):
    """The deploy net cannot be cut into a head-only net; the message names the net and the fix."""


def _producers(layers) -> dict[str, list[int]]:
    producers: dict[str, list[int]] = {}
    for index, layer in enumerate(layers):
        for top in layer.top:
            producers.setdefault(top, []).append(index)
    return producers


def needed_layers(layers, blobs: list[str]) -> set[int]:
    """Indices of the layers that ``blobs`` depend on (in-place layers included)."""
    producers = _producers(layers)
    needed: set[int] = set()
    pending = [(blob, len(layers)) for blob in blobs]
    while pending:
        blob, before = pending.pop()
        for index in producers.get(blob, []):
            if index < before and index not in needed:
                needed.add(index)
                pending.extend((bottom, index) for bottom in layers[index].bottom)
                pending.extend((top, index) for top in layers[index].top if top in layers[index].bottom)
    return needed


def detection_output_settings(net_param, source: str) -> dict[str, Any]:
    """DetectionOutput's parameters, as ``decode_detections`` takes them."""
    layer = single_layer(net_param, "DetectionOutput", source)
    param = layer.detection_output_param
    code_name = param.DESCRIPTOR.fields_by_name["code_type"].enum_type.values_by_number[param.code_type].name
    nms = param.nms_param
    return {
        "num_classes": int(param.num_classes),
        "share_location": bool(param.share_location),
        "background_label_id": int(param.background_label_id),
        "code_type": code_name,
        "variance_encoded_in_target": bool(param.variance_encoded_in_target),
        "confidence_threshold": float(param.confidence_threshold) if param.HasField("confidence_threshold") else None,
        "nms": param.HasField("nms_param"),
        "nms_threshold": float(nms.nms_threshold),
        "top_k": int(nms.top_k) if nms.HasField("top_k") else -1,
        "eta": float(nms.eta),
        "keep_top_k": int(param.keep_top_k),
    }


def _has_activation(layers, indices: set[int]) -> bool:
    return any(layers[index].type in ACTIVATIONS for index in indices)


def heads_net(deploy_param, source: str):
    """The head-only NetParameter of a (folded) deploy net: its loc and score layers, then LOC and SCORES."""
    from caffe.proto import caffe_pb2

    detection = single_layer(deploy_param, "DetectionOutput", source)
    if len(detection.bottom) != 3:
        raise HeadsError(f"{source}: DetectionOutput {detection.name!r} needs 3 bottoms (loc, conf, priors)")
    settings = detection_output_settings(deploy_param, source)
    if not settings["share_location"] or settings["code_type"] != "CENTER_SIZE":
        raise HeadsError(f"{source}: only share_location: true with code_type CENTER_SIZE can be cut into heads")
    loc, conf = detection.bottom[0], detection.bottom[1]
    layers = list(deploy_param.layer)
    keep = needed_layers(layers, [loc, conf])
    if not _has_activation(layers, needed_layers(layers, [conf])):
        raise HeadsError(f"{source}: {conf!r} has no Sigmoid or Softmax before DetectionOutput; scores would be logits")
    produced = {top for index in keep for top in layers[index].top} | set(deploy_param.input)
    for index, layer in enumerate(layers):  # keep Silence layers of kept blobs (the upstream slices' margins)
        if layer.type == "Silence" and set(layer.bottom) <= produced:
            keep.add(index)
    out = caffe_pb2.NetParameter()
    out.CopyFrom(deploy_param)
    out.name = f"{deploy_param.name or 'ssd'}-heads"
    del out.layer[:]
    for index, layer in enumerate(layers):
        if index in keep:
            out.layer.add().CopyFrom(layer)
    for name, bottom, last in ((LOC, loc, 4), (SCORES, conf, settings["num_classes"])):
        reshape = out.layer.add()
        reshape.name, reshape.type = name, "Reshape"
        reshape.bottom.append(bottom)
        reshape.top.append(name)
        reshape.reshape_param.shape.dim.extend([0, -1, last])
    return out
