#!/usr/bin/env python3
"""Generate one split of the demo dataset (COCO-format shapes); see ssdlite_coco.dataset.demo."""

import argparse
import json

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.dataset.demo import SPLIT_INDEX, generate_split
from ssdlite_coco.dataset.settings import DemoSettings


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", choices=sorted(SPLIT_INDEX), required=True, help="it gets {split}_images images")
    add_settings_argument(parser, DemoSettings)
    parser.add_argument("--out-instances", required=True, help="instances JSON to write")
    parser.add_argument("--out-images", required=True, help="images folder to write")
    return parser


def main(args: argparse.Namespace) -> int:
    settings = parse_settings(DemoSettings, args.settings)
    count = settings.images_of(args.split)
    counts = generate_split(args.split, count, settings.seed, args.out_instances, args.out_images)
    print(f"demo {args.split}: {json.dumps(counts)}")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
