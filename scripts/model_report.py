#!/usr/bin/env python3
"""The model stage's page of the report: the share of training boxes the priors can match, per size."""

import argparse
from pathlib import Path

from ssdlite_coco.common.cli import run


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--coverage", type=Path, required=True, help="results/model/prior_coverage.json")
    parser.add_argument("--coverage-html", type=Path, required=True, help="the page to write")
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.report.model_page import prior_coverage_html

    prior_coverage_html(args.coverage, args.coverage_html)
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
