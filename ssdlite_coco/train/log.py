"""The training log as a CSV table: iteration, loss, learning_rate, detection_eval (pandas).

Rows come either from the pycaffe runner (``ssdlite_coco.train.runner`` records them directly) or from the
text log of ``caffe train`` (glog lines ``Iteration N, loss = X``, ``Iteration N, lr = Y`` and
``Test net output #0: detection_eval = Z``), parsed by ``parse_caffe_log``. Either way there is one
row per iteration; a value not measured at an iteration is empty (NaN). Note that ``caffe train``
prints the loss averaged over the solver's ``average_loss`` iterations, the runner the loss itself.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ssdlite_coco.common.atomic import atomic_write_text
from ssdlite_coco.common.errors import SsdliteError

LOG_COLUMNS = ("iteration", "loss", "learning_rate", "detection_eval")


class TrainLogError(SsdliteError):
    """A training log cannot be read; the message names the file and the line."""


def log_frame(rows: Iterable[Mapping[str, Any]]):
    """One row per iteration (sorted), merging rows of the same iteration (first value that is not NaN)."""
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(LOG_COLUMNS))
    if frame.empty:
        return frame.astype(
            {"iteration": "int64", "loss": "float64", "learning_rate": "float64", "detection_eval": "float64"}
        )
    frame = frame.astype(
        {"iteration": "int64", "loss": "float64", "learning_rate": "float64", "detection_eval": "float64"}
    )
    return frame.groupby("iteration", as_index=False, sort=True).first()[list(LOG_COLUMNS)]


def write_log_csv(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> None:
    atomic_write_text(path, log_frame(rows).to_csv(index=False, float_format="%.7g"))


def read_log_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise TrainLogError(f"{path}: cannot read the training log CSV ({error})") from None
    missing = [column for column in LOG_COLUMNS if column not in frame.columns]
    if missing:
        raise TrainLogError(f"{path}: has no column {', '.join(missing)}; expected {', '.join(LOG_COLUMNS)}")
    return [
        {
            "iteration": int(row.iteration),
            "loss": float(row.loss),
            "learning_rate": float(row.learning_rate),
            "detection_eval": float(row.detection_eval),
        }
        for row in frame.itertuples(index=False)
    ]


_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf)"
_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUMBER)
_LR = re.compile(r"Iteration (\d+), lr = " + _NUMBER)
_TESTING = re.compile(r"Iteration (\d+), Testing net")
_DETECTION_EVAL = re.compile(r"Test net output #\d+: detection_eval = " + _NUMBER)


def parse_caffe_log(text: str) -> list[dict[str, Any]]:
    """Rows (iteration, loss, learning_rate, detection_eval) from the glog text of ``caffe train``."""
    rows: list[dict[str, Any]] = []
    testing_at = None
    for line in text.splitlines():
        if match := _LOSS.search(line):
            rows.append(
                {
                    "iteration": int(match[1]),
                    "loss": float(match[2]),
                    "learning_rate": math.nan,
                    "detection_eval": math.nan,
                }
            )
        elif match := _LR.search(line):
            rows.append(
                {
                    "iteration": int(match[1]),
                    "loss": math.nan,
                    "learning_rate": float(match[2]),
                    "detection_eval": math.nan,
                }
            )
        elif match := _TESTING.search(line):
            testing_at = int(match[1])
        elif (match := _DETECTION_EVAL.search(line)) and testing_at is not None:
            rows.append(
                {
                    "iteration": testing_at,
                    "loss": math.nan,
                    "learning_rate": math.nan,
                    "detection_eval": float(match[1]),
                }
            )
    return rows


def caffe_log_to_csv(log_path: str | os.PathLike, csv_path: str | os.PathLike) -> int:
    """Convert a ``caffe train`` log file to the CSV table; returns the number of rows."""
    log_path = Path(log_path)
    if not log_path.is_file():
        raise TrainLogError(f"{log_path}: log file not found")
    rows = parse_caffe_log(log_path.read_text(errors="replace"))
    if not rows:
        raise TrainLogError(
            f"{log_path}: no 'Iteration N, loss = X' line; is it the output of `caffe train` with display > 0?"
        )
    frame = log_frame(rows)
    atomic_write_text(csv_path, frame.to_csv(index=False, float_format="%.7g"))
    return len(frame)
