"""An LMDB folder: read its records one by one or count them, or append records in key order."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ssdlite_coco.common.errors import SsdliteError

RECORDS_PER_TXN = 1000


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


class AppendWriter:
    """Appends key/value pairs in fixed-size transactions; grows the map on MDB_MAP_FULL."""

    def __init__(self, path: Path, map_size: int):
        import lmdb

        self._lmdb = lmdb
        self.lmdb_error = lmdb.Error
        self.env = lmdb.open(
            str(path),
            map_size=map_size,
            subdir=True,
            sync=False,
            metasync=False,
            readahead=False,
            max_dbs=0,
        )
        self.map_size = map_size
        self.batch: list[tuple[bytes, bytes]] = []
        self.grown = 0

    def put(self, key: bytes, value: bytes) -> None:
        self.batch.append((key, value))
        if len(self.batch) >= RECORDS_PER_TXN:
            self.commit()

    def commit(self) -> None:
        if not self.batch:
            return
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    cursor = txn.cursor()
                    for key, value in self.batch:
                        if not cursor.put(key, value, append=True):
                            raise ValueError(f"key {key!r} is out of order (keys must be appended in sorted order)")
                break
            except self._lmdb.MapFullError:
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)
                self.grown += 1
        self.batch = []

    def close(self) -> None:
        """Commit, flush to disk and close."""
        self.commit()
        self.env.sync(True)
        self.env.close()

    def abort(self) -> None:
        self.batch = []
        self.env.close()
