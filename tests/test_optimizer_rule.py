"""config/coco.yaml's optimizer against the rule it translates: TF1's RMSPropOptimizer of the TF Object
Detection API's ssdlite_mobilenet_v2_coco.config (lr 0.004, decay 0.9, momentum 0.9, epsilon 1.0).

A real Caffe solver steps a net whose loss is linear in its weights (sum of g_j w_j), so every step sees
exactly the gradients chosen here; a NumPy implementation of TF's rule steps the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest

caffe = pytest.importorskip("caffe", reason="run the tests through scripts/with-caffe")

LR, MOMENTUM, DECAY, TF_EPSILON = 0.004, 0.9, 0.9, 1.0
SMALL = np.array([1e-4, -1e-3, 1e-2, -3e-2, 5e-2], dtype=np.float32)  # what most weights of a detector see
LARGE = np.array([1.0, -3.0, 10.0, -10.0], dtype=np.float32)
GRADIENTS = np.concatenate([SMALL, LARGE])
STEPS = 100

LINEAR_NET = """
layer {{ name: "one" type: "DummyData" top: "one"
  dummy_data_param {{ shape {{ dim: 1 dim: 1 }} data_filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "w" type: "InnerProduct" bottom: "one" top: "w"
  param {{ lr_mult: 1 decay_mult: 0 }} inner_product_param {{ num_output: {n} bias_term: false }} }}
layer {{ name: "g" type: "InnerProduct" bottom: "w" top: "loss" loss_weight: 1
  param {{ lr_mult: 0 decay_mult: 0 }} inner_product_param {{ num_output: 1 bias_term: false }} }}
"""


def tf1_rmsprop_steps(weights: np.ndarray, gradient: np.ndarray, steps: int) -> np.ndarray:
    """TF1 tf.train.RMSPropOptimizer (its "rms" slot starts at ones), in float64; the weights after each step."""
    mean_square, moment, trajectory = np.ones_like(weights), np.zeros_like(weights), []
    for _ in range(steps):
        mean_square = DECAY * mean_square + (1 - DECAY) * gradient**2
        moment = MOMENTUM * moment + LR * gradient / np.sqrt(mean_square + TF_EPSILON)
        weights = weights - moment
        trajectory.append(weights)
    return np.array(trajectory)


def caffe_steps(tmp_path, solver_lines: str, weights: np.ndarray, gradient: np.ndarray, steps: int) -> np.ndarray:
    """The weights after each step of a real Caffe solver whose gradient is always ``gradient``."""
    (tmp_path / "net.prototxt").write_text(LINEAR_NET.format(n=len(weights)))
    (tmp_path / "solver.prototxt").write_text(
        f'train_net: "{tmp_path / "net.prototxt"}"\nbase_lr: {LR}\nlr_policy: "fixed"\nweight_decay: 0\n'
        f"max_iter: {steps}\ndisplay: 0\nsnapshot_after_train: false\n{solver_lines}"
    )
    caffe.set_mode_cpu()
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    solver.net.params["w"][0].data[:, 0] = weights
    solver.net.params["g"][0].data[0, :] = gradient
    trajectory = []
    for _ in range(steps):
        solver.step(1)
        trajectory.append(solver.net.params["w"][0].data[:, 0].astype(np.float64))
    return np.array(trajectory)


def step_sizes(trajectory: np.ndarray, start: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(np.vstack([start, trajectory]), axis=0))


@pytest.fixture
def start():
    return np.random.default_rng(0).normal(0, 1e-3, len(GRADIENTS))  # fine float32 steps.astype(np.float32)


def test_caffe_sgd_with_momentum_is_tf_rmsprop_with_epsilon_one_for_small_gradients(tmp_path, start):
    tf = step_sizes(tf1_rmsprop_steps(start.astype(np.float64), GRADIENTS.astype(np.float64), STEPS), start)
    sgd = step_sizes(caffe_steps(tmp_path, f'type: "SGD"\nmomentum: {MOMENTUM}\n', start, GRADIENTS, STEPS), start)
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
    tf = step_sizes(tf1_rmsprop_steps(start.astype(np.float64), GRADIENTS.astype(np.float64), STEPS), start)
    rms = step_sizes(caffe_steps(tmp_path, f'type: "RMSProp"\nrms_decay: {DECAY}\n', start, GRADIENTS, STEPS), start)
    np.testing.assert_allclose(rms[-1], LR, rtol=1e-3)  # converged mean square: |g| / sqrt(g^2) = 1
    assert np.all(rms[-1, : len(SMALL)] / tf[-1, : len(SMALL)] > 1.5)
    assert rms[-1, 0] / tf[-1, 0] > 500  # g = 1e-4: hundreds of times TF's step
