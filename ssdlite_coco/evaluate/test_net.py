"""Run a Caffe test net over the test LMDB once and turn its outputs into COCO detections.

* ``run_test_net`` runs a test net (AnnotatedData from an LMDB → DetectionOutput → DetectionEvaluate) over
  every record once with a batch size that divides the record count, and returns the COCO detections and
  Caffe's ``detection_eval`` (``ssdlite_coco.evaluate.detection_eval``).
* ``DetectionOutput`` rows are ``[item, label, score, xmin, ymin, xmax, ymax]`` with the box normalized to
  the image; ``to_coco_detections`` turns them into COCO results: the item's COCO image id and original
  size come from the name-size file (``image_id height width`` per line, in LMDB order), the category id
  from the labelmap (``name`` = COCO category id), the box in pixels as ``[x, y, w, h]``.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssdlite_coco.caffe_tools.prototxt import format_prototxt, layers_of_type, single_layer
from ssdlite_coco.caffe_tools.weights import WeightsError, copy_weights_by_name, read_caffemodel
from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.common.formatting import format_duration
from ssdlite_coco.evaluate.detection_eval import DetectionEvalAccumulator
from ssdlite_coco.evaluate.test_split import TestSplit
from ssdlite_coco.lmdb.store import count_records


class DetectionError(SsdliteError):
    """A net, labelmap or name-size file does not fit; the message names the file and the fix."""


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
        if item < 0 or label < 0:  # no detection: DetectionOutput writes each image's index followed by -1s
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


def largest_divisor_at_most(count: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(count, limit)) + 1) if count % d == 0)


def prepare_test_net(split: TestSplit, max_batch: int, out_path: Path, data_threads: int) -> int:
    """Write a copy of the split's test net reading its LMDB with a batch size that divides its image count.

    Every image is then seen exactly once, and DetectionEvaluate's walk through the name-size file stays
    aligned with the LMDB; ``data_threads`` threads decode and transform a batch. Returns the batch size.
    """
    net = copy.deepcopy(split.net)
    data = single_layer(net, "AnnotatedData", str(split.test_net))
    batch = largest_divisor_at_most(len(split.image_sizes), max_batch)
    data.data_param.source = str(split.lmdb.resolve())
    data.data_param.batch_size = batch
    data.data_param.threads = max(1, data_threads)
    for layer in layers_of_type(net, "DetectionEvaluate"):
        layer.detection_evaluate_param.name_size_file = str(split.name_size.resolve())
    single_layer(net, "DetectionOutput", str(split.test_net))
    out_path.write_text(format_prototxt(net))
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
    split: TestSplit,
    weights_path: str | os.PathLike,
    max_batch: int,
    data_threads: int,
    ap_version: str = "11point",
    strict: bool = True,
    log=print,
) -> TestNetResult:
    """Run the split's test net with ``weights_path`` once over every LMDB record; COCO detections + detection_eval.

    Weights are copied by layer name; with ``strict``, a net layer they do not fill (missing, or another
    shape) is an error, else it stays at its filler initialization and shows in ``copied``.
    """
    import caffe

    image_sizes, categories = split.image_sizes, split.categories
    entries = count_records(split.lmdb)
    if entries != len(image_sizes):
        raise DetectionError(
            f"{split.lmdb} holds {entries} records but {split.name_size} lists {len(image_sizes)} "
            "images; build both from the same split (labelmap and lmdb rules)"
        )
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise DetectionError(f"{weights_path}: weights file not found")
    with tempfile.TemporaryDirectory(prefix="ssdlite-test-net-") as tmp:
        net_file = Path(tmp) / "test.prototxt"
        batch = prepare_test_net(split, max_batch, net_file, data_threads)
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
            f"{weights_path} does not fill {len(unfilled)} layers of {split.test_net}: {shown}; "
            "evaluate weights trained for this net (same model settings and labelmap)"
        )
    output_name = layers_of_type(split.net, "DetectionOutput")[0].top[0]
    eval_layers = layers_of_type(split.net, "DetectionEvaluate")
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
