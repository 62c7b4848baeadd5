#!/usr/bin/env python3
"""Write the MobileNetV2-SSDLite train, test, deploy and solver prototxts (generated, or the user's patched).

The `model` and `solver` config sections come in as JSON; what was resolved (class count, test_iter,
priors, the deploy net's parameter count as pycaffe sees it, warnings) is written to --config-out.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ssdlite_coco.common.atomic import atomic_write_text
from ssdlite_coco.model.nets import (
    ModelError,
    ModelOptions,
    count_test_images,
    generate_model,
    inspect_deploy,
    patch_model,
    resize_field,
    resolve_num_classes,
    supports_augmentation,
)
from ssdlite_coco.model.patcher import PatchError, PatchSettings
from ssdlite_coco.model.solver import SolverError, SolverOptions

# Config keys of the `model` section that are not generator options.
WORKFLOW_KEYS = ("mode", "num_classes", "patch")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-config", default="{}", help="the `model` config section as JSON")
    parser.add_argument("--solver-config", default="{}", help="the `solver` config section as JSON")
    parser.add_argument("--labelmap", required=True, help="labelmap prototxt (gives the class count)")
    parser.add_argument("--name-size", required=True, help="test split 'image_id height width' file")
    parser.add_argument("--test-instances", required=True, help="test split COCO JSON (gives test_iter)")
    parser.add_argument("--train-lmdb", default="results/lmdb/trainval_lmdb", help="train LMDB path, as written")
    parser.add_argument("--test-lmdb", default="results/lmdb/test_lmdb", help="test LMDB path, as written")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="solver_mode CPU or GPU")
    parser.add_argument("--out-train", required=True)
    parser.add_argument("--out-test", required=True)
    parser.add_argument("--out-deploy", required=True)
    parser.add_argument("--out-solver", required=True)
    parser.add_argument("--config-out", required=True, help="resolved configuration (JSON)")
    parser.add_argument("--no-check", action="store_true", help="do not instantiate the deploy net in pycaffe")
    return parser


def runtime_layer_types() -> frozenset[str]:
    import caffe

    return frozenset(caffe.layer_type_list())


def main(args: argparse.Namespace) -> int:
    outputs = {
        "train": args.out_train,
        "test": args.out_test,
        "deploy": args.out_deploy,
        "solver": args.out_solver,
    }
    try:
        model_config = json.loads(args.model_config)
        solver_config = json.loads(args.solver_config)
        mode = model_config.get("mode", "generate")
        num_classes = resolve_num_classes(model_config.get("num_classes", "auto"), args.labelmap)
        num_test_images = count_test_images(args.test_instances)
        solver_options = SolverOptions.from_dict(solver_config)
        options = {key: value for key, value in model_config.items() if key not in WORKFLOW_KEYS}
        model = ModelOptions.from_dict(
            options
            | {
                "num_classes": num_classes,
                "train_source": args.train_lmdb,
                "test_source": args.test_lmdb,
                "label_map_file": args.labelmap,
                "name_size_file": args.name_size,
            }
        )
        if mode == "generate":
            texts, resolved = generate_model(model, solver_options, outputs, num_test_images, args.device)
        elif mode == "patch":
            types = runtime_layer_types()
            settings = PatchSettings(
                num_classes=num_classes,
                label_map_file=args.labelmap,
                train_source=args.train_lmdb,
                test_source=args.test_lmdb,
                train_batch_size=model.train_batch_size,
                test_batch_size=model.test_batch_size,
                name_size_file=args.name_size,
                relu6_supported="ReLU6" in types,
                known_layer_types=types,
            )
            texts, resolved = patch_model(
                model_config.get("patch") or {},
                settings,
                solver_options,
                outputs,
                num_test_images,
                args.device,
            )
        else:
            raise ModelError(f"model.mode is {mode!r}; use 'generate' or 'patch'")
    except (ModelError, PatchError, SolverError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for warning in resolved.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if not args.no_check:
        # Instantiate the deploy net before any output exists: a net Caffe rejects leaves nothing behind.
        Path(args.out_deploy).parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".prototxt", dir=Path(args.out_deploy).parent) as probe:
            probe.write(texts["deploy"])
            probe.flush()
            resolved["deploy_check"] = inspect_deploy(probe.name)
    for role, path in outputs.items():
        atomic_write_text(path, texts[role])
    # Caffe refuses to start when the snapshot folder is missing.
    Path(solver_options.snapshot_prefix).parent.mkdir(parents=True, exist_ok=True)
    record = {
        "mode": mode,
        "num_classes": num_classes,
        "num_test_images": num_test_images,
        "model": model.to_dict()
        if mode == "generate"
        else {"train_batch_size": model.train_batch_size, "test_batch_size": model.test_batch_size},
        "solver": solver_options.to_dict(),
        "patch_sources": model_config.get("patch") if mode == "patch" else None,
        "caffe": {"augmentation_supported": supports_augmentation(), "resize_field": resize_field()},
        "files": outputs,
        **resolved,
    }
    atomic_write_text(args.config_out, json.dumps(record, indent=2) + "\n")
    check = resolved.get("deploy_check", {})
    print(
        f"ok: {Path(args.out_deploy).parent}: {mode} mode, {num_classes} classes, "
        f"test_iter {resolved['test_iter']}"
        + (f", {check['num_priors']} priors, {check['learnable_parameters']} parameters" if check else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
