"""Initial weights: fetch them (local path, or URL checked against a sha256) and copy them by layer name.

``copy_weights_by_name`` is what ``caffe train --weights`` does, except that a layer whose blob shapes
differ (a detection head for another number of classes) is reported and left at its initialization
instead of aborting, and that it returns a table of what was copied.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssdlite_coco.common.atomic import atomic_path
from ssdlite_coco.common.errors import SsdliteError

URL_SCHEMES = ("http://", "https://", "file://")


class WeightsError(SsdliteError):
    """Initial weights cannot be fetched, verified or read; the message names the file or URL and the fix."""


def is_url(spec: str) -> bool:
    return spec.startswith(URL_SCHEMES)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256_value(sha256: str) -> str:
    sha256 = sha256.strip().lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise WeightsError(
            f"train.initial_weights_sha256 {sha256!r} is not a sha256 (64 hex digits); compute it with `sha256sum FILE`"
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
            if digest.hexdigest() != expected:
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
        actual = sha256_of(source)
        if actual != expected:
            raise WeightsError(
                f"initial weights {source} have sha256 {actual}, not {expected} "
                "(train.initial_weights_sha256); fix the value or the file"
            )
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def _blob_array(blob) -> np.ndarray:
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:  # legacy 4-D blobs
        shape = (blob.num, blob.channels, blob.height, blob.width)
    data = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    if data.size != int(np.prod(shape)):
        raise WeightsError(f"a blob holds {data.size} values for shape {shape}")
    return data.reshape(shape)


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Layer name → its blobs (numpy arrays) for every layer of a .caffemodel that has blobs."""
    from caffe.proto import caffe_pb2
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    model = caffe_pb2.NetParameter()
    try:
        model.ParseFromString(path.read_bytes())
    except DecodeError:
        raise WeightsError(f"{path}: not a Caffe .caffemodel (binary NetParameter)") from None
    layers: dict[str, list[np.ndarray]] = {}
    for layer in list(model.layer) + list(model.layers):
        if len(layer.blobs):
            try:
                layers[layer.name] = [_blob_array(blob) for blob in layer.blobs]
            except WeightsError as error:
                raise WeightsError(f"{path}: layer {layer.name!r}: {error}") from None
    return layers


@dataclass(frozen=True)
class LayerCopy:
    layer: str
    status: str  # copied | shape mismatch | not in net | not in weights
    weights_shapes: str
    net_shapes: str


def _shapes(arrays) -> str:
    return " ".join("x".join(str(d) for d in a.shape) for a in arrays) if arrays is not None else "-"


def copy_weights_by_name(net, weights: Mapping[str, list[np.ndarray]]) -> list[LayerCopy]:
    """Copy each layer's blobs from ``weights`` into the pycaffe ``net`` where name and shapes match."""
    rows = []
    net_params = net.params
    for name in net_params.keys():
        target = [blob.data for blob in net_params[name]]
        source = weights.get(name)
        if source is None:
            rows.append(LayerCopy(name, "not in weights", "-", _shapes(target)))
            continue
        same = len(source) == len(target) and all(s.shape == t.shape for s, t in zip(source, target, strict=False))
        if not same:
            # a 4-D legacy blob may hold a 1-D or 2-D parameter: compare the element layout too
            same = len(source) == len(target) and all(
                s.size == t.size and tuple(d for d in s.shape if d != 1) == tuple(d for d in t.shape if d != 1)
                for s, t in zip(source, target, strict=False)
            )
        if same:
            for blob, array in zip(net_params[name], source, strict=True):
                blob.data[...] = array.reshape(blob.data.shape)
            rows.append(LayerCopy(name, "copied", _shapes(source), _shapes(target)))
        else:
            rows.append(LayerCopy(name, "shape mismatch", _shapes(source), _shapes(target)))
    for name, source in weights.items():
        if name not in net_params:
            rows.append(LayerCopy(name, "not in net", _shapes(source), "-"))
    return rows


def format_copy_table(rows: list[LayerCopy]) -> str:
    """A fixed-width table of the copy, one line per layer, then the counts per status."""
    header = ("layer", "status", "weights", "net")
    cells = [header] + [(r.layer, r.status, r.weights_shapes, r.net_shapes) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    order = ("copied", "shape mismatch", "not in weights", "not in net")
    lines.append("summary: " + ", ".join(f"{counts.get(status, 0)} {status}" for status in order))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- detection head check
BACKGROUND_MARGIN = 0.5


def conf_head_layers(net_param) -> list[str]:
    """Convolutions that feed DetectionOutput's confidence input (through Permute/Flatten/Concat/Softmax...)."""
    layers = list(net_param.layer)
    outputs = [layer for layer in layers if layer.type == "DetectionOutput"]
    if not outputs:
        return []
    heads: list[str] = []
    pending = [(outputs[0].bottom[1], layers.index(outputs[0]))]
    seen: set[tuple[str, int]] = set()
    while pending:
        blob, before = pending.pop()
        if (blob, before) in seen:
            continue
        seen.add((blob, before))
        producer = next(
            ((i, layer) for i, layer in reversed(list(enumerate(layers[:before]))) if blob in layer.top), None
        )
        if producer is None:
            continue
        index, layer = producer
        if layer.type == "Convolution":
            heads.append(layer.name)
        else:
            bottoms = layer.bottom if layer.type == "Concat" else layer.bottom[:1]
            pending += [(bottom, index) for bottom in bottoms]
    return sorted(set(heads), key=[layer.name for layer in layers].index)


def conf_head_statistics(
    net_param, params: Mapping[str, list[np.ndarray]], copied: list[LayerCopy], num_classes: int
) -> dict:
    """Weight/bias statistics of the confidence heads and whether they look trained.

    An untrained head has the fillers' values: zero biases and weights of std ~ 1/sqrt(fan_in) (xavier).
    A trained one has class biases that differ from each other, the background's clearly the largest
    (``background_bias_margin``: background bias minus the mean of the others, per head). These are
    indications; the mAP of the weights is the evidence.
    """
    status = {row.layer: row.status for row in copied}
    heads = []
    for name in conf_head_layers(net_param):
        blobs = params[name]
        weight = blobs[0]
        fan_in = int(np.prod(weight.shape[1:]))
        row = {
            "layer": name,
            "from_weights": status.get(name) == "copied",
            "weight_std": float(weight.std()),
            "filler_std": float(1 / np.sqrt(fan_in)),
        }
        if len(blobs) > 1 and num_classes > 0 and blobs[1].size % num_classes == 0:
            bias = blobs[1].reshape(-1, num_classes)
            row["bias_abs_max"] = float(np.abs(bias).max())
            row["background_bias_margin"] = float(bias[:, 0].mean() - bias[:, 1:].mean())
        heads.append(row)
    from_weights = bool(heads) and all(head["from_weights"] for head in heads)
    margins = [head["background_bias_margin"] for head in heads if "background_bias_margin" in head]
    # a head trained with hard negative mining leans towards the background by a logit or more
    biases_trained = bool(margins) and float(np.mean(margins)) > BACKGROUND_MARGIN
    return {
        "heads": heads,
        "heads_from_weights": from_weights,
        "head_biases_trained": biases_trained,
        "mean_background_bias_margin": float(np.mean(margins)) if margins else None,
    }
