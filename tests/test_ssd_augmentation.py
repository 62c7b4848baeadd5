"""SSD transform-time augmentation of the project's Caffe (caffe/patches/0010-0016).

Checked through pycaffe on real LMDBs of AnnotatedDatum: the SSD names of TransformationParameter
(resize_param, distort_param, expand_param, emit_constraint, force_color), the upstream SSDLite COCO nets
training on them, and what each augmentation does to the pixels and to the boxes.
"""

from __future__ import annotations

import colorsys
import io
import json
from pathlib import Path

import lmdb
import numpy as np
import pytest
from caffe.proto import caffe_pb2
from google.protobuf import text_format
from PIL import Image, ImageDraw

import caffe
from ssdlite_coco.lmdb.writer import build_lmdb
from tests.support.lmdb_helpers import build_options, load_mini, make_split, write_labelmap

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACT_DIR = REPO_ROOT / "tests" / "artifacts"
UPSTREAM_TRAIN = "chuanqi305-ssdlite-coco-train.prototxt"
UPSTREAM_TEST = "chuanqi305-ssdlite-coco-test.prototxt"
GRAYSCALE_IMAGE = "000000000086.jpg"


@pytest.fixture(scope="module")
def upstream_dir(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "upstream"


# ---------------------------------------------------------------------------------------------------------
# helpers: images, AnnotatedDatum LMDBs, small data-only nets


def encode_image(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """Encode an H x W x 3 BGR (Caffe's channel order) or H x W gray uint8 array."""
    array = pixels[..., ::-1] if pixels.ndim == 3 else pixels
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


def annotated_datum(image_bytes: bytes, boxes) -> caffe_pb2.AnnotatedDatum:
    """An encoded AnnotatedDatum; boxes are (label, xmin, ymin, xmax, ymax, difficult), normalized."""
    anno_datum = caffe_pb2.AnnotatedDatum()
    anno_datum.type = caffe_pb2.AnnotatedDatum.BBOX
    anno_datum.datum.encoded = True
    anno_datum.datum.data = image_bytes
    groups: dict[int, caffe_pb2.AnnotationGroup] = {}
    for label, xmin, ymin, xmax, ymax, difficult in boxes:
        if label not in groups:
            groups[label] = anno_datum.annotation_group.add(group_label=label)
        group = groups[label]
        annotation = group.annotation.add(instance_id=len(group.annotation))
        annotation.bbox.xmin, annotation.bbox.ymin = xmin, ymin
        annotation.bbox.xmax, annotation.bbox.ymax = xmax, ymax
        annotation.bbox.difficult = bool(difficult)
    return anno_datum


def write_lmdb(path: Path, datums) -> Path:
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for index, datum in enumerate(datums):
            txn.put(f"{index:08d}".encode(), datum.SerializeToString())
    env.close()
    return path


def coco_lmdb(coco_mini_dir: Path, out_dir: Path, count: int) -> tuple[Path, Path, list]:
    """The first count coco-mini images (by id) and the grayscale one, through the project's LMDB builder.

    Returns (LMDB, labelmap, the stored AnnotatedDatum records in read order). Grayscale JPEGs are stored as
    they are, so nets reading it set force_color (as the project's prototxt patcher does).
    """
    images = load_mini(coco_mini_dir)["images"]
    gray_id = next(image["id"] for image in images if image["file_name"] == GRAYSCALE_IMAGE)
    image_ids = sorted(image["id"] for image in images)[: count - 1] + [gray_id]
    instances, images = make_split(coco_mini_dir, out_dir / "split", image_ids)
    labelmap = write_labelmap(json.loads(instances.read_text()), out_dir / "labelmap.prototxt")
    source = out_dir / "lmdb"
    build_lmdb(instances, images, labelmap, source, out_dir / "report.json", build_options("test"))
    env = lmdb.open(str(source), readonly=True, lock=False)
    with env.begin() as txn:
        records = [caffe_pb2.AnnotatedDatum.FromString(value) for _, value in txn.cursor()]
    env.close()
    return source, labelmap, records


def upstream_net(path: Path) -> caffe_pb2.NetParameter:
    return text_format.Parse(path.read_text(), caffe_pb2.NetParameter())


def upstream_train_data_layer(upstream_dir: Path) -> caffe_pb2.LayerParameter:
    """The upstream train data layer, with force_color for the grayscale JPEG of coco-mini."""
    layer = upstream_net(upstream_dir / UPSTREAM_TRAIN).layer[0]
    layer.transform_param.force_color = True
    return layer


def data_net(
    path: Path,
    source: Path,
    transform_param: str | caffe_pb2.TransformationParameter,
    batch_size: int,
    annotated_data_param: str | caffe_pb2.AnnotatedDataParameter = "",
) -> Path:
    """A net of one AnnotatedData layer (TRAIN phase) reading source."""
    net = caffe_pb2.NetParameter(name="augmentation")
    layer = net.layer.add(name="data", type="AnnotatedData", top=["data", "label"])
    layer.include.add(phase=caffe_pb2.TRAIN)
    for field, value in (
        (layer.transform_param, transform_param),
        (layer.annotated_data_param, annotated_data_param),
    ):
        if isinstance(value, str):
            text_format.Merge(value, field)
        else:
            field.CopyFrom(value)
    layer.data_param.source = str(source)
    layer.data_param.batch_size = batch_size
    layer.data_param.backend = caffe_pb2.DataParameter.LMDB
    path.write_text(text_format.MessageToString(net))
    return path


def run_batches(net_path: Path, count: int, seed: int = 1):
    """count batches as (data, label rows) from a fresh net seeded with seed; the net is freed after."""
    caffe.set_mode_cpu()
    caffe.set_random_seed(seed)
    net = caffe.Net(str(net_path), caffe.TRAIN)
    batches = []
    for _ in range(count):
        net.forward()
        batches.append((net.blobs["data"].data.copy(), net.blobs["label"].data.reshape(-1, 8).copy()))
    del net
    return batches


def rows_of(labels: np.ndarray) -> np.ndarray:
    """Label rows of real boxes (a batch without any box has one row of -1)."""
    return labels[labels[:, 0] >= 0]


# ---------------------------------------------------------------------------------------------------------
# the proto: SSD names, numbers and defaults


def test_transformation_parameter_has_ssd_fields():
    fields = caffe_pb2.TransformationParameter.DESCRIPTOR.fields_by_name
    numbers = {name: fields[name].number for name in fields}
    assert numbers["resize_param"] == 8
    assert numbers["noise_param"] == 9
    assert numbers["emit_constraint"] == 10
    assert numbers["distort_param"] == 13
    assert numbers["expand_param"] == 14
    assert numbers["force_color"] == 6
    assert fields["resize_param"].message_type.name == "ResizeParameter"
    assert fields["distort_param"].message_type.name == "DistortionParameter"
    assert fields["expand_param"].message_type.name == "ExpansionParameter"
    assert fields["emit_constraint"].message_type.name == "EmitConstraint"

    param = text_format.Parse(
        """
        force_color: true
        resize_param { prob: 0.5 resize_mode: FIT_LARGE_SIZE_AND_PAD height: 300 width: 200
                       height_scale: 600 width_scale: 400 pad_mode: MIRRORED pad_value: 1 pad_value: 2
                       pad_value: 3 interp_mode: LINEAR interp_mode: AREA interp_mode: NEAREST
                       interp_mode: CUBIC interp_mode: LANCZOS4 }
        distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 contrast_lower: 0.5
                        contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 saturation_prob: 0.5
                        saturation_lower: 0.5 saturation_upper: 1.5 random_order_prob: 0.1 }
        expand_param { prob: 0.5 max_expand_ratio: 4 }
        emit_constraint { emit_type: MIN_OVERLAP emit_overlap: 0.7 }
        """,
        caffe_pb2.TransformationParameter(),
    )
    assert param.force_color
    assert param.resize_param.resize_mode == caffe_pb2.ResizeParameter.FIT_LARGE_SIZE_AND_PAD
    assert (param.resize_param.height_scale, param.resize_param.width_scale) == (600, 400)
    assert param.resize_param.pad_mode == caffe_pb2.ResizeParameter.MIRRORED
    assert list(param.resize_param.pad_value) == [1, 2, 3]
    assert len(param.resize_param.interp_mode) == 5
    assert param.distort_param.hue_delta == 18
    assert param.distort_param.random_order_prob == pytest.approx(0.1)
    assert param.expand_param.max_expand_ratio == 4
    assert param.emit_constraint.emit_type == caffe_pb2.EmitConstraint.MIN_OVERLAP

    # The SSD defaults.
    resize = caffe_pb2.ResizeParameter()
    assert (resize.prob, resize.resize_mode, resize.height, resize.width) == (1, resize.WARP, 0, 0)
    assert resize.pad_mode == resize.CONSTANT
    expand = caffe_pb2.ExpansionParameter()
    assert (expand.prob, expand.max_expand_ratio) == (1, 1)
    distort = caffe_pb2.DistortionParameter()
    assert all(getattr(distort, f.name) == 0 for f in distort.DESCRIPTOR.fields)
    assert caffe_pb2.EmitConstraint().emit_type == caffe_pb2.EmitConstraint.CENTER
    assert [caffe_pb2.ResizeParameter.Interp_mode.Name(v) for v in range(1, 6)] == [
        "LINEAR",
        "AREA",
        "NEAREST",
        "CUBIC",
        "LANCZOS4",
    ]


@pytest.mark.parametrize("prototxt", [UPSTREAM_TRAIN, UPSTREAM_TEST], ids=["train", "test"])
def test_upstream_prototxt_parses_unmodified(upstream_dir, prototxt):
    net = upstream_net(upstream_dir / prototxt)
    transform = net.layer[0].transform_param
    assert transform.resize_param.height == 300 and transform.resize_param.width == 300
    if prototxt == UPSTREAM_TRAIN:
        assert transform.distort_param.brightness_delta == 32
        assert transform.expand_param.max_expand_ratio == 4


def test_resize_layer_keeps_working(tmp_path):
    """The sdist's own Resize layer keeps its resize_param (now of type ResizeLayerParameter)."""
    field = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["resize_param"]
    assert field.message_type.name == "ResizeLayerParameter"
    net_path = tmp_path / "resize.prototxt"
    net_path.write_text(
        """
        layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } } }
        layer { name: "resize" type: "Resize" bottom: "x" top: "y" resize_param { height: 4 width: 6 } }
        """
    )
    net = caffe.Net(str(net_path), caffe.TEST)
    net.blobs["x"].data[...] = 1.0
    net.forward()
    assert net.blobs["y"].data.shape == (1, 2, 4, 6)


# ---------------------------------------------------------------------------------------------------------
# the upstream nets train on an LMDB


def test_upstream_train_and_test_nets_run(coco_mini_dir, upstream_dir, tmp_path):
    source, labelmap, records = coco_lmdb(coco_mini_dir, tmp_path, 12)
    assert any(Image.open(io.BytesIO(r.datum.data)).mode == "L" for r in records)

    def local_copy(upstream: str, name: str) -> Path:
        # Unmodified apart from paths, the batch size and force_color (the LMDB keeps grayscale JPEGs as
        # they are); the 91 outputs cover the 80 contiguous labels.
        net = upstream_net(upstream_dir / upstream)
        data = net.layer[0]
        data.data_param.source = str(source)
        data.data_param.batch_size = 2
        data.annotated_data_param.label_map_file = str(labelmap)
        data.transform_param.force_color = True
        path = tmp_path / name
        path.write_text(text_format.MessageToString(net))
        return path

    train_path = local_copy(UPSTREAM_TRAIN, "train.prototxt")
    test_path = local_copy(UPSTREAM_TEST, "test.prototxt")
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(
        f'train_net: "{train_path}"\nbase_lr: 0.001\nlr_policy: "fixed"\nmomentum: 0.9\n'
        f"weight_decay: 5e-05\nmax_iter: 3\ndisplay: 1\nsnapshot_after_train: false\nrandom_seed: 3\n"
        f'solver_mode: CPU\nsnapshot_prefix: "{tmp_path / "snap"}"\n'
    )
    caffe.set_mode_cpu()
    solver = caffe.get_solver(str(solver_path))
    losses = []
    for _ in range(3):
        solver.step(1)
        losses.append(float(solver.net.blobs["mbox_loss"].data))
        assert solver.net.blobs["data"].data.shape == (2, 3, 300, 300)
    assert all(np.isfinite(losses)) and all(loss > 0 for loss in losses), losses
    del solver

    net = caffe.Net(str(test_path), caffe.TEST)
    for _ in range(2):
        net.forward()
        assert net.blobs["data"].data.shape == (2, 3, 300, 300)
        assert np.isfinite(net.blobs["detection_eval"].data).all()
    del net


# ---------------------------------------------------------------------------------------------------------
# reproducibility


def test_same_seed_same_batches(coco_mini_dir, upstream_dir, tmp_path):
    source, _, _ = coco_lmdb(coco_mini_dir, tmp_path, 8)
    layer = upstream_train_data_layer(upstream_dir)
    net_path = data_net(tmp_path / "net.prototxt", source, layer.transform_param, 4, layer.annotated_data_param)

    first = run_batches(net_path, 4, seed=11)
    second = run_batches(net_path, 4, seed=11)
    other = run_batches(net_path, 4, seed=12)
    for (data_a, label_a), (data_b, label_b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(data_a, data_b)
        np.testing.assert_array_equal(label_a, label_b)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


# ---------------------------------------------------------------------------------------------------------
# distortion


GRAY_VALUE = 128
COLOR_BGR = (100, 150, 200)  # hue 15 (OpenCV 0..180), saturation 0.5, value 200


def opencv_hsv(bgr) -> tuple[float, float, float]:
    """Hue in OpenCV 8-bit units (0..180), saturation and value in 0..1 / 0..255."""
    b, g, r = (float(v) / 255 for v in bgr)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    return h * 180, s, v * 255


def distorted_pixels(tmp_path: Path, name: str, bgr, distort: str, batches: int = 8) -> np.ndarray:
    """The (one) pixel value of each sample of a uniform 24 x 32 image after distort_param; N x 3 (BGR)."""
    pixels = np.empty((24, 32, 3), np.uint8)
    pixels[...] = bgr
    source = write_lmdb(tmp_path / f"{name}_lmdb", [annotated_datum(encode_image(pixels), [])])
    net_path = data_net(tmp_path / f"{name}.prototxt", source, f"distort_param {{ {distort} }}", 8)
    samples = np.concatenate([data for data, _ in run_batches(net_path, batches, seed=5)])
    assert samples.shape == (8 * batches, 3, 24, 32)
    # Every distortion acts on the whole image alike.
    flat = samples.reshape(len(samples), 3, -1)
    assert (flat.max(axis=2) - flat.min(axis=2)).max() == 0
    return flat[:, :, 0]


def test_distortion_off_is_identity(tmp_path):
    values = distorted_pixels(
        tmp_path,
        "off",
        COLOR_BGR,
        "brightness_prob: 0 brightness_delta: 32 contrast_prob: 0 contrast_lower: 0.5 contrast_upper: 1.5 "
        "hue_prob: 0 hue_delta: 18 saturation_prob: 0 saturation_lower: 0.5 saturation_upper: 1.5",
        batches=2,
    )
    assert (values == np.array(COLOR_BGR)).all()


def test_brightness_within_delta(tmp_path):
    values = distorted_pixels(tmp_path, "brightness", (GRAY_VALUE,) * 3, "brightness_prob: 1 brightness_delta: 32")
    deltas = values[:, 0] - GRAY_VALUE
    assert (values == values[:, :1]).all()
    assert np.abs(deltas).max() <= 32
    assert deltas.min() < -16 and deltas.max() > 16  # really drawn from the whole range


def test_contrast_within_range(tmp_path):
    values = distorted_pixels(
        tmp_path, "contrast", (GRAY_VALUE,) * 3, "contrast_prob: 1 contrast_lower: 0.5 contrast_upper: 1.5"
    )
    factors = values[:, 0] / GRAY_VALUE
    assert factors.min() >= 0.5 - 1 / GRAY_VALUE and factors.max() <= 1.5 + 1 / GRAY_VALUE
    assert factors.min() < 0.75 and factors.max() > 1.25


def test_hue_within_delta(tmp_path):
    values = distorted_pixels(tmp_path, "hue", COLOR_BGR, "hue_prob: 1 hue_delta: 18")
    hue0, sat0, val0 = opencv_hsv(COLOR_BGR)
    shifts = []
    for bgr in values:
        hue, sat, val = opencv_hsv(bgr)
        shifts.append((hue - hue0 + 90) % 180 - 90)
        assert abs(val - val0) <= 2 and abs(sat - sat0) <= 0.03
    shifts = np.array(shifts)
    assert np.abs(shifts).max() <= 18 + 1.5
    assert shifts.min() < -9 and shifts.max() > 9


def test_saturation_within_range(tmp_path):
    values = distorted_pixels(
        tmp_path, "saturation", COLOR_BGR, "saturation_prob: 1 saturation_lower: 0.5 saturation_upper: 1.5"
    )
    hue0, sat0, val0 = opencv_hsv(COLOR_BGR)
    factors = []
    for bgr in values:
        hue, sat, val = opencv_hsv(bgr)
        factors.append(sat / sat0)
        assert abs(val - val0) <= 2 and abs(hue - hue0) <= 1.5
    factors = np.array(factors)
    assert factors.min() >= 0.5 - 0.02 and factors.max() <= 1.5 + 0.02
    assert factors.min() < 0.75 and factors.max() > 1.25


def test_random_order_permutes_channels(tmp_path):
    values = distorted_pixels(tmp_path, "order", COLOR_BGR, "random_order_prob: 1")
    orders = {tuple(v) for v in values.astype(int)}
    assert all(sorted(order) == sorted(COLOR_BGR) for order in orders)
    assert len(orders) > 2


def test_upstream_distortion_stays_in_combined_range(upstream_dir, tmp_path):
    distort = text_format.MessageToString(upstream_train_data_layer(upstream_dir).transform_param.distort_param)
    values = distorted_pixels(tmp_path, "upstream", (GRAY_VALUE,) * 3, distort.replace("\n", " "))
    # Gray stays gray (hue and saturation do nothing to it); brightness then contrast bound the value.
    assert (values == values[:, :1]).all()
    low, high = (GRAY_VALUE - 32) * 0.5 - 1, (GRAY_VALUE + 32) * 1.5 + 1
    assert values.min() >= low and values.max() <= min(high, 255)
    assert (values[:, 0] == GRAY_VALUE).mean() < 0.5


# ---------------------------------------------------------------------------------------------------------
# expansion


def box_table(datums) -> dict[tuple[int, int, int], np.ndarray]:
    """(item, label, instance) -> normalized [xmin, ymin, xmax, ymax] of the stored boxes."""
    table = {}
    for item, datum in enumerate(datums):
        for group in datum.annotation_group:
            for annotation in group.annotation:
                box = annotation.bbox
                table[(item, group.group_label, annotation.instance_id)] = np.clip(
                    [box.xmin, box.ymin, box.xmax, box.ymax], 0, 1
                )
    return table


def area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def test_expansion_shrinks_boxes_by_expected_factor(coco_mini_dir, tmp_path):
    source, _, datums = coco_lmdb(coco_mini_dir, tmp_path, 16)
    table = box_table(datums)
    transform = (
        "force_color: true mean_value: 104 mean_value: 117 mean_value: 123 "
        "resize_param { resize_mode: WARP height: 300 width: 300 } "
        "expand_param { prob: %s max_expand_ratio: 4 }"
    )
    ratios = {}  # prob -> one area ratio per expanded image (all its boxes shrink alike)
    for prob, batches in (("1", 40), ("0", 2)):
        net_path = data_net(tmp_path / f"expand_{prob}.prototxt", source, transform % prob, len(datums))
        ratios[prob] = []
        for _, labels in run_batches(net_path, batches, seed=21):
            rows = rows_of(labels)
            assert len(rows) == len(table)  # expansion never loses a box
            boxes = rows[:, 3:7]
            assert (boxes >= 0).all() and (boxes <= 1).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            originals = np.array([table[(int(r[0]), int(r[1]), int(r[2]))] for r in rows])
            box_ratios = area(boxes) / area(originals)
            for item in np.unique(rows[:, 0]):
                per_image = box_ratios[rows[:, 0] == item]
                np.testing.assert_allclose(per_image, per_image.mean(), rtol=2e-3)
                ratios[prob].append(per_image.mean())
    expanded = np.array(ratios["1"])
    # E[1/r^2] for r ~ U(1, R) is 1/R: 0.25 for the upstream max_expand_ratio 4; P(r > 2) = 2/3.
    print(f"mean box area ratio after expansion (R=4): {expanded.mean():.4f} over {len(expanded)} images")
    assert abs(expanded.mean() - 0.25) < 0.025
    assert abs((expanded < 0.25).mean() - 2 / 3) < 0.07
    assert expanded.max() <= 1.0 + 1e-3 and expanded.min() >= 1 / 16 - 0.01
    np.testing.assert_allclose(ratios["0"], 1.0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# resize modes and force_color


BACKGROUND_BGR = (50, 50, 50)
RECT_BGR = {1: (0, 0, 230), 2: (0, 220, 0), 3: (230, 0, 0)}


def find_rectangle(image_bgr: np.ndarray, color, others) -> np.ndarray | None:
    """Pixel box [x0, y0, x1, y1] (exclusive ends) of the pixels nearer to color than to any of others."""
    pixels = image_bgr.astype(np.float32)
    distance = np.linalg.norm(pixels - np.array(color, np.float32), axis=-1)
    nearest = np.ones(distance.shape, bool)
    for other in others:
        nearest &= distance < np.linalg.norm(pixels - np.array(other, np.float32), axis=-1)
    ys, xs = np.nonzero(nearest)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def one_rectangle_lmdb(tmp_path: Path, width: int = 120, height: int = 60):
    """One image with a red rectangle over the middle half of each side."""
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[...] = BACKGROUND_BGR
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = RECT_BGR[1]
    box = (1, 0.25, 0.25, 0.75, 0.75, 0)
    return write_lmdb(tmp_path / "rect_lmdb", [annotated_datum(encode_image(pixels), [box])])


@pytest.mark.parametrize(
    ("mode", "expected_hw", "content_rows"),
    [
        ("WARP", (40, 50), (0, 40)),
        # 120 x 60 fitted into 50 x 40: content 50 x 25, padded 7 rows on top and 8 below.
        ("FIT_LARGE_SIZE_AND_PAD", (40, 50), (7, 32)),
        # the small side (height) becomes 40, aspect kept: 80 x 40.
        ("FIT_SMALL_SIZE", (40, 80), (0, 40)),
    ],
)
def test_resize_mode_output_size_and_boxes(tmp_path, mode, expected_hw, content_rows):
    source = one_rectangle_lmdb(tmp_path)
    transform = f"resize_param {{ resize_mode: {mode} height: 40 width: 50 pad_value: 255 interp_mode: NEAREST }}"
    net_path = data_net(tmp_path / "net.prototxt", source, transform, 1)
    [(data, labels)] = run_batches(net_path, 1)
    assert data.shape == (1, 3) + expected_hw
    image = data[0].transpose(1, 2, 0)
    top, bottom = content_rows
    assert (image[:top] == 255).all() and (image[bottom:] == 255).all()
    assert not (image[top:bottom] == 255).any()
    [row] = rows_of(labels)
    height, width = expected_hw
    expected = row[3:7] * [width, height, width, height]
    found = find_rectangle(image, RECT_BGR[1], [BACKGROUND_BGR, (255, 255, 255)])
    np.testing.assert_allclose(found, expected, atol=1.0)


@pytest.mark.parametrize("interp", ["LINEAR", "AREA", "NEAREST", "CUBIC", "LANCZOS4"])
@pytest.mark.parametrize("pad_mode", ["CONSTANT", "MIRRORED", "REPEAT_NEAREST"])
def test_resize_interp_and_pad_modes(tmp_path, interp, pad_mode):
    source = one_rectangle_lmdb(tmp_path)
    transform = (
        f"resize_param {{ resize_mode: FIT_LARGE_SIZE_AND_PAD height: 40 width: 50 pad_mode: {pad_mode} "
        f"interp_mode: {interp} }}"
    )
    [(data, labels)] = run_batches(data_net(tmp_path / "net.prototxt", source, transform, 1), 1)
    assert data.shape == (1, 3, 40, 50)
    # Content rows 7..31; the 3 pad rows next to it repeat its (background) border, or are 0.
    border = 0 if pad_mode == "CONSTANT" else np.array(BACKGROUND_BGR)[:, None, None]
    assert np.abs(data[0, :, 4:7] - border).max() <= 2
    assert np.abs(data[0, :, 32:35] - border).max() <= 2
    [row] = rows_of(labels)
    np.testing.assert_allclose(row[3:7], [0.25, (7 + 6.25) / 40, 0.75, (7 + 18.75) / 40], atol=1e-5)


def test_force_color_gives_three_channels_for_grayscale_jpeg(coco_mini_dir, tmp_path):
    raw = (coco_mini_dir / "images" / GRAYSCALE_IMAGE).read_bytes()
    assert Image.open(io.BytesIO(raw)).mode == "L"
    source = write_lmdb(tmp_path / "gray_lmdb", [annotated_datum(raw, [(1, 0.1, 0.1, 0.5, 0.5, 0)])])
    resize = "resize_param { height: 64 width: 48 }"
    [(color, labels)] = run_batches(data_net(tmp_path / "color.prototxt", source, f"force_color: true {resize}", 1), 1)
    assert color.shape == (1, 3, 64, 48)
    assert (color[0, 0] == color[0, 1]).all() and (color[0, 1] == color[0, 2]).all()
    assert color.std() > 10
    np.testing.assert_allclose(rows_of(labels)[0, 3:7], [0.1, 0.1, 0.5, 0.5], atol=1e-6)
    [(native, _)] = run_batches(data_net(tmp_path / "native.prototxt", source, resize, 1), 1)
    assert native.shape == (1, 1, 64, 48)
    np.testing.assert_allclose(native[0, 0], color[0, 0], atol=1)


# ---------------------------------------------------------------------------------------------------------
# boxes follow the pixels through the whole pipeline


def synthetic_rectangles(count: int, seed: int = 0):
    """Images of several sizes with up to three non-overlapping rectangles of known colour, one per label."""
    rng = np.random.default_rng(seed)
    datums = []
    for index in range(count):
        width, height = [(200, 150), (160, 200), (240, 180), (180, 180)][index % 4]
        pixels = np.empty((height, width, 3), np.uint8)
        pixels[...] = BACKGROUND_BGR
        boxes = []
        labels = rng.permutation([1, 2, 3])[: 1 + index % 3]
        # One rectangle per vertical third, so that they never overlap.
        for slot, label in enumerate(labels):
            x0 = int(rng.integers(0, width // 2))
            x1 = int(x0 + rng.integers(width // 4, width // 2))
            y0 = slot * height // 3 + int(rng.integers(0, height // 12))
            y1 = (slot + 1) * height // 3 - int(rng.integers(0, height // 12))
            pixels[y0:y1, x0:x1] = RECT_BGR[label]
            boxes.append((int(label), x0 / width, y0 / height, x1 / width, y1 / height, 0))
        datums.append(annotated_datum(encode_image(pixels), boxes))
    return datums


def save_batch_picture(path: Path, images_bgr: list[np.ndarray], rows: np.ndarray) -> None:
    """The images of a batch in a row, each box drawn in yellow with its label."""
    height, width = images_bgr[0].shape[:2]
    sheet = Image.new("RGB", (len(images_bgr) * (width + 4), height), (255, 255, 255))
    for item, image in enumerate(images_bgr):
        tile = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)[..., ::-1].copy())
        draw = ImageDraw.Draw(tile)
        for row in rows[rows[:, 0] == item]:
            xmin, ymin, xmax, ymax = row[3:7] * [width, height, width, height]
            draw.rectangle([xmin, ymin, xmax - 1, ymax - 1], outline=(255, 255, 0), width=2)
            draw.text((xmin + 3, ymin + 2), str(int(row[1])), fill=(255, 255, 0))
        sheet.paste(tile, (item * (width + 4), 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / ".gitignore").write_text("*\n")
    sheet.save(path)


def test_boxes_match_pixels_after_full_augmentation(upstream_dir, tmp_path):
    """Expansion, the upstream batch samplers, emit constraint, resize (all interp modes) and mirror.

    The distortion is left out only because it changes the colours the rectangles are found by.
    """
    layer = upstream_train_data_layer(upstream_dir)
    transform = caffe_pb2.TransformationParameter()
    transform.CopyFrom(layer.transform_param)
    transform.ClearField("distort_param")
    datums = synthetic_rectangles(12)
    source = write_lmdb(tmp_path / "rect_lmdb", datums)
    net_path = data_net(tmp_path / "net.prototxt", source, transform, 6, layer.annotated_data_param)
    canvas = tuple(round(v) for v in transform.mean_value)
    checked = 0
    batches = run_batches(net_path, 8, seed=4)
    for data, labels in batches:
        images = data.transpose(0, 2, 3, 1) / transform.scale + np.array(transform.mean_value)
        for row in rows_of(labels):
            item, label = int(row[0]), int(row[1])
            height, width = images[item].shape[:2]
            expected = row[3:7] * [width, height, width, height]
            others = [BACKGROUND_BGR, canvas] + [c for k, c in RECT_BGR.items() if k != label]
            found = find_rectangle(images[item], RECT_BGR[label], others)
            assert found is not None, f"no pixels of label {label} in item {item} for row {row}"
            assert np.abs(found - expected).max() <= 2.0, (row, found, expected)
            checked += 1
    assert checked >= 60
    data, labels = batches[0]
    images = data.transpose(0, 2, 3, 1) / transform.scale + np.array(transform.mean_value)
    picture = ARTIFACT_DIR / "ssd_augmentation_boxes.png"
    save_batch_picture(picture, list(images), rows_of(labels))
    print(f"batch picture with its boxes: {picture}")
