"""Report figures: loss curve, mAP table and detections drawn on real test images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssdlite_coco.common.settings import parse_settings
from ssdlite_coco.evaluate.coco_scoring import score_detections, write_metrics
from ssdlite_coco.report.figures import ReportError, detection_grid, metrics_html, plot_loss
from ssdlite_coco.report.settings import DetectionGridSettings
from ssdlite_coco.train.log import write_log_csv

REPO = Path(__file__).resolve().parents[1]


def grid_settings(**keys) -> DetectionGridSettings:
    """The detection grid's settings with these keys of the `evaluate` section (the others at their defaults)."""
    return parse_settings(DetectionGridSettings, json.dumps(keys))


@pytest.fixture()
def inputs(tmp_path, coco_mini_dir):
    rows = [
        {"iteration": i, "loss": 10 * 0.98**i, "learning_rate": 0.01 if i < 50 else 0.001, "detection_eval": np.nan}
        for i in range(100)
    ]
    rows += [{"iteration": i, "loss": np.nan, "learning_rate": np.nan, "detection_eval": i / 1000} for i in (50, 100)]
    write_log_csv(rows, tmp_path / "train_log.csv")
    instances = coco_mini_dir / "annotations" / "instances_mini.json"
    gt = json.loads(instances.read_text())
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.8}
        for a in gt["annotations"]
        if not a.get("iscrowd", 0)
    ]
    (tmp_path / "detections.json").write_text(json.dumps(detections))
    metrics = score_detections(instances, detections)
    metrics["detection_eval"] = 0.125
    write_metrics(metrics, tmp_path / "metrics.json")
    return tmp_path, instances, coco_mini_dir / "images"


def test_figures_are_drawn(inputs):
    folder, instances, images = inputs
    plot_loss(folder / "train_log.csv", folder / "loss.png")
    metrics_html(folder / "metrics.json", folder / "metrics.html")
    six = grid_settings(report_images=6)
    detection_grid(folder / "detections.json", instances, images, folder / "detections.jpg", six)
    with Image.open(folder / "loss.png") as loss:
        assert loss.format == "PNG" and loss.width > 400
        pixels = np.asarray(loss.convert("RGB")).reshape(-1, 3).astype(int)
    for colour in ((31, 119, 180), (255, 127, 14)):  # the smoothed loss (C0) and the learning rate (C1) are drawn
        assert (np.abs(pixels - colour).sum(axis=1) < 30).sum() > 300, colour  # axis labels alone: < 60
    strict = grid_settings(report_images=6, report_score_threshold=0.9)  # every detection scores 0.8: none drawn
    detection_grid(folder / "detections.json", instances, images, folder / "none.jpg", strict)

    def red_pixels(path):
        with Image.open(path) as grid:
            assert grid.format == "JPEG" and grid.width > 600
            pixels = np.asarray(grid.convert("RGB")).reshape(-1, 3).astype(int)
        return int(((pixels[:, 0] > 180) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)).sum())

    assert red_pixels(folder / "detections.jpg") > 3 * red_pixels(folder / "none.jpg") + 100
    page = (folder / "metrics.html").read_text()
    assert "<table>" in page and "person" in page and "0.125" in page and "AP50" in page


def test_plot_report_script_and_a_missing_input(inputs, tmp_path):
    folder, instances, images = inputs
    command = [
        sys.executable,
        str(REPO / "scripts" / "plot_report.py"),
        "--train-log",
        str(folder / "train_log.csv"),
        "--metrics",
        str(folder / "metrics.json"),
        "--detections",
        str(folder / "detections.json"),
        "--instances",
        str(instances),
        "--images",
        str(images),
        "--loss-png",
        str(tmp_path / "out/loss.png"),
        "--metrics-html",
        str(tmp_path / "out/metrics.html"),
        "--detections-image",
        str(tmp_path / "out/detections.jpg"),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["detections.jpg", "loss.png", "metrics.html"]
    command[command.index("--metrics") + 1] = str(tmp_path / "missing.json")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "missing.json" in result.stderr
    with pytest.raises(ReportError, match="lists no images"):
        empty = tmp_path / "empty.json"
        empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
        detection_grid(folder / "detections.json", empty, images, tmp_path / "x.jpg", grid_settings())


def _int8_result(fp32_ap: float, int8_ap: float) -> dict:
    from ssdlite_coco.export.int8_table import verdict_of

    def row(variant, runtime, precision, ap, ms):
        weights, calibration = ("-", "-") if precision == "fp32" else variant.split("/")[1:]
        return {
            "variant": variant, "runtime": runtime, "precision": precision, "weights": weights,
            "calibration": calibration, "AP": ap, "AP50": ap + 0.2, "delta_AP": ap - fp32_ap,
            "latency": {"median_ms": ms}, "model_bytes": 3_000_000 if precision == "int8" else 12_000_000,
        }  # fmt: skip

    rows = [row("onnxruntime/fp32", "onnxruntime", "fp32", fp32_ap, 14.0)]
    rows.append(row("onnxruntime/per-tensor/minmax", "onnxruntime", "int8", int8_ap, 18.0))
    layers = {"onnxruntime/per-tensor/minmax": [{"layer": "conv/depthwise", "op": "Conv", "relative_error": 2.0,
                                                 "added_error": 1.9}]}  # fmt: skip
    return {
        "rows": rows, "layers": layers, "max_ap_drop": 0.01, "images": 60, "calibration": {"images": 32},
        "threads": 1, "latency": "batch 1", "machine": {"cpu": "a CPU", "cores": 2},
        "verdict": verdict_of(rows, layers, 0.01),
    }  # fmt: skip


def test_the_int8_page_and_plot_show_the_table_and_the_verdict(tmp_path):
    from ssdlite_coco.report.export_pages import int8_html, plot_int8

    for name, int8_ap in (("over", 0.13), ("within", 0.369)):
        (tmp_path / f"{name}.json").write_text(json.dumps(_int8_result(0.37, int8_ap)))
        int8_html(tmp_path / f"{name}.json", tmp_path / f"{name}.html")
        plot_int8(tmp_path / f"{name}.json", tmp_path / f"{name}.png")
        assert Image.open(tmp_path / f"{name}.png").size[0] > 400
    over, within = (tmp_path / "over.html").read_text(), (tmp_path / "within.html").read_text()
    assert "class='warning'" in over and "costs more than export.int8_max_ap_drop" in over and "-0.2400" in over
    assert "class='warning'" not in within and "is within export.int8_max_ap_drop" in within
    assert "conv/depthwise" in over and "per-tensor" in over and "3.00" in over
    with pytest.raises(ReportError, match="missing.json: cannot read the INT8 results"):
        int8_html(tmp_path / "missing.json", tmp_path / "x.html")
