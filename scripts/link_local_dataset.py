#!/usr/bin/env python3
"""Validate a local COCO-format dataset and publish it as a split (the images folder is linked)."""

import argparse
import json
import sys

from ssdlite_coco.dataset.coco_json import DatasetError, prepare_local_split


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", required=True, help="the dataset's COCO instances JSON")
    parser.add_argument("--images", required=True, help="the folder holding its images")
    parser.add_argument("--check-images", type=int, default=20, help="how many images to open as a check")
    parser.add_argument("--out-instances", required=True)
    parser.add_argument("--out-images", required=True, help="becomes a symlink to --images")
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        counts = prepare_local_split(
            args.instances, args.images, args.out_instances, args.out_images, sample=args.check_images
        )
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.instances}: {json.dumps(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
