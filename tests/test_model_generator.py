"""The MobileNetV2-SSDLite generator: shapes, priors and parameters against the published net and pycaffe,
text round trips, training a few iterations on a real LMDB, and the make_model script."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.helpers import train_steps
from tests.support.model_data import make_model_data
from tests.support.pycaffe import require_caffe

caffe = require_caffe()
from caffe.proto import caffe_pb2  # noqa: E402

from ssdlite_coco.caffe_tools.prototxt import format_prototxt, parse_prototxt  # noqa: E402
from ssdlite_coco.common.config import ConfigError  # noqa: E402
from ssdlite_coco.common.settings import parse_settings  # noqa: E402
from ssdlite_coco.model.make import resolve_num_classes  # noqa: E402
from ssdlite_coco.model.mobilenetv2 import make_divisible  # noqa: E402
from ssdlite_coco.model.nets import (  # noqa: E402
    ROLES,
    ModelError,
    build_net,
    feature_maps,
    num_priors,
    supports_augmentation,
)
from ssdlite_coco.model.settings import ModelSettings, SolverError  # noqa: E402
from ssdlite_coco.model.solver import build_solver, count_test_iterations  # noqa: E402
from tests.support.model_settings import model_options, solver_settings  # noqa: E402

UPSTREAM = "reference/upstream/chuanqi305-ssdlite-coco-deploy.prototxt"
AUGMENTATION_MODES = [False, True] if supports_augmentation() else [False]


def instantiate(tmp_path: Path, net: caffe_pb2.NetParameter, name: str = "net.prototxt"):
    path = tmp_path / name
    path.write_text(format_prototxt(net))
    return caffe.Net(str(path), caffe.TEST)


def param_shapes(net) -> dict[str, list[tuple[int, ...]]]:
    return {name: [tuple(blob.data.shape) for blob in blobs] for name, blobs in net.params.items()}


def learnable(net) -> int:
    types = {name: layer.type for name, layer in zip(net._layer_names, net.layers, strict=True)}
    return sum(b.data.size for name, blobs in net.params.items() if types[name] != "BatchNorm" for b in blobs)


@pytest.fixture(scope="module")
def model_data(tmp_path_factory, coco_mini_dir):
    return make_model_data(tmp_path_factory.mktemp("model_data"), coco_mini_dir)


def test_make_divisible_is_mobilenetv2_rounding():
    assert make_divisible(32 * 1.0) == 32
    assert make_divisible(32 * 0.35) == 16  # 8 would be more than 10 % below 11.2
    assert make_divisible(24 * 0.75) == 24  # 16 would be more than 10 % below 18
    assert make_divisible(96 * 0.5) == 48
    assert make_divisible(160 * 0.35) == 56
    assert make_divisible(8 * 0.35, min_value=16) == 16


def test_folded_91_class_deploy_equals_the_published_net(tmp_path, shared_dir):
    upstream = caffe.Net(str(shared_dir / UPSTREAM), caffe.TEST)
    ours = instantiate(tmp_path, build_net(model_options(num_classes=91, backbone_bn="folded"), "deploy"))
    assert ours.blobs["mbox_priorbox"].data.shape[2] // 4 == upstream.blobs["mbox_priorbox"].data.shape[2] // 4 == 1917
    assert num_priors(model_options(num_classes=91)) == 1917
    assert ours.outputs == upstream.outputs == ["detection_out"]
    for blob in ("mbox_loc", "mbox_conf", "mbox_priorbox", "mbox_conf_flatten", "detection_out"):
        assert ours.blobs[blob].data.shape == upstream.blobs[blob].data.shape, blob
    # Same layer names, so the published weights load by name: every parameter blob has the same shape.
    assert param_shapes(ours) == param_shapes(upstream)
    assert learnable(ours) == learnable(upstream)
    assert sum(b.data.size for blobs in ours.params.values() for b in blobs) == 4493227
    # The priors themselves (sizes, ratios, variances) are identical.
    ours.forward()
    upstream.forward()
    np.testing.assert_allclose(ours.blobs["mbox_priorbox"].data, upstream.blobs["mbox_priorbox"].data, atol=1e-6)


@pytest.mark.parametrize("backbone_bn", ["explicit", "folded"])
def test_81_classes_is_about_4_3_million_parameters(tmp_path, backbone_bn):
    net = instantiate(tmp_path, build_net(model_options(num_classes=81, backbone_bn=backbone_bn), "deploy"))
    assert 4.2e6 < learnable(net) < 4.45e6
    assert net.blobs["mbox_conf"].data.shape == (1, 1917 * 81)


@pytest.mark.parametrize(
    ("width", "size", "classes", "maps", "priors"),
    [
        (1.0, 300, 81, [19, 10, 5, 3, 2, 1], 1917),
        (0.5, 300, 4, [19, 10, 5, 3, 2, 1], 1917),
        (1.0, 320, 91, [20, 10, 5, 3, 2, 1], 2034),
        (0.75, 320, 4, [20, 10, 5, 3, 2, 1], 2034),
        (0.35, 512, 81, [32, 16, 8, 4, 2, 1], 3 * 32 * 32 + 6 * (256 + 64 + 16 + 4 + 1)),
    ],
)
def test_shapes_priors_and_channels(tmp_path, width, size, classes, maps, priors):
    options = model_options(num_classes=classes, input_size=size, width=width)
    net = instantiate(tmp_path, build_net(options, "deploy"))
    fmaps = feature_maps(options)
    assert [fmap.size for fmap in fmaps] == maps
    for fmap in fmaps:
        assert net.blobs[fmap.blob].data.shape[2:] == (fmap.size, fmap.size)
        assert net.blobs[fmap.blob].data.shape[1] == fmap.channels
    assert num_priors(options) == priors == net.blobs["mbox_priorbox"].data.shape[2] // 4
    assert net.blobs["mbox_conf"].data.shape == (1, priors * classes)
    assert net.blobs["mbox_loc"].data.shape == (1, priors * 4)
    assert net.blobs["data"].data.shape == (1, 3, size, size)
    assert net.blobs["conv_13/expand"].data.shape[1] == 6 * make_divisible(96 * width)
    assert net.blobs["Conv"].data.shape[1] == make_divisible(32 * width)
    assert net.blobs["Conv_1"].data.shape[1] == make_divisible(1280 * max(1.0, width))
    # prior sizes scale with the input: 20 % ... 95 % of the side, the last max size is the side
    first = next(layer for layer in build_net(options, "deploy").layer if layer.type == "PriorBox")
    assert first.prior_box_param.min_size == [pytest.approx(0.2 * size)]
    assert not first.prior_box_param.max_size


def test_width_shrinks_the_net(tmp_path):
    counts = [learnable(instantiate(tmp_path, build_net(model_options(width=w), "deploy"))) for w in (1.0, 0.75, 0.5)]
    assert counts[0] > counts[1] > counts[2]


def test_explicit_and_folded_backbone_batch_norm():
    explicit = build_net(model_options(backbone_bn="explicit"), "deploy")
    folded = build_net(model_options(backbone_bn="folded"), "deploy")
    bn_explicit = [layer.name for layer in explicit.layer if layer.type == "BatchNorm"]
    bn_folded = [layer.name for layer in folded.layer if layer.type == "BatchNorm"]
    assert all("_mbox_" in name for name in bn_folded) and len(bn_folded) == 12  # only the heads keep BN
    assert "conv_5/expand/bn" in bn_explicit and "layer_19_2_3/depthwise/bn" in bn_explicit
    convs = {layer.name: layer for layer in explicit.layer if layer.type == "Convolution"}
    assert not convs["conv_5/expand"].convolution_param.bias_term
    assert len(convs["conv_5/expand"].param) == 1
    scale = next(layer for layer in explicit.layer if layer.name == "conv_5/expand/scale")
    assert scale.scale_param.bias_term and [p.lr_mult for p in scale.param] == [1.0, 2.0]  # trainable
    bn = next(layer for layer in explicit.layer if layer.name == "conv_5/expand/bn")
    assert [p.lr_mult for p in bn.param] == [0.0, 0.0, 0.0]  # statistics, never learned
    folded_convs = {layer.name: layer for layer in folded.layer if layer.type == "Convolution"}
    assert folded_convs["conv_5/expand"].convolution_param.bias_term


@pytest.mark.parametrize("activation", ["relu6", "relu"])
def test_depthwise_are_grouped_caffe_engine_convolutions(activation):
    net = build_net(model_options(activation=activation), "deploy")
    grouped = [layer for layer in net.layer if layer.type == "Convolution" and layer.convolution_param.group > 1]
    assert len(grouped) == 17 + 4 + 12  # 17 blocks, 4 extra layers, 12 head convolutions
    for layer in grouped:
        param = layer.convolution_param
        assert param.group == param.num_output
        assert param.engine == caffe_pb2.ConvolutionParameter.CAFFE
        assert param.kernel_size == [3]
    types = {layer.type for layer in net.layer}
    assert ("ReLU6" in types) == (activation == "relu6")
    assert ("ReLU" in types) == (activation == "relu")


def test_tf_padding_slices_even_inputs_only(tmp_path):
    net_param = build_net(model_options(padding="tf", num_classes=91), "deploy")
    slices = [layer for layer in net_param.layer if layer.type == "Slice"]
    # 300 -> 150 (stem), 150 -> 75, 38 -> 19, 10 -> 5, 2 -> 1 have even inputs;
    # 75 -> 38, 19 -> 10, 5 -> 3, 3 -> 2 odd ones
    padded = {layer.name.rsplit("/slice", 1)[0] for layer in slices}
    assert padded == {
        "Conv",
        "conv_1/depthwise",
        "conv_6/depthwise",
        "layer_19_2_2/depthwise",
        "layer_19_2_5/depthwise",
    }
    silence = next(layer for layer in net_param.layer if layer.type == "Silence")
    assert len(silence.bottom) == 10
    net = instantiate(tmp_path, net_param)
    assert net.outputs == ["detection_out"]
    assert net.blobs["Conv"].data.shape[2:] == (150, 150)
    assert net.blobs["mbox_priorbox"].data.shape[2] // 4 == 1917


@pytest.mark.parametrize("role", ROLES)
def test_text_round_trip(tmp_path, role):
    options = model_options(num_classes=4, augmentation=False, name_size_file="ns.txt")
    net = build_net(options, role)
    text = format_prototxt(net, header="a header\nsecond line")
    assert text.startswith("# a header\n# second line\n")
    assert parse_prototxt(text, caffe_pb2.NetParameter()) == net
    assert format_prototxt(parse_prototxt(text, caffe_pb2.NetParameter())) == format_prototxt(net)
    assert "\n  name: " in text and "{ " not in text  # one field per line: diffs show the field that changed


def test_train_and_test_nets_have_the_right_ends():
    options = model_options(num_classes=4, augmentation=False, name_size_file="ns.txt", conf_loss="softmax")
    train, test = build_net(options, "train"), build_net(options, "test")
    loss = next(layer for layer in train.layer if layer.type == "MultiBoxLoss")
    assert loss.multibox_loss_param.num_classes == 4
    assert loss.multibox_loss_param.conf_loss_type == caffe_pb2.MultiBoxLossParameter.SOFTMAX
    assert not any(layer.type in ("DetectionOutput", "DetectionEvaluate") for layer in train.layer)
    evaluate = next(layer for layer in test.layer if layer.type == "DetectionEvaluate")
    assert evaluate.detection_evaluate_param.name_size_file == "ns.txt"
    output = next(layer for layer in test.layer if layer.type == "DetectionOutput")
    assert output.detection_output_param.confidence_threshold == pytest.approx(0.01)
    assert output.detection_output_param.keep_top_k == 200
    assert any(layer.type == "Softmax" and layer.softmax_param.axis == 2 for layer in test.layer)
    data = test.layer[0]
    assert data.type == "AnnotatedData" and data.include[0].phase == caffe_pb2.TEST
    assert data.data_param.source == "results/lmdb/test_lmdb" and data.data_param.batch_size == 8
    assert data.transform_param.force_color


def test_augmentation_emission():
    options = model_options(augmentation=True)
    if not supports_augmentation():
        with pytest.raises(ModelError, match="distort_param.*model.augmentation: false"):
            build_net(options, "train")
        return
    data = build_net(options, "train").layer[0]
    transform = data.transform_param
    assert transform.mirror and transform.force_color
    assert transform.resize_param.height == transform.resize_param.width == 300
    assert len(transform.resize_param.interp_mode) == 5
    assert transform.distort_param.brightness_delta == 32.0 and transform.expand_param.max_expand_ratio == 4.0
    assert transform.emit_constraint.emit_type == caffe_pb2.EmitConstraint.CENTER
    samplers = data.annotated_data_param.batch_sampler
    assert len(samplers) == 7
    assert [s.sample_constraint.min_jaccard_overlap for s in samplers[1:6]] == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert samplers[6].sample_constraint.max_jaccard_overlap == 1.0
    test_data = build_net(options, "test").layer[0]  # the test net is never augmented
    assert not test_data.transform_param.HasField("distort_param") and not test_data.annotated_data_param.batch_sampler
    off = build_net(model_options(augmentation=False), "train").layer[0]
    assert not off.transform_param.HasField("distort_param") and not off.transform_param.mirror


def test_option_errors():
    with pytest.raises(ModelError, match="activation must be one of"):
        model_options(activation="swish")
    with pytest.raises(ConfigError, match="'colour' is not a setting of this step; it reads `model`"):
        parse_settings(ModelSettings, '{"colour": 1}')
    with pytest.raises(ModelError, match="num_classes must be at least 2"):
        model_options(num_classes=1)
    with pytest.raises(SolverError, match="steps must increase"):
        solver_settings(steps=[10, 5])


def test_num_classes_from_the_labelmap(model_data):
    assert resolve_num_classes("auto", model_data.labelmap) == 81
    assert resolve_num_classes(91, model_data.labelmap) == 91
    with pytest.raises(ModelError, match="model.num_classes is 4 but .* labels up to 80"):
        resolve_num_classes(4, model_data.labelmap)


def test_solver_settings():
    rms = build_solver(solver_settings(type="RMSProp", lr_policy="multistep", steps=[5, 9]), "cpu", "a", "b", 3)
    assert not rms.HasField("momentum") and rms.rms_decay == pytest.approx(0.9)
    assert list(rms.stepvalue) == [5, 9] and list(rms.test_iter) == [3] and rms.eval_type == "detection"
    step = build_solver(solver_settings(lr_policy="step", steps=[7]), "cuda", "a")
    assert step.stepsize == 7 and not step.test_net and step.solver_mode == caffe_pb2.SolverParameter.GPU
    assert count_test_iterations(5000, 8) == 625 and count_test_iterations(6, 4) == 2
    cosine = build_solver(solver_settings(lr_policy="cosine", min_lr=1e-4, warmup_iter=500), "cpu", "a")
    assert cosine.min_lr == pytest.approx(1e-4) and cosine.warmup_iter == 500
    assert cosine.warmup_start_factor == pytest.approx(0.001)
    assert not step.HasField("warmup_iter") and not step.HasField("min_lr")
    with pytest.raises(SolverError, match="min_lr must be at least 0 and below base_lr"):
        solver_settings(lr_policy="cosine", base_lr=0.01, min_lr=0.02)
    with pytest.raises(ConfigError, match="'solver.warmup_start_factor': 1.5 is greater than the maximum of 1"):
        solver_settings(warmup_iter=10, warmup_start_factor=1.5)


@pytest.mark.parametrize("augmentation", AUGMENTATION_MODES)
def test_generated_nets_train_on_a_real_lmdb(tmp_path, model_data, augmentation):
    options = model_options(
        num_classes=81,
        input_size=160,
        width=0.5,
        augmentation=augmentation,
        train_batch_size=2,
        test_batch_size=2,
        train_source=str(model_data.train_lmdb),
        test_source=str(model_data.test_lmdb),
        label_map_file=str(model_data.labelmap),
        name_size_file=str(model_data.name_size),
    )
    for role in ("train", "test"):
        (tmp_path / f"{role}.prototxt").write_text(format_prototxt(build_net(options, role)))
    solver = build_solver(
        solver_settings(
            base_lr=0.001,
            max_iter=3,
            display=1,
            snapshot=0,
            random_seed=1,
        ),
        "cpu",
        "train.prototxt",
        "test.prototxt",
        test_iter=count_test_iterations(model_data.num_images, 2),
    )
    (tmp_path / "solver.prototxt").write_text(format_prototxt(solver))
    steps = train_steps(tmp_path, 3)
    assert (steps["detection_width"], steps["eval_width"], steps["side"]) == (7, 5, 160)


def run_make_model(tmp_path: Path, model_data, model_config: dict, solver_config: dict | None = None):
    out = tmp_path / "results" / "model"
    args = [
        sys.executable,
        str(Path(__file__).parents[1] / "scripts" / "make_model.py"),
        "--model-settings",
        json.dumps(model_config),
        "--solver-settings",
        json.dumps(solver_config or {}),
        "--device",
        "cpu",
        "--labelmap",
        str(model_data.labelmap),
        "--name-size",
        str(model_data.name_size),
        "--test-instances",
        str(model_data.instances),
        "--out-train",
        str(out / "train.prototxt"),
        "--out-test",
        str(out / "test.prototxt"),
        "--out-deploy",
        str(out / "deploy.prototxt"),
        "--out-solver",
        str(out / "solver.prototxt"),
        "--config-out",
        str(out / "model_config.json"),
    ]
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300), out


def test_make_model_script_generates_and_records(tmp_path, model_data):
    result, out = run_make_model(
        tmp_path,
        model_data,
        {"mode": "generate", "num_classes": "auto", "augmentation": False, "test_batch_size": 4},
        {"max_iter": 50},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok:" in result.stdout and "1917 priors" in result.stdout
    record = json.loads((out / "model_config.json").read_text())
    assert record["num_classes"] == 81 and record["num_test_images"] == model_data.num_images
    assert record["test_iter"] == math.ceil(model_data.num_images / 4)
    assert record["deploy_check"]["num_priors"] == 1917
    assert 4.2e6 < record["deploy_check"]["learnable_parameters"] < 4.45e6
    solver = (out / "solver.prototxt").read_text()
    assert f'train_net: "{out / "train.prototxt"}"' in solver and "max_iter: 50" in solver
    assert 'snapshot_prefix: "resources/snapshots/caffe_train/mobilenetv2_ssdlite"' in solver
    assert (tmp_path / "resources/snapshots/caffe_train").is_dir()  # `caffe train` by hand needs it
    train = (out / "train.prototxt").read_text()
    assert 'source: "results/lmdb/trainval_lmdb"' in train and str(model_data.labelmap) in train


def test_make_model_script_refuses_too_few_classes(tmp_path, model_data):
    result, out = run_make_model(tmp_path, model_data, {"num_classes": 4, "augmentation": False})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: model.num_classes is 4")
    assert not out.exists() or not any(out.iterdir())


def test_bn_moving_average_fraction_reaches_every_batchnorm():
    net = build_net(model_options(num_classes=4, bn_moving_average_fraction=0.99), "train")
    batch_norms = [layer for layer in net.layer if layer.type == "BatchNorm"]
    assert batch_norms and all(
        layer.batch_norm_param.moving_average_fraction == pytest.approx(0.99) for layer in batch_norms
    )
    default = build_net(model_options(num_classes=4), "train")
    assert not any(layer.batch_norm_param.HasField("moving_average_fraction") for layer in default.layer)
    with pytest.raises(ModelError, match="bn_moving_average_fraction must be in"):
        model_options(num_classes=4, bn_moving_average_fraction=1.0)
