#!/usr/bin/env python3
"""Check initial weights before training: their mAP on the test split and whether the detection head looks trained."""

import argparse
import os
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.evaluate.settings import InitialWeightsCheckSettings
from ssdlite_coco.evaluate.test_split import add_test_split_arguments, split_from_args

os.environ.setdefault("GLOG_minloglevel", "1")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", required=True, type=Path, help="initial .caffemodel")
    add_test_split_arguments(parser)
    add_settings_argument(parser, InitialWeightsCheckSettings)
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True, help="train.device")
    parser.add_argument(
        "--data-threads", type=int, default=1, help="threads decoding and transforming a test batch (the rule's)"
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

    settings = parse_settings(InitialWeightsCheckSettings, args.settings)
    select_device(args.device)
    report = check_initial_weights(
        split_from_args(args),
        args.weights,
        settings,
        args.data_threads,
        log=lambda message: print(message, flush=True),
        conversion=coverage_summary(args.coverage),
    )
    write_check_report(report, args.report_json, args.report_csv)
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
