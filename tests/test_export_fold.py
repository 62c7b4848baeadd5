"""Deploy export, folding: BatchNorm/Scale folded into convolutions gives the same outputs on real images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from tests.support.pycaffe import require_caffe
from tests.support.tiny_ssd import deploy_net_text, make_tiny_world

caffe = require_caffe()
from caffe.proto import caffe_pb2  # noqa: E402

from ssdlite_coco.caffe_tools.weights import copy_weights_by_name, read_caffemodel  # noqa: E402
from ssdlite_coco.export.fold import fold_batchnorm  # noqa: E402
from ssdlite_coco.export.fold_check import check_folding, judge_folding  # noqa: E402
from ssdlite_coco.export.make import ExportPaths, make_deploy  # noqa: E402
from ssdlite_coco.export.preprocess import transform_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world_and_weights(tmp_path_factory, coco_mini_dir):
    """Deploy weights with BatchNorm statistics and Scale values far from the identity, as after training."""
    folder = tmp_path_factory.mktemp("tiny")
    world = make_tiny_world(folder, coco_mini_dir)
    net = caffe.Net(str(world.deploy_net), caffe.TEST)
    rng = np.random.default_rng(5)
    for name, blobs in net.params.items():
        layer_type = net.layers[list(net._layer_names).index(name)].type
        if layer_type == "BatchNorm":
            channels = blobs[0].data.size
            blobs[0].data[...] = rng.normal(0, 0.5, channels) * 3.0  # mean, stored times the factor
            blobs[1].data[...] = rng.uniform(0.2, 2.0, channels) * 3.0  # variance, times the factor
            blobs[2].data[...] = 3.0
        elif layer_type == "Scale":
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            blobs[1].data[...] = rng.normal(0, 0.2, blobs[1].data.shape)
        else:
            for blob in blobs:
                blob.data[...] = rng.normal(0, 0.15, blob.data.shape)
    weights = folder / "deploy_weights.caffemodel"
    net.save(str(weights))
    return world, weights


def _fold(deploy_net: Path, weights: Path, folder: Path) -> list:
    """The folded chains; the folded net written as the export writes it, unrewritten, to ``folder``/caffe/."""
    return make_deploy(deploy_net, weights, ExportPaths(folder), rewrite=False)["folded"]


def test_folded_and_unfolded_nets_give_the_same_detections_on_real_images(world_and_weights, tmp_path):
    world, weights = world_and_weights
    folded = _fold(world.deploy_net, weights, tmp_path)
    assert [layer.convolution for layer in folded] == ["conv1", "conv2", "conv3", "conv4"]
    transform = transform_settings(world.test_net)
    check = check_folding(
        world.deploy_net,
        weights,
        tmp_path / "caffe/deploy.prototxt",
        tmp_path / "caffe/deploy.caffemodel",
        folded,
        world.test_images[:6],
        transform["mean"],
        transform["scale"],
    )
    assert check["max_abs_difference"] < 1e-4, check
    assert set(check["per_blob"]) >= {"mbox_loc", "mbox_conf_flatten", "detection_out"}
    assert check["detections"] > 0  # the comparison covers real detections
    assert check["layers_after"] == check["layers_before"] - 8
    net = caffe_pb2.NetParameter()
    text_format.Parse((tmp_path / "caffe/deploy.prototxt").read_text(), net)
    assert not [layer for layer in net.layer if layer.type in ("BatchNorm", "Scale")]
    conv1 = next(layer for layer in net.layer if layer.name == "conv1")
    assert conv1.convolution_param.bias_term and list(conv1.top) == ["conv1"]


def test_folding_changes_the_outputs_when_a_statistic_is_dropped(world_and_weights, tmp_path):
    """The check can fail: folding without the BatchNorm mean shifts the outputs far beyond 1e-4."""
    world, weights = world_and_weights
    folded = _fold(world.deploy_net, weights, tmp_path)
    broken = caffe.Net(
        str(tmp_path / "caffe/deploy.prototxt"), caffe.TEST, weights=str(tmp_path / "caffe/deploy.caffemodel")
    )
    broken.params["conv1"][1].data[...] += 0.5
    broken.save(str(tmp_path / "broken.caffemodel"))
    transform = transform_settings(world.test_net)
    check = check_folding(
        world.deploy_net,
        weights,
        tmp_path / "caffe/deploy.prototxt",
        tmp_path / "broken.caffemodel",
        folded,
        world.test_images[:2],
        transform["mean"],
        transform["scale"],
    )
    assert check["max_abs_difference"] > 1e-2
    assert check["arithmetic"]["worst_layer"] == "conv1" and check["arithmetic"]["max_relative_error"] > 1e-2
    failure = judge_folding(check, floor=1e-3, noise_factor=10)
    assert failure and "conv1" in failure and "the fold is wrong" in failure


def _fold_and_check(world, deploy_net: Path, weights: Path, folder: Path, weights_edit=None) -> dict:
    """Fold ``weights`` of ``deploy_net``, optionally edit the folded caffemodel, and check it on 4 images."""
    folded = _fold(deploy_net, weights, folder)
    if weights_edit is not None:
        net = caffe.Net(
            str(folder / "caffe/deploy.prototxt"), caffe.TEST, weights=str(folder / "caffe/deploy.caffemodel")
        )
        weights_edit(net)
        net.save(str(folder / "caffe/deploy.caffemodel"))
    transform = transform_settings(world.test_net)
    return check_folding(
        deploy_net,
        weights,
        folder / "caffe/deploy.prototxt",
        folder / "caffe/deploy.caffemodel",
        folded,
        world.test_images[:4],
        transform["mean"],
        transform["scale"],
    )


OFFSET = 1e5  # a channel mean this far from its spread (about 1) leaves float32 two decimal digits of the signal


def test_a_correct_fold_passes_where_batchnorm_cancellation_makes_the_trained_net_noisy(world_and_weights, tmp_path):
    """The same real-valued net written with a 1e5 offset in every convolution's bias that BatchNorm's mean takes
    away again: Caffe's float32 BatchNorm subtracts two numbers near 1e5 and keeps ~1e-2 of noise, as a barely
    trained net does. The old fixed check (1e-3 relative) refused this correct fold; the new one passes it."""
    world, weights = world_and_weights
    deploy_net = tmp_path / "deploy_with_bias.prototxt"
    deploy_net.write_text(deploy_net_text().replace("bias_term: false", "bias_term: true"))
    net = caffe.Net(str(deploy_net), caffe.TEST)
    copy_weights_by_name(net, read_caffemodel(weights))
    for name in ("conv1", "conv2", "conv3", "conv4"):
        net.params[name][1].data[...] = OFFSET
        factor = float(net.params[f"{name}/bn"][2].data[0])
        net.params[f"{name}/bn"][0].data[...] += OFFSET * factor
    offset_weights = tmp_path / "offset.caffemodel"
    net.save(str(offset_weights))

    check = _fold_and_check(world, deploy_net, offset_weights, tmp_path)
    old_figure = check["max_relative_difference"]  # what the old check compared with a fixed 1e-3
    assert old_figure > 1e-3, check["per_blob_relative"]
    assert check["reference_noise"]["max_relative_difference"] > 1e-3  # the noise is the trained net's own
    assert check["arithmetic"]["max_relative_error"] <= check["arithmetic"]["tolerance"]
    assert judge_folding(check, floor=1e-3, noise_factor=10) is None, check
    assert check["tolerance"] > old_figure and check["tolerance_floor"] == 1e-3


def test_a_well_conditioned_net_keeps_the_fixed_floor(world_and_weights, tmp_path):
    world, weights = world_and_weights
    check = _fold_and_check(world, world.deploy_net, weights, tmp_path)
    assert check["reference_noise"]["max_relative_difference"] < 1e-5, check["reference_noise"]
    assert check["arithmetic"]["max_relative_error"] < 1e-6, check["arithmetic"]
    assert judge_folding(check, floor=1e-3, noise_factor=10) is None and check["tolerance"] == 1e-3


def test_the_per_layer_check_catches_a_fold_error_too_small_for_the_outputs(world_and_weights, tmp_path):
    """One output channel of one folded convolution off by 1e-4: within the end-to-end floor, not the arithmetic."""
    world, weights = world_and_weights

    def nudge_one_channel(net):
        net.params["conv3"][0].data[0] *= 1 + 1e-4

    check = _fold_and_check(world, world.deploy_net, weights, tmp_path, nudge_one_channel)
    assert check["max_relative_difference"] < 1e-3
    assert check["arithmetic"]["worst_layer"] == "conv3" and check["arithmetic"]["max_relative_error"] > 1e-5
    failure = judge_folding(check, floor=1e-3, noise_factor=10)
    assert failure and "conv3" in failure


def test_a_batchnorm_whose_input_is_also_used_elsewhere_is_not_folded():
    net = caffe_pb2.NetParameter()
    text_format.Parse(
        """
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 2 kernel_size: 1 } }
        layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" }
        layer { name: "sum" type: "Eltwise" bottom: "bn" bottom: "conv" top: "sum" }
    """,
        net,
    )
    params = {
        "conv": [np.ones((2, 3, 1, 1), np.float32), np.zeros(2, np.float32)],
        "bn": [np.zeros(2, np.float32), np.ones(2, np.float32), np.ones(1, np.float32)],
    }
    folded_net, folded_params, folded = fold_batchnorm(net, params)
    assert folded == [] and [layer.type for layer in folded_net.layer] == [
        "Input",
        "Convolution",
        "BatchNorm",
        "Eltwise",
    ]
    assert set(folded_params) == {"conv", "bn"}


def test_fold_arithmetic_matches_batchnorm_and_scale():
    net = caffe_pb2.NetParameter()
    text_format.Parse(
        """
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }
        layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { eps: 0.001 } }
        layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
    """,
        net,
    )
    weight = np.array([[[[2.0]]], [[[3.0]]]], np.float32)
    params = {
        "conv": [weight],
        "bn": [np.array([2.0, 4.0], np.float32), np.array([8.0, 2.0], np.float32), np.array([2.0], np.float32)],
        "scale": [np.array([1.5, 0.5], np.float32), np.array([0.1, -0.2], np.float32)],
    }
    _, folded_params, folded = fold_batchnorm(net, params)
    assert len(folded) == 1
    new_weight, new_bias = folded_params["conv"]
    mean, var = np.array([1.0, 2.0]), np.array([4.0, 1.0])
    a = np.array([1.5, 0.5]) / np.sqrt(var + 0.001)
    np.testing.assert_allclose(new_weight.reshape(-1), weight.reshape(-1) * a, rtol=1e-6)
    np.testing.assert_allclose(new_bias, -mean * a + np.array([0.1, -0.2]), rtol=1e-6)


def _export(world, weights, images: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "export.py"),
            "--deploy-net",
            str(world.deploy_net),
            "--weights",
            str(weights),
            "--test-net",
            str(world.test_net),
            "--instances",
            str(world.test_instances),
            "--images",
            str(images),
            "--out-dir",
            str(out),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_export_script_writes_the_folded_net_and_its_check(world_and_weights, tmp_path):
    world, weights = world_and_weights
    images = tmp_path / "images"
    images.mkdir()
    for path in world.test_images:
        (images / path.name).symlink_to(path)
    out = tmp_path / "export"
    result = _export(
        world, weights, images, out, "--settings", '{"fold_check_images": 4, "verify_images": 3, "latency_runs": 2}'
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads((out / "fold_check.json").read_text())
    assert check["max_abs_difference"] < 1e-4 and len(check["images"]) == 4
    assert "folded 4 Convolution+BatchNorm(+Scale) chains" in result.stdout
    net = caffe.Net(str(out / "caffe/deploy.prototxt"), caffe.TEST, weights=str(out / "caffe/deploy.caffemodel"))
    assert "conv1/bn" not in net.params
    verify = json.loads((out / "verify.json").read_text())
    assert verify["failures"] == [] and all(row["loads"] for row in verify["rows"]), verify["rows"]
    assert verify["images"] == 3 and "AP50" not in verify["rows"][0]  # no labelmap given: no COCO scoring


def test_export_of_weights_for_another_net_fails_in_one_line(world_and_weights, tmp_path):
    world, _ = world_and_weights
    other = tmp_path / "other.prototxt"
    other.write_text(deploy_net_text(num_classes=7))
    caffe.Net(str(other), caffe.TEST).save(str(tmp_path / "other.caffemodel"))
    result = _export(world, tmp_path / "other.caffemodel", tmp_path, tmp_path / "export")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "shape mismatch" in result.stderr
    assert not (tmp_path / "export/caffe/deploy.caffemodel").exists()
    assert not (tmp_path / "export/fold_check.json").exists()


def test_the_generated_mobilenetv2_ssdlite_deploy_net_folds_to_the_same_outputs(world_and_weights, tmp_path):
    """The real architecture: 76 chains (with depthwise convolutions) folded, outputs compared on real images."""
    world, _ = world_and_weights
    model = tmp_path / "model"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_model.py"),
            "--model-settings",
            '{"augmentation": false}',
            "--device",
            "cpu",
            "--labelmap",
            str(world.labelmap),
            "--name-size",
            str(world.test_name_size),
            "--test-instances",
            str(world.test_instances),
            "--out-train",
            str(model / "train.prototxt"),
            "--out-test",
            str(model / "test.prototxt"),
            "--out-deploy",
            str(model / "deploy.prototxt"),
            "--out-solver",
            str(model / "solver.prototxt"),
            "--config-out",
            str(model / "config.json"),
            "--no-check",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    net = caffe.Net(str(model / "deploy.prototxt"), caffe.TEST)  # fillers' weights (msra, xavier)
    rng = np.random.default_rng(11)
    for name, blobs in net.params.items():
        if len(blobs) == 3 and blobs[2].data.size == 1:  # BatchNorm: plausible statistics of a trained net
            channels = blobs[0].data.size
            blobs[0].data[...] = rng.normal(0, 0.3, channels)
            blobs[1].data[...] = rng.uniform(0.3, 3.0, channels)
            blobs[2].data[...] = 1.0
        elif name.endswith(("/scale", "_scale")) or "scale" in name.lower():
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.normal(0, 0.1, blobs[1].data.shape)
    weights = tmp_path / "mobilenetv2_ssdlite.caffemodel"
    net.save(str(weights))
    folded = _fold(model / "deploy.prototxt", weights, tmp_path)
    assert len(folded) >= 70
    transform = transform_settings(model / "test.prototxt")
    check = check_folding(
        model / "deploy.prototxt",
        weights,
        tmp_path / "caffe/deploy.prototxt",
        tmp_path / "caffe/deploy.caffemodel",
        folded,
        world.test_images[:2],
        transform["mean"],
        transform["scale"],
    )
    assert check["max_abs_difference"] < 1e-4, check["per_blob"]
    assert check["layers_after"] < check["layers_before"] - 140
