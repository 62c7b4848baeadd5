"""Temporaries a crash left next to an output: which the next write removes, on one host and across nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ssdlite_coco.common.atomic import HOST, RULE_OWNS_OUTPUTS, atomic_write_text
from tests.support.lmdb_helpers import make_split, write_labelmap

DEAD_PID = 2**22 + 17  # above Linux's pid_max default: never a live process


def _leave(folder, name: str) -> os.PathLike:
    path = folder / name
    path.mkdir(parents=True)
    (path / "data.mdb").write_bytes(b"\0" * 4096)
    return path


@pytest.fixture
def temporaries(tmp_path):
    """Siblings of out.json: another node's, a dead local process's, a live local process's (this test's)."""
    folder = tmp_path / "results"
    return {
        "other node": _leave(folder, ".out.json.tmp-other_node-4242-abc"),
        "dead here": _leave(folder, f".out.json.tmp-{HOST}-{DEAD_PID}-abc"),
        "alive here": _leave(folder, f".out.json.tmp-{HOST}-{os.getppid()}-abc"),
        "other target": _leave(folder, ".other.json.tmp-other_node-4242-abc"),
    }


def _left(temporaries) -> set[str]:
    return {name for name, path in temporaries.items() if path.exists()}


def test_outside_a_rule_only_a_dead_local_writers_temporary_goes(tmp_path, temporaries, monkeypatch):
    monkeypatch.delenv(RULE_OWNS_OUTPUTS, raising=False)
    monkeypatch.chdir(tmp_path)
    atomic_write_text(tmp_path / "results/out.json", "{}")
    assert _left(temporaries) == {"other node", "alive here", "other target"}


def test_the_rule_that_owns_an_output_removes_every_temporary_of_it(tmp_path, temporaries, monkeypatch):
    monkeypatch.setenv(RULE_OWNS_OUTPUTS, "1")
    monkeypatch.chdir(tmp_path)
    atomic_write_text(tmp_path / "results/out.json", "{}")
    assert _left(temporaries) == {"other target"}
    assert (tmp_path / "results/out.json").read_text() == "{}"


def test_a_rule_owns_only_outputs_in_the_workflow_directory(tmp_path, temporaries, monkeypatch):
    """A shared cache outside the workflow (another workflow may be writing it) keeps other hosts' temporaries."""
    monkeypatch.setenv(RULE_OWNS_OUTPUTS, "1")
    (tmp_path / "workflow").mkdir()
    monkeypatch.chdir(tmp_path / "workflow")
    atomic_write_text(tmp_path / "results/out.json", "{}")
    assert _left(temporaries) == {"other node", "alive here", "other target"}


def test_a_build_lmdb_job_removes_the_lmdb_a_killed_job_on_another_node_left(repo_root, coco_mini_dir, tmp_path):
    instances, images = make_split(coco_mini_dir, tmp_path / "split", [9, 25, 30])
    labelmap = write_labelmap(json.loads(instances.read_text()), tmp_path / "labelmap.prototxt")
    workflow = tmp_path / "workflow"
    leftover = _leave(workflow / "results/lmdb", ".trainval_lmdb.tmp-node_017-31337-x1y2")
    command = [
        sys.executable, str(repo_root / "scripts/build_lmdb.py"), "--instances", str(instances),
        "--images", str(images), "--labelmap", str(labelmap), "--out", "results/lmdb/trainval_lmdb",
        "--report-out", "results/lmdb/trainval_build.json", "--split", "trainval", "--no-progress",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != RULE_OWNS_OUTPUTS}
    alone = subprocess.run(command, cwd=workflow, capture_output=True, text=True, timeout=300, env=env)
    assert alone.returncode == 0, alone.stderr
    assert leftover.exists()  # run by hand, the script cannot know that node 017's writer is gone
    as_rule = [str(repo_root / "scripts/logged"), str(tmp_path / "build.log"), *command]
    done = subprocess.run(as_rule, cwd=workflow, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, (tmp_path / "build.log").read_text()[-2000:]
    assert not leftover.exists()
    assert sorted(path.name for path in (workflow / "results/lmdb").iterdir()) == [
        "trainval_build.json",
        "trainval_lmdb",
    ]
