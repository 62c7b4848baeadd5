"""Prior coverage: how many training boxes MultiBoxLoss can match to a prior, per COCO size bucket.

    specs = prior_box_specs(deploy_net, blob_shapes)   # the PriorBox layers feeding DetectionOutput, in order
    priors = prior_boxes(specs)                        # (num_priors, 4): PriorBoxLayer::Forward_cpu in NumPy
    boxes = training_boxes(load_instances(path))       # normalized boxes and pixel areas, per image
    report = prior_coverage(priors, boxes, overlap_threshold(train_net))

What is computed, per image: the IoU of every prior with every ground-truth box (Caffe's JaccardOverlap on
normalized boxes, in float64), then Caffe's ``MatchBBox`` with ``match_type: PER_PREDICTION`` and
``use_prior_for_matching: true``: bipartite matching first (the highest remaining IoU above 1e-6 pairs a prior
and a box, repeatedly, first prior and box on ties), then every unmatched prior goes to its highest-IoU box when
that IoU is >= overlap_threshold. A box is **covered** when at least one prior matched to it has IoU >=
overlap_threshold with it (a bipartite match below the threshold does not count). ``best_iou_coverage`` is the
share whose best prior reaches the threshold, without the competition between boxes of one image.

The boxes are the instances file's non-crowd boxes (crowd boxes and zero-area boxes are left out), clipped to
the image as the LMDB builder clips them and normalized by the image's size: the net's input is a WARP resize of
the whole image, so normalized coordinates carry over. Training-time augmentation (crops, expansion) is not
modelled. The size buckets are COCO's on the box area w * h in pixels of the original image: small < 32^2,
medium < 96^2, large the rest.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np
from caffe.proto import caffe_pb2

from ssdlite_coco.caffe_tools.prototxt import read_prototxt
from ssdlite_coco.common.atomic import atomic_write_text
from ssdlite_coco.dataset.coco_json import load_instances

BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, math.inf))
MIN_OVERLAP = 1e-6  # MatchBBox keeps only overlaps above this


@dataclass(frozen=True)
class PriorBoxSpec:
    """One PriorBox layer as Caffe sees it: its parameters and the shapes of its two bottoms."""

    layer_height: int
    layer_width: int
    image_height: int
    image_width: int
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[float, ...]
    flip: bool
    clip: bool
    offset: float
    step_h: float
    step_w: float


@dataclass(frozen=True)
class TrainingBoxes:
    """The boxes of a split: per image, normalized ``xmin ymin xmax ymax`` and the pixel area ``w * h``."""

    boxes: list[np.ndarray]
    areas: list[np.ndarray]
    skipped: dict[str, int]


def _priorbox_concat_order(net: caffe_pb2.NetParameter) -> list[str]:
    """Tops of the PriorBox layers in the order the priors reach DetectionOutput (or MultiBoxLoss)."""
    producers = {top: layer for layer in net.layer for top in layer.top}
    for layer in net.layer:
        if layer.type in ("DetectionOutput", "MultiBoxLoss") and len(layer.bottom) >= 3:
            source = producers.get(layer.bottom[2])
            if source is not None and source.type == "Concat":
                return list(source.bottom)
            if source is not None and source.type == "PriorBox":
                return [source.top[0]]
    return [layer.top[0] for layer in net.layer if layer.type == "PriorBox"]


def prior_box_specs(net: caffe_pb2.NetParameter, shapes: dict[str, tuple[int, ...]]) -> list[PriorBoxSpec]:
    """The PriorBox layers of ``net`` in prior order; ``shapes``: blob -> NCHW shape (as pycaffe gives them)."""
    layers = {layer.top[0]: layer for layer in net.layer if layer.type == "PriorBox"}
    specs = []
    for top in _priorbox_concat_order(net):
        layer = layers[top]
        param = layer.prior_box_param
        fmap, image = shapes[layer.bottom[0]], shapes[layer.bottom[1]]
        step_h = param.step_h if param.HasField("step_h") else param.step
        step_w = param.step_w if param.HasField("step_w") else param.step
        image_h = param.img_h if param.HasField("img_h") else param.img_size
        image_w = param.img_w if param.HasField("img_w") else param.img_size
        specs.append(
            PriorBoxSpec(
                layer_height=fmap[2],
                layer_width=fmap[3],
                image_height=image_h if image_h and image_w else image[2],
                image_width=image_w if image_h and image_w else image[3],
                min_sizes=tuple(param.min_size),
                max_sizes=tuple(param.max_size),
                aspect_ratios=tuple(param.aspect_ratio),
                flip=param.flip,
                clip=param.clip,
                offset=param.offset,
                step_h=step_h,
                step_w=step_w,
            )
        )
    return specs


def caffe_aspect_ratios(ratios: tuple[float, ...], flip: bool) -> list[float]:
    """PriorBox's ratio list: 1, then each new ratio (and 1 / ratio with ``flip``), duplicates (1e-6) dropped."""
    expanded = [1.0]
    for ratio in ratios:
        if any(abs(ratio - known) < 1e-6 for known in expanded):
            continue
        expanded.append(ratio)
        if flip:
            expanded.append(1.0 / ratio)
    return expanded


def _cell_box_sizes(spec: PriorBoxSpec) -> list[tuple[float, float]]:
    """(width, height) in pixels of the priors of one cell, in PriorBox's order (sizes truncated to int, as it does)."""
    ratios = caffe_aspect_ratios(spec.aspect_ratios, spec.flip)
    sizes = []
    for index, min_size in enumerate(spec.min_sizes):
        low = int(min_size)
        sizes.append((low, low))
        if spec.max_sizes:
            side = math.sqrt(low * int(spec.max_sizes[index]))
            sizes.append((side, side))
        sizes += [(low * math.sqrt(r), low / math.sqrt(r)) for r in ratios if abs(r - 1.0) >= 1e-6]
    return sizes


def prior_boxes(specs: list[PriorBoxSpec]) -> np.ndarray:
    """All priors, ``(num_priors, 4)`` normalized ``xmin ymin xmax ymax`` in Caffe's order (PriorBox + Concat)."""
    parts = []
    for spec in specs:
        step_w = spec.step_w or np.float32(spec.image_width) / np.float32(spec.layer_width)
        step_h = spec.step_h or np.float32(spec.image_height) / np.float32(spec.layer_height)
        ys, xs = np.meshgrid(np.arange(spec.layer_height), np.arange(spec.layer_width), indexing="ij")
        center_x = ((xs.ravel() + np.float32(spec.offset)) * np.float32(step_w)).astype(np.float32)
        center_y = ((ys.ravel() + np.float32(spec.offset)) * np.float32(step_h)).astype(np.float32)
        half = np.array(_cell_box_sizes(spec), dtype=np.float32).astype(np.float64) / 2.0
        cx, cy = center_x[:, None].astype(np.float64), center_y[:, None].astype(np.float64)
        boxes = np.stack(
            [
                (cx - half[:, 0]) / spec.image_width,
                (cy - half[:, 1]) / spec.image_height,
                (cx + half[:, 0]) / spec.image_width,
                (cy + half[:, 1]) / spec.image_height,
            ],
            axis=-1,
        ).reshape(-1, 4)
        parts.append(np.clip(boxes, 0.0, 1.0) if spec.clip else boxes)
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 4), np.float32)


def overlap_threshold(train_net: caffe_pb2.NetParameter) -> float:
    """The MultiBoxLoss ``overlap_threshold`` of a train net (Caffe's default 0.5 when it sets none)."""
    for layer in train_net.layer:
        if layer.type == "MultiBoxLoss":
            return float(layer.multibox_loss_param.overlap_threshold)
    return float(caffe_pb2.MultiBoxLossParameter().overlap_threshold)


def training_boxes(coco: dict) -> TrainingBoxes:
    """Non-crowd boxes of a COCO instances dict per image (images without boxes left out), clipped, normalized."""
    sizes = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
    per_image: dict[int, list[list[float]]] = {}
    skipped = {"crowd": 0, "zero_area": 0, "no_image": 0}
    for annotation in coco["annotations"]:
        x, y, w, h = (float(value) for value in annotation["bbox"])
        size = sizes.get(annotation["image_id"])
        reason = (
            "crowd"
            if annotation.get("iscrowd", 0)
            else "no_image"
            if size is None or min(size) <= 0
            else "zero_area"
            if not (w > 0 and h > 0)
            else None
        )
        if reason:
            skipped[reason] += 1
            continue
        width, height = size
        box = [max(0.0, x) / width, max(0.0, y) / height, min(width, x + w) / width, min(height, y + h) / height]
        per_image.setdefault(annotation["image_id"], []).append(box + [w * h])
    rows = [np.array(per_image[image_id], dtype=np.float64) for image_id in sorted(per_image)]
    return TrainingBoxes([row[:, :4] for row in rows], [row[:, 4] for row in rows], skipped)


def iou_matrix(priors: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(num_priors, num_boxes)`` IoU of normalized boxes, as Caffe's JaccardOverlap (no +1, 0 when apart)."""
    priors = priors.astype(np.float64)
    width = np.minimum(priors[:, None, 2], boxes[None, :, 2]) - np.maximum(priors[:, None, 0], boxes[None, :, 0])
    height = np.minimum(priors[:, None, 3], boxes[None, :, 3]) - np.maximum(priors[:, None, 1], boxes[None, :, 1])
    inter = np.where((width > 0) & (height > 0), width * height, 0.0)

    def area(b: np.ndarray) -> np.ndarray:
        return np.where((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]), 0.0, (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))

    union = area(priors)[:, None] + area(boxes)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def match_priors(overlaps: np.ndarray, threshold: float) -> np.ndarray:
    """Caffe's MatchBBox (PER_PREDICTION) on a prior x box IoU matrix: the box index of every prior, -1 for none."""
    matches = np.full(overlaps.shape[0], -1)
    if overlaps.size == 0:
        return matches
    positive = np.where(overlaps > MIN_OVERLAP, overlaps, -1.0)
    pool = positive.copy()
    for _ in range(overlaps.shape[1]):  # bipartite: the highest remaining pair, first prior and box on ties
        prior, box = np.unravel_index(np.argmax(pool), pool.shape)
        if pool[prior, box] <= 0:
            break
        matches[prior] = box
        pool[prior, :] = -1.0
        pool[:, box] = -1.0
    free = np.flatnonzero(matches == -1)
    best = np.argmax(positive[free], axis=1)
    good = positive[free, best] >= threshold
    matches[free[good]] = best[good]
    return matches


def covered_boxes(overlaps: np.ndarray, threshold: float) -> np.ndarray:
    """Per box: does some prior matched to it (``match_priors``) reach ``threshold`` IoU with it."""
    matches = match_priors(overlaps, threshold)
    matched = matches >= 0
    good = overlaps[np.flatnonzero(matched), matches[matched]] >= threshold
    covered = np.zeros(overlaps.shape[1], dtype=bool)
    covered[matches[matched][good]] = True
    return covered


def prior_coverage(priors: np.ndarray, data: TrainingBoxes, threshold: float) -> dict:
    """Coverage per size bucket and overall (see the module's docstring for what counts)."""
    covered, best, areas = [], [], []
    for boxes, box_areas in zip(data.boxes, data.areas, strict=True):
        overlaps = iou_matrix(priors, boxes)
        covered.append(covered_boxes(overlaps, threshold))
        best.append(overlaps.max(axis=0) if len(priors) else np.zeros(len(boxes)))
        areas.append(box_areas)
    covered_all, best_all, area_all = (np.concatenate(x) if x else np.zeros(0) for x in (covered, best, areas))
    buckets = {}
    for name, low, high in BUCKETS + (("all", 0.0, math.inf),):
        inside = (area_all >= low) & (area_all < high)
        count = int(inside.sum())
        buckets[name] = {
            "boxes": count,
            "covered": int(covered_all[inside].sum()),
            "coverage": round(float(covered_all[inside].mean()), 4) if count else None,
            "best_iou_coverage": round(float((best_all[inside] >= threshold).mean()), 4) if count else None,
            "mean_best_iou": round(float(best_all[inside].mean()), 4) if count else None,
        }
    return {
        "overlap_threshold": threshold,
        "num_priors": int(len(priors)),
        "images_with_boxes": len(data.boxes),
        "skipped_boxes": dict(data.skipped),
        "buckets": buckets,
    }


def net_blob_shapes(deploy_file: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Every blob's shape in the deploy net, from pycaffe (the PriorBox bottoms' sizes)."""
    import caffe

    net = caffe.Net(str(deploy_file), caffe.TEST)
    return {name: tuple(blob.data.shape) for name, blob in net.blobs.items()}


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def coverage_summary(report: dict) -> str:
    """``38.6% of 929 training boxes (small 0.0%, medium 18.5%, large 98.7%) at IoU 0.5``."""
    per_bucket = ", ".join(f"{name} {_share(report['buckets'][name]['coverage'])}" for name, _, _ in BUCKETS)
    every = report["buckets"]["all"]
    return (
        f"{_share(every['coverage'])} of {every['boxes']} training boxes ({per_bucket}) "
        f"at IoU {report['overlap_threshold']:g}"
    )


def coverage_warning(report: dict, warn_below: float, model: dict | None) -> str | None:
    """One line (without ``warning: ``) when the overall coverage is below ``warn_below``, naming what raises it.

    ``model``: the ``model`` options of a generated net (``priors``, ``input_size``); None for a patched net,
    whose priors are the user's PriorBox layers.
    """
    overall = report["buckets"]["all"]["coverage"]
    if overall is None or overall >= warn_below:
        return None
    worst = min(
        (name for name, _, _ in BUCKETS if report["buckets"][name]["boxes"]),
        key=lambda name: report["buckets"][name]["coverage"],
    )
    if model is None:
        hint = "change min_size, max_size and aspect_ratio of the PriorBox layers of your model.patch prototxts"
    elif worst == "large":
        hint = (
            f"the priors are too small for the large boxes: raise model.priors.max_ratio "
            f"(now {model['priors']['max_ratio']:g}) or add model.priors.aspect_ratios"
        )
    else:
        priors = model["priors"]
        hint = (
            f"the priors are too large or too sparse for the {worst} boxes: lower model.priors.min_ratio "
            f"(now {priors['min_ratio']:g}) and model.priors.max_ratio (now {priors['max_ratio']:g}), raise "
            f"model.input_size (now {model['input_size']}: a finer first map) or add model.priors.aspect_ratios"
        )
    return f"prior coverage {coverage_summary(report)} is below model.prior_coverage_warn_below {warn_below:g}; {hint}"


COVERAGE_COLUMNS = ("boxes (area w*h in pixels)", "count", "coverage", "best prior at the threshold", "mean best IoU")
BUCKET_LABELS = {"small": "small (< 32²)", "medium": "medium (32² … 96²)", "large": "large (≥ 96²)", "all": "all"}


def coverage_rows(report: dict) -> list[list[str]]:
    """The cells of the coverage table (COVERAGE_COLUMNS), one row per size bucket and one for all boxes."""
    rows = []
    for name, label in BUCKET_LABELS.items():
        bucket = report["buckets"][name]
        best_iou = "n/a" if bucket["mean_best_iou"] is None else f"{bucket['mean_best_iou']:.3f}"
        rows.append(
            [label, str(bucket["boxes"]), _share(bucket["coverage"]), _share(bucket["best_iou_coverage"]), best_iou]
        )
    return rows


def coverage_markdown(report: dict) -> str:
    """The report as a short Markdown page (one table)."""
    lines = [
        "# Prior coverage of the training boxes",
        "",
        f"Training boxes that MultiBoxLoss matches to at least one of the {report['num_priors']} priors at IoU >= "
        f"{report['overlap_threshold']:g} (bipartite, then per-prediction matching, as Caffe; crowd boxes left "
        f"out; `{report['instances']}` against `{report['deploy']}`).",
        "",
        "| " + " | ".join(COVERAGE_COLUMNS) + " |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in coverage_rows(report)]
    if report.get("warning"):
        lines += ["", f"**Warning**: {report['warning']}."]
    return "\n".join(lines) + "\n"


def write_prior_coverage(
    deploy_file: str | os.PathLike,
    train_file: str | os.PathLike,
    instances_file: str | os.PathLike,
    out_json: str | os.PathLike,
    out_md: str | os.PathLike,
    warn_below: float,
    model: dict | None = None,
) -> dict:
    """Coverage of ``instances_file``'s boxes by the priors of ``deploy_file`` at ``train_file``'s threshold.

    Writes ``out_json`` and ``out_md`` and returns the report; its ``warning`` is None or the line to print.
    ``model``: the generated net's ``model`` options (for the warning's advice); None for a patched net.
    """
    deploy = read_prototxt(deploy_file, caffe_pb2.NetParameter())
    priors = prior_boxes(prior_box_specs(deploy, net_blob_shapes(deploy_file)))
    threshold = overlap_threshold(read_prototxt(train_file, caffe_pb2.NetParameter()))
    report = prior_coverage(priors, training_boxes(load_instances(instances_file)), threshold)
    report |= {"instances": str(instances_file), "deploy": str(deploy_file), "warn_below": warn_below}
    report["model"] = {key: model[key] for key in ("input_size", "priors")} if model else None
    warning = coverage_warning(report, warn_below, model)
    report["warning"] = f"{warning} (see {out_md})" if warning else None
    atomic_write_text(out_json, json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_md, coverage_markdown(report))
    return report
