"""The `evaluate` keys each rule that scores a net on the test split reads (``--settings`` of its script)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class EvaluateSettings:
    """Rule evaluate (scripts/evaluate.py): how the test net is batched."""

    SECTION: ClassVar[str] = "evaluate"
    batch_size: int


@dataclass(frozen=True)
class InitialWeightsCheckSettings:
    """Rule check_initial_weights (scripts/check_weights.py): batching, and the AP50 that counts as chance."""

    SECTION: ClassVar[str] = "evaluate"
    batch_size: int
    chance_ap50: float
