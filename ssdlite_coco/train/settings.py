"""The `train` keys each rule of the train stage reads (``--settings`` of its script)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class FetchWeightsSettings:
    """Rule fetch_initial_weights (scripts/fetch_weights.py): where the initial weights come from, their digest."""

    SECTION: ClassVar[str] = "train"
    initial_weights: str
    initial_weights_sha256: str


@dataclass(frozen=True)
class ConvertWeightsSettings:
    """Rule convert_initial_weights (scripts/convert_weights.py): the ImageNet weights' format."""

    SECTION: ClassVar[str] = "train"
    initial_weights_format: str


@dataclass(frozen=True)
class TrainSettings:
    """Rule train (scripts/train.py): the device, the snapshots, the data threads and the divergence check."""

    SECTION: ClassVar[str] = "train"
    device: str
    snapshot_interval: int
    keep_snapshots: int
    data_threads: int
    divergence_factor: float
    divergence_displays: int

    def data_threads_or(self, threads: int) -> int:
        """The threads decoding a batch: train.data_threads, or ``threads`` (the rule's) where it is 0."""
        return self.data_threads or threads
