"""The whole DAG end to end: the demo (with an expected-metric guard) and real COCO images (coco-mini)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.support.workflow_run import copy_workflow, output_tail, run_snakemake

pytestmark = pytest.mark.slow

# Like detectron2's EXPECTED_RESULTS: what `make demo` reaches on 2 CPU cores, and how far below a
# run may fall before the guard calls it a regression. The demo is the same on every run of one machine,
# but not across CPUs: OpenBLAS kernels and the AVX paths round differently, and 500 iterations from
# scratch amplify it. Measured with solver.random_seed 1:
#   2026-11-26, AMD EPYC (2 vCPUs): COCO AP50 0.8296, AP 0.499, detection_eval 0.790
#   2026-12-01, Intel Xeon (2 vCPUs): COCO AP50 0.6840, AP 0.421, detection_eval 0.675 (3 runs, identical;
#   the weights after 102 iterations are bit-identical to those of the code before the stage refactor)
#   2026-12-04, AMD EPYC (2 vCPUs), after patch 0040 (every item's augmentation from its own random stream:
#   the same seed draws other augmentations; their statistics are unchanged, see the closing note of #22):
#   COCO AP50 0.5940, AP 0.344, detection_eval 0.581 (0.7722 / 0.480 on the same machine before the patch)
#   2026-12-05, AMD EPYC (2 vCPUs), main at 421fa86 (patches 0041-0043 since; the demo's recipe unchanged):
#   COCO AP50 0.4012, AP 0.2304, detection_eval 0.410, reproduced bit for bit on 2026-12-06.
# How far one machine's figures move with the seed alone (bench/demo_seed_spread.py, 2026-12-06, AMD EPYC,
# c053c49), AP50 / AP / detection_eval: seed 1 0.401 / 0.230 / 0.410, seed 2 0.734 / 0.428 / 0.719, seed 3
# 0.712 / 0.432 / 0.692, seed 4 0.784 / 0.481 / 0.766. Another seed, like another CPU's rounding, sends 500
# iterations from scratch down another path: over seeds on one machine the lowest is half the highest
# (0.51, 0.48, 0.54), about as wide as all recorded above (AP50 0.40-0.83), and seed 1 is this machine's low.
# The floors: two thirds of the lowest figure seen (this machine, seed 1): a CPU not seen yet may land a
# third below it and still pass, while a chain that no longer learns (AP50 < 0.2; iteration 0: 0.00) fails.
# Rounding moves the figures from one CPU to the next, not from one run to the next on one CPU: two
# trainings on one machine give the same weights bit for bit (the test below).
DEMO_FLOORS = {"AP50": 0.27, "AP": 0.15, "detection_eval": 0.27}
CHANCE_AP50 = 0.05

FINAL_OUTPUTS = [
    "results/data/trainval/instances.json",
    "results/data/test/instances.json",
    "results/labelmap/labelmap.prototxt",
    "results/labelmap/trainval_name_size.txt",
    "results/labelmap/test_name_size.txt",
    "results/lmdb/trainval_lmdb/data.mdb",
    "results/lmdb/test_lmdb/data.mdb",
    "results/lmdb/trainval_check/stats.csv",
    "results/lmdb/test_check/samples.png",
    "results/model/train.prototxt",
    "results/model/test.prototxt",
    "results/model/deploy.prototxt",
    "results/model/solver.prototxt",
    "results/model/model_config.json",
    "results/train/final.caffemodel",
    "results/train/train_log.csv",
    "results/evaluate/metrics.json",
    "results/evaluate/metrics.csv",
    "results/evaluate/per_class_ap.csv",
    "results/evaluate/detections.json",
    "results/export/caffe/deploy.prototxt",
    "results/export/caffe/deploy.caffemodel",
    "results/export/caffe-heads/heads.prototxt",
    "results/export/caffe-heads/heads.caffemodel",
    "results/export/caffe-heads/priors.npy",
    "results/export/caffe-heads/decode.json",
    "results/export/caffe-clip/deploy.prototxt",
    "results/export/caffe-clip/heads.caffemodel",
    "results/export/onnx/heads.onnx",
    "results/export/preprocess.json",
    "results/export/calibration/list.txt",
    "results/export/fold_check.json",
    "results/export/verify.json",
    "results/export/verify.md",
    "results/export/int8/int8.json",
    "results/export/int8/int8.md",
    "results/export/int8/models/onnxruntime-per-channel-minmax.onnx",
    "results/export/int8/models/mnn-per-channel-kl.mnn",
    "results/report/loss.png",
    "results/report/metrics.html",
    "results/report/detections.jpg",
    "results/report/export.html",
    "results/report/int8.html",
    "results/report/int8.png",
    "results/config.effective.yaml",
]


def check_outputs_are_well_formed(workdir: Path, max_iter: int) -> dict:
    missing = [path for path in FINAL_OUTPUTS if not (workdir / path).is_file() or not (workdir / path).stat().st_size]
    assert not missing, f"missing or empty outputs: {missing}"
    log = pd.read_csv(workdir / "results/train/train_log.csv")
    steps = log.dropna(subset=["loss"])  # one row per iteration; the final test adds a row without a loss
    assert len(steps) == max_iter and (steps["loss"] >= 0).all()
    assert log["iteration"].max() == max_iter and log["detection_eval"].notna().iloc[-1]
    metrics = json.loads((workdir / "results/evaluate/metrics.json").read_text())
    assert set(metrics["stats"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"}
    # One key scheme: per class by category id and name, Caffe's AP next to COCO's, every class with ground truth.
    assert "detection_eval_per_label" not in metrics
    gt_categories = {row["category_id"] for row in metrics["per_class"] if row["num_gt"] > 0}
    assert gt_categories and all(
        isinstance(row["detection_eval"], float) for row in metrics["per_class"] if row["category_id"] in gt_categories
    )
    test_images = json.loads((workdir / "results/data/test/instances.json").read_text())["images"]
    assert metrics["num_images"] == len(test_images)
    detections = json.loads((workdir / "results/evaluate/detections.json").read_text())
    image_ids = {image["id"] for image in test_images}
    categories = {c["id"] for c in json.loads((workdir / "results/data/test/instances.json").read_text())["categories"]}
    assert all(d["image_id"] in image_ids and d["category_id"] in categories for d in detections)
    effective = yaml.safe_load((workdir / "results/config.effective.yaml").read_text())["export"]
    # The allowance is measured here, not read from the outputs under test: the trained net's float32 noise
    # (other one-ulp nudges than the rule's), and the folded export against the trained net on 4 test images.
    here = fold_measured_here(
        workdir, [workdir / "results/data/test/images" / image["file_name"] for image in test_images[:4]]
    )
    allowed = max(effective["fold_tolerance"], effective["fold_noise_factor"] * here["noise"])
    assert 0 < here["noise"] < 0.05, here  # one-ulp weight nudges move a trained net's outputs by far less than 5 %
    assert here["fold"] < allowed, here
    fold = json.loads((workdir / "results/export/fold_check.json").read_text())
    recorded = fold["reference_noise"]["max_relative_difference"]
    assert here["noise"] / 10 < recorded < here["noise"] * 10, (recorded, here)  # the rule measured, not guessed
    check_runtime_rows(workdir, num_images=len(test_images), tolerance=max(effective["tolerance"], allowed))
    with (workdir / "results/evaluate/metrics.csv").open() as handle:
        assert dict(csv.reader(handle))["coco/AP50"]
    return metrics


def fold_measured_here(workdir: Path, images: list[Path]) -> dict[str, float]:
    """The folded export's largest relative head difference from the trained net on ``images``, and the trained
    net's own float32 noise there (one-ulp weight nudges from seed 100: not the rule's)."""
    import caffe
    from ssdlite_coco.export.fold import input_shape, load_net_params
    from ssdlite_coco.export.fold_check import compare_nets, reference_noise
    from ssdlite_coco.export.preprocess import preprocess_as, transform_settings

    deploy, weights = workdir / "results/model/deploy.prototxt", workdir / "results/train/final.caffemodel"
    transform = transform_settings(workdir / "results/model/test.prototxt")
    inputs = [preprocess_as(path, transform, input_shape(deploy)[1:]) for path in images]
    trained = load_net_params(deploy, weights)
    folded = caffe.Net(
        str(workdir / "results/export/caffe/deploy.prototxt"),
        caffe.TEST,
        weights=str(workdir / "results/export/caffe/deploy.caffemodel"),
    )
    return {
        "fold": compare_nets(trained, folded, inputs)["max_relative_difference"],
        "noise": reference_noise(deploy, weights, trained, inputs, seed=100)["max_relative_difference"],
    }


def check_runtime_rows(workdir: Path, num_images: int, tolerance: float) -> None:
    """Every runtime loads the export, agrees with pycaffe on the heads and scores the same COCO AP50."""
    verify = json.loads((workdir / "results/export/verify.json").read_text())
    assert verify["failures"] == [] and verify["images"] == num_images, verify["failures"]
    rows = verify["rows"]
    runtimes = " ".join(row["runtime"] for row in rows)
    assert all(name in runtimes for name in ("pycaffe", "OpenCV DNN 4.", "MNN", "ONNX Runtime")), runtimes
    for row in rows:
        assert row["loads"], row
        assert max(row["loc_max_difference"], row["scores_max_difference"]) <= tolerance, row
        assert abs(row["AP50"] - rows[0]["AP50"]) <= 0.005, row
        assert row["latency"]["runs"] >= 50 and row["latency"]["median_ms"] > 0, row
    assert "layer_19_2_5_mbox_loc/depthwise" in {rewrite["layer"] for rewrite in verify["rewrites"]}


def test_demo_reaches_its_expected_map(demo_run):
    metrics = check_outputs_are_well_formed(
        demo_run, max_iter=yaml.safe_load((demo_run / "config/config.yaml").read_text())["solver"]["max_iter"]
    )
    fold = json.loads((demo_run / "results/export/fold_check.json").read_text())
    assert fold["max_abs_difference"] < 1e-4, fold  # trained: folding changes the head outputs by < 1e-4
    figures = {"AP50": metrics["stats"]["AP50"], "AP": metrics["stats"]["AP"], "detection_eval": None}
    figures["detection_eval"] = pd.read_csv(demo_run / "results/train/train_log.csv").detection_eval.dropna().iloc[-1]
    assert figures["AP50"] > CHANCE_AP50
    low = {name: value for name, value in figures.items() if not value >= DEMO_FLOORS[name]}
    assert not low, f"demo figures {figures} fell below their floors {DEMO_FLOORS}"


def test_two_trainings_on_one_machine_give_identical_weights(demo_run, tmp_path, monkeypatch):
    """What makes the guard's figures repeatable on one machine: one seed, the same weights bit for bit, with
    one data thread or two (every item's augmentation comes from its own random stream, patch 0040)."""
    from ssdlite_coco.train.runner import TrainRun, read_solver, train
    from tests.support.train_settings import train_settings

    monkeypatch.chdir(demo_run)  # the nets name the LMDBs relative to the workflow
    solver = read_solver("results/model/solver.prototxt")
    solver.max_iter, solver.train_net = 12, str(demo_run / solver.train_net)
    del solver.test_net[:], solver.test_iter[:]
    solver.ClearField("test_interval")
    (tmp_path / "solver.prototxt").write_text(str(solver))
    weights = []
    for threads in (1, 2):
        out = tmp_path / f"threads{threads}"
        run = TrainRun(
            solver=tmp_path / "solver.prototxt",
            weights_out=out / "final.caffemodel",
            log_csv_out=out / "train_log.csv",
            snapshot_root=out / "snapshots",
            settings=train_settings(data_threads=threads),
            threads=1,
        )
        train(run, log=lambda message: None)
        weights.append((out / "final.caffemodel").read_bytes())
    assert weights[0] == weights[1]


def test_whole_chain_on_real_coco_images(repo_root, coco_mini_dir, tmp_path):
    """coco-mini as both splits: a grayscale image, crowd boxes, images without objects, 75 categories."""
    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    split = {
        "instances": str(coco_mini_dir / "annotations/instances_mini.json"),
        "images": str(coco_mini_dir / "images"),
    }
    config = {
        "dataset": {"source": "local", "local": {"trainval": split, "test": split}},
        "model": {"width": 0.35, "train_batch_size": 4, "test_batch_size": 8},
        "solver": {"max_iter": 6, "steps": [4, 5], "snapshot": 3, "test_interval": 3, "display": 1},
        "evaluate": {"report_images": 4},
        "export": {"int8_variants": ["onnxruntime/per-channel/minmax", "mnn/per-channel/kl"]},
    }
    (workdir / "coco_mini.yaml").write_text(yaml.safe_dump(config))
    # Over the demo's settings (seeded solver, two training threads), then this file's: a user config alone
    # would be merged over the schema defaults instead.
    args = ["--cores", "2", "--configfile", "config/config.yaml", "coco_mini.yaml"]
    result = run_snakemake(workdir, args, timeout=1800)
    assert result.returncode == 0, output_tail(result)
    check_outputs_are_well_formed(workdir, max_iter=6)
    labelmap = (workdir / "results/labelmap/labelmap.prototxt").read_text()
    assert labelmap.count("item {") == 81
    summary = dict(csv.reader((workdir / "results/lmdb/test_check/summary.csv").open()))
    assert summary["records"] == "128" and summary["grayscale_images"] == "1"
    assert summary["images_without_boxes"] == "2" and int(summary["difficult_boxes"]) == 10


def test_an_imagenet_start_is_fetched_converted_checked_and_trained(repo_root, coco_mini_dir, tmp_path):
    """torchvision-format weights (random, BatchNorm statistics measured on coco-mini) through the real rules."""
    import torch

    from tests.support.imagenet_nets import calibrated_mobilenet_v2

    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    imagenet = tmp_path / "mobilenet_v2-random.pth"
    torch.save(calibrated_mobilenet_v2(coco_mini_dir, width=0.5, seed=3).state_dict(), imagenet)
    split = {
        "instances": str(coco_mini_dir / "annotations/instances_mini.json"),
        "images": str(coco_mini_dir / "images"),
    }
    config = {
        "dataset": {"source": "local", "local": {"trainval": split, "test": split}},
        "model": {"width": 0.5, "train_batch_size": 4, "test_batch_size": 8},
        "solver": {"max_iter": 2, "steps": [1, 2], "snapshot": 2, "test_interval": 2, "display": 1},
        "train": {"initial_weights": str(imagenet), "initial_weights_format": "torchvision"},
    }
    (workdir / "imagenet.yaml").write_text(yaml.safe_dump(config))
    check = "results/train/initial_weights_check.json"
    targets = ["results/train/final.caffemodel", check]
    args = ["--cores", "2", *targets, "--configfile", "config/config.yaml", "imagenet.yaml"]
    result = run_snakemake(workdir, args, timeout=1800)
    assert result.returncode == 0, output_tail(result)
    report = json.loads((workdir / check).read_text())
    assert report["backbone_copied"] == report["backbone_expected"] > 0, report["backbone_coverage"]
    coverage = (workdir / "results/train/initial_weights_coverage.txt").read_text()
    assert f"backbone: {report['backbone_copied']}/{report['backbone_expected']} layers copied" in coverage
    assert "copied by layer name" in (workdir / "logs/train/train.log").read_text()
