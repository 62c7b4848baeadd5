"""Portable names: every name in ``heads.onnx`` and in the INT8 ONNX models made from it is ``[A-Za-z0-9_./-]``
(one vendor importer refuses Caffe's in-place outputs as ``conv1#1``), unique, and the graph still computes
what pycaffe does, with its input and outputs named ``data``, ``loc`` and ``scores``."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.support.pycaffe import require_caffe
from tests.support.tiny_ssd import SIZE, trained_like_deploy

caffe = require_caffe()
onnx = pytest.importorskip("onnx")

from caffe.proto import caffe_pb2  # noqa: E402

from ssdlite_coco.caffe_tools.prototxt import parse_prototxt  # noqa: E402
from ssdlite_coco.export.make import ExportPaths, blob_shapes, make_deploy, make_heads  # noqa: E402
from ssdlite_coco.export.onnx_heads import heads_onnx_model  # noqa: E402
from ssdlite_coco.export.quantize import Variant, quantize_onnx  # noqa: E402
from ssdlite_coco.export.runtimes import CaffeHeadsRuntime, OnnxRuntime  # noqa: E402

PORTABLE = re.compile(r"^[A-Za-z0-9_./-]+$")


def graph_names(model) -> dict[str, list[str]]:
    """Every name in ``model``'s graph, by where it is (shape inference first, for the value_info)."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    return {
        "input": [value.name for value in graph.input],
        "output": [value.name for value in graph.output],
        "value_info": [value.name for value in graph.value_info],
        "initializer": [tensor.name for tensor in graph.initializer],
        "node": [node.name for node in graph.node],
        "node input": [name for node in graph.node for name in node.input if name],  # "": an omitted input
        "node output": [name for node in graph.node for name in node.output],
    }


def assert_portable_and_unique(model) -> dict[str, list[str]]:
    names = graph_names(model)
    assert names["value_info"], "shape inference gave no value_info to check"
    bad = [(where, name) for where, found in names.items() for name in found if not PORTABLE.match(name)]
    assert bad == [], bad[:20]
    tensors = names["initializer"] + names["node output"]
    assert len(set(tensors)) == len(tensors), "a tensor name is written twice"
    assert len(set(names["node"])) == len(names["node"]), "two nodes share a name"
    return names


def _relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))


def test_the_exported_heads_and_their_int8_models_have_portable_names(tmp_path):
    prototxt, weights = trained_like_deploy(tmp_path, seed=7, variance=(0.3, 3.0), scale=(0.5, 1.5), bias=(0.0, 0.1))
    paths = ExportPaths(tmp_path / "export")
    heads = make_heads(make_deploy(prototxt, weights, paths), paths, str(prototxt))
    names = assert_portable_and_unique(onnx.load(str(paths.onnx)))
    assert names["input"] == ["data"] and names["output"] == ["loc", "scores"]
    # the folded convolutions' in-place ReLU6 outputs (conv1#1 before)
    assert {"conv1", "conv1.1", "conv4", "conv4.1"} <= set(names["node output"])

    rng = np.random.default_rng(8)
    arrays = [rng.normal(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32) for _ in range(3)]
    reference = CaffeHeadsRuntime(*paths.heads, heads["priors"], heads["settings"])
    exported = OnnxRuntime(paths.onnx, heads["priors"], heads["settings"], threads=1)
    for array in arrays:
        expected, got = reference.infer(array[0]), exported.infer(array[0])
        assert _relative_difference(got.loc, expected.loc) < 1e-4
        assert _relative_difference(got.scores, expected.scores) < 1e-4
        assert got.rows.shape == expected.rows.shape

    int8 = tmp_path / "int8.onnx"
    quantize_onnx(paths.onnx, int8, arrays, Variant("onnxruntime", "per-channel", "minmax"))
    int8_names = assert_portable_and_unique(onnx.load(str(int8)))
    assert int8_names["input"] == ["data"] and int8_names["output"] == ["loc", "scores"]
    assert any(name.endswith("_quantized") for name in int8_names["initializer"])
    quantized = OnnxRuntime(int8, heads["priors"], heads["settings"], threads=1).infer(arrays[0][0])
    assert quantized.scores.shape == expected.scores.shape and np.isfinite(quantized.scores).all()


ODD_NAMES = """name: "odd names #1"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "Conv" type: "Convolution" bottom: "data" top: "Conv" convolution_param { num_output: 4 kernel_size: 3
  pad: 1 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "Conv/relu" type: "ReLU6" bottom: "Conv" top: "Conv" }
layer { name: "Conv_1" type: "Convolution" bottom: "Conv" top: "Conv_1" convolution_param { num_output: 4
  kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "dot" type: "Convolution" bottom: "Conv_1" top: "Conv.1" convolution_param { num_output: 2
  kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "feat:0" type: "Convolution" bottom: "Conv.1" top: "feat:0 #a" convolution_param { num_output: 2
  kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "feat:0/sigmoid" type: "Sigmoid" bottom: "feat:0 #a" top: "feat:0 #a" }
layer { name: "loc" type: "Reshape" bottom: "Conv_1" top: "loc" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "loc/relu" type: "ReLU" bottom: "loc" top: "loc" relu_param { negative_slope: 0.1 } }
layer { name: "scores" type: "Reshape" bottom: "feat:0 #a" top: "scores"
  reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }
"""


def test_names_stay_unique_when_caffe_blobs_look_like_the_renamed_ones():
    """``Conv_1`` and ``Conv.1`` are blobs of their own, ``loc`` is written twice, names have ``:``, `` `` and ``#``."""
    param = parse_prototxt(ODD_NAMES, caffe_pb2.NetParameter(), "ODD_NAMES")
    shapes, net = blob_shapes(param)
    params = {name: [blob.data.copy() for blob in blobs] for name, blobs in net.params.items()}
    model = heads_onnx_model(param, params, shapes)
    onnx.checker.check_model(model, full_check=True)
    names = assert_portable_and_unique(model)
    assert names["node output"] == [
        *("Conv", "Conv.2", "Conv_1", "Conv.1", "feat_0__a", "feat_0__a.1", "loc.1", "loc", "scores")
    ]
    assert names["input"] == ["data"] and names["output"] == ["loc", "scores"]
    assert "feat_0/weight" in names["initializer"] and "feat_0/Conv" in names["node"]

    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    array = np.random.default_rng(9).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    net.blobs["data"].data[...] = array
    net.forward()
    loc, scores = session.run(["loc", "scores"], {"data": array})
    np.testing.assert_allclose(loc, net.blobs["loc"].data, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, net.blobs["scores"].data, rtol=1e-5, atol=1e-5)
