"""Deploy export, runtimes: the NumPy decode against DetectionOutput, the 1x1 rewrite, the ONNX heads, the
preprocessing against Caffe's data layer, and the check in pycaffe, OpenCV DNN, MNN and ONNX Runtime (which
can fail) on the generated MobileNetV2-SSDLite and on the upstream SSDLite deploy prototxt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.model_data import make_model_data
from tests.support.pycaffe import require_caffe
from tests.support.ssdlite_export import (
    check_context,
    check_settings,
    export,
    make_model,
    make_ssdlite,
    randomize,
    reference_truth,
)

caffe = require_caffe()
cv2 = pytest.importorskip("cv2")

from ssdlite_coco.caffe_tools.prototxt import format_prototxt, read_net, single_layer  # noqa: E402
from ssdlite_coco.common.config import schema_default  # noqa: E402
from ssdlite_coco.export.decode import caffe_rows, decode_detections  # noqa: E402
from ssdlite_coco.export.make import ExportPaths, make_deploy, make_heads  # noqa: E402
from ssdlite_coco.export.preprocess import preprocess_image, transform_settings  # noqa: E402
from ssdlite_coco.export.rewrite import rewrite_one_by_one_inputs  # noqa: E402
from ssdlite_coco.export.runtime_check import (  # noqa: E402
    check_runtimes,
    runtime_factories,
)
from ssdlite_coco.export.runtimes import PycaffeRuntime  # noqa: E402
from ssdlite_coco.export.verify import ImageCase  # noqa: E402

UPSTREAM_DEPLOY = "reference/upstream/chuanqi305-ssdlite-coco-deploy.prototxt"
OPENCV_1X1_BUG = tuple(int(v) for v in cv2.__version__.split(".")[:2]) >= (4, 7)

DEFAULT_RUNTIMES = schema_default("export.runtimes")


def _detection_output_net(tmp_path: Path, priors: int, classes: int, keep_top_k: int) -> Path:
    text = f"""
layer {{ name: "loc" type: "Input" top: "loc" input_param {{ shape {{ dim: 1 dim: {priors * 4} }} }} }}
layer {{ name: "conf" type: "Input" top: "conf" input_param {{ shape {{ dim: 1 dim: {priors * classes} }} }} }}
layer {{ name: "prior" type: "Input" top: "prior" input_param {{ shape {{ dim: 1 dim: 2 dim: {priors * 4} }} }} }}
layer {{ name: "detection_out" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior"
  top: "detection_out" detection_output_param {{ num_classes: {classes} share_location: true
  background_label_id: 0 nms_param {{ nms_threshold: 0.45 top_k: 40 }} code_type: CENTER_SIZE
  keep_top_k: {keep_top_k} confidence_threshold: 0.2 }} }}
"""
    path = tmp_path / "detection_output.prototxt"
    path.write_text(text)
    return path


def test_caffe_nothing_found_row_is_not_a_detection(tmp_path):
    """An image where no score passes the threshold: Caffe writes [0, -1, -1, ...], which is no detection."""
    priors_count, classes = 20, 3
    net = caffe.Net(str(_detection_output_net(tmp_path, priors_count, classes, 10)), caffe.TEST)
    net.blobs["loc"].data[...] = 0
    scores = np.zeros((priors_count, classes), np.float32)
    scores[:, 0] = 1.0  # every prior is background
    net.blobs["conf"].data[...] = scores.reshape(1, -1)
    boxes = np.tile(np.float32([0.1, 0.1, 0.4, 0.4]), (priors_count, 1))
    net.blobs["prior"].data[...] = np.stack([boxes, np.full_like(boxes, 0.1)]).reshape(1, 2, -1)
    net.forward()
    raw = net.blobs["detection_out"].data.reshape(-1, 7)
    assert raw.tolist() == [[0, -1, -1, -1, -1, -1, -1]]  # Caffe's "nothing found" row
    assert caffe_rows(net.blobs["detection_out"].data).shape == (0, 6)


@pytest.mark.parametrize("keep_top_k", [200, 15])
def test_decode_detections_reproduces_caffe_detection_output(tmp_path, keep_top_k):
    """Clustered priors (NMS has work), scores over the threshold, top_k and keep_top_k both cutting."""
    rng = np.random.default_rng(keep_top_k)
    priors_count, classes = 300, 5
    centres = rng.uniform(0.2, 0.8, (12, 2))[rng.integers(0, 12, priors_count)] + rng.normal(0, 0.02, (priors_count, 2))
    sizes = rng.uniform(0.05, 0.3, (priors_count, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    variances = np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), (priors_count, 1))
    priors = np.stack([boxes, variances])
    loc = rng.normal(0, 1, (priors_count, 4)).astype(np.float32)
    scores = rng.uniform(0, 1, (priors_count, classes)).astype(np.float32) ** 3
    net = caffe.Net(str(_detection_output_net(tmp_path, priors_count, classes, keep_top_k)), caffe.TEST)
    net.blobs["loc"].data[...] = loc.reshape(1, -1)
    net.blobs["conf"].data[...] = scores.reshape(1, -1)
    net.blobs["prior"].data[...] = priors.reshape(1, 2, -1)
    net.forward()
    expected = caffe_rows(net.blobs["detection_out"].data)
    settings = {
        "num_classes": classes,
        "background_label_id": 0,
        "confidence_threshold": 0.2,
        "nms_threshold": 0.45,
        "top_k": 40,
        "keep_top_k": keep_top_k,
        "eta": 1.0,
    }
    got = decode_detections(loc, scores, priors, settings)
    assert len(expected) == 15 if keep_top_k == 15 else len(expected) > 30
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got[:, 0], expected[:, 0])
    np.testing.assert_allclose(got[:, 1:], expected[:, 1:], atol=1e-6)
    settings["nms_threshold"] = 0.9  # the comparison sees a wrong NMS
    wrong = decode_detections(loc, scores, priors, settings)
    assert wrong.shape != expected.shape or not np.allclose(wrong, expected)


def _one_by_one_net(tmp_path: Path) -> tuple[Path, Path]:
    text = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 8 dim: 1 dim: 1 } } }
layer { name: "dw" type: "Convolution" bottom: "data" top: "dw"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 8 engine: CAFFE } }
layer { name: "pw" type: "Convolution" bottom: "dw" top: "pw" convolution_param { num_output: 6 kernel_size: 1 } }
"""
    path = tmp_path / "one.prototxt"
    path.write_text(text)
    net = caffe.Net(str(path), caffe.TEST)
    rng = np.random.default_rng(3)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(0, 1, blob.data.shape)
    net.save(str(tmp_path / "one.caffemodel"))
    return path, tmp_path / "one.caffemodel"


def test_the_centre_tap_rewrite_is_exact_and_what_opencv_needs(tmp_path):
    prototxt, weights = _one_by_one_net(tmp_path)
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    x = np.random.default_rng(4).normal(0, 1, (1, 8, 1, 1)).astype(np.float32)
    net.blobs["data"].data[...] = x
    expected = net.forward()["pw"].copy()
    param = read_net(prototxt)
    params = {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}
    rewrites = rewrite_one_by_one_inputs(param, params, {"data": (1, 8, 1, 1)})
    assert [r.layer for r in rewrites] == ["dw"] and params["dw"][0].shape == (8, 1, 1, 1)
    (tmp_path / "rewritten.prototxt").write_text(format_prototxt(param))
    rewritten = caffe.Net(str(tmp_path / "rewritten.prototxt"), caffe.TEST)
    for name, arrays in params.items():
        for blob, array in zip(rewritten.params[name], arrays, strict=True):
            blob.data[...] = array
    rewritten.blobs["data"].data[...] = x
    np.testing.assert_allclose(rewritten.forward()["pw"], expected, atol=1e-5)
    rewritten.save(str(tmp_path / "rewritten.caffemodel"))
    opencv = cv2.dnn.readNetFromCaffe(str(tmp_path / "rewritten.prototxt"), str(tmp_path / "rewritten.caffemodel"))
    opencv.setInput(x)
    np.testing.assert_allclose(opencv.forward("pw"), expected, atol=1e-4)


def test_preprocess_image_is_what_caffes_data_layer_feeds(tmp_path, coco_mini_dir):
    """The generated test net's data layer (OpenCV linear resize) against preprocess_image, grayscale included."""
    data = make_model_data(tmp_path / "data", coco_mini_dir)
    model = make_model(tmp_path / "model", data.labelmap, data.name_size, data.instances)
    test_net = read_net(model / "test.prototxt")
    layer = single_layer(test_net, "AnnotatedData", "test.prototxt")
    layer.data_param.source, layer.data_param.batch_size = str(data.test_lmdb), 1
    del test_net.layer[:]
    test_net.layer.add().CopyFrom(layer)
    (tmp_path / "data.prototxt").write_text(format_prototxt(test_net))
    net = caffe.Net(str(tmp_path / "data.prototxt"), caffe.TEST)
    transform = transform_settings(model / "test.prototxt")
    assert transform["interpolation"] == "INTER_LINEAR" and transform["resize"]["height"] == 300
    files = {im["id"]: im["file_name"] for im in json.loads(data.instances.read_text())["images"]}
    order = [int(line.split()[0]) for line in data.name_size.read_text().split("\n") if line.strip()]
    for image_id in order:
        net.forward()
        path = coco_mini_dir / "images" / files[image_id]
        ours = preprocess_image(path, 300, 300, transform["mean"], transform["scale"], transform["interpolation"])
        assert np.abs(net.blobs["data"].data[0] - ours).max() <= 1.01 * transform["scale"], path  # <= 1 grey level


@pytest.fixture(scope="module")
def ssdlite(tmp_path_factory, coco_mini_dir):
    return make_ssdlite(tmp_path_factory.mktemp("ssdlite"), coco_mini_dir)


def test_the_export_runs_the_same_in_every_runtime(ssdlite, tmp_path):
    import onnx

    truth = reference_truth(ssdlite, tmp_path / "reference_truth.json")
    result = export(ssdlite, tmp_path / "export", instances=truth)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "export"
    verify = json.loads((out / "verify.json").read_text())
    names = [row["runtime"] for row in verify["rows"]]
    assert names[0] == "pycaffe (trained net)" and len(names) == 8
    assert {"pycaffe Clip", "pycaffe Clip heads + decode_detections"} <= set(names)  # caffe-clip/, ReLU6 as Clip
    assert any(name.startswith("OpenCV DNN 4.") for name in names) and any(n.startswith("MNN") for n in names)
    for row in verify["rows"]:
        assert row["loads"] and row["loc_max_difference"] < 1e-3 and row["scores_max_difference"] < 1e-3, row
        assert abs(row["AP50"] - verify["rows"][0]["AP50"]) <= 0.005 and row["latency"]["runs"] == 2
        assert row["detections"] == row["reference_detections"], row
        # MNN 3.6.1's own DetectionOutput does not cut each class to nms top_k before NMS as Caffe does: where a
        # class has more than top_k candidates (random weights: scores near 1), it keeps other boxes (its heads
        # agree to 1e-5; decode_detections on them matches Caffe's rows exactly)
        wanted = 0.9 * row["reference_detections"] if row["runtime"].startswith("MNN") else row["detections"]
        assert row["matched"] >= wanted, row
    assert verify["rows"][0]["reference_detections"] > 0
    assert verify["rows"][0]["AP50"] > 0.9  # the reference against its own boxes: the AP50s above compare something
    assert [r["kind"] for r in verify["rewrites"]] == ["one_by_one_input", "one_by_one_input"]
    model = onnx.load(str(out / "onnx/heads.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 13 and [o.name for o in model.graph.output] == ["loc", "scores"]
    assert {"Conv", "Clip", "Add", "Transpose", "Flatten", "Concat", "Sigmoid"} <= {n.op_type for n in model.graph.node}
    priors = np.load(out / "caffe-heads/priors.npy")
    assert priors.shape == (2, 1917, 4) and np.allclose(priors[1], [0.1, 0.1, 0.2, 0.2])
    heads = read_net(out / "caffe-heads/heads.prototxt")
    assert not {"PriorBox", "DetectionOutput"} & {layer.type for layer in heads.layer}
    preprocess = json.loads((out / "preprocess.json").read_text())
    assert preprocess["channel_order"] == "BGR" and preprocess["input_shape"] == [1, 3, 300, 300]
    listed = (out / "calibration/list.txt").read_text().splitlines()
    assert len(listed) == 3 and np.load(out / "calibration" / listed[0].split("\t")[0]).shape == (1, 3, 300, 300)
    assert "| MNN 3." in (out / "verify.md").read_text()


@pytest.mark.skipif(not OPENCV_1X1_BUG, reason="OpenCV < 4.7 computes the 1x1-input convolution right")
def test_the_check_fails_naming_opencv_when_the_1x1_rewrite_is_off(ssdlite, tmp_path):
    result = export(ssdlite, tmp_path / "export", "--no-rewrites")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: OpenCV DNN 4.") and "output loc differs from pycaffe" in last, last
    verify = json.loads((tmp_path / "export/verify.json").read_text())
    assert [f.split(":")[0] for f in verify["failures"]] == [
        next(r for r in verify["rows"] if "OpenCV" in r["runtime"])["runtime"]
    ] * len(verify["failures"])


def test_the_upstream_ssdlite_deploy_prototxt_in_every_runtime(shared_dir, ssdlite, tmp_path):
    """The published SSDLite COCO deploy net (TF-style padding slices, duplicate layer names), random weights."""
    _, model, _, images = ssdlite
    upstream = shared_dir / UPSTREAM_DEPLOY
    caffe.set_random_seed(12)
    net = caffe.Net(str(upstream), caffe.TEST)
    randomize(net, 12)
    net.save(str(tmp_path / "upstream.caffemodel"))
    paths = ExportPaths(tmp_path / "export")
    deploy = make_deploy(upstream, tmp_path / "upstream.caffemodel", paths)
    kinds = {r.kind for r in deploy["rewrites"]}
    assert kinds == {"one_by_one_input", "unique_name"}
    heads = make_heads(deploy, paths, str(upstream))
    reference = PycaffeRuntime(upstream, tmp_path / "upstream.caffemodel", heads["loc_blob"], heads["conf_blob"], 91)
    transform = transform_settings(model / "test.prototxt")
    factories = runtime_factories(DEFAULT_RUNTIMES, check_context(paths, heads, tmp_path / "mnn"))
    chosen = [ImageCase(path) for path in sorted(images.iterdir())[:3]]
    result = check_runtimes(reference, factories, chosen, transform, (300, 300), check_settings(latency_runs=2))
    (tmp_path / "upstream_verify.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["rows"], indent=1, default=str))
    assert all(row["loads"] for row in result["rows"]), result["rows"]
    assert result["failures"] == [], result["failures"]
