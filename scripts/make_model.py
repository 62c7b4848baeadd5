#!/usr/bin/env python3
"""Write the MobileNetV2-SSDLite train, test, deploy and solver prototxts (generated, or the user's patched).

The `model` and `solver` config sections come in as JSON; what was resolved (class count, test_iter,
priors, the deploy net's parameter count as pycaffe sees it, warnings) is written to --config-out. With
--train-instances, the share of the training boxes the priors can match (per size bucket) goes to
--coverage-json and --coverage-md, with a warning when it is below model.prior_coverage_warn_below.
"""

import argparse
import json
import sys
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.config import schema_default
from ssdlite_coco.model.make import ModelInputs, make_model
from ssdlite_coco.model.prior_coverage import coverage_summary, write_prior_coverage


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-config", default="{}", help="the `model` config section as JSON")
    parser.add_argument("--solver-config", default="{}", help="the `solver` config section as JSON")
    parser.add_argument("--labelmap", required=True, help="labelmap prototxt (gives the class count)")
    parser.add_argument("--name-size", required=True, help="test split 'image_id height width' file")
    parser.add_argument("--test-instances", required=True, help="test split COCO JSON (gives test_iter)")
    parser.add_argument("--train-lmdb", default="results/lmdb/trainval_lmdb", help="train LMDB path, as written")
    parser.add_argument("--test-lmdb", default="results/lmdb/test_lmdb", help="test LMDB path, as written")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=schema_default("train.device"), help="solver_mode CPU or GPU"
    )
    parser.add_argument("--out-train", required=True)
    parser.add_argument("--out-test", required=True)
    parser.add_argument("--out-deploy", required=True)
    parser.add_argument("--out-solver", required=True)
    parser.add_argument("--config-out", required=True, help="resolved configuration (JSON)")
    parser.add_argument("--no-check", action="store_true", help="do not instantiate the deploy net in pycaffe")
    parser.add_argument("--train-instances", help="training split COCO JSON: report the prior coverage of its boxes")
    parser.add_argument("--coverage-json", help="prior coverage report (JSON), with --train-instances")
    parser.add_argument("--coverage-md", help="prior coverage report (Markdown), with --train-instances")
    return parser


def main(args: argparse.Namespace) -> int:
    inputs = ModelInputs(
        labelmap=args.labelmap,
        name_size=args.name_size,
        test_instances=args.test_instances,
        train_lmdb=args.train_lmdb,
        test_lmdb=args.test_lmdb,
        device=args.device,
    )
    outputs = {"train": args.out_train, "test": args.out_test, "deploy": args.out_deploy, "solver": args.out_solver}
    model_config = json.loads(args.model_config)
    record = make_model(
        model_config,
        json.loads(args.solver_config),
        inputs,
        outputs,
        args.config_out,
        check_deploy=not args.no_check,
    )
    warnings = list(record.get("warnings", []))
    if args.train_instances:
        folder = Path(args.out_deploy).parent
        coverage = write_prior_coverage(
            args.out_deploy,
            args.out_train,
            args.train_instances,
            args.coverage_json or folder / "prior_coverage.json",
            args.coverage_md or folder / "prior_coverage.md",
            model_config.get("prior_coverage_warn_below", schema_default("model.prior_coverage_warn_below")),
            record["model"] if record["mode"] == "generate" else None,
        )
        warnings += [coverage["warning"]] if coverage["warning"] else []
        print(f"prior coverage: {coverage_summary(coverage)}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    check = record.get("deploy_check", {})
    print(
        f"ok: {Path(args.out_deploy).parent}: {record['mode']} mode, {record['num_classes']} classes, "
        f"test_iter {record['test_iter']}"
        + (f", {check['num_priors']} priors, {check['learnable_parameters']} parameters" if check else "")
    )
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
