"""Generate MobileNetV2-SSDLite train / test / deploy nets as ``caffe_pb2.NetParameter`` objects.

    options = ModelOptions(num_classes=81, train_source="results/lmdb/trainval_lmdb", ...)
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
import json
from dataclasses import dataclass, field
from pathlib import Path

from caffe.proto import caffe_pb2
from google.protobuf import text_format

from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.model.heads import (
    CONF_LOSS_TYPES,
    DetectionSettings,
    FeatureMap,
    add_conf_scores,
    add_detection_evaluate,
    add_detection_output,
    add_multibox_loss,
    build_feature_maps,
    build_heads,
)
from ssdlite_coco.model.layers import ACTIVATIONS, BN_MODES, PADDINGS, NetWriter
from ssdlite_coco.model.mobilenetv2 import build_mobilenetv2
from ssdlite_coco.model.patcher import PatchSettings, parse_prototxt, patch_net, patch_solver
from ssdlite_coco.model.solver import SolverOptions, build_solver, count_test_iterations

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
    num_classes: int = 81
    input_size: int = 300
    width: float = 1.0
    activation: str = "relu6"  # relu6 | relu
    backbone_bn: str = "explicit"  # explicit: BatchNorm + Scale (trainable); folded: convolution bias only
    bn_moving_average_fraction: float = 0.999  # decay of BatchNorm's running statistics per iteration
    padding: str = "caffe"  # caffe: symmetric; tf: TensorFlow "SAME" on stride-2 layers (pad + slice)
    conf_loss: str = "logistic"  # logistic (sigmoid scores) | softmax
    augmentation: bool = True  # SSD photometric distortion, expansion, batch sampling, mirror
    train_batch_size: int = 24
    test_batch_size: int = 8
    train_source: str = "results/lmdb/trainval_lmdb"
    test_source: str = "results/lmdb/test_lmdb"
    label_map_file: str = "results/labelmap/labelmap.prototxt"
    name_size_file: str | None = None  # test set "image_id height width" list for DetectionEvaluate
    test_detection: DetectionSettings = field(
        default_factory=lambda: DetectionSettings(
            confidence_threshold=0.01, nms_threshold=0.45, top_k=400, keep_top_k=200
        )
    )
    deploy_detection: DetectionSettings = field(
        default_factory=lambda: DetectionSettings(
            confidence_threshold=0.35, nms_threshold=0.45, top_k=100, keep_top_k=100
        )
    )

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
            (self.train_batch_size >= 1 and self.test_batch_size >= 1, "batch sizes must be at least 1"),
            (
                0 < self.bn_moving_average_fraction < 1,
                f"bn_moving_average_fraction must be in (0, 1), got {self.bn_moving_average_fraction}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ModelError(message)

    @classmethod
    def from_dict(cls, values: dict) -> ModelOptions:
        """Build from a plain mapping (a config section); unknown keys are an error naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelError(f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(values)
        for key in ("test_detection", "deploy_detection"):
            if isinstance(values.get(key), dict):
                values[key] = DetectionSettings(**values[key])
        return cls(**values)

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
    )
    if role == "deploy":
        _input_layer(writer, options)
    else:
        _data_layer(writer, options, role)
    backbone = build_mobilenetv2(writer, "data", width=options.width, bn=options.backbone_bn)
    maps = build_feature_maps(writer, backbone, options.input_size, width=options.width, bn=options.backbone_bn)
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


def message_to_text(message, header: str | None = None) -> str:
    """Readable protobuf text (one field per line: two versions diff cleanly) under a comment header."""
    text = text_format.MessageToString(message, as_utf8=True)
    lines = [f"# {line}" if line else "#" for line in (header or "").splitlines()]
    return "\n".join(lines) + ("\n" if lines else "") + text


def net_to_text(net: caffe_pb2.NetParameter, header: str | None = None) -> str:
    return message_to_text(net, header)


def parse_net(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


# -- the workflow's model stage: config in, prototxts out ---------------------------------------------------
MODEL_FILES = ("train", "test", "deploy", "solver")


def labelmap_num_classes(labelmap_file: str | Path) -> int:
    """Classes a net needs for ``labelmap_file``: the highest label + 1 (label 0 is the background)."""
    path = Path(labelmap_file)
    try:
        labelmap = text_format.Parse(path.read_text(), caffe_pb2.LabelMap())
    except (OSError, text_format.ParseError) as error:
        raise ModelError(f"{path}: not a readable Caffe LabelMap: {error}") from None
    if not labelmap.item:
        raise ModelError(f"{path}: the labelmap has no item")
    return max(item.label for item in labelmap.item) + 1


def count_test_images(instances_file: str | Path) -> int:
    path = Path(instances_file)
    try:
        images = json.loads(path.read_text())["images"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{path}: not a COCO instances file with an 'images' list ({error})") from None
    if not images:
        raise ModelError(f"{path}: the test set has no image; test_iter needs at least one")
    return len(images)


def resolve_num_classes(requested: int | str, labelmap_file: str | Path) -> int:
    needed = labelmap_num_classes(labelmap_file)
    if requested == "auto":
        return needed
    if not isinstance(requested, int) or isinstance(requested, bool):
        raise ModelError(f"model.num_classes must be an integer or 'auto', got {requested!r}")
    if requested < needed:
        raise ModelError(
            f"model.num_classes is {requested} but {labelmap_file} has labels up to {needed - 1}: "
            f"set model.num_classes to at least {needed} (or 'auto')"
        )
    return requested


def inspect_deploy(deploy_file: str | Path) -> dict:
    """Instantiate a deploy net in pycaffe: priors, outputs, parameter counts (BatchNorm statistics apart)."""
    import caffe

    net = caffe.Net(str(deploy_file), caffe.TEST)
    types = {name: layer.type for name, layer in zip(net._layer_names, net.layers, strict=True)}
    all_blobs = sum(blob.data.size for params in net.params.values() for blob in params)
    learnable = sum(
        blob.data.size for name, params in net.params.items() if types.get(name) != "BatchNorm" for blob in params
    )
    return {
        "num_priors": int(net.blobs["mbox_priorbox"].data.shape[2] // 4),
        "outputs": {name: list(net.blobs[name].data.shape) for name in net.outputs},
        "learnable_parameters": int(learnable),
        "parameter_blob_values": int(all_blobs),
    }


def _header(lines: list[str]) -> str:
    return "\n".join(
        ["Written by ssdlite-coco (scripts/make_model.py); edit config/config.yaml, not this file."] + lines
    )


def generate_model(
    model: ModelOptions,
    solver_options: SolverOptions,
    paths: dict[str, str],
    num_test_images: int,
    device: str = "cpu",
) -> tuple[dict[str, str], dict]:
    """Texts of train, test, deploy and solver prototxts, and what was resolved, for ``model``."""
    description = (
        f"MobileNetV2-SSDLite: width {model.width}, {model.input_size}x{model.input_size}, "
        f"{model.num_classes} classes, {model.activation}, backbone BN {model.backbone_bn}, "
        f"augmentation {'on' if model.augmentation else 'off'}"
    )
    texts = {role: net_to_text(build_net(model, role), _header([description, f"{role} net"])) for role in ROLES}
    test_iter = count_test_iterations(num_test_images, model.test_batch_size)
    solver = build_solver(solver_options, paths["train"], paths["test"], test_iter, device)
    texts["solver"] = message_to_text(
        solver,
        _header(
            [
                description,
                f"solver: test_iter {test_iter} = {num_test_images} test images / batch {model.test_batch_size}",
            ]
        ),
    )
    maps = feature_maps(model)
    resolved = {
        "test_iter": test_iter,
        "num_priors": sum(fmap.size * fmap.size * fmap.priors_per_cell for fmap in maps),
        "feature_maps": [dataclasses.asdict(fmap) | {"priors_per_cell": fmap.priors_per_cell} for fmap in maps],
        "resize_field": resize_field(),
    }
    if resize_field() is None:
        resolved["warning"] = "this Caffe cannot resize in the data layer: the LMDB images must be input-sized"
    return texts, resolved


def patch_model(
    sources: dict[str, str],
    settings: PatchSettings,
    solver_options: SolverOptions,
    paths: dict[str, str],
    num_test_images: int,
    device: str = "cpu",
) -> tuple[dict[str, str], dict]:
    """Texts of the user's train, test, deploy and solver prototxts patched onto this workflow's data."""
    missing = [role for role in MODEL_FILES if not sources.get(role)]
    if missing:
        raise ModelError(
            f"model.mode is 'patch' but model.patch lacks {', '.join(missing)}: give the paths "
            "of your train, test, deploy and solver prototxts"
        )
    texts, warnings = {}, []
    nets = {}
    for role in ROLES:
        net = parse_prototxt(sources[role], caffe_pb2.NetParameter())
        nets[role], net_warnings = patch_net(net, role, settings, where=str(sources[role]))
        warnings += net_warnings
    test_batch = next(layer.data_param.batch_size for layer in nets["test"].layer if layer.type == "AnnotatedData")
    test_iter = count_test_iterations(num_test_images, test_batch)
    solver = parse_prototxt(sources["solver"], caffe_pb2.SolverParameter())
    solver, solver_warnings = patch_solver(
        solver,
        paths["train"],
        paths["test"],
        test_iter,
        solver_options.snapshot_prefix,
        device,
        solver_options.test_interval,
        where=str(sources["solver"]),
    )
    warnings += solver_warnings
    for role in ROLES:
        texts[role] = net_to_text(nets[role], _header([f"patched from {sources[role]}", f"{role} net"]))
    texts["solver"] = message_to_text(
        solver,
        _header(
            [
                f"patched from {sources['solver']}",
                f"solver: test_iter {test_iter} = {num_test_images} test images / batch {test_batch}",
            ]
        ),
    )
    return texts, {"test_iter": test_iter, "warnings": warnings}
