"""Caffe's ``detection_eval`` mAP from DetectionEvaluate rows, exactly as ``Solver::TestDetection`` computes it.

``DetectionEvaluate`` rows are ``[item, label, score, tp, fp]`` plus one ``[-1, label, num_pos, -1, -1]`` row
per class; ``DetectionEvalAccumulator`` collects the rows of many batches and ``compute_ap`` is Caffe's
``ComputeAP`` in float32 arithmetic, so the result matches ``caffe train``'s ``detection_eval``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


def compute_ap(
    true_pos: list[tuple[float, int]], false_pos: list[tuple[float, int]], num_pos: int, ap_version: str = "11point"
) -> float:
    """Average precision of one class as Caffe's ``ComputeAP`` computes it (float32 arithmetic)."""
    if len(true_pos) != len(false_pos):
        raise ValueError("true_pos and false_pos must have the same length")
    if not true_pos or num_pos == 0:
        return 0.0
    f32 = np.float32
    # std::stable_sort by descending score
    tp = [flag for _, flag in sorted(true_pos, key=lambda pair: -pair[0])]
    fp = [flag for _, flag in sorted(false_pos, key=lambda pair: -pair[0])]
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
    # float32 values (Caffe's vector<float>), compared as doubles like `(*rec)[i] < j / 10.`
    prec = [float(f32(t) / f32(t + f)) for t, f in zip(tp_cum, fp_cum, strict=True)]
    rec = [float(f32(t) / f32(num_pos)) for t in tp_cum]
    num = len(tp)
    ap = f32(0)
    if ap_version == "11point":
        max_precs = [0.0] * 11
        start = num - 1
        for j in range(10, -1, -1):
            for i in range(start, -1, -1):
                if rec[i] < j / 10.0:
                    start = i
                    if j > 0:
                        max_precs[j - 1] = max_precs[j]
                    break
                if max_precs[j] < prec[i]:
                    max_precs[j] = prec[i]
        for j in range(10, -1, -1):
            ap += f32(max_precs[j]) / f32(11)
    elif ap_version == "MaxIntegral":
        cur_rec, cur_prec = rec[-1], prec[-1]
        for i in range(num - 2, -1, -1):
            cur_prec = max(prec[i], cur_prec)
            if abs(f32(cur_rec) - f32(rec[i])) > 1e-6:
                ap += f32(cur_prec) * abs(f32(cur_rec) - f32(rec[i]))
            cur_rec = rec[i]
        ap += f32(cur_rec) * f32(cur_prec)
    elif ap_version == "Integral":
        prev_rec = f32(0)
        for i in range(num):
            if abs(f32(rec[i]) - prev_rec) > 1e-6:
                ap += f32(prec[i]) * abs(f32(rec[i]) - prev_rec)
            prev_rec = f32(rec[i])
    else:
        raise ValueError(f"unknown ap_version {ap_version!r}: use 11point, MaxIntegral or Integral")
    return float(ap)


@dataclass
class DetectionEvalAccumulator:
    """Collects DetectionEvaluate output rows over batches, like ``Solver::TestDetection``."""

    num_pos: dict[int, int] = field(default_factory=dict)
    true_pos: dict[int, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    false_pos: dict[int, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, rows: np.ndarray) -> None:
        for item, label, score, tp, fp in np.asarray(rows).reshape(-1, 5):
            label = int(label)
            if int(item) == -1:
                self.num_pos[label] = self.num_pos.get(label, 0) + int(score)
                continue
            tp, fp = int(tp), int(fp)
            if tp == 0 and fp == 0:  # matched to a difficult ground truth that is not evaluated
                continue
            self.true_pos[label].append((float(np.float32(score)), tp))
            self.false_pos[label].append((float(np.float32(score)), fp))

    def per_label_ap(self, ap_version: str = "11point") -> dict[int, float]:
        """AP of each label Caffe scores (those with detections); others count as 0 in the mAP."""
        return {
            label: compute_ap(self.true_pos[label], self.false_pos[label], count, ap_version)
            for label, count in sorted(self.num_pos.items())
            if label in self.true_pos
        }

    def mean_ap(self, ap_version: str = "11point") -> float:
        """Caffe's ``detection_eval``: the sum of the APs divided by the number of classes the layer lists."""
        if not self.num_pos:
            return 0.0
        total = np.float32(0)
        for ap in self.per_label_ap(ap_version).values():
            total += np.float32(ap)
        return float(total / np.float32(len(self.num_pos)))
