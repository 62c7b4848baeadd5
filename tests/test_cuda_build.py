"""The CUDA build of the project's Caffe compiles and links (no GPU needed, but nvcc and 10-20 minutes).

While no GPU runs the tests, this compile is the only guard of the GPU code (the data-layer and solver
patches change it), so CI runs it wherever ``nvcc`` exists: ``.ci/run`` sets ``SSDLITE_TEST_CUDA_BUILD=1``
and fetches cuBLAS and cuRAND from PyPI. Measured on 2 cores: 19 minutes cold, 9.3 minutes in CI with a
warm ccache (it caches the C++ objects; the ``.cu`` files, compiled by nvcc through CMake's FindCUDA, are
compiled again each time). Locally the test runs only with ``SSDLITE_TEST_CUDA_BUILD=1`` and ``nvcc`` on
PATH; cuBLAS and cuRAND must be findable by CMake: with the toolkit, or (e.g. from the
``nvidia-cublas``/``nvidia-curand`` wheels) through ``CMAKE_LIBRARY_PATH`` and ``CMAKE_INCLUDE_PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ssdlite_coco.caffe_tools import build as caffe_build


def needs_cuda_build(test):
    """Marks for the tests that use a CUDA build (opt-in; see the module docstring)."""
    for mark in (
        pytest.mark.slow,
        pytest.mark.cuda_build,
        pytest.mark.skipif(
            os.environ.get("SSDLITE_TEST_CUDA_BUILD") != "1",
            reason="a CUDA build of Caffe takes 10-20 minutes: set SSDLITE_TEST_CUDA_BUILD=1 to run it",
        ),
        pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (the CUDA toolkit) is not on PATH"),
    ):
        test = mark(test)
    return test


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cuda_prefix(tmp_path_factory) -> Path:
    """A CUDA Caffe built by the project's build step into a fresh cache (ccache keeps it quick)."""
    cache = tmp_path_factory.mktemp("cuda-cache")
    pin = caffe_build.read_pin()
    sdist = caffe_build.cache_root() / "sdists" / pin.filename
    if not sdist.is_file():
        pytest.skip(f"{sdist} is missing: build the CPU Caffe once (scripts/with-caffe true) so that it is cached")
    (cache / "sdists").mkdir()
    shutil.copy(sdist, cache / "sdists" / pin.filename)
    env = dict(os.environ, SSDLITE_CAFFE_CACHE=str(cache))
    result = subprocess.run(
        [sys.executable, "-m", "ssdlite_coco.caffe_tools.build", "--device", "cuda", "--print-prefix", "--jobs", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3 * 3600,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    prefix = Path(result.stdout.strip().splitlines()[-1])
    assert prefix.name.startswith("cuda-")
    return prefix


@needs_cuda_build
def test_libcaffe_links_the_cuda_runtime_and_libraries(cuda_prefix):
    dynamic = subprocess.run(
        ["readelf", "-d", str(cuda_prefix / "lib" / "libcaffe.so")], capture_output=True, text=True, check=True
    ).stdout
    needed = [line.split("[", 1)[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
    for library in ("libcudart.so", "libcublas.so", "libcurand.so"):
        assert any(name.startswith(library) for name in needed), f"{library} not in NEEDED: {needed}"


@needs_cuda_build
def test_relu6_has_real_gpu_code_and_the_cpu_only_layers_fall_back(cuda_prefix):
    symbols = subprocess.run(
        ["nm", "-DC", "--defined-only", str(cuda_prefix / "lib" / "libcaffe.so")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for layer in ("ReLU6Layer", "HardSwishLayer", "UpsampleLayer", "ProposalLayer"):
        for dtype in ("float", "double"):
            assert f"caffe::{layer}<{dtype}>::Forward_gpu" in symbols, (layer, dtype)
            assert f"caffe::{layer}<{dtype}>::Backward_gpu" in symbols, (layer, dtype)
    # ReLU6 and depthwise convolution run their own kernels (their host stubs are local symbols)
    local = subprocess.run(
        ["nm", "-C", str(cuda_prefix / "lib" / "libcaffe.so")], capture_output=True, text=True, check=True
    ).stdout
    for kernel in (
        "ReLU6Forward",
        "ReLU6Backward",
        "DepthwiseConvForward",
        "DepthwiseConvBackwardData",
        "DepthwiseConvBackwardWeight",
    ):
        assert f"__device_stub__ZN5caffe{len(kernel)}{kernel}IfE" in local, kernel


@needs_cuda_build
def test_manifest_records_the_cuda_build(cuda_prefix):
    manifest = json.loads((cuda_prefix / "manifest.json").read_text())
    assert manifest["device"] == "cuda"
    assert "-DCPU_ONLY=OFF" in manifest["cmake_flags"]
    if manifest["layer_types"] is None:
        assert manifest["layer_types_unavailable"]
    else:
        assert {"ReLU6", "Convolution", "MultiBoxLoss", "PriorBox"} <= set(manifest["layer_types"])


@needs_cuda_build
def test_gpu_mode_without_a_gpu_fails_with_one_clear_line(cuda_prefix):
    from ssdlite_coco.caffe_tools.device import cuda_device_count

    if cuda_device_count()[0] > 0:
        pytest.skip("this machine has a GPU")
    if json.loads((cuda_prefix / "manifest.json").read_text())["layer_types"] is None:
        pytest.skip("the CUDA pycaffe does not import on this machine")
    env = dict(
        os.environ,
        PYTHONPATH=f"{cuda_prefix / 'python'}{os.pathsep}{REPO}",
        SSDLITE_CAFFE_PREFIX=str(cuda_prefix),
        GLOG_minloglevel="2",
    )
    code = (
        "from ssdlite_coco.caffe_tools.device import DeviceError, select_device\n"
        "try:\n    select_device('cuda')\nexcept DeviceError as error:\n    print('error:', error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("error: train.device is cuda but ")
    assert "set train.device: cpu" in result.stdout


def test_a_cuda_build_that_cannot_import_here_records_why_and_a_cpu_build_fails(tmp_path):
    record = caffe_build.layer_types_record(tmp_path, "cuda")
    assert record["layer_types"] is None
    assert "pycaffe did not import here" in record["layer_types_unavailable"]
    with pytest.raises(caffe_build.CaffeBuildError, match="does not import"):
        caffe_build.layer_types_record(tmp_path, "cpu")
