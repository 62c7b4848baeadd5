"""Helpers for tests (not fixtures)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def run_python(code: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter: a Caffe CHECK failure aborts only that process."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


Box = tuple[int, float, float, float, float]


def write_annotated_lmdb(path: Path, records: list[tuple[bytes, int, int, list[Box]]]) -> None:
    """A minimal AnnotatedDatum LMDB for Caffe-level tests: (jpeg bytes, width, height, [(label, x0, y0, x1, y1)])."""
    import lmdb
    from caffe.proto import caffe_pb2

    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for index, (jpeg, width, height, boxes) in enumerate(records):
            record = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
            record.datum.encoded = True
            record.datum.data = jpeg
            record.datum.width, record.datum.height, record.datum.channels = width, height, 3
            for instance, (label, x0, y0, x1, y1) in enumerate(boxes):
                group = record.annotation_group.add(group_label=label)
                annotation = group.annotation.add(instance_id=instance)
                annotation.bbox.xmin, annotation.bbox.ymin = x0, y0
                annotation.bbox.xmax, annotation.bbox.ymax = x1, y1
            txn.put(f"{index:08d}".encode(), record.SerializeToString())
    env.close()


def caffe_logs_env() -> dict:
    """The environment of a `caffe train` whose INFO lines are parsed: whatever the caller's glog level."""
    return {**os.environ, "GLOG_minloglevel": "0"}


TRAIN_SNIPPET = """
import math, sys
import caffe
caffe.set_mode_cpu()
solver = caffe.get_solver("solver.prototxt")
losses = []
for _ in range(int(sys.argv[1])):  # a batch whose crops hold no box has loss 0: look at every iteration
    solver.step(1)
    losses.append(float(solver.net.blobs["mbox_loss"].data))
test = solver.test_nets[0]
test.forward()
print("RESULT", max(losses), test.blobs["detection_out"].data.shape[3], test.blobs["detection_eval"].data.shape[3],
      test.blobs["data"].data.shape[2])
sys.exit(0 if all(math.isfinite(value) for value in losses) and max(losses) > 0 else 3)
"""


def train_steps(cwd: Path, iterations: int) -> dict:
    """Step ``cwd/solver.prototxt`` (train + test nets next to it) ``iterations`` times in a fresh process.

    Fails the test unless every loss is finite and one is > 0; returns the largest loss and the widths of
    the test net's ``detection_out`` and ``detection_eval`` rows and the side of its ``data`` blob.
    """
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_SNIPPET, str(iterations)], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loss, detection_width, eval_width, side = result.stdout.split("RESULT")[1].split()
    return {
        "loss": float(loss),
        "detection_width": int(detection_width),
        "eval_width": int(eval_width),
        "side": int(side),
    }
