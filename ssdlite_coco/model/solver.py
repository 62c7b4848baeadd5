"""The Caffe solver of the workflow, as a ``caffe_pb2.SolverParameter``.

``test_iter`` is derived from the test set: enough batches to see every test image once.
"""

from __future__ import annotations

import math

from caffe.proto import caffe_pb2

from ssdlite_coco.caffe_tools.device import solver_mode
from ssdlite_coco.model.settings import SolverError, SolverSettings

# Caffe refuses a momentum with these solvers.
NO_MOMENTUM = ("AdaGrad", "RMSProp")
# The solvers that read delta (TFRMSProp: TF's epsilon, inside the root; patch 0043).
WITH_DELTA = ("AdaGrad", "RMSProp", "AdaDelta", "Adam", "TFRMSProp")
# Where `caffe train --solver results/model/solver.prototxt`, run by hand, writes its snapshots (Caffe
# requires a prefix). Rule train ignores it: it keeps its own under resources/snapshots/run-<key>/.
HAND_RUN_SNAPSHOT_PREFIX = "resources/snapshots/caffe_train/mobilenetv2_ssdlite"


def count_test_iterations(num_test_images: int, test_batch_size: int) -> int:
    """Batches needed to see every test image once (at least one)."""
    if test_batch_size < 1:
        raise SolverError(f"test batch size must be at least 1, got {test_batch_size}")
    return max(1, math.ceil(num_test_images / test_batch_size))


def build_solver(
    settings: SolverSettings, device: str, train_net: str, test_net: str | None = None, test_iter: int = 1
) -> caffe_pb2.SolverParameter:
    """The solver of ``settings`` for ``device`` (train.device), testing ``test_net`` every test_interval."""
    solver = caffe_pb2.SolverParameter()
    solver.train_net = train_net
    if test_net:
        solver.test_net.append(test_net)
        solver.test_iter.append(test_iter)
        solver.test_interval = settings.test_interval
        solver.test_initialization = settings.test_initialization
        solver.eval_type = "detection"
        solver.ap_version = settings.ap_version
    solver.type = settings.type
    solver.base_lr = settings.base_lr
    solver.lr_policy = settings.lr_policy
    if settings.lr_policy in ("step", "exp", "inv", "multistep", "sigmoid"):
        solver.gamma = settings.gamma
    if settings.lr_policy == "multistep":
        solver.stepvalue.extend(settings.steps)
    elif settings.lr_policy in ("step", "sigmoid"):
        solver.stepsize = settings.steps[0]
    if settings.lr_policy in ("poly", "inv"):
        solver.power = settings.power
    if settings.lr_policy == "cosine":
        solver.min_lr = settings.min_lr
    if settings.warmup_iter:
        solver.warmup_iter = settings.warmup_iter
        solver.warmup_start_factor = settings.warmup_start_factor
    if settings.type not in NO_MOMENTUM:
        solver.momentum = settings.momentum
    if settings.type in ("RMSProp", "TFRMSProp"):
        solver.rms_decay = settings.rms_decay
    if settings.type in WITH_DELTA:
        solver.delta = settings.delta
    solver.weight_decay = settings.weight_decay
    solver.max_iter = settings.max_iter
    solver.snapshot = settings.snapshot
    solver.snapshot_prefix = HAND_RUN_SNAPSHOT_PREFIX
    solver.snapshot_after_train = True
    solver.display = settings.display
    solver.average_loss = settings.average_loss
    solver.iter_size = settings.iter_size
    if settings.random_seed is not None:
        solver.random_seed = settings.random_seed
    solver.solver_mode = solver_mode(device)
    return solver
