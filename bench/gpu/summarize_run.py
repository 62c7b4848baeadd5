"""Gather a run_on_device.sh run (its logs and JSON files in OUT) into OUT/results.json and print a summary.

    python3 bench/gpu/summarize_run.py --out OUT [--cpu-only] [--threads N] [--elapsed S]

Reads steps.tsv, logs/time_*.log (``caffe time``: average forward, backward and forward-backward per
iteration, the data layer's share), logs/train_*.log (``caffe train``: losses at each display, iterations
reached, img/s from the log's timestamps after the first 10 iterations), compare_*.json, torch.json,
libraries.json and the device query. Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

GLOG_TIME = re.compile(r"^[IWEF]\d{8} (\d\d):(\d\d):(\d\d\.\d+)")
DISPLAY = re.compile(r"Iteration (\d+), loss = ([-\d.e+naif]+)")
NAME = re.compile(r"^(time|train)_(cpu|gpu)_b(\d+)(_nodw)?$")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the run's output folder ($OUT)")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the CPU runs")
    parser.add_argument("--elapsed", type=float, default=0.0, help="seconds the run took so far")
    return parser


def seconds_of(line: str) -> float | None:
    match = GLOG_TIME.match(line)
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def first_error(text: str) -> str | None:
    """The first fatal glog line, failed check, loader error or crash of a log (CPU-mode CUDA warnings aside)."""
    for line in text.splitlines():
        line = line.strip()
        if "Cannot create Cublas handle" in line or "Cannot create Curand generator" in line:
            continue
        fatal = line.startswith("F") and GLOG_TIME.match(line)
        if (
            fatal
            or "Check failed" in line
            or "error while loading" in line
            or line.lower().startswith("error")
            or "Segmentation fault" in line
            or "Aborted" in line
        ):
            return line[:400]
    return None


def parse_time(text: str, batch: int) -> dict:
    def average(label: str) -> float | None:
        match = re.search(rf"Average {label}: ([\d.e+-]+) ms", text)
        return float(match.group(1)) if match else None

    result = {
        "forward_ms": average("Forward pass"),
        "backward_ms": average("Backward pass"),
        "forward_backward_ms": average("Forward-Backward"),
    }
    iterations = re.search(r"Testing for (\d+) iterations", text)
    result["iterations"] = int(iterations.group(1)) if iterations else None
    data = re.search(r"^\S+ \S+ \d+ caffe\.cpp:\d+\]\s+data\s+forward: ([\d.e+-]+) ms", text, re.M)
    result["data_forward_ms"] = float(data.group(1)) if data else None
    total = result["forward_backward_ms"]
    if total:
        result["img_per_s"] = batch * 1e3 / total
        if result["data_forward_ms"] is not None and total > result["data_forward_ms"]:
            result["img_per_s_without_data_layer"] = batch * 1e3 / (total - result["data_forward_ms"])
    result["error"] = first_error(text) if total is None else None
    return result


def parse_train(text: str, batch: int) -> dict:
    displays = []
    for line in text.splitlines():
        match = DISPLAY.search(line)
        if match and "solver.cpp" in line:
            displays.append((int(match.group(1)), float(match.group(2)), seconds_of(line)))
    result = {"displays": [{"iter": i, "loss": loss} for i, loss, _ in displays]}
    if displays:
        result["first_loss"], result["last_loss"] = displays[0][1], displays[-1][1]
        result["iterations_reached"] = displays[-1][0]
    timed = [(i, t) for i, _, t in displays if i >= 10 and t is not None]
    if len(timed) >= 2 and timed[-1][0] > timed[0][0]:
        span = (timed[-1][1] - timed[0][1]) % 86400
        if span > 0:
            rate = (timed[-1][0] - timed[0][0]) / span
            result["iter_per_s"], result["img_per_s"] = rate, rate * batch
    result["finished"] = "Optimization Done." in text
    result["error"] = None if result["finished"] else first_error(text)
    return result


def compare_summary(path: Path) -> dict:
    report = json.loads(path.read_text())
    out = {"reference": report["reference"], "noise_floor": report.get("noise_floor"), "candidates": {}}
    for label, result in report["candidates"].items():
        out["candidates"][label] = {
            "ok": result.get("ok"),
            "role": result.get("role", "judged"),
            "failed_kinds": result.get("failed_kinds"),
            "blobs_compared": result["blobs_compared"],
            "by_kind": {
                kind: {
                    k: group[k]
                    for k in ("blobs", "worst_rel_max", "worst_rel_l2", "limit", "ok", "worst_blob")
                    if k in group
                }
                for kind, group in result["by_kind"].items()
            },
        }
    return out


def device_info(out: Path) -> dict:
    info = {}
    query = out / "logs" / "device_query.log"
    if query.is_file():
        for line in query.read_text(errors="replace").splitlines():
            match = re.search(
                r"\]\s+(Name|Major revision number|Minor revision number|Total global memory|"
                r"Number of multiprocessors):\s+(.*)$",
                line,
            )
            if match:
                info[match.group(1)] = match.group(2).strip()
    version = out / "logs" / "caffe_version.log"
    if version.is_file():
        info["caffe_version"] = version.read_text(errors="replace").strip().splitlines()[-1:]
    smi = out / "logs" / "nvidia-smi.log"
    if smi.is_file():
        match = re.search(r"Driver Version: (\S+)\s+CUDA Version: (\S+)", smi.read_text(errors="replace"))
        if match:
            info["driver"], info["driver_cuda"] = match.groups()
    return info


def main(args: argparse.Namespace) -> int:
    out = args.out
    results: dict = {
        "cpu_only": args.cpu_only,
        "threads": args.threads,
        "elapsed_s": args.elapsed,
        "device": device_info(out),
        "steps": [],
        "caffe_time": {},
        "caffe_train": {},
        "compare": {},
    }
    notes = out / "notes.txt"
    if notes.is_file():
        results["notes"] = notes.read_text().splitlines()
    steps = out / "steps.tsv"
    if steps.is_file():
        with steps.open() as handle:
            results["steps"] = list(csv.DictReader(handle, delimiter="\t"))
    for name in ("bundle_manifest.json", "libraries.json", "torch.json"):
        path = out / name
        if path.is_file():
            data = json.loads(path.read_text())
            if name == "libraries.json":
                data = {
                    "ok": data["ok"],
                    "problems": data["problems"],
                    "from": {k: v["from"] for k, v in data["libraries"].items()},
                }
            if name == "bundle_manifest.json":
                data = {
                    k: data[k]
                    for k in ("created", "caffe_prefix_key", "cuda_architectures", "sizes_mib", "nvcc", "git_commit")
                    if k in data
                }
            results[name.removesuffix(".json")] = data
    for log in sorted((out / "logs").glob("*.log")):
        match = NAME.match(log.stem)
        if not match:
            continue
        kind, mode, batch, nodw = match.group(1), match.group(2), int(match.group(3)), bool(match.group(4))
        key = f"{mode} batch {batch}" + (" without depthwise kernels" if nodw else "")
        text = log.read_text(errors="replace")
        if kind == "time":
            results["caffe_time"][key] = parse_time(text, batch)
        else:
            results["caffe_train"][key] = parse_train(text, batch)
    for path in sorted(out.glob("compare_*.json")):
        results["compare"][path.stem.removeprefix("compare_")] = compare_summary(path)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    print(f"results: {out / 'results.json'} ({'CPU only' if args.cpu_only else 'GPU'} run, {args.elapsed:.0f} s)")
    for note in results.get("notes", []):
        print(f"  note: {note}")
    for step in results["steps"]:
        print(f"  {step['step']:28s} {step['status']:22s} {step['seconds']:>5s} s")
    for name, report in results["compare"].items():
        for label, result in report["candidates"].items():
            verdict = "ok" if result["ok"] else f"MISMATCH ({', '.join(result['failed_kinds'] or ['non-finite'])})"
            if result["role"] == "noise floor":
                verdict = "noise floor"
            worst = max(result["by_kind"].values(), key=lambda g: g["worst_rel_l2"], default={})
            print(
                f"  compare {name}: {label} vs {report['reference']}: {verdict}; worst rel l2 "
                f"{worst.get('worst_rel_l2', 0):.1e} ({worst.get('worst_blob', '')})"
            )
    for key, timing in results["caffe_time"].items():
        if timing.get("forward_backward_ms"):
            extra = timing.get("img_per_s_without_data_layer")
            print(
                f"  caffe time {key}: {timing['forward_backward_ms']:.1f} ms/iter, {timing['img_per_s']:.1f} img/s"
                + (f" ({extra:.1f} img/s without the data layer)" if extra else "")
            )
        else:
            print(f"  caffe time {key}: no result ({timing.get('error')})")
    for key, train in results["caffe_train"].items():
        rate = f", {train['img_per_s']:.1f} img/s" if train.get("img_per_s") else ""
        print(
            f"  caffe train {key}: {train.get('iterations_reached', 0)} iterations, loss "
            f"{train.get('first_loss')} -> {train.get('last_loss')}{rate}"
            + ("" if train["finished"] else f" (not finished: {train.get('error')})")
        )
    for run in results.get("torch", {}).get("runs", []):
        if "error" in run:
            print(f"  torch {run['mode']} batch {run['batch']}: {run['error']}")
        elif "with_multibox_loss" in run:
            print(
                f"  torch {run['mode']} batch {run['batch']}: {run['with_multibox_loss']['img_per_s']:.1f} img/s, "
                f"{run['net_only']['img_per_s']:.1f} img/s net only"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
