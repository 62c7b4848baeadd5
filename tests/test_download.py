"""Downloads against a local HTTP server serving COCO-2017-shaped archives built from coco-mini:
full download + extraction, resume after a cut connection, SHA-1 mismatch, 404, subset mode."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssdlite_coco.common.download import DownloadError, download_file, part_path
from ssdlite_coco.common.settings import parse_settings
from ssdlite_coco.dataset.coco2017 import (
    ARCHIVE_PATHS,
    OFFICIAL_BASE_URL,
    archive_url,
    extract_split,
    fetch_subset,
)
from ssdlite_coco.dataset.coco_json import DatasetError, select_image_ids, validate_dataset
from ssdlite_coco.dataset.settings import DownloadSettings
from tests.support.http_server import FileServer, build_coco_mirror, write_annotations_zip

RETRIES = parse_settings(DownloadSettings).retries  # the schema's dataset.download.retries


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mirror(coco_mini_dir: Path, tmp_path_factory) -> dict:
    """A folder laid out like images.cocodataset.org: zips/, annotations/, train2017/, val2017/."""
    return build_coco_mirror(coco_mini_dir, tmp_path_factory.mktemp("mirror"))


@pytest.fixture
def server(mirror):
    with FileServer(mirror["root"]) as running:
        yield running


def test_full_download_and_extraction(server, mirror, coco_mini_dir, tmp_path):
    downloads = tmp_path / "resources" / "downloads"
    zips = {}
    for archive in ARCHIVE_PATHS:
        zips[archive] = download_file(
            archive_url(archive, server.base_url),
            downloads / f"{archive}.zip",
            sha1=mirror["sha1"][archive],
            retries=RETRIES,
            progress=False,
        )
        assert _sha1(zips[archive]) == mirror["sha1"][archive]
    assert not list(downloads.glob("*.part"))
    for split, coco_split in (("trainval", "train2017"), ("test", "val2017")):
        out = tmp_path / "results" / "data" / split
        count = extract_split(
            zips[coco_split],
            zips["annotations_trainval2017"],
            coco_split,
            out / "instances.json",
            out / "images",
            progress=False,
        )
        expected = mirror["instances"][coco_split]
        assert count == len(expected["images"])
        assert json.loads((out / "instances.json").read_text()) == expected
        validate_dataset(out / "instances.json", out / "images", sample=len(expected["images"]))
        assert sorted(os.listdir(out / "images")) == sorted(image["file_name"] for image in expected["images"])
        for image in expected["images"][:10]:
            name = image["file_name"]
            assert (out / "images" / name).read_bytes() == (coco_mini_dir / "images" / name).read_bytes()
    assert not [p.name for p in (tmp_path / "results" / "data").iterdir() if p.name.startswith(".")]


def test_resume_after_the_server_cuts_the_connection(server, mirror, tmp_path):
    path = ARCHIVE_PATHS["val2017"]
    size = (mirror["root"] / path).stat().st_size
    cut = size // 2 + 12345
    server.cut_after["/" + path] = cut
    dest = download_file(
        server.url(path),
        tmp_path / "val2017.zip",
        sha1=mirror["sha1"]["val2017"],
        retries=2,
        retry_wait=0,
        progress=False,
    )
    requests = server.requests_for(path)
    assert len(requests) == 2
    assert "Range" not in requests[0]
    assert requests[1]["Range"] == f"bytes={cut}-"
    assert dest.stat().st_size == size and _sha1(dest) == mirror["sha1"]["val2017"]
    assert not part_path(dest).exists()


def test_resume_in_a_later_run_after_an_interrupted_one(server, mirror, tmp_path):
    path = ARCHIVE_PATHS["val2017"]
    cut = 1_000_003
    server.cut_after["/" + path] = cut
    dest = tmp_path / "downloads" / "val2017.zip"
    with pytest.raises(DownloadError, match="run again to resume") as error:
        download_file(server.url(path), dest, sha1=mirror["sha1"]["val2017"], retries=0, progress=False)
    assert server.url(path) in str(error.value)
    assert not dest.exists()
    assert part_path(dest).stat().st_size == cut
    download_file(server.url(path), dest, sha1=mirror["sha1"]["val2017"], retries=0, progress=False)
    assert server.requests_for(path)[-1]["Range"] == f"bytes={cut}-"
    assert _sha1(dest) == mirror["sha1"]["val2017"]
    assert not part_path(dest).exists()


def test_a_server_that_ignores_range_restarts_from_zero(server, mirror, tmp_path, capsys):
    path = ARCHIVE_PATHS["annotations_trainval2017"]
    dest = tmp_path / "annotations.zip"
    part_path(dest).write_bytes(b"stale bytes from another file")
    server.ignore_range = True
    download_file(
        server.url(path), dest, sha1=mirror["sha1"]["annotations_trainval2017"], retries=RETRIES, progress=False
    )
    assert server.requests_for(path)[0]["Range"] == f"bytes={len(b'stale bytes from another file')}-"
    assert _sha1(dest) == mirror["sha1"]["annotations_trainval2017"]
    warning = capsys.readouterr().err
    assert "ignored the request to resume at byte 29; restarting from byte 0" in warning
    assert "resuming" not in warning


@pytest.mark.parametrize("url", ["htp://127.0.0.1/zips/val2017.zip", "http:///zips/val2017.zip", "zips/val2017.zip"])
def test_a_malformed_url_fails_at_once_without_retries(url, tmp_path, capsys):
    with pytest.raises(DownloadError, match="is not a valid http") as error:
        download_file(url, tmp_path / "val2017.zip", retries=3, retry_wait=0, progress=False)
    assert url in str(error.value) and "base_url" in str(error.value)
    assert "retrying" not in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_complete_part_file_is_not_downloaded_again(server, mirror, tmp_path):
    path = ARCHIVE_PATHS["annotations_trainval2017"]
    dest = tmp_path / "annotations.zip"
    part_path(dest).write_bytes((mirror["root"] / path).read_bytes())
    download_file(
        server.url(path), dest, sha1=mirror["sha1"]["annotations_trainval2017"], retries=RETRIES, progress=False
    )
    assert _sha1(dest) == mirror["sha1"]["annotations_trainval2017"]
    assert len(server.requests_for(path)) == 1  # answered 416: nothing left to send


def test_checksum_mismatch_is_clear_and_leaves_nothing_valid_looking(server, mirror, tmp_path):
    path = ARCHIVE_PATHS["annotations_trainval2017"]
    dest = tmp_path / "annotations_trainval2017.zip"
    wrong = "0" * 40
    with pytest.raises(DownloadError) as error:
        download_file(server.url(path), dest, sha1=wrong, retries=RETRIES, progress=False)
    message = str(error.value)
    assert "SHA-1 mismatch" in message and wrong in message and mirror["sha1"]["annotations_trainval2017"] in message
    assert server.url(path) in message
    assert list(tmp_path.iterdir()) == []


def test_404_names_the_url(server, tmp_path):
    url = server.url("zips/train2071.zip")
    with pytest.raises(DownloadError, match="HTTP 404") as error:
        download_file(url, tmp_path / "train2071.zip", retries=RETRIES, progress=False)
    assert url in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_one_error_line(server, repo_root, tmp_path):
    url = server.url("zips/missing.zip")
    result = subprocess.run(
        [
            sys.executable,
            str(repo_root / "scripts" / "download_archive.py"),
            "--url",
            url,
            "--sha1",
            "0" * 40,
            "--out",
            str(tmp_path / "missing.zip"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo_root)},
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {url}: HTTP 404 Not Found; check the URL (base_url in the dataset section of the config)"
    ]


def test_extract_rejects_the_wrong_archive(mirror, tmp_path):
    root = mirror["root"]
    with pytest.raises(DatasetError, match="no files under train2017/"):
        extract_split(
            root / ARCHIVE_PATHS["val2017"],
            root / ARCHIVE_PATHS["annotations_trainval2017"],
            "train2017",
            tmp_path / "instances.json",
            tmp_path / "images",
            progress=False,
        )
    assert not (tmp_path / "images").exists() and not (tmp_path / "instances.json").exists()


def _check_subset(out: Path, source: dict, count: int, seed: int, mini_images: Path) -> dict:
    data = json.loads((out / "instances.json").read_text())
    chosen = select_image_ids([image["id"] for image in source["images"]], count, seed)
    assert [image["id"] for image in data["images"]] == chosen
    assert data["annotations"] == [a for a in source["annotations"] if a["image_id"] in set(chosen)]
    assert data["categories"] == source["categories"]
    assert sorted(os.listdir(out / "images")) == sorted(image["file_name"] for image in data["images"])
    for image in data["images"]:
        name = image["file_name"]
        assert (out / "images" / name).read_bytes() == (mini_images / name).read_bytes()
    validate_dataset(out / "instances.json", out / "images", sample=count)
    return data


def test_subset_fetches_images_through_coco_url(server, mirror, coco_mini_dir, tmp_path):
    """coco_url points at the local server; only the chosen images are requested, once."""
    source = json.loads(json.dumps(mirror["instances"]["train2017"]))
    for image in source["images"]:
        image["coco_url"] = server.url(f"train2017/{image['file_name']}")
    annotations_zip = tmp_path / "annotations_trainval2017.zip"
    write_annotations_zip(annotations_zip, {"train2017": source})
    cache = tmp_path / "cache"
    out = tmp_path / "results" / "data" / "trainval"
    official = {"base_url": OFFICIAL_BASE_URL, "retries": RETRIES}  # coco_url is the local server's: no rewrite
    counts = fetch_subset(
        annotations_zip, "train2017", 12, 7, cache, out / "instances.json", out / "images", **official, progress=False
    )
    data = _check_subset(out, source, 12, 7, coco_mini_dir / "images")
    assert counts["images"] == 12 and counts["annotations"] == len(data["annotations"]) > 0
    image_requests = [path for path, _ in server.requests if path.startswith("/train2017/")]
    assert sorted(image_requests) == sorted(f"/train2017/{image['file_name']}" for image in data["images"])
    # A second run (e.g. after the outputs were deleted) takes the images from the cache.
    out2 = tmp_path / "again"
    fetch_subset(
        annotations_zip, "train2017", 12, 7, cache, out2 / "instances.json", out2 / "images", **official, progress=False
    )
    assert (out2 / "instances.json").read_bytes() == (out / "instances.json").read_bytes()
    assert len([path for path, _ in server.requests if path.startswith("/train2017/")]) == 12


def test_subset_from_a_mirror_rewrites_the_official_coco_url(server, mirror, coco_mini_dir, tmp_path):
    """The records keep the official coco_url; base_url moves the requests to the mirror."""
    source = mirror["instances"]["val2017"]
    assert all(image["coco_url"].startswith(OFFICIAL_BASE_URL + "/") for image in source["images"])
    annotations_zip = tmp_path / "annotations_trainval2017.zip"
    download_file(
        archive_url("annotations_trainval2017", server.base_url),
        annotations_zip,
        sha1=mirror["sha1"]["annotations_trainval2017"],
        retries=RETRIES,
        progress=False,
    )
    out = tmp_path / "test"
    fetch_subset(
        annotations_zip,
        "val2017",
        5,
        0,
        tmp_path / "cache",
        out / "instances.json",
        out / "images",
        base_url=server.base_url,
        retries=RETRIES,
        progress=False,
    )
    _check_subset(out, source, 5, 0, coco_mini_dir / "images")


def test_subset_names_a_missing_image_url(server, mirror, tmp_path):
    source = json.loads(json.dumps(mirror["instances"]["train2017"]))
    for image in source["images"]:
        image["coco_url"] = server.url(f"nowhere/{image['file_name']}")
    annotations_zip = tmp_path / "annotations_trainval2017.zip"
    write_annotations_zip(annotations_zip, {"train2017": source})
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match=r"HTTP 404.*") as error:
        fetch_subset(
            annotations_zip,
            "train2017",
            3,
            0,
            tmp_path / "cache",
            out / "instances.json",
            out / "images",
            base_url=OFFICIAL_BASE_URL,
            retries=RETRIES,
            progress=False,
        )
    assert server.url("nowhere/") in str(error.value)
    assert not out.exists() or not any(out.iterdir())
