"""The runtimes an export is checked in, behind one interface: ``infer(input) -> Outputs``.

Every runtime gives the head outputs (``loc`` ``[P, 4]``, ``scores`` ``[P, C]``) and its own detections
as ``[N, 6]`` rows ``label, score, xmin, ymin, xmax, ymax``, whatever its native layout:

* pycaffe: DetectionOutput ``[1, 1, N, 7]`` (image index first; when nothing is found, one row: index 0 then six -1);
* OpenCV DNN (``cv2.dnn.readNetFromCaffe``): ``[1, 1, keep_top_k, 7]``, padded with rows of zeros;
* MNN (its Caffe converter, PriorBox and DetectionOutput included): ``[1, 1, N, 6]``, no image index;
* ONNX Runtime: the head-only ``heads.onnx``, decoded by ``decode_detections``;
* MNN heads: a head-only ``.mnn`` (FP32 or INT8, see ``export.quantize``), decoded the same way.

``latency()`` times what a user calls per image (the full net, or heads plus decode). MNN's converter is
called through its extension module ``_tools``: the ``mnnconvert`` console script pip-installs a
logging SDK and sends usage telemetry.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.export.decode import caffe_rows, decode_detections
from ssdlite_coco.export.heads import LOC, SCORES


class RuntimeLoadError(SsdliteError):
    """A runtime cannot load or convert a model; the message is the runtime's own error."""


@dataclass
class Outputs:
    loc: np.ndarray
    scores: np.ndarray
    rows: np.ndarray


def time_call(call: Callable[[], object], runs: int, warmup: int = 5) -> dict[str, float]:
    """Median and spread (ms) of ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "median_ms": round(statistics.median(times), 3),
        "p90_ms": round(float(np.percentile(times, 90)), 3),
        "runs": runs,
    }


class PycaffeRuntime:
    """A Caffe deploy net in pycaffe: the reference (trained net) and the exported net."""

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

    def __init__(self, model_path: str | os.PathLike, priors: np.ndarray, settings: dict, threads: int):
        self.session = _MnnSession(Path(model_path), threads)
        self.priors, self.settings = priors, settings

    def infer(self, array: np.ndarray) -> Outputs:
        loc, scores = self.session.run(array, [LOC, SCORES])
        loc, scores = loc.reshape(-1, 4), scores.reshape(-1, self.settings["num_classes"])
        return Outputs(loc, scores, decode_detections(loc, scores, self.priors, self.settings))

    def latency(self, array: np.ndarray, runs: int) -> dict[str, float]:
        return time_call(lambda: self.infer(array), runs)
