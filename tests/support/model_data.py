"""Small real data for the model-stage tests: coco-mini images in AnnotatedDatum LMDBs.

``make_model_data(folder, coco_mini_dir)`` writes a coco81 labelmap, the test name-size file and two
LMDBs (train and test: one process must not open the same LMDB twice) of a few coco-mini images,
including the grayscale image 86, with the project's LMDB builder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The first images of coco-mini, plus the grayscale 86 and 250 (no boxes).
IMAGE_IDS = (9, 25, 30, 34, 86, 250)


@dataclass(frozen=True)
class ModelData:
    labelmap: Path
    name_size: Path
    instances: Path
    train_lmdb: Path
    test_lmdb: Path
    num_images: int


def make_model_data(folder: Path, coco_mini_dir: Path, image_ids: tuple[int, ...] = IMAGE_IDS) -> ModelData:
    from ssdlite_coco.common.settings import parse_settings
    from ssdlite_coco.labelmap import LabelmapSettings, make_labelmap
    from ssdlite_coco.lmdb.writer import build_lmdb
    from tests.support.lmdb_helpers import build_options

    folder.mkdir(parents=True, exist_ok=True)
    coco = json.loads((coco_mini_dir / "annotations" / "instances_mini.json").read_text())
    wanted = set(image_ids)
    subset = dict(
        coco,
        images=[im for im in coco["images"] if im["id"] in wanted],
        annotations=[a for a in coco["annotations"] if a["image_id"] in wanted],
    )
    instances = folder / "instances.json"
    instances.write_text(json.dumps(subset))
    labelmap, name_size = folder / "labelmap.prototxt", folder / "test_name_size.txt"
    make_labelmap({"test": instances}, labelmap, {"test": name_size}, parse_settings(LabelmapSettings))
    lmdbs = {}
    for split in ("train", "test"):
        lmdbs[split] = folder / f"{split}_lmdb"
        build_lmdb(
            instances,
            coco_mini_dir / "images",
            labelmap,
            lmdbs[split],
            folder / f"{split}_report.json",
            build_options("test"),
        )
    return ModelData(labelmap, name_size, instances, lmdbs["train"], lmdbs["test"], len(subset["images"]))
