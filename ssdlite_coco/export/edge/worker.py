"""One edge toolchain in its own venv: convert the export, then answer inference requests over a pipe.

    python -m ssdlite_coco.export.edge.worker --toolchain rknn --export-dir results/export \
        --work-dir results/export/edge/rknn/default --precision default --threads 2

stdin takes requests and the original stdout carries the answers (``edge.pipe``); everything the toolchain
prints goes to stderr, the rule's log. First answer: ``ready`` (the toolchain version, the precision it runs
in and whether that is full float32, how it fetches its outputs, the converted model) or ``error`` (the
toolchain's own message). Requests: ``infer`` (one preprocessed CHW image -> ``loc``, ``scores``),
``latency`` (the same image, timed here, with no pipe in the time), ``quit``. Imports only the standard
library, NumPy and the toolchain.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from functools import partial
from pathlib import Path

from ssdlite_coco.export.edge.pipe import PipeClosed, receive, send
from ssdlite_coco.export.timing import time_call

PRECISIONS = ("default", "fp32", "int8")


def calibration_arrays(export_dir: Path) -> list[Path]:
    """The export's calibration images, ``[1, 3, H, W]`` float32 ``.npy`` files, in ``calibration/list.txt`` order."""
    folder = export_dir / "calibration"
    lines = (folder / "list.txt").read_text().splitlines()
    return [folder / line.split("\t", 1)[0] for line in lines if line.strip()]


def serve(session, requests, answers) -> None:
    while True:
        try:
            request, arrays = receive(requests)
        except PipeClosed:
            return
        if request["op"] == "quit":
            return
        (image,) = arrays
        if request["op"] == "infer":
            loc, scores = session.run(image)
            send(answers, {"op": "infer"}, (loc.astype("float32"), scores.astype("float32")))
        elif request["op"] == "latency":
            latency = time_call(partial(session.run, image), request["runs"])
            send(answers, {"op": "latency", "latency": latency})


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toolchain", required=True, help="rknn, openvino, ncnn or litert")
    parser.add_argument("--export-dir", required=True, type=Path, help="results/export")
    parser.add_argument("--work-dir", required=True, type=Path, help="where the converted model is written")
    parser.add_argument("--precision", choices=PRECISIONS, default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--option", action="append", default=[], help="KEY=VALUE for the toolchain (rknn: target)")
    return parser


def main(args: argparse.Namespace) -> int:
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the toolchain's prints (C libraries too) go to the log
    requests = sys.stdin.buffer
    started = time.monotonic()
    try:
        module = importlib.import_module(f"ssdlite_coco.export.edge.{args.toolchain}")
        args.work_dir.mkdir(parents=True, exist_ok=True)
        options = dict(option.split("=", 1) for option in args.option)
        calibration = calibration_arrays(args.export_dir)
        model = module.convert(args.export_dir, args.work_dir, args.precision, calibration, **options)
        convert_seconds = time.monotonic() - started
        session = module.Session(model, args.precision, args.threads)
    except Exception as error:  # the toolchain's own failure is the row's result: sent, not raised
        send(answers, {"op": "error", "error": " ".join(f"{type(error).__name__}: {error}".split())[:500]})
        return 1
    send(
        answers,
        {
            "op": "ready",
            "version": module.version(),
            "precision": session.precision,
            "full_precision": session.full_precision,
            "fetch": session.fetch,
            "model": str(model),
            "convert_seconds": round(convert_seconds, 1),
        },
    )
    serve(session, requests, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
