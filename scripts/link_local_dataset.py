#!/usr/bin/env python3
"""Validate a local COCO-format dataset and publish it as a split (the images folder is linked)."""

import argparse
import json

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.dataset.coco_json import prepare_local_split
from ssdlite_coco.dataset.settings import LocalSettings


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", required=True, help="the dataset's COCO instances JSON")
    parser.add_argument("--images", required=True, help="the folder holding its images")
    add_settings_argument(parser, LocalSettings)
    parser.add_argument("--out-instances", required=True)
    parser.add_argument("--out-images", required=True, help="becomes a symlink to --images")
    return parser


def main(args: argparse.Namespace) -> int:
    settings = parse_settings(LocalSettings, args.settings)
    counts = prepare_local_split(
        args.instances, args.images, args.out_instances, args.out_images, sample=settings.check_images
    )
    print(f"{args.instances}: {json.dumps(counts)}")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
