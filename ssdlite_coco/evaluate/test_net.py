"""Net outputs → COCO detections, and Caffe's ``detection_eval`` mAP from DetectionEvaluate rows.

* ``DetectionOutput`` rows are ``[item, label, score, xmin, ymin, xmax, ymax]`` with the box normalized
  to the image; ``to_coco_detections`` turns them into COCO results: the item's COCO image id and
  original size come from the name-size file (``image_id height width`` per line, in LMDB order), the
  category id from the labelmap (``name`` = COCO category id), the box in pixels as ``[x, y, w, h]``.
* ``DetectionEvaluate`` rows are ``[item, label, score, tp, fp]`` plus one ``[-1, label, num_pos, -1, -1]``
  row per class; ``detection_eval_map`` turns the rows of many batches into the mAP exactly as Caffe's
  ``Solver::TestDetection`` and ``ComputeAP`` do (so it matches ``caffe train``'s ``detection_eval``).
* ``run_test_net`` runs a Caffe test net (AnnotatedData from an LMDB → DetectionOutput →
  DetectionEvaluate) over every record once and returns both.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.labelmap import LabelmapError, read_labelmap, read_name_size


class DetectionError(SsdliteError):
    """A net, labelmap or name-size file does not fit; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------- label/image maps
def label_to_category(labelmap_path: str | os.PathLike) -> dict[int, int]:
    """Net label → COCO category id, for every labelmap item whose ``name`` is an integer > 0.

    The background and placeholder items (``unused_12``) map to nothing: their detections are dropped.
    """
    try:
        items = read_labelmap(labelmap_path)
    except LabelmapError as error:
        raise DetectionError(str(error)) from None
    mapping = {}
    for item in items:
        if item.name.isdigit() and int(item.name) > 0:
            mapping[item.label] = int(item.name)
    if not mapping:
        raise DetectionError(
            f'{labelmap_path}: no item has a COCO category id as its name (e.g. name: "1"); '
            "generate the labelmap with the labelmap rule"
        )
    return mapping


def label_names(labelmap_path: str | os.PathLike) -> dict[int, str]:
    return {item.label: item.display_name for item in read_labelmap(labelmap_path)}


def read_image_sizes(name_size_path: str | os.PathLike) -> list[tuple[int, int, int]]:
    """``(image_id, height, width)`` per line of a name-size file, in LMDB order."""
    path = Path(name_size_path)
    if not path.is_file():
        raise DetectionError(f"{path}: name-size file not found (made by the labelmap rule)")
    try:
        rows = read_name_size(path)
    except ValueError:
        raise DetectionError(f"{path}: every line must be 'image_id height width' (three integers)") from None
    if not rows:
        raise DetectionError(f"{path}: lists no images")
    return rows


# ------------------------------------------------------------------------------------ DetectionOutput rows
def to_coco_detections(
    rows: np.ndarray,
    first_index: int,
    image_sizes: list[tuple[int, int, int]],
    categories: Mapping[int, int],
) -> list[dict[str, Any]]:
    """COCO results for one batch of DetectionOutput rows; item ``i`` is image ``first_index + i``.

    Boxes are clipped to the image; rows of items past the end of ``image_sizes`` (a batch that wrapped
    around the LMDB) and of labels without a category are dropped.
    """
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    detections = []
    for item, label, score, xmin, ymin, xmax, ymax in rows:
        if item < 0:  # DetectionOutput writes one row of -1 when a batch has no detection
            continue
        index = first_index + int(item)
        category_id = categories.get(int(label))
        if index >= len(image_sizes) or category_id is None:
            continue
        image_id, height, width = image_sizes[index]
        x0, x1 = (min(max(v * width, 0.0), width) for v in (xmin, xmax))
        y0, y1 = (min(max(v * height, 0.0), height) for v in (ymin, ymax))
        if x1 - x0 < 0.01 or y1 - y0 < 0.01:  # wholly outside the image
            continue
        detections.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "score": round(float(score), 5),
            }
        )
    return detections


# ---------------------------------------------------------------------------------- DetectionEvaluate rows
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


def detection_eval_map(batches: Iterable[np.ndarray], ap_version: str = "11point") -> float:
    accumulator = DetectionEvalAccumulator()
    for rows in batches:
        accumulator.add(rows)
    return accumulator.mean_ap(ap_version)


# ----------------------------------------------------------------------------------------- test net running
def read_net(path: str | os.PathLike):
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    path = Path(path)
    if not path.is_file():
        raise DetectionError(f"{path}: net prototxt not found")
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(path.read_text(), net)
    except text_format.ParseError as error:
        raise DetectionError(f"{path}: not a Caffe NetParameter prototxt ({error})") from None
    return net


def _layers_of_type(net, layer_type: str) -> list:
    return [layer for layer in net.layer if layer.type == layer_type]


def _single_layer(net, layer_type: str, source: str):
    layers = _layers_of_type(net, layer_type)
    if len(layers) != 1:
        raise DetectionError(
            f"{source}: needs exactly one {layer_type} layer, has {len(layers)}; "
            "use the test net made by the model rule"
        )
    return layers[0]


def lmdb_entries(lmdb_path: str | os.PathLike) -> int:
    import lmdb

    path = Path(lmdb_path)
    if not (path / "data.mdb").is_file():
        raise DetectionError(f"{path}: not an LMDB folder (no data.mdb); build it with the lmdb rule")
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        return int(env.stat()["entries"])
    finally:
        env.close()


def largest_divisor_at_most(count: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(count, limit)) + 1) if count % d == 0)


def prepare_test_net(
    test_net_path: str | os.PathLike,
    lmdb_path: str | os.PathLike,
    name_size_path: str | os.PathLike,
    num_images: int,
    max_batch: int,
    out_path: Path,
) -> int:
    """Write a copy of the test net reading ``lmdb_path`` with a batch size that divides ``num_images``.

    Every image is then seen exactly once, and DetectionEvaluate's walk through the name-size file stays
    aligned with the LMDB. Returns the batch size.
    """
    from google.protobuf import text_format

    net = read_net(test_net_path)
    data = _single_layer(net, "AnnotatedData", str(test_net_path))
    batch = largest_divisor_at_most(num_images, max_batch)
    data.data_param.source = str(Path(lmdb_path).resolve())
    data.data_param.batch_size = batch
    for layer in _layers_of_type(net, "DetectionEvaluate"):
        layer.detection_evaluate_param.name_size_file = str(Path(name_size_path).resolve())
    _single_layer(net, "DetectionOutput", str(test_net_path))
    out_path.write_text(text_format.MessageToString(net))
    return batch


@dataclass
class TestNetResult:
    detections: list[dict[str, Any]]
    detection_eval: float | None
    per_label_ap: dict[int, float]
    num_images: int
    seconds: float
    copied: list = field(default_factory=list)  # weights.LayerCopy rows
    params: dict[str, list[np.ndarray]] = field(default_factory=dict)  # the net's weights as loaded


def run_test_net(
    test_net_path: str | os.PathLike,
    weights_path: str | os.PathLike,
    lmdb_path: str | os.PathLike,
    name_size_path: str | os.PathLike,
    labelmap_path: str | os.PathLike,
    max_batch: int = 8,
    ap_version: str = "11point",
    strict: bool = True,
    log=print,
) -> TestNetResult:
    """Run the test net with ``weights_path`` once over every LMDB record; COCO detections + detection_eval.

    Weights are copied by layer name; with ``strict``, a net layer they do not fill (missing, or another
    shape) is an error, else it stays at its filler initialization and shows in ``copied``.
    """
    import caffe
    from ssdlite_coco.caffe_tools.weights import WeightsError, copy_weights_by_name, read_caffemodel

    image_sizes = read_image_sizes(name_size_path)
    categories = label_to_category(labelmap_path)
    entries = lmdb_entries(lmdb_path)
    if entries != len(image_sizes):
        raise DetectionError(
            f"{lmdb_path} holds {entries} records but {name_size_path} lists {len(image_sizes)} "
            "images; build both from the same split (labelmap and lmdb rules)"
        )
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise DetectionError(f"{weights_path}: weights file not found")
    with tempfile.TemporaryDirectory(prefix="ssdlite-test-net-") as tmp:
        net_file = Path(tmp) / "test.prototxt"
        batch = prepare_test_net(test_net_path, lmdb_path, name_size_path, len(image_sizes), max_batch, net_file)
        net = caffe.Net(str(net_file), caffe.TEST)
    try:
        copied = copy_weights_by_name(net, read_caffemodel(weights_path))
    except WeightsError as error:
        raise DetectionError(str(error)) from None
    unfilled = [row for row in copied if row.status in ("shape mismatch", "not in weights")]
    if strict and unfilled:
        del net  # free its LMDB reader now: a traceback would keep it alive (Caffe's DataReader allows one)
        shown = ", ".join(
            f"{row.layer} ({row.status}: {row.weights_shapes} vs {row.net_shapes})" for row in unfilled[:3]
        )
        raise DetectionError(
            f"{weights_path} does not fill {len(unfilled)} layers of {test_net_path}: {shown}; "
            "evaluate weights trained for this net (same model settings and labelmap)"
        )
    output_name = _layers_of_type(read_net(test_net_path), "DetectionOutput")[0].top[0]
    eval_layers = _layers_of_type(read_net(test_net_path), "DetectionEvaluate")
    eval_name = eval_layers[0].top[0] if eval_layers else None
    accumulator = DetectionEvalAccumulator()
    detections: list[dict[str, Any]] = []
    started = time.monotonic()
    iterations = len(image_sizes) // batch
    for iteration in range(iterations):
        net.forward()
        detections += to_coco_detections(net.blobs[output_name].data, iteration * batch, image_sizes, categories)
        if eval_name is not None:
            accumulator.add(net.blobs[eval_name].data)
        done = (iteration + 1) * batch
        if iteration + 1 == iterations or (iteration + 1) % max(1, 50 // batch) == 0:
            elapsed = time.monotonic() - started
            eta = elapsed / done * (len(image_sizes) - done)
            log(
                f"tested {done}/{len(image_sizes)} images, {len(detections)} detections, "
                f"{done / max(elapsed, 1e-9):.1f} img/s, ETA {format_duration(eta)}"
            )
    return TestNetResult(
        detections=detections,
        detection_eval=accumulator.mean_ap(ap_version) if eval_name is not None else None,
        per_label_ap=accumulator.per_label_ap(ap_version) if eval_name is not None else {},
        num_images=len(image_sizes),
        seconds=time.monotonic() - started,
        copied=copied,
        params={name: [blob.data.copy() for blob in blobs] for name, blobs in net.params.items()},
    )


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


# ---------------------------------------------------------------------------------------- own preprocessing
def transform_settings(test_net_path: str | os.PathLike) -> dict[str, Any]:
    """Mean values and scale of the test net's data layer (what a deploy net expects its input to be)."""
    net = read_net(test_net_path)
    data = _single_layer(net, "AnnotatedData", str(test_net_path))
    transform = data.transform_param
    mean = list(transform.mean_value) or [0.0, 0.0, 0.0]
    if len(mean) == 1:
        mean = mean * 3
    return {"mean": [float(v) for v in mean], "scale": float(transform.scale) if transform.HasField("scale") else 1.0}


def preprocess_image(
    image_path: str | os.PathLike, height: int, width: int, mean: list[float], scale: float
) -> np.ndarray:
    """An image as Caffe's data layer feeds it: resized (bilinear), BGR, ``(pixel - mean) * scale``, CHW."""
    from PIL import Image

    with Image.open(image_path) as image:
        rgb = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float32)
    bgr = rgb[:, :, ::-1]
    return ((bgr - np.asarray(mean, dtype=np.float32)) * np.float32(scale)).transpose(2, 0, 1).copy()
