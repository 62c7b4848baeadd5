"""The Caffe device at run time: which build is imported, whether a GPU is there, CPU or GPU mode.

``select_device`` is asked before Caffe touches a GPU, so a CUDA request on a CPU build or on a machine
without a GPU ends with one line saying what to change, not with a glog fatal error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ssdlite_coco.common.errors import SsdliteError

DEVICES = ("cpu", "cuda")


class DeviceError(SsdliteError):
    """The requested device cannot be used; the message says what to change."""


def caffe_prefix() -> Path | None:
    explicit = os.environ.get("SSDLITE_CAFFE_PREFIX")
    if explicit:
        return Path(explicit)
    try:
        import caffe
    except ImportError:
        return None
    return Path(caffe.__file__).resolve().parents[2]


def caffe_build_device() -> str | None:
    """``cpu`` or ``cuda`` as recorded in the build manifest of the imported Caffe (None if unknown)."""
    prefix = caffe_prefix()
    manifest = prefix / "manifest.json" if prefix else None
    if manifest is None or not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("device")


def cuda_device_count() -> tuple[int, str]:
    """How many GPUs the CUDA driver (libcuda) reports, and why none where that is 0.

    Asked before Caffe touches the GPU: a CUDA Caffe on a machine without a GPU or driver would
    otherwise stop the process with a glog fatal error instead of a Python exception.
    """
    import ctypes

    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "the NVIDIA driver library libcuda.so.1 is not installed on this machine"
    status = driver.cuInit(0)
    if status != 0:
        return 0, f"the NVIDIA driver found no usable GPU (cuInit returned error {status})"
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return 0, "the NVIDIA driver reports no GPU"
    return count.value, ""


def select_device(device: str, gpu_id: int = 0) -> None:
    """Put Caffe in CPU or GPU mode; GPU mode on a CPU-only build fails with one clear line."""
    import caffe

    if device not in DEVICES:
        raise DeviceError(f"device {device!r} is not known; use one of {', '.join(DEVICES)}")
    if device == "cuda":
        built = caffe_build_device()
        if built != "cuda":
            raise DeviceError(
                f"train.device is cuda but the Caffe in use ({caffe_prefix()}) is a {built or 'unknown'} build; "
                "set caffe.device: cuda in the config (and SSDLITE_CAFFE_DEVICE=cuda for scripts/with-caffe) "
                "to build Caffe with CUDA, or set train.device: cpu"
            )
        count, why = cuda_device_count()
        if gpu_id >= count:
            raise DeviceError(
                f"train.device is cuda but {why or f'there is no GPU {gpu_id} (this machine has {count})'}; "
                "run on a machine with an NVIDIA GPU and driver, or set train.device: cpu"
            )
        caffe.set_mode_gpu()
        caffe.set_device(gpu_id)
    else:
        caffe.set_mode_cpu()


def solver_mode(device: str) -> int:
    """``SolverParameter.solver_mode`` for ``device``."""
    from caffe.proto import caffe_pb2

    if device not in DEVICES:
        raise DeviceError(f"device {device!r} is not known; use one of {', '.join(DEVICES)}")
    return caffe_pb2.SolverParameter.GPU if device == "cuda" else caffe_pb2.SolverParameter.CPU
