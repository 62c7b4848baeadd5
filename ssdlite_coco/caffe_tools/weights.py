"""Caffe weights: read a .caffemodel into numpy arrays and copy them into a pycaffe net by layer name.

``copy_weights_by_name`` is what ``caffe train --weights`` does, except that a layer whose blob shapes
differ (a detection head for another number of classes) is reported and left at its initialization
instead of aborting, and that it returns a table of what was copied.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssdlite_coco.common.errors import SsdliteError


class WeightsError(SsdliteError):
    """Initial weights cannot be fetched, verified or read; the message names the file or URL and the fix."""


def _blob_array(blob) -> np.ndarray:
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:  # legacy 4-D blobs
        shape = (blob.num, blob.channels, blob.height, blob.width)
    data = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    if data.size != int(np.prod(shape)):
        raise WeightsError(f"a blob holds {data.size} values for shape {shape}")
    return data.reshape(shape)


def read_caffemodel_net(path: str | os.PathLike):
    """The whole ``caffe_pb2.NetParameter`` of a .caffemodel: layer types, bottoms, tops, params and blobs."""
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
    return model


def layer_blobs(layer, source: str = "weights") -> list[np.ndarray]:
    """One layer's blobs as numpy arrays; ``source`` names the file in errors."""
    try:
        return [_blob_array(blob) for blob in layer.blobs]
    except WeightsError as error:
        raise WeightsError(f"{source}: layer {layer.name!r}: {error}") from None


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Layer name → its blobs (numpy arrays) for every layer of a .caffemodel that has blobs."""
    model = read_caffemodel_net(path)
    layers: dict[str, list[np.ndarray]] = {}
    for layer in list(model.layer) + list(model.layers):
        if len(layer.blobs):
            layers[layer.name] = layer_blobs(layer, str(path))
    return layers


def write_caffemodel(path: str | os.PathLike, layers: Mapping[str, tuple[str, list[np.ndarray]]]) -> None:
    """Write ``{layer name: (type, blobs)}`` as a .caffemodel (atomically), loadable by name into any net."""
    from caffe.proto import caffe_pb2

    from ssdlite_coco.common.atomic import atomic_path

    model = caffe_pb2.NetParameter(name="converted")
    for name, (layer_type, arrays) in layers.items():
        layer = model.layer.add(name=name, type=layer_type)
        for array in arrays:
            array = np.asarray(array, dtype=np.float32)
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
    with atomic_path(path) as tmp:
        tmp.write_bytes(model.SerializeToString())


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
