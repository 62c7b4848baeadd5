"""Training health: the loss guard on synthetic losses, and real Caffe runs whose learning rate diverges."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ssdlite_coco.common.config import schema_default
from ssdlite_coco.train import health
from ssdlite_coco.train.health import LossGuard, divergence_message, settings_problem
from tests.support.tiny_ssd import make_tiny_world, solver_text
from tests.support.train_settings import train_settings

REPO = Path(__file__).resolve().parents[1]


def feed(guard: LossGuard, losses: list[float], start: int = 0) -> list[tuple[int, str]]:
    """Every verdict (iteration, text) the guard gives for ``losses`` from iteration ``start``."""
    verdicts = []
    for iteration, loss in enumerate(losses, start):
        verdict = guard.update(iteration, loss)
        if verdict is not None:
            verdicts.append((iteration, verdict))
    return verdicts


# ------------------------------------------------------------------------------------------ the guard alone
def test_a_healthy_decreasing_loss_never_stops_or_warns():
    guard = LossGuard(factor=10, displays=3, window=10)
    for iteration in range(200):
        assert guard.update(iteration, 25.0 * 0.99**iteration + (3.0 if iteration % 2 else 0.0)) is None
        assert guard.warning is None and guard.healthy
    assert guard.first == 25.0 and guard.limit == 250.0


def test_a_spike_shorter_than_displays_windows_goes_on_and_snapshots_wait_for_it():
    guard = LossGuard(factor=10, displays=3, window=10)
    losses = [25.0] * 20 + [400.0] * 20 + [20.0] * 40  # iterations 20-39 at 16x the first loss: two windows
    warnings, unhealthy = [], []
    for iteration, loss in enumerate(losses):
        assert guard.update(iteration, loss) is None
        if guard.warning:
            warnings.append((iteration, guard.warning))
        if not guard.healthy:
            unhealthy.append(iteration)
    assert [iteration for iteration, _ in warnings] == [29, 39]
    assert "averaged 400 over iterations 20-29, 16x the first iteration's 25" in warnings[0][1]
    assert "1 of the 3 displays" in warnings[0][1] and "2 of the 3 displays" in warnings[1][1]
    # not healthy from the first high loss until a window ends under the limit again (iteration 49)
    assert unhealthy == list(range(20, 49))


def test_a_sustained_blow_up_stops_at_the_end_of_the_third_window_above():
    guard = LossGuard(factor=10, displays=3, window=10)
    verdicts = feed(guard, [25.0] * 30 + [1000.0] * 50)
    assert [iteration for iteration, _ in verdicts] == [59, 69, 79]  # windows 30-39, 40-49, 50-59 above 250; ...
    iteration, verdict = verdicts[0]
    assert verdict.startswith("the loss diverged at iteration 59: the loss averaged 1000 over iterations 50-59")
    assert "40x the first iteration's 25" in verdict and "above 10x for 3 displays in a row" in verdict


def test_a_window_at_the_limit_is_not_above_it_and_a_partial_window_above_it_is_not_healthy():
    guard = LossGuard(factor=10, displays=1, window=4)
    assert feed(guard, [10.0] * 4 + [100.0] * 4) == []  # the second window's mean is the limit, not above it
    healthy = []
    for iteration, loss in enumerate([200.0, 10.0, 10.0, 10.0], 8):
        assert guard.update(iteration, loss) is None
        healthy.append(guard.healthy)
    # the window in progress averages 200, 105, 73.3, then ends at 57.5: a snapshot waits while it is above 100
    assert healthy == [False, False, True, True]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_stops_at_once(bad):
    guard = LossGuard(factor=10, displays=3, window=10)
    verdicts = feed(guard, [25.0] * 13 + [bad])
    assert verdicts == [(13, f"the loss is {bad} at iteration 13 (the first iteration's was 25)")]
    assert feed(LossGuard(factor=10, displays=3, window=10), [bad]) == [(0, f"the loss is {bad} at iteration 0")]


def test_factor_0_turns_the_growth_check_off_but_not_the_non_finite_one():
    guard = LossGuard(factor=0, displays=1, window=10)
    assert feed(guard, [25.0] * 10 + [1e9] * 100) == []
    assert guard.limit is None and guard.healthy and guard.warning is None
    assert feed(guard, [math.nan], start=110) == [
        (110, "the loss is nan at iteration 110 (the first iteration's was 25)")
    ]


def test_a_resumed_run_replays_its_log_and_stops_where_the_uninterrupted_run_would():
    losses = [25.0] * 30 + [1000.0] * 50
    uninterrupted = feed(LossGuard(factor=10, displays=3, window=10), losses)
    resumed = LossGuard(factor=10, displays=3, window=10)
    rows = [{"iteration": i, "loss": loss} for i, loss in enumerate(losses[:45])]
    rows.insert(20, {"iteration": 20, "loss": math.nan})  # a test row (detection_eval only) is skipped
    resumed.replay(rows)
    assert resumed.warning is None and resumed.streak == 1
    assert feed(resumed, losses[45:], start=45)[:1] == uninterrupted[:1]


def test_bad_settings_are_named():
    assert settings_problem(10, 3) is None and settings_problem(0, 1) is None
    assert "train.divergence_factor is -1" in settings_problem(-1, 3)
    assert "train.divergence_displays is 0" in settings_problem(10, 0)


def test_the_message_names_base_lr_the_warm_up_keys_and_the_kept_snapshot(tmp_path):
    snapshot = {"iteration": 30, "caffemodel": tmp_path / "snapshot_iter_30.caffemodel"}
    solver = tmp_path / "solver.prototxt"
    message = divergence_message("the loss diverged at iteration 59: ...", solver, 0.01, 50.0, snapshot)
    assert f"lower solver.base_lr (base_lr: 0.01 in {solver}, the rate was 50 then)" in message
    assert "or add warm-up (solver.warmup_iter, solver.warmup_start_factor)" in message
    assert [f"solver.{key}" for key in schema_default("solver") if "warm" in key] == list(health.WARMUP_KEYS)
    assert f"the last good snapshot is kept: {snapshot['caffemodel']} (iteration 30)" in message
    assert "\n" not in message
    message = divergence_message("v", solver, 0.01, 0.01, None)
    assert "the rate was" not in message and "no snapshot was taken before it" in message


# `make demo`'s train_log.csv (base_lr 0.005, 500 iterations, display 10): iteration 0's loss, then the mean
# of each display window. The largest window is 0.82x the first loss, the later ones 0.62x down to 0.24x.
DEMO_FIRST_LOSS = 26.88308
DEMO_WINDOWS = [21.9703, 16.6293, 13.4347, 12.9767, 11.7003, 11.499, 11.0453, 11.2994, 10.6395, 10.3572]
DEMO_WINDOWS += [10.0295, 10.1744, 9.8347, 9.5709, 9.2775, 9.5242, 8.9599, 9.288, 8.8024, 8.8489, 8.3184]
DEMO_WINDOWS += [9.3938, 8.4176, 8.6151, 8.3375, 8.2863, 7.8078, 8.048, 7.8674, 7.615, 7.9382, 7.4839, 7.7498]
DEMO_WINDOWS += [7.6784, 7.3167, 7.4503, 7.7126, 7.5894, 7.3608, 7.381, 6.8716, 7.2447, 7.5779, 6.9595, 7.3212]
DEMO_WINDOWS += [7.0511, 6.4865, 6.8855, 7.1072, 6.5688]


def test_the_schema_defaults_leave_the_demo_loss_curve_alone_with_room_to_spare():
    first_rest = (10 * DEMO_WINDOWS[0] - DEMO_FIRST_LOSS) / 9  # the first window's other 9 losses, same mean
    losses = [DEMO_FIRST_LOSS] + [first_rest] * 9 + [mean for mean in DEMO_WINDOWS[1:] for _ in range(10)]
    assert len(losses) == 500
    factor, displays = schema_default("train.divergence_factor"), schema_default("train.divergence_displays")
    assert (factor, displays) == (10, 3)
    guard = LossGuard(factor, displays, 10)
    assert feed(guard, losses) == [] and guard.streak == 0
    assert max(DEMO_WINDOWS) / DEMO_FIRST_LOSS < 0.82  # even a factor of 1 would leave it alone


# ------------------------------------------------------------------------------------------ real Caffe runs
@pytest.fixture(scope="module")
def world(tmp_path_factory, coco_mini_dir):
    pytest.importorskip("caffe._caffe", reason="run the tests through scripts/with-caffe")  # not ./caffe/
    return make_tiny_world(tmp_path_factory.mktemp("tiny-health"), coco_mini_dir, max_iter=80, test_interval=1000)


def write_solver(world, path: Path, base_lr: float = 0.01, gamma: float = 0.5, max_iter: int = 80) -> Path:
    """The tiny solver (display 10, multistep at iteration 30 by ``gamma``) with another rate."""
    text = solver_text(world.train_net, world.test_net, path.parent / "unused", max_iter=max_iter, test_interval=1000)
    path.write_text(text.replace("base_lr: 0.01", f"base_lr: {base_lr}").replace("gamma: 0.5", f"gamma: {gamma}"))
    return path


def run_train(solver: Path, out: Path, messages: list[str] | None = None, **keys) -> dict:
    """``runner.train`` with snapshots every 5 iterations and these `train` ``keys``; its log lines go to
    ``messages``."""
    from ssdlite_coco.train.runner import TrainRun, train

    run = TrainRun(
        solver=solver,
        weights_out=out / "final.caffemodel",
        log_csv_out=out / "train_log.csv",
        snapshot_root=out / "snapshots",
        settings=train_settings(**({"snapshot_interval": 5} | keys)),
        threads=1,
    )
    return train(run, log=(messages if messages is not None else []).append)


def test_a_rate_that_diverges_mid_run_stops_it_and_keeps_the_snapshot_from_before(world, tmp_path):
    """0.01 for 30 iterations, then 50 (multistep with gamma 5000): the loss goes from ~15 to ~1e4-1e5."""
    from ssdlite_coco.train.runner import TrainingError

    solver = write_solver(world, tmp_path / "solver.prototxt", gamma=5000)
    out = tmp_path / "out"
    for attempt in ("first run", "re-run from the kept snapshot"):
        with pytest.raises(TrainingError) as raised:
            run_train(solver, out)
        message = str(raised.value)
        assert "\n" not in message, attempt
        assert message.startswith("the loss diverged at iteration 59: the loss averaged "), attempt
        assert re.search(r"over iterations 50-59, [\d.e+]+x the first iteration's 2\d\.\d+,", message), message
        assert f"lower solver.base_lr (base_lr: 0.01 in {solver}, the rate was 50 then)" in message
        assert "or add warm-up (solver.warmup_iter, solver.warmup_start_factor)" in message
        folder = next((out / "snapshots").glob("run-*"))
        assert f"the last good snapshot is kept: {folder / 'snapshot_iter_30.caffemodel'} (iteration 30)" in message
        assert not (out / "final.caffemodel").exists() and not (out / "train_log.csv").exists()
        # snapshots fell due at 35 (the window in progress already above), 40, 45, 50, 55: none was taken
        assert json.loads((folder / "latest.json").read_text())["iteration"] == 30
        assert sorted(path.name for path in folder.glob("snapshot_iter_*.caffemodel")) == [
            "snapshot_iter_25.caffemodel",
            "snapshot_iter_30.caffemodel",
        ]


def test_base_lr_50_warns_twice_then_stops_and_factor_0_lets_it_finish(world, tmp_path):
    """From the first update on, base_lr 50 takes the tiny net's loss from 25 to ~1e4 (~1e3x) and keeps it there."""
    from ssdlite_coco.train.runner import TrainingError

    solver = write_solver(world, tmp_path / "solver.prototxt", base_lr=50, max_iter=40)
    messages: list[str] = []
    with pytest.raises(TrainingError, match="^the loss diverged at iteration 29: .*no snapshot was taken before it"):
        run_train(solver, tmp_path / "guarded", messages)
    warnings = [message for message in messages if message.startswith("warning: ")]
    assert len(warnings) == 2
    assert "over iterations 0-9" in warnings[0] and "1 of the 3 displays" in warnings[0]
    assert "over iterations 10-19" in warnings[1] and "2 of the 3 displays" in warnings[1]
    assert not list((tmp_path / "guarded" / "snapshots").glob("run-*/latest.json"))
    messages.clear()
    summary = run_train(solver, tmp_path / "off", messages, divergence_factor=0)
    assert summary["final_iteration"] == 40 and (tmp_path / "off" / "final.caffemodel").exists()
    assert not any(message.startswith("warning: ") for message in messages)


def test_a_healthy_rate_trains_to_the_end_without_a_warning(world, tmp_path):
    messages: list[str] = []
    summary = run_train(write_solver(world, tmp_path / "solver.prototxt"), tmp_path / "out", messages)
    assert summary["final_iteration"] == 80 and (tmp_path / "out" / "final.caffemodel").exists()
    assert not any(message.startswith("warning: ") for message in messages)


def test_the_train_script_shows_one_error_line_on_the_console(world, tmp_path):
    """Through scripts/logged, as rule train runs it: the console gets the warnings and one ``error:`` line."""
    solver = write_solver(world, tmp_path / "solver.prototxt", base_lr=50, max_iter=60)
    out, log = tmp_path / "out", tmp_path / "train.log"
    command = [str(REPO / "scripts" / "logged"), str(log), sys.executable, str(REPO / "scripts" / "train.py")]
    command += ["--solver", str(solver), "--weights-out", str(out / "w.caffemodel"), "--log-csv", str(out / "l.csv")]
    command += ["--snapshot-root", str(out / "snapshots"), "--settings", json.dumps({"snapshot_interval": 5})]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    console = (result.stdout + result.stderr).splitlines()
    errors = [line for line in console if line.startswith("error: ")]
    assert len(errors) == 1, console
    assert errors[0].startswith("error: the loss diverged at iteration 29: ")
    assert "lower solver.base_lr (base_lr: 50 in" in errors[0] and "no snapshot was taken before it" in errors[0]
    assert [line for line in console if line.startswith("warning: ")] == [
        line for line in console if "displays in a row that stop the run" in line
    ]
    assert "Traceback" not in log.read_text() and not (out / "w.caffemodel").exists()
