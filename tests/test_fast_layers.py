"""The project's fast CPU layers (patches 0020+) against numpy references of the stock algorithms.

Each test builds a one-layer Caffe net on random inputs, runs forward and backward through pycaffe and
compares outputs, running statistics and gradients with float64 numpy implementations of what the stock
Caffe layer computes. The references themselves are checked against finite differences, so that a test
cannot pass by sharing a mistake with the layer. Blob sizes cover both the single-threaded small case and
the multithreaded OpenMP path (above each layer's threshold: 64Ki elements, 2^18 multiply-adds), and one
test runs the whole module again with three OpenMP threads, whatever the machine's core count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.pycaffe import require_caffe

caffe = require_caffe()

RTOL = 2e-4


def _close(actual, expected, rtol: float = RTOL) -> None:
    """Equal up to float32 rounding, relative to the array's scale."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=0, atol=rtol * scale)


def _net(tmp_path: Path, inputs: dict[str, tuple[int, ...]], layers: str, phase=None) -> caffe.Net:
    text = "force_backward: true\n"
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        text += f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'
    text += layers
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), caffe.TRAIN if phase is None else phase)


def _run(net: caffe.Net, inputs: dict[str, np.ndarray], top: str, top_diff: np.ndarray) -> np.ndarray:
    """Forward with ``inputs``, then backward from ``top_diff``; returns a copy of the top data."""
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.clear_param_diffs()
    net.forward()
    out = net.blobs[top].data.copy()
    net.blobs[top].diff[...] = top_diff
    net._backward(len(net.layers) - 1, 0)
    return out


def _numeric_grad(f, x: np.ndarray, dy: np.ndarray, eps: float = 1e-6, samples: int = 12) -> tuple:
    """Central differences of sum(f(x) * dy) at a few random coordinates of x."""
    rng = np.random.default_rng(7)
    idx = [tuple(rng.integers(0, s) for s in x.shape) for _ in range(samples)]
    grads = []
    for i in idx:
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        grads.append(((f(xp) * dy).sum() - (f(xm) * dy).sum()) / (2 * eps))
    return idx, np.array(grads)


# ---------------------------------------------------------------- BatchNorm (+ Scale)


def bn_forward_ref(x: np.ndarray, eps: float) -> np.ndarray:
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def bn_backward_ref(x: np.ndarray, dy: np.ndarray, eps: float) -> np.ndarray:
    """Stock Caffe's formula: (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps)."""
    axes = (0,) + tuple(range(2, x.ndim))
    y = bn_forward_ref(x, eps)
    var = ((x - x.mean(axis=axes, keepdims=True)) ** 2).mean(axis=axes, keepdims=True)
    return (dy - dy.mean(axis=axes, keepdims=True) - (dy * y).mean(axis=axes, keepdims=True) * y) / np.sqrt(var + eps)


def test_batchnorm_reference_matches_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, (2, 3, 4, 5))
    dy = rng.normal(size=x.shape)
    idx, numeric = _numeric_grad(lambda v: bn_forward_ref(v, 1e-3), x, dy)
    analytic = bn_backward_ref(x, dy, 1e-3)
    np.testing.assert_allclose([analytic[i] for i in idx], numeric, rtol=1e-5, atol=1e-7)


BN_SHAPES = [(2, 3, 5, 7), (4, 16, 40, 40), (6, 5), (1, 8, 3, 3)]


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("in_place", [True, False])
def test_batchnorm_training_forward_backward_and_running_statistics(tmp_path, shape, in_place):
    eps = 1e-3
    top = "x" if in_place else "y"
    net = _net(
        tmp_path,
        {"x": shape},
        f'layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "{top}" '
        f"batch_norm_param {{ eps: {eps} use_global_stats: false moving_average_fraction: 0.9 }} }}\n",
    )
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 3.0, shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    y = _run(net, {"x": x}, top, dy)
    x64 = x.astype(np.float64)
    _close(y, bn_forward_ref(x64, eps))
    _close(net.blobs["x"].diff, bn_backward_ref(x64, dy.astype(np.float64), eps))

    axes = (0,) + tuple(range(2, len(shape)))
    m = x.size // shape[1]
    mean, var = x64.mean(axis=axes), x64.var(axis=axes)
    stats = net.params["bn"]
    _close(stats[0].data, mean)
    _close(stats[1].data, var * m / (m - 1) if m > 1 else var)
    assert stats[2].data[0] == 1.0
    # A second pass folds into the moving averages with the fraction 0.9.
    _run(net, {"x": x}, top, dy)
    _close(stats[0].data, mean * 1.9)
    assert stats[2].data[0] == pytest.approx(1.9)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 12, 30, 30)])
def test_batchnorm_global_statistics_forward_backward(tmp_path, shape):
    eps = 1e-5
    net = _net(
        tmp_path,
        {"x": shape},
        f'layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "x" batch_norm_param {{ eps: {eps} }} }}\n',
        phase=caffe.TEST,
    )
    rng = np.random.default_rng(2)
    channels = shape[1]
    mean = rng.normal(size=channels)
    var = rng.uniform(0.2, 3.0, channels)
    factor = 4.0
    net.params["bn"][0].data[...] = mean * factor
    net.params["bn"][1].data[...] = var * factor
    net.params["bn"][2].data[...] = factor
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    y = _run(net, {"x": x}, "x", dy)
    bshape = (1, channels, 1, 1)
    _close(y, (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + eps))
    _close(net.blobs["x"].diff, dy / np.sqrt(var.reshape(bshape) + eps))


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 16, 40, 40), (1, 24, 19, 19)])
@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_scale_forward_backward(tmp_path, shape, in_place, bias):
    top = "x" if in_place else "y"
    net = _net(
        tmp_path,
        {"x": shape},
        f'layer {{ name: "s" type: "Scale" bottom: "x" top: "{top}" '
        f"scale_param {{ bias_term: {'true' if bias else 'false'} }} }}\n",
    )
    rng = np.random.default_rng(3)
    channels = shape[1]
    scale = rng.normal(size=channels)
    beta = rng.normal(size=channels)
    net.params["s"][0].data[...] = scale
    if bias:
        net.params["s"][1].data[...] = beta
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    y = _run(net, {"x": x}, top, dy)
    bshape = (1, channels, 1, 1)
    expected = x * scale.reshape(bshape) + (beta.reshape(bshape) if bias else 0)
    _close(y, expected)
    _close(net.blobs["x"].diff, dy * scale.reshape(bshape))
    _close(net.params["s"][0].diff, (dy.astype(np.float64) * x).sum(axis=(0, 2, 3)))
    if bias:
        _close(net.params["s"][1].diff, dy.astype(np.float64).sum(axis=(0, 2, 3)))
    # Parameter gradients accumulate over backward passes, as the solver's iter_size relies on.
    first = net.params["s"][0].diff.copy()
    net.blobs["x"].data[...] = x
    net.forward()
    net.blobs[top].diff[...] = dy
    net._backward(len(net.layers) - 1, 0)
    _close(net.params["s"][0].diff, 2 * first)


def test_batchnorm_scale_chain_in_place(tmp_path):
    """The MobileNet block tail: BatchNorm, Scale and ReLU6 in place on one blob."""
    shape = (2, 32, 19, 19)
    net = _net(
        tmp_path,
        {"x": shape},
        'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" batch_norm_param { eps: 0.001 } }\n'
        'layer { name: "s" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }\n'
        'layer { name: "r" type: "ReLU6" bottom: "x" top: "x" }\n',
    )
    rng = np.random.default_rng(4)
    gamma, beta = rng.uniform(0.5, 2.0, shape[1]), rng.normal(size=shape[1])
    net.params["s"][0].data[...] = gamma
    net.params["s"][1].data[...] = beta
    x = rng.normal(1.0, 2.0, shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    y = _run(net, {"x": x}, "x", dy)
    x64, b = x.astype(np.float64), (1, shape[1], 1, 1)
    xn = bn_forward_ref(x64, 1e-3)
    z = xn * gamma.reshape(b) + beta.reshape(b)
    _close(y, np.clip(z, 0, 6))
    dz = dy * ((z > 0) & (z < 6))
    _close(net.params["s"][0].diff, (dz * xn).sum(axis=(0, 2, 3)), rtol=1e-3)
    _close(net.params["s"][1].diff, dz.sum(axis=(0, 2, 3)), rtol=1e-3)
    _close(net.blobs["x"].diff, bn_backward_ref(x64, dz * gamma.reshape(b), 1e-3), rtol=1e-3)


# ---------------------------------------------------------------- ReLU6


@pytest.mark.parametrize("count", [100, 200_000])
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu6_forward_backward(tmp_path, count, slope):
    shape = (1, 1, 1, count)
    net = _net(
        tmp_path,
        {"x": shape},
        f'layer {{ name: "r" type: "ReLU6" bottom: "x" top: "y" relu6_param {{ negative_slope: {slope} }} }}\n',
    )
    rng = np.random.default_rng(5)
    x = rng.uniform(-8, 8, shape).astype(np.float32)
    x.flat[:4] = [0.0, 6.0, -0.0, 5.999]
    dy = rng.normal(size=shape).astype(np.float32)
    y = _run(net, {"x": x}, "y", dy)
    np.testing.assert_array_equal(y, np.minimum(np.maximum(x, 0) + np.float32(slope) * np.minimum(x, 0), 6))
    expected = dy * ((x > 0) + np.float32(slope) * (x <= 0)).astype(np.float32) * (x < 6)
    np.testing.assert_array_equal(net.blobs["x"].diff, expected)


# ---------------------------------------------------------------- depthwise convolution


def conv_ref(x: np.ndarray, w: np.ndarray, b, stride: int, pad: int, group: int) -> np.ndarray:
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, o, oh, ow))
    og = o // group
    for oc in range(o):
        g = oc // og
        for ic in range(cg):
            for i in range(k):
                for j in range(k):
                    patch = xp[:, g * cg + ic, i : i + stride * oh : stride, j : j + stride * ow : stride]
                    out[:, oc] += w[oc, ic, i, j] * patch
    if b is not None:
        out += b.reshape(1, o, 1, 1)
    return out


def conv_grads_ref(x, w, dy, stride, pad, group):
    """Gradients of sum(conv(x) * dy) with respect to x, w and the bias (conv is linear in each)."""
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    og = o // group
    oh, ow = dy.shape[2:]
    dxp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dw = np.zeros_like(w)
    for oc in range(o):
        g = oc // og
        for ic in range(cg):
            for i in range(k):
                for j in range(k):
                    sl = (
                        slice(None),
                        g * cg + ic,
                        slice(i, i + stride * oh, stride),
                        slice(j, j + stride * ow, stride),
                    )
                    dxp[sl] += w[oc, ic, i, j] * dy[:, oc]
                    dw[oc, ic, i, j] = (xp[sl] * dy[:, oc]).sum()
    return dxp[:, :, pad : pad + h, pad : pad + wd], dw, dy.sum(axis=(0, 2, 3))


def test_conv_reference_matches_finite_differences():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 6, 5))
    w = rng.normal(size=(3, 1, 3, 3))
    dy = rng.normal(size=conv_ref(x, w, None, 2, 1, 3).shape)
    idx, numeric = _numeric_grad(lambda v: conv_ref(v, w, None, 2, 1, 3), x, dy)
    dx, dw, _ = conv_grads_ref(x, w, dy, 2, 1, 3)
    np.testing.assert_allclose([dx[i] for i in idx], numeric, rtol=1e-5, atol=1e-7)
    idx, numeric = _numeric_grad(lambda v: conv_ref(x, v, None, 2, 1, 3), w, dy)
    np.testing.assert_allclose([dw[i] for i in idx], numeric, rtol=1e-5, atol=1e-7)


DEPTHWISE_CASES = [
    # (n, c, h, w, stride, pad, bias)
    (2, 4, 7, 9, 1, 1, False),
    (2, 4, 8, 8, 2, 1, True),
    (1, 3, 9, 6, 2, 0, False),
    (2, 3, 5, 5, 1, 2, True),
    (1, 2, 3, 4, 1, 1, False),
    (2, 2, 2, 2, 2, 1, True),
    (3, 32, 38, 38, 1, 1, False),
    (2, 24, 75, 75, 2, 1, False),
]


@pytest.mark.parametrize("case", DEPTHWISE_CASES)
@pytest.mark.parametrize("engine", ["", "engine: CAFFE"])
def test_depthwise_3x3_forward_backward(tmp_path, case, engine):
    n, c, h, wd, stride, pad, bias = case
    net = _net(
        tmp_path,
        {"x": (n, c, h, wd)},
        f'layer {{ name: "dw" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
        f"num_output: {c} group: {c} kernel_size: 3 stride: {stride} pad: {pad} "
        f"bias_term: {'true' if bias else 'false'} {engine} }} }}\n",
    )
    rng = np.random.default_rng(n * 1000 + c * 10 + h)
    w = rng.normal(size=(c, 1, 3, 3))
    b = rng.normal(size=c) if bias else None
    net.params["dw"][0].data[...] = w
    if bias:
        net.params["dw"][1].data[...] = b
    x = rng.normal(size=(n, c, h, wd)).astype(np.float32)
    expected = conv_ref(x.astype(np.float64), w.astype(np.float32), b, stride, pad, c)
    dy = rng.normal(size=expected.shape).astype(np.float32)
    y = _run(net, {"x": x}, "y", dy)
    assert y.shape == expected.shape
    _close(y, expected)
    dx, dw, db = conv_grads_ref(x.astype(np.float64), w.astype(np.float32), dy.astype(np.float64), stride, pad, c)
    _close(net.blobs["x"].diff, dx)
    _close(net.params["dw"][0].diff, dw)
    if bias:
        _close(net.params["dw"][1].diff, db)


@pytest.mark.parametrize(
    "n, c, o, h, w, bias",
    [
        (1, 8, 12, 5, 7, True),  # small: one thread
        (1, 5, 3, 1, 1, False),
        (3, 64, 48, 20, 20, False),  # split by sample
        (8, 32, 24, 9, 9, True),
        (1, 32, 24, 40, 40, True),  # one sample, wide: split by columns
        (1, 96, 80, 8, 8, False),  # one sample, narrow: split by output / input channels
    ],
)
def test_1x1_convolution_forward_backward(tmp_path, n, c, o, h, w, bias):
    """1x1 convolutions split over the OpenMP threads by sample, column or channel block (big enough ones)."""
    net = _net(
        tmp_path,
        {"x": (n, c, h, w)},
        f'layer {{ name: "pw" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
        f"num_output: {o} kernel_size: 1 bias_term: {'true' if bias else 'false'} }} }}\n",
    )
    rng = np.random.default_rng(n + c + o)
    weights = rng.normal(size=(o, c, 1, 1)).astype(np.float32)
    b = rng.normal(size=o).astype(np.float32) if bias else None
    net.params["pw"][0].data[...] = weights
    if bias:
        net.params["pw"][1].data[...] = b
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    expected = conv_ref(x.astype(np.float64), weights, b, 1, 0, 1)
    dy = rng.normal(size=expected.shape).astype(np.float32)
    _close(_run(net, {"x": x}, "y", dy), expected)
    dx, dw, db = conv_grads_ref(x.astype(np.float64), weights, dy.astype(np.float64), 1, 0, 1)
    _close(net.blobs["x"].diff, dx)
    _close(net.params["pw"][0].diff, dw)
    if bias:
        _close(net.params["pw"][1].diff, db)


def test_grouped_convolution_that_is_not_depthwise_keeps_the_stock_path(tmp_path):
    n, c, h, wd = 2, 4, 6, 6
    net = _net(
        tmp_path,
        {"x": (n, c, h, wd)},
        'layer { name: "g" type: "Convolution" bottom: "x" top: "y" convolution_param { '
        "num_output: 8 group: 2 kernel_size: 3 pad: 1 bias_term: false } }\n",
    )
    rng = np.random.default_rng(8)
    w = rng.normal(size=(8, 2, 3, 3)).astype(np.float32)
    net.params["g"][0].data[...] = w
    x = rng.normal(size=(n, c, h, wd)).astype(np.float32)
    expected = conv_ref(x.astype(np.float64), w, None, 1, 1, 2)
    dy = rng.normal(size=expected.shape).astype(np.float32)
    _close(_run(net, {"x": x}, "y", dy), expected)
    dx, dw, _ = conv_grads_ref(x.astype(np.float64), w, dy.astype(np.float64), 1, 1, 2)
    _close(net.blobs["x"].diff, dx)
    _close(net.params["g"][0].diff, dw)


# ---------------------------------------------------------------- Permute


@pytest.mark.parametrize("order", [(0, 2, 3, 1), (0, 3, 1, 2), (1, 0, 2, 3)])
@pytest.mark.parametrize("shape", [(2, 24, 19, 19), (1, 486, 3, 3), (3, 5, 1, 17)])
def test_permute_forward_backward(tmp_path, order, shape):
    """SSD's NCHW -> NHWC permute has its own transpose; other orders keep the generic loop."""
    net = _net(
        tmp_path,
        {"x": shape},
        'layer { name: "p" type: "Permute" bottom: "x" top: "y" '
        f"permute_param {{ {' '.join(f'order: {o}' for o in order)} }} }}\n",
    )
    rng = np.random.default_rng(9)
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=np.transpose(x, order).shape).astype(np.float32)
    np.testing.assert_array_equal(_run(net, {"x": x}, "y", dy), np.transpose(x, order))
    np.testing.assert_array_equal(net.blobs["x"].diff, np.transpose(dy, np.argsort(order)))


def test_libcaffe_links_openmp_itself():
    """The fast layers are compiled with OpenMP: libcaffe.so names libgomp (or libomp) as a direct need."""
    lib = Path(caffe.__file__).resolve().parents[2] / "lib" / "libcaffe.so"
    if not lib.exists():
        pytest.skip(f"{lib} not found: pycaffe is not from a prefix built by ssdlite_coco.caffe_tools.build")
    dynamic = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    needed = [line for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert any("libgomp" in line or "libomp" in line for line in needed), "\n".join(needed)


@pytest.mark.parametrize("given", [{}, {"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "5"}])
def test_pycaffe_shortens_openmp_spinning_unless_told_otherwise(given):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(given)
    code = "import os, caffe; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    expected = given or {"GOMP_SPINCOUNT": "1000"}
    assert out.stdout.split() == [str(expected.get("OMP_WAIT_POLICY")), str(expected.get("GOMP_SPINCOUNT"))]


def test_layers_agree_with_three_openmp_threads():
    """The module again in a child process with OMP_NUM_THREADS=3: uneven splits over threads."""
    env = dict(os.environ, OMP_NUM_THREADS="3")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            __file__,
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "not three_openmp_threads and not pycaffe_shortens",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
