"""``int8.md`` and the verdict against the AP budget, from the rows of ``int8.json`` (pure functions)."""

from __future__ import annotations

from typing import Any

BUDGET_KEY = "export.int8_max_ap_drop"


def verdict_of(rows: list[dict], layers: dict[str, list[dict]], max_ap_drop: float) -> dict[str, Any]:
    """Which INT8 variants lose more COCO AP than ``max_ap_drop``, the best variant, and one plain sentence."""
    failed = [row["variant"] for row in rows if "error" in row]
    failed_text = f"; {', '.join(failed)} could not be quantized (int8.md says why)" if failed else ""
    int8 = [row for row in rows if row.get("precision") == "int8"]
    if not int8:
        message = "no INT8 model was made" + failed_text
        return {"over_budget": [], "failed": failed, "best": None, "message": message}
    over = [row for row in int8 if -row["delta_AP"] > max_ap_drop]
    best = max(int8, key=lambda row: (row["AP"], -row["latency"]["median_ms"]))
    best_text = (
        f"the best, {best['variant']}, changes AP by {best['delta_AP']:+.4f} at {best['latency']['median_ms']:.1f} ms"
    )
    if not over:
        worst = min(row["delta_AP"] for row in int8)
        message = f"INT8 is within {BUDGET_KEY} ({max_ap_drop} AP): the worst variant changes AP by {worst:+.4f}; "
        message += best_text
    else:
        losses = "; ".join(
            f"{row['variant']} {row['AP'] - row['delta_AP']:.4f} -> {row['AP']:.4f} AP ({row['delta_AP']:+.4f})"
            for row in over
        )
        message = (
            f"INT8 costs more than {BUDGET_KEY} ({max_ap_drop} AP) for {len(over)} of {len(int8)} variants: {losses}"
        )
        message += f"; {best_text}" if best not in over else "; no variant is within the budget"
        diagnosed = [row for row in over if layers.get(row["variant"])]
        if diagnosed:
            worst = min(diagnosed, key=lambda row: row["delta_AP"])["variant"]
            names = ", ".join(layer["layer"] for layer in layers[worst][:3])
            message += f"; the layers that add the most error in {worst}: {names} (int8.md lists ten)"
    over_budget = [row["variant"] for row in over]
    return {"over_budget": over_budget, "failed": failed, "best": best["variant"], "message": message + failed_text}


def format_rows(rows: list[dict]) -> str:
    header = (
        "| runtime | precision | weights | calibration | AP | AP50 | AP75 | ΔAP | loc diff | scores diff "
        "| matched (FP32 dets) | median ms | MB |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | not made: {row['error']} |" + " |" * 11)
            continue
        cells = [
            row["runtime"],
            row["precision"].upper(),
            row["weights"],
            row["calibration"],
            f"{row['AP']:.4f}",
            f"{row['AP50']:.4f}",
            f"{row['AP75']:.4f}",
            f"{row['delta_AP']:+.4f}",
            f"{row['loc_max_difference']:.2g}",
            f"{row['scores_max_difference']:.2g}",
            f"{row['matched']} ({row['fp32_detections']})",
            f"{row['latency']['median_ms']:.1f}",
            f"{row['model_bytes'] / 1e6:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_layers(variant: str, layers: list[dict], images: int) -> str:
    lines = [
        f"Layers that add the most error in {variant} ({images} test images):",
        "",
        "| layer | op | relative error | added | SQNR dB |",
        "|---|---|---|---|---|",
    ]
    for layer in layers:
        sqnr = f"{layer['sqnr_db']:.1f}" if layer["sqnr_db"] is not None else "-"
        cells = [layer["layer"], layer["op"], f"{layer['relative_error']:.4f}", f"{layer['added_error']:+.4f}", sqnr]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_int8_table(result: dict[str, Any]) -> str:
    """The Markdown of ``int8.md``: the table, the verdict, the layers, the machine."""
    host = result["machine"]
    lines = [
        "# INT8: what quantization costs, per runtime and calibration method",
        "",
        f"{result['images']} test images through the same preprocessing, decode_detections and COCO scoring as the "
        f"FP32 export; calibrated on {result['calibration']['images']} images ({result['calibration']['folder']}); "
        f"ΔAP against the FP32 model of the same runtime; loc/scores diff and matched detections against ONNX Runtime "
        f"FP32; ONNX Runtime INT8 with {result['onnxruntime_activations']} activations and int8 weights; latency "
        f"{result['latency']}, {result['threads']} thread(s), on {host['cpu']} ({host['cores']} cores).",
        "",
        format_rows(result["rows"]),
        ("Over budget: " if result["verdict"]["over_budget"] else "Within budget: ") + result["verdict"]["message"],
        "",
    ]
    for variant, layers in result["layers"].items():
        lines += [format_layers(variant, layers, result["layer_error_images"]), ""]
    return "\n".join(lines)
