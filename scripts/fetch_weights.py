#!/usr/bin/env python3
"""Put the initial weights (train.initial_weights: a local file, or a URL checked against its sha256) at a path."""

import argparse
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.train.settings import FetchWeightsSettings


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    add_settings_argument(parser, FetchWeightsSettings)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.common.digests import file_digest
    from ssdlite_coco.train.fetch_weights import fetch_weights

    settings = parse_settings(FetchWeightsSettings, args.settings)
    source = settings.initial_weights
    fetch_weights(source, settings.initial_weights_sha256, args.out, timeout=args.timeout)
    print(f"{args.out}: sha256 {file_digest(args.out)} (from {source})")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
