"""Initial weights at a path, atomically: a local .caffemodel copied, or a URL downloaded, checked by sha256."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from ssdlite_coco.caffe_tools.weights import WeightsError
from ssdlite_coco.common.atomic import atomic_path
from ssdlite_coco.common.digests import file_digest

URL_SCHEMES = ("http://", "https://", "file://")


def is_url(spec: str) -> bool:
    return spec.startswith(URL_SCHEMES)


def _check_sha256_value(sha256: str) -> str:
    """A sha256 or a prefix of one (at least 8 hex digits, as torchvision's file names carry)."""
    sha256 = sha256.strip().lower()
    if not 8 <= len(sha256) <= 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise WeightsError(
            f"train.initial_weights_sha256 {sha256!r} is not a sha256 (64 hex digits, or its first 8 or more); "
            "compute it with `sha256sum FILE`"
        )
    return sha256


def fetch_weights(spec: str, sha256: str, target: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Put the weights named by ``spec`` (path or URL) at ``target``, atomically, checking ``sha256``.

    A URL needs a sha256; for a local path it is optional. A file whose digest differs is never left
    under ``target``.
    """
    target = Path(target)
    if is_url(spec):
        if not sha256:
            raise WeightsError(
                f"initial weights {spec} are a URL but train.initial_weights_sha256 is empty; "
                "set it to the file's sha256 so a changed or truncated download is caught"
            )
        expected = _check_sha256_value(sha256)
        with atomic_path(target) as tmp:
            digest = hashlib.sha256()
            try:
                with urllib.request.urlopen(spec, timeout=timeout) as response, tmp.open("wb") as out:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
            except (urllib.error.URLError, OSError) as error:
                raise WeightsError(
                    f"could not download initial weights from {spec}: {error}; check the URL "
                    "and the network, or download the file and set train.initial_weights "
                    "to its path"
                ) from None
            if not digest.hexdigest().startswith(expected):
                raise WeightsError(
                    f"initial weights downloaded from {spec} have sha256 {digest.hexdigest()}, "
                    f"not {expected}; the file changed or the download is damaged"
                )
        return target
    source = Path(spec)
    if not source.is_file():
        raise WeightsError(
            f"initial weights {source} not found; set train.initial_weights to a .caffemodel path or an http(s) URL"
        )
    if sha256:
        expected = _check_sha256_value(sha256)
        actual = file_digest(source, "sha256")
        if not actual.startswith(expected):
            raise WeightsError(
                f"initial weights {source} have sha256 {actual}, not {expected} "
                "(train.initial_weights_sha256); fix the value or the file"
            )
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target
