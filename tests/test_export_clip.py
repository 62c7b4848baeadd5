"""The Clip variant of the Caffe export (``caffe-clip/``): the deploy and head-only nets with every ReLU6 as BVLC
Caffe's ``Clip`` (min 0, max 6), for toolchains that do not know ReLU6. The same weights and blob names; pycaffe
gives the ReLU6 export's outputs bit for bit and the check's rows pass; a wrong Clip fails the check; OpenCV DNN
and MNN (the other runtimes that take Caffe) refuse Clip, as models/README.md says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.pycaffe import require_caffe
from tests.support.ssdlite_export import check_context, check_settings
from tests.support.tiny_ssd import SIZE, trained_like_deploy

caffe = require_caffe()
cv2 = pytest.importorskip("cv2")

from caffe.proto import caffe_pb2  # noqa: E402

from ssdlite_coco.caffe_tools.prototxt import format_prototxt, parse_prototxt, read_net  # noqa: E402
from ssdlite_coco.export.make import ExportPaths, make_deploy, make_heads  # noqa: E402
from ssdlite_coco.export.runtime_check import (  # noqa: E402
    check_runtimes,
    runtime_factories,
)
from ssdlite_coco.export.runtimes import (  # noqa: E402
    OpenCVRuntime,
    PycaffeRuntime,
    RuntimeLoadError,
    mnn_convert,
)
from ssdlite_coco.export.verify import ImageCase  # noqa: E402

CLIP_ROWS = ["pycaffe Clip", "pycaffe Clip heads + decode_detections"]
TRANSFORM = {"mean": [127.5] * 3, "scale": 0.007843, "interpolation": "INTER_LINEAR"}


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """The tiny SSD deploy net (in-place ReLU6 after every convolution), trained-like weights, exported."""
    folder = tmp_path_factory.mktemp("clip")
    prototxt, weights = trained_like_deploy(folder, seed=5, variance=(0.05, 0.5), scale=(1.0, 3.0), bias=(1.0, 1.0))
    paths = ExportPaths(folder / "export")
    heads = make_heads(make_deploy(prototxt, weights, paths), paths, str(prototxt))
    reference = PycaffeRuntime(
        prototxt, weights, heads["loc_blob"], heads["conf_blob"], heads["settings"]["num_classes"]
    )
    images, rng = [], np.random.default_rng(5)
    for index in range(3):
        path = folder / f"image{index}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (SIZE + 7 * index, SIZE + 5, 3), dtype=np.uint8))
        images.append(ImageCase(path))
    return paths, heads, reference, images


def _check(paths: ExportPaths, heads, reference, images, workdir: Path) -> dict:
    factories = runtime_factories(["pycaffe"], check_context(paths, heads, workdir))
    clip = {name: factory for name, factory in factories.items() if name in CLIP_ROWS}
    assert list(clip) == CLIP_ROWS
    return check_runtimes(reference, clip, images, TRANSFORM, (SIZE, SIZE), check_settings(latency_runs=1))


def _weights(caffemodel: Path) -> tuple[dict[str, str], dict[str, list[np.ndarray]]]:
    """Layer types and parameter arrays of a caffemodel, read with protobuf alone."""
    net = caffe_pb2.NetParameter()
    net.ParseFromString(caffemodel.read_bytes())
    types = {layer.name: layer.type for layer in net.layer}
    arrays = {layer.name: [np.asarray(blob.data) for blob in layer.blobs] for layer in net.layer if layer.blobs}
    return types, arrays


@pytest.mark.parametrize("which", ["deploy", "heads"])
def test_the_clip_variant_is_the_export_with_relu6_as_clip(tiny_export, which):
    paths = tiny_export[0]
    (prototxt, caffemodel), (clip_prototxt, clip_caffemodel) = getattr(paths, which), getattr(paths, f"{which}_clip")
    assert clip_prototxt.parent.name == "caffe-clip"
    relu6, clip = read_net(prototxt), read_net(clip_prototxt)
    assert [(layer.name, list(layer.bottom), list(layer.top)) for layer in clip.layer] == [
        (layer.name, list(layer.bottom), list(layer.top)) for layer in relu6.layer
    ]
    assert [layer.type for layer in clip.layer] == [
        "Clip" if layer.type == "ReLU6" else layer.type for layer in relu6.layer
    ]
    clips = [layer for layer in clip.layer if layer.type == "Clip"]
    assert len(clips) >= 4 and all((c.clip_param.min, c.clip_param.max) == (0, 6) for c in clips)
    assert not any(layer.HasField("relu6_param") for layer in clip.layer)
    types, arrays = _weights(clip_caffemodel)  # the caffemodel's layers are Clip too (clip_param, field 148)
    assert "ReLU6" not in types.values() and list(types.values()).count("Clip") == len(clips)
    reference_arrays = _weights(caffemodel)[1]
    assert arrays.keys() == reference_arrays.keys()
    for name, blobs in arrays.items():
        for got, expected in zip(blobs, reference_arrays[name], strict=True):
            np.testing.assert_array_equal(got, expected)


def test_pycaffe_on_the_clip_variant_is_the_relu6_export_and_passes_the_check(tiny_export, tmp_path):
    paths, heads, reference, images = tiny_export
    classes = heads["settings"]["num_classes"]
    relu6 = PycaffeRuntime(*paths.deploy, heads["loc_blob"], heads["conf_blob"], classes)
    clip = PycaffeRuntime(*paths.deploy_clip, heads["loc_blob"], heads["conf_blob"], classes)
    array = np.random.default_rng(6).normal(0, 1, (3, SIZE, SIZE)).astype(np.float32)
    expected, got = relu6.infer(array), clip.infer(array)
    for name in ("loc", "scores", "rows"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    clipped = {name: blob.data.copy() for name, blob in clip.net.blobs.items()}
    assert any((values == 6).any() for values in clipped.values()), "no activation reaches 6: the test shows nothing"
    result = _check(paths, heads, reference, images, tmp_path)
    assert result["failures"] == [], result["failures"]
    assert [row["runtime"] for row in result["rows"][1:]] == CLIP_ROWS
    for row in result["rows"][1:]:
        assert row["loads"] and row["loc_max_difference"] < 1e-4 and row["scores_max_difference"] < 1e-4, row


def test_the_check_fails_when_the_clip_variant_is_wrong(tiny_export, tmp_path):
    paths, heads, reference, images = tiny_export
    wrong = ExportPaths(tmp_path / "wrong")
    for which in ("deploy_clip", "heads_clip"):
        prototxt, caffemodel = getattr(paths, which)
        net = read_net(prototxt)
        for layer in net.layer:
            if layer.type == "Clip":
                layer.clip_param.max = 5
        target, target_weights = getattr(wrong, which)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(format_prototxt(net))
        target_weights.write_bytes(caffemodel.read_bytes())
    result = _check(wrong, heads, reference, images, tmp_path / "mnn")
    failed = {failure.split(":")[0] for failure in result["failures"]}
    assert failed == set(CLIP_ROWS), result["failures"]


def test_opencv_and_mnn_do_not_read_clip(tiny_export, tmp_path):
    """Measured facts behind models/README.md: OpenCV DNN 4.14 reads the prototxt (its caffe.proto has no
    clip_param and skips unknown fields) but has no Caffe layer type Clip; MNN 3.6.1's Caffe converter parses
    clip_param (its own field number, 2202) and refuses the layer. When either learns Clip, add its row."""
    paths, heads, _, _ = tiny_export
    opencv = OpenCVRuntime(
        *paths.deploy_clip, heads["loc_blob"], heads["conf_blob"], heads["settings"]["num_classes"], threads=1
    )
    with pytest.raises(cv2.error, match='type "Clip"'):
        opencv.infer(np.zeros((3, SIZE, SIZE), np.float32))
    with pytest.raises(RuntimeLoadError, match="converter failed"):
        mnn_convert(*paths.heads_clip, tmp_path / "heads.mnn")


def test_a_leaky_relu6_is_not_written_as_clip():
    from ssdlite_coco.common.errors import SsdliteError
    from ssdlite_coco.export.rewrite import relu6_as_clip

    text = 'layer { name: "r" type: "ReLU6" bottom: "x" top: "x" relu6_param { negative_slope: 0.1 } }'
    net = parse_prototxt(text, caffe_pb2.NetParameter())
    with pytest.raises(SsdliteError, match="layer 'r'.*not a Clip"):
        relu6_as_clip(net)
    net.layer[0].relu6_param.negative_slope, net.layer[0].relu6_param.threshold = 0, 4
    assert (relu6_as_clip(net).layer[0].clip_param.max, net.layer[0].type) == (4, "ReLU6")  # a copy
