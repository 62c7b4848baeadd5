#!/usr/bin/env python3
"""Check that a COCO-format dataset (instances JSON + images folder) is usable by the workflow."""

import argparse
import json
import sys

from ssdlite_coco.dataset.coco_json import DatasetError, summarize, validate_dataset


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", required=True, help="COCO instances JSON")
    parser.add_argument("--images", required=True, help="folder holding the images it lists")
    parser.add_argument("--check-images", type=int, default=20, help="how many images to open (0: none)")
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        data = validate_dataset(args.instances, args.images, sample=args.check_images)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"ok: {json.dumps(summarize(data))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
