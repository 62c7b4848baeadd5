"""Training through pycaffe: log CSV, snapshots, resume after SIGKILL, initial weights, device checks."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.http_server import FileServer
from tests.support.pycaffe import require_caffe
from tests.support.tiny_ssd import deploy_net_text, make_tiny_world, solver_text
from tests.support.train_settings import train_settings

caffe = require_caffe()

from ssdlite_coco.caffe_tools.device import DeviceError, select_device  # noqa: E402
from ssdlite_coco.caffe_tools.weights import (  # noqa: E402
    WeightsError,
    copy_weights_by_name,
    format_copy_table,
    read_caffemodel,
)
from ssdlite_coco.common.digests import file_digest  # noqa: E402
from ssdlite_coco.train.fetch_weights import fetch_weights  # noqa: E402
from ssdlite_coco.train.runner import (  # noqa: E402
    TrainingError,
    TrainRun,
    read_solver,
    train,
)
from ssdlite_coco.train.schedule import ScheduleError, learning_rate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory, coco_mini_dir):
    return make_tiny_world(tmp_path_factory.mktemp("tiny"), coco_mini_dir, max_iter=30, test_interval=10)


def settings_for(world, out: Path, **overrides) -> TrainRun:
    values = dict(
        solver=world.solver,
        weights_out=out / "final.caffemodel",
        log_csv_out=out / "train_log.csv",
        snapshot_root=out / "snapshots",
        settings=train_settings(snapshot_interval=10),
        threads=1,
    )
    values.update(overrides)
    return TrainRun(**values)


def test_training_writes_weights_and_a_log_with_loss_lr_and_detection_eval(world, tmp_path):
    messages = []
    summary = train(settings_for(world, tmp_path), log=messages.append)
    assert summary["start_iteration"] == 0 and summary["final_iteration"] == 30
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert list(log.columns) == ["iteration", "loss", "learning_rate", "detection_eval"]
    losses = log.dropna(subset=["loss"])
    assert list(losses.iteration) == list(range(30))
    assert np.isfinite(losses.loss).all() and (losses.loss > 0).all()
    # multistep: base_lr 0.01, halved from iteration 30 on (so never within these 30 updates)
    assert np.allclose(losses.learning_rate, 0.01)
    tests = log.dropna(subset=["detection_eval"])
    assert list(tests.iteration) == [10, 20, 30]
    assert ((tests.detection_eval >= 0) & (tests.detection_eval <= 1)).all()
    assert any("ETA" in message for message in messages)
    # the final weights are a complete caffemodel for the test net
    net = caffe.Net(str(world.test_net), caffe.TEST, weights=str(tmp_path / "final.caffemodel"))
    assert net.params["conv1"][0].data.std() > 0


def test_learning_rate_follows_caffe_policies(world):
    solver = read_solver(world.solver)
    assert learning_rate(solver, 29) == pytest.approx(0.01)
    assert learning_rate(solver, 30) == pytest.approx(0.005)
    solver.lr_policy, solver.power = "poly", 2.0
    assert learning_rate(solver, 15) == pytest.approx(0.01 * 0.5**2)
    solver.lr_policy, solver.min_lr, solver.max_iter = "cosine", 0.001, 40
    assert learning_rate(solver, 0) == pytest.approx(0.01)
    assert learning_rate(solver, 20) == pytest.approx(0.001 + 0.009 * 0.5)
    assert learning_rate(solver, 40) == pytest.approx(0.001)
    solver.warmup_iter, solver.warmup_start_factor = 10, 0.1
    assert learning_rate(solver, 0) == pytest.approx(0.001)  # 0.1 x the cosine's 0.01
    cosine_at_5 = 0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 5 / 40))
    assert learning_rate(solver, 5) == pytest.approx((0.1 + 0.9 * 0.5) * cosine_at_5)
    assert learning_rate(solver, 10) == pytest.approx(0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi / 4)))
    solver.lr_policy = "triangular"
    with pytest.raises(ScheduleError, match="lr_policy 'triangular'"):
        learning_rate(solver, 0)


def test_a_second_run_resumes_from_the_final_snapshot_without_training_again(world, tmp_path):
    train(settings_for(world, tmp_path), log=lambda message: None)
    first = (tmp_path / "final.caffemodel").read_bytes()
    (tmp_path / "final.caffemodel").unlink()
    summary = train(settings_for(world, tmp_path), log=lambda message: None)
    assert summary["resumed_from"] == 30 and summary["start_iteration"] == 30
    assert (tmp_path / "final.caffemodel").read_bytes() == first
    assert len(pd.read_csv(tmp_path / "train_log.csv").dropna(subset=["loss"])) == 30


def test_training_killed_with_sigkill_resumes_from_its_newest_snapshot(world, tmp_path):
    """Kill a real run after its first snapshot; the next run continues from that iteration, not from 0."""
    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        solver_text(
            world.train_net, world.test_net, tmp_path / "unused", max_iter=100000, test_iter=3, test_interval=100000
        )
    )
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(REPO / "scripts" / "train.py"),
        "--solver",
        str(solver),
        "--weights-out",
        str(out / "final.caffemodel"),
        "--log-csv",
        str(out / "train_log.csv"),
        "--snapshot-root",
        str(out / "snapshots"),
        "--settings",
        json.dumps({"snapshot_interval": 10}),
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"),
    )
    try:
        # The event, not a deadline: the progress line of iteration 20 comes after the snapshots of 10 and 20.
        output = []
        for line in process.stdout:
            output.append(line.decode(errors="replace"))
            if (progress := re.match(r"iteration (\d+)/", output[-1])) and int(progress[1]) >= 20:
                break
        pointers = list((out / "snapshots").glob("run-*/latest.json"))
        assert pointers, f"no snapshot before iteration 20; output:\n{''.join(output)}"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "final.caffemodel").exists()
    snapshot_iter = json.loads(pointers[0].read_text())["iteration"]
    assert snapshot_iter >= 10 and snapshot_iter % 10 == 0

    # same net, solver settings and weights: only max_iter differs, so the snapshot is reused
    solver.write_text(
        solver_text(
            world.train_net,
            world.test_net,
            tmp_path / "unused",
            max_iter=snapshot_iter + 5,
            test_iter=3,
            test_interval=100000,
        )
    )
    messages: list[str] = []
    summary = train(
        TrainRun(
            solver=solver,
            weights_out=out / "final.caffemodel",
            log_csv_out=out / "train_log.csv",
            snapshot_root=out / "snapshots",
            settings=train_settings(snapshot_interval=10),
            threads=1,
        ),
        log=messages.append,
    )
    assert summary["resumed_from"] == snapshot_iter
    assert summary["start_iteration"] == snapshot_iter != 0
    assert summary["final_iteration"] == snapshot_iter + 5
    assert any("resuming from snapshot" in message and f"iteration {snapshot_iter}" in message for message in messages)
    log = pd.read_csv(out / "train_log.csv").dropna(subset=["loss"])
    assert list(log.iteration) == list(range(snapshot_iter + 5))  # the killed run's rows up to the snapshot


def test_initial_weights_are_copied_by_name_with_a_table_of_mismatches(world, tmp_path):
    # weights of a net for 6 classes (other conf heads) with one layer this net does not have
    # (Input-layer nets: two nets reading one LMDB at once abort in Caffe's DataReader)
    other = tmp_path / "other_train.prototxt"
    other.write_text(
        deploy_net_text(num_classes=6)
        + """
layer { name: "extra" type: "Convolution" bottom: "conv4" top: "extra"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
"""
    )
    source = caffe.Net(str(other), caffe.TEST)
    rng = np.random.default_rng(0)
    for blobs in source.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(size=blob.data.shape)
    weights = tmp_path / "given.caffemodel"
    source.save(str(weights))

    target = caffe.Net(str(world.deploy_net), caffe.TEST)
    before = target.params["conv3_mbox_conf"][0].data.copy()
    rows = copy_weights_by_name(target, read_caffemodel(weights))
    status = {row.layer: row.status for row in rows}
    assert status["conv1"] == status["conv2/bn"] == status["conv3_mbox_loc"] == "copied"
    np.testing.assert_array_equal(target.params["conv1"][0].data, source.params["conv1"][0].data)
    np.testing.assert_array_equal(target.params["conv2/bn"][1].data, source.params["conv2/bn"][1].data)
    assert status["conv3_mbox_conf"] == status["conv4_mbox_conf"] == "shape mismatch"
    np.testing.assert_array_equal(target.params["conv3_mbox_conf"][0].data, before)  # left at its filler
    assert status["extra"] == "not in net"
    table = format_copy_table(rows)
    assert "summary: 14 copied, 2 shape mismatch, 0 not in weights, 1 not in net" in table
    assert "16x32x3x3" in table and "24x32x3x3" in table  # the two shapes of conv3_mbox_conf


def test_training_from_initial_weights_prints_the_copy_table(world, tmp_path):
    given = caffe.Net(str(world.deploy_net), caffe.TEST)
    given.params["conv1"][0].data[...] = 0.25
    weights = tmp_path / "given.caffemodel"
    given.save(str(weights))
    messages: list[str] = []
    train(settings_for(world, tmp_path / "run", initial_weights=weights), log=messages.append)
    table = next(message for message in messages if "copied by layer name" in message)
    assert "conv1 " in table and "summary: 16 copied, 0 shape mismatch" in table


def test_fetch_weights_from_a_url_checks_the_sha256(tmp_path):
    payload = tmp_path / "served" / "model.caffemodel"
    payload.parent.mkdir()
    payload.write_bytes(os.urandom(4096))
    digest = file_digest(payload)
    with FileServer(payload.parent) as server:
        url = server.url("model.caffemodel")
        target = fetch_weights(url, digest, tmp_path / "fetched" / "initial.caffemodel")
        assert target.read_bytes() == payload.read_bytes()
        with pytest.raises(WeightsError, match="sha256"):
            fetch_weights(url, "0" * 64, tmp_path / "bad" / "initial.caffemodel")
        assert not (tmp_path / "bad" / "initial.caffemodel").exists()
        assert not [path for path in (tmp_path / "bad").iterdir()]  # no temporary left either
        with pytest.raises(WeightsError, match="initial_weights_sha256 is empty"):
            fetch_weights(url, "", tmp_path / "nosha.caffemodel")
    with pytest.raises(WeightsError, match="not found"):
        fetch_weights(str(tmp_path / "missing.caffemodel"), "", tmp_path / "x.caffemodel")


def test_cuda_on_a_cpu_build_fails_with_one_clear_line():
    with pytest.raises(DeviceError, match="caffe.device: cuda"):
        select_device("cuda")


def test_train_script_reports_a_missing_solver_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "train.py"),
            "--solver",
            str(tmp_path / "nope.prototxt"),
            "--weights-out",
            str(tmp_path / "w.caffemodel"),
            "--log-csv",
            str(tmp_path / "log.csv"),
            "--snapshot-root",
            str(tmp_path / "snapshots"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "nope.prototxt" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "w.caffemodel").exists()


def test_a_diverging_loss_stops_training_with_a_clear_error(world, tmp_path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text(world.solver.read_text().replace("base_lr: 0.01", "base_lr: 1e9"))
    with pytest.raises(TrainingError, match=r"at iteration \d+.*lower solver\.base_lr"):
        train(
            TrainRun(
                solver=solver,
                weights_out=tmp_path / "w.caffemodel",
                log_csv_out=tmp_path / "l.csv",
                snapshot_root=tmp_path / "snapshots",
                settings=train_settings(snapshot_interval=10),
                threads=1,
            ),
            log=lambda message: None,
        )
    assert not (tmp_path / "w.caffemodel").exists()
