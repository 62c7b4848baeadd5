#!/usr/bin/env python3
"""Train the SSD net through pycaffe from a solver prototxt, resuming from the newest snapshot."""

import argparse
import os
from pathlib import Path

from ssdlite_coco.common.cli import run
from ssdlite_coco.common.settings import add_settings_argument, parse_settings
from ssdlite_coco.train.settings import TrainSettings

os.environ.setdefault("GLOG_minloglevel", "1")  # Caffe's INFO lines would bury the progress lines


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--solver", required=True, type=Path, help="solver prototxt (results/model/solver.prototxt)")
    parser.add_argument("--weights-out", required=True, type=Path, help="final .caffemodel to write")
    parser.add_argument("--log-csv", required=True, type=Path, help="training log CSV to write")
    parser.add_argument(
        "--snapshot-root",
        type=Path,
        required=True,
        help="where snapshots live between runs (not deleted when a job fails): the rule's resources/snapshots",
    )
    parser.add_argument("--initial-weights", type=Path, default=None, help=".caffemodel copied by layer name")
    add_settings_argument(parser, TrainSettings)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="the rule's threads: those decoding and transforming a training batch where train.data_threads is 0",
    )
    parser.add_argument(
        "--progress-interval", type=int, default=0, help="iterations between progress lines (0: the solver's display)"
    )
    return parser


def main(args: argparse.Namespace) -> int:
    from ssdlite_coco.train.runner import TrainRun, train

    training = TrainRun(
        solver=args.solver,
        weights_out=args.weights_out,
        log_csv_out=args.log_csv,
        snapshot_root=args.snapshot_root,
        settings=parse_settings(TrainSettings, args.settings),
        threads=args.threads,
        initial_weights=args.initial_weights,
        progress_interval=args.progress_interval,
    )
    train(training, log=lambda message: print(message, flush=True))
    return 0


if __name__ == "__main__":
    run(main, get_args_parser())
