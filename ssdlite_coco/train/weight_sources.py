"""ImageNet MobileNetV2 weights read into the backbone's structure, whatever their names.

A source becomes ``{structural key: Unit}`` with the keys of ``ssdlite_coco.model.mobilenetv2.backbone_units``
(``stem``, ``block<i>/expand|depthwise|project``, ``last``): one convolution and the BatchNorm after it.
The keys come from the architecture, not from layer names: torchvision's ``features.<i>`` modules (the
stem, 17 inverted residual blocks, the last 1x1 convolution) and, for Caffe models such as
shicai/MobileNet-Caffe, the order of the convolutions (a depthwise one is grouped with one input channel
per group; a block is [1x1 expansion], depthwise, 1x1 projection). The classifier is dropped.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssdlite_coco.caffe_tools.weights import WeightsError, layer_blobs, read_caffemodel_net

FORMATS = ("caffe", "torchvision", "shicai")
TORCHVISION_BN_EPS = 1e-5
# torchvision's mobilenet_v2 (not in its state dict): the blocks whose depthwise convolution has stride 2
TORCHVISION_STRIDES = {1: 2, 3: 2, 6: 2, 13: 2}


@dataclass(frozen=True)
class InputNormalization:
    """x_source[c] = pixel[c] * alpha[c] + beta[c], channels in ``order`` (pixels 0 ... 255)."""

    order: str  # "RGB" or "BGR"
    alpha: tuple[float, float, float]
    beta: tuple[float, float, float]


# torchvision: (pixel / 255 - mean) / std, RGB.
TORCHVISION_INPUT = InputNormalization(
    "RGB",
    tuple(1 / (255 * s) for s in (0.229, 0.224, 0.225)),
    tuple(-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)),
)
# shicai/MobileNet-Caffe: (pixel - mean) * 0.017, BGR.
SHICAI_INPUT = InputNormalization("BGR", (0.017,) * 3, tuple(-m * 0.017 for m in (103.94, 116.78, 123.68)))


@dataclass(frozen=True)
class BatchNorm:
    mean: np.ndarray
    var: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    eps: float


@dataclass(frozen=True)
class Unit:
    """One source convolution (OIHW weight, optional bias) and its BatchNorm; ``origin`` names it in the source."""

    weight: np.ndarray
    bias: np.ndarray | None
    bn: BatchNorm | None
    origin: str
    stride: int = 1


@dataclass
class Source:
    units: dict[str, Unit]
    dropped: list[str] = field(default_factory=list)  # the classifier, left out
    activation: str = "relu6"  # what the source was trained with
    normalization: InputNormalization = TORCHVISION_INPUT


class SourceWeightsError(WeightsError):
    """ImageNet weights that cannot be read as a MobileNetV2; the message names the file and the fix."""


# --- torchvision ----------------------------------------------------------------------------------


def _load_state_dict(path: Path) -> dict[str, np.ndarray]:
    import torch  # only this format needs it

    if not path.is_file():
        raise SourceWeightsError(f"{path}: weights file not found; set train.initial_weights to a .pth file")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a state dict
        raise SourceWeightsError(
            f"{path}: not a PyTorch state dict ({type(error).__name__}); give torchvision's mobilenet_v2 .pth"
        ) from None
    if not isinstance(state, dict):
        raise SourceWeightsError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return {key: value.detach().cpu().numpy() for key, value in state.items() if hasattr(value, "detach")}


def _torch_bn(state: dict[str, np.ndarray], prefix: str, used: set[str]) -> BatchNorm | None:
    keys = {part: f"{prefix}.{part}" for part in ("weight", "bias", "running_mean", "running_var")}
    if not all(key in state for key in keys.values()):
        return None
    used.update(keys.values())
    used.add(f"{prefix}.num_batches_tracked")
    return BatchNorm(
        state[keys["running_mean"]],
        state[keys["running_var"]],
        state[keys["weight"]],
        state[keys["bias"]],
        TORCHVISION_BN_EPS,
    )


def _torch_unit(state: dict[str, np.ndarray], weight_key: str, used: set[str]) -> Unit:
    prefix = weight_key[: -len(".weight")]
    head, _, last = prefix.rpartition(".")
    bn = _torch_bn(state, f"{head}.{int(last) + 1}", used)  # the module after the convolution
    used.add(weight_key)
    bias = state.get(f"{prefix}.bias")
    if bias is not None:
        used.add(f"{prefix}.bias")
    return Unit(state[weight_key], bias, bn, prefix)


def _torch_block_units(state, feature: int, used: set[str]) -> dict[str, Unit]:
    pattern = re.compile(rf"features\.{feature}\.conv\.[\d.]+\.weight$")
    convs = sorted(
        (key for key in state if pattern.match(key) and state[key].ndim == 4),
        key=lambda key: [int(part) for part in key.split(".")[3:-1]],
    )
    roles = {2: ("depthwise", "project"), 3: ("expand", "depthwise", "project")}.get(len(convs))
    if roles is None or state[convs[roles.index("depthwise")]].shape[1] != 1:
        raise SourceWeightsError(
            f"features.{feature} has {len(convs)} convolutions, not an inverted residual block "
            "([1x1 expansion], depthwise, 1x1 projection)"
        )
    units = {
        f"block{feature - 1}/{role}": _torch_unit(state, key, used) for role, key in zip(roles, convs, strict=True)
    }
    key = f"block{feature - 1}/depthwise"
    units[key] = dataclasses.replace(units[key], stride=TORCHVISION_STRIDES.get(feature - 1, 1))
    return units


def read_torchvision(path: str | os.PathLike) -> Source:
    """torchvision's ``mobilenet_v2`` state dict: ``features.0`` stem, ``features.1-17`` blocks, then ``Conv_1``."""
    path = Path(path)
    state = _load_state_dict(path)
    used: set[str] = set()
    units: dict[str, Unit] = {}
    features = sorted({int(m.group(1)) for key in state if (m := re.match(r"features\.(\d+)\.", key))})
    for feature in features:
        if any(key.startswith(f"features.{feature}.conv.") for key in state):
            units.update(_torch_block_units(state, feature, used))
        elif f"features.{feature}.0.weight" in state:
            weight = state[f"features.{feature}.0.weight"]
            role = "stem" if weight.shape[1] == 3 and weight.shape[2] == 3 else "last"
            units[role] = _torch_unit(state, f"features.{feature}.0.weight", used)
            if role == "stem":
                units[role] = dataclasses.replace(units[role], stride=2)
    dropped = sorted(key for key in state if key.startswith("classifier."))
    unknown = sorted(set(state) - used - set(dropped))
    if unknown:
        raise SourceWeightsError(
            f"{path}: entries that are not part of torchvision's MobileNetV2: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}; is it a mobilenet_v2 state dict?"
        )
    return Source(units, dropped, "relu6", TORCHVISION_INPUT)


# --- Caffe models (shicai/MobileNet-Caffe and others) ------------------------------------------------


def _caffe_convs(model, source: str) -> list[Unit]:
    """Every convolution with weights, in order, with the BatchNorm (+ Scale) that follows it on its top."""
    convs: list[dict] = []
    by_blob: dict[str, dict] = {}
    for layer in model.layer:
        blobs = layer_blobs(layer, source) if len(layer.blobs) else []
        if layer.type == "Convolution" and blobs:
            entry = {"name": layer.name, "weight": blobs[0], "bias": blobs[1] if len(blobs) > 1 else None}
            entry["stride"] = layer.convolution_param.stride[0] if len(layer.convolution_param.stride) else 1
            convs.append(entry)
            by_blob[layer.top[0]] = entry
        elif layer.type == "BatchNorm" and blobs and layer.bottom[0] in by_blob:
            factor = float(blobs[2].ravel()[0]) if len(blobs) > 2 else 1.0
            factor = 0.0 if factor == 0 else 1.0 / factor
            entry = by_blob[layer.bottom[0]]
            entry.update(mean=blobs[0].ravel() * factor, var=blobs[1].ravel() * factor)
            entry["eps"] = layer.batch_norm_param.eps
            by_blob[layer.top[0]] = entry  # in place or not (shicai writes conv1/bn)
        elif layer.type == "Scale" and blobs and layer.bottom[0] in by_blob:
            entry = by_blob[layer.bottom[0]]
            entry["gamma"] = blobs[0].ravel()
            beta = blobs[1].ravel() if len(blobs) > 1 else np.zeros_like(entry["gamma"])
            entry["beta"] = beta
            by_blob[layer.top[0]] = entry
    units = []
    for entry in convs:
        bn = None
        if "mean" in entry:
            ones = np.ones_like(entry["mean"])
            bn = BatchNorm(
                entry["mean"], entry["var"], entry.get("gamma", ones), entry.get("beta", 0 * ones), entry["eps"]
            )
        units.append(Unit(entry["weight"], entry["bias"], bn, entry["name"], entry["stride"]))
    return units


def _is_depthwise(unit: Unit) -> bool:
    return unit.weight.shape[1] == 1 and unit.weight.shape[0] > 1 and unit.weight.shape[2] > 1


def _is_pointwise(unit: Unit) -> bool:
    return unit.weight.shape[2:] == (1, 1)


def _structure(convs: list[Unit], source: str) -> tuple[dict[str, Unit], list[str]]:
    """Stem, blocks ([expand], depthwise, project), last 1x1; what follows (the classifier) is dropped."""
    if not convs or convs[0].weight.shape[1] != 3:
        raise SourceWeightsError(f"{source}: the first convolution does not read 3 channels: not a MobileNetV2")
    units = {"stem": convs[0]}
    position, block = 1, 0
    while position < len(convs):
        here = convs[position]
        after = convs[position + 1] if position + 1 < len(convs) else None
        if _is_depthwise(here):
            roles = [("depthwise", here)]
        elif _is_pointwise(here) and after is not None and _is_depthwise(after):
            roles = [("expand", here), ("depthwise", after)]
        else:
            break
        position += len(roles)
        if position >= len(convs) or not _is_pointwise(convs[position]):
            raise SourceWeightsError(f"{source}: block {block} has no 1x1 projection after its depthwise convolution")
        roles.append(("project", convs[position]))
        position += 1
        units.update({f"block{block}/{role}": unit for role, unit in roles})
        block += 1
    if position < len(convs) and _is_pointwise(convs[position]):
        units["last"] = convs[position]
        position += 1
    return units, [unit.origin for unit in convs[position:]]


def read_caffe_mobilenetv2(path: str | os.PathLike, activation: str, normalization: InputNormalization) -> Source:
    """A MobileNetV2 .caffemodel (layers with types, tops and blobs, as Caffe saves them) by its structure."""
    model = read_caffemodel_net(path)
    if len(model.layers):
        raise SourceWeightsError(f"{path}: a V1 (layers) caffemodel; upgrade it with Caffe's upgrade_net_proto_binary")
    units, dropped = _structure(_caffe_convs(model, str(path)), str(path))
    return Source(units, dropped, activation, normalization)


def read_source(fmt: str, path: str | os.PathLike) -> Source:
    if fmt == "torchvision":
        return read_torchvision(path)
    if fmt == "shicai":
        return read_caffe_mobilenetv2(path, "relu", SHICAI_INPUT)
    raise SourceWeightsError(f"weights format {fmt!r} is not converted; use one of {', '.join(FORMATS[1:])}")
