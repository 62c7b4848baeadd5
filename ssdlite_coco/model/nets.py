"""Generate MobileNetV2-SSDLite train / test / deploy nets as ``caffe_pb2.NetParameter`` objects.

    options = ModelOptions.from_settings(parse_settings(ModelSettings), 81, train_source=..., ...)
    train = build_net(options, "train")      # AnnotatedData (SSD augmentation) ... MultiBoxLoss
    test = build_net(options, "test")        # AnnotatedData ... DetectionOutput + DetectionEvaluate
    deploy = build_net(options, "deploy")    # Input ... DetectionOutput
    text = net_to_text(deploy)               # readable, one field per line, diff-friendly

Nothing here is a string template: every layer is a protobuf message, so what Caffe's parser would reject
fails here first. Augmentation fields the running Caffe lacks are an error (``ModelError``), not a silent
omission.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from caffe.proto import caffe_pb2

from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.common.settings import setting_names
from ssdlite_coco.model.heads import (
    CONF_LOSS_TYPES,
    DetectionSettings,
    FeatureMap,
    PriorDesign,
    add_conf_scores,
    add_detection_evaluate,
    add_detection_output,
    add_multibox_loss,
    build_feature_maps,
    build_heads,
)
from ssdlite_coco.model.layers import ACTIVATIONS, BN_MODES, PADDINGS, NetWriter
from ssdlite_coco.model.mobilenetv2 import LAYOUTS, build_mobilenetv2
from ssdlite_coco.model.settings import ModelSettings

ROLES = ("train", "test", "deploy")
NET_NAME = "MobileNetV2-SSDLite"
# Pixels are mapped to [-1, 1]: (x - 127.5) * 0.007843.
MEAN_VALUE = 127.5
SCALE = 0.007843
AUGMENTATION_FIELDS = ("resize_param", "distort_param", "expand_param")


class ModelError(SsdliteError):
    """The requested model cannot be generated; the message is one line saying why and what to change."""


@dataclass(frozen=True)
class ModelOptions:
    """The generator's options: the `model` settings (see config/schema.yaml) with the class count resolved,
    and the data the nets read."""

    num_classes: int
    input_size: int
    width: float
    activation: str
    backbone_bn: str  # explicit: BatchNorm + Scale (trainable); folded: convolution bias only
    bn_moving_average_fraction: float  # decay of BatchNorm's running statistics per iteration
    bn_eps: float  # BatchNorm epsilon (1e-5 for torchvision weights)
    backbone_layout: str  # torchvision (the paper's) or shicai (block 0 expansion, stride 2 on block 10)
    padding: str  # caffe: symmetric; tf: TensorFlow "SAME" on stride-2 layers (pad + slice)
    conf_loss: str
    augmentation: bool  # SSD photometric distortion, expansion, batch sampling, mirror
    train_batch_size: int
    test_batch_size: int
    train_source: str
    test_source: str
    label_map_file: str
    name_size_file: str | None  # test set "image_id height width" list for DetectionEvaluate
    test_detection: DetectionSettings
    deploy_detection: DetectionSettings
    priors: PriorDesign  # prior sizes and aspect ratios of the six maps

    def __post_init__(self):
        checks = [
            (
                self.num_classes >= 2,
                f"num_classes must be at least 2 (background + one class), got {self.num_classes}",
            ),
            (self.input_size >= 32, f"input_size must be at least 32 pixels, got {self.input_size}"),
            (self.width > 0, f"width must be positive, got {self.width}"),
            (
                self.activation in ACTIVATIONS,
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}",
            ),
            (
                self.backbone_bn in BN_MODES,
                f"backbone_bn must be one of {list(BN_MODES)}, got {self.backbone_bn!r}",
            ),
            (self.padding in PADDINGS, f"padding must be one of {list(PADDINGS)}, got {self.padding!r}"),
            (
                self.conf_loss in CONF_LOSS_TYPES,
                f"conf_loss must be one of {list(CONF_LOSS_TYPES)}, got {self.conf_loss!r}",
            ),
            (
                self.backbone_layout in LAYOUTS,
                f"backbone_layout must be one of {list(LAYOUTS)}, got {self.backbone_layout!r}",
            ),
            (self.bn_eps > 0, f"bn_eps must be positive, got {self.bn_eps}"),
            (self.train_batch_size >= 1 and self.test_batch_size >= 1, "batch sizes must be at least 1"),
            (
                0 < self.bn_moving_average_fraction < 1,
                f"bn_moving_average_fraction must be in (0, 1), got {self.bn_moving_average_fraction}",
            ),
        ]
        checks += [(False, problem) for problem in self.priors.problems(self.input_size)]
        for ok, message in checks:
            if not ok:
                raise ModelError(message)

    @classmethod
    def from_settings(
        cls,
        settings: ModelSettings,
        num_classes: int,
        *,
        train_source: str,
        test_source: str,
        label_map_file: str,
        name_size_file: str | None,
    ) -> ModelOptions:
        """``settings`` with ``num_classes`` resolved (not 'auto'), reading the given LMDBs and files."""
        shared = {name: getattr(settings, name) for name in setting_names(cls) if name in setting_names(ModelSettings)}
        return cls(
            **(
                shared
                | {
                    "num_classes": num_classes,
                    "train_source": train_source,
                    "test_source": test_source,
                    "label_map_file": label_map_file,
                    "name_size_file": name_size_file,
                    "test_detection": DetectionSettings(**settings.test_detection),
                    "deploy_detection": DetectionSettings(**settings.deploy_detection),
                    "priors": PriorDesign(**settings.priors),
                }
            )
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def transformation_fields() -> set[str]:
    """Fields of TransformationParameter in the running Caffe (the SSD augmentation needs a patched one)."""
    return set(caffe_pb2.TransformationParameter.DESCRIPTOR.fields_by_name)


def supports_augmentation() -> bool:
    return set(AUGMENTATION_FIELDS) <= transformation_fields()


def resize_field() -> str | None:
    """The TransformationParameter field that resizes images: upstream SSD's ``resize_param``, else the
    ``old_resize_param`` under which brocolli-caffe keeps the same message, else None."""
    fields = transformation_fields()
    for name in ("resize_param", "old_resize_param"):
        if name in fields:
            return name
    return None


def _enum(message, name: str) -> int:
    return getattr(type(message), name)


def _set_resize(transform: caffe_pb2.TransformationParameter, size: int, interp_modes: list[str]) -> bool:
    name = resize_field()
    if name is None:
        return False
    resize = getattr(transform, name)
    resize.prob = 1.0
    resize.resize_mode = _enum(resize, "WARP")
    resize.height = size
    resize.width = size
    resize.interp_mode.extend(_enum(resize, mode) for mode in interp_modes)
    return True


def _add_batch_samplers(param: caffe_pb2.AnnotatedDataParameter) -> None:
    """SSD's sampling: the whole image, or a crop of 0.3-1 of the side overlapping some object by >= J."""
    param.batch_sampler.add(max_sample=1, max_trials=1)
    for min_overlap in (0.1, 0.3, 0.5, 0.7, 0.9, None):
        sampler = param.batch_sampler.add(max_sample=1, max_trials=50)
        sampler.sampler.min_scale = 0.3
        sampler.sampler.max_scale = 1.0
        sampler.sampler.min_aspect_ratio = 0.5
        sampler.sampler.max_aspect_ratio = 2.0
        if min_overlap is None:
            sampler.sample_constraint.max_jaccard_overlap = 1.0
        else:
            sampler.sample_constraint.min_jaccard_overlap = min_overlap


def _check_augmentation_support() -> None:
    missing = [name for name in AUGMENTATION_FIELDS if name not in transformation_fields()]
    if missing:
        raise ModelError(
            f"this Caffe's TransformationParameter lacks {', '.join(missing)}: rebuild Caffe with the SSD "
            "augmentation patch, or set model.augmentation: false (no photometric distortion or expansion)"
        )


def _add_augmentation(transform: caffe_pb2.TransformationParameter) -> None:
    _check_augmentation_support()
    distort = transform.distort_param
    distort.brightness_prob = 0.5
    distort.brightness_delta = 32.0
    distort.contrast_prob = 0.5
    distort.contrast_lower = 0.5
    distort.contrast_upper = 1.5
    distort.hue_prob = 0.5
    distort.hue_delta = 18.0
    distort.saturation_prob = 0.5
    distort.saturation_lower = 0.5
    distort.saturation_upper = 1.5
    distort.random_order_prob = 0.0
    expand = transform.expand_param
    expand.prob = 0.5
    expand.max_expand_ratio = 4.0


def _data_layer(writer: NetWriter, options: ModelOptions, role: str) -> None:
    train = role == "train"
    layer = writer.layer("data", "AnnotatedData", [], ["data", "label"])
    layer.include.add(phase=caffe_pb2.TRAIN if train else caffe_pb2.TEST)
    transform = layer.transform_param
    transform.scale = SCALE
    transform.mean_value.extend([MEAN_VALUE] * 3)
    if "force_color" in transformation_fields():
        transform.force_color = True  # a grayscale JPEG must still give three channels
    augment = train and options.augmentation
    if augment:
        _check_augmentation_support()
        transform.mirror = True
    interp_modes = ["LINEAR", "AREA", "NEAREST", "CUBIC", "LANCZOS4"] if augment else ["LINEAR"]
    _set_resize(transform, options.input_size, interp_modes)
    if augment:
        transform.emit_constraint.emit_type = caffe_pb2.EmitConstraint.CENTER
        _add_augmentation(transform)
    layer.data_param.source = options.train_source if train else options.test_source
    layer.data_param.batch_size = options.train_batch_size if train else options.test_batch_size
    layer.data_param.backend = caffe_pb2.DataParameter.LMDB
    if augment:
        _add_batch_samplers(layer.annotated_data_param)
    layer.annotated_data_param.label_map_file = options.label_map_file
    writer.sizes["data"] = options.input_size


def _input_layer(writer: NetWriter, options: ModelOptions) -> None:
    layer = writer.layer("input", "Input", [], ["data"])
    layer.input_param.shape.add(dim=[1, 3, options.input_size, options.input_size])
    writer.sizes["data"] = options.input_size


def build_net_with_maps(options: ModelOptions, role: str) -> tuple[caffe_pb2.NetParameter, list[FeatureMap]]:
    if role not in ROLES:
        raise ModelError(f"net role must be one of {list(ROLES)}, got {role!r}")
    net = caffe_pb2.NetParameter(name=NET_NAME)
    writer = NetWriter(
        net,
        activation=options.activation,
        padding=options.padding,
        bn_moving_average_fraction=options.bn_moving_average_fraction,
        bn_eps=options.bn_eps,
    )
    if role == "deploy":
        _input_layer(writer, options)
    else:
        _data_layer(writer, options, role)
    backbone = build_mobilenetv2(
        writer, "data", width=options.width, bn=options.backbone_bn, layout=options.backbone_layout
    )
    maps = build_feature_maps(
        writer, backbone, options.input_size, width=options.width, bn=options.backbone_bn, design=options.priors
    )
    if any(fmap.size is not None and fmap.size < 1 for fmap in maps):
        raise ModelError(f"input_size {options.input_size} is too small for six feature maps")
    writer.silence_unused()
    loc, conf, priorbox = build_heads(writer, maps, options.num_classes)
    if role == "train":
        add_multibox_loss(writer, loc, conf, priorbox, "label", options.num_classes, options.conf_loss)
    else:
        scores = add_conf_scores(writer, conf, options.num_classes, options.conf_loss)
        settings = options.deploy_detection if role == "deploy" else options.test_detection
        detections = add_detection_output(writer, loc, scores, priorbox, options.num_classes, settings)
        if role == "test":
            add_detection_evaluate(writer, detections, "label", options.num_classes, options.name_size_file)
    return net, maps


def build_net(options: ModelOptions, role: str) -> caffe_pb2.NetParameter:
    return build_net_with_maps(options, role)[0]


def feature_maps(options: ModelOptions) -> list[FeatureMap]:
    return build_net_with_maps(options, "deploy")[1]


def num_priors(options: ModelOptions) -> int:
    return sum(fmap.size * fmap.size * fmap.priors_per_cell for fmap in feature_maps(options))
