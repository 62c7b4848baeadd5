#!/usr/bin/env python3
"""Download one file with resume and SHA-1 check; see ssdlite_coco.common.download."""

import argparse
import sys

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.download import download_file
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.dataset.settings import DownloadSettings


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--sha1", default="", help="expected SHA-1 (hex); empty: do not check")
    parser.add_argument("--out", required=True, help="file to write (bytes accumulate in OUT.part)")
    add_settings_argument(parser, DownloadSettings)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without data before retrying")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(args: argparse.Namespace) -> int:
    settings = parse_settings(DownloadSettings, args.settings)
    if not args.sha1:
        print(f"warning: no SHA-1 given for {args.url}; the download is not verified", file=sys.stderr)
    download_file(
        args.url,
        args.out,
        sha1=args.sha1 or None,
        retries=settings.retries,
        timeout=args.timeout,
        progress=not args.no_progress,
    )
    print(f"downloaded {args.url} -> {args.out}")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
