"""The project's Caffe build: importable, complete, and free of the upstream traps it patches."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from tests.support.helpers import run_python, write_annotated_lmdb
from tests.support.pycaffe import require_caffe

caffe = require_caffe()
from caffe.proto import caffe_pb2  # noqa: E402

SSD_LAYER_TYPES = [
    "AnnotatedData",
    "PriorBox",
    "MultiBoxLoss",
    "DetectionOutput",
    "DetectionEvaluate",
    "Permute",
    "Normalize",
    "ReLU6",
    "Flatten",
    "Concat",
    "BatchNorm",
    "Scale",
    "Convolution",
]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_pycaffe_comes_from_the_built_prefix():
    prefix = Path(os.environ["SSDLITE_CAFFE_PREFIX"])
    assert Path(caffe.__file__).resolve().is_relative_to(prefix.resolve())
    manifest = json.loads((prefix / "manifest.json").read_text())
    assert manifest["sdist"] == "brocolli-caffe==9.0.2"
    assert manifest["patches"] == sorted(p.name for p in (Path(__file__).parents[1] / "caffe/patches").glob("*.patch"))
    assert caffe.__version__ == "1.0.0-ssd"


def test_layer_type_list_has_every_ssd_type():
    types = set(caffe.layer_type_list())
    assert set(SSD_LAYER_TYPES) <= types


def test_caffe_tool_runs():
    result = subprocess.run(["caffe", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "1.0.0-ssd" in result.stdout + result.stderr


def test_relu6_forward_backward_equal_numpy(tmp_path):
    net_file = write(
        tmp_path / "relu6.prototxt",
        """
        force_backward: true
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
        layer { name: "y" type: "ReLU6" bottom: "x" top: "y" }
    """,
    )
    net = caffe.Net(str(net_file), caffe.TRAIN)
    rng = np.random.default_rng(0)
    x = rng.uniform(-4, 10, size=(2, 3, 4, 5)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, np.clip(x, 0, 6))
    top_diff = rng.normal(size=x.shape).astype(np.float32)
    net.blobs["y"].diff[...] = top_diff
    net.backward()
    np.testing.assert_array_equal(net.blobs["x"].diff, top_diff * ((x > 0) & (x < 6)))


TINY_SSD = """
name: "tiny_ssd"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 32 dim: 32 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 bias_term: false
                      weight_filler { type: "msra" } } }
layer { name: "conv1/bn" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "conv1/scale" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU6" bottom: "conv1" top: "conv1" }
layer { name: "conv2/dw" type: "Convolution" bottom: "conv1" top: "conv2/dw"
  convolution_param { num_output: 8 group: 8 kernel_size: 3 pad: 1 stride: 2 bias_term: false engine: CAFFE
                      weight_filler { type: "msra" } } }
layer { name: "conv2/bn" type: "BatchNorm" bottom: "conv2/dw" top: "conv2/dw" }
layer { name: "conv2/scale" type: "Scale" bottom: "conv2/dw" top: "conv2/dw" scale_param { bias_term: true } }
layer { name: "relu2" type: "ReLU6" bottom: "conv2/dw" top: "conv2/dw" }
layer { name: "loc" type: "Convolution" bottom: "conv2/dw" top: "loc"
  convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "loc_flat" flatten_param { axis: 1 } }
layer { name: "conf" type: "Convolution" bottom: "conv2/dw" top: "conf"
  convolution_param { num_output: 6 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" flatten_param { axis: 1 } }
layer { name: "priors" type: "PriorBox" bottom: "conv2/dw" bottom: "data" top: "priors"
  prior_box_param { min_size: 10 max_size: 20 variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "mbox_loc" type: "Concat" bottom: "loc_flat" top: "mbox_loc" concat_param { axis: 1 } }
layer { name: "mbox_conf" type: "Concat" bottom: "conf_flat" top: "mbox_conf" concat_param { axis: 1 } }
layer { name: "mbox_priorbox" type: "Concat" bottom: "priors" top: "mbox_priorbox" concat_param { axis: 2 } }
layer { name: "loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf" bottom: "mbox_priorbox"
  bottom: "label" top: "loss"
  propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0 num_classes: 3
    share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true
    background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE
    ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE } }
"""


def tiny_ssd_batch() -> tuple[np.ndarray, np.ndarray]:
    """Four 32x32 images, each with one bright square of class 1 or 2 where its label row says."""
    rng = np.random.default_rng(1)
    data = rng.normal(0, 0.1, size=(4, 3, 32, 32)).astype(np.float32)
    label = np.zeros((1, 1, 4, 8), np.float32)
    for item in range(4):
        x0, y0 = 4 + 8 * (item % 2), 4 + 8 * (item // 2)
        data[item, item % 3, y0 : y0 + 12, x0 : x0 + 12] += 1.0
        label[0, 0, item] = [item, 1 + item % 2, 0, x0 / 32, y0 / 32, (x0 + 12) / 32, (y0 + 12) / 32, 0]
    return data, label


def tiny_solver(tmp_path: Path, **overrides) -> Path:
    net = write(tmp_path / "tiny_ssd.prototxt", TINY_SSD)
    solver = caffe_pb2.SolverParameter(
        net=str(net),
        base_lr=0.05,
        lr_policy="fixed",
        momentum=0.9,
        weight_decay=0.0005,
        max_iter=40,
        display=0,
        snapshot=0,
        snapshot_prefix=str(tmp_path / "tiny"),
        random_seed=7,
        solver_mode=caffe_pb2.SolverParameter.CPU,
    )
    for key, value in overrides.items():
        setattr(solver, key, value)
    return write(tmp_path / "solver.prototxt", text_format.MessageToString(solver))


def test_tiny_ssd_net_trains_and_its_loss_falls(tmp_path):
    solver = caffe.SGDSolver(str(tiny_solver(tmp_path)))
    data, label = tiny_ssd_batch()
    solver.net.blobs["data"].data[...] = data
    solver.net.blobs["label"].data[...] = label
    losses = []
    for _ in range(40):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_batchnorm_statistics_are_not_touched_by_weight_decay(tmp_path):
    solver = caffe.SGDSolver(str(tiny_solver(tmp_path)))
    bn = solver.net.layer_dict["conv1/bn"]
    data, label = tiny_ssd_batch()
    solver.net.blobs["data"].data[...] = data
    solver.net.blobs["label"].data[...] = label
    solver.step(3)
    # Only the layer's own moving average may change blob 2: 1 + 0.999 + 0.999^2 after three passes.
    # Stock Caffe also applied weight decay to it (2.99676 here).
    factor = float(bn.blobs[2].data[0])
    assert factor == pytest.approx(1 + 0.999 + 0.999**2, rel=1e-6)


REGRESSION_NET = """
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 dim: 4 }
                     data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "target" top: "loss" }
"""


def test_caffe_train_weights_are_really_loaded(tmp_path):
    net_file = write(tmp_path / "regression.prototxt", REGRESSION_NET)
    given = caffe.Net(str(net_file), caffe.TRAIN)
    rng = np.random.default_rng(3)
    for blobs in given.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(size=blob.data.shape)
    weights = tmp_path / "given.caffemodel"
    given.save(str(weights))
    solver = caffe_pb2.SolverParameter(
        net=str(net_file),
        base_lr=0.0,
        lr_policy="fixed",
        max_iter=1,
        snapshot_prefix=str(tmp_path / "run"),
        solver_mode=caffe_pb2.SolverParameter.CPU,
    )
    solver_file = write(tmp_path / "solver.prototxt", text_format.MessageToString(solver))
    result = subprocess.run(
        ["caffe", "train", f"--solver={solver_file}", f"--weights={weights}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    trained = caffe.Net(str(net_file), str(tmp_path / "run_iter_1.caffemodel"), caffe.TEST)
    for name in ("conv", "fc"):
        np.testing.assert_array_equal(trained.params[name][0].data, given.params[name][0].data)


def test_priorbox_without_clip_does_not_clip(tmp_path):
    net_file = write(
        tmp_path / "priors.prototxt",
        """
        layer { name: "feature" type: "Input" top: "feature" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }
        layer { name: "image" type: "Input" top: "image" input_param { shape { dim: 1 dim: 3 dim: 100 dim: 100 } } }
        layer { name: "priors" type: "PriorBox" bottom: "feature" bottom: "image" top: "priors"
                prior_box_param { min_size: 90 variance: 0.1 } }
    """,
    )
    net = caffe.Net(str(net_file), caffe.TEST)
    net.forward()
    boxes = net.blobs["priors"].data[0, 0].reshape(-1, 4)
    assert boxes.min() < 0 and boxes.max() > 1  # a 90-px prior centred 25 px from the edge sticks out


def test_two_multibox_forwards_without_backward_do_not_abort(tmp_path):
    """Stock: the second forward reuses the first one's matches and aborts on `match_index[p] < gt_bboxes.size()`."""
    eight_label_rows = TINY_SSD.replace("dim: 1 dim: 1 dim: 4 dim: 8", "dim: 1 dim: 1 dim: 8 dim: 8")
    net_file = write(tmp_path / "tiny_ssd.prototxt", eight_label_rows)
    result = run_python(
        f"""
        import numpy as np, caffe
        from tests.test_caffe_runtime import tiny_ssd_batch
        net = caffe.Net({str(net_file)!r}, caffe.TRAIN)
        data, one_box_each = tiny_ssd_batch()
        two_boxes_each = np.concatenate([one_box_each, one_box_each], axis=2)
        two_boxes_each[0, 0, 4:, 3:7] = [0.5, 0.5, 0.95, 0.95]
        one_box_each = np.concatenate([one_box_each, np.full_like(one_box_each, -1)], axis=2)
        net.blobs["data"].data[...] = data
        losses = []
        for label in (two_boxes_each, one_box_each, one_box_each):
            net.blobs["label"].data[...] = label
            losses.append(float(net.forward()["loss"]))
        net.backward()
        assert np.isfinite(losses).all() and losses[1] == losses[2], losses
        print("ok")
    """,
        cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def sampler_net(tmp_path: Path, lmdb_path: Path, scale: float, aspect_ratio: tuple[float, float]) -> Path:
    return write(
        tmp_path / "sampler.prototxt",
        f"""
        layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: TRAIN }}
          data_param {{ source: "{lmdb_path}" batch_size: 1 backend: LMDB }}
          annotated_data_param {{
            batch_sampler {{ sampler {{ min_scale: {scale!r} max_scale: {scale!r}
                                       min_aspect_ratio: {aspect_ratio[0]!r} max_aspect_ratio: {aspect_ratio[1]!r} }}
                            max_sample: 1 max_trials: 1 }} }} }}
    """,
    )


@pytest.mark.parametrize("case", ["side rounds past 1", "ratio range reversed"])
def test_batch_sampling_a_le_b_crash_is_fixed(tmp_path, coco_mini_dir, case):
    """Stock SSD Caffe aborts here with `math_functions.cpp Check failed: a <= b (0 vs. -1.19209e-07)`.

    With scale s = 0.75411099 and the aspect ratio pinned at float32(1 / s^2), scale * sqrt(ratio) computed in
    float is 1 + 2^-23, so 1 - width is -1.19209e-07. Asking for a ratio of 2 at that scale (above 1 / s^2)
    reverses the ratio range and fails the same check.
    """
    scale = float(np.float32(0.7541109919548035))
    pinned = float(np.float32(1.0 / float(np.float32(scale)) ** 2))
    ratios = (pinned, pinned) if case == "side rounds past 1" else (2.0, 2.0)
    jpeg = (coco_mini_dir / "images" / "000000000009.jpg").read_bytes()
    lmdb_path = tmp_path / "one_lmdb"
    write_annotated_lmdb(lmdb_path, [(jpeg, 640, 480, [(1, 0.1, 0.2, 0.6, 0.9)])])
    net_file = sampler_net(tmp_path, lmdb_path, scale, ratios)
    result = run_python(
        f"""
        import caffe
        net = caffe.Net({str(net_file)!r}, caffe.TRAIN)
        for _ in range(20):
            net.forward()
            label = net.blobs["label"].data
            boxes = label.reshape(-1, 8)[:, 3:7]
            assert ((boxes >= 0) & (boxes <= 1)).all() or (label == -1).all(), label
        print("ok", net.blobs["data"].data.shape)
    """,
        cwd=Path(__file__).parents[1],
    )
    assert "a <= b" not in result.stderr
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
