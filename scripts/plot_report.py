#!/usr/bin/env python3
"""Draw the report's figures: loss curve, mAP table (HTML) and a grid of detections on test images."""

import argparse
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.report.settings import DetectionGridSettings


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-log", required=True, type=Path, help="results/train/train_log.csv")
    parser.add_argument("--metrics", required=True, type=Path, help="results/evaluate/metrics.json")
    parser.add_argument("--detections", required=True, type=Path, help="results/evaluate/detections.json")
    parser.add_argument("--instances", required=True, type=Path, help="results/data/test/instances.json")
    parser.add_argument("--images", required=True, type=Path, help="results/data/test/images")
    add_settings_argument(parser, DetectionGridSettings)
    parser.add_argument("--loss-png", required=True, type=Path)
    parser.add_argument("--metrics-html", required=True, type=Path)
    parser.add_argument("--detections-image", required=True, type=Path)
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.report.figures import detection_grid, metrics_html, plot_loss

    settings = parse_settings(DetectionGridSettings, args.settings)
    plot_loss(args.train_log, args.loss_png)
    metrics_html(args.metrics, args.metrics_html)
    detection_grid(args.detections, args.instances, args.images, args.detections_image, settings)
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
