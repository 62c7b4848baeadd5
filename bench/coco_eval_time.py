"""Time the project's COCO evaluation (``ssdlite_coco.evaluate.coco_scoring.score_detections``) on a val2017-sized set.

    /tmp/venv/bin/python bench/coco_eval_time.py [--images 5000] [--detections-per-image 100] [--repeats 3]

Writes a synthetic ground truth (COCO's 80 categories, about 7 boxes per image, some crowd boxes) and
synthetic detections (jittered copies of the ground truth plus random boxes, random scores) into a
temporary folder, then times the whole scoring call: loading, checking, COCOeval evaluate, accumulate,
summarize and the per-class table. Prints the median wall time and the AP it got (a sanity check: it must
be well above zero and below one). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ssdlite_coco.evaluate.coco_scoring import score_detections  # noqa: E402

CATEGORIES = [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
]


def synthetic_set(images: int, per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORIES]}
    detections = []
    for image_id in range(1, images + 1):
        width, height = int(rng.integers(320, 641)), int(rng.integers(240, 481))
        gt["images"].append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"})
        boxes = []
        for _ in range(int(rng.poisson(7))):
            w, h = rng.uniform(8, width / 2), rng.uniform(8, height / 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            category = int(rng.choice(CATEGORIES))
            boxes.append((category, [x, y, w, h]))
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < 0.01),
                }
            )
        for index in range(per_image):
            if boxes and index < 2 * len(boxes):
                category, (x, y, w, h) = boxes[index % len(boxes)]
                jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
                box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
            else:
                category = int(rng.choice(CATEGORIES))
                w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
                box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [round(float(v), 2) for v in box],
                    "score": round(float(rng.random()), 4),
                }
            )
    return gt, detections


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections-per-image", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    gt, detections = synthetic_set(args.images, args.detections_per_image)
    with tempfile.TemporaryDirectory(prefix="ssdlite-eval-bench-") as tmp:
        gt_path = Path(tmp) / "instances.json"
        gt_path.write_text(json.dumps(gt))
        print(
            f"{args.images} images, {len(gt['annotations'])} ground-truth boxes, "
            f"{len(detections)} detections "
            f"(made in {time.perf_counter() - started:.1f} s)"
        )
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            metrics = score_detections(gt_path, detections)
            times.append(time.perf_counter() - start)
            print(f"  scored in {times[-1]:.1f} s", flush=True)
    ap = metrics["stats"]["AP"]
    print(f"evaluation time: median {statistics.median(times):.1f} s over {args.repeats} runs; AP {ap:.3f}")
    if not 0.0 < ap < 1.0:
        print(f"error: AP {ap} on synthetic detections means the scoring is broken", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
