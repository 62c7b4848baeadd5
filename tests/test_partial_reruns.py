"""Partial re-runs documented in the README: only the LMDBs, only the evaluation, retraining vs resuming.

The tests of this module share their own copy of the session's demo run (so that the re-runs that
change files never touch what the other modules check), in file order: dry-runs first, then the
re-runs that change files.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.support.workflow_run import output_tail, planned_rules, run_snakemake

pytestmark = pytest.mark.slow

FINAL = "results/evaluate/metrics.json"
WEIGHTS = "results/train/final.caffemodel"
LMDBS = ("results/lmdb/trainval_lmdb", "results/lmdb/test_lmdb")
SNAPSHOTS = "resources/snapshots"
# A changed evaluation setting (the README's example: a new confidence threshold); a key of the
# `evaluate` config section, set through --config.
EVALUATE_SETTING = ("evaluate", "batch_size", 4)


@pytest.fixture(scope="module")
def finished_run(demo_run, tmp_path_factory):
    """A copy of the session's demo run (tests/conftest.py), file times and Snakemake's records included."""
    copy = tmp_path_factory.mktemp("partial-reruns") / "workflow"
    shutil.copytree(demo_run, copy, symlinks=True)
    return copy


def _plan(workdir, *args) -> dict[str, int]:
    result = run_snakemake(workdir, ["-n", "--cores", "2", *args])
    assert result.returncode == 0, output_tail(result)
    plan = planned_rules(result.stdout)
    plan.pop("total", None)
    return plan


def test_nothing_to_do_after_a_full_run(finished_run):
    assert _plan(finished_run, FINAL) == {}


def test_forcerun_build_lmdb_until_build_lmdb_plans_only_the_lmdbs(finished_run):
    assert _plan(finished_run, "--forcerun", "build_lmdb", "--until", "build_lmdb") == {"build_lmdb": 2}


def test_forcerun_build_lmdb_alone_also_redoes_everything_after_it(finished_run):
    plan = _plan(finished_run, "--forcerun", "build_lmdb", FINAL)
    assert {"build_lmdb", "train", "evaluate"} <= set(plan)


def test_forcerun_train_retrains_and_reevaluates(finished_run):
    plan = _plan(finished_run, "--forcerun", "train", FINAL)
    assert "train" in plan and "evaluate" in plan and "build_lmdb" not in plan


def test_new_evaluation_setting_reruns_only_evaluate(finished_run):
    section, key, value = EVALUATE_SETTING
    weights_before = (finished_run / WEIGHTS).stat().st_mtime_ns
    metrics_before = (finished_run / FINAL).stat().st_mtime_ns
    override = f"{section}={yaml.safe_dump({key: value}, default_flow_style=True).strip()}"
    args = ["--config", override, "--forcerun", "evaluate", "--until", "evaluate", FINAL]
    assert _plan(finished_run, *args) == {"evaluate": 1}
    result = run_snakemake(finished_run, ["--cores", "2", *args], timeout=1800)
    assert result.returncode == 0, output_tail(result)
    assert (finished_run / FINAL).stat().st_mtime_ns > metrics_before
    assert (finished_run / WEIGHTS).stat().st_mtime_ns == weights_before


def test_rebuilding_only_the_lmdbs_keeps_the_weights(finished_run):
    weights_before = (finished_run / WEIGHTS).stat().st_mtime_ns
    lmdbs_before = [(finished_run / lmdb / "data.mdb").stat().st_mtime_ns for lmdb in LMDBS]
    args = ["--forcerun", "build_lmdb", "--until", "build_lmdb"]
    result = run_snakemake(finished_run, ["--cores", "2", *args], timeout=1800)
    assert result.returncode == 0, output_tail(result)
    lmdbs_after = [(finished_run / lmdb / "data.mdb").stat().st_mtime_ns for lmdb in LMDBS]
    assert all(after > before for before, after in zip(lmdbs_before, lmdbs_after, strict=True))
    assert (finished_run / WEIGHTS).stat().st_mtime_ns == weights_before
    # The weights are now older than the LMDBs they came from: a plain run would retrain.
    assert "train" in _plan(finished_run, FINAL)
