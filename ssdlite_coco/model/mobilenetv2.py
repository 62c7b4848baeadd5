"""The MobileNetV2 backbone (Sandler et al. 2018) as Caffe layers, with a width multiplier.

Layer names follow the common Caffe port of the TensorFlow model (``Conv``, ``conv/depthwise``,
``conv_1/expand`` ... ``conv_16/project``, ``Conv_1``), so that ImageNet or COCO weights published under
those names load by name. Depthwise convolutions are grouped convolutions on Caffe's own engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssdlite_coco.model.layers import NetWriter

# (expansion t, output channels c, repeats n, first stride s) of the inverted residual stages.
INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# SSDLite's first feature map is the expansion of this block (stride 16: 19x19 at 300x300).
FIRST_FEATURE_BLOCK = 13


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """MobileNetV2's channel rounding: nearest multiple of ``divisor``, never 10 % or more below ``value``."""
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class BackboneOutputs:
    first_feature: str  # expansion of block 13
    first_feature_channels: int
    last: str  # the final 1x1 convolution ``Conv_1``
    last_channels: int


def block_prefix(index: int) -> str:
    return "conv" if index == 0 else f"conv_{index}"


def backbone_units(first_block_expand: bool = False) -> list[tuple[str, str]]:
    """(structural key, layer name) of every backbone convolution, in order: ``stem``, ``block<i>/expand``,
    ``block<i>/depthwise``, ``block<i>/project`` (i = 0 ... 16), ``last``. Block 0 has no expansion
    unless ``first_block_expand`` (shicai/MobileNet-Caffe's layout)."""
    units = [("stem", "Conv")]
    index = 0
    for expansion, _, repeats, _ in INVERTED_RESIDUAL_SETTINGS:
        for _ in range(repeats):
            prefix = block_prefix(index)
            roles = ("expand", "depthwise", "project")
            if expansion == 1 and not (index == 0 and first_block_expand):
                roles = roles[1:]
            units += [(f"block{index}/{role}", f"{prefix}/{role}") for role in roles]
            index += 1
    return units + [("last", "Conv_1")]


LAYOUTS = ("torchvision", "shicai")


def stage_strides(layout: str) -> list[int]:
    """First stride of each stage. shicai/MobileNet-Caffe moves the 64-channel stage's stride 2 to the
    96-channel stage (its ``conv4_7/dwise``), so blocks 6-9 run at stride 8; the output strides agree."""
    strides = [s for *_, s in INVERTED_RESIDUAL_SETTINGS]
    if layout == "shicai":
        strides[3], strides[4] = 1, 2
    return strides


def build_mobilenetv2(writer: NetWriter, bottom: str, width: float, bn: str, layout: str) -> BackboneOutputs:
    """Write the backbone on top of ``bottom``; return the blobs SSDLite predicts from.

    ``layout`` torchvision is the paper's (and torchvision's, TensorFlow's) network. shicai is
    shicai/MobileNet-Caffe's: block 0 has a 1x1 expansion (32 -> 32 at width 1, its ``conv2_1/expand``)
    before its depthwise convolution, and the stride 2 of block 6 is on block 10 instead.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"backbone layout {layout!r} is not one of {list(LAYOUTS)}")
    first_block_expand = layout == "shicai"
    strides = stage_strides(layout)
    if width <= 0:
        raise ValueError(f"width multiplier must be positive, got {width}")
    channels = make_divisible(STEM_CHANNELS * width)
    x = writer.conv_unit("Conv", bottom, channels, kernel=3, stride=2, bn=bn)
    index = 0
    first_feature = None
    first_feature_channels = 0
    for (expansion, out, repeats, _), first_stride in zip(INVERTED_RESIDUAL_SETTINGS, strides, strict=True):
        out_channels = make_divisible(out * width)
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            prefix = block_prefix(index)
            hidden = int(round(channels * expansion))
            block_input = x
            if expansion != 1 or (index == 0 and first_block_expand):
                x = writer.conv_unit(f"{prefix}/expand", x, hidden, kernel=1, bn=bn)
                if index == FIRST_FEATURE_BLOCK:
                    first_feature, first_feature_channels = x, hidden
            x = writer.conv_unit(f"{prefix}/depthwise", x, hidden, kernel=3, stride=stride, group=hidden, bn=bn)
            x = writer.conv_unit(f"{prefix}/project", x, out_channels, kernel=1, bn=bn, act=False)
            if stride == 1 and channels == out_channels:
                x = writer.eltwise_sum(f"{prefix}/sum", [block_input, x])
            channels = out_channels
            index += 1
    last_channels = make_divisible(LAST_CHANNELS * max(1.0, width))
    last = writer.conv_unit("Conv_1", x, last_channels, kernel=1, bn=bn)
    assert first_feature is not None
    return BackboneOutputs(first_feature, first_feature_channels, last, last_channels)
