"""The prototxt patcher on the published SSDLite COCO nets: class count, data, engine, ReLU6, solver, and
every refusal with its message."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

from tests.support.helpers import train_steps
from tests.support.model_data import make_model_data
from tests.support.pycaffe import require_caffe

caffe = require_caffe()
from caffe.proto import caffe_pb2  # noqa: E402

from ssdlite_coco.caffe_tools.prototxt import PrototxtError, format_prototxt, read_prototxt  # noqa: E402
from ssdlite_coco.model.nets import build_net, supports_augmentation  # noqa: E402
from ssdlite_coco.model.patcher import (  # noqa: E402
    PatchError,
    PatchSettings,
    patch_net,
    patch_solver,
)
from tests.support.model_settings import model_options  # noqa: E402

UPSTREAM = "reference/upstream/chuanqi305-ssdlite-coco-"
LAYER_TYPES = frozenset(caffe.layer_type_list())


@pytest.fixture(scope="module")
def upstream(shared_dir) -> dict[str, Path]:
    return {
        role: shared_dir / f"{UPSTREAM}{role}.prototxt"
        for role in ("train", "test", "deploy", "solver_train", "solver_test")
    }


@pytest.fixture(scope="module")
def model_data(tmp_path_factory, coco_mini_dir):
    return make_model_data(tmp_path_factory.mktemp("patch_data"), coco_mini_dir)


def settings(**overrides) -> PatchSettings:
    values = dict(
        num_classes=81,
        label_map_file="labelmap.prototxt",
        train_batch_size=2,
        test_batch_size=2,
        name_size_file="test_name_size.txt",
        known_layer_types=LAYER_TYPES,
    )
    return PatchSettings(**(values | overrides))


def deploy_net(upstream) -> caffe_pb2.NetParameter:
    return read_prototxt(upstream["deploy"], caffe_pb2.NetParameter())


def read_net_allowing_unknown(path: Path) -> caffe_pb2.NetParameter:
    """A copy of ``path`` without the fields this Caffe lacks (resize/distort/expand before the patch)."""
    return text_format.Parse(path.read_text(), caffe_pb2.NetParameter(), allow_unknown_field=True)


def layer(net, name: str) -> caffe_pb2.LayerParameter:
    return next(item for item in net.layer if item.name == name)


def test_upstream_deploy_patched_to_81_classes_instantiates(tmp_path, upstream):
    patched, warnings = patch_net(deploy_net(upstream), "deploy", settings(), where="deploy.prototxt")
    assert warnings == []
    assert layer(patched, "conv_13/expand_mbox_conf").convolution_param.num_output == 3 * 81
    assert layer(patched, "layer_19_2_5_mbox_conf").convolution_param.num_output == 6 * 81
    assert layer(patched, "conv_13/expand_mbox_loc").convolution_param.num_output == 12  # boxes untouched
    assert list(layer(patched, "mbox_conf_reshape").reshape_param.shape.dim) == [0, -1, 81]
    assert layer(patched, "detection_out").detection_output_param.num_classes == 81
    grouped = [item for item in patched.layer if item.type == "Convolution" and item.convolution_param.group > 1]
    assert len(grouped) == 33
    assert all(item.convolution_param.engine == caffe_pb2.ConvolutionParameter.CAFFE for item in grouped)
    path = tmp_path / "deploy.prototxt"
    path.write_text(format_prototxt(patched))
    net = caffe.Net(str(path), caffe.TEST)
    assert net.blobs["mbox_conf"].data.shape == (1, 1917 * 81)
    # the patched published net and the generated folded 81-class net have the same parameters
    ours_path = tmp_path / "ours.prototxt"
    ours_path.write_text(format_prototxt(build_net(model_options(num_classes=81, backbone_bn="folded"), "deploy")))
    ours = caffe.Net(str(ours_path), caffe.TEST)
    shapes = {name: [b.data.shape for b in blobs] for name, blobs in net.params.items()}
    assert shapes == {name: [b.data.shape for b in blobs] for name, blobs in ours.params.items()}


def test_patching_is_idempotent_and_keeps_layer_order(upstream):
    once, _ = patch_net(deploy_net(upstream), "deploy", settings(num_classes=4))
    twice, _ = patch_net(once, "deploy", settings(num_classes=4))
    assert once == twice
    assert [item.name for item in once.layer] == [item.name for item in deploy_net(upstream).layer]


def test_relu6_becomes_relu_only_without_runtime_support(upstream):
    kept, warnings = patch_net(deploy_net(upstream), "deploy", settings())
    assert sum(item.type == "ReLU6" for item in kept.layer) == 59 and not warnings
    replaced, warnings = patch_net(
        deploy_net(upstream), "deploy", settings(relu6_supported=False), where="deploy.prototxt"
    )
    assert not any(item.type == "ReLU6" for item in replaced.layer)
    assert sum(item.type == "ReLU" for item in replaced.layer) == 59
    assert len(warnings) == 1 and "59 ReLU6 layer(s) became ReLU" in warnings[0]
    assert "loses much accuracy" in warnings[0] and warnings[0].startswith("deploy.prototxt:")


def test_upstream_train_and_test_parse_after_patch(upstream):
    """The data layers, the class count everywhere and name_size_file; the rest of the net stays."""
    if supports_augmentation():
        train = read_prototxt(upstream["train"], caffe_pb2.NetParameter())
        test = read_prototxt(upstream["test"], caffe_pb2.NetParameter())
    else:
        with pytest.raises(PatchError, match='has no field named "resize_param".*augmentation patch'):
            read_prototxt(upstream["train"], caffe_pb2.NetParameter())
        train, test = (
            read_net_allowing_unknown(upstream["train"]),
            read_net_allowing_unknown(upstream["test"]),
        )
    train, _ = patch_net(train, "train", settings(), where="train.prototxt")
    test, _ = patch_net(test, "test", settings(), where="test.prototxt")
    data = train.layer[0]
    assert data.data_param.source == "results/lmdb/trainval_lmdb" and data.data_param.batch_size == 2
    assert data.annotated_data_param.label_map_file == "labelmap.prototxt"
    assert len(data.annotated_data_param.batch_sampler) == 7
    if "force_color" in caffe_pb2.TransformationParameter.DESCRIPTOR.fields_by_name:
        assert data.transform_param.force_color
    assert layer(train, "mbox_loss").multibox_loss_param.num_classes == 81
    assert layer(test, "detection_eval").detection_evaluate_param.num_classes == 81
    assert layer(test, "detection_eval").detection_evaluate_param.name_size_file == "test_name_size.txt"
    assert layer(test, "data").data_param.source == "results/lmdb/test_lmdb"
    assert layer(test, "data").annotated_data_param.label_map_file == "labelmap.prototxt"  # was "None"
    reparsed = text_format.Parse(format_prototxt(train), caffe_pb2.NetParameter())
    assert reparsed == train


@pytest.mark.skipif(not supports_augmentation(), reason="the upstream nets need resize_param/distort_param")
def test_upstream_nets_patched_onto_an_lmdb_train(tmp_path, upstream, model_data):
    patch = settings(
        label_map_file=str(model_data.labelmap),
        train_source=str(model_data.train_lmdb),
        test_source=str(model_data.test_lmdb),
        name_size_file=str(model_data.name_size),
    )
    for role in ("train", "test"):
        net, _ = patch_net(read_prototxt(upstream[role], caffe_pb2.NetParameter()), role, patch, where=role)
        (tmp_path / f"{role}.prototxt").write_text(format_prototxt(net))
    solver, _ = patch_solver(
        read_prototxt(upstream["solver_train"], caffe_pb2.SolverParameter()),
        "train.prototxt",
        "test.prototxt",
        test_iter=3,
        snapshot_prefix=str(tmp_path / "snap"),
        device="cpu",
        test_interval=1000,
    )
    solver.max_iter = 2
    (tmp_path / "solver.prototxt").write_text(text_format.MessageToString(solver))
    assert train_steps(tmp_path, 2)["eval_width"] == 5


def test_solver_paths_test_iter_and_snapshot_prefix(upstream):
    solver = read_prototxt(upstream["solver_train"], caffe_pb2.SolverParameter())
    patched, warnings = patch_solver(
        solver,
        "results/model/train.prototxt",
        "results/model/test.prototxt",
        test_iter=625,
        snapshot_prefix="resources/snapshots/x",
        device="cuda",
        test_interval=5000,
        where="solver.prototxt",
    )
    assert not patched.HasField("net") and patched.train_net == "results/model/train.prototxt"
    assert list(patched.test_net) == ["results/model/test.prototxt"] and list(patched.test_iter) == [625]
    assert patched.test_interval == 5000 and patched.snapshot_prefix == "resources/snapshots/x"
    assert patched.solver_mode == caffe_pb2.SolverParameter.GPU
    assert patched.type == "RMSProp" and list(patched.stepvalue) == [20000, 40000]  # schedule kept
    assert warnings == ["solver.prototxt: had no test_interval; set to 5000"]
    test_solver = read_prototxt(upstream["solver_test"], caffe_pb2.SolverParameter())
    patched, warnings = patch_solver(test_solver, "t.prototxt", "v.prototxt", 4, "s", "cpu", 5000, where="solver_test")
    assert patched.test_interval == 10000 and list(patched.test_iter) == [4] and patched.train_net == "t.prototxt"
    assert any("max_iter is 0" in warning for warning in warnings)


def test_make_model_script_patch_mode(tmp_path, upstream, model_data):
    out = tmp_path / "results" / "model"
    if supports_augmentation():
        sources = {"train": upstream["train"], "test": upstream["test"]}
    else:
        sources = {}
        for role in ("train", "test"):
            sources[role] = tmp_path / f"{role}_stripped.prototxt"
            sources[role].write_text(format_prototxt(read_net_allowing_unknown(upstream[role])))
    sources |= {"deploy": upstream["deploy"], "solver": upstream["solver_train"]}
    model = {
        "mode": "patch",
        "num_classes": "auto",
        "train_batch_size": 2,
        "test_batch_size": 4,
        "patch": {role: str(path) for role, path in sources.items()},
    }
    args = [
        sys.executable,
        str(Path(__file__).parents[1] / "scripts" / "make_model.py"),
        "--model-settings",
        json.dumps(model),
        "--device",
        "cpu",
        "--labelmap",
        str(model_data.labelmap),
        "--name-size",
        str(model_data.name_size),
        "--test-instances",
        str(model_data.instances),
    ]
    for role in ("train", "test", "deploy", "solver"):
        args += [f"--out-{role}", str(out / f"{role}.prototxt")]
    args += ["--config-out", str(out / "model_config.json")]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "model_config.json").read_text())
    assert record["mode"] == "patch" and record["num_classes"] == 81
    assert record["test_iter"] == 2  # 6 test images, batch 4
    assert record["deploy_check"]["num_priors"] == 1917
    # The config decides max_iter, snapshot and test_interval (the upstream solver has no test_interval);
    # each change and the split between the user's solver and the config are said.
    assert "test_interval 0 -> 10000 (solver.test_interval of the config)" in result.stderr
    assert "the learning-rate schedule and the other settings are your solver's" in result.stderr
    solver = read_prototxt(out / "solver.prototxt", caffe_pb2.SolverParameter())
    assert (solver.max_iter, solver.test_interval) == (record["solver"]["max_iter"], record["solver"]["test_interval"])
    deploy = (out / "deploy.prototxt").read_text()
    assert deploy.startswith("# Written by ssdlite-coco") and "num_output: 243" in deploy


# -- refusals ------------------------------------------------------------------------------------------------


def edited(upstream, edit) -> caffe_pb2.NetParameter:
    net = deploy_net(upstream)
    edit(net)
    return net


def refuse(net, role: str = "deploy", **overrides) -> str:
    with pytest.raises(PatchError) as error:
        patch_net(net, role, settings(**overrides), where="my.prototxt")
    message = str(error.value)
    assert message.startswith("my.prototxt: ") and "\n" not in message
    return message


def test_refuses_an_unparseable_file(tmp_path):
    path = tmp_path / "broken.prototxt"
    path.write_text('layer { name: "x" type: "Convolution" convolution_param { num_ouput: 3 } }')
    with pytest.raises(PrototxtError, match=r"broken.prototxt: not a Caffe NetParameter prototxt .*num_ouput"):
        read_prototxt(path, caffe_pb2.NetParameter())
    with pytest.raises(PrototxtError, match="missing.prototxt: NetParameter prototxt not found"):
        read_prototxt(tmp_path / "missing.prototxt", caffe_pb2.NetParameter())


def test_refuses_disagreeing_class_counts(upstream):
    net = copy.deepcopy(deploy_net(upstream))
    test_layer = net.layer.add(name="detection_eval", type="DetectionEvaluate", bottom=["detection_out", "label"])
    test_layer.detection_evaluate_param.num_classes = 81
    message = refuse(net)
    assert "layer 'detection_eval' (DetectionEvaluate): num_classes 81 disagrees with 91" in message


def test_refuses_conf_heads_that_do_not_match_the_class_count(upstream):
    def edit(net):
        layer(net, "Conv_1_mbox_conf").convolution_param.num_output = 500

    assert "layer 'Conv_1_mbox_conf' (Convolution): num_output 500 is not a multiple of the net's 91" in refuse(
        edited(upstream, edit)
    )


def test_refuses_loc_and_conf_heads_with_different_priors(upstream):
    def edit(net):
        layer(net, "conv_13/expand_mbox_conf").convolution_param.num_output = 4 * 91

    message = refuse(edited(upstream, edit))
    assert "layer 'conv_13/expand_mbox_conf' (Convolution): predicts 4 priors per cell" in message
    assert "'conv_13/expand_mbox_loc' predicts 3" in message


def test_refuses_an_unknown_layer_on_the_score_path(upstream):
    def edit(net):
        layer(net, "mbox_conf_sigmoid").type = "TanH"

    assert "layer 'mbox_conf_sigmoid' (TanH): it feeds 'detection_out' but the patcher follows only" in refuse(
        edited(upstream, edit)
    )


def test_refuses_a_reshape_without_the_class_count(upstream):
    def edit(net):
        layer(net, "mbox_conf_reshape").reshape_param.shape.dim[2] = 7

    assert "layer 'mbox_conf_reshape' (Reshape): its last dimension is [7], not the 91 classes" in refuse(
        edited(upstream, edit)
    )


def test_refuses_a_net_without_ssd_layers(upstream):
    def edit(net):
        del net.layer[-1]  # detection_out

    assert "net: has no MultiBoxLoss or DetectionOutput layer: not an SSD net" in refuse(edited(upstream, edit))


def test_refuses_unshared_box_offsets(upstream):
    def edit(net):
        layer(net, "detection_out").detection_output_param.share_location = False

    assert "layer 'detection_out' (DetectionOutput): share_location is false" in refuse(edited(upstream, edit))


def test_refuses_layer_types_this_caffe_lacks(upstream):
    def edit(net):
        layer(net, "conv_1/depthwise").type = "DepthwiseConvolution"

    message = refuse(edited(upstream, edit))
    assert "layer 'conv_1/depthwise' (DepthwiseConvolution): this Caffe has no layer type" in message


def test_refuses_data_layer_problems(upstream):
    deploy_with_data = edited(
        upstream,
        lambda net: net.layer.insert(
            0, caffe_pb2.LayerParameter(name="data", type="AnnotatedData", top=["data", "label"])
        ),
    )
    assert "layer 'data' (AnnotatedData): a deploy net must take an Input" in refuse(deploy_with_data)
    train_without_data = edited(upstream, lambda net: None)
    train_without_data.layer.add(
        name="mbox_loss", type="MultiBoxLoss", bottom=["mbox_loc", "mbox_conf", "mbox_priorbox", "label"]
    ).multibox_loss_param.num_classes = 91
    assert "needs exactly one AnnotatedData layer in phase TRAIN, found 0" in refuse(train_without_data, "train")
    plain_data = copy.deepcopy(train_without_data)
    plain_data.layer.insert(0, caffe_pb2.LayerParameter(name="data", type="Data", top=["data", "label"]))
    assert "layer 'data' (Data): a Data layer gives no boxes" in refuse(plain_data, "train")


def test_refuses_solvers_it_cannot_point_at_one_train_and_one_test_net():
    solver = caffe_pb2.SolverParameter(net="a.prototxt", test_net=["b.prototxt", "c.prototxt"])
    with pytest.raises(PatchError, match="solver.prototxt: has 2 test nets; the workflow tests one"):
        patch_solver(solver, "t", "v", 1, "s", "cpu", 1, where="solver.prototxt")
    inline = caffe_pb2.SolverParameter(net_param=caffe_pb2.NetParameter(name="inline"))
    with pytest.raises(PatchError, match="embeds its nets"):
        patch_solver(inline, "t", "v", 1, "s", "cpu", 1, where="solver.prototxt")
