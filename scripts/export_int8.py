#!/usr/bin/env python3
"""Quantize the head-only export to INT8 (ONNX Runtime static QDQ, MNN's offline quantizer, RKNN) on the
calibration images, evaluate every model on the test images like the FP32 export, and say what INT8
costs against the AP budget (results/export/int8/)."""

import argparse
import os
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.export.settings import Int8Settings

os.environ.setdefault("GLOG_minloglevel", "1")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export-dir", required=True, type=Path, help="results/export (the export rule's outputs)")
    parser.add_argument("--deploy-net", required=True, type=Path, help="results/model/deploy.prototxt")
    parser.add_argument("--test-net", required=True, type=Path, help="test prototxt: its data layer's transform")
    parser.add_argument("--instances", required=True, type=Path, help="COCO instances JSON of the test split")
    parser.add_argument("--images", required=True, type=Path, help="images folder of the test split")
    parser.add_argument("--labelmap", required=True, type=Path, help="labelmap.prototxt")
    parser.add_argument("--out-dir", required=True, type=Path, help="results/export/int8")
    parser.add_argument(
        "--calibration", type=Path, help="calibration folder (list.txt + .npy); default: EXPORT_DIR/calibration"
    )
    add_settings_argument(parser, Int8Settings)
    parser.add_argument("--threads", type=int, default=1, help="threads of every runtime (the rule's threads)")
    return parser


def main(args: argparse.Namespace) -> int:
    import sys

    from ssdlite_coco.export.int8 import Int8Inputs, run_int8

    inputs = Int8Inputs(
        args.export_dir, args.deploy_net, args.test_net, args.instances, args.images, args.labelmap, args.calibration
    )
    verdict = run_int8(inputs, args.out_dir, parse_settings(Int8Settings, args.settings), args.threads)["verdict"]
    if verdict["over_budget"] or verdict["failed"]:
        print(f"warning: {verdict['message']} ({args.out_dir / 'int8.md'})", file=sys.stderr, flush=True)
    else:
        print(verdict["message"], flush=True)
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
