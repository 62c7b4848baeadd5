#!/usr/bin/env python3
"""Evaluate trained weights on the test split: COCO detections, pycocotools metrics and Caffe's detection_eval."""

import argparse
import json
import os
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.config import schema_default

os.environ.setdefault("GLOG_minloglevel", "1")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test-net", required=True, type=Path, help="test prototxt (results/model/test.prototxt)")
    parser.add_argument("--weights", required=True, type=Path, help=".caffemodel to evaluate")
    parser.add_argument("--lmdb", required=True, type=Path, help="test LMDB (results/lmdb/test_lmdb)")
    parser.add_argument("--name-size", required=True, type=Path, help="results/labelmap/test_name_size.txt")
    parser.add_argument("--labelmap", required=True, type=Path, help="results/labelmap/labelmap.prototxt")
    parser.add_argument("--instances", required=True, type=Path, help="results/data/test/instances.json")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=schema_default("train.device"))
    parser.add_argument(
        "--batch-size",
        type=int,
        default=schema_default("evaluate.batch_size"),
        help="largest test batch (a divisor of the image count)",
    )
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

    select_device(args.device)
    metrics, detections, _ = evaluate_test_split(
        args.test_net,
        args.weights,
        args.lmdb,
        args.name_size,
        args.labelmap,
        args.instances,
        max_batch=args.batch_size,
        data_threads=args.data_threads,
        log=lambda message: print(message, flush=True),
    )
    print(metrics["summary"], end="")
    print(f"detection_eval (Caffe, VOC 11-point AP@0.5): {metrics['detection_eval']}")
    atomic_write_text(args.detections, json.dumps(detections) + "\n")
    write_metrics(metrics, args.metrics_json, args.metrics_csv, args.per_class_csv)
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
