"""Is the folded deploy net the trained net? Two checks, each judged against what float32 allows.

* **The arithmetic, per layer, exactly**: every folded convolution's stored (float32) weights and bias
  against the original chain (convolution → Caffe's BatchNorm → Scale) applied to the same weights in
  float64, written in the forward form, independently of the fold's formula. A correct fold differs by
  float32's storage rounding (< 6e-8 of the layer's largest value); a wrong one by far more.
* **The whole net, end to end, on real images**: the folded and the trained net's head outputs, compared
  against the trained net's own float32 noise measured in the same run. A barely trained net's BatchNorm
  subtracts channel means much larger than their spread, so its float32 outputs carry a rounding error
  that grows with depth (1e-3 and more after a few iterations, depending on the CPU's rounding). The noise
  is how far the trained net's outputs move when every stored weight moves by one unit in the last place
  (random directions, two draws): any float32 computation of the net, the folded one included, is that
  uncertain. The end-to-end difference is allowed ``max(floor, noise_factor × noise)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ssdlite_coco.caffe_tools.prototxt import read_net
from ssdlite_coco.export.fold import FoldedLayer, batchnorm_eps, input_shape, load_net_params, net_params
from ssdlite_coco.export.preprocess import preprocess_image

# float32 keeps 24 significant bits: storing an exact float64 value errs by at most 2**-24 (6e-8) of it.
ARITHMETIC_TOLERANCE = 1e-6
HEAD_BLOBS = ("mbox_loc", "mbox_conf_flatten", "mbox_priorbox")
NOISE_DRAWS = 2


def chain_in_float64(outputs: np.ndarray, batch_norm: list[np.ndarray], eps: float, scale: list[np.ndarray]):
    """Caffe's BatchNorm (global statistics) then Scale on convolution ``outputs`` [channels, n], in float64."""
    mean, variance, factor = (np.asarray(blob, np.float64).reshape(-1) for blob in batch_norm[:3])
    inverse = 0.0 if factor[0] == 0 else 1.0 / factor[0]
    normalized = (outputs - mean[:, None] * inverse) / np.sqrt(variance[:, None] * inverse + eps)
    if scale:
        normalized = normalized * np.asarray(scale[0], np.float64).reshape(-1, 1)
        if len(scale) > 1:
            normalized = normalized + np.asarray(scale[1], np.float64).reshape(-1, 1)
    return normalized


def check_fold_arithmetic(
    net_param, source: dict[str, list[np.ndarray]], folded_params: dict[str, list[np.ndarray]], folded
) -> dict[str, Any]:
    """Per folded convolution: the stored weights and bias against the original chain in float64.

    The chain is affine per output channel, so its bias is the chain applied to the convolution's bias
    (a zero input) and its weights are the chain's response to each weight column minus that bias.
    Errors are relative to the layer's largest expected weight (and bias). A convolution that the export
    rewrote to its centre tap (a 1x1 input) is compared on that tap.
    """
    layers = {layer.name: layer for layer in net_param.layer}
    per_layer: dict[str, float] = {}
    for chain in folded:
        weight = np.asarray(source[chain.convolution][0], np.float64)
        channels = weight.shape[0]
        columns = weight.reshape(channels, -1)
        bias = (
            np.asarray(source[chain.convolution][1], np.float64).reshape(-1, 1)
            if len(source[chain.convolution]) > 1
            else np.zeros((channels, 1))
        )
        eps = batchnorm_eps(layers[chain.batch_norm])
        scale = source[chain.scale] if chain.scale else []
        expected_bias = chain_in_float64(bias, source[chain.batch_norm], eps, scale)
        expected_weight = chain_in_float64(bias + columns, source[chain.batch_norm], eps, scale) - expected_bias
        expected_weight = expected_weight.reshape(weight.shape)
        stored_weight, stored_bias = (np.asarray(a, np.float64) for a in folded_params[chain.convolution][:2])
        if stored_weight.shape[2:] == (1, 1) and weight.shape[2:] != (1, 1):  # export.rewrite's centre tap
            kh, kw = weight.shape[2:]
            expected_weight = expected_weight[:, :, kh // 2 : kh // 2 + 1, kw // 2 : kw // 2 + 1]
        per_layer[chain.convolution] = max(
            _relative_error(stored_weight, expected_weight),
            _relative_error(stored_bias.reshape(-1, 1), expected_bias),
        )
    worst = max(per_layer, key=per_layer.get, default=None)
    return {
        "per_layer": per_layer,
        "max_relative_error": per_layer[worst] if worst else 0.0,
        "worst_layer": worst,
        "tolerance": ARITHMETIC_TOLERANCE,
    }


def _relative_error(stored: np.ndarray, expected: np.ndarray) -> float:
    if stored.shape != expected.shape:
        return float("inf")
    largest = max(float(np.abs(expected).max()), float(np.finfo(np.float32).tiny))
    return float(np.abs(stored - expected).max()) / largest


def compare_nets(reference, other, inputs: list[np.ndarray]) -> dict[str, Any]:
    """Largest difference of every output blob (and the SSD head blobs) of two nets over ``inputs``.

    Absolute, and relative to the blob's largest magnitude (at least 1). The verdict is on the
    continuous head outputs: DetectionOutput's NMS and top-k are discontinuous (where class scores nearly
    tie, a 1e-6 change of a score reorders the kept boxes), so its difference is reported, not judged.
    """
    input_name = reference.inputs[0]
    names = [name for name in HEAD_BLOBS if name in other.blobs]
    names += [name for name in other.outputs if name not in names]
    worst: dict[str, float] = {name: 0.0 for name in names}
    scale: dict[str, float] = {name: 1.0 for name in names}
    detections = 0
    for array in inputs:
        for net in (reference, other):
            net.blobs[input_name].reshape(1, *array.shape)
            net.blobs[input_name].data[0] = array
            net.forward()
        for name in names:
            a, b = reference.blobs[name].data, other.blobs[name].data
            difference = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
            worst[name] = max(worst[name], difference)
            scale[name] = max(scale[name], float(np.abs(a).max()))
        if "detection_out" in other.blobs:
            detections += int((other.blobs["detection_out"].data.reshape(-1, 7)[:, 0] >= 0).sum())
    relative = {name: worst[name] / scale[name] for name in names}
    judged = [name for name in names if name in HEAD_BLOBS] or names
    return {
        "max_abs_difference": max((worst[name] for name in judged), default=0.0),
        "max_relative_difference": max((relative[name] for name in judged), default=0.0),
        "judged_blobs": judged,
        "per_blob": worst,
        "per_blob_relative": relative,
        "images": len(inputs),
        "detections": detections,
    }


def nudge_by_one_ulp(net, rng: np.random.Generator) -> None:
    """Move every stored parameter of ``net`` one float32 step up or down (random direction), in place."""
    for blobs in net.params.values():
        for blob in blobs:
            direction = np.where(rng.random(blob.data.shape) < 0.5, -np.inf, np.inf).astype(np.float32)
            blob.data[...] = np.nextafter(blob.data, direction)


def reference_noise(prototxt, weights, reference, inputs: list[np.ndarray], seed: int = 0) -> dict[str, Any]:
    """How far the trained net's head outputs move when its stored weights move by one float32 step.

    The largest relative difference over ``NOISE_DRAWS`` nudged copies (fixed seeds: the same figure on
    every run of one machine).
    """
    draws = []
    for draw in range(NOISE_DRAWS):
        nudged = load_net_params(prototxt, weights)
        nudge_by_one_ulp(nudged, np.random.default_rng(seed + draw))
        draws.append(compare_nets(reference, nudged, inputs))
    per_blob = {name: max(d["per_blob_relative"][name] for d in draws) for name in draws[0]["per_blob_relative"]}
    return {
        "max_relative_difference": max(d["max_relative_difference"] for d in draws),
        "per_blob_relative": per_blob,
        "draws": NOISE_DRAWS,
    }


def check_folding(
    deploy_prototxt,
    weights,
    folded_prototxt,
    folded_weights,
    folded: list[FoldedLayer],
    images: list[Path],
    mean: list[float],
    scale: float,
    interpolation: str = "INTER_LINEAR",
) -> dict[str, Any]:
    """The folded net against the trained one: per-layer arithmetic, end to end on ``images``, the noise."""
    import caffe

    _, height, width = input_shape(deploy_prototxt)
    inputs = [preprocess_image(path, height, width, mean, scale, interpolation) for path in images]
    reference = load_net_params(deploy_prototxt, weights)
    folded_net = caffe.Net(str(folded_prototxt), caffe.TEST, weights=str(folded_weights))
    result = compare_nets(reference, folded_net, inputs)
    result["arithmetic"] = check_fold_arithmetic(
        read_net(deploy_prototxt), net_params(reference), net_params(folded_net), folded
    )
    result["reference_noise"] = reference_noise(deploy_prototxt, weights, reference, inputs)
    result["layers_before"] = len(reference.layers)
    result["layers_after"] = len(folded_net.layers)
    return result


def judge_folding(check: dict[str, Any], floor: float, noise_factor: float) -> str | None:
    """Record the allowance in ``check``; the failure in one sentence, or None when the fold is right."""
    noise = check["reference_noise"]["max_relative_difference"]
    allowed = max(floor, noise_factor * noise)
    check.update(tolerance=allowed, tolerance_floor=floor, noise_factor=noise_factor)
    arithmetic = check["arithmetic"]
    if not arithmetic["max_relative_error"] <= arithmetic["tolerance"]:
        return (
            f"pycaffe: the folded weights of {arithmetic['worst_layer']} differ from its BatchNorm/Scale chain "
            f"computed in float64 by {arithmetic['max_relative_error']:.3g} relative (> {arithmetic['tolerance']}): "
            "the fold is wrong"
        )
    if not check["max_relative_difference"] <= allowed:
        return (
            f"pycaffe: the folded net's outputs differ from the trained net by {check['max_relative_difference']:.3g} "
            f"relative (> {allowed:.3g} = max(export.fold_tolerance {floor}, export.fold_noise_factor {noise_factor} "
            f"x the trained net's own float32 noise {noise:.3g})): {check['per_blob_relative']}"
        )
    return None


def noise_allowance(check: dict[str, Any], floor: float) -> float:
    """A runtime tolerance widened the same way: ``max(floor, noise_factor × the trained net's noise)``."""
    return max(floor, check["noise_factor"] * check["reference_noise"]["max_relative_difference"])
