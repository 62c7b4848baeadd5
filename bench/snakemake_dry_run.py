"""Time ``snakemake -n`` (the DAG build of a dry run) for a configuration, by default the full COCO one.

    /tmp/venv/bin/python bench/snakemake_dry_run.py [--configfile config/coco.yaml] [--repeats 3]

Runs the dry run in a throw-away copy of the workflow files (Snakefile, rules/, config/, scripts/, envs/,
ssdlite_coco/), so that it never sees or touches the checkout's results/, and prints the median wall time.
When the configuration file does not exist yet, it says so and exits 0 (nothing to measure).
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "rules", "config", "scripts", "envs", "ssdlite_coco", "caffe", "profiles")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", default="config/coco.yaml", help="relative to the repository root")
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def main(args: argparse.Namespace) -> int:
    if not (REPO_ROOT / args.configfile).is_file():
        print(f"skipped: {args.configfile} does not exist in {REPO_ROOT} (no full COCO configuration to time yet)")
        return 0
    times = []
    with tempfile.TemporaryDirectory(prefix="ssdlite-dryrun-bench-") as tmp:
        work = Path(tmp)
        for part in WORKFLOW_PARTS:
            source = REPO_ROOT / part
            if source.is_dir():
                shutil.copytree(source, work / part, ignore=shutil.ignore_patterns("__pycache__"))
            elif source.exists():
                shutil.copy2(source, work / part)
        command = [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--quiet",
            "--configfile",
            args.configfile,
            "--cores",
            "1",
        ]
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = subprocess.run(command, cwd=work, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if result.returncode != 0:
                print(
                    f"error: snakemake -n failed (exit {result.returncode}):\n{result.stderr[-3000:]}",
                    file=sys.stderr,
                )
                return 1
            print(f"  dry run in {times[-1]:.2f} s", flush=True)
    print(
        f"snakemake -n --configfile {args.configfile}: median {statistics.median(times):.2f} s over {args.repeats} runs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
