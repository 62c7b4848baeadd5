"""A run's snapshots: Caffe's .caffemodel/.solverstate, the log rows up to them, and ``latest.json``, which
names the newest complete one (written only after the files are complete, so a run killed at any moment
resumes from a whole snapshot)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ssdlite_coco.common.atomic import atomic_write_text
from ssdlite_coco.train.log import write_log_csv


class SnapshotStore:
    """Complete snapshots of one run under ``folder``; ``latest.json`` names the newest complete one."""

    def __init__(self, folder: Path, keep: int = 2):
        self.folder = folder
        self.keep = max(1, keep)
        self.prefix = folder / "snapshot"
        self.pointer = folder / "latest.json"

    def files(self, iteration: int) -> dict[str, Path]:
        return {
            "caffemodel": Path(f"{self.prefix}_iter_{iteration}.caffemodel"),
            "solverstate": Path(f"{self.prefix}_iter_{iteration}.solverstate"),
            "log": self.folder / f"log_iter_{iteration}.csv",
        }

    def latest(self) -> dict[str, Any] | None:
        if not self.pointer.is_file():
            return None
        try:
            record = json.loads(self.pointer.read_text())
            iteration = int(record["iteration"])
        except (ValueError, KeyError, TypeError):
            return None
        files = self.files(iteration)
        if not all(path.is_file() for path in files.values()):
            return None
        return {"iteration": iteration, **files}

    def save(self, solver, rows: list[dict[str, Any]]) -> int:
        """Snapshot ``solver`` (Caffe writes the .caffemodel/.solverstate), its log rows, then the pointer."""
        iteration = solver.iter
        solver.snapshot()
        files = self.files(iteration)
        write_log_csv(rows, files["log"])
        atomic_write_text(self.pointer, json.dumps({"iteration": iteration, "saved": time.time()}) + "\n")
        self._prune()
        return iteration

    def _prune(self) -> None:
        iterations = sorted(
            int(path.name[len("snapshot_iter_") : -len(".solverstate")])
            for path in self.folder.glob("snapshot_iter_*.solverstate")
        )
        for old in iterations[: -self.keep]:
            for path in self.files(old).values():
                path.unlink(missing_ok=True)
