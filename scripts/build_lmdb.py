#!/usr/bin/env python3
"""Convert a COCO-format split into a Caffe LMDB of AnnotatedDatum records (plus a JSON build report)."""

import argparse
import sys

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.config import schema_default
from ssdlite_coco.lmdb.records import CROWD_POLICIES
from ssdlite_coco.lmdb.writer import BAD_RECORD_POLICIES, BuildOptions, build_lmdb


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", required=True, help="COCO instances JSON of the split")
    parser.add_argument("--images", required=True, help="folder holding the images it lists")
    parser.add_argument("--labelmap", required=True, help="labelmap prototxt (names = COCO category ids)")
    parser.add_argument("--out", required=True, help="LMDB folder to create")
    parser.add_argument("--report-out", required=True, help="build report (JSON) to write")
    parser.add_argument(
        "--crowd",
        choices=CROWD_POLICIES,
        default=schema_default("lmdb.crowd"),
        help="crowd boxes: keep as difficult, or drop",
    )
    parser.add_argument(
        "--min-box-size",
        type=float,
        default=schema_default("lmdb.min_box_size"),
        help="drop boxes narrower or lower than this many pixels",
    )
    parser.add_argument(
        "--on-bad-record",
        choices=BAD_RECORD_POLICIES,
        default=schema_default("lmdb.on_bad_record"),
        help="stop at the first bad image, or skip (and count) bad images",
    )
    parser.add_argument(
        "--shuffle-seed",
        type=int,
        default=None,
        help="shuffle the records with this seed (default: image id order)",
    )
    parser.add_argument(
        "--readers", type=int, default=schema_default("lmdb.readers"), help="threads reading the image files"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(args: argparse.Namespace) -> int:
    options = BuildOptions(
        crowd=args.crowd,
        min_box_size=args.min_box_size,
        on_bad_record=args.on_bad_record,
        shuffle_seed=args.shuffle_seed,
        readers=args.readers,
        progress=not args.no_progress,
    )
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
