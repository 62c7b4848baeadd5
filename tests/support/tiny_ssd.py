"""A tiny SSD world for the train/evaluate/export tests: real coco-mini images, real LMDBs, real Caffe nets.

``make_tiny_world(folder, coco_mini_dir)`` writes, under ``folder``:

* ``labelmap.prototxt`` (3 categories: person, car, chair; ``name`` = COCO category id),
* ``{trainval,test}_lmdb`` (AnnotatedDatum, images resized to SIZE x SIZE: this Caffe has no
  resize_param yet), ``{trainval,test}_name_size.txt`` (original sizes) and ``test_instances.json``
  (COCO ground truth of the test images, the 3 categories),
* ``train.prototxt``, ``test.prototxt``, ``deploy.prototxt``, ``solver.prototxt``: a 4-conv
  MobileNet-style body (Convolution + BatchNorm + Scale + ReLU6, one depthwise) with two SSD heads.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from tests.support.helpers import write_annotated_lmdb

SIZE = 64
CATEGORIES = (1, 3, 62)  # person, car, chair: the most frequent in coco-mini
NUM_CLASSES = len(CATEGORIES) + 1
TRANSFORM = "scale: 0.007843 mean_value: 127.5 mean_value: 127.5 mean_value: 127.5"


@dataclass
class TinyWorld:
    folder: Path
    labelmap: Path
    train_lmdb: Path
    test_lmdb: Path
    test_name_size: Path
    test_instances: Path
    train_net: Path
    test_net: Path
    deploy_net: Path
    solver: Path
    test_images: list[Path]


def _conv_bn(name: str, bottom: str, num_output: int, kernel: int, stride: int, group: int = 1) -> str:
    pad = kernel // 2
    engine = " engine: CAFFE" if group > 1 else ""
    return f"""
layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
  param {{ lr_mult: 1 decay_mult: 1 }}
  convolution_param {{ num_output: {num_output} kernel_size: {kernel} pad: {pad} stride: {stride} group: {group}
    bias_term: false{engine} weight_filler {{ type: "msra" }} }} }}
layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{name}"
  param {{ lr_mult: 0 decay_mult: 0 }} param {{ lr_mult: 0 decay_mult: 0 }} param {{ lr_mult: 0 decay_mult: 0 }} }}
layer {{ name: "{name}/scale" type: "Scale" bottom: "{name}" top: "{name}"
  param {{ lr_mult: 1 decay_mult: 0 }} param {{ lr_mult: 1 decay_mult: 0 }} scale_param {{ bias_term: true }} }}
layer {{ name: "{name}/relu" type: "ReLU6" bottom: "{name}" top: "{name}" }}
"""


HEADS = (("conv3", 10, 24, 16), ("conv4", 24, 48, 32))  # feature, min_size, max_size, step


def _body_and_heads(phase: str, num_classes: int = NUM_CLASSES) -> str:
    text = _conv_bn("conv1", "data", 16, 3, 2)
    text += _conv_bn("conv2", "conv1", 16, 3, 2, group=16)
    text += _conv_bn("conv3", "conv2", 32, 1, 1)
    text += _conv_bn("conv4", "conv3", 32, 3, 2)
    locs, confs, priors = [], [], []
    for feature, min_size, max_size, step in HEADS:
        num_priors = 4  # min, sqrt(min*max), ratio 2 and 1/2
        for kind, width in (("loc", 4), ("conf", num_classes)):
            name = f"{feature}_mbox_{kind}"
            text += f"""
layer {{ name: "{name}" type: "Convolution" bottom: "{feature}" top: "{name}"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  convolution_param {{ num_output: {num_priors * width} kernel_size: 3 pad: 1
    weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0 }} }} }}
layer {{ name: "{name}_perm" type: "Permute" bottom: "{name}" top: "{name}_perm"
  permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{name}_flat" type: "Flatten" bottom: "{name}_perm" top: "{name}_flat" flatten_param {{ axis: 1 }} }}
"""
            (locs if kind == "loc" else confs).append(f"{name}_flat")
        text += f"""
layer {{ name: "{feature}_mbox_priorbox" type: "PriorBox" bottom: "{feature}" bottom: "data"
  top: "{feature}_mbox_priorbox"
  prior_box_param {{ min_size: {min_size} max_size: {max_size} aspect_ratio: 2 flip: true clip: false
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: {step} offset: 0.5 }} }}
"""
        priors.append(f"{feature}_mbox_priorbox")
    for top, bottoms, axis in (("mbox_loc", locs, 1), ("mbox_conf", confs, 1), ("mbox_priorbox", priors, 2)):
        joined = " ".join(f'bottom: "{b}"' for b in bottoms)
        text += f'layer {{ name: "{top}" type: "Concat" {joined} top: "{top}" concat_param {{ axis: {axis} }} }}\n'
    if phase == "train":
        text += f"""
layer {{ name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf" bottom: "mbox_priorbox"
  bottom: "label" top: "mbox_loss"
  propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param {{ normalization: VALID }}
  multibox_loss_param {{ loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0
    num_classes: {num_classes} share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5
    use_prior_for_matching: true background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3.0
    neg_overlap: 0.5 code_type: CENTER_SIZE ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE }} }}
"""
        return text
    text += f"""
layer {{ name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape"
  reshape_param {{ shape {{ dim: 0 dim: -1 dim: {num_classes} }} }} }}
layer {{ name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax"
  softmax_param {{ axis: 2 }} }}
layer {{ name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten"
  flatten_param {{ axis: 1 }} }}
layer {{ name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf_flatten"
  bottom: "mbox_priorbox" top: "detection_out" include {{ phase: TEST }}
  detection_output_param {{ num_classes: {num_classes} share_location: true background_label_id: 0
    nms_param {{ nms_threshold: 0.45 top_k: 100 }} code_type: CENTER_SIZE keep_top_k: 50
    confidence_threshold: 0.01 }} }}
"""
    return text


def train_net_text(lmdb: Path, batch: int = 4, num_classes: int = NUM_CLASSES) -> str:
    return f"""name: "tiny_ssd_train"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ {TRANSFORM} mirror: true }}
  data_param {{ source: "{lmdb}" batch_size: {batch} backend: LMDB }}
  annotated_data_param {{ batch_sampler {{ max_sample: 1 max_trials: 1 }} }} }}
""" + _body_and_heads("train", num_classes)


def test_net_text(lmdb: Path, name_size: Path, batch: int = 4) -> str:
    return (
        f"""name: "tiny_ssd_test"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ {TRANSFORM} }}
  data_param {{ source: "{lmdb}" batch_size: {batch} backend: LMDB }}
  annotated_data_param {{ batch_sampler {{ }} }} }}
"""
        + _body_and_heads("test")
        + f"""
layer {{ name: "detection_eval" type: "DetectionEvaluate" bottom: "detection_out" bottom: "label"
  top: "detection_eval" include {{ phase: TEST }}
  detection_evaluate_param {{ num_classes: {NUM_CLASSES} background_label_id: 0 overlap_threshold: 0.5
    evaluate_difficult_gt: false name_size_file: "{name_size}" }} }}
"""
    )


def deploy_net_text(num_classes: int = NUM_CLASSES) -> str:
    return f"""name: "tiny_ssd_deploy"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: {SIZE} dim: {SIZE} }} }} }}
""" + _body_and_heads("deploy", num_classes)


def trained_like_deploy(
    folder: Path, seed: int, variance: tuple[float, float], scale: tuple[float, float], bias: tuple[float, float]
) -> tuple[Path, Path]:
    """The deploy net (in-place ReLU6 after every convolution) with trained-like weights: BatchNorm variances
    uniform in ``variance``, Scale factors uniform in ``scale``, biases normal with ``bias`` = (mean, sd), so
    folding and clipping at 6 both matter; ``folder/deploy.{prototxt,caffemodel}``."""
    import numpy as np

    import caffe

    prototxt = folder / "deploy.prototxt"
    prototxt.write_text(deploy_net_text())
    caffe.set_random_seed(seed)
    net = caffe.Net(str(prototxt), caffe.TEST)
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        if len(blobs) == 3 and blobs[2].data.size == 1:  # BatchNorm
            blobs[0].data[...] = rng.normal(0, 0.3, blobs[0].data.shape)
            blobs[1].data[...] = rng.uniform(*variance, blobs[1].data.shape)
            blobs[2].data[...] = 1.0
        elif name.endswith("/scale"):
            blobs[0].data[...] = rng.uniform(*scale, blobs[0].data.shape)
            blobs[1].data[...] = rng.normal(*bias, blobs[1].data.shape)
    net.save(str(folder / "deploy.caffemodel"))
    return prototxt, folder / "deploy.caffemodel"


def solver_text(
    train_net: Path,
    test_net: Path,
    snapshot_prefix: Path,
    max_iter: int = 40,
    test_iter: int = 3,
    test_interval: int = 20,
) -> str:
    return f"""train_net: "{train_net}"
test_net: "{test_net}"
test_iter: {test_iter}
test_interval: {test_interval}
base_lr: 0.01
lr_policy: "multistep"
stepvalue: 30
gamma: 0.5
momentum: 0.9
weight_decay: 0.00005
max_iter: {max_iter}
display: 10
average_loss: 5
snapshot: 1000
snapshot_prefix: "{snapshot_prefix}"
snapshot_after_train: true
test_initialization: false
random_seed: 3
type: "SGD"
solver_mode: CPU
eval_type: "detection"
ap_version: "11point"
"""


def _records(images: list[dict], annotations: dict[int, list[dict]], images_dir: Path, label_of: dict[int, int]):
    from PIL import Image

    records = []
    for image in images:
        with Image.open(images_dir / image["file_name"]) as opened:
            small = opened.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=92)
        width, height = image["width"], image["height"]
        boxes = []
        for ann in annotations.get(image["id"], []):
            x, y, w, h = ann["bbox"]
            boxes.append((label_of[ann["category_id"]], x / width, y / height, (x + w) / width, (y + h) / height))
        records.append((buffer.getvalue(), SIZE, SIZE, boxes))
    return records


def make_tiny_world(
    folder: Path,
    coco_mini_dir: Path,
    num_train: int = 24,
    num_test: int = 12,
    max_iter: int = 40,
    test_interval: int = 20,
) -> TinyWorld:
    from ssdlite_coco.labelmap import format_labelmap, format_name_size, labelmap_from_categories

    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads((coco_mini_dir / "annotations" / "instances_mini.json").read_text())
    categories = [c for c in data["categories"] if c["id"] in CATEGORIES]
    items = labelmap_from_categories(categories, "coco81")
    label_of = {int(item.name): item.label for item in items if item.label}
    annotations: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if ann["category_id"] in CATEGORIES and not ann.get("iscrowd", 0):
            annotations.setdefault(ann["image_id"], []).append(ann)
    with_boxes = sorted((img for img in data["images"] if img["id"] in annotations), key=lambda img: img["id"])
    train_images = with_boxes[:num_train]
    # the test split overlaps the train split so that a few dozen iterations give a measurable mAP
    test_images = with_boxes[:num_test]
    images_dir = coco_mini_dir / "images"

    labelmap = folder / "labelmap.prototxt"
    labelmap.write_text(format_labelmap(items))
    train_lmdb, test_lmdb = folder / "trainval_lmdb", folder / "test_lmdb"
    write_annotated_lmdb(train_lmdb, _records(train_images, annotations, images_dir, label_of))
    write_annotated_lmdb(test_lmdb, _records(test_images, annotations, images_dir, label_of))
    test_name_size = folder / "test_name_size.txt"
    test_name_size.write_text(format_name_size(test_images))
    test_ids = {img["id"] for img in test_images}
    instances = {
        "images": test_images,
        "annotations": [
            ann for ann in data["annotations"] if ann["image_id"] in test_ids and ann["category_id"] in CATEGORIES
        ],
        "categories": categories,
    }
    test_instances = folder / "test_instances.json"
    test_instances.write_text(json.dumps(instances))

    train_net, test_net, deploy_net = folder / "train.prototxt", folder / "test.prototxt", folder / "deploy.prototxt"
    train_net.write_text(train_net_text(train_lmdb))
    test_net.write_text(test_net_text(test_lmdb, test_name_size))
    deploy_net.write_text(deploy_net_text())
    solver = folder / "solver.prototxt"
    solver.write_text(
        solver_text(
            train_net,
            test_net,
            folder / "caffe_snapshot",
            max_iter=max_iter,
            test_iter=num_test // 4,
            test_interval=test_interval,
        )
    )
    return TinyWorld(
        folder,
        labelmap,
        train_lmdb,
        test_lmdb,
        test_name_size,
        test_instances,
        train_net,
        test_net,
        deploy_net,
        solver,
        [images_dir / img["file_name"] for img in test_images],
    )
