#!/usr/bin/env python3
"""Export the deploy net with BatchNorm/Scale folded into the convolutions, checked on real test images."""

import argparse
import json
import os
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.config import schema_default

os.environ.setdefault("GLOG_minloglevel", "1")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deploy-net", required=True, type=Path, help="results/model/deploy.prototxt")
    parser.add_argument("--weights", required=True, type=Path, help="trained .caffemodel")
    parser.add_argument(
        "--test-net",
        required=True,
        type=Path,
        help="test prototxt: its data layer's mean and scale preprocess the check images",
    )
    parser.add_argument("--instances", required=True, type=Path, help="COCO instances JSON of the test split")
    parser.add_argument("--images", required=True, type=Path, help="images folder of the test split")
    parser.add_argument(
        "--check-images",
        type=int,
        default=schema_default("evaluate.fold_check_images"),
        help="how many test images to compare on",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=schema_default("evaluate.fold_tolerance"),
        help="largest allowed output difference, relative to the output's magnitude (at least 1)",
    )
    parser.add_argument("--out-prototxt", required=True, type=Path)
    parser.add_argument("--out-weights", required=True, type=Path)
    parser.add_argument("--check-json", required=True, type=Path)
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.common.atomic import atomic_write_text
    from ssdlite_coco.export.fold import ExportError, check_folding, export_deploy
    from ssdlite_coco.export.preprocess import transform_settings

    data = json.loads(args.instances.read_text())
    images = [
        args.images / image["file_name"]
        for image in sorted(data["images"], key=lambda image: image["id"])[: args.check_images]
    ]
    transform = transform_settings(args.test_net)
    folded = export_deploy(args.deploy_net, args.weights, args.out_prototxt, args.out_weights)
    check = check_folding(
        args.deploy_net,
        args.weights,
        args.out_prototxt,
        args.out_weights,
        images,
        transform["mean"],
        transform["scale"],
    )
    check.update(
        tolerance=args.tolerance,
        folded=[vars(layer) for layer in folded],
        images=[str(path) for path in images],
        preprocessing=transform,
    )
    print(
        f"folded {len(folded)} Convolution+BatchNorm(+Scale) chains: {check['layers_before']} -> "
        f"{check['layers_after']} layers; largest output difference on {len(images)} test images: "
        f"{check['max_abs_difference']:.3g} ({check['max_relative_difference']:.3g} relative)"
    )
    if not check["max_relative_difference"] < args.tolerance:
        for path in (args.out_prototxt, args.out_weights):
            path.unlink(missing_ok=True)
        raise ExportError(
            f"the folded net's outputs differ from the original by {check['max_relative_difference']:.3g} "
            f"relative (> {args.tolerance}) on images of {args.images}: {check['per_blob_relative']}"
        )
    atomic_write_text(args.check_json, json.dumps(check, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
