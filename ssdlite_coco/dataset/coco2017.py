"""COCO 2017 from its official host (or a mirror): the archives, their extraction, and subsets.

The workflow's splits map to COCO's: ``trainval`` = train2017, ``test`` = val2017. Two ways to get them:

* full: download ``zips/{train2017,val2017}.zip`` and ``annotations/annotations_trainval2017.zip``
  (resumable, SHA-1 checked), then extract a split's images and its ``instances_*.json``;
* subset: download only the annotations archive, pick N images per split deterministically and
  fetch them one by one through each image's ``coco_url``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from ssdlite_coco.common.download import DownloadError, download_file, file_url
from ssdlite_coco.common.progress import progress_bar
from ssdlite_coco.dataset.coco_json import (
    DatasetError,
    check_instances,
    publish_split,
    select_image_ids,
    subset_instances,
    summarize,
)

OFFICIAL_BASE_URL = "http://images.cocodataset.org"
ARCHIVE_PATHS = {
    "train2017": "zips/train2017.zip",
    "val2017": "zips/val2017.zip",
    "annotations_trainval2017": "annotations/annotations_trainval2017.zip",
}
SPLIT_TO_COCO = {"trainval": "train2017", "test": "val2017"}


def archive_url(archive: str, base_url: str) -> str:
    if archive not in ARCHIVE_PATHS:
        raise DatasetError(f"unknown COCO 2017 archive {archive!r}: use one of {', '.join(ARCHIVE_PATHS)}")
    return file_url(base_url, ARCHIVE_PATHS[archive])


def annotations_member(coco_split: str) -> str:
    """The instances file of ``coco_split`` inside annotations_trainval2017.zip."""
    return f"annotations/instances_{coco_split}.json"


def _open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise DatasetError(f"{path}: not a readable zip archive ({error}); delete it and download again") from error


def _member(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(name)
    except KeyError:
        raise DatasetError(f"{archive.filename}: has no member {name}; is it the right COCO archive?") from None


def extract_split(
    images_zip: str | os.PathLike,
    annotations_zip: str | os.PathLike,
    coco_split: str,
    out_instances: str | os.PathLike,
    out_images: str | os.PathLike,
    progress: bool = True,
) -> int:
    """Extract ``{coco_split}/*.jpg`` from ``images_zip`` into ``out_images`` (flat) and the split's
    instances file from ``annotations_zip`` into ``out_instances``. Returns the number of images."""
    out_images = Path(out_images)
    out_images.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{coco_split}/"
    with tempfile.TemporaryDirectory(prefix=f".{out_images.name}.extract-", dir=out_images.parent) as work:
        work = Path(work)
        images_dir = work / "images"
        images_dir.mkdir()
        with _open_zip(images_zip) as archive:
            members = [
                info
                for info in archive.infolist()
                if not info.is_dir() and info.filename.startswith(prefix) and "/" not in info.filename[len(prefix) :]
            ]
            if not members:
                raise DatasetError(f"{images_zip}: no files under {prefix}; is it {coco_split}.zip?")
            for info in progress_bar(members, description=f"extract {coco_split}", unit="img", enabled=progress):
                with (
                    archive.open(info) as source,
                    (images_dir / info.filename[len(prefix) :]).open("wb") as dest,
                ):
                    shutil.copyfileobj(source, dest, 1 << 20)
        instances = work / "instances.json"
        with _open_zip(annotations_zip) as archive:
            info = _member(archive, annotations_member(coco_split))
            with archive.open(info) as source, instances.open("wb") as dest:
                shutil.copyfileobj(source, dest, 1 << 20)
        publish_split(instances, images_dir, out_instances, out_images)
    return len(members)


def load_instances_from_zip(annotations_zip: str | os.PathLike, coco_split: str) -> dict[str, Any]:
    import json

    member = annotations_member(coco_split)
    with _open_zip(annotations_zip) as archive, archive.open(_member(archive, member)) as stream:
        try:
            data = json.load(stream)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DatasetError(f"{annotations_zip}: {member} is not valid JSON ({error})") from error
    check_instances(data, f"{annotations_zip}:{member}")
    return data


def image_url(image: dict[str, Any], coco_split: str, base_url: str) -> str:
    """Where to fetch one image: its ``coco_url``, moved onto ``base_url`` when that is a mirror.

    Records without ``coco_url`` use ``{base_url}/{coco_split}/{file_name}``.
    """
    url = image.get("coco_url")
    if not url:
        return file_url(base_url, f"{coco_split}/{image['file_name']}")
    if base_url.rstrip("/") != OFFICIAL_BASE_URL:
        for official in (OFFICIAL_BASE_URL, OFFICIAL_BASE_URL.replace("http://", "https://")):
            if url.startswith(official + "/"):
                return file_url(base_url, url[len(official) :])
    return url


def _check_image_file(path: Path, image: dict[str, Any], url: str) -> None:
    from PIL import Image

    try:
        with Image.open(path) as opened:
            opened.load()
            size = opened.size
    except Exception as error:  # Pillow raises many types for broken files
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: the downloaded file is not a readable image ({error}); it was deleted, run again to retry"
        ) from error
    if size != (image["width"], image["height"]):
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: image is {size[0]}x{size[1]} but image id {image['id']} says "
            f"{image['width']}x{image['height']}; it was deleted"
        )


def fetch_subset(
    annotations_zip: str | os.PathLike,
    coco_split: str,
    count: int,
    seed: int,
    cache_dir: str | os.PathLike,
    out_instances: str | os.PathLike,
    out_images: str | os.PathLike,
    *,
    base_url: str,
    retries: int,
    progress: bool = True,
) -> dict[str, int]:
    """Publish ``count`` deterministically chosen images of ``coco_split`` and only their annotations.

    Images are fetched one by one into ``cache_dir`` (kept across runs, so an interrupted fetch
    continues where it stopped), then copied into ``out_images``.
    """
    if count <= 0:
        raise DatasetError(f"subset size {count} for {coco_split}: use a positive number of images")
    data = load_instances_from_zip(annotations_zip, coco_split)
    chosen = select_image_ids((image["id"] for image in data["images"]), count, seed)
    if len(chosen) < count:
        print(f"warning: {coco_split} has only {len(chosen)} images; using all of them", file=sys.stderr)
    subset = subset_instances(data, chosen)
    del data
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for image in progress_bar(subset["images"], description=f"fetch {coco_split} subset", unit="img", enabled=progress):
        cached = cache_dir / image["file_name"]
        if cached.is_file():
            continue
        url = image_url(image, coco_split, base_url)
        download_file(url, cached, retries=retries, progress=False)
        _check_image_file(cached, image, url)
    out_images = Path(out_images)
    out_images.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_images.name}.subset-", dir=out_images.parent) as work:
        images_dir = Path(work) / "images"
        images_dir.mkdir()
        for image in subset["images"]:
            source, dest = cache_dir / image["file_name"], images_dir / image["file_name"]
            try:
                os.link(source, dest)
            except OSError:
                shutil.copyfile(source, dest)
        publish_split(subset, images_dir, out_instances, out_images)
    return summarize(subset)
