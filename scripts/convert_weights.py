#!/usr/bin/env python3
"""Convert ImageNet MobileNetV2 weights (torchvision .pth, shicai .caffemodel) into the generated net's backbone."""

import argparse
import os
from pathlib import Path

from ssdlite_coco.common.cli import run

os.environ.setdefault("GLOG_minloglevel", "1")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--format",
        required=True,
        choices=("torchvision", "shicai"),
        help="torchvision: mobilenet_v2 state dict (.pth); shicai: shicai/MobileNet-Caffe .caffemodel",
    )
    parser.add_argument("--weights", required=True, type=Path, help="the ImageNet weights")
    parser.add_argument("--net", required=True, type=Path, help="the generated net (results/model/train.prototxt)")
    parser.add_argument("--out", required=True, type=Path, help=".caffemodel to write (the backbone's layers)")
    parser.add_argument("--coverage-json", type=Path, default=None, help="coverage report to write (JSON)")
    parser.add_argument("--coverage-txt", type=Path, default=None, help="coverage table to write (text)")
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.train.convert_weights import convert_weights

    convert_weights(
        args.format,
        args.weights,
        args.net,
        args.out,
        coverage_json=args.coverage_json,
        coverage_txt=args.coverage_txt,
        log=lambda message: print(message, flush=True),
    )
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
