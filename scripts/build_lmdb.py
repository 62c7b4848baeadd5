#!/usr/bin/env python3
"""Convert a COCO-format split into a Caffe LMDB of AnnotatedDatum records (plus a JSON build report)."""

import argparse
import sys

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.lmdb.settings import BuildSettings
from ssdlite_coco.lmdb.writer import BuildOptions, build_lmdb


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", required=True, help="COCO instances JSON of the split")
    parser.add_argument("--images", required=True, help="folder holding the images it lists")
    parser.add_argument("--labelmap", required=True, help="labelmap prototxt (names = COCO category ids)")
    parser.add_argument("--out", required=True, help="LMDB folder to create")
    parser.add_argument("--report-out", required=True, help="build report (JSON) to write")
    parser.add_argument(
        "--split",
        required=True,
        choices=("trainval", "test"),
        help="trainval is shuffled with lmdb.shuffle_seed; test keeps image id order",
    )
    add_settings_argument(parser, BuildSettings)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(args: argparse.Namespace) -> int:
    options = BuildOptions(parse_settings(BuildSettings, args.settings), args.split, progress=not args.no_progress)
    report = build_lmdb(args.instances, args.images, args.labelmap, args.out, args.report_out, options)
    for message in report["bad_record_messages"]:
        print(f"skipped: {message}", file=sys.stderr)
    print(
        f"ok: {args.out}: {report['records']} records, {report['counts'].get('boxes', 0)} boxes, "
        f"{sum(report['bad_records'].values())} bad records skipped, "
        f"{report['counts'].get('reencoded_images', 0)} images re-encoded"
    )
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
