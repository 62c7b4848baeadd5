#!/usr/bin/env python3
"""Check initial weights before training: their mAP on the test split and whether the detection head looks trained."""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "1")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test-net", required=True, type=Path, help="test prototxt (results/model/test.prototxt)")
    parser.add_argument("--weights", required=True, type=Path, help="initial .caffemodel")
    parser.add_argument("--lmdb", required=True, type=Path)
    parser.add_argument("--name-size", required=True, type=Path)
    parser.add_argument("--labelmap", required=True, type=Path)
    parser.add_argument("--instances", required=True, type=Path)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--chance-ap50",
        type=float,
        default=0.01,
        help="COCO AP50 at or below which the weights count as untrained for this net",
    )
    parser.add_argument("--report-json", required=True, type=Path)
    parser.add_argument("--report-csv", required=True, type=Path)
    return parser


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from ssdlite_coco.caffe_tools.weights import conf_head_statistics, format_copy_table
    from ssdlite_coco.common.atomic import atomic_write_text
    from ssdlite_coco.evaluate.coco_scoring import CocoEvalError, evaluate_test_split
    from ssdlite_coco.evaluate.test_net import DetectionError, read_net
    from ssdlite_coco.train.runner import TrainingError, select_device

    try:
        select_device(args.device)
        metrics, _, result = evaluate_test_split(
            args.test_net,
            args.weights,
            args.lmdb,
            args.name_size,
            args.labelmap,
            args.instances,
            max_batch=args.batch_size,
            strict=False,
            log=lambda message: print(message, flush=True),
        )
        net_param = read_net(args.test_net)
    except (CocoEvalError, DetectionError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"initial weights {args.weights} copied by layer name into {args.test_net}:")
    print(format_copy_table(result.copied))
    output = next(layer for layer in net_param.layer if layer.type == "DetectionOutput")
    head = conf_head_statistics(net_param, result.params, result.copied, output.detection_output_param.num_classes)
    above_chance = metrics["stats"]["AP50"] > args.chance_ap50
    looks_trained = head["heads_from_weights"] and above_chance
    report = {
        "weights": str(args.weights),
        "coco": metrics["stats"],
        "detection_eval": metrics["detection_eval"],
        "chance_ap50": args.chance_ap50,
        "map_above_chance": above_chance,
        **head,
        "head_looks_trained": looks_trained,
        "layers": {
            status: sum(row.status == status for row in result.copied)
            for status in ("copied", "shape mismatch", "not in weights", "not in net")
        },
    }
    print(metrics["summary"], end="")
    print(
        f"detection_eval {metrics['detection_eval']}; conf heads from the weights: {head['heads_from_weights']}; "
        f"background bias margin {head['mean_background_bias_margin']} (trained-looking: "
        f"{head['head_biases_trained']}); AP50 above chance ({args.chance_ap50}): {above_chance}"
    )
    print(f"verdict: the detection head {'looks trained' if looks_trained else 'does NOT look trained'}")
    atomic_write_text(args.report_json, json.dumps(report, indent=2) + "\n")
    rows = [{"check": key, "value": value} for key, value in report.items() if not isinstance(value, (dict, list))]
    rows += [{"check": f"coco/{key}", "value": value} for key, value in metrics["stats"].items()]
    atomic_write_text(args.report_csv, pd.DataFrame(rows).to_csv(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
