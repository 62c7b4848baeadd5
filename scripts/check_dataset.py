#!/usr/bin/env python3
"""Check that a COCO-format dataset (instances JSON + images folder) is usable by the workflow."""

import argparse
import json

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.config import schema_default
from ssdlite_coco.dataset.coco_json import summarize, validate_dataset


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", required=True, help="COCO instances JSON")
    parser.add_argument("--images", required=True, help="folder holding the images it lists")
    parser.add_argument(
        "--check-images",
        type=int,
        default=schema_default("dataset.local.check_images"),
        help="how many images to open (0: none)",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    data = validate_dataset(args.instances, args.images, sample=args.check_images)
    print(f"ok: {json.dumps(summarize(data))}")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
