#!/usr/bin/env python3
"""Put initial weights (a local .caffemodel, or a URL checked against its sha256) at a path, atomically."""

import argparse
from pathlib import Path

from ssdlite_coco.common.cli import run


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True, help="a .caffemodel path or an http(s) URL")
    parser.add_argument("--sha256", default="", help="expected sha256 (required for a URL)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.common.digests import file_digest
    from ssdlite_coco.train.fetch_weights import fetch_weights

    fetch_weights(args.source, args.sha256, args.out, timeout=args.timeout)
    print(f"{args.out}: sha256 {file_digest(args.out)} (from {args.source})")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
