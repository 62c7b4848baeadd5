#!/usr/bin/env python3
"""Train the SSD net through pycaffe from a solver prototxt, resuming from the newest snapshot."""

import argparse
import os
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.config import schema_default

os.environ.setdefault("GLOG_minloglevel", "1")  # Caffe's INFO lines would bury the progress lines


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--solver", required=True, type=Path, help="solver prototxt (results/model/solver.prototxt)")
    parser.add_argument("--weights-out", required=True, type=Path, help="final .caffemodel to write")
    parser.add_argument("--log-csv", required=True, type=Path, help="training log CSV to write")
    parser.add_argument(
        "--snapshot-root",
        type=Path,
        default=Path("resources/snapshots"),
        help="where snapshots live between runs (not deleted when a job fails)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=schema_default("train.device"))
    parser.add_argument("--initial-weights", type=Path, default=None, help=".caffemodel copied by layer name")
    parser.add_argument(
        "--snapshot-interval",
        type=int,
        default=schema_default("train.snapshot_interval"),
        help="iterations between snapshots (0: the solver's snapshot value)",
    )
    parser.add_argument(
        "--keep-snapshots", type=int, default=schema_default("train.keep_snapshots"), help="how many snapshots to keep"
    )
    parser.add_argument(
        "--data-threads",
        type=int,
        default=1,
        help="threads decoding and transforming a training batch (any count gives the same batches)",
    )
    parser.add_argument(
        "--progress-interval", type=int, default=0, help="iterations between progress lines (0: the solver's display)"
    )
    parser.add_argument(
        "--divergence-factor",
        type=float,
        default=schema_default("train.divergence_factor"),
        help="stop when display windows average above this many times the first loss (0: only NaN/inf stop)",
    )
    parser.add_argument(
        "--divergence-displays",
        type=int,
        default=schema_default("train.divergence_displays"),
        help="display windows in a row above --divergence-factor that stop training",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.train.runner import TrainSettings, train

    settings = TrainSettings(
        solver=args.solver,
        weights_out=args.weights_out,
        log_csv_out=args.log_csv,
        snapshot_root=args.snapshot_root,
        device=args.device,
        initial_weights=args.initial_weights,
        snapshot_interval=args.snapshot_interval,
        keep_snapshots=args.keep_snapshots,
        data_threads=args.data_threads,
        progress_interval=args.progress_interval,
        divergence_factor=args.divergence_factor,
        divergence_displays=args.divergence_displays,
    )
    train(settings, log=lambda message: print(message, flush=True))
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
