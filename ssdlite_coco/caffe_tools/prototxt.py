"""Caffe prototxt text in and out, written once: nets, solvers and label maps as protobuf messages.

net = read_prototxt("results/model/test.prototxt", caffe_pb2.NetParameter())
text = format_prototxt(net, header="made by ...")   # one field per line: two versions diff cleanly
"""

from __future__ import annotations

import os
from pathlib import Path

from ssdlite_coco.common.errors import SsdliteError


class PrototxtError(SsdliteError):
    """A prototxt is missing or is not the message it should be; the message names the file."""


def parse_prototxt(text: str, message, source: str = "prototxt"):
    """Parse ``text`` into ``message`` (a fresh protobuf message) and return it; ``source`` names it in errors."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as error:
        hint = ""
        if "TransformationParameter" in str(error):
            hint = "; this Caffe's data transformer lacks that field: build it with the SSD augmentation patches"
        raise PrototxtError(f"{source}: not a Caffe {message.DESCRIPTOR.name} prototxt ({error}){hint}") from None


def read_prototxt(path: str | os.PathLike, message, made_by: str = ""):
    """Read the prototxt at ``path`` into ``message``; ``made_by`` says where a missing file comes from."""
    path = Path(path)
    if not path.is_file():
        where = f" ({made_by})" if made_by else ""
        raise PrototxtError(f"{path}: {message.DESCRIPTOR.name} prototxt not found{where}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise PrototxtError(f"{path}: cannot read it ({error})") from None
    return parse_prototxt(text, message, str(path))


def read_net(path: str | os.PathLike, made_by: str = ""):
    from caffe.proto import caffe_pb2

    return read_prototxt(path, caffe_pb2.NetParameter(), made_by)


def layers_of_type(net, layer_type: str) -> list:
    return [layer for layer in net.layer if layer.type == layer_type]


def single_layer(net, layer_type: str, source: str):
    layers = layers_of_type(net, layer_type)
    if len(layers) != 1:
        raise PrototxtError(
            f"{source}: needs exactly one {layer_type} layer, has {len(layers)}; use the nets made by the model rule"
        )
    return layers[0]


def format_prototxt(message, header: str | None = None) -> str:
    """Readable protobuf text under an optional ``#`` comment header."""
    from google.protobuf import text_format

    text = text_format.MessageToString(message, as_utf8=True)
    lines = [f"# {line}" if line else "#" for line in (header or "").splitlines()]
    return "\n".join(lines) + ("\n" if lines else "") + text
