"""The worker's wire format: one JSON line, then the raw bytes of the arrays it lists (shape, dtype).

Both ends use it: ``ToolchainRuntime`` in the project's venv and ``worker`` in a toolchain's venv, so it needs
only the standard library and NumPy.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

import numpy as np


class PipeClosed(Exception):
    """The other end closed the pipe (the worker died or finished)."""


def send(stream: BinaryIO, message: dict[str, Any], arrays: tuple[np.ndarray, ...] = ()) -> None:
    arrays = tuple(np.ascontiguousarray(array) for array in arrays)
    header = dict(message, arrays=[{"shape": list(a.shape), "dtype": a.dtype.str} for a in arrays])
    stream.write(json.dumps(header).encode() + b"\n")
    for array in arrays:
        stream.write(array.tobytes())
    stream.flush()


def receive(stream: BinaryIO) -> tuple[dict[str, Any], list[np.ndarray]]:
    line = stream.readline()
    if not line:
        raise PipeClosed("the pipe closed")
    message = json.loads(line)
    arrays = []
    for spec in message.pop("arrays"):
        dtype = np.dtype(spec["dtype"])
        size = int(np.prod(spec["shape"], dtype=np.int64)) * dtype.itemsize
        data = stream.read(size)
        if len(data) != size:
            raise PipeClosed(f"the pipe closed after {len(data)} of {size} bytes")
        arrays.append(np.frombuffer(data, dtype).reshape(spec["shape"]).copy())
    return message, arrays
