#!/usr/bin/env python3
"""Export the trained net for deployment (Caffe, head-only Caffe, ONNX, calibration images) and check it in
pycaffe, OpenCV DNN, MNN and ONNX Runtime against pycaffe on the test images."""

import argparse
import os
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.export.settings import ExportSettings

os.environ.setdefault("GLOG_minloglevel", "1")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deploy-net", required=True, type=Path, help="results/model/deploy.prototxt")
    parser.add_argument("--weights", required=True, type=Path, help="trained .caffemodel")
    parser.add_argument("--test-net", required=True, type=Path, help="test prototxt: its data layer's transform")
    parser.add_argument("--instances", required=True, type=Path, help="COCO instances JSON of the test split")
    parser.add_argument("--images", required=True, type=Path, help="images folder of the test split")
    parser.add_argument("--labelmap", type=Path, help="labelmap.prototxt: with it, COCO AP of every runtime")
    parser.add_argument("--out-dir", required=True, type=Path, help="results/export")
    parser.add_argument(
        "--calibration-instances",
        type=Path,
        help="COCO instances JSON of the split the calibration images come from (default: --instances)",
    )
    parser.add_argument("--calibration-images-dir", type=Path, help="its images folder (default: --images)")
    add_settings_argument(parser, ExportSettings)
    parser.add_argument(
        "--no-rewrites",
        action="store_true",
        help="skip the runtime-safe rewrites (to see a runtime fail on the folded net as it is)",
    )
    parser.add_argument("--threads", type=int, default=1, help="threads of every runtime (the rule's threads)")
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.export.stage import ExportInputs, run_export

    inputs = ExportInputs(
        args.deploy_net,
        args.weights,
        args.test_net,
        args.instances,
        args.images,
        args.labelmap,
        args.calibration_instances,
        args.calibration_images_dir,
    )
    settings = parse_settings(ExportSettings, args.settings)
    run_export(inputs, args.out_dir, settings, args.threads, rewrite=not args.no_rewrites)
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
