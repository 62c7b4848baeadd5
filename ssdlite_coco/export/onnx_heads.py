"""``heads.onnx`` from the head-only Caffe net, written node by node with the ``onnx`` helper API.

No converter: every Caffe layer the SSDLite heads use has a one- or two-node ONNX equivalent
(opset 13): Convolution -> Conv, ReLU6 -> Clip(0, 6), ReLU -> Relu, Eltwise SUM -> Add (Mul for a
coefficient), Permute -> Transpose, Flatten -> Flatten, Reshape -> Reshape (0 copies a dimension, -1
is inferred, as in Caffe), Concat -> Concat, Sigmoid -> Sigmoid, Softmax -> Softmax (one axis, as in
Caffe from opset 13), Slice -> Slice per top; Silence writes nothing. A layer of another type stops the
export with one line naming it.

Every name in the graph (tensors, initializers, nodes) uses only ``[A-Za-z0-9_./-]``, which every importer
takes: another character becomes ``_``. A Caffe blob's first tensor keeps the blob's name; an in-place layer's
output is a new tensor, ``blob.1`` then ``blob.2`` (``_1`` would take the name of blobs such as ``Conv_1``),
and no tensor takes a name another Caffe blob has. The graph's input and outputs keep their blob names
(``data``, ``loc``, ``scores``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

import numpy as np

from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.export.heads import LOC, SCORES
from ssdlite_coco.export.rewrite import kernel_geometry

OPSET = 13
INT64_MAX = np.iinfo(np.int64).max
NOT_PORTABLE = re.compile(r"[^A-Za-z0-9_./-]")


class OnnxExportError(SsdliteError):
    """A layer of the head-only net has no ONNX form here; the message names it."""


def portable_name(text: str) -> str:
    """``text`` with every character outside ``[A-Za-z0-9_./-]`` replaced by ``_``."""
    return NOT_PORTABLE.sub("_", text) or "_"


def first_free(text: str, taken: Callable[[str], bool]) -> str:
    """``portable_name(text)``, else the first of ``name.1``, ``name.2``... that is not ``taken``."""
    base = portable_name(text)
    name, count = base, 0
    while taken(name):
        count += 1
        name = f"{base}.{count}"
    return name


class GraphBuilder:
    """Nodes and initializers, with Caffe blob names mapped to the newest ONNX tensor of that blob.

    ``blobs``: every blob of the net (a portable blob name is kept for that blob's first tensor);
    ``outputs``: output blob -> how many layers write it (its last tensor gets the blob's name).
    """

    def __init__(
        self, params: dict[str, list[np.ndarray]], blobs: Iterable[str] = (), outputs: dict[str, int] | None = None
    ):
        self.params = params
        self.nodes: list = []
        self.initializers: list = []
        self.current: dict[str, str] = {}
        self.used: set[str] = set()
        self.node_names: set[str] = set()
        self.owners = {blob: blob for blob in blobs if portable_name(blob) == blob}
        self.writes_left = dict(outputs or {})

    def tensor(self, blob: str) -> str:
        return self.current[blob]

    def _unique(self, text: str, owner) -> str:
        """A portable, unused name from ``text``, not one that another Caffe blob than ``owner`` has."""
        name = first_free(text, lambda name: name in self.used or self.owners.get(name, owner) != owner)
        self.used.add(name)
        return name

    def new_name(self, blob: str) -> str:
        left = self.writes_left.get(blob, 0)
        if left:  # an output blob written again later: this tensor leaves the blob's own name to the last one
            self.writes_left[blob] = left - 1
        self.current[blob] = self._unique(blob, (blob, "earlier") if left > 1 else blob)
        return self.current[blob]

    def constant(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self._unique(name, None)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], tops: list[str], layer_name: str, **attributes) -> None:
        from onnx import helper

        outputs = [self.new_name(top) for top in tops]
        name = first_free(f"{layer_name}/{op}", self.node_names.__contains__)
        self.node_names.add(name)
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attributes))


def _convolution(builder: GraphBuilder, layer) -> None:
    param = layer.convolution_param
    geometry = kernel_geometry(param)
    (ph, pw) = geometry["pad"]
    weights = builder.params[layer.name]
    inputs = [builder.tensor(layer.bottom[0]), builder.constant(f"{layer.name}/weight", weights[0].astype(np.float32))]
    if param.bias_term and len(weights) > 1:
        inputs.append(builder.constant(f"{layer.name}/bias", weights[1].reshape(-1).astype(np.float32)))
    builder.node(
        "Conv",
        inputs,
        [layer.top[0]],
        layer.name,
        kernel_shape=list(geometry["kernel"]),
        pads=[ph, pw, ph, pw],
        strides=list(geometry["stride"]),
        dilations=list(geometry["dilation"]),
        group=int(param.group),
    )


def _eltwise(builder: GraphBuilder, layer) -> None:
    param = layer.eltwise_param
    operation = param.DESCRIPTOR.fields_by_name["operation"].enum_type.values_by_number[param.operation].name
    inputs = [builder.tensor(bottom) for bottom in layer.bottom]
    if operation == "SUM" and list(param.coeff) not in ([], [1.0] * len(inputs)):
        scaled = []
        for index, (tensor, coeff) in enumerate(zip(inputs, param.coeff, strict=True)):
            factor = builder.constant(f"{layer.name}/coeff{index}", np.asarray(coeff, np.float32))
            builder.node("Mul", [tensor, factor], [f"{layer.name}/scaled{index}"], f"{layer.name}{index}")
            scaled.append(builder.tensor(f"{layer.name}/scaled{index}"))
        inputs = scaled
    op = {"SUM": "Sum", "PROD": "Mul", "MAX": "Max"}[operation]
    if op == "Sum" and len(inputs) == 2:
        op = "Add"
    builder.node(op, inputs, [layer.top[0]], layer.name)


def _slice(builder: GraphBuilder, layer, shapes: dict[str, tuple]) -> None:
    param = layer.slice_param
    axis = int(param.axis) if param.HasField("axis") else int(param.slice_dim) if param.HasField("slice_dim") else 1
    points = list(param.slice_point)
    if not points:
        size = shapes[layer.bottom[0]][axis] // len(layer.top)
        points = [size * (i + 1) for i in range(len(layer.top) - 1)]
    bounds = [0, *points, INT64_MAX]
    source = builder.tensor(layer.bottom[0])
    for index, top in enumerate(layer.top):
        starts = builder.constant(f"{layer.name}/{top}/starts", np.asarray([bounds[index]], np.int64))
        ends = builder.constant(f"{layer.name}/{top}/ends", np.asarray([bounds[index + 1]], np.int64))
        axes = builder.constant(f"{layer.name}/{top}/axes", np.asarray([axis], np.int64))
        builder.node("Slice", [source, starts, ends, axes], [top], f"{layer.name}/{top}")


def _reshape(builder: GraphBuilder, layer) -> None:
    param = layer.reshape_param
    if param.axis != 0 or param.num_axes != -1:
        raise OnnxExportError(f"Reshape {layer.name!r}: axis/num_axes are not supported; reshape the whole blob")
    shape = builder.constant(f"{layer.name}/shape", np.asarray(list(param.shape.dim), np.int64))
    builder.node("Reshape", [builder.tensor(layer.bottom[0]), shape], [layer.top[0]], layer.name)


def _simple(op: str, **attributes) -> Callable:
    def convert(builder: GraphBuilder, layer) -> None:
        builder.node(op, [builder.tensor(b) for b in layer.bottom], list(layer.top), layer.name, **attributes)

    return convert


def _relu6(builder: GraphBuilder, layer) -> None:
    low = builder.constant(f"{layer.name}/min", np.asarray(0.0, np.float32))
    high = builder.constant(f"{layer.name}/max", np.asarray(6.0, np.float32))
    builder.node("Clip", [builder.tensor(layer.bottom[0]), low, high], [layer.top[0]], layer.name)


def _convert_layer(builder: GraphBuilder, layer, shapes: dict[str, tuple]) -> None:
    kind = layer.type
    if kind in ("Input", "Silence"):
        return
    if kind == "Convolution":
        return _convolution(builder, layer)
    if kind == "ReLU6":
        return _relu6(builder, layer)
    if kind == "ReLU":
        if layer.relu_param.negative_slope:
            return _simple("LeakyRelu", alpha=float(layer.relu_param.negative_slope))(builder, layer)
        return _simple("Relu")(builder, layer)
    if kind == "Eltwise":
        return _eltwise(builder, layer)
    if kind == "Slice":
        return _slice(builder, layer, shapes)
    if kind == "Reshape":
        return _reshape(builder, layer)
    simple = {
        "Permute": lambda: _simple("Transpose", perm=[int(v) for v in layer.permute_param.order]),
        "Flatten": lambda: _simple("Flatten", axis=int(layer.flatten_param.axis)),
        "Concat": lambda: _simple("Concat", axis=int(layer.concat_param.axis)),
        "Sigmoid": lambda: _simple("Sigmoid"),
        "Softmax": lambda: _simple("Softmax", axis=int(layer.softmax_param.axis)),
    }
    if kind not in simple:
        raise OnnxExportError(f"layer {layer.name!r} of type {kind} has no ONNX form here; fold or remove it first")
    if kind == "Flatten" and layer.flatten_param.end_axis != -1:
        raise OnnxExportError(f"Flatten {layer.name!r}: only end_axis -1 is supported")
    simple[kind]()(builder, layer)


def heads_onnx_model(heads_param, params: dict[str, list[np.ndarray]], shapes: dict[str, tuple]):
    """The ONNX ModelProto of a head-only net (``shapes``: every blob's shape, from pycaffe)."""
    from onnx import TensorProto, helper

    blobs = [*heads_param.input, *(top for layer in heads_param.layer for top in layer.top)]
    builder = GraphBuilder(params, blobs, {name: blobs.count(name) for name in (LOC, SCORES)})
    input_name = heads_param.input[0] if len(heads_param.input) else None
    for layer in heads_param.layer:
        if layer.type == "Input":
            input_name = layer.top[0]
    if input_name is None:
        raise OnnxExportError("the head-only net has no input (an Input layer or input:)")
    builder.new_name(input_name)
    for layer in heads_param.layer:
        _convert_layer(builder, layer, shapes)
    graph = helper.make_graph(
        builder.nodes,
        portable_name(heads_param.name or "ssd"),
        [helper.make_tensor_value_info(builder.tensor(input_name), TensorProto.FLOAT, list(shapes[input_name]))],
        [
            helper.make_tensor_value_info(builder.tensor(name), TensorProto.FLOAT, list(shapes[name]))
            for name in (LOC, SCORES)
        ],
        initializer=builder.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ssdlite-coco", ir_version=8
    )
    return model


def write_heads_onnx(heads_param, params, shapes, out_path: str | os.PathLike) -> None:
    """Write and check (onnx.checker, full shape inference) ``heads.onnx``."""
    import onnx

    from ssdlite_coco.common.atomic import atomic_path

    model = heads_onnx_model(heads_param, params, shapes)
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
