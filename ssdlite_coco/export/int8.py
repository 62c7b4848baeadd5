"""What INT8 costs, per runtime and calibration method: ``results/export/int8/`` (what ``export_int8.py`` runs).

Every variant of ``export.int8_variants`` is quantized (``export.quantize``) from the export's head-only
nets and calibration images, then evaluated like the FP32 export: the same preprocessing, test images,
``decode_detections`` and COCO scoring (``export.stage.coco_scorer``). The FP32 rows of this path are the
export check's ONNX Runtime row (and MNN's head-only net); ΔAP of an INT8 row is against the FP32 row of
its own runtime. ``int8.json`` has every row (AP, AP50, AP75, per-class AP, differences from FP32 on the
heads, batch-1 latency, model size), the per-layer errors of each ONNX Runtime variant, and the verdict
against ``export.int8_max_ap_drop``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssdlite_coco.common.atomic import atomic_path, atomic_write_text
from ssdlite_coco.export.fold import input_shape
from ssdlite_coco.export.int8_table import format_int8_table, verdict_of
from ssdlite_coco.export.layer_error import layer_errors
from ssdlite_coco.export.make import ExportPaths
from ssdlite_coco.export.preprocess import preprocess_as, transform_settings
from ssdlite_coco.export.quantize import Int8Error, Variant, quantize_mnn, quantize_onnx, read_calibration
from ssdlite_coco.export.runtime_check import machine, versions
from ssdlite_coco.export.runtimes import MnnHeadsRuntime, OnnxRuntime, RuntimeLoadError, ToolchainRuntime
from ssdlite_coco.export.settings import Int8Settings
from ssdlite_coco.export.stage import coco_scorer, split_images
from ssdlite_coco.export.verify import run_all

ONNX_FP32 = "onnxruntime/fp32"
LAYER_ERROR_IMAGES = 16
MNN_FP32 = "mnn/fp32"


@dataclass
class Int8Inputs:
    export_dir: Path
    deploy_net: Path
    test_net: Path
    instances: Path
    images: Path
    labelmap: Path
    calibration: Path | None = None  # default: export_dir/calibration


def quantize_all(
    paths: ExportPaths, variants: list[Variant], arrays, transform, models_dir: Path, activations: str, log
) -> dict:
    """Quantize every variant into ``models_dir``: name -> {path, seconds}; the FP32 MNN heads too if needed."""
    models: dict[str, dict[str, Any]] = {ONNX_FP32: {"path": paths.onnx, "seconds": 0.0}}
    for variant in variants:
        start = time.perf_counter()
        out_path = models_dir / variant.file_name
        try:
            if variant.runtime == "onnxruntime":
                quantize_onnx(paths.onnx, out_path, arrays, variant, activations)
            else:
                fp32_path = quantize_mnn(paths.heads, out_path, arrays, transform, variant)
                models[MNN_FP32] = {"path": fp32_path, "seconds": 0.0}
        except Int8Error as error:  # a quantizer's own failure is a result: its row says so
            models[variant.name] = {"error": str(error)}
            log(f"{variant.name}: {error}")
            continue
        models[variant.name] = {"path": out_path, "seconds": round(time.perf_counter() - start, 2)}
        log(f"quantized {variant.name} in {models[variant.name]['seconds']:.1f} s: {out_path.name}")
    return models


# The runtime that runs a model, by the first part of its variant name (``onnxruntime/per-channel/minmax``).
HEAD_RUNTIMES = {"onnxruntime": OnnxRuntime, "mnn": MnnHeadsRuntime}
# Edge toolchains whose INT8 variants their own worker quantizes (export.edge), and the precision of the
# unquantized row their INT8 rows are compared with (RKNN has no float32 mode: its float16).
TOOLCHAIN_BASES = {"rknn": "default"}


def toolchain_models(
    paths: ExportPaths, variants: list[Variant], models_dir: Path, settings: Int8Settings, threads: int, log
) -> dict:
    """The edge toolchains' INT8 variants and their unquantized base row, each loaded in its worker (which
    converts, quantizes and keeps the model in ``models_dir``/<variant>/): name -> {runtime, path, seconds}."""
    priors, decode = np.load(paths.priors), json.loads(paths.decode.read_text())
    wanted = [variant for variant in variants if variant.runtime in TOOLCHAIN_BASES]
    jobs = {f"{name}/float16": (name, TOOLCHAIN_BASES[name], {}) for name in {v.runtime for v in wanted}}
    for variant in wanted:
        jobs[variant.name] = (variant.runtime, "int8", {"granularity": variant.granularity, "method": variant.method})
    models: dict[str, dict[str, Any]] = {}
    for name, (toolchain, precision, quantization) in jobs.items():
        work_dir = models_dir / name.replace("/", "-")
        target = {"target": settings.rknn_target} if toolchain == "rknn" else {}
        try:
            runtime = ToolchainRuntime(
                toolchain, precision, paths.root, work_dir, priors, decode, threads, target | quantization
            )
        except RuntimeLoadError as error:  # the toolchain's own failure is a result: its row says so
            models[name] = {"error": str(error)}
            log(f"{name}: {error}")
            continue
        model = Path(runtime.model)
        models[name] = {"runtime": runtime, "path": model, "file": f"{work_dir.name}/{model.name}"}
        models[name]["seconds"] = runtime.convert_seconds
        log(f"{name}: converted in {runtime.convert_seconds:.1f} s: {runtime.precision}")
    return models


def _row(name: str, model: dict, tally, scored: dict, latency: dict) -> dict[str, Any]:
    runtime, *rest = name.split("/")  # runtime/precision (the unquantized row) or runtime/weights/calibration
    stats = scored["stats"]
    base = len(rest) == 1
    return {
        "variant": name,
        "runtime": runtime,
        "precision": rest[0] if base else "int8",
        "weights": "-" if base else rest[0],
        "calibration": "-" if base else rest[1],
        "model": model.get("file", model["path"].name),
        "model_bytes": model["path"].stat().st_size,
        "quantize_seconds": model["seconds"],
        "AP": stats["AP"],
        "AP50": stats["AP50"],
        "AP75": stats["AP75"],
        "per_class": [{k: c[k] for k in ("category_id", "name", "AP", "AP50")} for c in scored["per_class"]],
        "loc_max_difference": tally.loc,
        "scores_max_difference": tally.scores,
        "detections": tally.detections,
        "fp32_detections": tally.reference_detections,
        "matched": tally.matched,
        "latency": latency,
    }


def evaluate_models(
    models: dict, inputs: Int8Inputs, images, paths: ExportPaths, transform, settings: Int8Settings, threads: int
) -> list[dict]:
    """One row per model: ``images`` through it, ``decode_detections`` and COCO scoring (FP32 ONNX: the reference)."""
    priors = np.load(paths.priors)
    decode = json.loads(paths.decode.read_text())
    runtimes = {
        name: model.get("runtime") or HEAD_RUNTIMES[name.split("/")[0]](model["path"], priors, decode, threads)
        for name, model in models.items()
        if "path" in model
    }
    to_coco, score = coco_scorer(inputs.instances, inputs.labelmap, images)
    input_hw = input_shape(inputs.deploy_net)[1:]
    others = {name: runtime for name, runtime in runtimes.items() if name != ONNX_FP32}
    tallies, reference_tally = run_all(
        others, runtimes[ONNX_FP32], images, transform, input_hw, settings.match_score_threshold, to_coco
    )
    tallies[ONNX_FP32] = reference_tally
    first = preprocess_as(images[0].path, transform, input_hw)
    rows = []
    for name, runtime in runtimes.items():
        latency = runtime.latency(first, settings.latency_runs)
        rows.append(_row(name, models[name], tallies[name], score(tallies[name].coco, name), latency))
    for runtime in runtimes.values():
        if hasattr(runtime, "close"):
            runtime.close()
    base_ap = {row["runtime"]: row["AP"] for row in rows if row["precision"] != "int8"}
    for row in rows:
        row["delta_AP"] = row["AP"] - base_ap[row["runtime"]]
    failed = [{"variant": name, "error": model["error"]} for name, model in models.items() if "error" in model]
    return rows + failed


def probe_arrays(inputs: Int8Inputs, transform: dict, count: int) -> list[np.ndarray]:
    """The first ``count`` test images as the net takes them: where the per-layer errors are measured.

    Not the calibration images: their ranges were fitted to them, so a bad calibration (one constant image)
    looks nearly lossless on itself and only shows on other images.
    """
    input_hw = input_shape(inputs.deploy_net)[1:]
    images = split_images(inputs.instances, inputs.images, count)
    return [preprocess_as(image.path, transform, input_hw)[None] for image in images]


def run_int8(inputs: Int8Inputs, out_dir: Path, settings: Int8Settings, threads: int, log=print) -> dict[str, Any]:
    """Quantize, evaluate and write ``out_dir``/{models/, int8.json, int8.md}; the result (with its verdict)."""
    paths = ExportPaths(inputs.export_dir)
    calibration = inputs.calibration or inputs.export_dir / "calibration"
    arrays = read_calibration(calibration)
    transform = transform_settings(inputs.test_net)
    variants = [Variant.parse(text) for text in settings.int8_variants]
    log(f"calibration: {len(arrays)} images from {calibration}")
    with atomic_path(out_dir / "models", directory=True) as models_dir:
        own = [variant for variant in variants if variant.runtime in HEAD_RUNTIMES]
        models = quantize_all(paths, own, arrays, transform, models_dir, settings.int8_activations, log)
        models |= toolchain_models(paths, variants, models_dir, settings, threads, log)
        images = split_images(inputs.instances, inputs.images, settings.verify_images)
        rows = evaluate_models(models, inputs, images, paths, transform, settings, threads)
        probes = probe_arrays(inputs, transform, LAYER_ERROR_IMAGES)
        layers = {
            variant.name: layer_errors(paths.onnx, models[variant.name]["path"], probes, threads)[:10]
            for variant in variants
            if variant.runtime == "onnxruntime" and "path" in models[variant.name]
        }
    result = {
        "rows": rows,
        "layers": layers,
        "max_ap_drop": settings.int8_max_ap_drop,
        "calibration": {"folder": str(calibration), "images": len(arrays)},
        "onnxruntime_activations": settings.int8_activations,
        "layer_error_images": len(probes),
        "images": len(images),
        "threads": threads,
        "latency": f"batch 1, median of {settings.latency_runs} runs after 5 warm-up runs, decode included",
        "machine": machine(),
        "versions": versions(),
    }
    result["verdict"] = verdict_of(rows, layers, settings.int8_max_ap_drop)
    atomic_write_text(out_dir / "int8.json", json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(out_dir / "int8.md", format_int8_table(result))
    log((out_dir / "int8.md").read_text())
    return result
