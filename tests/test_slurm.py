"""The workflow runs on a real (single-node, 127.0.0.1) SLURM cluster through profiles/slurm.

The cluster is Debian's slurmctld + slurmd + munge, started here and stopped afterwards
(tests/slurm_cluster.py). Needs root and `apt-get install slurmctld slurmd slurm-client munge`;
without them the test is skipped, saying so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.support.slurm_cluster import SlurmCluster, unavailable_reason
from tests.support.workflow_run import copy_workflow, output_tail, run_snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The SLURM run is the whole demo DAG (rule all), shrunk to a few images and iterations.
TARGETS = ["results/evaluate/metrics.json", "results/export/verify.json", "results/report/loss.png"]
SMALL_DEMO = {
    "dataset": {"demo": {"trainval_images": 32, "test_images": 8}},
    "solver": {"max_iter": 6, "steps": [4, 5], "snapshot": 3, "test_interval": 3},
    "evaluate": {"report_images": 4},
}

# Resources the test config asks for, per rule, and that each rule's SLURM job must then have.
# Small enough for a 2-core CI machine; the GPU is the cluster's fake one.
RULE_RESOURCES = {
    "caffe_build": {"mem_mb": 1500, "runtime": 30, "cpus_per_task": 1, "gpus": 0},
    "build_lmdb": {"mem_mb": 1200, "runtime": 25, "cpus_per_task": 1, "gpus": 0},
    "train": {"mem_mb": 1500, "runtime": 30, "cpus_per_task": 2, "gpus": 1},
    "evaluate": {"mem_mb": 1400, "runtime": 20, "cpus_per_task": 1, "gpus": 1},
}
DEFAULT_RESOURCES = {"mem_mb": 1000, "runtime": 20, "cpus_per_task": 1, "gpus": 0}

# The test cluster has no accounting: the plugin reads job states from squeue (MinJobAge is 3600 s).
CLUSTER_ARGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5"]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no local SLURM cluster: {reason}")
    with SlurmCluster(tmp_path_factory.mktemp("slurm-state")) as cluster:
        yield cluster


def _jobs_by_rule(output: str) -> dict[str, list[str]]:
    """SLURM job ids per rule, from the plugin's lines "... SLURM jobid N (log: .../rule_<name>/...)"."""
    jobs: dict[str, list[str]] = {}
    for job_id, log in re.findall(r"submitted with SLURM jobid (\d+) \(log: ([^)]*)\)", output):
        rule_dir = next((part for part in Path(log).parts if part.startswith("rule_")), None)
        if rule_dir:
            jobs.setdefault(rule_dir.removeprefix("rule_"), []).append(job_id)
    return jobs


def _minutes(limit: str) -> int:
    """SLURM's TimeLimit ([D-]HH:MM:SS) in minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+):(\d+)", limit)
    assert match, f"unexpected TimeLimit {limit!r}"
    days, hours, minutes, _ = (int(group or 0) for group in match.groups())
    return days * 1440 + hours * 60 + minutes


def test_workflow_runs_through_the_slurm_profile(slurm_cluster, repo_root, tmp_path):
    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    test_config = {**SMALL_DEMO, "resources": {"default": DEFAULT_RESOURCES, "rules": RULE_RESOURCES}}
    (workdir / "slurm-test.yaml").write_text(yaml.safe_dump(test_config))

    result = run_snakemake(
        workdir,
        [
            "--profile",
            "profiles/slurm",
            "--configfile",
            "config/config.yaml",  # the demo's settings, then the test's
            "slurm-test.yaml",
            "--jobs",
            "2",
            "--latency-wait",
            "10",
            *CLUSTER_ARGS,
            *TARGETS,
        ],
        timeout=1800,
    )

    assert result.returncode == 0, f"snakemake on SLURM failed:\n{output_tail(result)}"
    metrics = json.loads((workdir / "results/evaluate/metrics.json").read_text())
    assert metrics["num_images"] == SMALL_DEMO["dataset"]["demo"]["test_images"] and 0 <= metrics["stats"]["AP50"] <= 1
    verify = json.loads((workdir / "results/export/verify.json").read_text())
    assert verify["failures"] == [] and all(row["loads"] for row in verify["rows"]), verify["failures"]
    with Image.open(workdir / "results/report/loss.png") as loss:
        assert loss.format == "PNG" and loss.size[0] > 400 and len(np.unique(np.asarray(loss.convert("L")))) > 2

    jobs = _jobs_by_rule(result.stdout + result.stderr)
    for rule, wanted in RULE_RESOURCES.items():
        assert rule in jobs, f"rule {rule} did not run as a SLURM job (jobs seen: {jobs})"
        for job_id in jobs[rule]:
            details = slurm_cluster.job_details(job_id)
            assert details["JobState"] == "COMPLETED", f"{rule} job {job_id}: {details['JobState']}"
            assert details["MinMemoryNode"] == f"{wanted['mem_mb']}M", f"{rule} job {job_id} memory"
            assert int(details["NumCPUs"]) == wanted["cpus_per_task"], f"{rule} job {job_id} CPUs"
            assert _minutes(details["TimeLimit"]) == wanted["runtime"], f"{rule} job {job_id} time limit"
            gpu_request = details.get("TresPerJob", "")
            if wanted["gpus"]:
                assert gpu_request == f"gres:gpu:{wanted['gpus']}", f"{rule} job {job_id} GPUs: {details}"
            else:
                assert "gpu" not in gpu_request, f"{rule} job {job_id} asked for a GPU: {details}"
