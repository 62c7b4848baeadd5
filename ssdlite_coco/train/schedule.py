"""The learning rate Caffe's SGDSolver::GetLearningRate uses, for the train log and the progress lines."""

from __future__ import annotations

import math

from ssdlite_coco.common.errors import SsdliteError


class ScheduleError(SsdliteError):
    """The solver names a learning-rate policy Caffe does not know."""


def learning_rate(solver, iteration: int) -> float:
    """The rate SGDSolver::GetLearningRate uses at ``iteration`` (patch 0041 adds cosine and the warm-up)."""
    rate = _policy_rate(solver, iteration)
    if iteration < solver.warmup_iter:
        start = solver.warmup_start_factor
        rate *= start + (1 - start) * iteration / solver.warmup_iter
    return rate


def _policy_rate(solver, iteration: int) -> float:
    policy, base, gamma, power = solver.lr_policy, solver.base_lr, solver.gamma, solver.power
    if policy == "fixed":
        return base
    if policy == "step":
        return base * gamma ** (iteration // solver.stepsize)
    if policy == "exp":
        return base * gamma**iteration
    if policy == "inv":
        return base * (1 + gamma * iteration) ** (-power)
    if policy == "multistep":
        return base * gamma ** sum(1 for value in solver.stepvalue if iteration >= value)
    if policy == "poly":
        return base * (1 - iteration / solver.max_iter) ** power
    if policy == "sigmoid":
        return base / (1 + math.exp(-gamma * (iteration - solver.stepsize)))
    if policy == "cosine":
        return solver.min_lr + (base - solver.min_lr) * 0.5 * (1 + math.cos(math.pi * iteration / solver.max_iter))
    raise ScheduleError(
        f"lr_policy {policy!r} is not one Caffe knows (fixed, step, exp, inv, multistep, poly, sigmoid, cosine)"
    )
