"""Read an LMDB folder: its records one by one, or how many it holds (every reader of an LMDB goes here)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ssdlite_coco.common.errors import SsdliteError


class LmdbMissingError(SsdliteError):
    """The folder is not an LMDB; the message names it and the rule that builds it."""


def _open(lmdb_dir: str | os.PathLike, **options):
    import lmdb

    lmdb_dir = Path(lmdb_dir)
    if not (lmdb_dir / "data.mdb").is_file():
        raise LmdbMissingError(f"{lmdb_dir}: not an LMDB folder (no data.mdb); build the LMDB first (rule build_lmdb)")
    return lmdb.open(str(lmdb_dir), readonly=True, lock=False, subdir=True, **options)


def iter_records(lmdb_dir: str | os.PathLike) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of an LMDB, in key order, read one by one."""
    env = _open(lmdb_dir, readahead=False)
    try:
        with env.begin(buffers=False) as txn:
            yield from txn.cursor()
    finally:
        env.close()


def count_records(lmdb_dir: str | os.PathLike) -> int:
    env = _open(lmdb_dir)
    try:
        return int(env.stat()["entries"])
    finally:
        env.close()
