"""Caffe patch 0042: BVLC Caffe's ``Clip`` layer (``clip_param { min max }``, LayerParameter field 148).

Clip(min 0, max 6) must be ReLU6 bit for bit, forward and backward (in place too), on inputs at and around 0
and 6; prototxts with ``clip_param`` parse; the caffemodel bytes of ``clip_param`` are BVLC's, so that a
parser built on BVLC's caffe.proto reads them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.pycaffe import require_caffe

caffe = require_caffe()

from caffe.proto import caffe_pb2  # noqa: E402
from google.protobuf import text_format  # noqa: E402

SHAPE = (2, 3, 8, 9)


def _inputs() -> np.ndarray:
    """Random values over [-3, 9] plus 0, -0, 6 and their float32 neighbours."""
    rng = np.random.default_rng(42)
    x = rng.uniform(-3.0, 9.0, SHAPE).astype(np.float32).ravel()
    special = [0.0, -0.0, 6.0, 1e-7, -1e-7, 5.9999995, 6.0000005, -1e30, 1e30]
    special += [np.nextafter(np.float32(v), np.float32(d)) for v in (0, 6) for d in (-1, 7)]
    x[: len(special)] = np.float32(special)
    return x.reshape(SHAPE)


def _net(tmp_path: Path, layer: str, in_place: bool) -> caffe.Net:
    """A one-layer net ``data -> act`` (in place or into ``y``), backward forced."""
    top = "data" if in_place else "y"
    dims = " ".join(f"dim: {d}" for d in SHAPE)
    text = f"""force_backward: true
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}
layer {{ name: "act" {layer} bottom: "data" top: "{top}" }}
"""
    kind = layer.split()[1].strip('"')
    path = tmp_path / f"{kind}-{in_place}.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), caffe.TRAIN)


def _forward_backward(net: caffe.Net, x: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top = net.outputs[0]
    net.blobs["data"].data[...] = x
    net.forward()
    y = net.blobs[top].data.copy()
    net.blobs[top].diff[...] = dy
    net.backward()
    return y, net.blobs["data"].diff.copy()


def test_clip_is_in_this_caffe():
    assert "Clip" in caffe.layer_type_list()


@pytest.mark.parametrize("in_place", [False, True])
def test_clip_0_6_is_relu6_forward_and_backward(tmp_path, in_place):
    x = _inputs()
    dy = np.random.default_rng(43).normal(0, 1, SHAPE).astype(np.float32)
    clip = _net(tmp_path, 'type: "Clip" clip_param { min: 0 max: 6 }', in_place)
    relu6 = _net(tmp_path, 'type: "ReLU6"', in_place)
    y_clip, dx_clip = _forward_backward(clip, x, dy)
    y_relu6, dx_relu6 = _forward_backward(relu6, x, dy)
    np.testing.assert_array_equal(y_clip, np.clip(x, 0, 6))
    np.testing.assert_array_equal(y_clip, y_relu6)
    np.testing.assert_array_equal(dx_clip, dx_relu6)
    inside = (x > 0) & (x < 6)  # the gradient passes strictly inside (min, max), as ReLU6's does
    np.testing.assert_array_equal(dx_clip, np.where(inside, dy, 0))
    assert inside.any() and (~inside).any()


def test_clip_takes_any_range(tmp_path):
    x = _inputs()
    dy = np.ones(SHAPE, np.float32)
    y, dx = _forward_backward(_net(tmp_path, 'type: "Clip" clip_param { min: -1.5 max: 2.25 }', False), x, dy)
    np.testing.assert_array_equal(y, np.clip(x, -1.5, 2.25))
    np.testing.assert_array_equal(dx, ((x > -1.5) & (x < 2.25)).astype(np.float32))


def test_clip_param_parses_and_is_bvlc_field_148():
    net = text_format.Parse(
        'layer { name: "c" type: "Clip" bottom: "x" top: "x" clip_param { min: 0 max: 6 } }', caffe_pb2.NetParameter()
    )
    assert net.layer[0].clip_param.min == 0 and net.layer[0].clip_param.max == 6
    assert caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["clip_param"].number == 148
    assert [f.number for f in caffe_pb2.ClipParameter.DESCRIPTOR.fields] == [1, 2]
    layer = caffe_pb2.LayerParameter()
    layer.clip_param.min, layer.clip_param.max = 0, 6
    # tag (148 << 3 | 2) = varint a2 09, length 10, then min (field 1, fixed32) and max (field 2, fixed32)
    assert layer.SerializeToString() == bytes.fromhex("a2090a") + b"\x0d" + np.float32(0).tobytes() + (
        b"\x15" + np.float32(6).tobytes()
    )
    missing_max = text_format.Parse("layer { clip_param { min: 0 } }", caffe_pb2.NetParameter())
    assert not missing_max.IsInitialized()  # both bounds are required, as in BVLC's caffe.proto


def test_clip_refuses_min_not_below_max(tmp_path):
    prototxt = tmp_path / "bad.prototxt"
    prototxt.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
        'layer { name: "act" type: "Clip" bottom: "data" top: "y" clip_param { min: 6 max: 0 } }\n'
    )
    code = f"import caffe; caffe.Net({str(prototxt)!r}, caffe.TEST)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Clip layer act: min must be below max" in result.stderr, result.stderr[-2000:]
