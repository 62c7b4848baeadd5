"""The model stage end to end: config sections in, train/test/deploy/solver prototxts and their record out.

``make_model`` generates the nets from the ``model`` config (``mode: generate``) or patches the user's
prototxts onto this workflow's data (``mode: patch``), instantiates the deploy net in pycaffe before any
output exists (a net Caffe rejects leaves nothing behind), then writes every file atomically, with
``model_config.json`` recording what was resolved (class count, test_iter, priors, parameter count,
warnings).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from caffe.proto import caffe_pb2

from ssdlite_coco.caffe_tools.prototxt import format_prototxt, read_prototxt
from ssdlite_coco.common.atomic import atomic_write_text
from ssdlite_coco.dataset.coco_json import load_instances
from ssdlite_coco.labelmap import num_classes_of
from ssdlite_coco.model.nets import (
    ROLES,
    ModelError,
    ModelOptions,
    build_net,
    feature_maps,
    resize_field,
    supports_augmentation,
)
from ssdlite_coco.model.patcher import PatchSettings, patch_net, patch_solver
from ssdlite_coco.model.settings import ModelSettings, SolverSettings
from ssdlite_coco.model.solver import HAND_RUN_SNAPSHOT_PREFIX, build_solver, count_test_iterations

MODEL_FILES = ("train", "test", "deploy", "solver")
# In mode patch, the solver settings that the config decides (everything else is the user's solver's).
SOLVER_KEYS_FROM_CONFIG = ("max_iter", "snapshot", "test_interval")


def count_test_images(instances_file: str | os.PathLike) -> int:
    images = load_instances(instances_file)["images"]
    if not images:
        raise ModelError(f"{instances_file}: the test set has no image; test_iter needs at least one")
    return len(images)


def resolve_num_classes(requested: int | str, labelmap_file: str | os.PathLike) -> int:
    needed = num_classes_of(labelmap_file)
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


def inspect_deploy(deploy_file: str | os.PathLike) -> dict:
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
        ["Written by ssdlite-coco (rule make_model) from the workflow config; change the config, not this file."]
        + lines
    )


def generate_model(
    model: ModelOptions, solver_settings: SolverSettings, paths: dict[str, str], num_test_images: int, device: str
) -> tuple[dict[str, str], dict]:
    """Texts of train, test, deploy and solver prototxts, and what was resolved, for ``model``."""
    description = (
        f"MobileNetV2-SSDLite: width {model.width}, {model.input_size}x{model.input_size}, "
        f"{model.num_classes} classes, {model.activation}, backbone BN {model.backbone_bn}, "
        f"augmentation {'on' if model.augmentation else 'off'}"
    )
    texts = {role: format_prototxt(build_net(model, role), _header([description, f"{role} net"])) for role in ROLES}
    test_iter = count_test_iterations(num_test_images, model.test_batch_size)
    solver = build_solver(solver_settings, device, paths["train"], paths["test"], test_iter)
    texts["solver"] = format_prototxt(
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
        "warnings": [],
    }
    if resize_field() is None:
        resolved["warnings"].append("this Caffe cannot resize in the data layer: the LMDB images must be input-sized")
    return texts, resolved


def patch_model(
    sources: dict[str, str],
    settings: PatchSettings,
    solver_settings: SolverSettings,
    paths: dict[str, str],
    num_test_images: int,
    device: str,
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
        net = read_prototxt(sources[role], caffe_pb2.NetParameter())
        nets[role], net_warnings = patch_net(net, role, settings, where=str(sources[role]))
        warnings += net_warnings
    test_batch = next(layer.data_param.batch_size for layer in nets["test"].layer if layer.type == "AnnotatedData")
    test_iter = count_test_iterations(num_test_images, test_batch)
    solver = read_prototxt(sources["solver"], caffe_pb2.SolverParameter())
    solver, solver_warnings = patch_solver(
        solver,
        paths["train"],
        paths["test"],
        test_iter,
        HAND_RUN_SNAPSHOT_PREFIX,
        device,
        solver_settings.test_interval,
        where=str(sources["solver"]),
        from_config={key: getattr(solver_settings, key) for key in SOLVER_KEYS_FROM_CONFIG},
    )
    warnings += solver_warnings
    warnings.append(
        f"{sources['solver']}: the learning-rate schedule and the other settings are your solver's; "
        f"{', '.join(SOLVER_KEYS_FROM_CONFIG)}, the net paths, test_iter, snapshot_prefix and solver_mode "
        "come from the workflow and its config"
    )
    for role in ROLES:
        texts[role] = format_prototxt(nets[role], _header([f"patched from {sources[role]}", f"{role} net"]))
    texts["solver"] = format_prototxt(
        solver,
        _header(
            [
                f"patched from {sources['solver']}",
                f"solver: test_iter {test_iter} = {num_test_images} test images / batch {test_batch}",
            ]
        ),
    )
    return texts, {"test_iter": test_iter, "warnings": warnings}


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """What the model stage reads besides its config: the label map and the test split, the LMDB paths."""

    labelmap: str
    name_size: str
    test_instances: str
    train_lmdb: str
    test_lmdb: str
    device: str  # train.device


def runtime_layer_types() -> frozenset[str]:
    import caffe

    return frozenset(caffe.layer_type_list())


def build_model_texts(
    settings: ModelSettings, solver: SolverSettings, inputs: ModelInputs, outputs: dict[str, str]
) -> tuple[dict[str, str], dict[str, Any]]:
    """The four prototxt texts and the record of what was resolved (not yet written anywhere)."""
    num_classes = resolve_num_classes(settings.num_classes, inputs.labelmap)
    num_test_images = count_test_images(inputs.test_instances)
    model = ModelOptions.from_settings(
        settings,
        num_classes,
        train_source=inputs.train_lmdb,
        test_source=inputs.test_lmdb,
        label_map_file=inputs.labelmap,
        name_size_file=inputs.name_size,
    )
    patching = settings.mode == "patch"
    if patching:
        texts, resolved = patch_model(
            settings.patch, patch_settings(model, inputs), solver, outputs, num_test_images, inputs.device
        )
    else:
        texts, resolved = generate_model(model, solver, outputs, num_test_images, inputs.device)
    record = {
        "mode": settings.mode,
        "num_classes": num_classes,
        "num_test_images": num_test_images,
        "model": {"train_batch_size": model.train_batch_size, "test_batch_size": model.test_batch_size}
        if patching
        else model.to_dict(),
        "solver": dataclasses.asdict(solver),
        "patch_sources": settings.patch if patching else None,
        "caffe": {"augmentation_supported": supports_augmentation(), "resize_field": resize_field()},
        "files": outputs,
        **resolved,
    }
    return texts, record


def patch_settings(model: ModelOptions, inputs: ModelInputs) -> PatchSettings:
    """What mode patch fits the user's nets to: this workflow's data, batch sizes and class count, this Caffe."""
    types = runtime_layer_types()
    return PatchSettings(
        num_classes=model.num_classes,
        label_map_file=inputs.labelmap,
        train_source=inputs.train_lmdb,
        test_source=inputs.test_lmdb,
        train_batch_size=model.train_batch_size,
        test_batch_size=model.test_batch_size,
        name_size_file=inputs.name_size,
        relu6_supported="ReLU6" in types,
        known_layer_types=types,
    )


def make_model(
    settings: ModelSettings,
    solver: SolverSettings,
    inputs: ModelInputs,
    outputs: dict[str, str],
    config_out: str | os.PathLike,
    check_deploy: bool = True,
) -> dict[str, Any]:
    """Write the four prototxts (``outputs``: role → path) and ``config_out``; return the record written."""
    texts, record = build_model_texts(settings, solver, inputs, outputs)
    if check_deploy:
        deploy_dir = Path(outputs["deploy"]).parent
        deploy_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".prototxt", dir=deploy_dir) as probe:
            probe.write(texts["deploy"])
            probe.flush()
            record["deploy_check"] = inspect_deploy(probe.name)
    for role, path in outputs.items():
        atomic_write_text(path, texts[role])
    # `caffe train` by hand refuses to start when the snapshot folder is missing.
    Path(HAND_RUN_SNAPSHOT_PREFIX).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_out, json.dumps(record, indent=2) + "\n")
    return record
