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
