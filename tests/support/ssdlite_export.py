"""The generated MobileNetV2-SSDLite with random weights, exported by ``scripts/export.py``: what the export
runtime tests check (``test_export_runtimes``, ``test_export_edge``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.support.pycaffe import require_caffe
from tests.support.tiny_ssd import make_tiny_world

caffe = require_caffe()

from ssdlite_coco.common.settings import parse_settings  # noqa: E402
from ssdlite_coco.export.decode import caffe_rows  # noqa: E402
from ssdlite_coco.export.preprocess import transform_settings  # noqa: E402
from ssdlite_coco.export.runtime_check import CheckContext, CheckSettings  # noqa: E402
from ssdlite_coco.export.settings import ExportSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VERIFY_IMAGES = 4


def make_model(folder: Path, labelmap: Path, name_size: Path, instances: Path) -> Path:
    args = ["--model-settings", '{"augmentation": false}', "--device", "cpu", "--labelmap", str(labelmap)]
    args += ["--name-size", str(name_size)]
    args += ["--test-instances", str(instances), "--no-check", "--config-out", str(folder / "config.json")]
    for role in ("train", "test", "deploy", "solver"):
        args += [f"--out-{role}", str(folder / f"{role}.prototxt")]
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/make_model.py"), *args], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def randomize(net, seed: int) -> None:
    """Weights like a trained net's: fillers kept, BatchNorm statistics and Scale values plausible.

    Call it on a net made after ``caffe.set_random_seed``: unseeded fillers give other weights at every run.
    """
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        if len(blobs) == 3 and blobs[2].data.size == 1:
            blobs[0].data[...] = rng.normal(0, 0.3, blobs[0].data.shape)
            blobs[1].data[...] = rng.uniform(0.3, 3.0, blobs[1].data.shape)
            blobs[2].data[...] = 1.0
        elif "scale" in name.lower():
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.normal(0, 0.1, blobs[1].data.shape)
        elif name.endswith(("_mbox_conf", "_mbox_loc")) and len(blobs) > 1:
            blobs[1].data[...] = rng.normal(0, 0.5, blobs[1].data.shape)


def make_ssdlite(folder: Path, coco_mini_dir: Path):
    """The generated MobileNetV2-SSDLite for the tiny world's 3 categories, random weights, its test images."""
    world = make_tiny_world(folder / "world", coco_mini_dir)
    model = make_model(folder / "model", world.labelmap, world.test_name_size, world.test_instances)
    caffe.set_random_seed(11)
    net = caffe.Net(str(model / "deploy.prototxt"), caffe.TEST)
    randomize(net, 11)
    net.save(str(folder / "weights.caffemodel"))
    images = folder / "images"
    images.mkdir()
    for path in world.test_images:
        (images / path.name).symlink_to(path)
    return world, model, folder / "weights.caffemodel", images


def settings_arg(**keys) -> list[str]:
    """``--settings`` of an export script with these keys of the `export` section."""
    return ["--settings", json.dumps(keys)]


def check_settings(latency_runs: int) -> CheckSettings:
    """The runtime check's settings at the schema's defaults, one thread, ``latency_runs`` timed runs."""
    return CheckSettings.of(parse_settings(ExportSettings, json.dumps({"latency_runs": latency_runs})), threads=1)


def check_context(paths, heads, scratch: Path) -> CheckContext:
    """What the runtime table needs to load an export, one thread, the schema's RKNN target."""
    return CheckContext(paths, heads, scratch, threads=1, rknn_target=parse_settings(ExportSettings).rknn_target)


def export(ssdlite, out: Path, *extra: str, instances: Path | None = None) -> subprocess.CompletedProcess:
    world, model, weights, images = ssdlite
    args = ["--deploy-net", str(model / "deploy.prototxt"), "--weights", str(weights)]
    args += ["--test-net", str(model / "test.prototxt"), "--instances", str(instances or world.test_instances)]
    args += ["--images", str(images), "--labelmap", str(world.labelmap), "--out-dir", str(out)]
    args += settings_arg(verify_images=VERIFY_IMAGES, latency_runs=2, calibration_images=3) + list(extra)
    command = [sys.executable, str(REPO / "scripts/export.py"), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)


def reference_truth(ssdlite, path: Path, count: int = VERIFY_IMAGES) -> Path:
    """The test split with pycaffe's own detections on the ``count`` images the export scores as its ground truth.

    Random weights detect nothing of the real boxes: every runtime's AP50 is 0 and their equality proves nothing.
    Against the reference's boxes the reference scores AP50 1, and another runtime only as far as it reproduces
    the reference's boxes, labels and ranking.
    """
    from ssdlite_coco.export.preprocess import preprocess_as
    from ssdlite_coco.export.stage import coco_scorer, split_images

    world, model, weights, images = ssdlite
    chosen = split_images(world.test_instances, images, count)  # the images the export verifies
    to_coco, _ = coco_scorer(world.test_instances, world.labelmap, chosen)
    transform = transform_settings(model / "test.prototxt")
    net = caffe.Net(str(model / "deploy.prototxt"), caffe.TEST, weights=str(weights))
    annotations = []
    for image in chosen:
        net.blobs[net.inputs[0]].data[0] = preprocess_as(image.path, transform, (300, 300))
        net.forward()
        for detection in to_coco(caffe_rows(net.blobs["detection_out"].data), image):
            _, _, width, height = detection["bbox"]
            annotations.append(
                {key: detection[key] for key in ("image_id", "category_id", "bbox")}
                | {"id": len(annotations) + 1, "area": width * height, "iscrowd": 0}
            )
    truth = json.loads(world.test_instances.read_text())
    truth["annotations"] = annotations
    path.write_text(json.dumps(truth))
    return path
