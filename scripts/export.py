#!/usr/bin/env python3
"""Export the trained net for deployment (Caffe, head-only Caffe, ONNX, calibration images) and check it in
pycaffe, OpenCV DNN, MNN and ONNX Runtime against pycaffe on the test images."""

import argparse
import os
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.config import schema_default
from ssdlite_coco.export.runtime_check import RUNTIMES

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
        "--check-images",
        type=int,
        default=schema_default("export.fold_check_images"),
        help="test images on which the folded net is compared with the trained one",
    )
    parser.add_argument(
        "--fold-tolerance",
        type=float,
        default=schema_default("export.fold_tolerance"),
        help="floor of the folded net's allowed output difference, relative to the output's magnitude (at least 1)",
    )
    parser.add_argument(
        "--fold-noise-factor",
        type=float,
        default=schema_default("export.fold_noise_factor"),
        help="times the trained net's own float32 noise that the folded net and every runtime may differ by",
    )
    parser.add_argument("--calibration-images", type=int, default=schema_default("export.calibration_images"))
    parser.add_argument(
        "--calibration-instances",
        type=Path,
        help="COCO instances JSON of the split the calibration images come from (default: --instances)",
    )
    parser.add_argument("--calibration-images-dir", type=Path, help="its images folder (default: --images)")
    parser.add_argument("--verify-images", type=int, default=schema_default("export.verify_images"), help="0: all")
    parser.add_argument("--tolerance", type=float, default=schema_default("export.tolerance"))
    parser.add_argument("--ap-tolerance", type=float, default=schema_default("export.ap_tolerance"))
    parser.add_argument(
        "--runtimes",
        nargs="+",
        choices=list(RUNTIMES),
        default=schema_default("export.runtimes"),
        help="runtimes the export is checked in (edge toolchains: each in its own venv, made on first use)",
    )
    parser.add_argument("--rknn-target", default=schema_default("export.rknn_target"), help="RKNN target chip")
    parser.add_argument(
        "--reduced-ap-tolerance",
        type=float,
        default=schema_default("export.reduced_precision_ap_tolerance"),
        help="largest AP50 difference of a reduced-precision row (an edge toolchain's float16 default)",
    )
    parser.add_argument("--latency-runs", type=int, default=schema_default("export.latency_runs"))
    parser.add_argument("--score-threshold", type=float, default=schema_default("export.match_score_threshold"))
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
    options = {
        "fold_check_images": args.check_images,
        "fold_tolerance": args.fold_tolerance,
        "fold_noise_factor": args.fold_noise_factor,
        "calibration_images": args.calibration_images,
        "verify_images": args.verify_images,
        "tolerance": args.tolerance,
        "ap_tolerance": args.ap_tolerance,
        "latency_runs": args.latency_runs,
        "score_threshold": args.score_threshold,
        "threads": args.threads,
        "runtimes": args.runtimes,
        "rknn_target": args.rknn_target,
        "reduced_ap_tolerance": args.reduced_ap_tolerance,
        "rewrite": not args.no_rewrites,
    }
    run_export(inputs, args.out_dir, options)
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
