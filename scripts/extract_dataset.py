#!/usr/bin/env python3
"""Extract one COCO 2017 split (images + instances JSON) from the downloaded archives."""

import argparse

from ssdlite_coco.common.cli import run
from ssdlite_coco.dataset.coco2017 import extract_split


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images-zip", required=True, help="train2017.zip or val2017.zip")
    parser.add_argument("--annotations-zip", required=True, help="annotations_trainval2017.zip")
    parser.add_argument("--coco-split", required=True, help="train2017 or val2017")
    parser.add_argument("--out-instances", required=True)
    parser.add_argument("--out-images", required=True)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(args: argparse.Namespace) -> int:
    count = extract_split(
        args.images_zip,
        args.annotations_zip,
        args.coco_split,
        args.out_instances,
        args.out_images,
        progress=not args.no_progress,
    )
    print(f"{args.coco_split}: {count} images -> {args.out_images}")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
