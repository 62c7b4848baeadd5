"""SSDLite on MobileNetV2: the four extra feature layers, the six prediction heads, the priors, and the
MultiBoxLoss / DetectionOutput / DetectionEvaluate layers.

Each head is a 3x3 depthwise convolution + BatchNorm + activation followed by a 1x1 convolution, once for the
box offsets (loc) and once for the class scores (conf). Prior sizes are fractions of the input size
(``PriorDesign``, the ``model.priors`` config keys): by default, at 300x300, 60, 105, 150, 195, 240, 285 (max
sizes 150 ... 300), as in the published SSDLite COCO nets.
"""

from __future__ import annotations

from dataclasses import dataclass

from caffe.proto import caffe_pb2

from ssdlite_coco.model.layers import NetWriter
from ssdlite_coco.model.mobilenetv2 import BackboneOutputs, make_divisible

# (1x1 reduction channels, output channels) of the four stride-2 extra layers, at width 1.0.
EXTRA_LAYERS = ((256, 512), (128, 256), (128, 256), (64, 128))
EXTRA_MIN_CHANNELS = 16
NUM_MAPS = 6
# The max size of the last map's priors, in percent of the input side (each other map's is the next one's min).
LAST_MAX_SIZE_PERCENT = 100
PRIOR_VARIANCE = (0.1, 0.1, 0.2, 0.2)
CONF_LOSS_TYPES = ("logistic", "softmax")


@dataclass(frozen=True)
class FeatureMap:
    blob: str
    channels: int
    size: int | None
    min_size: float
    max_size: float | None
    aspect_ratios: tuple[float, ...]

    @property
    def priors_per_cell(self) -> int:
        # 1 for min_size, 1 for sqrt(min*max), 2 per aspect ratio (flipped).
        return 1 + (1 if self.max_size else 0) + 2 * len(self.aspect_ratios)


@dataclass(frozen=True)
class PriorDesign:
    """Prior sizes and shapes of the six maps: the ``model.priors`` config keys.

    Min sizes run linearly from ``min_ratio`` (first map) to ``max_ratio`` (last map) percent of the input side;
    every map but the first also has a max size (the next map's min size, 100 % for the last); each map has its
    ``aspect_ratios`` (all > 1, each also flipped) besides the square priors.
    """

    min_ratio: float
    max_ratio: float
    aspect_ratios: tuple[tuple[float, ...], ...]

    def __post_init__(self):
        ratios = tuple(tuple(float(ratio) for ratio in ratios) for ratios in self.aspect_ratios)
        object.__setattr__(self, "aspect_ratios", ratios)

    def problems(self, input_size: int) -> list[str]:
        """What is wrong with this design for a ``input_size`` input (one line each; empty when it is fine)."""
        found = []
        if not 0 < self.min_ratio < self.max_ratio < LAST_MAX_SIZE_PERCENT:
            found.append(
                f"model.priors needs 0 < min_ratio < max_ratio < {LAST_MAX_SIZE_PERCENT}, "
                f"got min_ratio {self.min_ratio}, max_ratio {self.max_ratio}"
            )
        elif self.min_ratio * input_size / 100 < 1:
            found.append(
                f"model.priors.min_ratio {self.min_ratio} gives priors under 1 pixel at input_size {input_size}"
            )
        if len(self.aspect_ratios) != NUM_MAPS:
            found.append(
                f"model.priors.aspect_ratios needs {NUM_MAPS} lists (one per map), got {len(self.aspect_ratios)}"
            )
        for index, ratios in enumerate(self.aspect_ratios):
            distinct = all(abs(a - b) > 1e-6 for i, a in enumerate(ratios) for b in ratios[i + 1 :])
            if not distinct or any(ratio <= 1 for ratio in ratios):
                found.append(
                    f"model.priors.aspect_ratios[{index}] is {list(ratios)}: give distinct ratios above 1 "
                    "(each is also flipped; ratio 1 is always there)"
                )
        return found


@dataclass(frozen=True)
class DetectionSettings:
    confidence_threshold: float
    nms_threshold: float
    top_k: int
    keep_top_k: int


def prior_sizes(input_size: int, design: PriorDesign) -> list[tuple[float, float | None]]:
    """(min_size, max_size) of the six maps for a square input of ``input_size`` pixels."""
    step = (design.max_ratio - design.min_ratio) / (NUM_MAPS - 1)
    percents = [design.min_ratio + index * step for index in range(NUM_MAPS)] + [LAST_MAX_SIZE_PERCENT]
    sizes = [p * input_size / 100 for p in percents]
    pairs: list[tuple[float, float | None]] = [(sizes[0], None)]
    pairs += [(sizes[i], sizes[i + 1]) for i in range(1, NUM_MAPS)]
    return pairs


def extra_channels(width: float) -> list[tuple[int, int]]:
    return [
        (
            make_divisible(mid * width, min_value=EXTRA_MIN_CHANNELS),
            make_divisible(out * width, min_value=EXTRA_MIN_CHANNELS),
        )
        for mid, out in EXTRA_LAYERS
    ]


def build_feature_maps(
    writer: NetWriter,
    backbone: BackboneOutputs,
    input_size: int,
    width: float,
    bn: str,
    design: PriorDesign,
) -> list[FeatureMap]:
    """Write the extra layers after ``Conv_1``; return the six maps SSDLite predicts from."""
    blobs = [
        (backbone.first_feature, backbone.first_feature_channels),
        (backbone.last, backbone.last_channels),
    ]
    x = backbone.last
    for index, (mid, out) in enumerate(extra_channels(width), start=2):
        x = writer.conv_unit(f"layer_19_1_{index}", x, mid, kernel=1, bn=bn)
        x = writer.conv_unit(f"layer_19_2_{index}/depthwise", x, mid, kernel=3, stride=2, group=mid, bn=bn)
        x = writer.conv_unit(f"layer_19_2_{index}", x, out, kernel=1, bn=bn)
        blobs.append((x, out))
    sizes = prior_sizes(input_size, design)
    return [
        FeatureMap(blob, channels, writer.sizes.get(blob), min_size, max_size, ratios)
        for (blob, channels), (min_size, max_size), ratios in zip(blobs, sizes, design.aspect_ratios, strict=True)
    ]


def _head(writer: NetWriter, fmap: FeatureMap, kind: str, num_output: int) -> str:
    name = f"{fmap.blob}_mbox_{kind}"
    depthwise = writer.conv_unit(
        f"{name}/depthwise", fmap.blob, fmap.channels, kernel=3, group=fmap.channels, bn="explicit"
    )
    writer.conv(name, depthwise, num_output, kernel=1)
    return writer.permute_flatten(name)


def _prior_box(writer: NetWriter, fmap: FeatureMap, data: str) -> str:
    name = f"{fmap.blob}_mbox_priorbox"
    layer = writer.layer(name, "PriorBox", [fmap.blob, data], [name])
    param = layer.prior_box_param
    param.min_size.append(fmap.min_size)
    if fmap.max_size:
        param.max_size.append(fmap.max_size)
    param.aspect_ratio.extend(fmap.aspect_ratios)
    param.flip = True
    param.clip = False
    param.variance.extend(PRIOR_VARIANCE)
    param.offset = 0.5
    return name


def build_heads(
    writer: NetWriter, maps: list[FeatureMap], num_classes: int, data: str = "data"
) -> tuple[str, str, str]:
    """Write the loc/conf heads and the priors of every map; return the (loc, conf, priorbox) concat blobs."""
    locs, confs, priors = [], [], []
    for fmap in maps:
        locs.append(_head(writer, fmap, "loc", fmap.priors_per_cell * 4))
        confs.append(_head(writer, fmap, "conf", fmap.priors_per_cell * num_classes))
        priors.append(_prior_box(writer, fmap, data))
    return (
        writer.concat("mbox_loc", locs, axis=1),
        writer.concat("mbox_conf", confs, axis=1),
        writer.concat("mbox_priorbox", priors, axis=2),
    )


def add_multibox_loss(
    writer: NetWriter,
    loc: str,
    conf: str,
    priorbox: str,
    label: str,
    num_classes: int,
    conf_loss: str,
) -> None:
    layer = writer.layer("mbox_loss", "MultiBoxLoss", [loc, conf, priorbox, label], ["mbox_loss"])
    layer.include.add(phase=caffe_pb2.TRAIN)
    layer.propagate_down.extend([True, True, False, False])
    layer.loss_param.normalization = caffe_pb2.LossParameter.VALID
    param = layer.multibox_loss_param
    param.loc_loss_type = caffe_pb2.MultiBoxLossParameter.SMOOTH_L1
    param.conf_loss_type = (
        caffe_pb2.MultiBoxLossParameter.LOGISTIC if conf_loss == "logistic" else caffe_pb2.MultiBoxLossParameter.SOFTMAX
    )
    param.loc_weight = 1.0
    param.num_classes = num_classes
    param.share_location = True
    param.match_type = caffe_pb2.MultiBoxLossParameter.PER_PREDICTION
    param.overlap_threshold = 0.5
    param.use_prior_for_matching = True
    param.background_label_id = 0
    param.use_difficult_gt = True
    param.neg_pos_ratio = 3.0
    param.neg_overlap = 0.5
    param.code_type = caffe_pb2.PriorBoxParameter.CENTER_SIZE
    param.ignore_cross_boundary_bbox = False
    param.mining_type = caffe_pb2.MultiBoxLossParameter.MAX_NEGATIVE


def add_conf_scores(writer: NetWriter, conf: str, num_classes: int, conf_loss: str) -> str:
    """Per-prior class scores: reshape to (N, priors, classes), sigmoid or softmax, flatten back."""
    reshape = writer.layer("mbox_conf_reshape", "Reshape", [conf], ["mbox_conf_reshape"])
    reshape.reshape_param.shape.dim.extend([0, -1, num_classes])
    if conf_loss == "logistic":
        writer.layer("mbox_conf_sigmoid", "Sigmoid", ["mbox_conf_reshape"], ["mbox_conf_scores"])
    else:
        softmax = writer.layer("mbox_conf_softmax", "Softmax", ["mbox_conf_reshape"], ["mbox_conf_scores"])
        softmax.softmax_param.axis = 2
    flatten = writer.layer("mbox_conf_flatten", "Flatten", ["mbox_conf_scores"], ["mbox_conf_flatten"])
    flatten.flatten_param.axis = 1
    return "mbox_conf_flatten"


def add_detection_output(
    writer: NetWriter, loc: str, scores: str, priorbox: str, num_classes: int, settings: DetectionSettings
) -> str:
    layer = writer.layer("detection_out", "DetectionOutput", [loc, scores, priorbox], ["detection_out"])
    layer.include.add(phase=caffe_pb2.TEST)
    param = layer.detection_output_param
    param.num_classes = num_classes
    param.share_location = True
    param.background_label_id = 0
    param.nms_param.nms_threshold = settings.nms_threshold
    param.nms_param.top_k = settings.top_k
    param.code_type = caffe_pb2.PriorBoxParameter.CENTER_SIZE
    param.keep_top_k = settings.keep_top_k
    param.confidence_threshold = settings.confidence_threshold
    return "detection_out"


def add_detection_evaluate(
    writer: NetWriter, detections: str, label: str, num_classes: int, name_size_file: str | None = None
) -> str:
    layer = writer.layer("detection_eval", "DetectionEvaluate", [detections, label], ["detection_eval"])
    layer.include.add(phase=caffe_pb2.TEST)
    param = layer.detection_evaluate_param
    param.num_classes = num_classes
    param.background_label_id = 0
    param.overlap_threshold = 0.5
    param.evaluate_difficult_gt = False
    if name_size_file:
        param.name_size_file = name_size_file
    return "detection_eval"
