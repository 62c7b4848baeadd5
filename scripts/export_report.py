#!/usr/bin/env python3
"""The export's pages of the report: the runtime check (verify.json) and, given int8.json, the INT8 table,
the layers that lose the most and a plot of AP against latency."""

import argparse
from pathlib import Path

from ssdlite_coco.common.cli import run


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verify", type=Path, help="results/export/verify.json")
    parser.add_argument("--export-html", type=Path, help="page of the runtime check (with --verify)")
    parser.add_argument("--int8", type=Path, help="results/export/int8/int8.json")
    parser.add_argument("--int8-html", type=Path, help="page of the INT8 table (with --int8)")
    parser.add_argument("--int8-png", type=Path, help="AP against latency (with --int8)")
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.report.export_pages import export_html, int8_html, plot_int8

    if args.verify and args.export_html:
        export_html(args.verify, args.export_html)
    if args.int8 and args.int8_html:
        int8_html(args.int8, args.int8_html)
    if args.int8 and args.int8_png:
        plot_int8(args.int8, args.int8_png)
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
