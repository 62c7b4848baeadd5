"""The test split as the evaluate stage and the initial-weights check read it: its files, read once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssdlite_coco.caffe_tools.prototxt import read_net
from ssdlite_coco.labelmap import LabelmapItem, label_to_category, read_labelmap, read_name_size


@dataclass(frozen=True)
class TestSplit:
    """The test net, LMDB, name-size file, label map and COCO instances of the test split, and what they hold.

    ``image_sizes``: (image id, height, width) in LMDB order (the name-size file's); ``categories``: net label ->
    COCO category id (the label map's names); ``net``: the test net's NetParameter.
    """

    __test__ = False  # not a pytest class

    test_net: Path
    lmdb: Path
    name_size: Path
    labelmap: Path
    instances: Path
    image_sizes: list[tuple[int, int, int]]
    labelmap_items: list[LabelmapItem]
    categories: dict[int, int]
    net: Any

    @classmethod
    def read(
        cls,
        test_net: str | os.PathLike,
        lmdb: str | os.PathLike,
        name_size: str | os.PathLike,
        labelmap: str | os.PathLike,
        instances: str | os.PathLike,
    ) -> TestSplit:
        items = read_labelmap(labelmap)
        return cls(
            Path(test_net),
            Path(lmdb),
            Path(name_size),
            Path(labelmap),
            Path(instances),
            read_name_size(name_size),
            items,
            label_to_category(items, str(labelmap)),
            read_net(test_net),
        )

    @property
    def image_ids(self) -> list[int]:
        return [image_id for image_id, _, _ in self.image_sizes]


def add_test_split_arguments(parser) -> None:
    """The five files of the test split as flags (``--test-net --lmdb --name-size --labelmap --instances``)."""
    parser.add_argument("--test-net", required=True, type=Path, help="test prototxt (results/model/test.prototxt)")
    parser.add_argument("--lmdb", required=True, type=Path, help="test LMDB (results/lmdb/test_lmdb)")
    parser.add_argument("--name-size", required=True, type=Path, help="results/labelmap/test_name_size.txt")
    parser.add_argument("--labelmap", required=True, type=Path, help="results/labelmap/labelmap.prototxt")
    parser.add_argument("--instances", required=True, type=Path, help="results/data/test/instances.json")


def split_from_args(args) -> TestSplit:
    """The TestSplit named by the flags of ``add_test_split_arguments``."""
    return TestSplit.read(args.test_net, args.lmdb, args.name_size, args.labelmap, args.instances)
