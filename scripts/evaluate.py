#!/usr/bin/env python3
"""Evaluate trained weights on the test split: COCO detections, pycocotools metrics and Caffe's detection_eval."""

import argparse
import json
import os
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.evaluate.settings import EvaluateSettings
from ssdlite_coco.evaluate.test_split import add_test_split_arguments, split_from_args

os.environ.setdefault("GLOG_minloglevel", "1")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", required=True, type=Path, help=".caffemodel to evaluate")
    add_test_split_arguments(parser)
    add_settings_argument(parser, EvaluateSettings)
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True, help="train.device")
    parser.add_argument(
        "--data-threads", type=int, default=1, help="threads decoding and transforming a test batch (the rule's)"
    )
    parser.add_argument("--metrics-json", required=True, type=Path)
    parser.add_argument("--metrics-csv", required=True, type=Path)
    parser.add_argument("--per-class-csv", required=True, type=Path)
    parser.add_argument("--detections", required=True, type=Path, help="COCO results JSON to write")
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.caffe_tools.device import select_device
    from ssdlite_coco.common.atomic import atomic_write_text
    from ssdlite_coco.evaluate.coco_scoring import evaluate_test_split, write_metrics

    settings = parse_settings(EvaluateSettings, args.settings)
    select_device(args.device)
    metrics, detections, _ = evaluate_test_split(
        split_from_args(args),
        args.weights,
        settings.batch_size,
        args.data_threads,
        log=lambda message: print(message, flush=True),
    )
    print(metrics["summary"], end="")
    print(f"detection_eval (Caffe, VOC 11-point AP@0.5): {metrics['detection_eval']}")
    atomic_write_text(args.detections, json.dumps(detections) + "\n")
    write_metrics(metrics, args.metrics_json, args.metrics_csv, args.per_class_csv)
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
