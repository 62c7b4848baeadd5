"""How far the demo's figures move with the random seed alone: the scale of the guard's floors.

    scripts/with-caffe python bench/demo_seed_spread.py [--seeds 1 2 3 4] [--cores 2]

Runs the embedded demo (config/config.yaml) to ``results/evaluate/metrics.json`` once per
``solver.random_seed`` in one throw-away copy of the workflow (the data, LMDBs and model are made once;
each seed re-runs training and evaluation), then prints COCO AP50, AP and Caffe's detection_eval per
seed, and their lowest, highest and lowest/highest ratio. Another seed draws other initial weights and
augmentations: the training path diverges as it does on another CPU, whose rounding makes 500 iterations
from scratch drift apart, so the spread over seeds on one machine is the spread to expect across machines.
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.support.workflow_run import copy_workflow  # noqa: E402

FIGURES = ("AP50", "AP", "detection_eval")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4], help="solver.random_seed values")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser


def run_seed(workdir: Path, seed: int, cores: int) -> dict:
    command = [sys.executable, "-m", "snakemake", "results/evaluate/metrics.json", "--cores", str(cores)]
    command += ["--configfile", "config/config.yaml", "--config", f"solver={{random_seed: {seed}}}"]
    started = time.monotonic()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: the demo with seed {seed} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((workdir / "results/evaluate/metrics.json").read_text())
    log = pd.read_csv(workdir / "results/train/train_log.csv")
    return {
        "seed": seed,
        "AP50": metrics["stats"]["AP50"],
        "AP": metrics["stats"]["AP"],
        "detection_eval": float(log.detection_eval.dropna().iloc[-1]),
        "minutes": round((time.monotonic() - started) / 60, 1),
    }


def main(args: argparse.Namespace) -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="ssdlite-seed-spread-") as tmp:
        workdir = copy_workflow(REPO_ROOT, Path(tmp) / "workflow")
        for seed in args.seeds:
            rows.append(run_seed(workdir, seed, args.cores))
            print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows).set_index("seed")
    print(table.to_string(float_format="%.4f"))
    for name in FIGURES:
        low, high = table[name].min(), table[name].max()
        print(f"{name}: lowest {low:.4f}, highest {high:.4f}, lowest/highest {low / high:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
