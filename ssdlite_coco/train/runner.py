"""Train an SSD net through pycaffe, step by step, with snapshots that survive a killed run.

``train`` reads the solver prototxt, writes a patched copy (absolute net paths, the device, Caffe's
own snapshots and tests off) and steps the solver one iteration at a time from Python, so that it
records the loss and learning rate of every iteration, runs the test net at the solver's
``test_interval`` (Caffe's ``detection_eval``, computed from the DetectionEvaluate rows like
``Solver::TestDetection``), prints progress with an ETA, and snapshots every ``snapshot_interval``
iterations.

Snapshots live in ``<snapshot_root>/<run key>/`` (``resources/snapshots/`` in the workflow, which
Snakemake does not delete when a job fails). The run key hashes what makes a snapshot reusable: the
train net, the solver settings other than ``max_iter`` and the initial weights. ``latest.json`` is
written (atomically) only after a snapshot's files are complete, so a run killed at any moment —
even while Caffe writes a snapshot — resumes from the newest complete one. The log rows up to the
snapshot are kept next to it, so the CSV of a resumed run still starts at iteration 0. The solver runs
copies of the train and test nets (in the snapshot folder) whose data layers use ``data_threads`` threads
and, when resuming, start where an uninterrupted run would be (``data_stream``): the resumed run ends with
the uninterrupted run's weights.

A NaN or infinite loss, or one that stays above ``divergence_factor`` times its first value for
``divergence_displays`` display windows, stops the run with one line (``health``); snapshots are taken only
while the loss is healthy, so the one ``latest.json`` names is from before the divergence.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssdlite_coco.caffe_tools.device import select_device, solver_mode
from ssdlite_coco.caffe_tools.prototxt import format_prototxt, read_net, read_prototxt
from ssdlite_coco.caffe_tools.weights import copy_weights_by_name, format_copy_table, read_caffemodel
from ssdlite_coco.common.atomic import atomic_path, atomic_write_text
from ssdlite_coco.common.digests import file_digest
from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.common.formatting import format_duration
from ssdlite_coco.evaluate.detection_eval import DetectionEvalAccumulator
from ssdlite_coco.train.data_stream import (
    completed_test_passes,
    items_per_iteration,
    save_without_runtime_fields,
    write_runtime_net,
)
from ssdlite_coco.train.health import LossGuard, divergence_message, settings_problem
from ssdlite_coco.train.log import LOG_COLUMNS, read_log_csv, write_log_csv
from ssdlite_coco.train.schedule import learning_rate
from ssdlite_coco.train.settings import TrainSettings
from ssdlite_coco.train.snapshots import SnapshotStore


class TrainingError(SsdliteError):
    """Training cannot start or go on; the message names the file or setting and the fix."""


# -------------------------------------------------------------------------------------------- the solver
def read_solver(path: str | os.PathLike):
    from caffe.proto import caffe_pb2

    solver = read_prototxt(path, caffe_pb2.SolverParameter(), made_by="the model rule")
    if not solver.HasField("train_net") and not solver.HasField("net"):
        raise TrainingError(f"{path}: names no train net; set train_net: (or net:) to the train prototxt")
    if solver.max_iter < 0:
        raise TrainingError(f"{path}: max_iter is {solver.max_iter}; set it to the number of iterations to train")
    return solver


def resolve_net_path(value: str, solver_path: Path) -> Path:
    """A net path from a solver: absolute, else relative to the working directory, else to the solver."""
    candidate = Path(value)
    if candidate.is_absolute():
        found = candidate
    elif candidate.is_file():
        found = candidate.resolve()
    else:
        found = (solver_path.parent / candidate).resolve()
    if not found.is_file():
        raise TrainingError(
            f"{solver_path}: net {value!r} not found (relative to the working directory or to {solver_path.parent})"
        )
    return found


def net_paths(solver, solver_path: Path) -> tuple[Path, list[Path]]:
    train = resolve_net_path(solver.train_net or solver.net, solver_path)
    tests = [resolve_net_path(value, solver_path) for value in solver.test_net]
    if solver.HasField("net") and not solver.test_net and solver.test_iter:
        tests = [train]  # a `net:` solver tests the TEST phase of the same file
    return train, tests


def solver_for_stepping(
    solver, solver_path: Path, snapshot_prefix: Path, device: str, nets: tuple[Path, list[Path]] | None = None
):
    """The solver as this runner drives it: absolute paths (``nets``: the train and test nets to use instead of
    the solver's), our device, Caffe's snapshots/tests/display off."""
    from caffe.proto import caffe_pb2

    patched = caffe_pb2.SolverParameter()
    patched.CopyFrom(solver)
    train, tests = nets or net_paths(solver, solver_path)
    patched.ClearField("net")
    patched.train_net = str(train)
    patched.ClearField("test_net")
    patched.test_net.extend(str(path) for path in tests)
    if len(patched.test_iter) != len(tests):
        raise TrainingError(
            f"{solver_path}: has {len(tests)} test nets but {len(patched.test_iter)} test_iter "
            "values; give one test_iter per test net"
        )
    patched.snapshot = 0
    patched.snapshot_after_train = False
    patched.test_interval = 2**31 - 1  # Caffe wants > 0 when there are test nets; this runner tests itself
    patched.test_initialization = False
    patched.display = 0
    patched.snapshot_prefix = str(snapshot_prefix)
    patched.snapshot_format = caffe_pb2.SolverParameter.BINARYPROTO
    patched.solver_mode = solver_mode(device)
    return patched


def run_key(solver, train_net: Path, initial_weights: Path | None) -> str:
    """What makes a snapshot reusable: train net text, solver settings except max_iter and logging, weights."""
    from caffe.proto import caffe_pb2

    settings = caffe_pb2.SolverParameter()
    settings.CopyFrom(solver)
    for name in (
        "max_iter",
        "snapshot",
        "snapshot_prefix",
        "snapshot_after_train",
        "display",
        "solver_mode",
        "device_id",
        "net",
        "train_net",
        "test_net",
        "test_iter",
        "test_interval",
        "test_initialization",
        "debug_info",
        "average_loss",
    ):
        settings.ClearField(name)
    digest = hashlib.sha256()
    digest.update(format_prototxt(settings).encode())
    digest.update(train_net.read_bytes())
    if initial_weights is not None:
        digest.update(file_digest(initial_weights, "sha256").encode())
    return digest.hexdigest()[:16]


def loss_weights(net_file: Path) -> dict[str, float]:
    """Output blob → loss weight for the TRAIN phase of a net prototxt (Caffe's defaults for *Loss layers)."""
    from caffe.proto import caffe_pb2

    net = read_net(net_file)
    weights = {}
    for layer in net.layer:
        if any(rule.HasField("phase") and rule.phase != caffe_pb2.TRAIN for rule in layer.include):
            continue
        for index, top in enumerate(layer.top):
            if index < len(layer.loss_weight):
                weight = layer.loss_weight[index]
            else:
                weight = 1.0 if layer.type.endswith("Loss") and index == 0 else 0.0
            if weight:
                weights[top] = weight
    return weights


# ---------------------------------------------------------------------------------------------- the runner
@dataclass
class TrainRun:
    """One training run: its files, its `train` settings and the rule's threads."""

    solver: Path
    weights_out: Path
    log_csv_out: Path
    snapshot_root: Path
    settings: TrainSettings
    threads: int  # the rule's: the data threads where train.data_threads is 0
    initial_weights: Path | None = None
    progress_interval: int = 0  # iterations between progress lines; 0 = the solver's display (else 100)


def test_detection(solver, test_index: int, test_iter: int, ap_version: str) -> float | None:
    """Caffe's ``detection_eval`` of test net ``test_index`` with the current weights (None if no 5-wide output)."""
    net = solver.test_nets[test_index]
    net.share_with(solver.net)
    accumulator = DetectionEvalAccumulator()
    found = False
    for _ in range(test_iter):
        outputs = net.forward()
        for value in outputs.values():
            if value.ndim == 4 and value.shape[-1] == 5:
                accumulator.add(value)
                found = True
    return accumulator.mean_ap(ap_version) if found else None


def _runtime_nets(data_threads: int, original, solver_path: Path, store: SnapshotStore, log):
    """Copies of the train and test nets with ``data_threads`` and, when resuming, the data stream positions
    an uninterrupted run would have reached (``data_stream``)."""
    train_net, test_nets = net_paths(original, solver_path)
    latest = store.latest()
    resume_at = latest["iteration"] if latest is not None else 0
    train_start = resume_at * items_per_iteration(train_net, original.iter_size)
    train_copy = write_runtime_net(train_net, store.folder / "train_net.prototxt", "TRAIN", data_threads, train_start)
    passes = completed_test_passes(resume_at, original.test_interval if test_nets else 0, original.test_initialization)
    test_copies = []
    for index, test_net in enumerate(test_nets):
        start = passes * original.test_iter[index] * items_per_iteration(test_net, 1, "TEST")
        out = store.folder / f"test_net_{index}.prototxt"
        test_copies.append(write_runtime_net(test_net, out, "TEST", data_threads, start))
    if train_start:
        log(f"resuming the training data stream at item {train_start} (iteration {resume_at})")
    return train_copy, test_copies


def _open_solver(run: TrainRun, original, solver_path: Path, train_net: Path, initial: Path | None, log):
    """This run's snapshot store (keyed by what makes snapshots reusable) and the pycaffe solver it drives."""
    import caffe

    settings = run.settings
    select_device(settings.device)
    key = run_key(original, train_net, initial)
    store = SnapshotStore(Path(run.snapshot_root).resolve() / f"run-{key}", settings.keep_snapshots)
    store.folder.mkdir(parents=True, exist_ok=True)
    nets = _runtime_nets(settings.data_threads_or(run.threads), original, solver_path, store, log)
    patched = solver_for_stepping(original, solver_path, store.prefix, settings.device, nets)
    patched_file = store.folder / "solver.prototxt"
    atomic_write_text(patched_file, format_prototxt(patched))
    if original.random_seed >= 0:
        caffe.set_random_seed(original.random_seed)
    return caffe.get_solver(str(patched_file)), store


def _resume_or_initialize(
    solver, store: SnapshotStore, max_iter: int, initial: Path | None, train_net: Path, log
) -> tuple[list[dict[str, Any]], int | None]:
    """Restore the newest snapshot (its log rows and iteration), else copy the initial weights, else nothing."""
    latest = store.latest()
    if latest is not None:
        if latest["iteration"] > max_iter:
            raise TrainingError(
                f"the newest snapshot ({latest['solverstate']}) is at iteration "
                f"{latest['iteration']}, past max_iter {max_iter}; raise max_iter or "
                f"delete {store.folder} to train from scratch"
            )
        solver.restore(str(latest["solverstate"]))
        log(f"resuming from snapshot {latest['solverstate']} at iteration {latest['iteration']}")
        rows = [row for row in read_log_csv(latest["log"]) if row["iteration"] < latest["iteration"]]
        return rows, latest["iteration"]
    if initial is not None:
        table = copy_weights_by_name(solver.net, read_caffemodel(initial))
        log(f"initial weights {initial} copied by layer name:\n{format_copy_table(table)}")
        if not any(row.status == "copied" for row in table):
            raise TrainingError(
                f"initial weights {initial} share no layer (by name and shape) with {train_net}; "
                "check train.initial_weights"
            )
    else:
        log("training from the fillers' initialization (no train.initial_weights)")
    return [], None


def _test_rows(solver, original, num_test_nets: int, iteration: int, log) -> list[dict[str, Any]]:
    """One log row per test net with Caffe's ``detection_eval`` at ``iteration`` (none unless eval_type detection)."""
    rows = []
    if original.eval_type != "detection":
        return rows
    for index in range(num_test_nets):
        value = test_detection(solver, index, original.test_iter[index], original.ap_version)
        if value is not None:
            rows.append({"iteration": iteration, "loss": math.nan, "learning_rate": math.nan, "detection_eval": value})
            log(f"iteration {iteration}: test net #{index} detection_eval = {value:.6f}")
    return rows


def _progress_line(rows, average_loss: int, done: int, max_iter: int, rate: float, speed: float) -> str:
    recent = [row["loss"] for row in rows[-(average_loss or 1) :] if not math.isnan(row["loss"])]
    eta = (max_iter - done) / speed if speed > 0 else math.inf
    return (
        f"iteration {done}/{max_iter} ({100 * done / max_iter:.1f}%), loss {sum(recent) / len(recent):.4f}"
        f", lr {rate:g}, {speed:.2f} it/s, ETA {format_duration(eta)}"
    )


def train(run: TrainRun, log=print) -> dict[str, Any]:
    """Train to the solver's ``max_iter`` (resuming from the newest snapshot); write weights and the log CSV."""
    settings = run.settings
    solver_path = Path(run.solver)
    original = read_solver(solver_path)
    train_net, test_nets = net_paths(original, solver_path)
    initial = Path(run.initial_weights) if run.initial_weights else None
    if initial is not None and not initial.is_file():
        raise TrainingError(f"initial weights {initial} not found")
    if settings.snapshot_interval < 0:
        raise TrainingError(f"train.snapshot_interval is {settings.snapshot_interval}; it must be >= 0")
    if problem := settings_problem(settings.divergence_factor, settings.divergence_displays):
        raise TrainingError(problem)
    snapshot_interval = settings.snapshot_interval or original.snapshot or 1000
    solver, store = _open_solver(run, original, solver_path, train_net, initial, log)
    rows, resumed_from = _resume_or_initialize(solver, store, original.max_iter, initial, train_net, log)
    weights = loss_weights(train_net)
    max_iter = original.max_iter
    test_interval = original.test_interval if test_nets else 0
    display = run.progress_interval or original.display or 100
    start_iter = solver.iter
    started = time.monotonic()
    last_snapshot, snapshot_due = resumed_from, False
    guard = LossGuard(settings.divergence_factor, settings.divergence_displays, display)
    guard.replay(rows)
    log(
        f"training {train_net.name} from iteration {start_iter} to {max_iter} on {settings.device}; "
        f"snapshots every {snapshot_interval} in {store.folder}"
    )
    while solver.iter < max_iter:
        iteration = solver.iter
        if test_interval and iteration % test_interval == 0 and (iteration > 0 or original.test_initialization):
            rows += _test_rows(solver, original, len(test_nets), iteration, log)
        rate = learning_rate(original, iteration)
        solver.step(1)
        loss = sum(weight * float(solver.net.blobs[name].data.sum()) for name, weight in weights.items())
        verdict = guard.update(iteration, loss)
        if verdict is not None:  # nothing is saved after it: latest.json names the last healthy snapshot
            message = divergence_message(verdict, solver_path, original.base_lr, rate, store.latest())
            del solver  # its data threads stop now, not when the traceback goes (a new reader of the LMDB waits)
            raise TrainingError(message)
        if guard.warning:
            log(f"warning: {guard.warning}")
        rows.append({"iteration": iteration, "loss": loss, "learning_rate": rate, "detection_eval": math.nan})
        done = solver.iter
        snapshot_due = snapshot_due or done % snapshot_interval == 0
        if snapshot_due and guard.healthy:  # a snapshot due while the loss is too high waits (health.py)
            last_snapshot, snapshot_due = store.save(solver, rows), False
        if done % display == 0 or done == max_iter:
            speed = (done - start_iter) / max(time.monotonic() - started, 1e-9)
            log(_progress_line(rows, original.average_loss, done, max_iter, rate, speed))
    final_iter = solver.iter
    if (
        test_interval
        and final_iter % test_interval == 0
        and not any(row["iteration"] == final_iter and not math.isnan(row["detection_eval"]) for row in rows)
    ):
        rows += _test_rows(solver, original, len(test_nets), final_iter, log)
    if last_snapshot != final_iter:
        store.save(solver, rows)
    with atomic_path(run.weights_out) as tmp:
        save_without_runtime_fields(solver.net, tmp)
    write_log_csv(rows, run.log_csv_out)
    log(f"wrote {run.weights_out} (iteration {final_iter}) and {run.log_csv_out}")
    return {
        "start_iteration": start_iter,
        "final_iteration": final_iter,
        "resumed_from": resumed_from,
        "snapshot_folder": str(store.folder),
        "seconds": time.monotonic() - started,
        "columns": list(LOG_COLUMNS),
    }
