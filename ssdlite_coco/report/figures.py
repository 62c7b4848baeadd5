"""Figures and tables of the Snakemake report: loss curve, mAP table, detections drawn on test images."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

from ssdlite_coco.common.atomic import atomic_path, atomic_write_text
from ssdlite_coco.report.html_page import ReportError, fmt, html_page
from ssdlite_coco.report.settings import DetectionGridSettings


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, out_path: str | os.PathLike, dpi: int = 110) -> None:
    """PNG, or JPEG where the name ends in .jpg (photos: a tenth of the size in the HTML report)."""
    photo = str(out_path).lower().endswith((".jpg", ".jpeg"))
    with atomic_path(out_path) as tmp:
        if photo:
            figure.savefig(tmp, format="jpg", dpi=dpi, bbox_inches="tight", pil_kwargs={"quality": 85})
        else:
            figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def plot_loss(train_log_csv: str | os.PathLike, out_png: str | os.PathLike, smooth: int = 20) -> None:
    """Training loss (raw and running mean), learning rate and the test nets' detection_eval over iterations."""
    import pandas as pd

    plt = pyplot()
    try:
        frame = pd.read_csv(train_log_csv)
    except (OSError, ValueError) as error:
        raise ReportError(f"{train_log_csv}: cannot read the training log CSV ({error})") from None
    figure, (loss_axis, eval_axis) = plt.subplots(
        2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    losses = frame.dropna(subset=["loss"])
    if not losses.empty:
        loss_axis.plot(losses.iteration, losses.loss, color="0.75", linewidth=0.8, label="loss")
        window = max(1, min(smooth, len(losses) // 5 or 1))
        loss_axis.plot(
            losses.iteration,
            losses.loss.rolling(window, min_periods=1).mean(),
            color="C0",
            label=f"running mean ({window})",
        )
        rate_axis = loss_axis.twinx()
        rate_axis.plot(losses.iteration, losses.learning_rate, color="C1", linewidth=1, label="learning rate")
        rate_axis.set_ylabel("learning rate", color="C1")
    loss_axis.set_ylabel("training loss")
    loss_axis.legend(loc="upper right")
    loss_axis.set_title("Training")
    tests = frame.dropna(subset=["detection_eval"])
    if not tests.empty:
        eval_axis.plot(tests.iteration, tests.detection_eval, "o-", color="C2")
    eval_axis.set_ylabel("detection_eval\n(VOC AP@0.5)")
    eval_axis.set_xlabel("iteration")
    eval_axis.grid(alpha=0.3)
    save_figure(figure, out_png)
    plt.close(figure)


def metrics_html(metrics_json: str | os.PathLike, out_html: str | os.PathLike) -> None:
    """A self-contained HTML page: the 12 COCO numbers, Caffe's detection_eval and the AP of every class."""
    try:
        metrics = json.loads(Path(metrics_json).read_text())
    except (OSError, ValueError) as error:
        raise ReportError(f"{metrics_json}: cannot read the metrics JSON ({error})") from None
    stats = metrics["stats"]
    head = "".join(f"<th>{html.escape(name)}</th>" for name in stats)
    values = "".join(f"<td>{fmt(value)}</td>" for value in stats.values())
    classes = "".join(
        f"<tr><td>{row['category_id']}</td><td>{html.escape(row['name'])}</td><td>{fmt(row['AP'])}</td>"
        f"<td>{fmt(row['AP50'])}</td><td>{row['num_gt']}</td></tr>"
        for row in sorted(metrics["per_class"], key=lambda row: -row["AP"])
    )
    body = f"""<h2>COCO bbox metrics ({metrics.get("num_images", "?")} test images,
{metrics.get("num_detections", "?")} detections)</h2>
<table><tr>{head}</tr><tr>{values}</tr></table>
<p>Caffe <code>detection_eval</code> (VOC 11-point AP@0.5, the solver's test metric):
<b>{fmt(metrics.get("detection_eval"))}</b></p>
<h2>AP per class</h2>
<table><tr><th>category id</th><th>name</th><th>AP</th><th>AP50</th><th>ground-truth boxes</th></tr>{classes}</table>
"""
    atomic_write_text(out_html, html_page("mAP", body))


def detection_grid(
    detections_json: str | os.PathLike,
    instances_json: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_image: str | os.PathLike,
    settings: DetectionGridSettings,
    columns: int = 4,
) -> None:
    """Detections scoring at least evaluate.report_score_threshold (red, with class and score) and ground truth
    (green) on the first evaluate.report_images test images."""
    from PIL import Image

    plt = pyplot()
    try:
        detections = json.loads(Path(detections_json).read_text())
        instances = json.loads(Path(instances_json).read_text())
    except (OSError, ValueError) as error:
        raise ReportError(f"cannot read {detections_json} or {instances_json}: {error}") from None
    names = {category["id"]: category["name"] for category in instances["categories"]}
    images = sorted(instances["images"], key=lambda image: image["id"])[: settings.report_images]
    if not images:
        raise ReportError(f"{instances_json}: lists no images to draw")
    by_image: dict[int, list] = {}
    for det in detections:
        if det["score"] >= settings.report_score_threshold:
            by_image.setdefault(det["image_id"], []).append(det)
    truth: dict[int, list] = {}
    for ann in instances.get("annotations", []):
        truth.setdefault(ann["image_id"], []).append(ann)
    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, images, strict=False):
        path = Path(images_dir) / image["file_name"]
        try:
            with Image.open(path) as opened:
                axis.imshow(opened.convert("RGB"))
        except OSError as error:
            raise ReportError(f"{path}: cannot open test image ({error})") from None
        for ann in truth.get(image["id"], []):
            x, y, w, h = ann["bbox"]
            axis.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1))
        shown = sorted(by_image.get(image["id"], []), key=lambda det: -det["score"])[:20]
        for det in shown:
            x, y, w, h = det["bbox"]
            axis.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor="red", linewidth=1.5))
            axis.text(
                x,
                y,
                f"{names.get(det['category_id'], det['category_id'])} {det['score']:.2f}",
                color="white",
                fontsize=7,
                va="bottom",
                bbox={"facecolor": "red", "alpha": 0.7, "pad": 1},
            )
        axis.set_title(f"image {image['id']}: {len(shown)} detections", fontsize=9)
    threshold = float(settings.report_score_threshold)  # 1.0, not 1, for a config's 1 (as the flag printed it)
    figure.suptitle(f"Detections with score >= {threshold} (red) and ground truth (green)")
    save_figure(figure, out_image, dpi=90)
    plt.close(figure)
