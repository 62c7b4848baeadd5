"""Oracle: the real Caffe AnnotatedData layer reads the LMDB built from coco-mini and yields its labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssdlite_coco.lmdb.writer import build_lmdb
from tests.support.lmdb_helpers import MINI_JSON, build_options, expected_label_rows, load_mini, write_labelmap


def annotated_data_net(path: Path, lmdb_dir: Path, labelmap: Path) -> Path:
    """A net of one AnnotatedData layer: batch size 1, no sampler, no resize, decoded in colour."""
    path.write_text(
        f"""
layer {{
  name: "data"
  type: "AnnotatedData"
  top: "data"
  top: "label"
  include {{ phase: TEST }}
  transform_param {{ force_color: true }}
  data_param {{ source: "{lmdb_dir}" batch_size: 1 backend: LMDB }}
  annotated_data_param {{ label_map_file: "{labelmap}" }}
}}
"""
    )
    return path


def read_all_with_caffe(net_path: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    import caffe

    caffe.set_mode_cpu()
    net = caffe.Net(str(net_path), caffe.TEST)
    batches = []
    for _ in range(count):
        net.forward()
        batches.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
    del net
    return batches


@pytest.mark.parametrize("crowd", ["difficult", "drop"])
def test_caffe_reads_the_expected_boxes_for_every_image(coco_mini_dir, tmp_path, crowd):
    mini = load_mini(coco_mini_dir)
    labelmap = write_labelmap(mini, tmp_path / "labelmap.prototxt")
    report = build_lmdb(
        coco_mini_dir / MINI_JSON,
        coco_mini_dir / "images",
        labelmap,
        tmp_path / "lmdb",
        tmp_path / "report.json",
        build_options("trainval", shuffle_seed=1, crowd=crowd),
    )
    net = annotated_data_net(tmp_path / "net.prototxt", tmp_path / "lmdb", labelmap)
    batches = read_all_with_caffe(net, report["records"])
    images = {image["id"]: image for image in mini["images"]}
    seen = {"gray": 0, "empty": 0, "difficult": 0}
    for image_id, (data, label) in zip(report["image_ids"], batches, strict=True):
        image = images[image_id]
        assert data.shape == (1, 3, image["height"], image["width"]), image_id
        expected = expected_label_rows(mini, image_id, crowd=crowd)
        np.testing.assert_array_equal(label.reshape(-1, 8), expected, err_msg=f"image id {image_id}")
        seen["empty"] += bool((expected == -1).all())
        seen["difficult"] += int(expected[:, 7].clip(0).sum())
        if image_id == 86:  # the grayscale image: decoded as colour, three equal channels
            seen["gray"] += 1
            gray = np.asarray(Image.open(coco_mini_dir / "images" / image["file_name"]), dtype=np.float32)
            assert gray.ndim == 2
            for channel in range(3):
                assert np.abs(data[0, channel] - gray).max() <= 2
    assert seen == {"gray": 1, "empty": 2, "difficult": 10 if crowd == "difficult" else 0}


def test_caffe_sees_exif_rotated_jpeg_in_its_stored_orientation(coco_mini_dir, tmp_path):
    """OpenCV applies EXIF orientation; the build removes it so the pixels match the COCO boxes."""
    mini = load_mini(coco_mini_dir)
    image = next(image for image in mini["images"] if image["id"] == 9)
    (tmp_path / "images").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.open(coco_mini_dir / "images" / image["file_name"]).save(
        tmp_path / "images" / image["file_name"], format="JPEG", quality=90, exif=exif.tobytes()
    )
    data = {**mini, "images": [image], "annotations": [a for a in mini["annotations"] if a["image_id"] == 9]}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    labelmap = write_labelmap(mini, tmp_path / "labelmap.prototxt")
    report = build_lmdb(
        tmp_path / "instances.json",
        tmp_path / "images",
        labelmap,
        tmp_path / "lmdb",
        tmp_path / "report.json",
        build_options("test"),
    )
    assert report["counts"]["exif_orientation_removed"] == 1
    net = annotated_data_net(tmp_path / "net.prototxt", tmp_path / "lmdb", labelmap)
    [(pixels, label)] = read_all_with_caffe(net, 1)
    assert pixels.shape == (1, 3, 480, 640)  # not 640 x 480
    np.testing.assert_array_equal(label.reshape(-1, 8), expected_label_rows(data, 9))
