"""The runtimes an export is checked in, behind one interface: ``infer(input) -> Outputs``.

Every runtime gives the head outputs (``loc`` ``[P, 4]``, ``scores`` ``[P, C]``) and its own detections
as ``[N, 6]`` rows ``label, score, xmin, ymin, xmax, ymax``, whatever its native layout:

* pycaffe: DetectionOutput ``[1, 1, N, 7]`` (image index first; when nothing is found, one row: index 0 then six -1);
* OpenCV DNN (``cv2.dnn.readNetFromCaffe``): ``[1, 1, keep_top_k, 7]``, padded with rows of zeros;
* MNN (its Caffe converter, PriorBox and DetectionOutput included): ``[1, 1, N, 6]``, no image index;
* ONNX Runtime: the head-only ``heads.onnx``, decoded by ``decode_detections``;
* MNN heads: a head-only ``.mnn`` (FP32 or INT8, see ``export.quantize``), decoded the same way;
* an edge toolchain (RKNN, OpenVINO, ncnn, LiteRT) in its own venv: its conversion of the head-only export,
  run by ``export.edge.worker``, decoded the same way.

Each says the precision it runs in (``full_precision``: float32 throughout) and how its outputs are fetched.

``latency()`` times what a user calls per image (the full net, or heads plus decode). MNN's converter is
called through its extension module ``_tools``: the ``mnnconvert`` console script pip-installs a
logging SDK and sends usage telemetry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.export.decode import caffe_rows, decode_detections
from ssdlite_coco.export.edge.pipe import PipeClosed, receive, send
from ssdlite_coco.export.heads import LOC, SCORES
from ssdlite_coco.export.timing import time_call

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class RuntimeLoadError(SsdliteError):
    """A runtime cannot load or convert a model; the message is the runtime's own error."""


@dataclass
class Outputs:
    loc: np.ndarray
    scores: np.ndarray
    rows: np.ndarray


class PycaffeRuntime:
    """A Caffe deploy net in pycaffe: the reference (trained net) and the exported net."""

    precision = "float32"
    full_precision = True
    fetch = "blobs by name (the loc and conf blobs, detection_out)"

    def __init__(self, prototxt, weights, loc_blob: str, conf_blob: str, num_classes: int, net=None):
        import caffe

        self.net = net if net is not None else caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
        self.input = self.net.inputs[0]
        self.loc_blob, self.conf_blob, self.num_classes = loc_blob, conf_blob, num_classes
        self.has_detections = "detection_out" in self.net.blobs

    def _forward(self, array: np.ndarray) -> None:
        self.net.blobs[self.input].reshape(1, *array.shape)
        self.net.blobs[self.input].data[0] = array
        self.net.forward()

    def infer(self, array: np.ndarray) -> Outputs:
        self._forward(array)
        rows = caffe_rows(self.net.blobs["detection_out"].data) if self.has_detections else np.zeros((0, 6))
        return Outputs(
            self.net.blobs[self.loc_blob].data.reshape(-1, 4).copy(),
            self.net.blobs[self.conf_blob].data.reshape(-1, self.num_classes).copy(),
            rows,
        )

    def latency(self, array: np.ndarray, runs: int) -> dict[str, float]:
        return time_call(lambda: self._forward(array), runs)


class CaffeHeadsRuntime(PycaffeRuntime):
    """The head-only Caffe net in pycaffe, decoded by ``decode_detections``."""

    fetch = "blobs by name: loc, scores"

    def __init__(self, prototxt, weights, priors: np.ndarray, settings: dict):
        super().__init__(prototxt, weights, LOC, SCORES, settings["num_classes"])
        self.priors, self.settings = priors, settings

    def infer(self, array: np.ndarray) -> Outputs:
        outputs = super().infer(array)
        outputs.rows = decode_detections(outputs.loc, outputs.scores, self.priors, self.settings)
        return outputs

    def latency(self, array: np.ndarray, runs: int) -> dict[str, float]:
        return time_call(lambda: self.infer(array), runs)


class OpenCVRuntime:
    """``cv2.dnn.readNetFromCaffe`` on the deploy net (OpenCV's own PriorBox and DetectionOutput)."""

    precision = "float32"
    full_precision = True
    fetch = "forward() with the blob names (loc and conf blobs, detection_out)"

    def __init__(self, prototxt, weights, loc_blob: str, conf_blob: str, num_classes: int, threads: int):
        import cv2

        cv2.setNumThreads(threads)
        try:
            self.net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
        except cv2.error as error:
            raise RuntimeLoadError(" ".join(str(error).split())) from None
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.names = [loc_blob, conf_blob, "detection_out"]
        self.num_classes = num_classes

    def infer(self, array: np.ndarray) -> Outputs:
        self.net.setInput(array[None])
        loc, scores, detections = self.net.forward(self.names)
        rows = np.asarray(detections, np.float32).reshape(-1, 7)
        rows = rows[rows[:, 2] > 0][:, 1:]  # zero rows pad the output to keep_top_k
        return Outputs(loc.reshape(-1, 4), scores.reshape(-1, self.num_classes), rows)

    def latency(self, array: np.ndarray, runs: int) -> dict[str, float]:
        def call():
            self.net.setInput(array[None])
            self.net.forward("detection_out")

        return time_call(call, runs)


def mnn_convert(prototxt, weights, out_path: Path) -> None:
    """Caffe -> .mnn with MNN's converter entry point (not the telemetry-sending console script)."""
    import _tools  # MNN's converter module, installed with the mnn wheel

    args = ["mnnconvert", "-f", "CAFFE", "--modelFile", str(weights), "--prototxt", str(prototxt)]
    ok = _tools.mnnconvert([*args, "--MNNModel", str(out_path), "--bizCode", "ssdlite-coco"])
    if not ok or not out_path.is_file():
        raise RuntimeLoadError(f"MNN's converter failed on {prototxt} (see the log for its messages)")


class _MnnSession:
    def __init__(self, path: Path, threads: int):
        import MNN

        self.mnn = MNN
        self.interpreter = MNN.Interpreter(str(path))
        self.session = self.interpreter.createSession({"numThread": threads})
        self.input = self.interpreter.getSessionInput(self.session)

    def run(self, array: np.ndarray, names: list[str]) -> list[np.ndarray]:
        mnn = self.mnn
        tensor = mnn.Tensor(
            (1, *array.shape), mnn.Halide_Type_Float, np.ascontiguousarray(array[None]), mnn.Tensor_DimensionType_Caffe
        )
        self.input.copyFrom(tensor)
        self.interpreter.runSession(self.session)
        results = []
        for name in names:
            output = self.interpreter.getSessionOutput(self.session, name)
            shape = output.getShape()
            host = mnn.Tensor(shape, mnn.Halide_Type_Float, np.zeros(shape, np.float32), mnn.Tensor_DimensionType_Caffe)
            output.copyToHostTensor(host)
            results.append(np.array(host.getNumpyData(), np.float32).reshape(shape))
        return results


class MnnRuntime:
    """MNN: the deploy net converted (its DetectionOutput gives the detections) and the heads converted."""

    precision = "float32"
    full_precision = True
    fetch = "getSessionOutput by name (loc, scores; detection_out)"

    def __init__(self, deploy, heads, workdir: Path, num_classes: int, threads: int):
        workdir.mkdir(parents=True, exist_ok=True)
        for (prototxt, weights), name in ((deploy, "deploy.mnn"), (heads, "heads.mnn")):
            mnn_convert(prototxt, weights, workdir / name)
        self.deploy = _MnnSession(workdir / "deploy.mnn", threads)
        self.heads = _MnnSession(workdir / "heads.mnn", threads)
        self.num_classes = num_classes

    def infer(self, array: np.ndarray) -> Outputs:
        loc, scores = self.heads.run(array, [LOC, SCORES])
        (detections,) = self.deploy.run(array, ["detection_out"])
        rows = detections.reshape(-1, 6)
        return Outputs(loc.reshape(-1, 4), scores.reshape(-1, self.num_classes), rows[rows[:, 1] > 0])

    def latency(self, array: np.ndarray, runs: int) -> dict[str, float]:
        return time_call(lambda: self.deploy.run(array, ["detection_out"]), runs)


class OnnxRuntime:
    """ONNX Runtime on ``heads.onnx`` (CPU), decoded by ``decode_detections``."""

    precision = "float32"
    full_precision = True
    fetch = "run() with the output names loc, scores"

    def __init__(self, model_path: str | os.PathLike, priors: np.ndarray, settings: dict, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        try:
            self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise RuntimeLoadError(" ".join(str(error).split())) from None
        self.input = self.session.get_inputs()[0].name
        self.priors, self.settings = priors, settings

    def infer(self, array: np.ndarray) -> Outputs:
        loc, scores = self.session.run([LOC, SCORES], {self.input: array[None]})
        loc, scores = loc.reshape(-1, 4), scores.reshape(-1, scores.shape[-1])
        return Outputs(loc, scores, decode_detections(loc, scores, self.priors, self.settings))

    def latency(self, array: np.ndarray, runs: int) -> dict[str, float]:
        return time_call(lambda: self.infer(array), runs)


class MnnHeadsRuntime:
    """An MNN model of the head-only net (FP32 or INT8), decoded by ``decode_detections``."""

    precision = "float32"
    full_precision = True
    fetch = "getSessionOutput by name: loc, scores"

    def __init__(self, model_path: str | os.PathLike, priors: np.ndarray, settings: dict, threads: int):
        self.session = _MnnSession(Path(model_path), threads)
        self.priors, self.settings = priors, settings

    def infer(self, array: np.ndarray) -> Outputs:
        loc, scores = self.session.run(array, [LOC, SCORES])
        loc, scores = loc.reshape(-1, 4), scores.reshape(-1, self.settings["num_classes"])
        return Outputs(loc, scores, decode_detections(loc, scores, self.priors, self.settings))

    def latency(self, array: np.ndarray, runs: int) -> dict[str, float]:
        return time_call(lambda: self.infer(array), runs)


class ToolchainRuntime:
    """An edge toolchain in its own venv (``export.edge``): its converted heads, decoded by ``decode_detections``.

    A worker process in the toolchain's venv converts the export into ``work_dir`` and runs each image; its
    ``loc`` and ``scores`` come back by name. ``latency()`` is the worker's own timing of the converted model
    (no pipe in it) plus ``decode_detections`` timed here, so it compares with ONNX Runtime's heads + decode.
    """

    def __init__(
        self,
        toolchain: str,
        precision: str,
        export_dir: Path,
        work_dir: Path,
        priors: np.ndarray,
        settings: dict,
        threads: int,
        options: dict[str, str] | None = None,
    ):
        from ssdlite_coco.export.edge.environment import toolchain_python

        python = toolchain_python(toolchain, log=lambda message: print(message, file=sys.stderr, flush=True))
        command = [str(python), "-m", "ssdlite_coco.export.edge.worker", "--toolchain", toolchain]
        command += ["--export-dir", str(export_dir), "--work-dir", str(work_dir), "--precision", precision]
        command += ["--threads", str(threads)]
        for key, value in (options or {}).items():
            command += ["--option", f"{key}={value}"]
        # Only the project's package on the path: the toolchain's venv has its own NumPy, none of pycaffe's.
        environment = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment)
        try:
            ready, _ = receive(self.process.stdout)
        except PipeClosed:
            self.close()
            raise RuntimeLoadError(f"the {toolchain} worker exited with status {self.process.returncode}") from None
        if ready["op"] == "error":
            self.close()
            raise RuntimeLoadError(ready["error"])
        self.version, self.precision, self.fetch = ready["version"], ready["precision"], ready["fetch"]
        self.full_precision = ready["full_precision"]
        self.model, self.convert_seconds = ready["model"], ready["convert_seconds"]
        self.priors, self.settings = priors, settings

    def _ask(self, message: dict, array: np.ndarray) -> tuple[dict, list[np.ndarray]]:
        try:
            send(self.process.stdin, message, (array,))
            return receive(self.process.stdout)
        except (PipeClosed, BrokenPipeError):
            raise RuntimeLoadError(f"the toolchain worker died (status {self.process.poll()}); see the log") from None

    def infer(self, array: np.ndarray) -> Outputs:
        _, (loc, scores) = self._ask({"op": "infer"}, array)
        loc, scores = loc.reshape(-1, 4), scores.reshape(-1, self.settings["num_classes"])
        return Outputs(loc, scores, decode_detections(loc, scores, self.priors, self.settings))

    def latency(self, array: np.ndarray, runs: int) -> dict[str, float]:
        answer, _ = self._ask({"op": "latency", "runs": runs}, array)
        outputs = self.infer(array)
        decode = time_call(lambda: decode_detections(outputs.loc, outputs.scores, self.priors, self.settings), runs)
        heads = answer["latency"]
        return {key: round(heads[key] + decode[key], 3) for key in ("median_ms", "p90_ms")} | {"runs": runs}

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
