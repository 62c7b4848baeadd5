"""The `dataset` keys each rule of the dataset stage reads (``--settings`` of its script)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class _ImagesPerSplit:
    """Settings with a ``{split}_images`` key per split (trainval_images, test_images)."""

    def images_of(self, split: str) -> int:
        """How many images ``split`` gets: its ``{split}_images`` key."""
        return getattr(self, f"{split}_images")


@dataclass(frozen=True)
class DownloadSettings:
    """Rule dataset_download_archive (scripts/download_archive.py): how often a dropped connection is resumed."""

    SECTION: ClassVar[str] = "dataset.download"
    retries: int


@dataclass(frozen=True)
class DemoSettings(_ImagesPerSplit):
    """Rule dataset_demo (scripts/generate_demo_dataset.py): the image count of each split and the seed."""

    SECTION: ClassVar[str] = "dataset.demo"
    trainval_images: int
    test_images: int
    seed: int


@dataclass(frozen=True)
class SubsetSettings(_ImagesPerSplit):
    """Rule dataset_subset (scripts/fetch_subset.py): the image count of each split and which images."""

    SECTION: ClassVar[str] = "dataset.subset"
    trainval_images: int
    test_images: int
    seed: int


@dataclass(frozen=True)
class SubsetDownloadSettings:
    """Rule dataset_subset (``--download-settings`` of scripts/fetch_subset.py): the host the images come from."""

    SECTION: ClassVar[str] = "dataset.download"
    base_url: str
    retries: int


@dataclass(frozen=True)
class LocalSettings:
    """Rule dataset_local (scripts/link_local_dataset.py, check_dataset.py): how many images are opened."""

    SECTION: ClassVar[str] = "dataset.local"
    check_images: int
