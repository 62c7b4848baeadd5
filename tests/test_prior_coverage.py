"""The configurable prior design and the prior coverage report: default nets byte-identical to the fixed design
they replaced, NumPy priors equal to Caffe's PriorBox layers, Caffe's matching, and the make_model warning."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.pycaffe import require_caffe

caffe = require_caffe()
from caffe.proto import caffe_pb2  # noqa: E402

from ssdlite_coco.caffe_tools.prototxt import format_prototxt, read_prototxt  # noqa: E402
from ssdlite_coco.common.settings import parse_settings  # noqa: E402
from ssdlite_coco.labelmap import LabelmapSettings, make_labelmap  # noqa: E402
from ssdlite_coco.model.make import generate_model  # noqa: E402
from ssdlite_coco.model.nets import ModelError, ModelOptions, build_net  # noqa: E402
from ssdlite_coco.model.prior_coverage import (  # noqa: E402
    TrainingBoxes,
    covered_boxes,
    match_priors,
    net_blob_shapes,
    prior_box_specs,
    prior_boxes,
    prior_coverage,
    training_boxes,
    write_prior_coverage,
)
from tests.support.model_settings import model_options, prior_design, solver_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = "reference/upstream/chuanqi305-ssdlite-coco-deploy.prototxt"
# SHA-256 of the train, test and deploy prototxts generate_model wrote before the prior design became
# configurable (the design was fixed in heads.py then); the defaults must keep them byte for byte.
DIGESTS_BEFORE = {
    "coco81": (
        {"num_classes": 81},
        "444428dd0747484b498e7c483faa028ae85d5f39798cdbaee0d0fa1ab4a0d537",
        "ba94d5835d26f72be4c1f760997017f9aa137e71d2b4ead67e80884a63698fce",
        "ebef0fec6cba0709a46db92577363612fc18636f6bd77930ec3f5a06f074d6c6",
    ),
    "demo": (
        {"num_classes": 4, "bn_moving_average_fraction": 0.99, "train_batch_size": 8, "test_batch_size": 4},
        "d1fa74b88ff2e3e41e2366b653c86679dd3b48dfcfb2d5ff5710950ba415a4e5",
        "e4feff66898530d05603c6d98a18978aa138391bf903a102db66fe94da7a5faa",
        "59e7f5fa6d379733a3def5bd86bad5b3b550fed5d011d96942d311d06f1d76cf",
    ),
    "published91_folded": (
        {"num_classes": 91, "backbone_bn": "folded"},
        "0113703cb730c266afc525c3de5ae0113c8854c98beb0dd9aa954586f0e236d5",
        "ca654cb5500b8a5cc24194873cec4183f9265ddc2416a909a1671479089bd18c",
        "428c5ebe9599d5197ed2d23cabf4adb0321dfc26cc8ba8ac91f2e64eef115dbe",
    ),
    "width0.5_320": (
        {"num_classes": 81, "input_size": 320, "width": 0.5},
        "57c6ea06a0838eac8c10e614ac91027b3dce4b73b2bcf6730b30a50e2b2ec088",
        "51607e305241c9f7472085699f1d28de9afaa0a80ed5cc88a3d1d616b23dfd2f",
        "4fd502335971b038e8ad1a237bfb5d8501798049ebb83c3b4024be51af318b7f",
    ),
    "input512": (
        {"num_classes": 81, "input_size": 512},
        "53e102d0a085dab79967af9afc345d25217cfb90a9bbce5b7b3218d10f9a9aa5",
        "7465ceff592033fd7bdef1341bc21f466229869b5d374f55f36ec0f116a4d2cc",
        "53a2b77c1ae27e405a35a81ea640487cb8942794b2a36c6dccaade75789aca19",
    ),
}
CUSTOM = prior_design(min_ratio=7, max_ratio=90, aspect_ratios=((2, 3), (2,), (1.5, 2, 3), (2, 3), (), (3,)))


def write_net(tmp_path: Path, options: ModelOptions, role: str = "deploy") -> Path:
    path = tmp_path / f"{role}.prototxt"
    path.write_text(format_prototxt(build_net(options, role)))
    return path


def numpy_priors(deploy: Path) -> np.ndarray:
    return prior_boxes(prior_box_specs(read_prototxt(deploy, caffe_pb2.NetParameter()), net_blob_shapes(deploy)))


def pycaffe_priors(deploy: Path) -> np.ndarray:
    """Run only the PriorBox layers and their Concat (they need the shapes, not the data)."""
    net = caffe.Net(str(deploy), caffe.TEST)
    names = list(net._layer_names)
    for index, layer in enumerate(net.layers):
        if layer.type == "PriorBox" or names[index] == "mbox_priorbox":
            net._forward(index, index)
    return net.blobs["mbox_priorbox"].data[0, 0].reshape(-1, 4)


@pytest.mark.parametrize("case", sorted(DIGESTS_BEFORE))
def test_default_priors_leave_the_generated_nets_byte_identical(case):
    options, *digests = DIGESTS_BEFORE[case]
    paths = {"train": "results/model/train.prototxt", "test": "results/model/test.prototxt"}
    texts, _ = generate_model(model_options(**options), solver_settings(), paths, 10, "cpu")
    got = [hashlib.sha256(texts[role].encode()).hexdigest() for role in ("train", "test", "deploy")]
    assert got == digests


def test_default_priorbox_params_are_the_published_nets(shared_dir):
    def params(net):
        return [(layer.bottom[0], str(layer.prior_box_param)) for layer in net.layer if layer.type == "PriorBox"]

    upstream = read_prototxt(shared_dir / UPSTREAM, caffe_pb2.NetParameter())
    assert params(build_net(model_options(num_classes=91), "deploy")) == params(upstream)


@pytest.mark.parametrize(
    "options",
    [
        model_options(num_classes=4),
        model_options(num_classes=4, input_size=512),
        model_options(num_classes=4, priors=CUSTOM),
    ],
    ids=["default", "512", "custom"],
)
def test_numpy_priors_equal_caffe_priorbox(tmp_path, options):
    deploy = write_net(tmp_path, options)
    ours = numpy_priors(deploy)
    assert ours.shape == pycaffe_priors(deploy).shape
    np.testing.assert_allclose(ours, pycaffe_priors(deploy), atol=1e-6)


def test_numpy_priors_of_the_published_net(shared_dir):
    upstream = shared_dir / UPSTREAM
    assert numpy_priors(upstream).shape == (1917, 4)
    np.testing.assert_allclose(numpy_priors(upstream), pycaffe_priors(upstream), atol=1e-6)


def test_the_prior_keys_reach_the_priorbox_layers():
    layers = [layer for layer in build_net(model_options(num_classes=4, priors=CUSTOM), "train").layer]
    priorbox = [layer.prior_box_param for layer in layers if layer.type == "PriorBox"]
    # 7 ... 90 % of 300 in five equal steps; each max size is the next map's min size, 300 for the last.
    assert [size for p in priorbox for size in p.min_size] == pytest.approx([21, 70.8, 120.6, 170.4, 220.2, 270])
    assert [len(p.max_size) for p in priorbox] == [0, 1, 1, 1, 1, 1]
    assert [size for p in priorbox for size in p.max_size] == pytest.approx([120.6, 170.4, 220.2, 270, 300])
    assert [list(p.aspect_ratio) for p in priorbox] == [[2, 3], [2], [1.5, 2, 3], [2, 3], [], [3]]
    conf = {layer.name: layer.convolution_param.num_output for layer in layers}
    assert conf["conv_13/expand_mbox_conf"] == 5 * 4 and conf["layer_19_2_4_mbox_conf"] == 2 * 4


@pytest.mark.parametrize(
    ("design", "message"),
    [
        (prior_design(min_ratio=50, max_ratio=40), "0 < min_ratio < max_ratio < 100"),
        (prior_design(max_ratio=100), "0 < min_ratio < max_ratio < 100"),
        (prior_design(min_ratio=0.1), "under 1 pixel"),
        (prior_design(aspect_ratios=((2,),) * 5), "needs 6 lists"),
        (prior_design(aspect_ratios=((2,), (1, 2), (2,), (2,), (2,), (2,))), "aspect_ratios[1]"),
        (prior_design(aspect_ratios=((2, 2.0000001),) + ((2,),) * 5), "aspect_ratios[0]"),
    ],
)
def test_bad_prior_designs_are_refused(design, message):
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model_options(num_classes=4, priors=design)


def test_matching_is_caffes_bipartite_then_per_prediction():
    # priors x boxes. Box 0 takes prior 0 (0.9); box 1's best prior is also prior 0 (0.6), so bipartite gives
    # it prior 1 at 0.2: matched, but below the threshold. Prior 2 goes to box 0 per prediction (0.55 >= 0.5).
    overlaps = np.array([[0.9, 0.6], [0.0, 0.2], [0.55, 0.1], [0.3, 0.0]])
    assert match_priors(overlaps, 0.5).tolist() == [0, 1, 0, -1]
    assert covered_boxes(overlaps, 0.5).tolist() == [True, False]
    assert match_priors(np.array([[1e-7], [0.3]]), 0.5).tolist() == [-1, 0]  # overlaps up to 1e-6 do not count
    assert match_priors(np.array([[0.7, 0.7], [0.7, 0.7]]), 0.5).tolist() == [0, 1]  # ties: first prior, first box


def test_training_boxes_skip_crowd_and_clip_to_the_image():
    coco = {
        "images": [{"id": 1, "width": 200, "height": 100}, {"id": 2, "width": 50, "height": 50}],
        "annotations": [
            {"image_id": 1, "bbox": [-1, 10, 101, 20], "iscrowd": 0},
            {"image_id": 1, "bbox": [0, 0, 200, 100], "iscrowd": 1},
            {"image_id": 2, "bbox": [5, 5, 0, 10]},
        ],
    }
    data = training_boxes(coco)
    assert len(data.boxes) == 1
    np.testing.assert_allclose(data.boxes[0], [[0.0, 0.1, 0.5, 0.3]])
    assert data.areas[0].tolist() == [101 * 20]
    assert data.skipped == {"crowd": 1, "zero_area": 1, "no_image": 0}


def instances_from_boxes(path: Path, images: list[list[list[float]]], side: int = 300) -> Path:
    """A COCO instances file of ``side`` x ``side`` images, one per list of pixel ``[x, y, w, h]`` boxes."""
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for image_id, boxes in enumerate(images, start=1):
        coco["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "width": side, "height": side})
        for box in boxes:
            coco["annotations"].append(
                {"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1, "bbox": box, "iscrowd": 0}
            )
    path.write_text(json.dumps(coco))
    return path


def test_boxes_equal_to_priors_are_all_covered(tmp_path):
    options = model_options(num_classes=4)
    deploy, train = write_net(tmp_path, options), write_net(tmp_path, options, "train")
    priors = numpy_priors(deploy).astype(np.float64)
    inside = np.flatnonzero((priors >= 0).all(axis=1) & (priors <= 1).all(axis=1))
    rng = np.random.default_rng(0)
    picked = rng.choice(inside, size=(20, 5), replace=False)
    images = [
        [[x0 * 300, y0 * 300, (x1 - x0) * 300, (y1 - y0) * 300] for x0, y0, x1, y1 in priors[row]] for row in picked
    ]
    instances = instances_from_boxes(tmp_path / "equal.json", images)
    report = write_prior_coverage(deploy, train, instances, tmp_path / "c.json", tmp_path / "c.md", 0.5, None)
    assert report["buckets"]["all"] == {
        "boxes": 100,
        "covered": 100,
        "coverage": 1.0,
        "best_iou_coverage": 1.0,
        "mean_best_iou": 1.0,
    }
    assert report["buckets"]["medium"]["boxes"] and report["buckets"]["large"]["boxes"]
    assert report["warning"] is None and report["num_priors"] == 1917


def test_tiny_boxes_give_low_coverage_and_one_warning_line(tmp_path):
    images = [[[x, y, 4, 3] for x in (10, 150, 280)] for y in (20, 140, 290)]
    instances = instances_from_boxes(tmp_path / "tiny.json", images)
    labelmap, name_size = tmp_path / "labelmap.prototxt", tmp_path / "name_size.txt"
    make_labelmap({"test": instances}, labelmap, {"test": name_size}, parse_settings(LabelmapSettings))
    out = tmp_path / "results" / "model"
    out.mkdir(parents=True)
    args = [f"--{role}={out / (role + '.prototxt')}" for role in ("out-train", "out-test", "out-deploy", "out-solver")]
    command = [
        str(REPO / "scripts" / "logged"),
        str(tmp_path / "make_model.log"),
        sys.executable,
        str(REPO / "scripts" / "make_model.py"),
        f"--model-settings={json.dumps({'augmentation': False, 'prior_coverage_warn_below': 0.3})}",
        "--device=cpu",
        f"--labelmap={labelmap}",
        f"--name-size={name_size}",
        f"--test-instances={instances}",
        f"--train-instances={instances}",
        f"--config-out={out / 'model_config.json'}",
        f"--coverage-json={out / 'prior_coverage.json'}",
        f"--coverage-md={out / 'prior_coverage.md'}",
        *args,
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (tmp_path / "make_model.log").read_text()[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith("warning: prior coverage 0.0% of 9 training boxes (small 0.0%, medium n/a")
    for key in ("model.prior_coverage_warn_below 0.3", "model.priors.min_ratio (now 20)", "model.input_size"):
        assert key in warnings[0]
    report = json.loads((out / "prior_coverage.json").read_text())
    assert report["buckets"]["small"]["coverage"] == 0.0 and report["buckets"]["all"]["boxes"] == 9
    assert report["overlap_threshold"] == 0.5 and report["warn_below"] == 0.3
    assert "| small (< 32²) | 9 | 0.0% |" in (out / "prior_coverage.md").read_text()
    # the report's page: the same table and the same warning, through the report rule's script
    page = tmp_path / "prior_coverage.html"
    command = [sys.executable, str(REPO / "scripts/model_report.py"), "--coverage", str(out / "prior_coverage.json")]
    result = subprocess.run([*command, "--coverage-html", str(page)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    html = page.read_text()
    assert "<td>small (&lt; 32²)</td><td>9</td><td>0.0%</td>" in html
    assert "class='warning'>prior coverage 0.0% of 9 training boxes" in html


def test_smaller_priors_raise_the_coverage_of_small_boxes(tmp_path, coco_mini_dir):
    coco = json.loads((coco_mini_dir / "annotations" / "instances_mini.json").read_text())
    data = training_boxes(coco)
    small = {}
    for name, design in {"default": prior_design(), "small": prior_design(min_ratio=6, max_ratio=80)}.items():
        deploy = write_net(tmp_path, model_options(num_classes=4, input_size=512, priors=design))
        small[name] = prior_coverage(numpy_priors(deploy), data, 0.5)["buckets"]["small"]["coverage"]
    assert small["default"] < 0.01 < 0.1 < small["small"]
    empty = prior_coverage(numpy_priors(deploy), TrainingBoxes([], [], {}), 0.5)
    assert empty["buckets"]["all"] == {
        "boxes": 0,
        "covered": 0,
        "coverage": None,
        "best_iou_coverage": None,
        "mean_best_iou": None,
    }
