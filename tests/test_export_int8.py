"""INT8: the variants, the per-layer error, the verdict, and the rule on the demo run (its table, its models,
its FP32 row equal to the export check's, and a bad calibration made visible)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssdlite_coco.export.int8_table import verdict_of
from ssdlite_coco.export.layer_error import layer_errors
from ssdlite_coco.export.quantize import Int8Error, Variant, quantize_onnx, write_calibration_images

SCHEMA = Path(__file__).resolve().parents[1] / "config/schema.yaml"


def test_every_variant_of_the_schema_parses_and_a_wrong_one_is_refused():
    export = yaml.safe_load(SCHEMA.read_text())["properties"]["export"]["properties"]
    names = export["int8_variants"]["items"]["enum"]
    assert [Variant.parse(name).name for name in names] == names
    assert len({Variant.parse(name).file_name for name in names}) == len(names)
    for wrong in ("onnxruntime/per-channel/kl", "mnn/per-tensor/kl", "tflite/per-channel/minmax", "minmax"):
        with pytest.raises(Int8Error, match="export.int8_variants"):
            Variant.parse(wrong)


def _row(variant: str, ap: float, fp32_ap: float, ms: float = 10.0) -> dict:
    precision = "fp32" if variant.endswith("fp32") else "int8"
    return {
        "variant": variant,
        "precision": precision,
        "AP": ap,
        "delta_AP": ap - fp32_ap,
        "latency": {"median_ms": ms},
    }


def test_the_verdict_names_the_variants_over_budget_and_the_layers():
    rows = [_row("onnxruntime/fp32", 0.40, 0.40), _row("a", 0.395, 0.40), _row("b", 0.30, 0.40)]
    layers = {"b": [{"layer": "conv_9"}, {"layer": "conv_3"}]}
    verdict = verdict_of(rows, layers, 0.01)
    assert verdict["over_budget"] == ["b"] and verdict["best"] == "a"
    assert "0.4000 -> 0.3000 AP (-0.1000)" in verdict["message"] and "conv_9, conv_3" in verdict["message"]
    within = verdict_of(rows[:2], {}, 0.01)
    assert within["over_budget"] == [] and "within export.int8_max_ap_drop" in within["message"]
    assert "no variant is within" in verdict_of([rows[0], rows[2]], layers, 0.01)["message"]


def _two_conv_model(path: Path, outlier: float) -> None:
    """input -> conv_a (3x3) -> Relu -> conv_b (1x1) -> output; conv_a's channel 0 is always 0 and conv_b's
    weight from it to its output channel 0 is ``outlier``: no output grows, but one weight sets a per-tensor scale."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight_a = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    weight_b = rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32)
    weight_a[0] = 0.0
    weight_b[0, 0] = outlier
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["data", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a"], ["a_relu"], name="relu_a"),
            helper.make_node("Conv", ["a_relu", "wb"], ["out"], name="conv_b"),
        ],
        "two_convs",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 16, 16])],
        [numpy_helper.from_array(weight_a, "wa"), numpy_helper.from_array(weight_b, "wb")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_per_tensor_weights_lose_the_small_channels_next_to_an_outlier_and_the_layer_error_names_it(tmp_path):
    model = tmp_path / "fp32.onnx"
    _two_conv_model(model, outlier=100.0)
    rng = np.random.default_rng(1)
    arrays = [rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    errors = {}
    for granularity in ("per-channel", "per-tensor"):
        int8 = tmp_path / f"{granularity}.onnx"
        quantize_onnx(model, int8, arrays, Variant("onnxruntime", granularity, "minmax"))
        rows = layer_errors(model, int8, arrays)
        # The quantizer folds the Relu into conv_a: their output is one quantized tensor, one row.
        assert {row["layer"] for row in rows} == {"conv_a + relu_a", "conv_b"}, rows
        assert all(np.isfinite(row["relative_error"]) and row["relative_error"] >= 0 for row in rows)
        errors[granularity] = {row["layer"]: row for row in rows}
        assert not list(tmp_path.glob(".*tmp-*")), "a temporary file was left behind"
    # One outlier channel sets the per-tensor scale: the other channels' weights round to a few levels.
    assert rows[0]["layer"] == "conv_b", rows
    assert errors["per-tensor"]["conv_b"]["added_error"] > 3 * errors["per-channel"]["conv_b"]["added_error"]
    assert errors["per-channel"]["conv_a + relu_a"]["relative_error"] < 0.05


@pytest.mark.parametrize(("activations", "dtype"), [("int8", np.int8), ("uint8", np.uint8)])
def test_the_activation_type_is_the_one_asked_for(tmp_path, activations, dtype):
    import onnx
    from onnx import numpy_helper

    model, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    _two_conv_model(model, outlier=1.0)
    arrays = [np.random.default_rng(3).normal(0, 1, (1, 3, 16, 16)).astype(np.float32)]
    quantize_onnx(model, int8, arrays, Variant("onnxruntime", "per-channel", "minmax"), activations)
    graph = onnx.load(str(int8)).graph
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    zero_points = [constants[node.input[2]] for node in graph.node if node.op_type == "QuantizeLinear"]
    assert zero_points and all(point.dtype == dtype for point in zero_points)


def test_calibration_arrays_become_the_8bit_images_they_were_made_from(tmp_path):
    import cv2

    from ssdlite_coco.export.preprocess import preprocess_image

    rng = np.random.default_rng(2)
    source = tmp_path / "source.png"
    cv2.imwrite(str(source), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    mean, scale = [104.0, 117.0, 123.0], 0.017
    array = preprocess_image(source, 20, 24, mean, scale)
    write_calibration_images([array[None]], mean, scale, tmp_path / "images")
    assert np.array_equal(cv2.imread(str(tmp_path / "images/0000.png")), cv2.imread(str(source)))


# --- the rule on the demo run -------------------------------------------------------------------


def _int8(workdir: Path) -> dict:
    return json.loads((workdir / "results/export/int8/int8.json").read_text())


@pytest.mark.slow
def test_the_demo_int8_table_is_complete_and_its_fp32_row_is_the_export_checks(demo_run):
    result = _int8(demo_run)
    config = yaml.safe_load((demo_run / "results/config.effective.yaml").read_text())["export"]
    variants = [row["variant"] for row in result["rows"]]
    assert set(variants) == {*config["int8_variants"], "onnxruntime/fp32", "mnn/fp32"}, variants
    for row in result["rows"]:
        assert 0 <= row["AP"] <= 1 and row["latency"]["median_ms"] > 0 and row["model_bytes"] > 0, row
        assert (demo_run / "results/export/int8/models" / row["model"]).is_file() or row["variant"].endswith("fp32")
    verify = json.loads((demo_run / "results/export/verify.json").read_text())
    onnx_check = next(row for row in verify["rows"] if row["runtime"].startswith("ONNX Runtime"))
    fp32 = next(row for row in result["rows"] if row["variant"] == "onnxruntime/fp32")
    assert (fp32["AP"], fp32["AP50"]) == (onnx_check["AP"], onnx_check["AP50"])
    assert fp32["loc_max_difference"] == 0 and fp32["matched"] == fp32["fp32_detections"]
    mnn = next(row for row in result["rows"] if row["variant"] == "mnn/fp32")
    assert abs(mnn["AP"] - fp32["AP"]) <= 0.005, (mnn["AP"], fp32["AP"])
    int8 = [row for row in result["rows"] if row["precision"] == "int8"]
    assert all(row["model_bytes"] < 0.5 * fp32["model_bytes"] for row in int8 if row["runtime"] == "onnxruntime")
    assert set(result["layers"]) == {v for v in config["int8_variants"] if v.startswith("onnxruntime")}
    assert all(len(layers) == 10 for layers in result["layers"].values())
    table = (demo_run / "results/export/int8/int8.md").read_text()
    assert all(f"| {row['weights']} | {row['calibration']} |" in table for row in int8)
    assert result["verdict"]["message"] in (demo_run / "results/report/int8.html").read_text().replace("&gt;", ">")
    assert (demo_run / "results/report/int8.png").stat().st_size > 0


@pytest.mark.slow
def test_the_quantized_models_load_and_run_in_their_runtimes(demo_run):
    from ssdlite_coco.export.runtimes import MnnHeadsRuntime, OnnxRuntime

    export = demo_run / "results/export"
    priors = np.load(export / "caffe-heads/priors.npy")
    settings = json.loads((export / "caffe-heads/decode.json").read_text())
    array = np.load(export / "calibration/0000.npy")[0]
    for row in _int8(demo_run)["rows"]:
        if row["precision"] != "int8":
            continue
        runtime = MnnHeadsRuntime if row["runtime"] == "mnn" else OnnxRuntime
        outputs = runtime(export / "int8/models" / row["model"], priors, settings, 1).infer(array)
        assert outputs.loc.shape == (priors.shape[1], 4) and np.isfinite(outputs.scores).all(), row["variant"]


@pytest.mark.slow
def test_a_constant_calibration_image_makes_the_drop_visible_and_the_rule_says_so(demo_run, tmp_path):
    bad = tmp_path / "calibration"
    bad.mkdir()
    np.save(bad / "0000.npy", np.zeros_like(np.load(demo_run / "results/export/calibration/0000.npy")))
    (bad / "list.txt").write_text("0000.npy\tconstant\n")
    out = tmp_path / "int8"
    command = [
        "scripts/logged",
        str(tmp_path / "int8.log"),
        "scripts/with-caffe",
        "export_int8.py",
        *("--export-dir", "results/export", "--deploy-net", "results/model/deploy.prototxt"),
        *("--test-net", "results/model/test.prototxt", "--instances", "results/data/test/instances.json"),
        *("--images", "results/data/test/images", "--labelmap", "results/labelmap/labelmap.prototxt"),
        *("--out-dir", str(out), "--calibration", str(bad)),
        *("--settings", json.dumps({"int8_variants": ["onnxruntime/per-channel/minmax", "mnn/per-channel/kl"]})),
    ]
    env = dict(os.environ, PATH=f"{demo_run / 'scripts'}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(command, cwd=demo_run, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr + (tmp_path / "int8.log").read_text()[-3000:]
    summary = json.loads((out / "int8.json").read_text())
    good = {row["variant"]: row for row in _int8(demo_run)["rows"]}
    for row in summary["rows"]:
        if row["precision"] == "int8":
            assert row["delta_AP"] < -summary["max_ap_drop"], row["variant"]
            assert row["AP"] < good[row["variant"]]["AP"], row["variant"]
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warning and "INT8 costs more than export.int8_max_ap_drop (0.01 AP) for 2 of 2 variants" in warning[0]
    assert "the layers that add the most error in" in warning[0]
