"""Faults during the LMDB build: a full disk (real tmpfs), a killed build and its rerun. Nothing half-written
stays behind, and the one line says what happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.lmdb_helpers import make_split, write_labelmap

IMAGE_IDS = [9, 25, 30, 34, 36, 42]


@pytest.fixture
def split(coco_mini_dir, tmp_path):
    import json

    instances, images = make_split(coco_mini_dir, tmp_path / "split", IMAGE_IDS)
    labelmap = write_labelmap(json.loads(instances.read_text()), tmp_path / "labelmap.prototxt")
    image_bytes = sum(path.stat().st_size for path in images.iterdir())
    return instances, images, labelmap, image_bytes


def _build_command(repo_root: Path, instances, images, labelmap, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(repo_root / "scripts" / "build_lmdb.py"),
        "--instances", str(instances), "--images", str(images), "--labelmap", str(labelmap),
        "--out", str(out / "lmdb"), "--report-out", str(out / "report.json"), "--split", "test", "--no-progress",
        *extra,
    ]  # fmt: skip


def _on_tmpfs(size_bytes: int, mount_point: Path, command: list[str]) -> subprocess.CompletedProcess:
    """Run ``command`` with a tmpfs of ``size_bytes`` at ``mount_point``, in a private mount namespace."""
    mount_point.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o size={size_bytes} tmpfs "$1" && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", script, "sh", str(mount_point), *command],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def test_a_disk_too_small_stops_before_writing(repo_root, split, tmp_path):
    instances, images, labelmap, image_bytes = split
    disk = tmp_path / "disk"
    done = _on_tmpfs(image_bytes // 2, disk, _build_command(repo_root, instances, images, labelmap, disk))
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "not enough disk space" in lines[0] and f"{image_bytes:,} bytes" in lines[0] and "free" in lines[0]
    assert _leftovers(disk) == []


def test_a_disk_that_fills_up_while_writing_ends_with_one_line_and_no_leftovers(repo_root, split, tmp_path):
    instances, images, labelmap, image_bytes = split
    disk = tmp_path / "disk"
    # Room for the image bytes (the check before writing passes) but not for the LMDB's page rounding.
    size = (image_bytes // 4096 + 2) * 4096
    done = _on_tmpfs(size, disk, _build_command(repo_root, instances, images, labelmap, disk))
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "cannot write the LMDB" in lines[0] and "bytes" in lines[0] and "free" in lines[0], lines[0]
    assert "lmdb.tmp-" in lines[0]  # names the path it was writing
    assert _leftovers(disk) == []


def test_a_killed_build_leaves_a_temporary_folder_that_the_next_build_removes(repo_root, coco_mini_dir, tmp_path):
    import json

    instances, images = make_split(coco_mini_dir, tmp_path / "split")  # all 128 images: a build of seconds
    labelmap = write_labelmap(json.loads(instances.read_text()), tmp_path / "labelmap.prototxt")
    out = tmp_path / "out"
    command = _build_command(repo_root, instances, images, labelmap, out, "--settings", '{"readers": 1}')
    with_progress = [part for part in command if part != "--no-progress"]
    process = subprocess.Popen(with_progress, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # The event, not a deadline: the progress bar is first drawn once the temporary LMDB exists.
    seen = b""
    while b"lmdb lmdb" not in seen:
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk, f"the build ended before it could be killed: {seen.decode(errors='replace')}"
        seen += chunk
    assert any(name.startswith(".lmdb.tmp-") for name in _leftovers(out)), _leftovers(out)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    stale = [name for name in _leftovers(out) if name.startswith(".lmdb.tmp-")]
    assert stale and not (out / "lmdb").exists()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _leftovers(out) == ["lmdb", "report.json"]
