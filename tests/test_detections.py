"""Net outputs → COCO detections; Caffe's detection_eval reproduced from the DetectionEvaluate rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.caffe_log import parse_caffe_log
from tests.support.helpers import caffe_logs_env
from tests.support.pycaffe import require_caffe
from tests.support.tiny_ssd import deploy_net_text, make_tiny_world, solver_text
from tests.support.train_settings import train_settings

caffe = require_caffe()

from ssdlite_coco.evaluate.detection_eval import DetectionEvalAccumulator, compute_ap  # noqa: E402
from ssdlite_coco.evaluate.test_net import (  # noqa: E402
    DetectionError,
    largest_divisor_at_most,
    run_test_net,
    to_coco_detections,
)
from ssdlite_coco.evaluate.test_split import TestSplit  # noqa: E402
from ssdlite_coco.labelmap import LabelmapError, label_to_category, read_labelmap, read_name_size  # noqa: E402
from ssdlite_coco.train.runner import TrainRun, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _split(world, name_size: Path | None = None) -> TestSplit:
    """The tiny world's test split (``name_size``: another name-size file)."""
    return TestSplit.read(
        world.test_net, world.test_lmdb, name_size or world.test_name_size, world.labelmap, world.test_instances
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, coco_mini_dir):
    """A tiny world and weights trained for 150 iterations (COCO AP50 ~0.14 on its test images)."""
    folder = tmp_path_factory.mktemp("tiny")
    world = make_tiny_world(folder, coco_mini_dir, max_iter=150, test_interval=1000)
    weights = folder / "out" / "final.caffemodel"
    train(
        TrainRun(
            solver=world.solver,
            weights_out=weights,
            log_csv_out=folder / "out" / "log.csv",
            snapshot_root=folder / "snapshots",
            settings=train_settings(snapshot_interval=150),
            threads=1,
        ),
        log=lambda message: None,
    )
    return world, weights


def test_rows_become_coco_detections_in_pixels_with_ids_from_the_name_size_file():
    sizes = [(42, 480, 640), (7, 100, 200)]
    categories = {1: 1, 2: 3}  # label -> COCO category id
    rows = np.array(
        [
            [0, 1, 0.9, 0.1, 0.2, 0.5, 0.6],  # image 42
            [1, 2, 0.8, -0.1, 0.5, 0.5, 1.2],  # image 7, clipped to the image
            [1, 5, 0.7, 0.1, 0.1, 0.2, 0.2],  # label without a category: dropped
            [2, 1, 0.6, 0.1, 0.1, 0.2, 0.2],  # item past the last image (wrapped batch): dropped
            [-1, -1, -1, -1, -1, -1, -1],  # "no detection" row
        ],
        dtype=np.float32,
    ).reshape(1, 1, -1, 7)
    detections = to_coco_detections(rows, 0, sizes, categories)
    assert len(detections) == 2
    first, second = detections
    assert first["image_id"] == 42 and first["category_id"] == 1 and first["score"] == pytest.approx(0.9)
    assert first["bbox"] == pytest.approx([64.0, 96.0, 256.0, 192.0], abs=0.01)
    assert second["image_id"] == 7 and second["category_id"] == 3
    assert second["bbox"] == pytest.approx([0.0, 50.0, 100.0, 50.0], abs=0.01)
    # the same rows as the second batch of a run address the next images
    assert to_coco_detections(rows[..., :1, :], 1, sizes, categories)[0]["image_id"] == 7


def test_labelmap_names_are_category_ids(trained):
    world, _ = trained
    assert label_to_category(read_labelmap(world.labelmap)) == {1: 1, 2: 3, 3: 62}
    bad = world.folder / "bad_labelmap.prototxt"
    bad.write_text('item { name: "none_of_the_above" label: 0 }\nitem { name: "person" label: 1 }\n')
    with pytest.raises(LabelmapError, match="bad_labelmap.prototxt: no item has a COCO category id as its name"):
        label_to_category(read_labelmap(bad), str(bad))


def test_compute_ap_11point_by_hand():
    # 3 positives; ranked detections: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3
    tp = [(0.9, 1), (0.8, 0), (0.7, 1)]
    fp = [(0.9, 0), (0.8, 1), (0.7, 0)]
    # recall points 0..0.3 -> 1.0 (4 points), 0.4..0.6 -> 2/3 (3 points), 0.7..1.0 -> 0
    assert compute_ap(tp, fp, 3, "11point") == pytest.approx((4 * 1.0 + 3 * 2 / 3) / 11, abs=1e-6)
    assert compute_ap(tp, fp, 3, "MaxIntegral") == pytest.approx(1 / 3 + (2 / 3) * (1 / 3), abs=1e-6)
    assert compute_ap([], [], 3) == 0.0


def test_detection_eval_counts_every_listed_class_like_caffe():
    accumulator = DetectionEvalAccumulator()
    accumulator.add(
        np.array(
            [
                [-1, 1, 2, -1, -1],
                [-1, 2, 1, -1, -1],
                [-1, 3, 0, -1, -1],
                [0, 1, 0.9, 1, 0],
                [0, 1, 0.5, 1, 0],
                [0, 2, 0.4, 0, 1],
                [0, 2, 0.3, 0, 0],  # (0, 0): ignored
            ],
            dtype=np.float32,
        )
    )
    aps = accumulator.per_label_ap()
    assert aps == {1: pytest.approx(1.0), 2: 0.0}
    assert accumulator.mean_ap() == pytest.approx(1.0 / 3)  # label 3 has no row but counts, as in Caffe


def test_largest_divisor_keeps_every_image_seen_once():
    assert largest_divisor_at_most(12, 8) == 6
    assert largest_divisor_at_most(13, 8) == 1
    assert largest_divisor_at_most(4, 8) == 4


def test_detection_eval_equals_the_one_caffe_train_prints(trained, tmp_path):
    """Our mAP from the DetectionEvaluate rows == the `detection_eval` of Solver::TestDetection."""
    world, weights = trained
    result = run_test_net(_split(world), weights, 4, 1, log=lambda message: None)
    assert result.num_images == 12 and result.detections
    solver = tmp_path / "solver.prototxt"
    # display 0: with display on, Solve() runs one more TRAIN forward (updating the BatchNorm statistics)
    # between the last update and its final test
    solver.write_text(
        solver_text(
            world.train_net, world.test_net, tmp_path / "snap", max_iter=0, test_iter=3, test_interval=1
        ).replace("display: 10", "display: 0")
    )
    run = subprocess.run(
        ["caffe", "train", f"--solver={solver}", f"--weights={weights}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=caffe_logs_env(),
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    caffe_values = [row["detection_eval"] for row in parse_caffe_log(run.stderr) if not np.isnan(row["detection_eval"])]
    assert len(caffe_values) == 1
    assert result.detection_eval > 0  # some true positives, or the comparison would be vacuous
    assert result.detection_eval == pytest.approx(caffe_values[0], rel=1e-5, abs=1e-6)


def test_detections_carry_the_coco_ids_of_the_test_images(trained):
    world, weights = trained
    result = run_test_net(_split(world), weights, 8, 1, log=lambda message: None)
    ids = {image_id for image_id, _, _ in read_name_size(world.test_name_size)}
    sizes = {image_id: (height, width) for image_id, height, width in read_name_size(world.test_name_size)}
    assert {det["image_id"] for det in result.detections} <= ids
    assert {det["category_id"] for det in result.detections} <= {1, 3, 62}
    for det in result.detections:
        x, y, w, h = det["bbox"]
        height, width = sizes[det["image_id"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width + 0.01 and y + h <= height + 0.01
    assert all(row.status == "copied" for row in result.copied)


def test_an_lmdb_that_does_not_match_the_name_size_file_is_refused(trained, tmp_path):
    world, weights = trained
    short = tmp_path / "short_name_size.txt"
    short.write_text("\n".join(world.test_name_size.read_text().splitlines()[:5]) + "\n")
    with pytest.raises(DetectionError, match="holds 12 records but .* lists 5 images"):
        run_test_net(_split(world, name_size=short), weights, 8, 1, log=lambda message: None)


def test_weights_for_another_net_are_refused_when_strict(trained, tmp_path):
    world, _ = trained
    net_file = tmp_path / "six_classes.prototxt"
    net_file.write_text(deploy_net_text(num_classes=6))
    foreign = caffe.Net(str(net_file), caffe.TEST)
    foreign_weights = tmp_path / "foreign.caffemodel"
    foreign.save(str(foreign_weights))
    with pytest.raises(DetectionError, match="does not fill 2 layers"):
        run_test_net(_split(world), foreign_weights, 8, 1, log=lambda message: None)
    lenient = run_test_net(_split(world), foreign_weights, 8, 1, strict=False, log=lambda message: None)
    assert sum(row.status == "shape mismatch" for row in lenient.copied) == 2


def test_missing_name_size_file_is_named(tmp_path):
    with pytest.raises(LabelmapError, match="nope.txt: name-size file not found"):
        read_name_size(tmp_path / "nope.txt")
    assert Path(tmp_path).is_dir()


def _check_weights(world, weights, out):
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "check_weights.py"),
            "--test-net",
            str(world.test_net),
            "--weights",
            str(weights),
            "--lmdb",
            str(world.test_lmdb),
            "--name-size",
            str(world.test_name_size),
            "--labelmap",
            str(world.labelmap),
            "--instances",
            str(world.test_instances),
            "--device",
            "cpu",
            "--report-json",
            str(out / "check.json"),
            "--report-csv",
            str(out / "check.csv"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_weights_check_tells_trained_from_untrained_heads(trained, tmp_path):
    world, weights = trained
    result = _check_weights(world, weights, tmp_path / "trained")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "trained" / "check.json").read_text())
    assert report["coco"]["AP50"] > 0.05 and report["map_above_chance"]
    assert report["heads_from_weights"] and len(report["heads"]) == 2
    assert report["head_looks_trained"] and "verdict: the detection head looks trained" in result.stdout
    assert report["layers"]["copied"] == 16

    fresh = caffe.Net(str(world.deploy_net), caffe.TEST)  # the fillers' values: what untrained weights hold
    fresh.save(str(tmp_path / "fresh.caffemodel"))
    result = _check_weights(world, tmp_path / "fresh.caffemodel", tmp_path / "fresh")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "fresh" / "check.json").read_text())
    assert not report["head_looks_trained"] and not report["head_biases_trained"]
    assert report["coco"]["AP50"] <= 0.01
    assert "does NOT look trained" in result.stdout
    assert "check,value" in (tmp_path / "fresh" / "check.csv").read_text()
