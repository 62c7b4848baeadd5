"""Rewrites that make known runtimes compute what Caffe computes, without changing the maths.

* ``one_by_one_input``: a convolution whose input is 1x1 and whose kernel (odd, dilation 1) is
  padded by half its size sees only its centre tap; everything else multiplies zero padding. It becomes
  a 1x1 convolution (pad 0, stride 1) with the centre tap's weights, exactly the same output. OpenCV DNN
  4.7 to 4.14 returns garbage (up to 1e37, no error) for the 3x3 pad-1 depthwise form on a 1x1 input;
  the SSDLite heads on the last (1x1) feature map are that case.
* ``unique_name``: layers that share a name (the upstream SSDLite prototxt names every Slice layer
  ``slice``) get their top's name; converters that key layers by name otherwise mix them up.

Each rewrite is reported as a ``Rewrite`` (layer, kind, what changed) in the export's report.

``relu6_as_clip`` makes the ``caffe-clip/`` variant rather than rewriting the main export: every ReLU6
(not a BVLC Caffe layer type; an importer that does not know it drops it without a word) written as
BVLC Caffe's ``Clip`` with ``clip_param { min: 0 max: 6 }``, the same function.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ssdlite_coco.common.errors import SsdliteError


@dataclass(frozen=True)
class Rewrite:
    layer: str
    kind: str
    detail: str


def _pair(repeated, single_h, single_w, has_h: bool, default: int) -> tuple[int, int]:
    if has_h:
        return int(single_h), int(single_w)
    values = list(repeated)
    if not values:
        return default, default
    return int(values[0]), int(values[-1])


def kernel_geometry(param) -> dict[str, tuple[int, int]]:
    """(h, w) kernel, pad, stride and dilation of a ConvolutionParameter, with Caffe's defaults."""
    return {
        "kernel": _pair(param.kernel_size, param.kernel_h, param.kernel_w, param.HasField("kernel_h"), 1),
        "pad": _pair(param.pad, param.pad_h, param.pad_w, param.HasField("pad_h"), 0),
        "stride": _pair(param.stride, param.stride_h, param.stride_w, param.HasField("stride_h"), 1),
        "dilation": _pair(param.dilation, 0, 0, False, 1),
    }


def centre_tap_applies(param, input_hw: tuple[int, int]) -> bool:
    """Whether a convolution on an ``input_hw`` input only ever sees its kernel's centre tap."""
    geometry = kernel_geometry(param)
    (kh, kw), (ph, pw) = geometry["kernel"], geometry["pad"]
    if tuple(input_hw) != (1, 1) or geometry["dilation"] != (1, 1) or (kh, kw) == (1, 1):
        return False
    return kh % 2 == 1 and kw % 2 == 1 and (ph, pw) == (kh // 2, kw // 2)


def rewrite_one_by_one_inputs(net_param, params: dict[str, list[np.ndarray]], blob_shapes: dict[str, tuple]):
    """Rewrite every convolution on a 1x1 input as its centre tap. Returns (rewrites); edits in place."""
    rewrites = []
    for layer in net_param.layer:
        if layer.type != "Convolution" or len(layer.bottom) != 1:
            continue
        shape = blob_shapes.get(layer.bottom[0])
        if shape is None or len(shape) != 4 or not centre_tap_applies(layer.convolution_param, shape[2:]):
            continue
        param = layer.convolution_param
        (kh, kw) = kernel_geometry(param)["kernel"]
        for field in ("kernel_size", "pad", "stride", "kernel_h", "kernel_w", "pad_h", "pad_w", "stride_h", "stride_w"):
            param.ClearField(field)
        param.kernel_size.append(1)
        weight = params[layer.name][0]
        params[layer.name][0] = np.ascontiguousarray(weight[:, :, kh // 2 : kh // 2 + 1, kw // 2 : kw // 2 + 1])
        rewrites.append(
            Rewrite(
                layer.name,
                "one_by_one_input",
                f"{kh}x{kw} pad {kh // 2} convolution (group {param.group}) on a 1x1 input -> 1x1 convolution "
                "with the centre tap (exact; OpenCV DNN >= 4.7 computes the padded form wrongly)",
            )
        )
    return rewrites


def rename_duplicate_layers(net_param, with_weights: set[str] = frozenset()) -> list[Rewrite]:
    """Give weightless layers that share a name a unique one (``name/top``); edits in place.

    Layers named in ``with_weights`` keep their name: weights are found by layer name.
    """
    counts = Counter(layer.name for layer in net_param.layer)
    taken = set(counts)
    rewrites = []
    for index, layer in enumerate(net_param.layer):
        if counts[layer.name] < 2 or layer.name in with_weights:
            continue
        candidate = f"{layer.name}/{layer.top[0]}" if layer.top else f"{layer.name}_{index}"
        while candidate in taken:
            candidate = f"{candidate}_{index}"
        taken.add(candidate)
        rewrites.append(Rewrite(candidate, "unique_name", f"layer {index} was named {layer.name!r} like others"))
        layer.name = candidate
    return rewrites


def relu6_as_clip(net_param):
    """A copy of ``net_param`` with every ReLU6 layer as ``Clip`` (min 0, max its threshold); same names and blobs."""
    clipped = type(net_param)()
    clipped.CopyFrom(net_param)
    for layer in clipped.layer:
        if layer.type != "ReLU6":
            continue
        relu6 = layer.relu6_param
        if relu6.negative_slope != 0 or relu6.threshold <= 0:
            raise SsdliteError(
                f"ReLU6 layer {layer.name!r} (negative_slope {relu6.negative_slope}, threshold {relu6.threshold}) "
                "is not a Clip: only negative_slope 0 and a positive threshold are"
            )
        layer.type = "Clip"
        layer.clip_param.min, layer.clip_param.max = 0.0, relu6.threshold
        layer.ClearField("relu6_param")
    return clipped
