"""RKNN (Rockchip NPUs: RK3588, RK3568, ...): ``onnx/heads.onnx`` through rknn-toolkit2, run in its x86 simulator.

    rknn = RKNN()
    rknn.config(mean_values=[[0, 0, 0]], std_values=[[1, 1, 1]], target_platform="rk3588")
    rknn.load_onnx(model="onnx/heads.onnx", outputs=["loc", "scores"])
    rknn.build(do_quantization=False)                  # float16: RKNN has no float32 mode
    rknn.export_rknn("heads.rknn")

INT8 (``precision`` int8, the INT8 table of rule ``export_int8``): ``config(quantized_method="channel" or "layer",
quantized_algorithm="normal", "mmse" or "kl_divergence")`` and ``build(do_quantization=True,
dataset="dataset.txt")``, the file listing the export's ``calibration/*.npy`` (``[1, 3, H, W]``, as RKNN wants).

The head-only net, never ``caffe/deploy.prototxt``: on the full deploy net ``load_caffe`` prints an
``E ... not support`` line for DetectionOutput, returns success and cuts the net, whose outputs are then raw
loc/scores, not detection rows. The normalisation is left in the preprocessing (mean 0, std 1 here).

The simulator cannot run an exported ``.rknn`` (``load_rknn`` then ``init_runtime()`` refuses it on x86), so
``convert`` writes ``heads.rknn`` for the device and ``recipe.json``, and ``Session`` builds that recipe again
for the simulator, with the output names and order read from the ``.rknn`` file itself. The target chip is the
``target`` option (``export.rknn_target``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from importlib.metadata import version as distribution_version
from pathlib import Path

import numpy as np

INPUT_SHAPE = (1, 3, 300, 300)
OUTPUTS = ("loc", "scores")
PRECISIONS = ("default", "int8")
FLOAT16 = "float16 (RKNN's float mode; it has no float32)"
GRANULARITIES = {"per-channel": "channel", "per-tensor": "layer"}
RECIPE_FILE = "recipe.json"  # what the simulator builds again (it cannot run the .rknn itself)


def version() -> str:
    return f"rknn-toolkit2 {distribution_version('rknn-toolkit2')} (x86 simulator)"


@contextlib.contextmanager
def toolkit_output_to(log: Path):
    """What the toolkit prints, its native library's lines too, into ``log``."""
    sys.stdout.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("ab") as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for descriptor, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, descriptor)
                os.close(copy)


def check(status, what: str, log: Path) -> None:
    """The toolkit answers 0 or -1 and prints its reason as ``E`` lines: those become the error."""
    if status != 0:
        lines = log.read_text(errors="replace").splitlines()
        reason = [line for line in lines if line.lstrip().startswith("E ")] or lines[-5:]
        raise RuntimeError(f"rknn {what} returned {status}: {' | '.join(reason[-5:])} (log: {log})")


def recipe(onnx_path: Path, work_dir: Path, precision: str, calibration: list[Path], **options: str) -> dict:
    """What ``build`` is given: the ONNX file, ``config``'s arguments and, for INT8, the calibration list file.

    Options: ``target`` (the chip); for INT8 ``granularity`` (``per-channel`` or ``per-tensor``: RKNN's
    ``quantized_method`` channel or layer) and ``method`` (``quantized_algorithm``: normal, mmse or kl_divergence).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"rknn runs in {', '.join(PRECISIONS)}, not {precision!r}: it has no float32")
    config = {"mean_values": [[0, 0, 0]], "std_values": [[1, 1, 1]], "target_platform": options["target"]}
    dataset = None
    if precision == "int8":
        config |= {
            "quantized_dtype": "w8a8",
            "quantized_method": GRANULARITIES[options["granularity"]],
            "quantized_algorithm": options["method"],
        }
        if not calibration:
            raise ValueError("RKNN's INT8 needs calibration images; the export has none (export.calibration_images)")
        # RKNN reads .npy inputs listed one per line; [1, 3, H, W] float32 as the export writes them
        dataset = work_dir / "dataset.txt"
        dataset.write_text("".join(f"{Path(path).resolve()}\n" for path in calibration))
    return {"onnx": str(Path(onnx_path).resolve()), "config": config, "dataset": dataset and str(dataset)}


def build(recipe: dict, outputs: list[str], log: Path):
    """An RKNN object with the recipe's ONNX loaded and built (the caller releases it)."""
    from rknn.api import RKNN

    rknn = RKNN(verbose=False)
    try:
        check(rknn.config(**recipe["config"]), "config", log)
        check(rknn.load_onnx(model=recipe["onnx"], outputs=outputs), "load_onnx", log)
        check(rknn.build(do_quantization=recipe["dataset"] is not None, dataset=recipe["dataset"]), "build", log)
    except BaseException:
        rknn.release()
        raise
    return rknn


def output_names(model: Path) -> list[str]:
    """The output tensor names in output order, from the graph JSON that a ``.rknn`` file embeds."""
    data = model.read_bytes()
    start = data.find(b'{"connection":')
    if start < 0:
        raise RuntimeError(f"{model}: no embedded graph found")
    graph, _ = json.JSONDecoder().raw_decode(data[start:].decode("utf-8", errors="replace"))
    names = {tensor["tensor_id"]: tensor["url"] for tensor in graph["norm_tensor"]}
    ends = sorted(
        (link["left_tensor_id"], link["right_tensor"]["tensor_id"])
        for link in graph["connection"]
        if link["left"] == "output"
    )
    return [names[tensor_id] for _, tensor_id in ends]


def convert(export_dir: Path, work_dir: Path, precision: str, calibration: list[Path], **options: str) -> Path:
    log, model = Path(work_dir) / "rknn.log", Path(work_dir) / "heads.rknn"
    made = recipe(Path(export_dir) / "onnx" / "heads.onnx", Path(work_dir), precision, calibration, **options)
    with toolkit_output_to(log):
        rknn = build(made, list(OUTPUTS), log)
        try:
            check(rknn.export_rknn(str(model)), "export_rknn", log)
        finally:
            rknn.release()
    if (names := output_names(model)) != list(OUTPUTS):
        raise RuntimeError(f"{model}: outputs {names}, expected {list(OUTPUTS)}")
    (Path(work_dir) / RECIPE_FILE).write_text(json.dumps(made, indent=1) + "\n")
    return model


class Session:
    fetch = "by name: output names read from heads.rknn, declared in load_onnx(outputs=...), in that order"
    full_precision = False

    def __init__(self, model: Path, precision: str, threads: int):
        made = json.loads((Path(model).parent / RECIPE_FILE).read_text())
        config = made["config"]
        self.names = output_names(Path(model))
        if precision == "int8":
            quantized = f"{config['quantized_method']}, {config['quantized_algorithm']}"
            self.precision = f"int8 w8a8 ({quantized}), {config['target_platform']} simulator"
        else:
            self.precision = f"{FLOAT16}, {config['target_platform']} simulator"
        log = Path(model).parent / "rknn-session.log"
        with toolkit_output_to(log):
            self.rknn = build(made, self.names, log)
            check(self.rknn.init_runtime(), "init_runtime", log)  # no target: the simulator
            # the first inference prepares the simulator's per-layer sessions: here, not in the timed runs
            self.rknn.inference(inputs=[np.zeros(INPUT_SHAPE, np.float32)], data_format="nchw")

    def run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.ascontiguousarray(image, dtype=np.float32).reshape(INPUT_SHAPE)
        outputs = self.rknn.inference(inputs=[batch], data_format="nchw")
        if outputs is None or len(outputs) != len(self.names):
            raise RuntimeError(f"rknn inference gave {None if outputs is None else len(outputs)} outputs")
        by_name = dict(zip(self.names, outputs, strict=True))
        loc = np.asarray(by_name["loc"], np.float32).reshape(-1, 4)
        return loc, np.asarray(by_name["scores"], np.float32).reshape(len(loc), -1)
