"""Fit existing SSD prototxts (e.g. the published SSDLite COCO nets) to this workflow's data and Caffe.

Everything goes through protobuf ``text_format``: a prototxt is parsed into a ``NetParameter`` or a
``SolverParameter``, changed field by field, and printed again. What changes:

* data layers: LMDB ``source``, ``batch_size``, ``label_map_file``, ``force_color`` (when this Caffe has it);
* the class count everywhere it appears (MultiBoxLoss, DetectionOutput, DetectionEvaluate, the Reshape in
  front of the score activation) and the conf head convolutions that feed them (priors per cell x classes);
* ``name_size_file`` (DetectionEvaluate, and DetectionOutput's save_output_param when present);
* ``ReLU6`` becomes ``ReLU`` only when the runtime lacks ReLU6 (with a warning);
* ``engine: CAFFE`` on every grouped convolution;
* the solver's net paths, ``test_iter``, ``snapshot_prefix`` and ``solver_mode``.

A net that cannot be patched consistently raises ``PatchError`` naming the file, the layer and the reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from caffe.proto import caffe_pb2

from ssdlite_coco.caffe_tools.device import solver_mode
from ssdlite_coco.common.errors import SsdliteError

ROLES = ("train", "test", "deploy")
# Layers the class scores may pass through between the conf convolutions and the loss / detection layer.
SCORE_PATH_TYPES = ("Concat", "Flatten", "Permute", "Reshape", "Softmax", "Sigmoid")
RELU6_WARNING = (
    "this Caffe has no ReLU6 layer: {count} ReLU6 layer(s) became ReLU; SSDLite loses much "
    "accuracy without ReLU6 (and weights trained with ReLU6 no longer fit)"
)


class PatchError(SsdliteError):
    """A prototxt cannot be patched consistently; the message names the file, the layer and the reason."""


@dataclass(frozen=True)
class PatchSettings:
    num_classes: int
    label_map_file: str
    train_source: str = "results/lmdb/trainval_lmdb"
    test_source: str = "results/lmdb/test_lmdb"
    train_batch_size: int | None = None  # None: keep the prototxt's
    test_batch_size: int | None = None
    name_size_file: str | None = None
    relu6_supported: bool = True
    known_layer_types: frozenset[str] | None = None  # None: do not check layer types


def _fail(where: str, layer: caffe_pb2.LayerParameter | None, reason: str):
    who = f"layer '{layer.name}' ({layer.type})" if layer is not None else "net"
    raise PatchError(f"{where}: {who}: {reason}")


def _phase_of(layer: caffe_pb2.LayerParameter, default: int) -> int:
    phases = {rule.phase for rule in layer.include if rule.HasField("phase")}
    if len(phases) > 1:
        return -1
    return phases.pop() if phases else default


def _creators(net: caffe_pb2.NetParameter) -> dict[str, caffe_pb2.LayerParameter]:
    """The layer that first writes each blob (in-place layers after it keep the shape)."""
    creators: dict[str, caffe_pb2.LayerParameter] = {}
    for layer in net.layer:
        for top in layer.top:
            creators.setdefault(top, layer)
    return creators


def _trace_to_convolutions(
    net, where: str, blob: str, consumer: caffe_pb2.LayerParameter, reshapes: list | None = None
) -> list[caffe_pb2.LayerParameter]:
    """The Convolution layers whose outputs reach ``blob``, in concat order."""
    creators = _creators(net)
    found: list[caffe_pb2.LayerParameter] = []

    def walk(name: str) -> None:
        layer = creators.get(name)
        if layer is None:
            _fail(where, consumer, f"its input '{name}' is produced by no layer")
        if layer.type == "Convolution":
            found.append(layer)
        elif layer.type in SCORE_PATH_TYPES:
            if layer.type == "Reshape" and reshapes is not None:
                reshapes.append(layer)
            bottoms = layer.bottom if layer.type == "Concat" else layer.bottom[:1]
            for bottom in bottoms:
                walk(bottom)
        else:
            _fail(
                where,
                layer,
                f"it feeds '{consumer.name}' but the patcher follows only "
                f"{', '.join(SCORE_PATH_TYPES)} down to the head convolutions",
            )

    walk(blob)
    return found


def _class_count(net, where: str) -> tuple[int, list[caffe_pb2.LayerParameter]]:
    """The class count the net agrees on, and the layers that state it."""
    params = {
        "MultiBoxLoss": "multibox_loss_param",
        "DetectionOutput": "detection_output_param",
        "DetectionEvaluate": "detection_evaluate_param",
    }
    stating = [layer for layer in net.layer if layer.type in params]
    if not any(layer.type in ("MultiBoxLoss", "DetectionOutput") for layer in stating):
        _fail(where, None, "has no MultiBoxLoss or DetectionOutput layer: not an SSD net")
    counts = {}
    for layer in stating:
        param = getattr(layer, params[layer.type])
        if not param.HasField("num_classes"):
            _fail(where, layer, "has no num_classes")
        if layer.type != "DetectionEvaluate" and not param.share_location:
            _fail(where, layer, "share_location is false; the patcher handles shared box offsets only")
        counts[layer.name] = param.num_classes
    if len(set(counts.values())) > 1:
        first, *rest = stating
        other = next(layer for layer in rest if counts[layer.name] != counts[first.name])
        _fail(
            where,
            other,
            f"num_classes {counts[other.name]} disagrees with {counts[first.name]} in layer '{first.name}'",
        )
    return next(iter(counts.values())), stating


def _patch_class_count(net, where: str, num_classes: int) -> None:
    old, stating = _class_count(net, where)
    params = {
        "MultiBoxLoss": "multibox_loss_param",
        "DetectionOutput": "detection_output_param",
        "DetectionEvaluate": "detection_evaluate_param",
    }
    for layer in stating:
        getattr(layer, params[layer.type]).num_classes = num_classes
    heads = [layer for layer in stating if layer.type in ("MultiBoxLoss", "DetectionOutput")]
    patched: set[str] = set()
    for consumer in heads:
        if len(consumer.bottom) < 3:
            _fail(where, consumer, "needs loc, conf and prior inputs")
        reshapes: list = []
        confs = _trace_to_convolutions(net, where, consumer.bottom[1], consumer, reshapes)
        locs = _trace_to_convolutions(net, where, consumer.bottom[0], consumer)
        if len(confs) != len(locs):
            _fail(
                where,
                consumer,
                f"its scores come from {len(confs)} convolutions but its box offsets from {len(locs)}",
            )
        for conf, loc in zip(confs, locs, strict=True):
            loc_outputs = loc.convolution_param.num_output
            if loc_outputs % 4:
                _fail(where, loc, f"num_output {loc_outputs} is not 4 offsets per prior")
            if conf.name in patched:
                continue
            outputs = conf.convolution_param.num_output
            if outputs % old:
                _fail(where, conf, f"num_output {outputs} is not a multiple of the net's {old} classes")
            if outputs // old != loc_outputs // 4:
                _fail(
                    where,
                    conf,
                    f"predicts {outputs // old} priors per cell but '{loc.name}' predicts {loc_outputs // 4}",
                )
            conf.convolution_param.num_output = outputs // old * num_classes
            patched.add(conf.name)
        for reshape in reshapes:
            dims = reshape.reshape_param.shape.dim
            if not dims or dims[-1] != old:
                _fail(
                    where,
                    reshape,
                    f"its last dimension is {list(dims)[-1:] or 'unset'}, not the {old} classes",
                )
            dims[-1] = num_classes


def _patch_data_layers(net, where: str, role: str, settings: PatchSettings) -> None:
    data_layers = [layer for layer in net.layer if layer.type in ("AnnotatedData", "Data")]
    if role == "deploy":
        if data_layers:
            _fail(where, data_layers[0], "a deploy net must take an Input, not read a database")
        return
    wanted = caffe_pb2.TRAIN if role == "train" else caffe_pb2.TEST
    default = wanted
    for layer in data_layers:
        if layer.type == "Data":
            _fail(where, layer, "a Data layer gives no boxes; SSD needs an AnnotatedData layer")
        phase = _phase_of(layer, default)
        if phase == -1:
            _fail(where, layer, "is included in both phases; give each phase its own data layer")
        train = phase == caffe_pb2.TRAIN
        layer.data_param.source = settings.train_source if train else settings.test_source
        layer.data_param.backend = caffe_pb2.DataParameter.LMDB
        batch = settings.train_batch_size if train else settings.test_batch_size
        if batch is not None:
            layer.data_param.batch_size = batch
        layer.annotated_data_param.label_map_file = settings.label_map_file
        if "force_color" in caffe_pb2.TransformationParameter.DESCRIPTOR.fields_by_name:
            layer.transform_param.force_color = True
            layer.transform_param.ClearField("force_gray")
    count = sum(1 for layer in data_layers if _phase_of(layer, default) == wanted)
    phase_name = "TRAIN" if wanted == caffe_pb2.TRAIN else "TEST"
    if count != 1:
        _fail(
            where,
            data_layers[1] if count > 1 else None,
            f"a {role} net needs exactly one AnnotatedData layer in phase {phase_name}, found {count}",
        )


def patch_net(
    net: caffe_pb2.NetParameter, role: str, settings: PatchSettings, where: str = "net"
) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """Return a patched copy of ``net`` and the warnings; ``where`` names the file in messages."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    net = copy.deepcopy(net)
    warnings: list[str] = []
    if net.layers:
        _fail(where, None, "uses the V1 'layers' field; upgrade it with Caffe's upgrade_net_proto_text first")
    if settings.known_layer_types is not None:
        for layer in net.layer:
            if layer.type not in settings.known_layer_types and not (
                layer.type == "ReLU6" and not settings.relu6_supported
            ):
                _fail(where, layer, f"this Caffe has no layer type '{layer.type}'")
    _patch_data_layers(net, where, role, settings)
    _patch_class_count(net, where, settings.num_classes)
    types = {layer.type for layer in net.layer}
    if role == "train" and "MultiBoxLoss" not in types:
        _fail(where, None, "a train net needs a MultiBoxLoss layer")
    if role == "test" and not {"DetectionOutput", "DetectionEvaluate"} <= types:
        _fail(where, None, "a test net needs DetectionOutput and DetectionEvaluate layers")
    if role == "deploy" and "DetectionOutput" not in types:
        _fail(where, None, "a deploy net needs a DetectionOutput layer")
    for layer in net.layer:
        if layer.type == "DetectionEvaluate" and settings.name_size_file:
            layer.detection_evaluate_param.name_size_file = settings.name_size_file
        if layer.type == "DetectionOutput" and layer.detection_output_param.HasField("save_output_param"):
            save = layer.detection_output_param.save_output_param
            save.label_map_file = settings.label_map_file
            if settings.name_size_file:
                save.name_size_file = settings.name_size_file
        if layer.type == "Convolution" and layer.convolution_param.group > 1:
            layer.convolution_param.engine = caffe_pb2.ConvolutionParameter.CAFFE
    relu6 = [layer for layer in net.layer if layer.type == "ReLU6"]
    if relu6 and not settings.relu6_supported:
        for layer in relu6:
            if layer.HasField("relu6_param") and layer.relu6_param.negative_slope:
                _fail(where, layer, "has a negative slope, which ReLU cannot replace in this form")
            layer.type = "ReLU"
            layer.ClearField("relu6_param")
        warnings.append(f"{where}: " + RELU6_WARNING.format(count=len(relu6)))
    return net, warnings


def patch_solver(
    solver: caffe_pb2.SolverParameter,
    train_net: str,
    test_net: str | None,
    test_iter: int,
    snapshot_prefix: str,
    device: str,
    test_interval: int,
    where: str = "solver",
    from_config: dict[str, int] | None = None,
) -> tuple[caffe_pb2.SolverParameter, list[str]]:
    """Point ``solver`` at the patched nets for ``device`` (train.device); keep its learning-rate schedule and
    the rest (``test_interval`` where it has none).

    ``from_config`` (e.g. the config's ``max_iter``, ``snapshot``, ``test_interval``) replaces those
    fields; every value that changes is listed in the returned lines.
    """
    solver = copy.deepcopy(solver)
    warnings: list[str] = []
    for key, value in (from_config or {}).items():
        if getattr(solver, key) != value:
            warnings.append(f"{where}: {key} {getattr(solver, key)} -> {value} (solver.{key} of the config)")
        setattr(solver, key, value)
    if solver.HasField("net_param") or solver.HasField("train_net_param") or len(solver.test_net_param):
        raise PatchError(f"{where}: embeds its nets (net_param / train_net_param / test_net_param); give them as files")
    if len(solver.test_net) > 1 or len(solver.test_state) > 1:
        raise PatchError(
            f"{where}: has {max(len(solver.test_net), len(solver.test_state))} test nets; the workflow tests one"
        )
    solver.ClearField("net")
    solver.train_net = train_net
    solver.ClearField("test_net")
    solver.ClearField("test_iter")
    if test_net:
        solver.test_net.append(test_net)
        solver.test_iter.append(test_iter)
        if solver.test_interval <= 0:
            solver.test_interval = test_interval
            warnings.append(f"{where}: had no test_interval; set to {test_interval}")
        if solver.eval_type != "detection":
            warnings.append(f"{where}: eval_type {solver.eval_type!r} became 'detection'")
            solver.eval_type = "detection"
    if solver.max_iter <= 0:
        warnings.append(f"{where}: max_iter is {solver.max_iter}: training will stop at once")
    solver.snapshot_prefix = snapshot_prefix
    solver.solver_mode = solver_mode(device)
    return solver, warnings
