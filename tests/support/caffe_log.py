"""The glog text of ``caffe train`` as training-log rows: what the runner's rows and rates are compared with.

``Iteration N, loss = X`` (the loss averaged over the solver's ``average_loss`` iterations), ``Iteration N,
lr = Y`` and ``Test net output #0: detection_eval = Z`` lines, one row each (NaN where not measured).
"""

from __future__ import annotations

import math
import re
from typing import Any

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
