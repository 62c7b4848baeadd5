"""Which layers lose the most in INT8: every layer's output, FP32 against a QDQ model, on images it is given.

Both ONNX models get every node output as a graph output. In the QDQ model a layer's output ``T`` is read
by the next layers through ``QuantizeLinear -> DequantizeLinear``; that dequantized tensor (what the next
layer sees) is the one compared. Exposing the tensors keeps ONNX Runtime from fusing the Q/DQ pairs into
integer kernels, so the QDQ arithmetic runs emulated in float here; the errors are those of the
quantization itself, not of a kernel's requantization rounding.

Per layer: the relative error ``|int8 - fp32| / |fp32|`` over all images, per channel then averaged
over the channels (a channel of small values next to a large one counts as much), the whole tensor's
SQNR in dB, and the error the layer adds (its relative error minus the largest of its inputs'): errors
pile up with depth, so the added error is what names the layers to keep in higher precision.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

# Nodes that only move values (no arithmetic of their own): their error is their input's.
MOVERS = {"Reshape", "Transpose", "Flatten", "Concat", "Squeeze", "Unsqueeze", "Identity"}
ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "Softmax"}


def _node_outputs(model) -> dict[str, Any]:
    """Output tensor name -> its node, for the nodes of ``model`` (the FP32 graph)."""
    return {output: node for node in model.graph.node for output in node.output if output}


def dequantized_views(model) -> dict[str, str]:
    """Tensor name of the QDQ graph -> the name its consumers read (its ``DequantizeLinear`` output)."""
    quantized = {node.input[0]: node.output[0] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    dequantized = {node.input[0]: node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return {name: dequantized[q] for name, q in quantized.items() if q in dequantized}


def _channel_sums(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """[2, channels]: the squared error and the squared reference per channel (axis 1 of NCHW, else the last)."""
    axis = 1 if expected.ndim == 4 else expected.ndim - 1
    other = tuple(i for i in range(expected.ndim) if i != axis)
    return np.stack([np.square(actual - expected).sum(axis=other), np.square(expected).sum(axis=other)])


def _mean_relative_error(squared_error: np.ndarray, squared_reference: np.ndarray) -> float:
    """The mean over channels of ``|int8 - fp32| / |fp32|``: a small channel next to a large one counts, but not
    one that is all but zero (below 1e-3 of the mean channel energy: its ratio is noise over nothing)."""
    live = squared_reference > max(1e-3 * float(squared_reference.mean()), 0.0)
    if not live.any():
        return 0.0 if not squared_error.any() else math.inf
    return float(np.sqrt(squared_error[live] / squared_reference[live]).mean())


def _sqnr_db(squared_error: float, squared_reference: float) -> float | None:
    return 10 * math.log10(squared_reference / squared_error) if squared_error > 0 and squared_reference > 0 else None


def _session_with_outputs(model, names: list[str], threads: int):
    import onnx
    import onnxruntime

    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {output.name for output in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def layer_errors(fp32_path: Path, int8_path: Path, arrays: list[np.ndarray], threads: int = 1) -> list[dict]:
    """One row per compared layer output, sorted by the error the layer adds (largest first)."""
    import onnx

    fp32, int8 = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    producers = _node_outputs(fp32)
    int8_tensors = set(_node_outputs(int8)) | {value.name for value in int8.graph.input}
    views = dequantized_views(int8)
    pairs = {name: views.get(name, name) for name in producers if views.get(name, name) in int8_tensors}
    names = list(pairs)
    reference = _session_with_outputs(fp32, names, threads)
    quantized = _session_with_outputs(int8, [pairs[name] for name in names], threads)
    input_name = reference.get_inputs()[0].name
    sums: dict[str, np.ndarray] = {}
    for array in arrays:
        expected = reference.run(names, {input_name: array})
        actual = quantized.run([pairs[name] for name in names], {quantized.get_inputs()[0].name: array})
        for name, a, b in zip(names, expected, actual, strict=True):
            channel_sums = _channel_sums(np.asarray(a, np.float64), np.asarray(b, np.float64))
            sums[name] = channel_sums if name not in sums else sums[name] + channel_sums
    error = {name: _mean_relative_error(*sums[name]) for name in names}
    sqnr = {name: _sqnr_db(float(sums[name][0].sum()), float(sums[name][1].sum())) for name in names}
    rows = []
    for name in names:
        node, layer = producers[name], producers[name].name or name
        if node.op_type in ACTIVATIONS and node.input[0] in producers and node.input[0] not in error:
            # The quantizer folds an activation into the layer before it (no quantized tensor in between).
            node, layer = producers[node.input[0]], f"{producers[node.input[0]].name} + {layer}"
        inputs = [error[i] for i in node.input if i in error]
        rows.append(
            {
                "layer": layer,
                "op": producers[name].op_type
                if layer == producers[name].name
                else f"{node.op_type} + {producers[name].op_type}",
                "tensor": name,
                "relative_error": error[name],
                "sqnr_db": sqnr[name],
                "added_error": error[name] - max(inputs, default=0.0),
            }
        )
    rows = [row for row in rows if row["op"] not in MOVERS]
    return sorted(rows, key=lambda row: -row["added_error"])
