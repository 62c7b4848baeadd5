#!/usr/bin/env python3
"""Generate one split of the demo dataset (COCO-format shapes); see ssdlite_coco.dataset.demo."""

import argparse
import json

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.config import schema_default
from ssdlite_coco.dataset.demo import SPLIT_INDEX, generate_split


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", choices=sorted(SPLIT_INDEX), required=True)
    parser.add_argument("--images", type=int, required=True, help="number of images to generate")
    parser.add_argument("--seed", type=int, default=schema_default("dataset.demo.seed"))
    parser.add_argument("--out-instances", required=True, help="instances JSON to write")
    parser.add_argument("--out-images", required=True, help="images folder to write")
    return parser


def main(args: argparse.Namespace) -> int:
    counts = generate_split(args.split, args.images, args.seed, args.out_instances, args.out_images)
    print(f"demo {args.split}: {json.dumps(counts)}")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
