"""config/coco.yaml's optimizer against the rule it translates: TF1's RMSPropOptimizer of the TF Object
Detection API's ssdlite_mobilenet_v2_coco.config (lr 0.004, decay 0.9, momentum 0.9, epsilon 1.0).

A real Caffe solver steps a net whose loss is linear in its weights (sum of g_j w_j), so every step sees
exactly the gradients chosen here; a NumPy implementation of TF's kernel steps the same weights. Caffe's
TFRMSProp (patch 0043) is that rule; SGD with momentum is it only for small gradients, Caffe's RMSProp not
at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.pycaffe import require_caffe

caffe = require_caffe()

LR, MOMENTUM, DECAY, TF_EPSILON = 0.004, 0.9, 0.9, 1.0
SMALL = np.array([1e-4, -1e-3, 1e-2, -3e-2, 5e-2], dtype=np.float32)  # what most weights of a detector see
LARGE = np.array([1.0, -3.0, 10.0, -10.0], dtype=np.float32)
GRADIENTS = np.concatenate([SMALL, LARGE])
STEPS = 100
CONSTANT = np.tile(GRADIENTS.astype(np.float64), (STEPS, 1))  # the same gradient at every step

LINEAR_NET = """
layer {{ name: "one" type: "DummyData" top: "one"
  dummy_data_param {{ shape {{ dim: 1 dim: 1 }} data_filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "w" type: "InnerProduct" bottom: "one" top: "w"
  param {{ lr_mult: 1 decay_mult: 0 }} inner_product_param {{ num_output: {n} bias_term: false }} }}
layer {{ name: "g" type: "InnerProduct" bottom: "w" top: "loss" loss_weight: 1
  param {{ lr_mult: 0 decay_mult: 0 }} inner_product_param {{ num_output: 1 bias_term: false }} }}
"""


TF_RMSPROP = f'type: "TFRMSProp"\nmomentum: {MOMENTUM}\nrms_decay: {DECAY}\ndelta: {TF_EPSILON}\n'


def tf1_rmsprop_steps(weights: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """TF1 tf.train.RMSPropOptimizer, as its ApplyRMSProp kernel (the "rms" slot starts at ones), in float64;
    ``gradients`` has one row per step; the weights after each step."""
    mean_square, moment, trajectory = np.ones_like(weights), np.zeros_like(weights), []
    for gradient in gradients:
        mean_square = mean_square + (gradient**2 - mean_square) * (1 - DECAY)
        moment = MOMENTUM * moment + LR * gradient / np.sqrt(mean_square + TF_EPSILON)
        weights = weights - moment
        trajectory.append(weights)
    return np.array(trajectory)


def linear_solver(tmp_path, solver_lines: str, size: int, steps: int):
    """A real Caffe solver on the linear net (``size`` weights), its snapshots in ``tmp_path``."""
    (tmp_path / "net.prototxt").write_text(LINEAR_NET.format(n=size))
    (tmp_path / "solver.prototxt").write_text(
        f'train_net: "{tmp_path / "net.prototxt"}"\nbase_lr: {LR}\nlr_policy: "fixed"\nweight_decay: 0\n'
        f'max_iter: {steps}\ndisplay: 0\nsnapshot_after_train: false\nsnapshot_prefix: "{tmp_path / "snap"}"\n'
        f"{solver_lines}"
    )
    caffe.set_mode_cpu()
    return caffe.get_solver(str(tmp_path / "solver.prototxt"))


def run_steps(solver, gradients: np.ndarray) -> np.ndarray:
    """The weights after each step, the gradient of step t being ``gradients[t]``."""
    trajectory = []
    for gradient in gradients:
        solver.net.params["g"][0].data[0, :] = gradient
        solver.step(1)
        trajectory.append(solver.net.params["w"][0].data[:, 0].astype(np.float64))
    return np.array(trajectory)


def caffe_steps(tmp_path, start: np.ndarray, gradients: np.ndarray, lines: str = TF_RMSPROP) -> np.ndarray:
    """The weights after each step of a real Caffe solver (TFRMSProp unless ``lines`` say otherwise), the
    gradient of step t being ``gradients[t]``."""
    tmp_path.mkdir(exist_ok=True)
    solver = linear_solver(tmp_path, lines, len(start), len(gradients))
    solver.net.params["w"][0].data[:, 0] = start
    return run_steps(solver, gradients)


def step_sizes(trajectory: np.ndarray, start: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(np.vstack([start, trajectory]), axis=0))


@pytest.fixture
def start():
    return np.random.default_rng(0).normal(0, 1e-3, len(GRADIENTS))  # fine float32 steps.astype(np.float32)


def varying_gradients(seed: int = 1) -> np.ndarray:
    """One gradient per step and weight: signs and sizes from 1e-5 to 30 (a detector's first layers see
    medians of 20 to 50 at the start from ImageNet weights), so the mean square rises and decays."""
    rng = np.random.default_rng(seed)
    sizes = 10.0 ** rng.uniform(-5, 1.5, (STEPS, len(GRADIENTS)))
    return (sizes * rng.choice([-1.0, 1.0], sizes.shape)).astype(np.float32)


def test_caffe_tfrmsprop_is_tf1_rmsprop(tmp_path, start):
    gradients = varying_gradients()
    tf = step_sizes(tf1_rmsprop_steps(start.astype(np.float64), gradients.astype(np.float64)), start)
    caffe_tf = step_sizes(caffe_steps(tmp_path, start, gradients), start)
    np.testing.assert_allclose(caffe_tf, tf, rtol=1e-5, atol=1e-7)  # float32 (weights up to ~1) against float64
    sgd = step_sizes(caffe_steps(tmp_path / "sgd", start, gradients, f'type: "SGD"\nmomentum: {MOMENTUM}\n'), start)
    assert np.abs(sgd - tf).max() > 100 * np.abs(caffe_tf - tf).max()  # the comparison tells the rules apart


def test_a_resumed_tfrmsprop_run_goes_on_exactly(tmp_path, start):
    """The snapshot keeps both slots (momentum and mean square): 40 steps, restore, 60 more = 100 steps."""
    gradients = varying_gradients(seed=2)
    whole = caffe_steps(tmp_path / "whole", start, gradients)
    first = linear_solver(tmp_path, TF_RMSPROP, len(start), STEPS)
    first.net.params["w"][0].data[:, 0] = start
    run_steps(first, gradients[:40])
    first.snapshot()
    resumed = linear_solver(tmp_path, TF_RMSPROP, len(start), STEPS)
    resumed.restore(str(tmp_path / "snap_iter_40.solverstate"))
    np.testing.assert_array_equal(run_steps(resumed, gradients[40:]), whole[40:])
    fresh = linear_solver(tmp_path, TF_RMSPROP, len(start), STEPS)  # without the slots: not the same path
    fresh.net.params["w"][0].data[:, 0] = whole[39]
    assert not np.array_equal(run_steps(fresh, gradients[40:]), whole[40:])


def test_coco_yaml_generates_the_tf_rule():
    import yaml

    from ssdlite_coco.model.solver import build_solver
    from tests.support.model_settings import solver_settings

    recipe = yaml.safe_load((Path(__file__).parents[1] / "config/coco.yaml").read_text())["solver"]
    keys = {"type", "base_lr", "momentum", "rms_decay", "delta", "lr_policy"}
    solver = build_solver(solver_settings(**{k: v for k, v in recipe.items() if k in keys}), "cpu", "train.prototxt")
    rule = (solver.type, solver.momentum, solver.rms_decay, solver.delta)
    assert rule == ("TFRMSProp", pytest.approx(MOMENTUM), pytest.approx(DECAY), TF_EPSILON)
    assert (solver.base_lr, solver.lr_policy) == (pytest.approx(LR), "fixed") and not solver.HasField("warmup_iter")


def test_caffe_sgd_with_momentum_is_tf_rmsprop_with_epsilon_one_only_for_small_gradients(tmp_path, start):
    tf = step_sizes(tf1_rmsprop_steps(start.astype(np.float64), CONSTANT), start)
    sgd = step_sizes(caffe_steps(tmp_path, start, CONSTANT, f'type: "SGD"\nmomentum: {MOMENTUM}\n'), start)
    small, large = slice(0, len(SMALL)), slice(len(SMALL), None)
    # TF's first step is damped by its "rms" slot's start at 1: lr g / sqrt(0.9 + 0.1 g^2 + 1)
    np.testing.assert_allclose(tf[0, small] / sgd[0, small], 1 / np.sqrt(1.9), rtol=1e-3)
    # once the slot has decayed and the momentum forgotten the damped steps, the same steps within 1 % ...
    np.testing.assert_allclose(tf[60:, small], sgd[60:, small], rtol=1e-2)
    # ... and the same path: after 100 steps TF has travelled 96 % of SGD's distance (the damped start)
    travelled = sgd[:, small].sum(axis=0)
    np.testing.assert_allclose(tf[:, small].sum(axis=0) / travelled, 0.962, atol=0.005)
    # large gradients: TF divides by sqrt(g^2 + 1) (about |g|), SGD does not: here the rules part
    ratio = sgd[60:, large] / tf[60:, large]
    np.testing.assert_allclose(ratio, np.broadcast_to(np.sqrt(LARGE**2 + 1), ratio.shape), rtol=2e-2)


def test_caffe_rmsprop_at_the_tf_rate_moves_every_weight_by_the_rate(tmp_path, start):
    """Why config/coco.yaml left Caffe's RMSProp: it divides by sqrt(h) + 1e-8, so its step is ~lr for any g."""
    tf = step_sizes(tf1_rmsprop_steps(start.astype(np.float64), CONSTANT), start)
    rms = step_sizes(caffe_steps(tmp_path, start, CONSTANT, f'type: "RMSProp"\nrms_decay: {DECAY}\n'), start)
    np.testing.assert_allclose(rms[-1], LR, rtol=1e-3)  # converged mean square: |g| / sqrt(g^2) = 1
    assert np.all(rms[-1, : len(SMALL)] / tf[-1, : len(SMALL)] > 1.5)
    assert rms[-1, 0] / tf[-1, 0] > 500  # g = 1e-4: hundreds of times TF's step
