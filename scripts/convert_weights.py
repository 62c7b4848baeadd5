#!/usr/bin/env python3
"""Convert ImageNet MobileNetV2 weights (torchvision .pth, shicai .caffemodel) into the generated net's backbone."""

import argparse
import os
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.train.settings import ConvertWeightsSettings

os.environ.setdefault("GLOG_minloglevel", "1")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    add_settings_argument(parser, ConvertWeightsSettings)
    parser.add_argument("--weights", required=True, type=Path, help="the ImageNet weights")
    parser.add_argument("--net", required=True, type=Path, help="the generated net (results/model/train.prototxt)")
    parser.add_argument("--out", required=True, type=Path, help=".caffemodel to write (the backbone's layers)")
    parser.add_argument("--coverage-json", type=Path, default=None, help="coverage report to write (JSON)")
    parser.add_argument("--coverage-txt", type=Path, default=None, help="coverage table to write (text)")
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.train.convert_weights import convert_weights

    convert_weights(
        parse_settings(ConvertWeightsSettings, args.settings).initial_weights_format,
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
