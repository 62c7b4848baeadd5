"""LiteRT (TensorFlow Lite: Android, Coral, microcontrollers): ``onnx/heads.onnx`` through onnx2tf, run in LiteRT.

    onnx2tf -i heads.onnx -o tflite/        # heads_float32.tflite and heads_float16.tflite, NHWC input

What onnx2tf does that ``convert`` works around, each of which gives a wrong or no model without an error:
* it rewrites its input file in place (onnxsim, sng4onnx): it converts a copy in ``work_dir``;
* it loads ``calibration_image_sample_data_20x128x128x3_float32.npy`` from the current directory at every
  conversion of a 3-channel image model and downloads it from the internet when absent (it fails offline):
  ``convert`` writes that file from the export's calibration images (NHWC float32, at most 20) and runs in
  ``work_dir``;
* it runs onnxsim as a console script and only warns when that is not on ``PATH``: the venv's ``bin`` is put
  first on it, and the warning in its log fails the conversion;
* the ``.tflite`` output tensors are called ``PartitionedCall:0`` and ``PartitionedCall:1`` in an order that
  changes between two conversions of the same model (with 4 classes loc and scores have one shape): the
  session fetches through the ``serving_default`` signature runner, whose keys are the ONNX names.
The input is NHWC ``[1, 300, 300, 3]``: the session transposes the CHW image.

Precisions: ``default`` is ``heads_float16.tflite`` (float16 weights, dequantized to float32 at load on the
CPU); ``fp32`` is ``heads_float32.tflite``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"  # onnx2tf looks for it in os.getcwd()
SAMPLE_COUNT = 20
INPUT = "data"
OUTPUTS = ("loc", "scores")
SIGNATURE = "serving_default"
FILES = {"default": "heads_float16.tflite", "fp32": "heads_float32.tflite"}
WORDS = {
    "default": "float16 weights (heads_float16.tflite), dequantized at load; float32 compute on the CPU",
    "fp32": "fp32 (heads_float32.tflite)",
}
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def version() -> str:
    names = ("onnx2tf", "tensorflow", "onnx", "onnxsim", "ai-edge-litert")
    return ", ".join(f"{name} {metadata.version(name)}" for name in names)


def sample_images(calibration: list[Path]) -> np.ndarray:
    """onnx2tf's sample file from the calibration images: NHWC float32 (it resizes them to the input itself)."""
    if not calibration:
        raise ValueError("onnx2tf needs sample images even for a float conversion; the calibration list is empty")
    images = [np.load(path)[0].astype(np.float32).transpose(1, 2, 0) for path in calibration[:SAMPLE_COUNT]]
    return np.ascontiguousarray(np.stack(images))


def convert(export_dir: Path, work_dir: Path, precision: str, calibration: list[Path]) -> Path:
    if precision not in FILES:
        raise ValueError(f"litert runs in {', '.join(FILES)} here, not {precision!r}")
    work_dir = Path(work_dir).resolve()
    np.save(work_dir / SAMPLE_FILE, sample_images(calibration))
    model = work_dir / "heads.onnx"
    shutil.copyfile(Path(export_dir) / "onnx" / "heads.onnx", model)
    output_dir = work_dir / "tflite"
    shutil.rmtree(output_dir, ignore_errors=True)
    import onnx2tf  # imports TensorFlow: only when converting

    log_path = work_dir / "onnx2tf.log"
    previous_directory, previous_path = os.getcwd(), os.environ.get("PATH", "")
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + previous_path  # onnxsim's script
    os.chdir(work_dir)
    try:
        with log_path.open("w") as log, contextlib.redirect_stdout(log):
            onnx2tf.convert(input_onnx_file_path=str(model), output_folder_path=str(output_dir), verbosity="info")
    except SystemExit as exit_:  # onnx2tf prints an ERROR line, then exits
        raise RuntimeError(f"onnx2tf failed (exit {exit_.code}): {tail(log_path)}") from None
    finally:
        os.chdir(previous_directory)
        os.environ["PATH"] = previous_path
        model.unlink()  # onnx2tf's rewritten copy: not a file to deploy
    if "Failed to optimize the onnx file." in ANSI_ESCAPE.sub("", log_path.read_text()):
        raise RuntimeError(f"onnx2tf could not run onnxsim: {tail(log_path)}")
    result = output_dir / FILES[precision]
    if not result.is_file():
        raise RuntimeError(f"onnx2tf wrote no {result.name}: {tail(log_path)}")
    return result


def tail(log_path: Path, words: int = 80) -> str:
    return " ".join(ANSI_ESCAPE.sub("", log_path.read_text()).split()[-words:])


class Session:
    def __init__(self, model: Path, precision: str, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.precision, self.full_precision = WORDS[precision], precision == "fp32"
        self.interpreter = Interpreter(model_path=str(model), num_threads=int(threads))
        names = self.interpreter.get_signature_list().get(SIGNATURE)
        if names is None or INPUT not in names["inputs"] or not set(OUTPUTS) <= set(names["outputs"]):
            raise RuntimeError(f"{model}: signature {SIGNATURE!r} is {names}; expected input data, outputs loc, scores")
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        shape = tuple(int(size) for size in self.runner.get_input_details()[INPUT]["shape"])
        if shape not in ((1, 300, 300, 3), (1, 3, 300, 300)):
            raise RuntimeError(f"{model}: input {INPUT} has shape {shape}")
        self.nhwc = shape[-1] == 3
        tensor_of = self.interpreter._get_full_signature_list()[SIGNATURE]["outputs"]
        tensor_names = {detail["index"]: detail["name"] for detail in self.interpreter.get_output_details()}
        self.fetch = (
            "by name through the 'serving_default' signature runner ("
            + ", ".join(f"{name} is tensor {tensor_names[tensor_of[name]]!r}" for name in OUTPUTS)
            + f"; by index the outputs are {[tensor_names[index] for index in sorted(tensor_names)]})"
        )

    def run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(image, dtype=np.float32)
        batch = image.transpose(1, 2, 0)[None] if self.nhwc else image[None]
        outputs = self.runner(**{INPUT: np.ascontiguousarray(batch)})
        return outputs["loc"][0].astype(np.float32), outputs["scores"][0].astype(np.float32)
