"""Every runtime against pycaffe on the trained net, on real test images: ``verify.json`` and its table.

The reference is pycaffe running the trained deploy net as evaluation knows it (BatchNorm unfolded, no
rewrite). Each runtime row has: whether it loads (the runtime's exact error when not), the largest
difference of ``loc`` and ``scores`` (relative to the reference's magnitude, at least 1; scores are in
[0, 1], so that is absolute), detection agreement (detections above the report threshold, how many of
the reference's it matches with the same label at IoU >= 0.5, their mean IoU), COCO AP and AP50 of its
own detections, and batch-1 latency. ``failures`` lists each runtime and output beyond tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.export.preprocess import preprocess_as

MATCH_IOU = 0.5


class VerifyError(SsdliteError):
    """A runtime disagrees with pycaffe beyond its tolerance; the message names the runtime and output."""


@dataclass
class ImageCase:
    path: Path
    image_id: int | None = None
    height: int = 0
    width: int = 0


@dataclass
class Tally:
    """What one runtime accumulates over the images."""

    loc: float = 0.0
    scores: float = 0.0
    worst_image: dict[str, str] = field(default_factory=dict)
    detections: int = 0
    reference_detections: int = 0
    matched: int = 0
    ious: list[float] = field(default_factory=list)
    coco: list[dict[str, Any]] = field(default_factory=list)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``a`` [N, 4] and ``b`` [M, 4] (xmin ymin xmax ymax)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(inter / (area_a[:, None] + area_b[None, :] - inter))


def match_detections(reference: np.ndarray, rows: np.ndarray, threshold: float) -> tuple[int, int, int, list[float]]:
    """(reference count, runtime count, matched, IoUs) of the rows above ``threshold``, greedy by score."""
    reference = reference[reference[:, 1] >= threshold]
    rows = rows[rows[:, 1] >= threshold]
    taken: set[int] = set()
    ious: list[float] = []
    for ref in reference[np.argsort(-reference[:, 1], kind="stable")]:
        same = [i for i in range(len(rows)) if i not in taken and rows[i, 0] == ref[0]]
        if not same:
            continue
        overlaps = pairwise_iou(ref[None, 2:6], rows[same, 2:6])[0]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= MATCH_IOU:
            taken.add(same[best])
            ious.append(float(overlaps[best]))
    return len(reference), len(rows), len(ious), ious


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(a).max()))) if a.size else 0.0


def tally_image(tally: Tally, reference, outputs, image: ImageCase, threshold: float, to_coco) -> None:
    for name in ("loc", "scores"):
        difference = _relative(getattr(reference, name), getattr(outputs, name))
        if difference > getattr(tally, name):
            setattr(tally, name, difference)
            tally.worst_image[name] = str(image.path)
    ref_count, count, matched, ious = match_detections(reference.rows, outputs.rows, threshold)
    tally.reference_detections += ref_count
    tally.detections += count
    tally.matched += matched
    tally.ious += ious
    if to_coco is not None:
        tally.coco += to_coco(outputs.rows, image)


def run_all(
    runtimes: dict[str, Any], reference, images: list[ImageCase], transform: dict, input_hw, threshold, to_coco
):
    """Feed every image to the reference and every runtime once: a Tally per runtime (and the reference's)."""
    tallies = {name: Tally() for name in runtimes}
    reference_tally = Tally()
    for image in images:
        array = preprocess_as(image.path, transform, input_hw)
        truth = reference.infer(array)
        tally_image(reference_tally, truth, truth, image, threshold, to_coco)
        for name, runtime in runtimes.items():
            tally_image(tallies[name], truth, runtime.infer(array), image, threshold, to_coco)
    return tallies, reference_tally


def row_of(name: str, tally: Tally, score: Callable | None, latency: dict | None) -> dict[str, Any]:
    row = {
        "runtime": name,
        "loads": True,
        "error": None,
        "loc_max_difference": tally.loc,
        "scores_max_difference": tally.scores,
        "worst_image": tally.worst_image,
        "detections": tally.detections,
        "reference_detections": tally.reference_detections,
        "matched": tally.matched,
        "mean_matched_iou": float(np.mean(tally.ious)) if tally.ious else None,
        "latency": latency,
    }
    if score is not None:
        stats = score(tally.coco, name)["stats"]
        row.update(AP=stats["AP"], AP50=stats["AP50"], num_coco_detections=len(tally.coco))
    return row


def failures_of(
    rows: list[dict], reference_row: dict, tolerance: float, ap_tolerance: float, reduced_ap_tolerance: float
) -> list[str]:
    """One line per runtime output beyond tolerance (or runtime that does not load).

    A row in reduced precision (float16, bfloat16: ``full_precision`` false) differs from pycaffe by its
    rounding, so only its AP50 is judged, against ``reduced_ap_tolerance``; its differences are its cost.
    """
    failures = []
    for row in rows:
        name = row["runtime"]
        if not row["loads"]:
            failures.append(f"{name}: does not load the export: {row['error']}")
            continue
        full = row.get("full_precision", True)
        for output in ("loc", "scores") if full else ():
            value = row[f"{output}_max_difference"]
            if not value <= tolerance:
                failures.append(
                    f"{name}: output {output} differs from pycaffe by {value:.3g} (> {tolerance}) "
                    f"on {row['worst_image'].get(output, 'an image')}"
                )
        allowed = ap_tolerance if full else reduced_ap_tolerance
        if "AP50" in row and not abs(row["AP50"] - reference_row["AP50"]) <= allowed:
            failures.append(
                f"{name}: COCO AP50 {row['AP50']:.4f} of its detections differs from pycaffe's "
                f"{reference_row['AP50']:.4f} by more than {allowed}"
                + ("" if full else f" (export.reduced_precision_ap_tolerance; it runs in {row['precision']})")
            )
    return failures


def format_table(rows: list[dict]) -> str:
    """The Markdown table of ``verify.json``'s rows."""
    header = (
        "| runtime | precision | loads | loc diff | scores diff | detections (ref) | matched | mean IoU | AP | AP50 "
        "| median ms |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        if not row["loads"]:
            lines.append(f"| {row['runtime']} | - | no: {row['error']} |" + " |" * 8)
            continue
        iou = row["mean_matched_iou"]
        latency = row.get("latency") or {}
        cells = [
            row["runtime"],
            row.get("precision", "float32"),
            "yes",
            f"{row['loc_max_difference']:.2g}",
            f"{row['scores_max_difference']:.2g}",
            f"{row['detections']} ({row['reference_detections']})",
            str(row["matched"]),
            f"{iou:.6f}" if iou is not None else "-",
            f"{row['AP']:.4f}" if "AP" in row else "-",
            f"{row['AP50']:.4f}" if "AP50" in row else "-",
            f"{latency['median_ms']:.1f}" if latency else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
