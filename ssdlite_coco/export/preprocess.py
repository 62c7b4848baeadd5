"""The input a deploy net expects, as the test net's data layer makes it: one preprocessing for everything.

Caffe's ``AnnotatedData`` layer decodes the JPEG in colour (BGR, OpenCV), resizes it with OpenCV
(``resize_param``: WARP to height x width, ``interp_mode`` LINEAR = ``cv2.INTER_LINEAR``, no
antialiasing), subtracts ``mean_value`` per channel and multiplies by ``scale``. ``preprocess_image``
does exactly that with the same library, so the export checks, the calibration images and the
documentation (``preprocess.json``) see the input evaluation saw. Pillow's bilinear resize antialiases
when it shrinks and differs from it by up to 11 grey levels.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ssdlite_coco.caffe_tools.prototxt import read_net, single_layer
from ssdlite_coco.common.errors import SsdliteError

# Caffe's ResizeParameter.Interp_mode -> the OpenCV flag its data layer passes to cv::resize.
INTERPOLATIONS = {"LINEAR": "INTER_LINEAR", "AREA": "INTER_AREA", "NEAREST": "INTER_NEAREST", "CUBIC": "INTER_CUBIC"}


class PreprocessError(SsdliteError):
    """An image cannot be read or the test net's transform cannot be reproduced; names the file."""


def _resize_settings(transform) -> dict[str, Any] | None:
    fields = {field.name for field in transform.DESCRIPTOR.fields}
    name = next((n for n in ("resize_param", "old_resize_param") if n in fields and transform.HasField(n)), None)
    if name is None:
        return None
    resize = getattr(transform, name)
    modes = [
        resize.DESCRIPTOR.fields_by_name["interp_mode"].enum_type.values_by_number[m].name for m in resize.interp_mode
    ]
    mode = resize.DESCRIPTOR.fields_by_name["resize_mode"].enum_type.values_by_number[resize.resize_mode].name
    return {"height": int(resize.height), "width": int(resize.width), "mode": mode, "interp_modes": modes or ["LINEAR"]}


def transform_settings(test_net_path: str | os.PathLike) -> dict[str, Any]:
    """Mean, scale and resize of the test net's data layer (what a deploy net expects its input to be)."""
    net = read_net(test_net_path)
    data = single_layer(net, "AnnotatedData", str(test_net_path))
    transform = data.transform_param
    mean = list(transform.mean_value) or [0.0, 0.0, 0.0]
    if len(mean) == 1:
        mean = mean * 3
    resize = _resize_settings(transform)
    if resize is not None:
        if resize["mode"] != "WARP" or len(resize["interp_modes"]) != 1:
            raise PreprocessError(
                f"{test_net_path}: the test data layer resizes with {resize['mode']} and interpolations "
                f"{resize['interp_modes']}; a deploy input is reproducible only with WARP and one interp_mode"
            )
        if resize["interp_modes"][0] not in INTERPOLATIONS:
            raise PreprocessError(f"{test_net_path}: interp_mode {resize['interp_modes'][0]} is not supported")
    return {
        "mean": [float(v) for v in mean],
        "scale": float(transform.scale) if transform.HasField("scale") else 1.0,
        "resize": resize,
        "interpolation": INTERPOLATIONS[resize["interp_modes"][0]] if resize else "INTER_LINEAR",
    }


def preprocess_image(
    image_path: str | os.PathLike,
    height: int,
    width: int,
    mean: list[float],
    scale: float,
    interpolation: str = "INTER_LINEAR",
) -> np.ndarray:
    """An image as Caffe's data layer feeds it: BGR, OpenCV resize, ``(pixel - mean) * scale``, CHW float32."""
    import cv2

    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise PreprocessError(f"{image_path}: OpenCV cannot read this image; is it a JPEG or PNG?")
    if bgr.shape[:2] != (height, width):
        bgr = cv2.resize(bgr, (width, height), interpolation=getattr(cv2, interpolation))
    pixels = (bgr.astype(np.float32) - np.asarray(mean, dtype=np.float32)) * np.float32(scale)
    return pixels.transpose(2, 0, 1).copy()


def preprocess_as(image_path: str | os.PathLike, transform: dict[str, Any], input_hw: tuple[int, int]) -> np.ndarray:
    """``preprocess_image`` with the settings of ``transform_settings`` at the net's input ``(height, width)``."""
    return preprocess_image(image_path, *input_hw, transform["mean"], transform["scale"], transform["interpolation"])


def preprocess_document(transform: dict[str, Any], input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """``preprocess.json``: what to do to an image before any of the exported nets."""
    channels, height, width = input_shape
    return {
        "input_shape": [1, channels, height, width],
        "layout": "NCHW",
        "channel_order": "BGR",
        "dtype": "float32",
        "resize": {"height": height, "width": width, "mode": "WARP (aspect ratio not kept)"},
        "resize_interpolation": f"cv2.{transform['interpolation']} (OpenCV, no antialiasing; not Pillow's bilinear)",
        "mean": transform["mean"],
        "scale": transform["scale"],
        "formula": "input = (cv2.resize(cv2.imread(path, cv2.IMREAD_COLOR), (width, height), "
        "interpolation=cv2.INTER_LINEAR) - mean) * scale, HWC -> CHW",
        "python": "ssdlite_coco.export.preprocess.preprocess_image",
    }
