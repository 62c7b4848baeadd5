"""The export in the report: every runtime against pycaffe (``verify.json``) and what INT8 costs (``int8.json``)."""

from __future__ import annotations

import html
import os
from typing import Any

from ssdlite_coco.common.atomic import atomic_write_text
from ssdlite_coco.report.figures import pyplot, save_figure
from ssdlite_coco.report.html_page import fmt, html_page, html_table, read_json


def _read_export(path: str | os.PathLike, what: str) -> dict[str, Any]:
    return read_json(path, what, "re-run the export rules")


def _machine(result: dict[str, Any]) -> str:
    host = result["machine"]
    return html.escape(f"{result['latency']}, {result['threads']} thread(s), {host['cpu']} ({host['cores']} cores)")


def export_html(verify_json: str | os.PathLike, out_html: str | os.PathLike) -> None:
    """The runtime table of the export check."""
    verify = _read_export(verify_json, "export check")
    rows = []
    for row in verify["rows"]:
        if not row["loads"]:
            rows.append([html.escape(row["runtime"]), "-", "no: " + html.escape(row["error"])] + [""] * 6)
            continue
        rows.append(
            [
                html.escape(row["runtime"]),
                html.escape(row.get("precision", "float32")),
                "yes",
                f"{row['loc_max_difference']:.2g}",
                f"{row['scores_max_difference']:.2g}",
                f"{row['matched']} / {row['reference_detections']}",
                fmt(row.get("AP", "-"), 4),
                fmt(row.get("AP50", "-"), 4),
                f"{row['latency']['median_ms']:.1f}",
            ]
        )
    header = [
        "runtime",
        "precision",
        "loads",
        "loc diff",
        "scores diff",
        "matched / pycaffe",
        "AP",
        "AP50",
        "median ms",
    ]
    failures = verify["failures"]
    body = (
        f"<h2>The export in every runtime, against pycaffe ({verify['images']} test images)</h2>"
        + html_table(header, rows)
        + f"<p>Tolerance {verify['tolerance']:.3g} on loc and scores, {verify['ap_tolerance']} on AP50; latency "
        + _machine(verify)
        + ".</p>"
        + ("<p class='warning'>" + html.escape("; ".join(failures)) + "</p>" if failures else "<p>No failure.</p>")
    )
    atomic_write_text(out_html, html_page("Export check", body))


def int8_html(int8_json: str | os.PathLike, out_html: str | os.PathLike) -> None:
    """The INT8 table (runtime x precision x calibration), the verdict and the layers that lose the most."""
    result = _read_export(int8_json, "INT8 results")
    rows = [
        [
            html.escape(row["runtime"]),
            row["precision"].upper(),
            html.escape(row["weights"]),
            html.escape(row["calibration"]),
            fmt(row["AP"], 4),
            fmt(row["AP50"], 4),
            f"{row['delta_AP']:+.4f}",
            f"{row['latency']['median_ms']:.1f}",
            f"{row['model_bytes'] / 1e6:.2f}",
        ]
        for row in result["rows"]
    ]
    header = ["runtime", "precision", "weights", "calibration", "AP", "AP50", "ΔAP", "median ms", "MB"]
    verdict = result["verdict"]
    css = "warning" if verdict["over_budget"] else "ok"
    body = (
        f"<h2>INT8 against FP32 ({result['images']} test images, {result['calibration']['images']} calibration "
        f"images)</h2>"
        + html_table(header, rows)
        + f"<p class='{css}'>{html.escape(verdict['message'])}</p><p>Latency {_machine(result)}.</p>"
    )
    for variant, layers in result["layers"].items():
        layer_rows = [
            [html.escape(layer["layer"]), layer["op"], fmt(layer["relative_error"], 4), f"{layer['added_error']:+.4f}"]
            for layer in layers
        ]
        body += f"<h3>Layers that add the most error: {html.escape(variant)}</h3>"
        body += html_table(["layer", "op", "relative error", "added"], layer_rows)
    atomic_write_text(out_html, html_page("INT8", body))


def plot_int8(int8_json: str | os.PathLike, out_png: str | os.PathLike) -> None:
    """One bar per model, grouped by runtime: the AP change against the runtime's unquantized model (the budget
    as a band) and the batch-1 latency. Labels on the axis, the legend below: readable with any number of rows."""
    result = _read_export(int8_json, "INT8 results")
    rows = sorted(
        (row for row in result["rows"] if "AP" in row),
        key=lambda row: (row["runtime"], row["precision"] == "int8", row["variant"]),
    )
    plt = pyplot()
    figure, (change, latency) = plt.subplots(
        1, 2, figsize=(10, 1.2 + 0.32 * len(rows)), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    runtimes = sorted({row["runtime"] for row in rows})
    colours = dict(zip(runtimes, plt.get_cmap("tab10").colors, strict=False))
    positions = range(len(rows))
    from matplotlib.colors import to_rgba

    bar_colours = [to_rgba(colours[row["runtime"]], 1.0 if row["precision"] == "int8" else 0.4) for row in rows]
    for axes, values in (
        (change, [row["delta_AP"] for row in rows]),
        (latency, [row["latency"]["median_ms"] for row in rows]),
    ):
        axes.barh(positions, values, color=bar_colours)
        axes.grid(axis="x", alpha=0.3)
    change.axvspan(-result["max_ap_drop"], 0, color="tab:green", alpha=0.15)
    change.axvline(0, color="black", linewidth=0.8)
    labels = [
        f"{row['variant']}  AP {row['AP']:.3f}" + ("" if row["precision"] == "int8" else " (base)") for row in rows
    ]
    change.set_yticks(list(positions), labels, fontsize=8)
    change.invert_yaxis()
    change.set_xlabel("COCO AP change against the runtime's base model (pale)")
    latency.set_xlabel("batch-1 latency, ms (median, with decode)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[name]) for name in runtimes]
    handles.append(plt.Rectangle((0, 0), 1, 1, color="tab:green", alpha=0.15))
    names = [*runtimes, f"within export.int8_max_ap_drop ({result['max_ap_drop']})"]
    figure.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    figure.suptitle("What INT8 costs, per runtime and calibration")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(figure, out_png)
    plt.close(figure)
