"""Training-step and forward speed of the project's Caffe against PyTorch CPU on MobileNetV2-SSDLite.

    SSDLITE_PYTHON=/tmp/venv/bin/python scripts/with-caffe python bench/caffe_vs_pytorch.py \
        [--baseline-prefix /path/to/stock/caffe/prefix] [--threads 2] [--rounds 7]

The nets come from ``ssdlite_coco.model.nets`` (explicit BatchNorm + Scale, ReLU6, 81 classes, 300x300):
the train net with its data layer replaced by Input blobs (random images, three random boxes per image),
solved by SGD, and the deploy net without DetectionOutput. The PyTorch net is translated layer by layer from
the same NetParameter (BatchNorm + Scale become one affine BatchNorm2d) and its parameter count is checked
against Caffe's. Every measured thing runs in its own worker process (the Caffe under test, optionally a
baseline Caffe build, PyTorch), and the workers take turns step by step, so that load from other processes
spreads over all of them; the script prints medians and ratios, then the time per Caffe layer type.
A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 81
INPUT_SIZE = 300
BOXES_PER_IMAGE = 3
PAUSE_S = 0.2
FORWARD_BURST = 4


# ------------------------------------------------------------------------------------------ net files


def write_nets(out_dir: Path, train_batch: int) -> dict:
    """train.prototxt, solver.prototxt, deploy.prototxt and layers.json (for the PyTorch translation)."""
    from caffe.proto import caffe_pb2

    from ssdlite_coco.caffe_tools.prototxt import format_prototxt
    from ssdlite_coco.common.settings import parse_settings
    from ssdlite_coco.model.nets import ModelOptions, build_net
    from ssdlite_coco.model.settings import ModelSettings

    keys = {"input_size": INPUT_SIZE, "augmentation": False, "backbone_bn": "explicit", "activation": "relu6"}
    settings = parse_settings(ModelSettings, json.dumps(keys | {"train_batch_size": train_batch}))
    # No data layer is kept: the nets read no LMDB or file.
    options = ModelOptions.from_settings(
        settings, NUM_CLASSES, train_source="", test_source="", label_map_file="", name_size_file=None
    )
    generated = build_net(options, "train")
    train = caffe_pb2.NetParameter(name=generated.name)
    data = train.layer.add(name="data", type="Input", top=["data", "label"])
    data.input_param.shape.add(dim=[train_batch, 3, INPUT_SIZE, INPUT_SIZE])
    data.input_param.shape.add(dim=[1, 1, train_batch * BOXES_PER_IMAGE, 8])
    train.layer.extend(layer for layer in generated.layer if layer.type != "AnnotatedData")

    generated = build_net(options, "deploy")
    deploy = caffe_pb2.NetParameter(name=generated.name)
    deploy.layer.extend(layer for layer in generated.layer if layer.type != "DetectionOutput")

    solver = caffe_pb2.SolverParameter(
        net=str(out_dir / "train.prototxt"),
        base_lr=1e-4,
        lr_policy="fixed",
        momentum=0.9,
        weight_decay=4e-5,
        max_iter=1_000_000,
        display=0,
        snapshot=0,
        type="SGD",
    )
    (out_dir / "train.prototxt").write_text(format_prototxt(train))
    (out_dir / "deploy.prototxt").write_text(format_prototxt(deploy))
    (out_dir / "solver.prototxt").write_text(format_prototxt(solver))
    (out_dir / "layers.json").write_text(json.dumps([layer_summary(layer) for layer in train.layer]))
    return {"train_layers": len(train.layer), "deploy_layers": len(deploy.layer)}


def layer_summary(layer) -> dict:
    """What the PyTorch translation needs from a Caffe LayerParameter."""
    summary = {"name": layer.name, "type": layer.type, "bottom": list(layer.bottom), "top": list(layer.top)}
    if layer.type == "Convolution":
        p = layer.convolution_param
        summary.update(
            num_output=p.num_output,
            kernel=p.kernel_size[0],
            stride=p.stride[0] if p.stride else 1,
            pad=p.pad[0] if p.pad else 0,
            group=p.group,
            bias=p.bias_term,
        )
    elif layer.type == "BatchNorm":
        summary.update(eps=layer.batch_norm_param.eps)
    elif layer.type == "Permute":
        summary.update(order=list(layer.permute_param.order))
    elif layer.type == "Concat":
        summary.update(axis=layer.concat_param.axis)
    elif layer.type == "Eltwise":
        summary.update(operation=layer.eltwise_param.operation)
    return summary


# ------------------------------------------------------------------------------------------ Caffe worker


def random_labels(batch: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for item in range(batch):
        for instance in range(BOXES_PER_IMAGE):
            x0, y0 = rng.uniform(0, 0.6, 2)
            w, h = rng.uniform(0.1, 0.4, 2)
            rows.append([item, rng.integers(1, NUM_CLASSES), instance, x0, y0, x0 + w, y0 + h, 0])
    return np.array(rows, dtype=np.float32).reshape(1, 1, -1, 8)


def burst_median(call, burst: int = FORWARD_BURST) -> float:
    """Median time of ``burst`` back-to-back calls after one untimed call: a stream of images, with the
    caches refilled after the other contenders' turns."""
    call()
    times = []
    for _ in range(burst):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def caffe_layer_kind(layer) -> str:
    if layer.type == "Convolution":
        p = layer.convolution_param
        kernel = p.kernel_size[0]
        if p.group > 1 and p.group == p.num_output:
            return f"Convolution depthwise {kernel}x{kernel}"
        return f"Convolution {kernel}x{kernel}"
    return layer.type


def caffe_worker(net_dir: Path) -> None:
    import numpy as np
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    import caffe

    caffe.set_mode_cpu()
    solver = caffe.SGDSolver(str(net_dir / "solver.prototxt"))
    train = solver.net
    rng = np.random.default_rng(1)
    train.blobs["data"].data[...] = rng.uniform(-1, 1, train.blobs["data"].data.shape)
    train.blobs["label"].data[...] = random_labels(train.blobs["data"].data.shape[0])
    deploy = caffe.Net(str(net_dir / "deploy.prototxt"), caffe.TEST)
    deploy.blobs["data"].data[...] = rng.uniform(-1, 1, deploy.blobs["data"].data.shape)
    spec = text_format.Parse((net_dir / "train.prototxt").read_text(), caffe_pb2.NetParameter())
    kinds = {layer.name: caffe_layer_kind(layer) for layer in spec.layer}
    for line in sys.stdin:
        command = line.split()
        if command[0] == "train":
            start = time.perf_counter()
            solver.step(1)
            reply = {"seconds": time.perf_counter() - start}
        elif command[0] == "forward":
            reply = {"seconds": burst_median(deploy.forward)}
        elif command[0] == "params":
            reply = {
                "params": sum(
                    blob.data.size
                    for name, blobs in train.params.items()
                    if train.layer_dict[name].type != "BatchNorm"
                    for blob in blobs
                )
            }
        elif command[0] == "layers":
            # One training step, layer by layer: each layer's forward, then each layer's backward.
            names = list(train._layer_names)
            types = [layer.type for layer in train.layers]  # with the Split layers Caffe inserted
            forward, backward = defaultdict(float), defaultdict(float)
            for i in range(len(names)):
                start = time.perf_counter()
                train._forward(i, i)
                forward[kinds.get(names[i], types[i])] += time.perf_counter() - start
            for i in reversed(range(len(names))):
                start = time.perf_counter()
                train._backward(i, i)
                backward[kinds.get(names[i], types[i])] += time.perf_counter() - start
            reply = {"forward": forward, "backward": backward}
        else:
            reply = {"error": f"unknown command {command[0]}"}
        print(json.dumps(reply), flush=True)


# ------------------------------------------------------------------------------------------ PyTorch worker


def torch_net(layers: list[dict]):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class CaffeGraph(nn.Module):
        """Runs the Caffe layer list; BatchNorm followed by Scale is one affine BatchNorm2d."""

        def __init__(self):
            super().__init__()
            self.steps = []
            self.mods = nn.ModuleDict()
            channels = {"data": 3}
            skip, absent = set(), set()  # layers folded into the previous one; blobs PyTorch does not make
            for index, layer in enumerate(layers):
                kind, name = layer["type"], layer["name"].replace("/", "__").replace(".", "_")
                bottom = layer["bottom"]
                if kind in ("Input", "PriorBox", "MultiBoxLoss", "Silence") or absent & set(bottom):
                    absent.update(t for t in layer["top"] if t != "data")
                    continue
                if layer["name"] in skip:
                    continue
                if kind == "Convolution":
                    self.mods[name] = nn.Conv2d(
                        channels[bottom[0]],
                        layer["num_output"],
                        layer["kernel"],
                        layer["stride"],
                        layer["pad"],
                        groups=layer["group"],
                        bias=layer["bias"],
                    )
                    channels[layer["top"][0]] = layer["num_output"]
                elif kind == "BatchNorm":
                    following = layers[index + 1]
                    affine = following["type"] == "Scale" and following["bottom"] == layer["top"]
                    if affine:
                        skip.add(following["name"])
                    self.mods[name] = nn.BatchNorm2d(
                        channels[bottom[0]], eps=layer["eps"], momentum=0.001, affine=affine
                    )
                    channels[layer["top"][0]] = channels[bottom[0]]
                elif kind in ("ReLU6", "Eltwise"):
                    channels[layer["top"][0]] = channels[bottom[0]]
                elif kind not in ("Permute", "Flatten", "Concat"):
                    raise ValueError(f"no PyTorch translation for Caffe layer type {kind} ({layer['name']})")
                self.steps.append((kind, name, layer))

        def forward(self, data):
            blobs = {"data": data}
            for kind, name, layer in self.steps:
                inputs = [blobs[b] for b in layer["bottom"]]
                if kind in ("Convolution", "BatchNorm"):
                    out = self.mods[name](inputs[0])
                elif kind == "ReLU6":
                    out = F.relu6(inputs[0], inplace=True)
                elif kind == "Eltwise":
                    out = inputs[0] + inputs[1]
                elif kind == "Permute":
                    out = inputs[0].permute(*layer["order"])
                elif kind == "Flatten":
                    out = inputs[0].flatten(1)
                else:
                    out = torch.cat(inputs, dim=layer["axis"])
                blobs[layer["top"][0]] = out
            return blobs["mbox_loc"], blobs["mbox_conf"]

    return CaffeGraph()


def box_iou(a, b):
    import torch

    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def multibox_loss(loc, conf, priors, labels, neg_pos_ratio: float = 3.0):
    """SSD's loss as MultiBoxLoss (LOGISTIC, MAX_NEGATIVE) computes it: per-prediction matching at 0.5,
    encoded smooth-L1 on matched priors, sigmoid cross-entropy on positives and the hardest negatives."""
    import torch
    from torch.nn import functional as F

    batch = loc.shape[0]
    loc = loc.view(batch, -1, 4)
    conf = conf.view(batch, -1, NUM_CLASSES)
    loc_loss, conf_loss, positives = 0.0, 0.0, 0
    centers, sizes = (priors[:, :2] + priors[:, 2:]) / 2, priors[:, 2:] - priors[:, :2]
    for item in range(batch):
        gt = labels[labels[:, 0] == item]
        iou = box_iou(gt[:, 3:7], priors)
        best_iou, best_gt = iou.max(dim=0)
        best_iou[iou.argmax(dim=1)] = 1.0
        positive = best_iou >= 0.5
        matched = gt[best_gt[positive], 3:7]
        gt_centers, gt_sizes = (matched[:, :2] + matched[:, 2:]) / 2, matched[:, 2:] - matched[:, :2]
        target = torch.cat(
            [
                (gt_centers - centers[positive]) / sizes[positive] / 0.1,
                torch.log(gt_sizes / sizes[positive]) / 0.2,
            ],
            dim=1,
        )
        loc_loss = loc_loss + F.smooth_l1_loss(loc[item][positive], target, reduction="sum")
        classes = torch.zeros_like(conf[item])
        classes[positive, gt[best_gt[positive], 1].long()] = 1.0
        classes[~positive, 0] = 1.0
        per_prior = F.binary_cross_entropy_with_logits(conf[item], classes, reduction="none").sum(dim=1)
        num_pos = int(positive.sum())
        negative_loss = per_prior.detach().masked_fill(positive | (best_iou >= 0.5), -1.0)
        hard = negative_loss.topk(min(int(neg_pos_ratio * num_pos), int((~positive).sum()))).indices
        conf_loss = conf_loss + per_prior[positive].sum() + per_prior[hard].sum()
        positives += num_pos
    return (loc_loss + conf_loss) / max(positives, 1)


def torch_worker(net_dir: Path, threads: int, train_batch: int) -> None:
    import torch

    torch.set_num_threads(threads)
    layers = json.loads((net_dir / "layers.json").read_text())
    model = torch_net(layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=4e-5)
    generator = torch.Generator().manual_seed(1)
    data = torch.rand(train_batch, 3, INPUT_SIZE, INPUT_SIZE, generator=generator) * 2 - 1
    single = torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE, generator=generator) * 2 - 1
    labels = torch.from_numpy(random_labels(train_batch).reshape(-1, 8))
    with torch.no_grad():
        num_priors = model.eval()(single)[0].shape[1] // 4
    corners = torch.rand(num_priors, 2, generator=generator) * 0.8
    priors = torch.cat([corners, corners + 0.05 + torch.rand(num_priors, 2, generator=generator) * 0.3], dim=1)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "train":
            model.train()
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loc, conf = model(data)
            multibox_loss(loc, conf, priors, labels).backward()
            optimizer.step()
            reply = {"seconds": time.perf_counter() - start}
        elif command[0] == "forward":
            model.eval()

            def forward():
                with torch.inference_mode():
                    loc, conf = model(single)
                    torch.sigmoid(conf.view(1, -1, NUM_CLASSES))

            reply = {"seconds": burst_median(forward)}
        elif command[0] == "params":
            reply = {"params": sum(p.numel() for p in model.parameters())}
        else:
            reply = {"error": f"unknown command {command[0]}"}
        print(json.dumps(reply), flush=True)


# ------------------------------------------------------------------------------------------ driver


class Worker:
    def __init__(self, label: str, argv: list[str], env: dict):
        self.label = label
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.label} exited (code {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        OPENBLAS_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        GLOG_minloglevel="2",
    )
    return env


def caffe_prefix_env(prefix: Path, threads: int, wait_policy: str | None) -> dict:
    env = thread_env(threads)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    under_test = os.environ.get("SSDLITE_CAFFE_PREFIX")
    rest = [
        p
        for p in env.get("PYTHONPATH", "").split(os.pathsep)
        if p and not (under_test and Path(p) == Path(under_test) / "python")
    ]
    env["PYTHONPATH"] = os.pathsep.join([str(prefix / "python"), str(REPO_ROOT), *rest])
    return env


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--caffe-prefix",
        type=Path,
        default=os.environ.get("SSDLITE_CAFFE_PREFIX"),
        help="Caffe prefix under test (default: $SSDLITE_CAFFE_PREFIX, set by scripts/with-caffe)",
    )
    parser.add_argument(
        "--baseline-prefix",
        type=Path,
        default=None,
        help="a second Caffe prefix (e.g. built without the speed patches) measured alongside",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7, help="timed training steps per contender")
    parser.add_argument(
        "--forward-rounds", type=int, default=15, help="turns per contender, each 1 + 4 batch-1 forwards"
    )
    parser.add_argument("--layer-rounds", type=int, default=5, help="layer-by-layer training steps per Caffe")
    parser.add_argument(
        "--caffe-omp-wait-policy",
        choices=["ACTIVE", "PASSIVE"],
        default=None,
        help="OMP_WAIT_POLICY for the Caffe workers (default: unset; pycaffe then sets GOMP_SPINCOUNT=1000)",
    )
    parser.add_argument("--no-torch", action="store_true", help="compare Caffe builds only")
    parser.add_argument("--json", type=Path, default=None, help="also write the medians here")
    parser.add_argument("--worker", choices=["caffe", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--net-dir", type=Path, help=argparse.SUPPRESS)
    return parser


def median_times(workers: list[Worker], command: str, rounds: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        for worker in workers:
            worker.ask(command)
    times = defaultdict(list)
    for _ in range(rounds):
        for worker in workers:
            time.sleep(PAUSE_S)  # lets the previous contender's spinning threads fall asleep
            times[worker.label].append(worker.ask(command)["seconds"])
    return {label: statistics.median(values) for label, values in times.items()}


def layer_tables(workers: list[Worker], rounds: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per Caffe worker: {layer type: {"forward": s, "backward": s}}, medians over rounds taken in turns."""
    samples = defaultdict(list)
    for _ in range(rounds):
        for worker in workers:
            time.sleep(PAUSE_S)
            reply = worker.ask("layers")
            for direction in ("forward", "backward"):
                for kind, seconds in reply[direction].items():
                    samples[(worker.label, kind, direction)].append(seconds)
    tables = defaultdict(lambda: defaultdict(dict))
    for (label, kind, direction), values in samples.items():
        tables[label][kind][direction] = statistics.median(values)
    return tables


def print_layer_tables(tables: dict[str, dict]) -> None:
    labels = list(tables)
    kinds = sorted({k for t in tables.values() for k in t}, key=lambda k: -sum(tables[labels[0]].get(k, {}).values()))
    header = f"{'layer type':34s}" + "".join(
        f"{label + ' fwd':>18s}{label + ' bwd':>18s}{'share':>7s}" for label in labels
    )
    print(header)
    totals = {label: sum(sum(v.values()) for v in tables[label].values()) for label in labels}
    for kind in kinds:
        row = f"{kind:34s}"
        for label in labels:
            entry = tables[label].get(kind, {})
            share = 100 * sum(entry.values()) / totals[label]
            fwd, bwd = entry.get("forward", 0) * 1e3, entry.get("backward", 0) * 1e3
            row += f"{fwd:16.1f}ms{bwd:16.1f}ms{share:6.1f}%"
        print(row)
    print(f"{'total':34s}" + "".join(f"{totals[label] * 1e3:34.1f}ms{'':7s}" for label in labels))


def main(args: argparse.Namespace) -> int:
    if args.worker == "caffe":
        caffe_worker(args.net_dir)
        return 0
    if args.worker == "torch":
        torch_worker(args.net_dir, args.threads, args.train_batch)
        return 0
    if args.caffe_prefix is None:
        print("error: no Caffe prefix: run under scripts/with-caffe or pass --caffe-prefix", file=sys.stderr)
        return 1
    this = [sys.executable, str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory(prefix="ssdlite-bench-") as tmp:
        net_dir = Path(tmp)
        write_nets(net_dir, args.train_batch)
        common = [
            "--net-dir",
            str(net_dir),
            "--threads",
            str(args.threads),
            "--train-batch",
            str(args.train_batch),
        ]
        caffes = [("caffe", args.caffe_prefix)]
        if args.baseline_prefix:
            caffes.append(("baseline", args.baseline_prefix))
        workers = [
            Worker(
                label,
                this + ["--worker", "caffe"] + common,
                caffe_prefix_env(Path(prefix), args.threads, args.caffe_omp_wait_policy),
            )
            for label, prefix in caffes
        ]
        if not args.no_torch:
            workers.append(Worker("torch", this + ["--worker", "torch"] + common, thread_env(args.threads)))
        try:
            params = {w.label: w.ask("params")["params"] for w in workers}
            print(f"learnable parameters: {params}")
            if len(set(params.values())) != 1:
                print(
                    "error: the nets differ in parameter count; the comparison would be meaningless",
                    file=sys.stderr,
                )
                return 1
            policy = args.caffe_omp_wait_policy or "unset (pycaffe: GOMP_SPINCOUNT=1000)"
            print(
                f"threads {args.threads}, Caffe OMP_WAIT_POLICY {policy}, "
                f"{INPUT_SIZE}x{INPUT_SIZE}, {NUM_CLASSES} classes; "
                f"contenders alternate; medians of {args.rounds} training steps "
                f"and of {args.forward_rounds} turns of {FORWARD_BURST} warm forwards"
            )
            train = median_times(workers, "train", args.rounds)
            forward = median_times(workers, "forward", args.forward_rounds, warmup=3)
            tables = layer_tables([w for w in workers if w.label != "torch"], args.layer_rounds)
        finally:
            for worker in workers:
                worker.close()
    print(f"\n{'':10s}{'train step (batch ' + str(args.train_batch) + ')':>26s}{'img/s':>9s}{'forward (batch 1)':>20s}")
    for label in train:
        print(
            f"{label:10s}{train[label] * 1e3:24.0f}ms{args.train_batch / train[label]:9.2f}"
            f"{forward[label] * 1e3:18.1f}ms"
        )
    ratios = {}
    if "torch" in train:
        for label, _ in caffes:
            ratios[label] = {
                "train_img_per_s_vs_torch": train["torch"] / train[label],
                "forward_speed_vs_torch": forward["torch"] / forward[label],
            }
            print(
                f"{label}: training step {ratios[label]['train_img_per_s_vs_torch']:.2f}x PyTorch img/s, "
                f"forward {ratios[label]['forward_speed_vs_torch']:.2f}x PyTorch speed"
            )
    if args.baseline_prefix:
        print(
            f"caffe vs baseline: training step {train['baseline'] / train['caffe']:.2f}x, "
            f"forward {forward['baseline'] / forward['caffe']:.2f}x faster"
        )
    print("\nCaffe time per layer type, one training step taken layer by layer (medians):")
    print_layer_tables(tables)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "train_s": train,
                    "forward_s": forward,
                    "ratios": ratios,
                    "layers_s": tables,
                    "params": params,
                    "threads": args.threads,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
