#!/usr/bin/env python3
"""Put initial weights (a local .caffemodel, or a URL checked against its sha256) at a path, atomically."""

import argparse
import sys
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True, help="a .caffemodel path or an http(s) URL")
    parser.add_argument("--sha256", default="", help="expected sha256 (required for a URL)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.caffe_tools.weights import WeightsError, fetch_weights, sha256_of

    try:
        fetch_weights(args.source, args.sha256, args.out, timeout=args.timeout)
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: sha256 {sha256_of(args.out)} (from {args.source})")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
