"""Deploy export: fold BatchNorm (and the Scale after it) into the convolution before them.

For a convolution ``y = W x + b`` followed by Caffe's ``BatchNorm`` (blobs: mean·s, var·s, s) and
``Scale`` (gamma, beta), inference computes ``gamma (y - mean) / sqrt(var + eps) + beta``, which is the
convolution with ``W' = W a`` and ``b' = (b - mean) a + beta`` where ``a = gamma / sqrt(var + eps)``
per output channel. The folded net has no BatchNorm/Scale layers left after convolutions: fewer
layers for edge toolchains, the same outputs up to float rounding (``fold_check`` checks it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ssdlite_coco.caffe_tools.prototxt import format_prototxt, read_net
from ssdlite_coco.caffe_tools.weights import copy_weights_by_name, read_caffemodel
from ssdlite_coco.common.atomic import atomic_path, atomic_write_text
from ssdlite_coco.common.errors import SsdliteError


class ExportError(SsdliteError):
    """The deploy net or its weights cannot be folded; the message names the file and the fix."""


@dataclass(frozen=True)
class FoldedLayer:
    convolution: str
    batch_norm: str
    scale: str | None


def _readers(layers, blob: str, exclude: set[int]) -> list[int]:
    return [i for i, layer in enumerate(layers) if i not in exclude and blob in layer.bottom]


def fold_batchnorm(net_param, params: dict[str, list[np.ndarray]]):
    """Fold Convolution → BatchNorm (→ Scale) chains. Returns (new NetParameter, new params, folded list).

    ``params`` maps layer name → its blobs (numpy). A chain is folded when BatchNorm directly follows the
    convolution and reads its output, and no other layer reads the blobs in between.
    """
    from caffe.proto import caffe_pb2

    layers = list(net_param.layer)
    if len(net_param.layers):
        raise ExportError("the deploy net uses the legacy V1 'layers' field; upgrade it with upgrade_net_proto_text")
    new_params = {name: [array.copy() for array in arrays] for name, arrays in params.items()}
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    folded: list[FoldedLayer] = []
    skip: set[int] = set()
    for index, layer in enumerate(layers):
        if index in skip:
            continue
        chain = _chain_at(layers, index)
        if chain is None:
            out.layer.add().CopyFrom(layer)
            continue
        bn_index, scale_index = chain
        conv, bn = layer, layers[bn_index]
        scale = layers[scale_index] if scale_index is not None else None
        weight = params[conv.name][0].astype(np.float64)
        bias = (
            params[conv.name][1].astype(np.float64)
            if conv.convolution_param.bias_term and len(params[conv.name]) > 1
            else np.zeros(weight.shape[0])
        )
        mean, var, factor = (params[bn.name][i].astype(np.float64) for i in range(3))
        s = float(factor.reshape(-1)[0])
        s = 0.0 if s == 0 else 1.0 / s
        mean, var = mean.reshape(-1) * s, var.reshape(-1) * s
        eps = batchnorm_eps(bn)
        if mean.size != weight.shape[0]:
            raise ExportError(
                f"BatchNorm {bn.name!r} has {mean.size} channels but convolution {conv.name!r} "
                f"has {weight.shape[0]} outputs"
            )
        gamma, beta = np.ones_like(mean), np.zeros_like(mean)
        if scale is not None:
            gamma = params[scale.name][0].astype(np.float64).reshape(-1)
            if scale.scale_param.bias_term and len(params[scale.name]) > 1:
                beta = params[scale.name][1].astype(np.float64).reshape(-1)
        a = gamma / np.sqrt(var + eps)
        new_weight = weight * a.reshape(-1, *([1] * (weight.ndim - 1)))
        new_bias = (bias - mean) * a + beta
        new_conv = out.layer.add()
        new_conv.CopyFrom(conv)
        del new_conv.top[:]
        new_conv.top.append((scale or bn).top[0])
        new_conv.convolution_param.bias_term = True
        new_conv.convolution_param.ClearField("bias_filler")
        new_params[conv.name] = [new_weight.astype(np.float32), new_bias.astype(np.float32)]
        for name in (bn.name, scale.name if scale is not None else None):
            if name is not None:
                new_params.pop(name, None)
        skip.update(i for i in (bn_index, scale_index) if i is not None)
        folded.append(FoldedLayer(conv.name, bn.name, scale.name if scale is not None else None))
    return out, new_params, folded


def batchnorm_eps(layer) -> float:
    """The ``eps`` Caffe's BatchNorm adds to the variance (1e-5, its default, when unset)."""
    return layer.batch_norm_param.eps if layer.batch_norm_param.HasField("eps") else 1e-5


def _chain_at(layers, index: int) -> tuple[int, int | None] | None:
    conv = layers[index]
    if conv.type != "Convolution" or len(conv.top) != 1 or index + 1 >= len(layers):
        return None
    bn = layers[index + 1]
    if bn.type != "BatchNorm" or list(bn.bottom) != [conv.top[0]] or len(bn.top) != 1:
        return None
    chain = {index, index + 1}
    if bn.top[0] != conv.top[0] and _readers(layers, conv.top[0], chain):
        return None  # the un-normalized output is used elsewhere
    scale_index = None
    if index + 2 < len(layers):
        scale = layers[index + 2]
        if scale.type == "Scale" and list(scale.bottom) == [bn.top[0]] and len(scale.top) == 1:
            if scale.top[0] == bn.top[0] or not _readers(layers, bn.top[0], chain | {index + 2}):
                scale_index = index + 2
    return index + 1, scale_index


# ------------------------------------------------------------------------------------------ with pycaffe
def load_net_params(prototxt: str | os.PathLike, weights: str | os.PathLike):
    """A pycaffe TEST net of ``prototxt`` with ``weights`` copied by layer name (every layer must be filled)."""
    import caffe

    net = caffe.Net(str(prototxt), caffe.TEST)
    rows = copy_weights_by_name(net, read_caffemodel(weights))
    unfilled = [row for row in rows if row.status in ("shape mismatch", "not in weights")]
    if unfilled:
        shown = ", ".join(f"{row.layer} ({row.status})" for row in unfilled[:3])
        raise ExportError(
            f"{weights} does not fill {len(unfilled)} layers of {prototxt}: {shown}; export weights "
            "trained for this net"
        )
    return net


def net_params(net) -> dict[str, list[np.ndarray]]:
    return {name: [blob.data.copy() for blob in blobs] for name, blobs in net.params.items()}


def save_net(net_param, params: dict[str, list[np.ndarray]], out_prototxt, out_weights) -> None:
    """Write ``net_param`` and ``params`` as a prototxt and a caffemodel (each atomically), through pycaffe."""
    import caffe

    text = format_prototxt(net_param)
    with atomic_path(out_weights) as tmp_weights:
        tmp_prototxt = tmp_weights.parent / f"{tmp_weights.name}.prototxt"
        try:
            tmp_prototxt.write_text(text)
            net = caffe.Net(str(tmp_prototxt), caffe.TEST)
        finally:
            tmp_prototxt.unlink(missing_ok=True)
        for name, arrays in params.items():
            if name not in net.params:
                continue
            for blob, array in zip(net.params[name], arrays, strict=True):
                blob.data[...] = array
        net.save(str(tmp_weights))
    atomic_write_text(out_prototxt, text)


def fold_deploy(deploy_prototxt: str | os.PathLike, weights: str | os.PathLike):
    """(folded NetParameter, its params, folded chains) of a deploy net and its trained weights."""
    net_param = read_net(deploy_prototxt)
    source = load_net_params(deploy_prototxt, weights)
    folded_param, folded_params, folded = fold_batchnorm(net_param, net_params(source))
    if not folded:
        raise ExportError(f"{deploy_prototxt}: no Convolution → BatchNorm chain to fold")
    return folded_param, folded_params, folded


def input_shape(prototxt: str | os.PathLike) -> tuple[int, int, int]:
    """(channels, height, width) of a deploy net's Input layer."""
    net = read_net(prototxt)
    for layer in net.layer:
        if layer.type == "Input" and layer.input_param.shape:
            dims = list(layer.input_param.shape[0].dim)
            if len(dims) == 4:
                return dims[1], dims[2], dims[3]
    if len(net.input_shape) and len(net.input_shape[0].dim) == 4:
        return tuple(net.input_shape[0].dim[1:])
    raise ExportError(f"{prototxt}: no 4-D Input layer; a deploy net starts with an Input layer (N, C, H, W)")
