#!/usr/bin/env python3
"""Write the Caffe-SSD labelmap of the dataset and the name-size file (image_id height width) per split."""

import argparse

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.labelmap import LabelmapSettings, make_labelmap


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trainval", required=True, help="COCO instances JSON of the trainval split")
    parser.add_argument("--test", required=True, help="COCO instances JSON of the test split")
    add_settings_argument(parser, LabelmapSettings)
    parser.add_argument("--labelmap-out", required=True, help="labelmap prototxt to write")
    parser.add_argument("--trainval-name-size-out", required=True, help="name-size file of trainval")
    parser.add_argument("--test-name-size-out", required=True, help="name-size file of test")
    return parser


def main(args: argparse.Namespace) -> int:
    items = make_labelmap(
        {"trainval": args.trainval, "test": args.test},
        args.labelmap_out,
        {"trainval": args.trainval_name_size_out, "test": args.test_name_size_out},
        parse_settings(LabelmapSettings, args.settings),
    )
    print(f"ok: {args.labelmap_out}: {len(items)} labels (background included)")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
