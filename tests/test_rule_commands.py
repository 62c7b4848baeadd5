"""Optional string parameters reach their scripts intact, the empty string included (`--flag=''`, never a
flag without its value), through the real rules."""

from __future__ import annotations

import hashlib

import yaml

from tests.support.http_server import FileServer, build_coco_mirror
from tests.support.workflow_run import copy_workflow, output_tail, run_snakemake


def test_local_initial_weights_without_a_sha256(repo_root, tmp_path):
    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    weights = tmp_path / "my weights" / "init.caffemodel"  # a space in the path, too
    weights.parent.mkdir()
    weights.write_bytes(b"\x0a\x05dummy")
    config = {"train": {"initial_weights": str(weights), "initial_weights_sha256": ""}}
    (workdir / "weights.yaml").write_text(yaml.safe_dump(config))
    target = "resources/weights/initial.caffemodel"
    result = run_snakemake(workdir, ["--cores", "1", target, "--configfile", "weights.yaml"])
    assert result.returncode == 0, output_tail(result)
    assert (workdir / target).read_bytes() == weights.read_bytes()
    log = (workdir / "logs" / "train" / "fetch_initial_weights.log").read_text()
    assert f"sha256 {hashlib.sha256(weights.read_bytes()).hexdigest()}" in log


def test_an_archive_with_an_empty_sha1_downloads_unchecked_with_a_warning(repo_root, coco_mini_dir, tmp_path):
    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    mirror = build_coco_mirror(coco_mini_dir, tmp_path / "mirror")
    with FileServer(mirror["root"]) as server:
        config = {"dataset": {"source": "download", "download": {"base_url": server.base_url, "sha1": {"val2017": ""}}}}
        (workdir / "download.yaml").write_text(yaml.safe_dump(config))
        target = "resources/downloads/val2017.zip"
        result = run_snakemake(workdir, ["--cores", "1", target, "--configfile", "download.yaml"])
    assert result.returncode == 0, output_tail(result)
    assert (workdir / target).read_bytes() == (mirror["root"] / "zips" / "val2017.zip").read_bytes()
    log = (workdir / "logs" / "dataset" / "dataset_download_archive_val2017.log").read_text()
    assert "warning: no SHA-1 given" in log
