"""The `lmdb` keys each rule of the lmdb stage reads (``--settings`` of scripts/build_lmdb.py, check_lmdb.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

SHUFFLED_SPLIT = "trainval"  # the split whose records are shuffled; test keeps image id order (the name-size file's)


@dataclass(frozen=True)
class BuildSettings:
    """Rule build_lmdb: which boxes are kept, what a bad image does, the trainval shuffle and the reader threads."""

    SECTION: ClassVar[str] = "lmdb"
    crowd: str
    min_box_size: float
    on_bad_record: str
    shuffle_seed: int
    readers: int

    def shuffle_seed_of(self, split: str) -> int | None:
        """The seed that shuffles ``split``'s records: lmdb.shuffle_seed for trainval, None (image id order) else."""
        return self.shuffle_seed if split == SHUFFLED_SPLIT else None


@dataclass(frozen=True)
class CheckSettings:
    """Rule check_lmdb: the threads decoding the images."""

    SECTION: ClassVar[str] = "lmdb"
    readers: int
