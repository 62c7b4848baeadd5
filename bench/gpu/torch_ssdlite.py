"""PyTorch training-step speed of the SSDLite-300 that the GPU bundle's Caffe trains, on CUDA (or CPU).

    python3 bench/gpu/torch_ssdlite.py --layers BUNDLE/nets/layers.json --batches 24 64 \
        [--device cuda] [--modes eager compile] [--steps 20] [--json out.json]

The net is bench/caffe_vs_pytorch.py's layer-by-layer translation of the same Caffe train net (BatchNorm +
Scale as one affine BatchNorm2d, ReLU6), and the step is that script's: forward, its MultiBoxLoss (per-
prediction matching at 0.5, smooth L1, sigmoid cross-entropy with 3:1 hard negatives; a Python loop over
the images), backward, SGD with momentum and weight decay; random images and three random boxes per image.
``compile`` wraps the net (not the loss) in torch.compile. float32 throughout: TF32 is switched off for
matmuls and cuDNN, as Caffe computes in float32. img/s = batch x steps / time of the timed steps, after
warm-up steps (which include compilation). Results are written after every measurement, so that a run
cut short by a timeout still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=Path, required=True, help="the bundle's nets/layers.json")
    parser.add_argument("--batches", type=int, nargs="+", default=[24, 64])
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--modes", nargs="+", choices=["eager", "compile"], default=["eager", "compile"])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per batch and mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--json", type=Path, help="write the results here (rewritten after each measurement)")
    return parser


def make_step(model, optimizer, priors, labels, loss_fn):
    def step(data, with_loss: bool = True):
        optimizer.zero_grad(set_to_none=True)
        loc, conf = model(data)
        loss = loss_fn(loc, conf, priors, labels) if with_loss else loc.square().mean() + conf.square().mean()
        loss.backward()
        optimizer.step()
        return loss

    return step


def measure(torch, step, data, steps: int, warmup: int, device: str, with_loss: bool) -> dict:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    started = time.perf_counter()
    for _ in range(warmup):
        loss = step(data, with_loss)
    sync()
    warm_s = time.perf_counter() - started
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(data, with_loss)
    sync()
    seconds = time.perf_counter() - start
    batch = data.shape[0]
    return {
        "step_ms": 1e3 * seconds / steps,
        "img_per_s": batch * steps / seconds,
        "warmup_s": warm_s,
        "last_loss": float(loss.detach()),
        "steps": steps,
    }


def main(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        print("error: torch_ssdlite.py needs PyTorch (import torch failed)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(BENCH_DIR))
    from caffe_vs_pytorch import INPUT_SIZE, multibox_loss, random_labels, torch_net

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    layers = json.loads(args.layers.read_text())
    results = {"torch": torch.__version__, "device": args.device, "tf32": False, "runs": []}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(0)
        results["cuda"] = torch.version.cuda
        results["cudnn"] = torch.backends.cudnn.version()

    def save():
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")

    status = 0
    for mode in args.modes:  # every batch eager first: compilation may use up the time
        for batch in args.batches:
            entry = {"batch": batch, "mode": mode}
            results["runs"].append(entry)
            try:
                torch.manual_seed(1)
                model = torch_net(layers).to(args.device).train()
                entry["params"] = sum(p.numel() for p in model.parameters())
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=4e-5)
                generator = torch.Generator().manual_seed(1)
                data = (torch.rand(batch, 3, INPUT_SIZE, INPUT_SIZE, generator=generator) * 2 - 1).to(args.device)
                labels = torch.from_numpy(random_labels(batch).reshape(-1, 8)).to(args.device)
                with torch.no_grad():
                    num_priors = model.eval()(data[:1])[0].shape[1] // 4
                model.train()
                corners = torch.rand(num_priors, 2, generator=generator) * 0.8
                priors = torch.cat(
                    [corners, corners + 0.05 + torch.rand(num_priors, 2, generator=generator) * 0.3], dim=1
                ).to(args.device)
                net = torch.compile(model) if mode == "compile" else model
                step = make_step(net, optimizer, priors, labels, multibox_loss)
                entry["with_multibox_loss"] = measure(torch, step, data, args.steps, args.warmup, args.device, True)
                entry["net_only"] = measure(torch, step, data, args.steps, 1, args.device, False)
                if args.device.startswith("cuda"):
                    entry["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    torch.cuda.reset_peak_memory_stats()
                print(
                    f"torch {mode} batch {batch}: {entry['with_multibox_loss']['img_per_s']:.1f} img/s "
                    f"({entry['with_multibox_loss']['step_ms']:.1f} ms/step with the MultiBoxLoss), "
                    f"{entry['net_only']['img_per_s']:.1f} img/s net only",
                    flush=True,
                )
            except Exception as error:  # a failed mode (e.g. no C compiler for inductor) is a result too
                entry["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
                entry["traceback"] = traceback.format_exc()[-4000:]
                print(f"torch {mode} batch {batch}: failed: {entry['error']}", file=sys.stderr, flush=True)
                status = 1
            save()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    save()
    return status


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
