"""Caffe-SSD's DetectionOutput in pure NumPy: CENTER_SIZE decode, per-class NMS, top-k, keep_top_k.

``decode_detections(loc, scores, priors, settings)`` takes the head-only net's outputs (``loc``
``[num_priors, 4]``, ``scores`` ``[num_priors, num_classes]``, batch dimension optional), the priors
(``[2, num_priors, 4]``: boxes, variances) and DetectionOutput's parameters (``decode.json``) and returns
the rows DetectionOutput writes for one image, ``[label, score, xmin, ymin, xmax, ymax]`` (normalized
to the input), in its order: by label, then by score. The arithmetic follows ``bbox_util.cpp``
(float32 like the layer, the same comparisons and tie order), so rows agree to float rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

F32 = np.float32


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variance_encoded_in_target: bool = False) -> np.ndarray:
    """CENTER_SIZE decode of ``loc`` [P, 4] against ``priors`` [2, P, 4]: boxes [P, 4] (xmin ymin xmax ymax)."""
    loc = np.asarray(loc, F32).reshape(-1, 4)
    boxes, variances = np.asarray(priors, F32)[0], np.asarray(priors, F32)[1]
    if variances.shape != boxes.shape or boxes.shape != loc.shape:
        raise ValueError(f"loc {loc.shape} and priors {np.shape(priors)} do not match")
    if variance_encoded_in_target:
        variances = np.ones_like(variances)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    centre_x = ((boxes[:, 0] + boxes[:, 2]) / F32(2)).astype(F32)
    centre_y = ((boxes[:, 1] + boxes[:, 3]) / F32(2)).astype(F32)
    decoded_x = variances[:, 0] * loc[:, 0] * width + centre_x
    decoded_y = variances[:, 1] * loc[:, 1] * height + centre_y
    decoded_w = (np.exp((variances[:, 2] * loc[:, 2]).astype(np.float64)) * width).astype(F32)
    decoded_h = (np.exp((variances[:, 3] * loc[:, 3]).astype(np.float64)) * height).astype(F32)
    half_w, half_h = decoded_w.astype(np.float64) / 2.0, decoded_h.astype(np.float64) / 2.0
    out = np.stack(
        [decoded_x - half_w, decoded_y - half_h, decoded_x + half_w, decoded_y + half_h],
        axis=1,
    )
    return out.astype(F32)


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return np.where((width < 0) | (height < 0), F32(0), width * height).astype(F32)


def jaccard(box: np.ndarray, others: np.ndarray, size: F32, other_sizes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``others`` as JaccardOverlap (normalized) computes it, in float32."""
    apart = (others[:, 0] > box[2]) | (others[:, 2] < box[0]) | (others[:, 1] > box[3]) | (others[:, 3] < box[1])
    width = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    height = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    overlapping = ~apart & (width > 0) & (height > 0)
    intersection = (width * height).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersection / (size + other_sizes - intersection)
    return np.where(overlapping, iou, F32(0)).astype(F32)


def nms_fast(boxes, scores, score_threshold, nms_threshold: float, eta: float, top_k: int) -> list[int]:
    """ApplyNMSFast: indices kept, in the order kept (score descending, ties by index)."""
    candidates = np.flatnonzero(scores > F32(score_threshold))
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if -1 < top_k < len(order):
        order = order[:top_k]
    chosen = boxes[order]
    sizes = box_sizes(chosen)
    overlaps = (
        np.stack([jaccard(chosen[i], chosen, sizes[i], sizes) for i in range(len(order))]) if len(order) else None
    )
    threshold = F32(nms_threshold)
    kept: list[int] = []
    suppressed = np.zeros(len(order), bool)
    for position in range(len(order)):
        if eta >= 1:  # a fixed threshold: suppressing by each kept box is the same greedy walk, faster
            if not suppressed[position]:
                kept.append(position)
                suppressed |= overlaps[position] > threshold
            continue
        if kept and (overlaps[position, kept] > threshold).any():
            continue
        kept.append(position)
        if threshold > 0.5:
            threshold = F32(threshold * F32(eta))
    return [int(order[position]) for position in kept]


def decode_detections(loc, scores, priors, settings: Mapping[str, Any]) -> np.ndarray:
    """DetectionOutput's rows for one image: ``[N, 6]`` float32 ``label, score, xmin, ymin, xmax, ymax``."""
    scores = np.asarray(scores, F32)
    scores = scores.reshape(-1, scores.shape[-1])
    boxes = decode_boxes(loc, priors, settings.get("variance_encoded_in_target", False))
    threshold = settings.get("confidence_threshold")
    threshold = -np.finfo(F32).max if threshold is None else threshold
    kept: dict[int, list[int]] = {}
    for label in range(settings["num_classes"]):
        if label == settings.get("background_label_id", 0):
            continue
        column = np.ascontiguousarray(scores[:, label])
        if settings.get("nms", True):
            kept[label] = nms_fast(
                boxes, column, threshold, settings["nms_threshold"], settings.get("eta", 1.0), settings["top_k"]
            )
        else:
            kept[label] = list(range(len(column)))
    keep_top_k = settings.get("keep_top_k", -1)
    if -1 < keep_top_k < sum(len(indices) for indices in kept.values()):
        pairs = [(scores[index, label], label, index) for label, indices in kept.items() for index in indices]
        pairs.sort(key=lambda pair: -pair[0])  # stable: equal scores keep label, then NMS order
        kept = {}
        for _, label, index in pairs[:keep_top_k]:
            kept.setdefault(label, []).append(index)
    rows = [[label, scores[index, label], *boxes[index]] for label in sorted(kept) for index in kept[label]]
    return np.asarray(rows, F32).reshape(-1, 6)


def caffe_rows(detection_out: np.ndarray) -> np.ndarray:
    """DetectionOutput's ``[1, 1, N, 7]`` (image, label, score, box) as ``[N, 6]`` detections.

    When it finds nothing, Caffe writes one row per image of the batch: the image's index followed by six -1;
    those rows (label -1) are not detections.
    """
    rows = np.asarray(detection_out, F32).reshape(-1, 7)
    return rows[rows[:, 1] >= 0][:, 1:].copy()
