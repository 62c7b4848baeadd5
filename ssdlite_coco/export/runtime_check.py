"""Load the export in every runtime, run the test images through all of them, write ``verify.json``/``.md``."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ssdlite_coco.common.atomic import atomic_write_text
from ssdlite_coco.export.make import ExportPaths
from ssdlite_coco.export.preprocess import preprocess_as
from ssdlite_coco.export.runtimes import (
    CaffeHeadsRuntime,
    MnnRuntime,
    OnnxRuntime,
    OpenCVRuntime,
    PycaffeRuntime,
    ToolchainRuntime,
)
from ssdlite_coco.export.settings import ExportSettings
from ssdlite_coco.export.verify import ImageCase, failures_of, format_table, row_of, run_all

REFERENCE = "pycaffe (trained net)"


@dataclass(frozen=True)
class CheckSettings:
    """How the runtimes are judged: ``tolerance`` is the allowance the fold check measured, not the key's floor."""

    threads: int
    tolerance: float
    ap_tolerance: float
    latency_runs: int
    score_threshold: float
    reduced_ap_tolerance: float

    @classmethod
    def of(cls, settings: ExportSettings, threads: int, tolerance: float | None = None) -> CheckSettings:
        """The check's settings from the stage's (``tolerance``: the measured allowance; default the key's floor)."""
        return cls(
            threads,
            settings.tolerance if tolerance is None else tolerance,
            settings.ap_tolerance,
            settings.latency_runs,
            settings.match_score_threshold,
            settings.reduced_precision_ap_tolerance,
        )


def versions() -> dict[str, str]:
    import cv2
    import MNN
    import onnx
    import onnxruntime

    return {
        "opencv": cv2.__version__,
        "mnn": MNN.version(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


@dataclass(frozen=True)
class CheckContext:
    """What a runtime entry needs to load the export: its files, the heads' decode settings, threads."""

    paths: ExportPaths
    heads: dict[str, Any]
    scratch: Path  # temporary files (MNN's converted models)
    threads: int
    rknn_target: str

    def caffe(self, runtime: type, net: tuple[Path, Path]) -> Callable:
        num_classes = self.heads["settings"]["num_classes"]
        return partial(runtime, *net, self.heads["loc_blob"], self.heads["conf_blob"], num_classes)

    def decoded(self, runtime: type, model: Path) -> Callable:
        return partial(runtime, model, self.heads["priors"], self.heads["settings"], self.threads)


def _pycaffe(c: CheckContext) -> dict[str, Callable]:
    heads = partial(CaffeHeadsRuntime, priors=c.heads["priors"], settings=c.heads["settings"])
    return {
        "pycaffe": c.caffe(PycaffeRuntime, c.paths.deploy),
        "pycaffe heads + decode_detections": partial(heads, *c.paths.heads),
        # caffe-clip/: ReLU6 as Clip. OpenCV DNN 4.14 (no Clip layer for Caffe) and MNN 3.6.1's Caffe converter
        # ("These Op Not Support: Caffe::Clip") refuse it, so only pycaffe checks it (models/README.md)
        "pycaffe Clip": c.caffe(PycaffeRuntime, c.paths.deploy_clip),
        "pycaffe Clip heads + decode_detections": partial(heads, *c.paths.heads_clip),
    }


def _opencv(c: CheckContext) -> dict[str, Callable]:
    return {f"OpenCV DNN {versions()['opencv']}": partial(c.caffe(OpenCVRuntime, c.paths.deploy), threads=c.threads)}


def _mnn(c: CheckContext) -> dict[str, Callable]:
    num_classes = c.heads["settings"]["num_classes"]
    return {
        f"MNN {versions()['mnn']}": partial(
            MnnRuntime, c.paths.deploy, c.paths.heads, c.scratch, num_classes, c.threads
        )
    }


def _onnxruntime(c: CheckContext) -> dict[str, Callable]:
    return {f"ONNX Runtime {versions()['onnxruntime']} + decode_detections": c.decoded(OnnxRuntime, c.paths.onnx)}


def _toolchain(name: str, title: str, precisions: tuple[str, ...], **options: str) -> Callable:
    """An edge toolchain's rows: one per precision (``default``: what the toolchain does unasked)."""

    def rows(c: CheckContext) -> dict[str, Callable]:
        settings = {key: getattr(c, value) for key, value in options.items()}
        return {
            f"{title.format(**settings)} ({precision}) + decode_detections": partial(
                ToolchainRuntime,
                name,
                precision,
                c.paths.root,
                c.paths.edge(name, precision),
                c.heads["priors"],
                c.heads["settings"],
                c.threads,
                settings,
            )
            for precision in precisions
        }

    return rows


# export.runtimes -> the rows it adds to the check. A new runtime is one entry here (and its class in
# export.runtimes, or its module in export.edge with a requirements file in envs/toolchains/).
RUNTIMES: dict[str, Callable[[CheckContext], dict[str, Callable]]] = {
    "pycaffe": _pycaffe,
    "opencv": _opencv,
    "mnn": _mnn,
    "onnxruntime": _onnxruntime,
    "rknn": _toolchain("rknn", "RKNN {target} simulator", ("default",), target="rknn_target"),
    "openvino": _toolchain("openvino", "OpenVINO CPU", ("default", "fp32")),
    "ncnn": _toolchain("ncnn", "ncnn (pnnx)", ("default", "fp32")),
    "litert": _toolchain("litert", "LiteRT (onnx2tf)", ("default", "fp32")),
}


def runtime_factories(names: list[str], context: CheckContext) -> dict[str, Callable]:
    """Row name -> a function that loads the export in that runtime (raising its error when it cannot)."""
    factories: dict[str, Callable] = {}
    for name in names:
        factories.update(RUNTIMES[name](context))
    return factories


def load_runtimes(factories: dict[str, Callable]) -> tuple[dict[str, Any], dict[str, str]]:
    loaded, errors = {}, {}
    for name, factory in factories.items():
        try:
            loaded[name] = factory()
        except Exception as error:  # a runtime's own failure is a result of the check, reported per row
            errors[name] = " ".join(f"{type(error).__name__}: {error}".split())[:500]
    return loaded, errors


def describe(runtime) -> dict[str, Any]:
    """What a row says of its runtime beyond the numbers: precision, how outputs are fetched, the toolchain."""
    about = {"precision": runtime.precision, "full_precision": runtime.full_precision, "fetch": runtime.fetch}
    for key in ("version", "model", "convert_seconds"):
        if hasattr(runtime, key):
            about[key] = getattr(runtime, key)
    return about


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "system": platform.platform(), "python": platform.python_version()}


def check_runtimes(
    reference,
    factories: dict[str, Callable],
    images: list[ImageCase],
    transform: dict[str, Any],
    input_hw: tuple[int, int],
    settings: CheckSettings,
    scorer: tuple[Callable, Callable] | None = None,
) -> dict[str, Any]:
    """The rows of ``verify.json``. ``scorer``: (rows, image) -> COCO detections, (detections, name) -> metrics."""
    loaded, errors = load_runtimes(factories)
    to_coco, score = scorer if scorer is not None else (None, None)
    tallies, reference_tally = run_all(
        loaded, reference, images, transform, input_hw, settings.score_threshold, to_coco
    )
    first = preprocess_as(images[0].path, transform, input_hw)
    reference_row = row_of(REFERENCE, reference_tally, score, reference.latency(first, settings.latency_runs))
    rows = [reference_row]
    for name in factories:
        if name in errors:
            rows.append({"runtime": name, "loads": False, "error": errors[name]})
            continue
        runtime = loaded[name]
        row = row_of(name, tallies[name], score, runtime.latency(first, settings.latency_runs))
        rows.append(row | describe(runtime))
    for runtime in loaded.values():
        if hasattr(runtime, "close"):
            runtime.close()
    failures = failures_of(
        rows[1:], reference_row, settings.tolerance, settings.ap_tolerance, settings.reduced_ap_tolerance
    )
    return {
        "reference": REFERENCE,
        "rows": rows,
        "failures": failures,
        "images": len(images),
        "tolerance": settings.tolerance,
        "ap_tolerance": settings.ap_tolerance,
        "reduced_ap_tolerance": settings.reduced_ap_tolerance,
        "score_threshold": settings.score_threshold,
        "threads": settings.threads,
        "latency": f"batch 1, median of {settings.latency_runs} runs after 5 warm-up runs",
        "machine": machine(),
        "versions": versions(),
    }


def write_verify(result: dict[str, Any], rewrites: list, json_path, markdown_path) -> None:
    """``verify.json`` and ``verify.md`` (the table, the rewrites, the machine)."""
    result = dict(result, rewrites=[vars(rewrite) for rewrite in rewrites])
    atomic_write_text(json_path, json.dumps(result, indent=2, default=_plain) + "\n")
    host = result["machine"]
    lines = [
        "# Export check: every runtime against pycaffe",
        "",
        f"{result['images']} test images; differences relative to pycaffe's magnitude (at least 1), tolerance "
        f"{result['tolerance']:.3g}{_tolerance_origin(result)}; detections above score {result['score_threshold']}, "
        "matched with the same label at IoU >= 0.5; COCO AP from each runtime's own detections; "
        f"latency {result['latency']}, "
        f"{result['threads']} thread(s), on {host['cpu']} ({host['cores']} cores).",
        "",
        format_table(result["rows"]),
        "Rewrites in caffe/deploy.prototxt (the maths unchanged):",
        "",
        *([f"- `{r.layer}` ({r.kind}): {r.detail}" for r in rewrites] or ["- none"]),
        "",
        "How each runtime's outputs are fetched (by name: never by order, since loc and scores can have the same "
        "shape):",
        "",
        *[f"- {row['runtime']}: {row['fetch']}" for row in result["rows"] if row.get("fetch")],
        "",
        "Failures: " + ("; ".join(result["failures"]) if result["failures"] else "none"),
        "",
    ]
    atomic_write_text(markdown_path, "\n".join(lines))


def _tolerance_origin(result: dict[str, Any]) -> str:
    if "reference_noise" not in result:
        return ""
    return (
        f" (max(export.tolerance {result['tolerance_floor']}, export.fold_noise_factor x the trained net's "
        f"float32 noise {result['reference_noise']:.2g}))"
    )


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
