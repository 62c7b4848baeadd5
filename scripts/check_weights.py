#!/usr/bin/env python3
"""Check initial weights before training: their mAP on the test split and whether the detection head looks trained."""

import argparse
import os
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.config import schema_default

os.environ.setdefault("GLOG_minloglevel", "1")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test-net", required=True, type=Path, help="test prototxt (results/model/test.prototxt)")
    parser.add_argument("--weights", required=True, type=Path, help="initial .caffemodel")
    parser.add_argument("--lmdb", required=True, type=Path)
    parser.add_argument("--name-size", required=True, type=Path)
    parser.add_argument("--labelmap", required=True, type=Path)
    parser.add_argument("--instances", required=True, type=Path)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=schema_default("train.device"))
    parser.add_argument("--batch-size", type=int, default=schema_default("evaluate.batch_size"))
    parser.add_argument(
        "--data-threads", type=int, default=1, help="threads decoding and transforming a test batch (the rule's)"
    )
    parser.add_argument(
        "--chance-ap50",
        type=float,
        default=schema_default("evaluate.chance_ap50"),
        help="COCO AP50 at or below which the weights count as untrained for this net",
    )
    parser.add_argument(
        "--coverage", type=Path, default=None, help="coverage report of converted ImageNet weights (JSON)"
    )
    parser.add_argument("--report-json", required=True, type=Path)
    parser.add_argument("--report-csv", required=True, type=Path)
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.caffe_tools.device import select_device
    from ssdlite_coco.train.convert_weights import coverage_summary
    from ssdlite_coco.train.initial_weights import check_initial_weights, write_check_report

    select_device(args.device)
    test_split = {
        "lmdb": args.lmdb,
        "name_size": args.name_size,
        "labelmap": args.labelmap,
        "instances": args.instances,
    }
    report = check_initial_weights(
        args.test_net,
        args.weights,
        test_split,
        args.chance_ap50,
        batch_size=args.batch_size,
        log=lambda message: print(message, flush=True),
        conversion=coverage_summary(args.coverage),
        data_threads=args.data_threads,
    )
    write_check_report(report, args.report_json, args.report_csv)
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
