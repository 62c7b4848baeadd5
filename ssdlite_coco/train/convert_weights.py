"""ImageNet MobileNetV2 weights (torchvision, shicai) converted into the generated net's backbone.

    report = convert_weights("torchvision", "mobilenet_v2-b0353104.pth", "results/model/train.prototxt",
                             "resources/weights/initial_converted.caffemodel")

Every backbone convolution of the net (``ssdlite_coco.model.mobilenetv2.backbone_units``) receives the
source unit of the same structural key (``weight_sources``); shapes must agree (same width multiplier).
What is exact and what is not:

- the input normalisation: the net reads x = (pixel - 127.5) * 0.007843 in BGR; the source's normalisation
  (per-channel mean/std, RGB for torchvision) is an affine map of x, folded into the first convolution
  (weights scaled per input channel, channels reordered, the offset into the BatchNorm mean or the bias).
  Exact everywhere except at the border of the first convolution: its zero padding is x = 0 here, a
  mid-grey pixel, where the source padded with its own zero (the mean pixel). Measured in
  ``tests/test_convert_weights.py`` and ``config/README.md``.
- BatchNorm: Caffe BatchNorm (mean, variance, moving-average factor 1) + Scale (gamma, beta), or folded into
  the convolution when the net has ``model.backbone_bn: folded``. A net epsilon other than the source's is
  compensated in gamma (exact with global statistics; set ``model.bn_eps`` to the source's to avoid it).
- the classifier is dropped; extra layers and heads stay at their fillers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssdlite_coco.caffe_tools.prototxt import read_net
from ssdlite_coco.caffe_tools.weights import write_caffemodel
from ssdlite_coco.common.atomic import atomic_write_text
from ssdlite_coco.model.mobilenetv2 import backbone_units
from ssdlite_coco.model.nets import MEAN_VALUE, SCALE
from ssdlite_coco.train.weight_sources import (
    BatchNorm,
    InputNormalization,
    Source,
    SourceWeightsError,
    Unit,
    read_source,
)


class ConversionError(SourceWeightsError):
    """Weights that do not fill the net's backbone; the message names what is missing or mismatched."""


@dataclass(frozen=True)
class NetUnit:
    key: str
    name: str
    weight_shape: tuple[int, ...]
    bias: bool
    bn: bool
    eps: float
    stride: int


def _net_normalization(net) -> tuple[float, float]:
    """(mean, scale) of the net's data layer; the project's 127.5 / 0.007843 for an Input layer."""
    for layer in net.layer:
        if layer.HasField("transform_param"):
            means = list(layer.transform_param.mean_value)
            if len(set(means)) > 1:
                raise ConversionError(f"data layer {layer.name!r} has per-channel means {means}; use a generated net")
            return (means[0] if means else 0.0), layer.transform_param.scale or 1.0
    return MEAN_VALUE, SCALE


def net_backbone(net, source: str) -> list[NetUnit]:
    """The net's backbone convolutions with the weight shapes they expect (a chain: stem input 3 channels)."""
    layers = {layer.name: layer for layer in net.layer}
    units, channels = [], 3
    for key, name in backbone_units(first_block_expand="conv/expand" in layers):
        layer = layers.get(name)
        if layer is None or layer.type != "Convolution":
            raise ConversionError(f"{source}: no backbone convolution {name!r}; give a net made by rule make_model")
        param = layer.convolution_param
        group = param.group or 1
        kernel = param.kernel_size[0] if len(param.kernel_size) else 1
        bn_layer = layers.get(f"{name}/bn")
        eps = bn_layer.batch_norm_param.eps if bn_layer is not None else 0.0
        shape = (param.num_output, channels // group, kernel, kernel)
        stride = param.stride[0] if len(param.stride) else 1
        units.append(NetUnit(key, name, shape, param.bias_term, bn_layer is not None, eps, stride))
        channels = param.num_output
    return units


def fold_input(
    unit: Unit, normalization: InputNormalization, mean: float, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """The first convolution on the net's input x (BGR): its weights and the per-output offset W * b."""
    # x_source[c] = alpha[c] * (x / scale + mean) + beta[c] = a[c] * x + b[c], per source channel c
    a = np.array(normalization.alpha) / scale
    b = np.array(normalization.alpha) * mean + np.array(normalization.beta)
    weight = unit.weight * a[None, :, None, None]
    offset = (unit.weight * b[None, :, None, None]).sum(axis=(1, 2, 3))
    if normalization.order == "RGB":  # net channel k (B, G, R) reads source channel 2 - k
        weight = weight[:, ::-1]
    return np.ascontiguousarray(weight), offset


def unit_layers(target: NetUnit, weight: np.ndarray, bias: np.ndarray, bn: BatchNorm | None) -> dict:
    """The Caffe layers of one unit: conv (+ BatchNorm + Scale), or a folded conv with bias."""
    out = weight.shape[0]
    if bn is None:  # a source convolution without BatchNorm: identity statistics
        bn = BatchNorm(np.zeros(out), np.ones(out), np.ones(out), np.zeros(out), 0.0)
    inv_std = 1.0 / np.sqrt(bn.var + bn.eps)
    if not target.bn:
        folded_w = weight * (bn.gamma * inv_std)[:, None, None, None]
        folded_b = (bias - bn.mean) * bn.gamma * inv_std + bn.beta
        return {target.name: ("Convolution", [folded_w, folded_b])}
    gamma = bn.gamma * np.sqrt(bn.var + target.eps) * inv_std  # = gamma when the epsilons agree
    conv = [weight] + ([np.zeros(out)] if target.bias else [])
    return {
        target.name: ("Convolution", conv),
        f"{target.name}/bn": ("BatchNorm", [bn.mean - bias, bn.var, np.ones(1)]),
        f"{target.name}/scale": ("Scale", [gamma, bn.beta]),
    }


def _check_coverage(source: Source, targets: list[NetUnit], weights: str) -> None:
    keys = {target.key for target in targets}
    missing = [target for target in targets if target.key not in source.units]
    if missing:
        raise ConversionError(
            f"{weights} cover {len(targets) - len(missing)} of {len(targets)} backbone convolutions; missing: "
            + ", ".join(f"{t.name} ({t.key})" for t in missing[:8])
            + (" ..." if len(missing) > 8 else "")
            + "; give complete MobileNetV2 ImageNet weights"
        )
    extra = sorted(set(source.units) - keys)
    if extra:
        hint = "; set model.backbone_layout: shicai" if "block0/expand" in extra else ""
        raise ConversionError(
            f"{weights} have backbone layers the net lacks: "
            + ", ".join(f"{source.units[k].origin} ({k})" for k in extra)
            + f"{hint} (the architectures differ)"
        )
    for target in targets:
        shape = source.units[target.key].weight.shape
        if tuple(shape) != target.weight_shape:
            raise ConversionError(
                f"{weights}: {source.units[target.key].origin} has shape {'x'.join(map(str, shape))}, the net's "
                f"{target.name} {'x'.join(map(str, target.weight_shape))}; set model.width to the weights' width "
                f"multiplier (their stem has {source.units['stem'].weight.shape[0]} channels)"
            )


def _check_strides(source: Source, targets: list[NetUnit], weights: str) -> None:
    layout = "shicai" if "block0/expand" in source.units else "torchvision"
    for target in targets:
        unit = source.units[target.key]
        if unit.stride != target.stride:
            raise ConversionError(
                f"{weights}: {unit.origin} has stride {unit.stride}, the net's {target.name} {target.stride} "
                f"(another MobileNetV2 variant); set model.backbone_layout: {layout}"
            )


def _warnings(fmt: str, source: Source, net, targets: list[NetUnit]) -> list[str]:
    warnings = []
    types = {layer.type for layer in net.layer}
    if source.activation == "relu" and "ReLU6" in types:
        warnings.append(
            f"{fmt} weights were trained with ReLU, this net uses ReLU6 (clips activations above 6): "
            "set model.activation: relu to keep the ImageNet backbone's function"
        )
    if source.activation == "relu6" and "ReLU6" not in types:
        warnings.append(f"{fmt} weights were trained with ReLU6, this net uses ReLU: set model.activation: relu6")
    if any(layer.type == "Slice" and layer.name.endswith("/slice_h") for layer in net.layer):
        warnings.append("model.padding tf shifts stride-2 convolutions by a pixel from the source's symmetric padding")
    eps = {unit.bn.eps for unit in source.units.values() if unit.bn is not None}
    if any(t.bn and abs(t.eps - e) > 1e-12 for t in targets for e in eps):
        warnings.append(
            f"BatchNorm eps of the net ({targets[0].eps:g}) differs from the weights' "
            f"({', '.join(f'{e:g}' for e in sorted(eps))}): compensated in the Scale gamma "
            "(exact with global statistics); set model.bn_eps to match"
        )
    return warnings


def coverage_rows(net, targets: list[NetUnit], layers: dict, source: Source) -> list[dict[str, str]]:
    """One row per net layer with parameters: backbone layers copied, the rest left at their fillers."""
    origins = {t.name: source.units[t.key].origin for t in targets}
    backbone = {name for t in targets for name in (t.name, f"{t.name}/bn", f"{t.name}/scale")}
    rows = []
    for layer in net.layer:
        if layer.type not in ("Convolution", "BatchNorm", "Scale", "InnerProduct"):
            continue
        if layer.name in layers:
            base = layer.name.rsplit("/", 1)[0] if layer.name not in origins else layer.name
            rows.append({"layer": layer.name, "part": "backbone", "status": "copied", "from": origins.get(base, "")})
        else:
            part = "backbone" if layer.name in backbone else "extras/heads"
            rows.append({"layer": layer.name, "part": part, "status": "filler", "from": ""})
    rows += [{"layer": "-", "part": "classifier", "status": "dropped", "from": name} for name in source.dropped]
    return rows


def format_coverage(report: dict[str, Any]) -> str:
    cells = [("layer", "part", "status", "from")]
    cells += [(r["layer"], r["part"], r["status"], r["from"]) for r in report["rows"]]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    b = report["backbone"]
    lines.append(
        f"backbone: {b['copied']}/{b['expected']} layers copied ({b['convolutions']} convolutions); "
        f"extras and heads left at their fillers: {report['fillers']} layers; classifier dropped: "
        f"{len([r for r in report['rows'] if r['status'] == 'dropped'])} blobs"
    )
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def _float64(unit: Unit) -> Unit:
    """The unit in float64, so that folding adds no rounding of its own (the output is float32)."""
    bn = unit.bn
    if bn is not None:
        bn = BatchNorm(*(np.asarray(a, np.float64) for a in (bn.mean, bn.var, bn.gamma, bn.beta)), bn.eps)
    bias = None if unit.bias is None else np.asarray(unit.bias, np.float64)
    return Unit(np.asarray(unit.weight, np.float64), bias, bn, unit.origin)


def convert_source(fmt: str, source: Source, net, weights: str, net_source: str) -> tuple[dict, dict[str, Any]]:
    """The Caffe layers for ``net``'s backbone from ``source``, and the coverage report."""
    targets = net_backbone(net, net_source)
    _check_coverage(source, targets, weights)
    _check_strides(source, targets, weights)
    mean, scale = _net_normalization(net)
    layers: dict = {}
    for target in targets:
        unit = _float64(source.units[target.key])
        weight, bias = unit.weight, unit.bias if unit.bias is not None else np.zeros(unit.weight.shape[0])
        if target.key == "stem":
            weight, offset = fold_input(unit, source.normalization, mean, scale)
            bias = bias + offset
        layers.update(unit_layers(target, weight, bias, unit.bn))
    rows = coverage_rows(net, targets, layers, source)
    report = {
        "format": fmt,
        "weights": weights,
        "net": net_source,
        "backbone": {
            "copied": sum(r["part"] == "backbone" and r["status"] == "copied" for r in rows),
            "expected": sum(r["part"] == "backbone" for r in rows),
            "convolutions": len(targets),
        },
        "fillers": sum(r["status"] == "filler" for r in rows),
        "input": {"net_mean": mean, "net_scale": scale, "source": source.normalization.__dict__},
        "warnings": _warnings(fmt, source, net, targets),
        "rows": rows,
    }
    return layers, report


def convert_weights(
    fmt: str,
    weights: str | os.PathLike,
    net_path: str | os.PathLike,
    out: str | os.PathLike,
    coverage_json: str | os.PathLike | None = None,
    coverage_txt: str | os.PathLike | None = None,
    log=print,
) -> dict[str, Any]:
    """Convert, write ``out`` (.caffemodel of the backbone layers) and the coverage table; return the report."""
    net = read_net(net_path, made_by="rule make_model")
    source = read_source(fmt, weights)
    layers, report = convert_source(fmt, source, net, str(weights), str(net_path))
    write_caffemodel(out, layers)
    text = format_coverage(report)
    log(text)
    if coverage_json is not None:
        atomic_write_text(coverage_json, json.dumps(report, indent=2) + "\n")
    if coverage_txt is not None:
        atomic_write_text(coverage_txt, text + "\n")
    log(f"wrote {out}")
    return report


def coverage_summary(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The format, backbone counts and warnings of a conversion report (for check_initial_weights)."""
    if not path:
        return None
    report = json.loads(Path(path).read_text())
    return {key: report[key] for key in ("format", "weights", "backbone", "fillers", "warnings")}
