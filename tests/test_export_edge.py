"""The edge toolchains of the export check (``export.runtimes``: rknn, openvino, ncnn, litert), each in its own
venv (``envs/toolchains/``, made on first use), on the demo's trained net: converted and run by each toolchain as
its docs do, a row per precision with COCO AP from its own outputs, the files a user deploys, outputs fetched by
name, RKNN's INT8 rows; and a model whose outputs are swapped fails the check.

Marked ``edge``: CI runs them (the first run installs the four venvs, about 2.5 minutes and 4.2 GB);
``pytest -m "not edge"`` leaves them out locally.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from tests.support.pycaffe import require_caffe
from tests.support.ssdlite_export import check_settings, settings_arg

require_caffe()
REPO = Path(__file__).resolve().parents[1]

onnx = pytest.importorskip("onnx")

from ssdlite_coco.export.make import ExportPaths  # noqa: E402
from ssdlite_coco.export.preprocess import transform_settings  # noqa: E402
from ssdlite_coco.export.runtime_check import check_runtimes  # noqa: E402
from ssdlite_coco.export.runtimes import OnnxRuntime, ToolchainRuntime  # noqa: E402
from ssdlite_coco.export.stage import split_images  # noqa: E402

pytestmark = pytest.mark.edge

EDGE_ROWS = {
    "RKNN rk3588 simulator (default) + decode_detections": "edge/rknn/default/heads.rknn",
    "OpenVINO CPU (default) + decode_detections": "edge/openvino/default/heads.xml",
    "OpenVINO CPU (fp32) + decode_detections": "edge/openvino/fp32/heads.xml",
    "ncnn (pnnx) (default) + decode_detections": "edge/ncnn/default/heads.ncnn.param",
    "ncnn (pnnx) (fp32) + decode_detections": "edge/ncnn/fp32/heads.ncnn.param",
    "LiteRT (onnx2tf) (default) + decode_detections": "edge/litert/default/tflite/heads_float16.tflite",
    "LiteRT (onnx2tf) (fp32) + decode_detections": "edge/litert/fp32/tflite/heads_float32.tflite",
}


DEMO_INPUTS = {  # the demo run's files the export and INT8 scripts take
    "--deploy-net": "results/model/deploy.prototxt",
    "--test-net": "results/model/test.prototxt",
    "--instances": "results/data/test/instances.json",
    "--images": "results/data/test/images",
    "--labelmap": "results/labelmap/labelmap.prototxt",
}


def _run_script(demo_run: Path, script: str, *args: str) -> None:
    inputs = [str(part) for flag, path in DEMO_INPUTS.items() for part in (flag, demo_run / path)]
    command = [sys.executable, str(REPO / "scripts" / script), *inputs, *args]
    result = subprocess.run(command, cwd=demo_run, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def edge_export(demo_run, tmp_path_factory):
    """The demo's trained net exported again and checked in pycaffe, ONNX Runtime and the four toolchains."""
    out = tmp_path_factory.mktemp("edge") / "export"
    runtimes = ["pycaffe", "onnxruntime", "rknn", "openvino", "ncnn", "litert"]
    train = ["--calibration-instances", str(demo_run / "results/data/trainval/instances.json")]
    train += ["--calibration-images-dir", str(demo_run / "results/data/trainval/images")]
    weights = ["--weights", str(demo_run / "results/train/final.caffemodel")]
    settings = settings_arg(calibration_images=8, latency_runs=2, runtimes=runtimes)
    _run_script(demo_run, "export.py", *weights, *train, "--out-dir", str(out), *settings)
    return out


@pytest.fixture(scope="module")
def rknn_int8(demo_run, edge_export):
    """``export_int8.py`` with an ONNX Runtime variant and two of RKNN's, on that export."""
    out = edge_export.parent / "int8"
    variants = ["onnxruntime/per-channel/minmax", "rknn/per-channel/normal", "rknn/per-tensor/mmse"]
    settings = settings_arg(int8_variants=variants, latency_runs=2)
    _run_script(demo_run, "export_int8.py", "--export-dir", str(edge_export), "--out-dir", str(out), *settings)
    return out


def test_every_edge_toolchain_reproduces_pycaffe(edge_export):
    verify = json.loads((edge_export / "verify.json").read_text())
    reference, rows = verify["rows"][0], {row["runtime"]: row for row in verify["rows"]}
    assert reference["AP50"] > 0.2 and reference["reference_detections"] > 50  # the AP50s below compare something
    assert set(EDGE_ROWS) <= set(rows) and verify["failures"] == []
    for name, model in EDGE_ROWS.items():
        row = rows[name]
        assert row["loads"] and (edge_export / model).is_file() and row["model"].endswith(Path(model).name), row
        assert row["fetch"].startswith("by name") and row["version"] and row["latency"]["runs"] == 2, row
        if row["full_precision"]:  # float32 throughout: the heads equal pycaffe's, the boxes the same
            assert "(fp32)" in name and row["loc_max_difference"] < 1e-3 and row["scores_max_difference"] < 1e-3
            assert row["matched"] == row["reference_detections"] and row["AP50"] == pytest.approx(reference["AP50"])
        else:  # float16 somewhere: the cost shows, within export.reduced_precision_ap_tolerance
            assert "(default)" in name and "16" in row["precision"] and row["loc_max_difference"] > 1e-4, row
            assert abs(row["AP50"] - reference["AP50"]) <= verify["reduced_ap_tolerance"], row
    assert not rows["RKNN rk3588 simulator (default) + decode_detections"]["full_precision"]  # no float32 mode
    table = (edge_export / "verify.md").read_text()
    assert all(f"| {name} |" in table for name in EDGE_ROWS) and "float16" in table


def test_the_converted_models_keep_the_output_names(edge_export):
    layers = [line.split() for line in (edge_export / "edge/ncnn/fp32/heads.ncnn.param").read_text().splitlines()[2:]]
    blobs = {blob for fields in layers for blob in fields[4 : 4 + int(fields[2]) + int(fields[3])]}
    assert {"data", "loc", "scores"} <= blobs and not {"in0", "out0", "out1"} & blobs
    xml = (edge_export / "edge/openvino/fp32/heads.xml").read_text()
    assert re.search(r'names="[^"]*\bloc\b', xml) and re.search(r'names="[^"]*\bscores\b', xml)
    # onnx2tf's sample images written from the export's calibration set: the conversion needs no network
    sample = np.load(edge_export / "edge/litert/fp32/calibration_image_sample_data_20x128x128x3_float32.npy")
    first = np.load(edge_export / "calibration" / "0000.npy")[0]
    assert sample.shape == (8, 300, 300, 3) and np.array_equal(sample[0], first.transpose(1, 2, 0))
    rows = json.loads((edge_export / "verify.json").read_text())["rows"]
    fetch = next(row["fetch"] for row in rows if row["runtime"].startswith("LiteRT (onnx2tf) (fp32)"))
    assert "loc is tensor" in fetch and "scores is tensor" in fetch


def test_rknn_int8_rows_are_compared_with_its_float16_model(rknn_int8):
    result = json.loads((rknn_int8 / "int8.json").read_text())
    rows = {row["variant"]: row for row in result["rows"]}
    assert set(rows) == {
        "onnxruntime/fp32",
        "onnxruntime/per-channel/minmax",
        "rknn/float16",
        "rknn/per-channel/normal",
        "rknn/per-tensor/mmse",
    }, result["rows"]
    base = rows["rknn/float16"]
    assert base["precision"] == "float16" and base["delta_AP"] == 0 and base["model"] == "rknn-float16/heads.rknn"
    for name in ("rknn/per-channel/normal", "rknn/per-tensor/mmse"):
        row = rows[name]
        assert row["precision"] == "int8" and row["delta_AP"] == pytest.approx(row["AP"] - base["AP"]), row
        assert (rknn_int8 / "models" / row["model"]).is_file() and row["model_bytes"] < base["model_bytes"], row
        assert row["loc_max_difference"] > base["loc_max_difference"] and row["matched"] > 0, row
    recipe = json.loads((rknn_int8 / "models/rknn-per-tensor-mmse/recipe.json").read_text())
    assert recipe["config"]["quantized_method"] == "layer" and recipe["config"]["quantized_algorithm"] == "mmse"
    assert len((rknn_int8 / "models/rknn-per-tensor-mmse/dataset.txt").read_text().split()) == 8
    assert "| rknn | INT8 | per-tensor | mmse |" in (rknn_int8 / "int8.md").read_text()


def _swap_outputs(export_dir: Path, out: Path) -> ExportPaths:
    """A copy of the export whose heads.onnx calls loc 'scores' and scores 'loc' (the shapes agree: 4 classes)."""
    shutil.copytree(export_dir, out, ignore=shutil.ignore_patterns("edge"))
    model = onnx.load(str(out / "onnx/heads.onnx"))
    swap = {"loc": "scores", "scores": "loc"}
    for node in model.graph.node:
        node.output[:] = [swap.get(name, name) for name in node.output]
    for value in model.graph.output:
        value.name = swap[value.name]
    onnx.save(model, str(out / "onnx/heads.onnx"))
    return ExportPaths(out)


def test_a_model_with_swapped_outputs_fails_the_check(demo_run, edge_export, tmp_path):
    paths = ExportPaths(edge_export)
    priors, settings = np.load(paths.priors), json.loads(paths.decode.read_text())
    assert settings["num_classes"] == 4  # loc and scores both [1917, 4]: nothing but the names tells them apart
    swapped = _swap_outputs(edge_export, tmp_path / "swapped")
    reference = OnnxRuntime(paths.onnx, priors, settings, 1)
    toolchain = partial(
        ToolchainRuntime, "ncnn", "fp32", swapped.root, swapped.edge("ncnn", "fp32"), priors, settings, 1
    )
    images = split_images(demo_run / "results/data/test/instances.json", demo_run / "results/data/test/images", 4)
    transform = transform_settings(demo_run / "results/model/test.prototxt")
    result = check_runtimes(
        reference,
        {"ncnn swapped": toolchain},
        images,
        transform,
        (300, 300),
        check_settings(latency_runs=1),
    )
    assert result["rows"][1]["loads"], result["rows"][1]
    assert [line.split(" differs")[0] for line in result["failures"]] == [
        "ncnn swapped: output loc",
        "ncnn swapped: output scores",
    ], result["failures"]
