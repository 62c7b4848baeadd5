#!/usr/bin/env python3
"""Check that a COCO-format dataset (instances JSON + images folder) is usable by the workflow."""

import argparse
import json

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.dataset.coco_json import summarize, validate_dataset
from ssdlite_coco.dataset.settings import LocalSettings


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", required=True, help="COCO instances JSON")
    parser.add_argument("--images", required=True, help="folder holding the images it lists")
    add_settings_argument(parser, LocalSettings)
    return parser


def main(args: argparse.Namespace) -> int:
    settings = parse_settings(LocalSettings, args.settings)
    data = validate_dataset(args.instances, args.images, sample=settings.check_images)
    print(f"ok: {json.dumps(summarize(data))}")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
