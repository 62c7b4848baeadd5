"""Real-data learning: does the chain learn real COCO images, and with which recipe's solver?

Each row trains MobileNetV2-SSDLite on the 128 real COCO images of ../shared/datasets/coco-mini (81
classes, the full SSD augmentation, batch 8) and scores its weights on the same images with pycocotools
at iterations 0, 250, 500 and 1000 (a training-set score: it shows learning, not generalisation).
The data, label map, LMDBs, prototxts and converted weights come from the real workflow (a copy of the
checkout per row, `snakemake --omit-from train`); training is the train rule's runner (health guard on).

Rows: the demo's SGD (with and without augmentation), config/coco.yaml's solver before issue #23 (Caffe
RMSProp at TF's rate), SGD with momentum at TF's rate, coco.yaml's TF RMSProp (patch 0043),
config/coco-scratch.yaml's (SGD, warm-up, cosine), each from the fillers, and coco.yaml's from a
converted ImageNet-format start (random torchvision weights, BatchNorm statistics measured on coco-mini).
Every solver is scaled to batch 8 as config/README.md says: base_lr x 8 / (the recipe's batch x
iter_size). Three short runs from the converted start (100 iterations, one per optimizer) measure how far
the first backbone layers move. Each snapshot is scored twice: as
trained, and with its BatchNorm statistics re-estimated on 40 training batches (PreciseBN), since a
short run's running averages (coco.yaml's decay 0.9997 spans ~3,000 iterations) still hold the
statistics of the first iterations' weights.

    scripts/with-caffe python bench/real_data_learning.py --rows demo-sgd coco-rmsprop-tf-rate --threads 1
    scripts/with-caffe python bench/real_data_learning.py --table     # bench/README.md's table + figure

About 20 minutes a row on 2 cores; rows write OUT/<row>/result.json and are skipped when it exists.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssdlite_coco.caffe_tools.weights import read_caffemodel  # noqa: E402
from ssdlite_coco.evaluate.coco_scoring import evaluate_test_split  # noqa: E402
from ssdlite_coco.evaluate.test_split import TestSplit  # noqa: E402
from ssdlite_coco.train.data_stream import save_without_runtime_fields  # noqa: E402
from ssdlite_coco.train.runner import TrainingError, TrainRun, train  # noqa: E402
from tests.support.train_settings import train_settings  # noqa: E402
from tests.support.workflow_run import copy_workflow, output_tail, run_snakemake  # noqa: E402

COCO_MINI = ROOT.parent / "shared/datasets/coco-mini"
SCORED_AT = (0, 250, 500, 1000)
BATCH = 8
INITIAL_WEIGHTS = "iteration_0.caffemodel"  # the weights before the first update, in each row's folder
PRECISE_BN_BATCHES = 40  # 320 augmented training images per re-estimate
FIRST_LAYERS = ("Conv", "conv/depthwise", "conv/project", "conv_1/expand")  # the first backbone convolutions


@dataclass(frozen=True)
class Row:
    name: str
    recipe: str  # the config file whose model and solver sections the row takes
    description: str
    solver: dict = field(default_factory=dict)  # replaces the recipe's solver keys (before scaling)
    model: dict = field(default_factory=dict)  # replaces the recipe's model keys
    start: str = "fillers"  # or "converted"
    max_iter: int = SCORED_AT[-1]


# config/coco.yaml's solver before issue #23: TF's RMSProp settings written onto Caffe's RMSProp
TF_RATE_RMSPROP = {"type": "RMSProp", "base_lr": 0.004, "rms_decay": 0.9, "delta": 1e-8, "lr_policy": "fixed"}
# SGD with momentum at TF's rate: TF's rule where |g| << 1 (#23's first translation)
TF_RATE_SGD = {"type": "SGD", "base_lr": 0.004, "momentum": 0.9, "lr_policy": "fixed"}
ROWS = {
    row.name: row
    for row in (
        Row("demo-sgd", "config/config.yaml", "the demo's SGD 0.005 (steps at 70 % and 90 %)",
            {"steps": [700, 900]}),
        Row("demo-sgd-no-augmentation", "config/config.yaml", "the demo's SGD, no augmentation (can it memorise?)",
            {"steps": [700, 900]}, model={"augmentation": False}),
        Row("coco-rmsprop-tf-rate", "config/coco.yaml", "coco.yaml before #23: Caffe RMSProp at TF's 0.004",
            TF_RATE_RMSPROP),
        Row("coco-sgd", "config/coco.yaml", "SGD momentum 0.9 at TF's 0.004", TF_RATE_SGD),
        Row("coco-tf-rmsprop", "config/coco.yaml", "coco.yaml: TF's RMSProp (TFRMSProp, patch 0043)"),
        Row("coco-scratch", "config/coco-scratch.yaml", "coco-scratch.yaml: SGD, 500-iteration warm-up, cosine"),
        Row("coco-tf-rmsprop-converted", "config/coco.yaml", "coco.yaml from a converted ImageNet-format start",
            start="converted"),
        Row("move-rmsprop-tf-rate", "config/coco.yaml", "Caffe RMSProp at TF's 0.004 (coco.yaml before #23)",
            TF_RATE_RMSPROP, start="converted", max_iter=100),
        Row("move-sgd", "config/coco.yaml", "SGD momentum 0.9 at TF's 0.004", TF_RATE_SGD,
            start="converted", max_iter=100),
        Row("move-tf-rmsprop", "config/coco.yaml", "TF's RMSProp (coco.yaml)", start="converted", max_iter=100),
    )
}  # fmt: skip


def scaled_solver(recipe: dict, row: Row) -> dict:
    """The recipe's solver with the row's keys, scaled to batch 8 (linear rule), for this benchmark's run."""
    solver = {**recipe.get("solver", {}), **row.solver}
    recipe_batch = recipe["model"].get("train_batch_size", BATCH) * solver.get("iter_size", 1)
    solver["base_lr"] = solver.get("base_lr", 0.005) * BATCH / recipe_batch
    if solver.get("lr_policy") == "multistep" and "steps" not in row.solver:
        solver["steps"] = [int(row.max_iter * 0.7), int(row.max_iter * 0.9)]
    return solver | {
        "iter_size": 1,
        "max_iter": row.max_iter,
        "snapshot": 250 if row.max_iter > 250 else row.max_iter,
        "test_interval": 100000,  # scored here, on the same images, with pycocotools
        "display": 10,
        "average_loss": 10,
        "random_seed": 1,
    }


def row_config(row: Row, out: Path) -> dict:
    recipe = yaml.safe_load((ROOT / row.recipe).read_text())
    split = {"instances": str(COCO_MINI / "annotations/instances_mini.json"), "images": str(COCO_MINI / "images")}
    model = copy.deepcopy(recipe["model"]) | row.model | {"train_batch_size": BATCH, "test_batch_size": BATCH}
    config = {
        "caffe": {"device": "cpu"},
        "dataset": {"source": "local", "local": {"trainval": split, "test": split}},
        "labelmap": {"mode": "coco81"},
        "model": model,
        "solver": scaled_solver(recipe, row),
        "train": {"device": "cpu"},
    }
    if row.start == "converted":
        weights = imagenet_format_start(out.parent / "imagenet_start.pth")
        config["train"] |= {
            "initial_weights": str(weights),
            "initial_weights_format": "torchvision",
            "initial_weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()[:8],
        }
    return config


def imagenet_format_start(path: Path) -> Path:
    """Random torchvision mobilenet_v2 weights whose BatchNorm statistics are measured on coco-mini."""
    if not path.exists():
        import torch

        from tests.support.imagenet_nets import calibrated_mobilenet_v2

        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two row processes may both make it
        torch.save(calibrated_mobilenet_v2(COCO_MINI, width=1.0, seed=3).state_dict(), partial)
        partial.replace(path)
    return path


def prepare(row: Row, workdir: Path, threads: int) -> Path:
    """Data, LMDBs, prototxts (and converted weights) for ``row`` through the real workflow."""
    if not (workdir / "Snakefile").exists():
        copy_workflow(ROOT, workdir)
    (workdir / "row.yaml").write_text(yaml.safe_dump(row_config(row, workdir)))
    targets = ["results/model/solver.prototxt", "results/lmdb/trainval_lmdb", "results/lmdb/test_lmdb"]
    if row.start == "converted":
        targets.append("resources/weights/initial_converted.caffemodel")
    args = ["--cores", str(threads), *targets, "--configfile", "config/config.yaml", "row.yaml"]
    result = run_snakemake(workdir, args, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"{row.name}: preparing the workflow failed:\n{output_tail(result)}")
    return workdir


def initial_weights(workdir: Path, row: Row, path: Path) -> Path:
    """The weights at iteration 0: the solver's seeded fillers, with the converted backbone copied over."""
    import caffe
    from ssdlite_coco.train.data_stream import save_without_runtime_fields

    solver = caffe.get_solver(str(workdir / "results/model/solver.prototxt"))
    if row.start == "converted":
        solver.net.copy_from(str(workdir / "resources/weights/initial_converted.caffemodel"))
    save_without_runtime_fields(solver.net, path)
    return path


def score(workdir: Path, weights: Path, threads: int) -> dict:
    split = TestSplit.read(
        workdir / "results/model/test.prototxt",
        workdir / "results/lmdb/test_lmdb",
        workdir / "results/labelmap/test_name_size.txt",
        workdir / "results/labelmap/labelmap.prototxt",
        workdir / "results/data/test/instances.json",
    )
    metrics, _, _ = evaluate_test_split(split, weights, BATCH, threads, log=lambda message: None)
    return {"AP": metrics["stats"]["AP"], "AP50": metrics["stats"]["AP50"]}


def precise_bn(workdir: Path, weights: Path, out: Path, batches: int = PRECISE_BN_BATCHES) -> Path:
    """``weights`` with every BatchNorm's statistics re-estimated on ``batches`` training batches (detectron2's
    PreciseBN): the running averages restarted, then forward passes of the train net, whose BatchNorm layers
    accumulate the batch statistics (Caffe's average is normalized by its own factor, so restarting is exact)."""
    import caffe

    net = caffe.Net(str(workdir / "results/model/train.prototxt"), caffe.TRAIN, weights=str(weights))
    for name, layer in zip(net._layer_names, net.layers, strict=True):
        if layer.type == "BatchNorm":
            for blob in net.params[name]:
                blob.data[...] = 0
    for _ in range(batches):
        net.forward()
    save_without_runtime_fields(net, out)
    return out


def layer_movement(start: Path, end: Path) -> dict[str, float]:
    """||W_end - W_start|| / ||W_start|| of the first backbone convolutions (read from the caffemodels)."""
    first, last = read_caffemodel(start), read_caffemodel(end)
    return {
        layer: float(np.linalg.norm(last[layer][0] - first[layer][0]) / np.linalg.norm(first[layer][0]))
        for layer in FIRST_LAYERS
        if layer in first
    }


def snapshot_weights(workdir: Path, iteration: int) -> Path | None:
    return next(iter(workdir.glob(f"snapshots/**/*_iter_{iteration}.caffemodel")), None)


def score_snapshots(row: Row, workdir: Path, threads: int) -> dict:
    """AP / AP50 at each scored iteration, as trained and with PreciseBN statistics (``AP50_precise_bn``)."""
    scores = {}
    for iteration in (i for i in SCORED_AT if i <= row.max_iter):
        weights = workdir / INITIAL_WEIGHTS if iteration == 0 else snapshot_weights(workdir, iteration)
        if weights is None:
            continue
        scores[str(iteration)] = score(workdir, weights, threads)
        recalibrated = precise_bn(workdir, weights, workdir / f"precise_bn_{iteration}.caffemodel")
        scores[str(iteration)] |= {f"{k}_precise_bn": v for k, v in score(workdir, recalibrated, threads).items()}
        print(f"[{row.name}] iteration {iteration}: {scores[str(iteration)]}", flush=True)
    return scores


def run_row(row: Row, out: Path, threads: int) -> dict:
    workdir = prepare(row, out / row.name, threads)
    os.chdir(workdir)  # the nets name the LMDBs relative to the workflow, as the rules run them
    start = initial_weights(workdir, row, workdir / INITIAL_WEIGHTS)
    converted = workdir / "resources/weights/initial_converted.caffemodel"
    run = TrainRun(
        solver=workdir / "results/model/solver.prototxt",
        weights_out=workdir / "final.caffemodel",
        log_csv_out=workdir / "train_log.csv",
        snapshot_root=workdir / "snapshots",
        settings=train_settings(keep_snapshots=10, data_threads=threads),
        threads=threads,
        initial_weights=converted if row.start == "converted" else None,
        progress_interval=50,
    )
    started = time.monotonic()
    stopped = None
    try:
        train(run, log=lambda message: print(f"[{row.name}] {message}", flush=True))
    except TrainingError as error:  # a diverging row stops at its guard: score what it reached
        stopped = str(error)
        print(f"[{row.name}] stopped: {stopped}", flush=True)
    train_seconds = time.monotonic() - started
    scores = score_snapshots(row, workdir, threads)
    final = snapshot_weights(workdir, row.max_iter)
    result = {
        "row": row.name,
        "description": row.description,
        "solver": yaml.safe_load((workdir / "row.yaml").read_text())["solver"],
        "start": row.start,
        "scores": scores,
        "stopped": stopped,
        "train_seconds": round(train_seconds, 1),
        "threads": threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "movement": layer_movement(start, final) if final else {},
    }
    (workdir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def losses(out: Path, name: str):
    import pandas as pd

    frame = pd.read_csv(out / name / "train_log.csv").dropna(subset=["loss"])
    return frame.iteration.to_numpy(), frame.loss.rolling(20, min_periods=1).mean().to_numpy()


def table(out: Path) -> str:
    results = [json.loads(path.read_text()) for path in sorted(out.glob("*/result.json"))]
    learning = [r for r in results if r["row"] in ROWS and ROWS[r["row"]].max_iter == SCORED_AT[-1]]
    header = " | ".join(f"it {i}: AP50 (PreciseBN) / AP / loss" for i in SCORED_AT)
    lines = [f"| row | solver at batch 8 | {header} |"]
    lines.append("|---|---|" + "---|" * len(SCORED_AT))
    for result in learning:
        iterations, loss = losses(out, result["row"])
        cells = []
        for i in SCORED_AT:
            found = result["scores"].get(str(i))
            at = loss[iterations <= max(i - 1, 0)]
            loss_text = f"{at[-1]:.2f}" if len(at) else "-"
            if found is None:
                cells.append("stopped")
                continue
            precise = f" ({found['AP50_precise_bn']:.3f})" if "AP50_precise_bn" in found else ""
            cells.append(f"{found['AP50']:.3f}{precise} / {found['AP']:.3f} / {loss_text}")
        solver = result["solver"]
        text = f"{solver['type']} {solver['base_lr']:.3g} {solver['lr_policy']}"
        if solver.get("warmup_iter"):
            text += f", warm-up {solver['warmup_iter']}"
        lines.append(f"| {result['row']} ({ROWS[result['row']].description}) | {text} | " + " | ".join(cells) + " |")
    moves = [r for r in results if r["row"].startswith("move-")]
    if moves:
        lines += ["", "| first 100 iterations from the converted start | " + " | ".join(FIRST_LAYERS) + " |"]
        lines.append("|---|" + "---|" * len(FIRST_LAYERS))
        for result in moves:
            cells = [f"{result['movement'].get(layer, math.nan):.4f}" for layer in FIRST_LAYERS]
            lines.append(f"| {ROWS[result['row']].description} | " + " | ".join(cells) + " |")
    if results:
        lines += ["", f"Machine: {results[0]['machine']}; train seconds per row: "
                  + ", ".join(f"{r['row']} {r['train_seconds']:.0f}" for r in results)]  # fmt: skip
    return "\n".join(lines)


def figure(out: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    for name, row in ROWS.items():
        result_path = out / name / "result.json"
        if row.max_iter != SCORED_AT[-1] or not result_path.exists():
            continue
        iterations, loss = losses(out, name)
        ax_loss.plot(iterations, loss, label=name)
        scores = json.loads(result_path.read_text())["scores"]
        line = ax_ap.plot([int(i) for i in scores], [s["AP50"] for s in scores.values()], marker="o", label=name)
        precise = [s.get("AP50_precise_bn", math.nan) for s in scores.values()]
        ax_ap.plot([int(i) for i in scores], precise, linestyle="--", marker="x", color=line[0].get_color())
    ax_loss.set(xlabel="iteration", ylabel="training loss (mean of 20)", yscale="log", title="loss")
    ax_ap.set(xlabel="iteration", ylabel="AP50 on the 128 training images", title="AP50 (dashed: PreciseBN)")
    ax_ap.set_yscale("symlog", linthresh=1e-3)
    ax_ap.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(table(out))
        figure(out, Path(args.figure))
        print(f"figure: {args.figure}")
        return
    for name in args.rows:
        if (out / name / "result.json").exists():
            print(f"[{name}] done already: {out / name / 'result.json'}")
            continue
        run_row(ROWS[name], out, args.threads)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="Caffe and data-layer threads")
    parser.add_argument("--out", default=str(ROOT / "bench-out/real_data_learning"))
    parser.add_argument("--table", action="store_true", help="print the table of the finished rows")
    parser.add_argument("--figure", default=str(ROOT / "bench/real_data_learning.png"))
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
