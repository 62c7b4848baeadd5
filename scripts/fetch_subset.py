#!/usr/bin/env python3
"""Fetch a deterministic subset of a COCO 2017 split image by image (via each image's coco_url)."""

import argparse
import json

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.config import schema_default
from ssdlite_coco.dataset.coco2017 import fetch_subset


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--annotations-zip", required=True, help="annotations_trainval2017.zip")
    parser.add_argument("--coco-split", required=True, help="train2017 or val2017")
    parser.add_argument("--images", type=int, required=True, help="number of images to pick")
    parser.add_argument(
        "--seed", type=int, default=schema_default("dataset.subset.seed"), help="which images are picked"
    )
    parser.add_argument(
        "--base-url", default=schema_default("dataset.download.base_url"), help="mirror replacing the coco_url host"
    )
    parser.add_argument("--cache-dir", required=True, help="downloaded images, kept across runs")
    parser.add_argument("--retries", type=int, default=schema_default("dataset.download.retries"))
    parser.add_argument("--out-instances", required=True)
    parser.add_argument("--out-images", required=True)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(args: argparse.Namespace) -> int:
    counts = fetch_subset(
        args.annotations_zip,
        args.coco_split,
        args.images,
        args.seed,
        args.cache_dir,
        args.out_instances,
        args.out_images,
        base_url=args.base_url,
        retries=args.retries,
        progress=not args.no_progress,
    )
    print(f"{args.coco_split} subset: {json.dumps(counts)}")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
