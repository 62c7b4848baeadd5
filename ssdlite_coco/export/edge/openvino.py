"""OpenVINO (Intel CPUs, GPUs and NPUs): ``onnx/heads.onnx`` converted as OpenVINO's docs do, run on its CPU plugin.

    model = openvino.convert_model("onnx/heads.onnx")
    openvino.save_model(model, "heads.xml")            # IR: heads.xml + heads.bin

Precisions: ``default`` is what a user gets passing nothing: ``save_model`` compresses the weights to FP16
and the CPU plugin computes in its own default (f32 on most CPUs, bf16 on CPUs with AMX or AVX512-BF16, f16 on
some ARM CPUs); ``fp32`` keeps FP32 weights (``compress_to_fp16=False``) and asks for
``INFERENCE_PRECISION_HINT=f32``. Outputs are fetched by name (``compiled_model.output("loc")``).

Runs in the toolchain's own venv (``edge.environment``): imports only the standard library, NumPy and openvino.
The module's name does not shadow the package: it is imported as ``ssdlite_coco.export.edge.openvino``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

INPUT = "data"
OUTPUTS = ("loc", "scores")
PRECISIONS = ("default", "fp32")


def version() -> str:
    return f"openvino {ov.get_version()}"


def _check_names(model: ov.Model, where: str) -> None:
    """The model must keep the ONNX tensor names: ``data`` in, ``loc`` and ``scores`` out, each once."""
    outputs = [sorted(output.get_names()) for output in model.outputs]
    inputs = [sorted(one.get_names()) for one in model.inputs]
    for name in OUTPUTS:
        if sum(name in names for names in outputs) != 1:
            raise RuntimeError(f"{where}: output {name!r} not found exactly once among the outputs {outputs}")
    if sum(INPUT in names for names in inputs) != 1:
        raise RuntimeError(f"{where}: input {INPUT!r} not found among the inputs {inputs}")


def convert(export_dir: Path, work_dir: Path, precision: str, calibration: list[Path]) -> Path:
    if precision not in PRECISIONS:
        raise ValueError(f"openvino runs in {', '.join(PRECISIONS)}, not {precision!r}")
    model = ov.convert_model(str(Path(export_dir) / "onnx" / "heads.onnx"))
    _check_names(model, "convert_model")
    xml = Path(work_dir) / "heads.xml"
    ov.save_model(model, str(xml), compress_to_fp16=precision == "default")  # FP16 weights: OpenVINO's default
    return xml


class Session:
    fetch = "by name: compiled_model.output('loc'), compiled_model.output('scores')"

    def __init__(self, model: Path, precision: str, threads: int):
        core = ov.Core()
        network = core.read_model(str(model))
        _check_names(network, f"read_model({Path(model).name})")
        config = {"INFERENCE_NUM_THREADS": int(threads)}
        if precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = core.compile_model(network, "CPU", config)
        hint = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))  # e.g. "<Type: 'float32'>"
        computed = hint.split("'")[1] if "'" in hint else hint
        self.full_precision = precision == "fp32" and computed in ("float32", "f32")
        weights = "FP32 weights" if precision == "fp32" else "FP16-compressed weights"
        self.precision = f"{computed} compute ({weights}), CPU plugin"
        self.request = self.compiled.create_infer_request()
        self.input = self.compiled.input(INPUT)
        self.outputs = [self.compiled.output(name) for name in OUTPUTS]

    def run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.request.infer({self.input: np.ascontiguousarray(image, dtype=np.float32)[None]})
        # .data views the request's own buffer, which the next inference overwrites: copied out
        loc, scores = (np.array(self.request.get_tensor(output).data[0], np.float32) for output in self.outputs)
        return loc, scores
