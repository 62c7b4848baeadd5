#!/usr/bin/env python3
"""Read a built LMDB back, verify every record, write stats (CSV) and a picture of sample records (PNG)."""

import argparse

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.lmdb.check import check_lmdb
from ssdlite_coco.lmdb.settings import CheckSettings


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lmdb", required=True, help="LMDB folder (rule build_lmdb)")
    parser.add_argument("--report", required=True, help="its build report (JSON)")
    parser.add_argument("--instances", required=True, help="COCO instances JSON it was built from")
    parser.add_argument("--labelmap", required=True, help="labelmap prototxt it was built with")
    parser.add_argument("--out", required=True, help="folder to write stats.csv, summary.csv, samples.png")
    add_settings_argument(parser, CheckSettings)
    return parser


def main(args: argparse.Namespace) -> int:
    settings = parse_settings(CheckSettings, args.settings)
    summary = check_lmdb(args.lmdb, args.report, args.instances, args.labelmap, args.out, settings)
    print(f"ok: {args.lmdb}: {summary['records']} records and {summary['boxes']} boxes verified; stats in {args.out}")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
