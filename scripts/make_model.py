#!/usr/bin/env python3
"""Write the MobileNetV2-SSDLite train, test, deploy and solver prototxts (generated, or the user's patched).

The `model` and `solver` config sections come in as JSON (--model-settings, --solver-settings; the keys
not given take their schema defaults); what was resolved (class count, test_iter, priors, the deploy net's
parameter count as pycaffe sees it, warnings) is written to --config-out. With --train-instances, the share
of the training boxes the priors can match (per size bucket) goes to --coverage-json and --coverage-md, with a
warning when it is below model.prior_coverage_warn_below.
"""

import argparse
import sys
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.model.make import ModelInputs, make_model
from ssdlite_coco.model.prior_coverage import coverage_summary, write_prior_coverage
from ssdlite_coco.model.settings import ModelSettings, SolverSettings


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    add_settings_argument(parser, ModelSettings, "--model-settings")
    add_settings_argument(parser, SolverSettings, "--solver-settings")
    parser.add_argument("--labelmap", required=True, help="labelmap prototxt (gives the class count)")
    parser.add_argument("--name-size", required=True, help="test split 'image_id height width' file")
    parser.add_argument("--test-instances", required=True, help="test split COCO JSON (gives test_iter)")
    parser.add_argument("--train-lmdb", default="results/lmdb/trainval_lmdb", help="train LMDB path, as written")
    parser.add_argument("--test-lmdb", default="results/lmdb/test_lmdb", help="test LMDB path, as written")
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True, help="train.device: solver_mode CPU or GPU")
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
    settings = parse_settings(ModelSettings, args.model_settings)
    inputs = ModelInputs(
        labelmap=args.labelmap,
        name_size=args.name_size,
        test_instances=args.test_instances,
        train_lmdb=args.train_lmdb,
        test_lmdb=args.test_lmdb,
        device=args.device,
    )
    outputs = {"train": args.out_train, "test": args.out_test, "deploy": args.out_deploy, "solver": args.out_solver}
    record = make_model(
        settings,
        parse_settings(SolverSettings, args.solver_settings),
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
            settings.prior_coverage_warn_below,
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
