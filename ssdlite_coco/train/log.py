"""The training log as a CSV table: iteration, loss, learning_rate, detection_eval (pandas).

The pycaffe runner (``ssdlite_coco.train.runner``) records the rows: one per iteration; a value not
measured at an iteration is empty (NaN). The tests compare them with the glog text of ``caffe train``
(tests/support/caffe_log.py).
"""

from __future__ import annotations

import os
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
