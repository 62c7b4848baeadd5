"""INT8 models of the head-only export, calibrated on the export's ``calibration/`` images.

* ONNX Runtime: ``quantize_static`` on ``onnx/heads.onnx`` after ``quant_pre_process`` (shape inference and
  graph clean-up, as ONNX Runtime advises), QDQ format, signed 8-bit weights and activations (S8S8, its
  default; ``export.int8_activations: uint8`` gives U8S8), weights per channel or per tensor, activation ranges from
  MinMax, Entropy (over a real search: ``entropy_ranges``) or Percentile (99.999) calibration.
* MNN: its Caffe converter on ``caffe-heads/`` then its offline quantizer, in a child process (it aborts or
  crashes on some settings), called as ``_tools.mnnquant([argv])``: the extension behind the ``mnnquant``
  console script, which also sends usage telemetry and whose three-argument call aborts with
  ``std::length_error`` in MNN 3.6.1. Feature ranges by KL or EMA (ADMM is too slow), weights per channel
  (MAX_ABS). The quantizer reads images, so the calibration arrays are written back as the 8-bit BGR images
  they came from (already at the net's input size: nothing is resized again) with the same mean and scale.

A variant is named ``runtime/granularity/method`` (``onnxruntime/per-channel/minmax``), as in the config. RKNN's
(``rknn/per-channel/normal``) are quantized by its toolchain, in its own venv (``export.edge``), not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssdlite_coco.common.atomic import atomic_path
from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.export.runtimes import mnn_convert

ONNX_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# ADMM is left out: on the demo's 300x300 heads it had not finished after 5 minutes.
MNN_METHODS = {"kl": "KL", "ema": "EMA"}
# runtime -> (weight granularities, calibration methods). rknn: quantized in its own venv by the edge worker
# (ssdlite_coco/export/edge/rknn.py: quantized_method channel or layer, quantized_algorithm as named).
VARIANTS = {
    "onnxruntime": (("per-channel", "per-tensor"), tuple(ONNX_METHODS)),
    "mnn": (("per-channel",), tuple(MNN_METHODS)),
    "rknn": (("per-channel", "per-tensor"), ("normal", "mmse", "kl_divergence")),
}


class Int8Error(SsdliteError):
    """A model cannot be quantized or its calibration images are unusable; names the file."""


@dataclass(frozen=True)
class Variant:
    runtime: str
    granularity: str
    method: str

    @classmethod
    def parse(cls, text: str) -> Variant:
        parts = text.split("/")
        granularities, methods = VARIANTS.get(parts[0], ((), ()))
        if len(parts) != 3 or parts[1] not in granularities or parts[2] not in methods:
            choices = "; ".join(f"{runtime}/{'|'.join(g)}/{'|'.join(m)}" for runtime, (g, m) in VARIANTS.items())
            raise Int8Error(
                f"INT8 variant {text!r} is not runtime/granularity/method: {choices} (export.int8_variants)"
            )
        return cls(*parts)

    @property
    def name(self) -> str:
        return f"{self.runtime}/{self.granularity}/{self.method}"

    @property
    def file_name(self) -> str:
        """The model's file (ONNX Runtime, MNN) or folder (an edge toolchain's work dir) in ``int8/models/``."""
        return f"{self.runtime}-{self.granularity}-{self.method}" + {"onnxruntime": ".onnx", "mnn": ".mnn"}.get(
            self.runtime, ""
        )


def read_calibration(folder: str | os.PathLike) -> list[np.ndarray]:
    """The calibration arrays (``[1, C, H, W]`` float32) in ``list.txt`` order."""
    folder = Path(folder)
    listing = folder / "list.txt"
    if not listing.is_file():
        raise Int8Error(f"{listing}: missing; re-run the export rule (it writes the calibration images)")
    names = [line.split("\t", 1)[0] for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise Int8Error(f"{listing}: no calibration images; set export.calibration_images above 0")
    arrays = []
    for name in names:
        array = np.load(folder / name)
        if array.ndim != 4 or array.shape[0] != 1 or array.dtype != np.float32:
            raise Int8Error(f"{folder / name}: shape {array.shape} {array.dtype}, not [1, C, H, W] float32")
        arrays.append(array)
    return arrays


def quantize_onnx(
    model_path: Path, out_path: Path, arrays: list[np.ndarray], variant: Variant, activations: str = "int8"
) -> None:
    """``model_path`` (FP32 ONNX) -> ``out_path`` (QDQ INT8), activation ranges from ``arrays``.

    ``activations``: ``int8`` (S8S8, what int8-only accelerators run) or ``uint8`` (U8S8, the fast path of
    ONNX Runtime's x86 kernels; the demo's numbers are in models/README.md, "INT8").
    """
    import onnxruntime.quantization as quantization
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = _onnx_input_name(model_path)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{input_name: array} for array in arrays])

        def get_next(self):
            return next(self.feeds, None)

    method = getattr(quantization.CalibrationMethod, ONNX_METHODS[variant.method])
    with tempfile.TemporaryDirectory(prefix="ssdlite-int8-") as folder, atomic_path(out_path) as tmp:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(model_path), str(prepared))
        reader, cache = Reader(), None
        if variant.method == "entropy":
            cache = entropy_ranges(prepared, reader, Path(folder))
            reader = None
        quantization.quantize_static(
            str(prepared),
            str(tmp),
            reader,
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=variant.granularity == "per-channel",
            activation_type=quantization.QuantType.QInt8 if activations == "int8" else quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=method,
            calibration_cache_path=cache,
        )


def entropy_ranges(prepared: Path, reader, folder: Path) -> Path:
    """Entropy (KL) activation ranges over 2048 histogram bins and 128 quantized ones, as TensorRT's.

    ``quantize_static`` can only run Entropy with 128 bins and 128 quantized bins, where the search has a
    single candidate, the whole range: MinMax under another name (ONNX Runtime 1.32 gave byte-identical
    models). The ranges are computed here and handed to it as its calibration cache.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrator = create_calibrator(
        prepared,
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(folder / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": 2048, "num_quantized_bins": 128},
    )
    calibrator.collect_data(reader)
    cache = folder / "entropy_ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def _onnx_input_name(model_path: Path) -> str:
    import onnx

    model = onnx.load(str(model_path))
    initializers = {tensor.name for tensor in model.graph.initializer}
    return next(value.name for value in model.graph.input if value.name not in initializers)


def write_calibration_images(arrays: list[np.ndarray], mean: list[float], scale: float, folder: Path) -> None:
    """The calibration arrays back as the 8-bit BGR PNGs they were made from (what MNN's quantizer reads)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for index, array in enumerate(arrays):
        pixels = array[0].transpose(1, 2, 0) / np.float32(scale) + np.asarray(mean, np.float32)
        cv2.imwrite(str(folder / f"{index:04d}.png"), np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def mnn_config(images: Path, count: int, input_hw: tuple[int, int], mean, scale: float, variant: Variant) -> dict:
    """MNN's quantizer configuration: its own preprocessing (``(pixel - mean) * normal``) set to ours."""
    height, width = input_hw
    return {
        "format": "BGR",
        "mean": [float(value) for value in mean],
        "normal": [float(scale)] * 3,
        "width": width,
        "height": height,
        "path": f"{images}/",
        "used_image_num": count,
        "feature_quantize_method": MNN_METHODS[variant.method],
        "weight_quantize_method": "MAX_ABS",
        "input_type": "image",
        # EMA runs batches; without batch_size MNN 3.6.1 takes the model's batch of 1 and crashes.
        "batch_size": min(count, 8),
    }


# MNN's quantizer in a child process: it aborts or crashes on some inputs (EMA with batch 1 segfaults).
MNN_QUANT = "import sys, _tools; sys.exit(0 if _tools.mnnquant(sys.argv[1:]) else 1)"


def quantize_mnn(heads: tuple[Path, Path], out_path: Path, arrays, transform: dict, variant: Variant) -> Path:
    """The head-only Caffe net -> MNN (FP32, returned next to ``out_path``) -> MNN INT8 at ``out_path``."""
    fp32_path = out_path.parent / "mnn-fp32.mnn"
    if not fp32_path.is_file():
        with atomic_path(fp32_path) as tmp:
            mnn_convert(*heads, tmp)
    height, width = arrays[0].shape[2:]
    with tempfile.TemporaryDirectory(prefix="ssdlite-int8-") as folder, atomic_path(out_path) as tmp:
        images = Path(folder) / "images"
        write_calibration_images(arrays, transform["mean"], transform["scale"], images)
        config_path = Path(folder) / "config.json"
        config = mnn_config(images, len(arrays), (height, width), transform["mean"], transform["scale"], variant)
        config_path.write_text(json.dumps(config))
        quantized = Path(folder) / "int8.mnn"  # MNN writes int8.mnn.json (its ranges) next to it
        sys.stdout.flush()
        command = [sys.executable, "-c", MNN_QUANT, "mnnquant", str(fp32_path), str(quantized), str(config_path)]
        status = subprocess.run(command)
        if status.returncode != 0 or not quantized.is_file() or not quantized.stat().st_size:
            how = f"was killed by signal {-status.returncode}" if status.returncode < 0 else "failed"
            raise Int8Error(f"MNN's quantizer {how} on {variant.name} (its messages are in the log above)")
        os.replace(quantized, tmp)
    return fp32_path
