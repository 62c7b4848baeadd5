"""The dataset rules end to end: Snakemake builds results/data/{trainval,test} from each source
(demo; download and subset against a local HTTP server; local) in a scratch working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssdlite_coco.dataset.coco_json import validate_dataset
from ssdlite_coco.dataset.demo import generate_split
from tests.support.http_server import FileServer, build_coco_mirror

TARGETS = [
    "results/data/trainval/instances.json",
    "results/data/trainval/images",
    "results/data/test/instances.json",
    "results/data/test/images",
]


def snakemake(repo_root: Path, workdir: Path, dataset: dict, *extra: str) -> subprocess.CompletedProcess:
    """Run the workflow for the dataset targets with ``dataset`` as the config's dataset section."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "config").exists():
        (workdir / "config").symlink_to(repo_root / "config")
    (workdir / "dataset.yaml").write_text(yaml.safe_dump({"dataset": dataset}))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(repo_root / "Snakefile"), "-d", str(workdir),
         "--configfile", str(workdir / "dataset.yaml"), "-c1", *extra, *TARGETS],
        cwd=workdir, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


def _check_split(workdir: Path, split: str) -> dict:
    out = workdir / "results" / "data" / split
    return validate_dataset(out / "instances.json", out / "images", sample=1000)


def test_demo_source(repo_root, tmp_path):
    dataset = {"source": "demo", "demo": {"trainval_images": 20, "test_images": 8, "seed": 3}}
    result = snakemake(repo_root, tmp_path / "wf", dataset)
    assert result.returncode == 0, result.stderr
    generate_split("test", 8, 3, tmp_path / "direct" / "instances.json", tmp_path / "direct" / "images")
    test_out = tmp_path / "wf" / "results" / "data" / "test"
    assert (test_out / "instances.json").read_bytes() == (tmp_path / "direct" / "instances.json").read_bytes()
    assert len(_check_split(tmp_path / "wf", "trainval")["images"]) == 20
    again = snakemake(repo_root, tmp_path / "wf", dataset, "--dry-run")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_download_source_against_a_local_mirror(repo_root, coco_mini_dir, tmp_path):
    mirror = build_coco_mirror(coco_mini_dir, tmp_path / "mirror")
    with FileServer(mirror["root"]) as server:
        dataset = {"source": "download", "download": {"base_url": server.base_url, "sha1": mirror["sha1"]}}
        result = snakemake(repo_root, tmp_path / "wf", dataset)
    assert result.returncode == 0, result.stderr
    for split, coco_split in (("trainval", "train2017"), ("test", "val2017")):
        assert _check_split(tmp_path / "wf", split) == mirror["instances"][coco_split]
    downloads = tmp_path / "wf" / "resources" / "downloads"
    assert sorted(p.name for p in downloads.iterdir()) == [
        "annotations_trainval2017.zip", "train2017.zip", "val2017.zip",
    ]  # fmt: skip
    # The annotations archive serves both splits: it was fetched once.
    assert len(server.requests_for("annotations/annotations_trainval2017.zip")) == 1


def test_download_source_with_a_wrong_sha1_fails_and_names_the_archive(repo_root, coco_mini_dir, tmp_path):
    mirror = build_coco_mirror(coco_mini_dir, tmp_path / "mirror")
    with FileServer(mirror["root"]) as server:
        sha1 = {**mirror["sha1"], "val2017": "f" * 40}
        dataset = {"source": "download", "download": {"base_url": server.base_url, "sha1": sha1}}
        result = snakemake(repo_root, tmp_path / "wf", dataset, "--keep-going")
    assert result.returncode != 0
    log = (tmp_path / "wf" / "logs" / "dataset" / "dataset_download_archive_val2017.log").read_text()
    assert f"error: {server.base_url}/zips/val2017.zip: SHA-1 mismatch: expected {'f' * 40}" in log
    console = (result.stdout + result.stderr).splitlines()  # the error line reaches the console, on its own line
    assert any(line.startswith(f"error: {server.base_url}/zips/val2017.zip: SHA-1 mismatch") for line in console)
    downloads = tmp_path / "wf" / "resources" / "downloads"
    assert not (downloads / "val2017.zip").exists() and not (downloads / "val2017.zip.part").exists()
    assert not (tmp_path / "wf" / "results" / "data" / "test").exists()
    assert _check_split(tmp_path / "wf", "trainval")  # the other split is unaffected


def test_subset_source_against_a_local_mirror(repo_root, coco_mini_dir, tmp_path):
    mirror = build_coco_mirror(coco_mini_dir, tmp_path / "mirror")
    with FileServer(mirror["root"]) as server:
        dataset = {
            "source": "subset",
            "download": {"base_url": server.base_url, "sha1": mirror["sha1"]},
            "subset": {"trainval_images": 9, "test_images": 4, "seed": 1},
        }
        result = snakemake(repo_root, tmp_path / "wf", dataset)
    assert result.returncode == 0, result.stderr
    assert len(_check_split(tmp_path / "wf", "trainval")["images"]) == 9
    assert len(_check_split(tmp_path / "wf", "test")["images"]) == 4
    assert not server.requests_for("zips/train2017.zip") and not server.requests_for("zips/val2017.zip")
    assert len([path for path, _ in server.requests if path.endswith(".jpg")]) == 13


def test_local_source_links_a_coco_copy(repo_root, coco_mini_dir, tmp_path):
    split = {
        "instances": str(coco_mini_dir / "annotations" / "instances_mini.json"),
        "images": str(coco_mini_dir / "images"),
    }
    result = snakemake(repo_root, tmp_path / "wf", {"source": "local", "local": {"trainval": split, "test": split}})
    assert result.returncode == 0, result.stderr
    images = tmp_path / "wf" / "results" / "data" / "trainval" / "images"
    assert images.is_symlink() and images.resolve() == (coco_mini_dir / "images").resolve()
    assert len(_check_split(tmp_path / "wf", "test")["annotations"]) == 939


def test_local_source_problems_are_named(repo_root, coco_mini_dir, tmp_path):
    good = {
        "instances": str(coco_mini_dir / "annotations" / "instances_mini.json"),
        "images": str(coco_mini_dir / "images"),
    }
    local = {"trainval": {**good, "images": ""}, "test": good}
    result = snakemake(repo_root, tmp_path / "wf", {"source": "local", "local": local})
    assert result.returncode != 0
    assert "config dataset.local.trainval.images is empty" in result.stdout + result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": []}))
    split = {"instances": str(bad), "images": str(coco_mini_dir / "images")}
    result = snakemake(repo_root, tmp_path / "wf", {"source": "local", "local": {"trainval": split, "test": split}})
    assert result.returncode != 0
    # both splits use the bad file; whichever job Snakemake ran first failed and stopped the run
    logs = sorted((tmp_path / "wf" / "logs" / "dataset").glob("dataset_local_*.log"))
    expected = f"error: {bad}: no 'categories' list; a COCO instances file has images, annotations and categories"
    assert logs and all(log.read_text().strip() == expected for log in logs)
    assert not list((tmp_path / "wf" / "results" / "data").glob("*/instances.json"))


@pytest.mark.parametrize("source", ["download", "subset", "local"])
def test_dry_run_plans_the_source_rules(repo_root, tmp_path, source):
    dataset = {"source": source, "local": {"trainval": {"instances": "a.json", "images": "img"},
                                           "test": {"instances": "b.json", "images": "img"}}}  # fmt: skip
    for name in ("a.json", "b.json"):
        (tmp_path / "wf" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "wf" / name).write_text("{}")
    (tmp_path / "wf" / "img").mkdir(exist_ok=True)
    result = snakemake(repo_root, tmp_path / "wf", dataset, "--dry-run")
    assert result.returncode == 0, result.stderr
    expected = {
        "download": {"dataset_download_archive": 3, "dataset_extract": 2},
        "subset": {"dataset_download_archive": 1, "dataset_subset": 2},
        "local": {"dataset_local": 2},
    }[source]
    for rule, count in expected.items():
        assert any(line.split() == [rule, str(count)] for line in result.stdout.splitlines()), result.stdout
