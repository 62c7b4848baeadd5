"""The Caffe solver of the workflow, as a ``caffe_pb2.SolverParameter``.

``test_iter`` is derived from the test set: enough batches to see every test image once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from caffe.proto import caffe_pb2

from ssdlite_coco.caffe_tools.device import solver_mode
from ssdlite_coco.common.config import schema_default
from ssdlite_coco.common.errors import SsdliteError

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "TFRMSProp")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "cosine")
# Caffe refuses a momentum with these solvers.
NO_MOMENTUM = ("AdaGrad", "RMSProp")
# The solvers that read delta (TFRMSProp: TF's epsilon, inside the root; patch 0043).
WITH_DELTA = ("AdaGrad", "RMSProp", "AdaDelta", "Adam", "TFRMSProp")
# Where `caffe train --solver results/model/solver.prototxt`, run by hand, writes its snapshots (Caffe
# requires a prefix). Rule train ignores it: it keeps its own under resources/snapshots/run-<key>/.
HAND_RUN_SNAPSHOT_PREFIX = "resources/snapshots/caffe_train/mobilenetv2_ssdlite"


class SolverError(SsdliteError):
    """The solver settings are inconsistent; the message is one line naming the setting."""


@dataclass(frozen=True)
class SolverOptions:
    """The solver settings; each default and meaning is the `solver` section of config/schema.yaml."""

    type: str = schema_default("solver.type")
    base_lr: float = schema_default("solver.base_lr")
    lr_policy: str = schema_default("solver.lr_policy")
    gamma: float = schema_default("solver.gamma")
    steps: list[int] = field(default_factory=lambda: schema_default("solver.steps"))
    power: float = schema_default("solver.power")
    min_lr: float = schema_default("solver.min_lr")
    warmup_iter: int = schema_default("solver.warmup_iter")
    warmup_start_factor: float = schema_default("solver.warmup_start_factor")
    momentum: float = schema_default("solver.momentum")
    rms_decay: float = schema_default("solver.rms_decay")
    delta: float = schema_default("solver.delta")
    weight_decay: float = schema_default("solver.weight_decay")
    max_iter: int = schema_default("solver.max_iter")
    snapshot: int = schema_default("solver.snapshot")
    test_interval: int = schema_default("solver.test_interval")
    test_initialization: bool = schema_default("solver.test_initialization")
    display: int = schema_default("solver.display")
    average_loss: int = schema_default("solver.average_loss")
    iter_size: int = schema_default("solver.iter_size")
    random_seed: int | None = schema_default("solver.random_seed")
    ap_version: str = schema_default("solver.ap_version")

    def __post_init__(self):
        if self.type not in SOLVER_TYPES:
            raise SolverError(f"solver type must be one of {list(SOLVER_TYPES)}, got {self.type!r}")
        if self.lr_policy not in LR_POLICIES:
            raise SolverError(f"lr_policy must be one of {list(LR_POLICIES)}, got {self.lr_policy!r}")
        if self.lr_policy in ("step", "multistep") and not self.steps:
            raise SolverError(f"lr_policy {self.lr_policy!r} needs at least one step")
        if list(self.steps) != sorted(self.steps):
            raise SolverError(f"steps must increase, got {list(self.steps)}")
        if self.base_lr <= 0 or self.max_iter < 0:
            raise SolverError("base_lr must be positive and max_iter non-negative")
        if self.warmup_iter < 0 or not 0 <= self.warmup_start_factor <= 1:
            raise SolverError("warmup_iter must be >= 0 and warmup_start_factor between 0 and 1")
        if self.lr_policy == "cosine" and not 0 <= self.min_lr < self.base_lr:
            raise SolverError(f"min_lr must be at least 0 and below base_lr ({self.base_lr}), got {self.min_lr}")
        if self.ap_version not in ("11point", "MaxIntegral", "Integral"):
            raise SolverError(f"ap_version must be 11point, MaxIntegral or Integral, got {self.ap_version!r}")

    @classmethod
    def from_dict(cls, values: dict) -> SolverOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SolverError(f"unknown solver option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def count_test_iterations(num_test_images: int, test_batch_size: int) -> int:
    """Batches needed to see every test image once (at least one)."""
    if test_batch_size < 1:
        raise SolverError(f"test batch size must be at least 1, got {test_batch_size}")
    return max(1, math.ceil(num_test_images / test_batch_size))


def build_solver(
    options: SolverOptions,
    train_net: str,
    test_net: str | None = None,
    test_iter: int = 1,
    device: str = "cpu",
) -> caffe_pb2.SolverParameter:
    solver = caffe_pb2.SolverParameter()
    solver.train_net = train_net
    if test_net:
        solver.test_net.append(test_net)
        solver.test_iter.append(test_iter)
        solver.test_interval = options.test_interval
        solver.test_initialization = options.test_initialization
        solver.eval_type = "detection"
        solver.ap_version = options.ap_version
    solver.type = options.type
    solver.base_lr = options.base_lr
    solver.lr_policy = options.lr_policy
    if options.lr_policy in ("step", "exp", "inv", "multistep", "sigmoid"):
        solver.gamma = options.gamma
    if options.lr_policy == "multistep":
        solver.stepvalue.extend(options.steps)
    elif options.lr_policy in ("step", "sigmoid"):
        solver.stepsize = options.steps[0]
    if options.lr_policy in ("poly", "inv"):
        solver.power = options.power
    if options.lr_policy == "cosine":
        solver.min_lr = options.min_lr
    if options.warmup_iter:
        solver.warmup_iter = options.warmup_iter
        solver.warmup_start_factor = options.warmup_start_factor
    if options.type not in NO_MOMENTUM:
        solver.momentum = options.momentum
    if options.type in ("RMSProp", "TFRMSProp"):
        solver.rms_decay = options.rms_decay
    if options.type in WITH_DELTA:
        solver.delta = options.delta
    solver.weight_decay = options.weight_decay
    solver.max_iter = options.max_iter
    solver.snapshot = options.snapshot
    solver.snapshot_prefix = HAND_RUN_SNAPSHOT_PREFIX
    solver.snapshot_after_train = True
    solver.display = options.display
    solver.average_loss = options.average_loss
    solver.iter_size = options.iter_size
    if options.random_seed is not None:
        solver.random_seed = options.random_seed
    solver.solver_mode = solver_mode(device)
    return solver
