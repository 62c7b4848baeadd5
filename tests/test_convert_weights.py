"""ImageNet weights converted into the generated backbone give the source network's feature maps.

torchvision: a MobileNetV2 in plain torch with torchvision's exact state-dict keys, random weights and
BatchNorm statistics. shicai: the deploy prototxt of shicai/MobileNet-Caffe (../shared/reference) with
random weights in pycaffe. Both are converted into a generated net and compared at the stem (``Conv``),
block 13's expansion (``conv_13/expand``, SSDLite's first feature map) and ``Conv_1``:
- exactly (1e-4 relative) when the reference pads its first convolution as the converted net does (a
  ring of pixel value 127.5), which checks structure, BatchNorm, channel order and normalisation;
- against the unmodified reference, where only the stem's border rows/columns may differ (the
  normalisation folded into the first convolution moves what zero padding means); measured, printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support import imagenet_nets as ref

SIZE = 160
EXACT = 1e-4
SHICAI_PROTOTXT = "reference/imagenet/shicai-mobilenet_v2_deploy.prototxt"


def _deploy_net(folder: Path, **options) -> Path:
    from ssdlite_coco.caffe_tools.prototxt import format_prototxt
    from ssdlite_coco.model.nets import build_net
    from tests.support.model_settings import model_options

    path = folder / "deploy.prototxt"
    path.write_text(format_prototxt(build_net(model_options(num_classes=5, input_size=SIZE, **options), "deploy")))
    return path


def _caffe_features(net_path: Path, weights: Path, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    import caffe

    net = caffe.Net(str(net_path), caffe.TEST, weights=str(weights))
    outputs = []
    for pixels in images:
        net.blobs["data"].data[...] = ref.net_input(pixels)
        net.forward(end="Conv_1/relu")
        outputs.append({name: net.blobs[name].data[0].copy() for name in ("Conv", "conv_13/expand", "Conv_1")})
    return outputs


def _border_report(label: str, caffe_maps, reference_maps) -> dict[str, float]:
    """Relative differences against the unmodified reference: whole maps, and the stem without its border."""
    numbers = {
        name: max(ref.relative_difference(c[name], r[name]) for c, r in zip(caffe_maps, reference_maps, strict=True))
        for name in caffe_maps[0]
    }
    numbers["Conv interior"] = max(
        ref.relative_difference(c["Conv"][:, 1:-1, 1:-1], r["Conv"][:, 1:-1, 1:-1])
        for c, r in zip(caffe_maps, reference_maps, strict=True)
    )
    numbers["Conv_1 mean"] = max(
        float(np.abs(c["Conv_1"] - r["Conv_1"]).mean() / np.abs(r["Conv_1"]).mean())
        for c, r in zip(caffe_maps, reference_maps, strict=True)
    )
    print(f"\n{label} vs the unmodified reference (zero padding of the source): {numbers}")
    return numbers


@pytest.fixture(scope="module")
def images(coco_mini_dir):
    return ref.coco_pixels(coco_mini_dir, SIZE)


def _torchvision_weights(folder: Path, width: float) -> tuple[object, Path]:
    import torch

    model = ref.torchvision_mobilenet_v2(width, seed=int(width * 10))
    path = folder / "mobilenet_v2.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_the_reference_state_dict_has_torchvision_keys(tmp_path):
    import torch

    _, path = _torchvision_weights(tmp_path, 1.0)
    keys = list(torch.load(path, weights_only=True))
    assert len(keys) == 314
    assert keys[:2] == ["features.0.0.weight", "features.0.1.weight"]
    assert "features.17.conv.3.running_var" in keys and "features.18.1.num_batches_tracked" in keys
    assert keys[-2:] == ["classifier.1.weight", "classifier.1.bias"]


@pytest.mark.parametrize(
    ("width", "options"),
    [(1.0, {}), (0.5, {"backbone_bn": "folded"})],
    ids=["width1.0-bn-explicit-eps0.001", "width0.5-bn-folded"],
)
def test_torchvision_weights_give_pytorchs_feature_maps(tmp_path, images, width, options):
    from ssdlite_coco.train.convert_weights import convert_weights

    model, weights = _torchvision_weights(tmp_path, width)
    net = _deploy_net(tmp_path, width=width, **options)
    out = tmp_path / "converted.caffemodel"
    report = convert_weights("torchvision", weights, net, out, tmp_path / "coverage.json", tmp_path / "coverage.txt")
    assert report["backbone"]["copied"] == report["backbone"]["expected"] > 0
    caffe_maps = _caffe_features(net, out, images)
    exact = [ref.torch_features(model, pixels, pad_with_grey=True) for pixels in images]
    for name in ("Conv", "conv_13/expand", "Conv_1"):
        for value, expected in zip(caffe_maps, exact, strict=True):
            assert value[name].shape == expected[name].shape
            assert ref.relative_difference(value[name], expected[name]) < EXACT, name
    border = _border_report(f"torchvision width {width}", caffe_maps, [ref.torch_features(model, p) for p in images])
    assert border["Conv interior"] < EXACT < border["Conv"]


def _random_shicai(shared_dir: Path, folder: Path) -> tuple[object, Path]:
    """shicai's deploy net with random weights and BatchNorm statistics measured on random input, perturbed."""
    import caffe

    net = caffe.Net(str(shared_dir / SHICAI_PROTOTXT), caffe.TEST)
    rng = np.random.default_rng(3)
    net.blobs["data"].reshape(1, 3, 96, 96)
    net.reshape()
    net.blobs["data"].data[...] = rng.normal(size=(1, 3, 96, 96))
    names = list(net._layer_names)
    for index, layer in enumerate(net.layers):
        if layer.type == "BatchNorm":
            top = net.bottom_names[names[index]][0]
            net.forward(end=names[index - 1])
            values = net.blobs[top].data[0]
            layer.blobs[0].data[...] = values.mean(axis=(1, 2)) + 0.1 * rng.normal(size=values.shape[0])
            layer.blobs[1].data[...] = values.var(axis=(1, 2)) * rng.uniform(0.5, 1.5, values.shape[0]) + 1e-3
            layer.blobs[2].data[...] = 1.0
        elif layer.type == "Scale":
            layer.blobs[0].data[...] = rng.uniform(0.5, 1.5, layer.blobs[0].data.shape)
            layer.blobs[1].data[...] = 0.2 * rng.normal(size=layer.blobs[1].data.shape)
    path = folder / "shicai_random.caffemodel"
    net.save(str(path))
    return net, path


def _shicai_features(net, images, pad_with_grey: bool, shared_dir: Path, weights: Path):
    import caffe
    from ssdlite_coco.caffe_tools.prototxt import format_prototxt, read_net

    prototxt = read_net(shared_dir / SHICAI_PROTOTXT)
    if pad_with_grey:
        next(layer for layer in prototxt.layer if layer.name == "conv1").convolution_param.pad[:] = [0]
    path = weights.with_suffix(f".{int(pad_with_grey)}.prototxt")
    path.write_text(format_prototxt(prototxt))
    net = caffe.Net(str(path), caffe.TEST, weights=str(weights))
    expands = [layer.name for layer in prototxt.layer if layer.type == "Convolution" and layer.name.endswith("/expand")]
    # shicai's BatchNorm, Scale and ReLU write <conv>/bn
    names = {"Conv": "conv1/bn", "conv_13/expand": f"{expands[13]}/bn", "Conv_1": "conv6_4/bn"}
    outputs = []
    for pixels in images:
        data = ref.shicai_input(pixels, pad_with_grey)
        net.blobs["data"].reshape(*data.shape)
        net.reshape()
        net.blobs["data"].data[...] = data
        net.forward(end="relu6_4")
        outputs.append({ours: net.blobs[theirs].data[0].copy() for ours, theirs in names.items()})
    return outputs


def test_shicai_weights_give_the_caffe_references_feature_maps(tmp_path, images, shared_dir):
    from ssdlite_coco.train.convert_weights import convert_weights

    source_net, weights = _random_shicai(shared_dir, tmp_path)
    net = _deploy_net(tmp_path, activation="relu", bn_eps=1e-5, backbone_layout="shicai")
    out = tmp_path / "converted.caffemodel"
    report = convert_weights("shicai", weights, net, out)
    assert report["warnings"] == []
    assert [row["from"] for row in report["rows"] if row["status"] == "dropped"] == ["fc7"]
    caffe_maps = _caffe_features(net, out, images)
    exact = _shicai_features(source_net, images, True, shared_dir, weights)
    for name in ("Conv", "conv_13/expand", "Conv_1"):
        for value, expected in zip(caffe_maps, exact, strict=True):
            assert value[name].shape == expected[name].shape
            assert ref.relative_difference(value[name], expected[name]) < EXACT, name
    border = _border_report("shicai", caffe_maps, _shicai_features(source_net, images, False, shared_dir, weights))
    assert border["Conv interior"] < EXACT < border["Conv"]


def test_shicai_into_a_relu6_net_warns_and_a_net_of_the_torchvision_layout_is_refused(tmp_path, shared_dir):
    from ssdlite_coco.train.convert_weights import ConversionError, convert_weights

    _, weights = _random_shicai(shared_dir, tmp_path)
    relu6 = _deploy_net(tmp_path, backbone_layout="shicai")
    report = convert_weights("shicai", weights, relu6, tmp_path / "a.caffemodel", log=lambda _: None)
    assert any("trained with ReLU" in w and "model.activation: relu" in w for w in report["warnings"])
    assert any("model.bn_eps" in w for w in report["warnings"])  # 1e-5 source, 0.001 net
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ConversionError, match=r"conv2_1/expand \(block0/expand\).*model.backbone_layout: shicai"):
        convert_weights("shicai", weights, _deploy_net(plain), plain / "b.caffemodel")
    assert not (plain / "b.caffemodel").exists()


def test_weights_missing_a_block_are_refused_naming_it(tmp_path):
    import torch

    from ssdlite_coco.train.convert_weights import ConversionError, convert_weights

    _, weights = _torchvision_weights(tmp_path, 1.0)
    state = torch.load(weights, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("features.5.")}, weights)
    with pytest.raises(ConversionError, match=r"cover 49 of 52 .*conv_4/expand.*conv_4/depthwise.*conv_4/project"):
        convert_weights("torchvision", weights, _deploy_net(tmp_path), tmp_path / "out.caffemodel")
    assert not (tmp_path / "out.caffemodel").exists()


def test_weights_of_another_width_are_refused(tmp_path):
    from ssdlite_coco.train.convert_weights import ConversionError, convert_weights

    _, weights = _torchvision_weights(tmp_path, 0.5)
    with pytest.raises(ConversionError, match=r"features\.0\.0 has shape 16x3x3x3.*set model.width"):
        convert_weights("torchvision", weights, _deploy_net(tmp_path), tmp_path / "out.caffemodel")


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    from ssdlite_coco.train.weight_sources import SourceWeightsError, read_source

    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(SourceWeightsError, match=r"weights.pth: not a PyTorch state dict"):
        read_source("torchvision", bad)


def test_the_script_converts_for_a_train_net_and_writes_the_coverage_table(tmp_path, repo_root):
    from ssdlite_coco.caffe_tools.prototxt import format_prototxt
    from ssdlite_coco.model.nets import build_net
    from tests.support.model_settings import model_options

    _, weights = _torchvision_weights(tmp_path, 1.0)
    train_net = tmp_path / "train.prototxt"
    train_net.write_text(format_prototxt(build_net(model_options(num_classes=81, augmentation=False), "train")))
    settings = json.dumps({"initial_weights_format": "torchvision"})
    command = [sys.executable, str(repo_root / "scripts" / "convert_weights.py"), "--settings", settings]
    command += ["--weights", str(weights), "--net", str(train_net), "--out", str(tmp_path / "out.caffemodel")]
    command += ["--coverage-json", str(tmp_path / "c.json"), "--coverage-txt", str(tmp_path / "c.txt")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "c.txt").read_text()
    assert "backbone: 156/156 layers copied (52 convolutions)" in table
    rows = [line.split() for line in table.splitlines()]
    assert ["conv_13/expand/bn", "backbone", "copied", "features.14.conv.0.0"] in rows
    assert ["-", "classifier", "dropped", "classifier.1.weight"] in rows
    assert ["conv_13/expand_mbox_conf", "extras/heads", "filler"] in rows or any(
        row[1:] == ["extras/heads", "filler"] for row in rows[2:]
    )
    assert "warning: BatchNorm eps of the net (0.001)" in table
    print("\n" + table)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"x")
    result = subprocess.run(command[:5] + [str(broken)] + command[6:], capture_output=True, text=True, cwd=repo_root)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {broken}: not a PyTorch state dict") and "mobilenet_v2 .pth" in line


def test_check_initial_weights_reports_the_backbone_coverage(tmp_path):
    import caffe
    from ssdlite_coco.caffe_tools.prototxt import read_net
    from ssdlite_coco.caffe_tools.weights import copy_weights_by_name, read_caffemodel
    from ssdlite_coco.train.convert_weights import convert_weights, coverage_summary
    from ssdlite_coco.train.initial_weights import backbone_coverage

    _, weights = _torchvision_weights(tmp_path, 1.0)
    net_path = _deploy_net(tmp_path)
    out = tmp_path / "converted.caffemodel"
    convert_weights("torchvision", weights, net_path, out, tmp_path / "coverage.json", log=lambda _: None)
    net = caffe.Net(str(net_path), caffe.TEST)
    rows = copy_weights_by_name(net, read_caffemodel(out))
    coverage = backbone_coverage(read_net(net_path), rows, coverage_summary(tmp_path / "coverage.json"))
    assert (coverage["copied"], coverage["expected"], coverage["missing"]) == (156, 156, [])
    assert coverage["format"] == "torchvision"
    partial = backbone_coverage(read_net(net_path), [r for r in rows if not r.layer.startswith("conv_16/")])
    assert partial["copied"] == 147 and partial["missing"][:2] == ["conv_16/expand", "conv_16/expand/bn"]
