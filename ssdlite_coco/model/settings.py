"""The `model` and `solver` keys rule make_model reads (``--model-settings``, ``--solver-settings`` of
scripts/make_model.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ssdlite_coco.common.errors import SsdliteError


class SolverError(SsdliteError):
    """The solver settings are inconsistent; the message is one line naming the setting."""


@dataclass(frozen=True)
class ModelSettings:
    """The nets: generated from these keys (mode generate) or the user's patched (mode patch).

    ``priors``, ``test_detection``, ``deploy_detection`` and ``patch`` are their sections' dicts.
    """

    SECTION: ClassVar[str] = "model"
    mode: str
    num_classes: int | str
    input_size: int
    priors: dict
    prior_coverage_warn_below: float
    width: float
    activation: str
    backbone_bn: str
    bn_moving_average_fraction: float
    bn_eps: float
    backbone_layout: str
    padding: str
    conf_loss: str
    augmentation: bool
    train_batch_size: int
    test_batch_size: int
    test_detection: dict
    deploy_detection: dict
    patch: dict


@dataclass(frozen=True)
class SolverSettings:
    """The solver; the schema checks each key, ``__post_init__`` what holds between keys."""

    SECTION: ClassVar[str] = "solver"
    type: str
    base_lr: float
    lr_policy: str
    gamma: float
    steps: list[int]
    power: float
    min_lr: float
    warmup_iter: int
    warmup_start_factor: float
    momentum: float
    rms_decay: float
    delta: float
    weight_decay: float
    max_iter: int
    snapshot: int
    test_interval: int
    test_initialization: bool
    display: int
    average_loss: int
    iter_size: int
    random_seed: int | None
    ap_version: str

    def __post_init__(self):
        if self.lr_policy in ("step", "multistep") and not self.steps:
            raise SolverError(f"lr_policy {self.lr_policy!r} needs at least one step")
        if list(self.steps) != sorted(self.steps):
            raise SolverError(f"steps must increase, got {list(self.steps)}")
        if self.lr_policy == "cosine" and not 0 <= self.min_lr < self.base_lr:
            raise SolverError(f"min_lr must be at least 0 and below base_lr ({self.base_lr}), got {self.min_lr}")
