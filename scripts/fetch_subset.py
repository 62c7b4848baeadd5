#!/usr/bin/env python3
"""Fetch a deterministic subset of a COCO 2017 split image by image (via each image's coco_url)."""

import argparse
import json

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings, setting_names
from ssdlite_coco.dataset.coco2017 import SPLIT_TO_COCO, fetch_subset
from ssdlite_coco.dataset.settings import SubsetDownloadSettings, SubsetSettings


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--annotations-zip", required=True, help="annotations_trainval2017.zip")
    parser.add_argument(
        "--split", choices=sorted(SPLIT_TO_COCO), required=True, help="trainval: from train2017, test: from val2017"
    )
    add_settings_argument(parser, SubsetSettings)
    parser.add_argument(
        "--download-settings",
        default="{}",
        help="keys of the `dataset.download` config section as JSON; the others take their schema defaults "
        f"(reads: {', '.join(setting_names(SubsetDownloadSettings))})",
    )
    parser.add_argument("--cache-dir", required=True, help="downloaded images, kept across runs")
    parser.add_argument("--out-instances", required=True)
    parser.add_argument("--out-images", required=True)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(args: argparse.Namespace) -> int:
    settings = parse_settings(SubsetSettings, args.settings)
    download = parse_settings(SubsetDownloadSettings, args.download_settings)
    coco_split = SPLIT_TO_COCO[args.split]
    counts = fetch_subset(
        args.annotations_zip,
        coco_split,
        settings.images_of(args.split),
        settings.seed,
        args.cache_dir,
        args.out_instances,
        args.out_images,
        base_url=download.base_url,
        retries=download.retries,
        progress=not args.no_progress,
    )
    print(f"{coco_split} subset: {json.dumps(counts)}")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
