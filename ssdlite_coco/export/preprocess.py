"""The input a deploy net expects: the test net's data-layer mean and scale applied to an image."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ssdlite_coco.caffe_tools.prototxt import read_net, single_layer


def transform_settings(test_net_path: str | os.PathLike) -> dict[str, Any]:
    """Mean values and scale of the test net's data layer (what a deploy net expects its input to be)."""
    net = read_net(test_net_path)
    data = single_layer(net, "AnnotatedData", str(test_net_path))
    transform = data.transform_param
    mean = list(transform.mean_value) or [0.0, 0.0, 0.0]
    if len(mean) == 1:
        mean = mean * 3
    return {"mean": [float(v) for v in mean], "scale": float(transform.scale) if transform.HasField("scale") else 1.0}


def preprocess_image(
    image_path: str | os.PathLike, height: int, width: int, mean: list[float], scale: float
) -> np.ndarray:
    """An image as Caffe's data layer feeds it: resized (bilinear), BGR, ``(pixel - mean) * scale``, CHW."""
    from PIL import Image

    with Image.open(image_path) as image:
        rgb = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float32)
    bgr = rgb[:, :, ::-1]
    return ((bgr - np.asarray(mean, dtype=np.float32)) * np.float32(scale)).transpose(2, 0, 1).copy()
