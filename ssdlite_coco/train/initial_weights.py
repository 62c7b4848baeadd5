"""Before training: the initial weights' mAP on the test split, and whether their detection head looks trained.

The answer to "are the provided weights pretrained?": the weights are copied by layer name into the test
net (what is copied, mismatched or missing is listed), scored on the test split like the evaluate stage,
and the confidence heads' biases are inspected: a trained head leans towards the background.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ssdlite_coco.caffe_tools.weights import LayerCopy, format_copy_table
from ssdlite_coco.common.atomic import atomic_write_text
from ssdlite_coco.evaluate.coco_scoring import evaluate_test_split
from ssdlite_coco.evaluate.settings import InitialWeightsCheckSettings
from ssdlite_coco.evaluate.test_split import TestSplit
from ssdlite_coco.model.mobilenetv2 import backbone_units

COPY_STATUSES = ("copied", "shape mismatch", "not in weights", "not in net")

BACKGROUND_MARGIN = 0.5


def conf_head_layers(net_param) -> list[str]:
    """Convolutions that feed DetectionOutput's confidence input (through Permute/Flatten/Concat/Softmax...)."""
    layers = list(net_param.layer)
    outputs = [layer for layer in layers if layer.type == "DetectionOutput"]
    if not outputs:
        return []
    heads: list[str] = []
    pending = [(outputs[0].bottom[1], layers.index(outputs[0]))]
    seen: set[tuple[str, int]] = set()
    while pending:
        blob, before = pending.pop()
        if (blob, before) in seen:
            continue
        seen.add((blob, before))
        producer = next(
            ((i, layer) for i, layer in reversed(list(enumerate(layers[:before]))) if blob in layer.top), None
        )
        if producer is None:
            continue
        index, layer = producer
        if layer.type == "Convolution":
            heads.append(layer.name)
        else:
            bottoms = layer.bottom if layer.type == "Concat" else layer.bottom[:1]
            pending += [(bottom, index) for bottom in bottoms]
    return sorted(set(heads), key=[layer.name for layer in layers].index)


def conf_head_statistics(
    net_param, params: Mapping[str, list[np.ndarray]], copied: list[LayerCopy], num_classes: int
) -> dict:
    """Weight/bias statistics of the confidence heads and whether they look trained.

    An untrained head has the fillers' values: zero biases and weights of std ~ 1/sqrt(fan_in) (xavier).
    A trained one has class biases that differ from each other, the background's clearly the largest
    (``background_bias_margin``: background bias minus the mean of the others, per head). These are
    indications; the mAP of the weights is the evidence.
    """
    status = {row.layer: row.status for row in copied}
    heads = []
    for name in conf_head_layers(net_param):
        blobs = params[name]
        weight = blobs[0]
        fan_in = int(np.prod(weight.shape[1:]))
        row = {
            "layer": name,
            "from_weights": status.get(name) == "copied",
            "weight_std": float(weight.std()),
            "filler_std": float(1 / np.sqrt(fan_in)),
        }
        if len(blobs) > 1 and num_classes > 0 and blobs[1].size % num_classes == 0:
            bias = blobs[1].reshape(-1, num_classes)
            row["bias_abs_max"] = float(np.abs(bias).max())
            row["background_bias_margin"] = float(bias[:, 0].mean() - bias[:, 1:].mean())
        heads.append(row)
    from_weights = bool(heads) and all(head["from_weights"] for head in heads)
    margins = [head["background_bias_margin"] for head in heads if "background_bias_margin" in head]
    # a head trained with hard negative mining leans towards the background by a logit or more
    biases_trained = bool(margins) and float(np.mean(margins)) > BACKGROUND_MARGIN
    return {
        "heads": heads,
        "heads_from_weights": from_weights,
        "head_biases_trained": biases_trained,
        "mean_background_bias_margin": float(np.mean(margins)) if margins else None,
    }


def backbone_coverage(net_param, copied: list[LayerCopy], conversion: Mapping[str, Any] | None = None) -> dict:
    """How much of the MobileNetV2 backbone the weights filled: layers copied / expected, the missing ones.

    ``conversion`` is the summary of rule convert_initial_weights' report (format, warnings), if any.
    """
    names = {layer.name for layer in net_param.layer}
    units = backbone_units(first_block_expand="conv/expand" in names)
    backbone = [n for _, unit in units for n in (unit, f"{unit}/bn", f"{unit}/scale") if n in names]
    status = {row.layer: row.status for row in copied}
    missing = [name for name in backbone if status.get(name) != "copied"]
    coverage = {"copied": len(backbone) - len(missing), "expected": len(backbone), "missing": missing}
    if conversion:
        coverage.update(format=conversion["format"], warnings=conversion["warnings"])
    return coverage


def check_initial_weights(
    split: TestSplit,
    weights: str | os.PathLike,
    settings: InitialWeightsCheckSettings,
    data_threads: int,
    log=print,
    conversion: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of the check of ``weights`` on the test split.

    ``conversion``: the coverage summary of converted ImageNet weights (``convert_weights.coverage_summary``).
    """
    metrics, _, result = evaluate_test_split(split, weights, settings.batch_size, data_threads, strict=False, log=log)
    net_param, chance_ap50 = split.net, settings.chance_ap50
    log(f"initial weights {weights} copied by layer name into {split.test_net}:")
    log(format_copy_table(result.copied))
    output = next(layer for layer in net_param.layer if layer.type == "DetectionOutput")
    head = conf_head_statistics(net_param, result.params, result.copied, output.detection_output_param.num_classes)
    coverage = backbone_coverage(net_param, result.copied, conversion)
    above_chance = metrics["stats"]["AP50"] > chance_ap50
    looks_trained = head["heads_from_weights"] and above_chance
    log(metrics["summary"].rstrip("\n"))
    log(
        f"detection_eval {metrics['detection_eval']}; conf heads from the weights: {head['heads_from_weights']}; "
        f"background bias margin {head['mean_background_bias_margin']} (trained-looking: "
        f"{head['head_biases_trained']}); AP50 above chance ({chance_ap50}): {above_chance}"
    )
    log(
        f"backbone coverage: {coverage['copied']}/{coverage['expected']} layers from the weights"
        + (f" (converted from {conversion['format']})" if conversion else "")
    )
    log(f"verdict: the detection head {'looks trained' if looks_trained else 'does NOT look trained'}")
    return {
        "weights": str(weights),
        "coco": metrics["stats"],
        "detection_eval": metrics["detection_eval"],
        "chance_ap50": chance_ap50,
        "map_above_chance": above_chance,
        **head,
        "head_looks_trained": looks_trained,
        "backbone_coverage": coverage,
        "backbone_copied": coverage["copied"],
        "backbone_expected": coverage["expected"],
        "layers": {status: sum(row.status == status for row in result.copied) for status in COPY_STATUSES},
    }


def write_check_report(report: Mapping[str, Any], json_path: str | os.PathLike, csv_path: str | os.PathLike) -> None:
    import pandas as pd

    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    rows = [{"check": key, "value": value} for key, value in report.items() if not isinstance(value, (dict, list))]
    rows += [{"check": f"coco/{key}", "value": value} for key, value in report["coco"].items()]
    atomic_write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))
