"""Training logs as CSV: rows recorded by the runner, and the glog text of `caffe train` parsed."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pandas as pd
import pytest

from ssdlite_coco.train.log import LOG_COLUMNS, TrainLogError, log_frame, read_log_csv, write_log_csv
from tests.support.caffe_log import parse_caffe_log
from tests.support.helpers import caffe_logs_env
from tests.support.pycaffe import require_caffe

NAN = math.nan


def test_rows_of_one_iteration_are_merged_and_sorted(tmp_path):
    rows = [
        {"iteration": 1, "loss": 2.5, "learning_rate": 0.01, "detection_eval": NAN},
        {"iteration": 0, "loss": 3.0, "learning_rate": 0.01, "detection_eval": NAN},
        {"iteration": 1, "loss": NAN, "learning_rate": NAN, "detection_eval": 0.125},
        {"iteration": 2, "loss": NAN, "learning_rate": NAN, "detection_eval": 0.25},
    ]
    frame = log_frame(rows)
    assert list(frame.columns) == list(LOG_COLUMNS)
    assert list(frame.iteration) == [0, 1, 2]
    assert frame.loc[1].tolist() == [1, 2.5, 0.01, 0.125]
    write_log_csv(rows, tmp_path / "log.csv")
    again = read_log_csv(tmp_path / "log.csv")
    assert [row["iteration"] for row in again] == [0, 1, 2]
    assert again[2]["detection_eval"] == 0.25 and math.isnan(again[2]["loss"])
    assert (tmp_path / "log.csv").read_text().splitlines()[0] == "iteration,loss,learning_rate,detection_eval"


def test_an_empty_log_still_has_the_columns(tmp_path):
    write_log_csv([], tmp_path / "log.csv")
    assert list(pd.read_csv(tmp_path / "log.csv").columns) == list(LOG_COLUMNS)


def test_a_csv_without_the_columns_is_named(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(TrainLogError, match="bad.csv: has no column iteration"):
        read_log_csv(tmp_path / "bad.csv")


def test_glog_lines_are_parsed():
    text = """I1126 solver.cpp:243] Iteration 0, loss = 21.5
I1126 solver.cpp:259]     Train net output #0: mbox_loss = 21.5 (* 1 = 21.5 loss)
I1126 sgd_solver.cpp:138] Iteration 0, lr = 0.001
I1126 solver.cpp:433] Iteration 10, Testing net (#0)
I1126 solver.cpp:546]     Test net output #0: detection_eval = 0.0123
I1126 solver.cpp:243] Iteration 10 (12.5 iter/s, 0.8s/10 iters), loss = 1.5e+01
"""
    frame = log_frame(parse_caffe_log(text))
    assert frame.iteration.tolist() == [0, 10]
    assert frame.loss.tolist() == [21.5, 15.0]
    assert frame.learning_rate.tolist()[0] == 0.001
    assert frame.detection_eval.tolist()[1] == 0.0123


# Caffe's own rate (its log's "lr =" lines) against the runner's learning_rate(), at every iteration
SCHEDULES = {
    "multistep": "",  # the tiny solver's: halved at stepvalue 30
    "cosine-warmup": 'lr_policy: "cosine"\nmin_lr: 0.002\nwarmup_iter: 12\nwarmup_start_factor: 0.05\n',
}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_the_runner_rate_equals_the_one_a_real_caffe_train_run_logs(tmp_path, coco_mini_dir, schedule):
    require_caffe()
    from ssdlite_coco.train.runner import read_solver
    from ssdlite_coco.train.schedule import learning_rate
    from tests.support.tiny_ssd import make_tiny_world

    world = make_tiny_world(tmp_path / "tiny", coco_mini_dir, max_iter=40, test_interval=20)
    solver = world.solver
    text = solver.read_text().replace("display: 10", "display: 1")
    if SCHEDULES[schedule]:
        text = text.replace('lr_policy: "multistep"\n', SCHEDULES[schedule])
    solver.write_text(text)
    run = subprocess.run(
        ["caffe", "train", f"--solver={solver}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=caffe_logs_env(),
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    write_log_csv(parse_caffe_log(run.stderr), tmp_path / "train_log.csv")
    frame = pd.read_csv(tmp_path / "train_log.csv")
    assert len(frame) == 41  # iterations 0..39 and the test after the last one
    # Solve() prints one more (forward-only) loss after the last update
    assert frame.dropna(subset=["loss"]).iteration.tolist() == list(range(41))
    rates = frame.dropna(subset=["learning_rate"])
    assert rates.iteration.tolist() == list(range(40))
    expected = [learning_rate(read_solver(solver), iteration) for iteration in range(40)]
    np.testing.assert_allclose(rates.learning_rate, expected, rtol=1e-5)
    assert len(set(np.round(expected, 9))) > (1 if schedule == "multistep" else 30)  # the schedule moved
    assert frame.dropna(subset=["detection_eval"]).iteration.tolist() == [20, 40]
