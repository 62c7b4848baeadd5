"""ncnn (phones, ARM boards): ``onnx/heads.onnx`` converted by pnnx, as pnnx's README does for ONNX, run in ncnn.

    pnnx heads.onnx inputshape=[1,3,300,300]            # fp16=0 for float32 weights

pnnx names the input ``in0`` and the outputs ``out0``, ``out1`` in the ONNX graph's output order; ``convert``
writes ``heads.ncnn.param`` with the ONNX names back (``data``, ``loc``, ``scores``) and the session fetches
by name. The pnnx executable of the ``pnnx`` wheel is run directly: ``import pnnx`` needs torch, and its
``pnnx.convert`` ignores the executable's exit status and drops ``fp16=False``.

Precisions: ``default`` is pnnx's fp16 weights (on x86 ncnn widens them to float32 at load and computes in
float32; on ARM it keeps fp16 storage and arithmetic); ``fp32`` writes float32 weights and turns ncnn's fp16
and bf16 options off.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

import ncnn
import numpy as np
import onnx

INPUT = "data"
OUTPUTS = ("loc", "scores")
PRECISIONS = ("default", "fp32")
PARAM_MAGIC = "7767517"
# every file pnnx writes, named on its command line (else it writes them beside its input)
PNNX_FILES = ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx", "ncnnparam", "ncnnbin", "ncnnpy")


def version() -> str:
    return f"ncnn {ncnn.__version__}, pnnx {importlib.metadata.version('pnnx')}"


def pnnx_executable() -> Path:
    spec = importlib.util.find_spec("pnnx")  # finds the package without running its __init__ (torch)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pnnx is not installed in this venv")
    executable = Path(next(iter(spec.submodule_search_locations))) / "pnnx"
    if not executable.is_file():
        raise RuntimeError(f"the pnnx executable is not at {executable}")
    return executable


def rename_blobs(param_text: str, names: dict[str, str]) -> str:
    """An ncnn text ``.param`` with its blobs renamed by ``names`` (every key must be a blob of it)."""
    lines = param_text.splitlines()
    if not lines or lines[0].strip() != PARAM_MAGIC:
        raise ValueError(f"not an ncnn text .param (its first line is not {PARAM_MAGIC})")
    layers = [line.split() for line in lines[2:] if line.strip()]
    blobs = {blob for fields in layers for blob in fields[4 : 4 + int(fields[2]) + int(fields[3])]}
    if missing := sorted(set(names) - blobs):
        raise ValueError(f"pnnx wrote no blob {missing}")
    if clashes := sorted((set(names.values()) - set(names)) & blobs):
        raise ValueError(f"cannot rename to {clashes}: blobs of those names exist already")
    for fields in layers:
        for index in range(4, 4 + int(fields[2]) + int(fields[3])):
            fields[index] = names.get(fields[index], fields[index])
    return "\n".join(lines[:2] + [" ".join(fields) for fields in layers]) + "\n"


def convert(export_dir: Path, work_dir: Path, precision: str, calibration: list[Path]) -> Path:
    """``heads.ncnn.param`` (blobs named as in ONNX) and ``heads.ncnn.bin`` in ``work_dir``; pnnx's log beside."""
    if precision not in PRECISIONS:
        raise ValueError(f"ncnn runs in {', '.join(PRECISIONS)} here, not {precision!r} (its int8 tools are C++)")
    work_dir = Path(work_dir).resolve()
    source = onnx.load(str(Path(export_dir).resolve() / "onnx" / "heads.onnx"))
    names = {"in0": INPUT} | {f"out{index}": output.name for index, output in enumerate(source.graph.output)}
    param, weights = work_dir / "heads.ncnn.param", work_dir / "heads.ncnn.bin"
    with tempfile.TemporaryDirectory(dir=work_dir) as scratch:  # pnnx's other files (and its copy) stay out
        model = Path(scratch) / "heads.onnx"
        onnx.save(source, str(model))
        written = {key: Path(scratch) / f"heads.{key}" for key in PNNX_FILES}
        command = [str(pnnx_executable()), str(model), "inputshape=[1,3,300,300]"]
        command += [f"{key}={path}" for key, path in written.items()] + (["fp16=0"] if precision == "fp32" else [])
        result = subprocess.run(command, cwd=scratch, capture_output=True, text=True)
        (work_dir / "pnnx.log").write_text(" ".join(command) + "\n" + result.stdout + result.stderr)
        if result.returncode != 0 or not written["ncnnparam"].is_file() or not written["ncnnbin"].is_file():
            tail = " ".join((result.stdout + result.stderr).split()[-60:])
            raise RuntimeError(f"pnnx failed (exit {result.returncode}): {tail}")
        param.write_text(rename_blobs(written["ncnnparam"].read_text(), names))
        shutil.move(written["ncnnbin"], weights)
    return param


class Session:
    fetch = "by name: extract('loc'), extract('scores') (blobs renamed from pnnx's out0/out1 by ONNX output order)"

    def __init__(self, model: Path, precision: str, threads: int):
        net = ncnn.Net()
        net.opt.num_threads = int(threads)
        net.opt.use_vulkan_compute = False
        if precision == "fp32":
            net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
            net.opt.use_bf16_storage = False
        weights = Path(model).with_suffix(".bin")
        for status, what in ((net.load_param(str(model)), model), (net.load_model(str(weights)), weights)):
            if status != 0:  # the binding returns a status, it does not raise
                raise RuntimeError(f"ncnn could not load {what} (status {status})")
        blobs = set(net.input_names()) | set(net.output_names())
        if not {INPUT, *OUTPUTS} <= blobs:
            raise RuntimeError(f"{model} has no blob {sorted({INPUT, *OUTPUTS} - blobs)}")
        self.net = net
        self.full_precision = precision == "fp32"
        if precision == "fp32":
            self.precision = "fp32 (fp32 weights; fp16/bf16 storage and arithmetic off)"
        elif ncnn.cpu_support_arm_neon():
            self.precision = "fp16 weights, fp16 storage and arithmetic (ncnn's defaults on ARM)"
        else:
            self.precision = "fp16 weights, widened to fp32 at load; fp32 compute (x86)"

    def run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        extractor = self.net.create_extractor()
        # ncnn.Mat wraps the array's buffer without checks: a C-contiguous float32 copy, cloned
        status = extractor.input(INPUT, ncnn.Mat(np.ascontiguousarray(image, dtype=np.float32)).clone())
        if status != 0:
            raise RuntimeError(f"ncnn input({INPUT!r}) failed (status {status})")
        arrays = []
        for name in OUTPUTS:
            status, blob = extractor.extract(name)
            if status != 0:
                raise RuntimeError(f"ncnn extract({name!r}) failed (status {status})")
            arrays.append(np.array(blob.numpy(), dtype=np.float32))  # [priors, C]: pnnx drops the batch axis
        return arrays[0], arrays[1]
