"""Compare Caffe snapshots of one training step taken in two modes (CPU vs GPU, depthwise kernels vs not).

    python3 bench/gpu/compare_snapshots.py --layers NETS/layers.json --reference cpu=RUN/cpu_iter_1 \
        --candidate gpu=RUN/gpu_iter_1 [--candidate ...] [--noise-floor LABEL] [--json out.json]

Each RUN/NAME_iter_1 prefix names the .caffemodel and .solverstate that ``caffe train`` wrote after one
SGD step from the same weights on the same deterministic batch (bundle_nets.py's compare net; solver:
no momentum, no weight decay). The solverstate's history is then lr x the gradient of every learnable
blob, and the caffemodel holds the BatchNorm running means and variances, i.e. the batch statistics of
every convolution's output (forward). Blobs are compared as max |a - b| / max |a| (relative to the
blob's largest value) and ||a - b|| / ||a||, grouped by layer kind (depthwise 3x3, 1x1, ReLU6 ...).
Needs only numpy: the protobuf wire format is decoded here (no caffe_pb2, no protobuf package).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# caffe.proto field numbers
NET_LAYER = 100  # NetParameter.layer (LayerParameter)
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = 1, 2, 7
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_DIFF, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 6, 7, 8
SHAPE_DIM = 1
STATE_ITER, STATE_HISTORY = 1, 3


class WireError(ValueError):
    pass


def varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(buf: memoryview):
    """(field number, wire type, value) of one message: ints for varints, memoryviews otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise WireError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise WireError("truncated message")
        yield number, wire, value


def blob(buf: memoryview):
    import numpy as np

    dims, legacy, floats, doubles = [], {}, [], []
    for number, _, value in fields(buf):
        if number == BLOB_SHAPE:
            for sub, sub_wire, sub_value in fields(value):
                if sub == SHAPE_DIM and sub_wire == 2:
                    pos = 0
                    while pos < len(sub_value):
                        dim, pos = varint(sub_value, pos)
                        dims.append(dim)
                elif sub == SHAPE_DIM:
                    dims.append(sub_value)
        elif number in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH):
            legacy[number] = value
        elif number == BLOB_DATA:
            floats.append(np.frombuffer(value, dtype="<f4"))  # packed, or one float per field
        elif number == BLOB_DOUBLE_DATA:
            doubles.append(np.frombuffer(value, dtype="<f8"))
    if not dims and legacy:
        dims = [legacy.get(n, 1) for n in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH)]
    parts = floats or doubles
    data = np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
    expected = int(np.prod(dims)) if dims else data.size
    if data.size != expected:
        raise WireError(f"blob of shape {dims} holds {data.size} values")
    return data.reshape(dims) if dims else data


def read_caffemodel(path: Path) -> list[tuple[str, str, int, object]]:
    """(layer name, layer type, blob index, array) for every blob, in the net's order."""
    out = []
    for number, _, value in fields(memoryview(path.read_bytes())):
        if number != NET_LAYER:
            continue
        name, kind, blobs = "", "", []
        for sub, _, sub_value in fields(value):
            if sub == LAYER_NAME:
                name = bytes(sub_value).decode()
            elif sub == LAYER_TYPE:
                kind = bytes(sub_value).decode()
            elif sub == LAYER_BLOBS:
                blobs.append(blob(sub_value))
        out.extend((name, kind, index, array) for index, array in enumerate(blobs))
    return out


def read_history(path: Path) -> tuple[int, list]:
    iteration, history = 0, []
    for number, _, value in fields(memoryview(path.read_bytes())):
        if number == STATE_ITER:
            iteration = value
        elif number == STATE_HISTORY:
            history.append(blob(value))
    return iteration, history


def load_run(prefix: str) -> dict:
    model, state = Path(prefix + ".caffemodel"), Path(prefix + ".solverstate")
    for path in (model, state):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: did that caffe train run finish?")
    blobs = read_caffemodel(model)
    iteration, history = read_history(state)
    if len(history) != len(blobs):
        raise WireError(f"{state}: {len(history)} history blobs for {len(blobs)} net blobs (shared parameters?)")
    for (name, _, index, array), hist in zip(blobs, history, strict=True):
        if array.shape != hist.shape:
            raise WireError(f"{state}: history of {name}/{index} has shape {hist.shape}, the blob {array.shape}")
    return {"blobs": blobs, "history": history, "iter": iteration}


def errors(a, b) -> dict:
    import numpy as np

    diff = np.abs(a - b)
    scale = float(np.abs(a).max()) if a.size else 0.0
    norm = float(np.linalg.norm(a))
    finite = bool(np.isfinite(b).all())
    return {
        "max_abs": scale,
        "max_abs_diff": float(diff.max()) if a.size else 0.0,
        "rel_max": float(diff.max()) / scale if scale > 0 else (0.0 if not diff.any() else float("inf")),
        "rel_l2": float(np.linalg.norm(a - b)) / norm if norm > 0 else (0.0 if not diff.any() else float("inf")),
        "finite": finite,
    }


def kind_of(layer_kinds: dict, name: str, caffe_type: str, index: int) -> str:
    kind = layer_kinds.get(name, caffe_type)
    if caffe_type in ("Convolution", "Scale") and index == 1:
        return f"{kind} bias"
    return kind


def batchnorm_forward(name: str, ref: list, cand: list) -> list[dict]:
    """The batch statistics in a BatchNorm layer's blobs (sums scaled by blob 2): the variance relative to
    itself, the mean in units of the channel's standard deviation (means of BN inputs are near 0)."""
    import numpy as np

    out = []
    scale_ref = float(ref[2].ravel()[0]) if ref[2].size else 1.0
    scale_cand = float(cand[2].ravel()[0]) if cand[2].size else 1.0
    scale_ref, scale_cand = scale_ref or 1.0, scale_cand or 1.0
    mean_ref, mean_cand = ref[0] / scale_ref, cand[0] / scale_cand
    var_ref, var_cand = ref[1] / scale_ref, cand[1] / scale_cand
    std = np.sqrt(np.maximum(var_ref, 0) + 1e-12)
    shift = np.abs(mean_cand - mean_ref) / std
    out.append(
        {
            "blob": f"{name}/mean",
            "what": "forward",
            "kind": "BatchNorm batch mean (in std units)",
            "max_abs": float(np.abs(mean_ref).max()),
            "max_abs_diff": float(np.abs(mean_cand - mean_ref).max()),
            "rel_max": float(shift.max()),
            "rel_l2": float(np.sqrt(np.mean(shift**2))),
            "finite": bool(np.isfinite(cand[0]).all()),
        }
    )
    out.append(
        {"blob": f"{name}/variance", "what": "forward", "kind": "BatchNorm batch variance", **errors(var_ref, var_cand)}
    )
    return out


def compare(reference: dict, candidate: dict, layer_kinds: dict, lr: float) -> dict:
    blobs, pending = [], {}
    for (name, caffe_type, index, ref_blob), (cand_name, _, _, cand_blob), ref_hist, cand_hist in zip(
        reference["blobs"], candidate["blobs"], reference["history"], candidate["history"], strict=True
    ):
        if name != cand_name:
            raise WireError(f"the runs are of different nets: blob of {name} against one of {cand_name}")
        if caffe_type == "BatchNorm":
            pending.setdefault(name, ([], []))
            pending[name][0].append(ref_blob)
            pending[name][1].append(cand_blob)
            if len(pending[name][0]) == 3:
                blobs.extend(batchnorm_forward(name, *pending.pop(name)))
            continue
        if not ref_hist.any() and not cand_hist.any():
            continue  # lr_mult 0
        blobs.append(
            {
                "blob": f"{name}/{index}",
                "what": "gradient",
                "kind": kind_of(layer_kinds, name, caffe_type, index),
                **errors(ref_hist / lr, cand_hist / lr),
            }
        )
    by_kind: dict[str, dict] = {}
    for entry in blobs:
        group = by_kind.setdefault(
            f"{entry['what']}: {entry['kind']}",
            {"what": entry["what"], "blobs": 0, "worst_rel_max": 0.0, "worst_rel_l2": 0.0, "worst_blob": ""},
        )
        group["blobs"] += 1
        group["worst_rel_max"] = max(group["worst_rel_max"], entry["rel_max"])
        if entry["rel_l2"] >= group["worst_rel_l2"]:
            group["worst_rel_l2"], group["worst_blob"] = entry["rel_l2"], entry["blob"]
    return {
        "blobs_compared": len(blobs),
        "all_finite": all(e["finite"] for e in blobs),
        "by_kind": dict(sorted(by_kind.items())),
        "blobs": blobs,
    }


def judge(
    result: dict, forward_tolerance: float, gradient_tolerance: float, floor: dict | None, noise_factor: float
) -> None:
    """Adds ok and, per kind, its limit: forward statistics (worst channel of any blob) against
    forward_tolerance, gradients (worst relative L2 error of a blob) against gradient_tolerance; or
    noise_factor x the same measure of the same kind in the noise-floor run (another correct
    implementation) where that is larger."""
    failures = []
    for kind, group in result["by_kind"].items():
        measure, tolerance = (
            ("worst_rel_max", forward_tolerance) if group["what"] == "forward" else ("worst_rel_l2", gradient_tolerance)
        )
        floor_value = floor["by_kind"].get(kind, {}).get(measure, 0.0) if floor else 0.0
        group["limit"], value = max(tolerance, noise_factor * floor_value), group[measure]
        group["ok"] = value <= group["limit"]
        if not group["ok"]:
            failures.append(kind)
    result["ok"] = result["all_finite"] and not failures and result["blobs_compared"] > 0
    result["failed_kinds"] = failures


def labelled(text: str) -> tuple[str, str]:
    label, sep, prefix = text.partition("=")
    if not sep or not label or not prefix:
        raise argparse.ArgumentTypeError(f"expected LABEL=PREFIX, got {text!r}")
    return label, prefix


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=Path, required=True, help="the bundle's nets/layers.json (layer kinds)")
    parser.add_argument("--reference", type=labelled, required=True, help="LABEL=PREFIX of the reference run")
    parser.add_argument(
        "--candidate",
        type=labelled,
        action="append",
        required=True,
        help="LABEL=PREFIX of a run compared with the reference (repeatable)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="the compare solver's base_lr (history = lr x grad)")
    parser.add_argument(
        "--forward-tolerance",
        type=float,
        default=1e-3,
        help="largest error of a BatchNorm batch statistic (variance: relative; mean: in std units)",
    )
    parser.add_argument(
        "--gradient-tolerance",
        type=float,
        default=1e-4,
        help="largest ||a-b||/||a|| of a gradient blob, unless the noise floor allows more",
    )
    parser.add_argument(
        "--noise-floor",
        metavar="LABEL",
        help="a candidate that is another correct implementation (e.g. CPU without the depthwise "
        "kernels): gradients may then differ by up to --noise-factor x its errors, per kind",
    )
    parser.add_argument("--noise-factor", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="write the full comparison here")
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("error: compare_snapshots.py needs numpy", file=sys.stderr)
        return 2
    layer_kinds = {layer["name"]: layer.get("kind", layer["type"]) for layer in json.loads(args.layers.read_text())}
    try:
        reference = load_run(args.reference[1])
        results = {}
        for label, prefix in args.candidate:
            results[label] = compare(reference, load_run(prefix), layer_kinds, args.lr)
    except (OSError, WireError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.noise_floor and args.noise_floor not in results:
        print(f"error: --noise-floor {args.noise_floor} is not one of the candidates", file=sys.stderr)
        return 2
    floor = results.get(args.noise_floor) if args.noise_floor else None
    for label, result in results.items():
        judge(
            result,
            args.forward_tolerance,
            args.gradient_tolerance,
            None if label == args.noise_floor else floor,
            args.noise_factor,
        )
    report = {"reference": args.reference[0], "noise_floor": args.noise_floor, "candidates": results}
    for label, result in results.items():
        verdict = "ok" if result["ok"] else "MISMATCH in " + ", ".join(result["failed_kinds"] or ["non-finite values"])
        if label == args.noise_floor:
            result["role"], verdict = "noise floor", "the noise floor (not judged; absolute limits shown)"
        print(f"{label} vs {args.reference[0]}: {verdict} ({result['blobs_compared']} blobs)")
        for kind, group in result["by_kind"].items():
            print(
                f"  {kind:52s} {group['blobs']:4d} blobs  rel max {group['worst_rel_max']:.1e}"
                f"  rel l2 {group['worst_rel_l2']:.1e}  limit {group['limit']:.1e}"
                f"  {'ok' if group['ok'] else 'OVER'}  ({group['worst_blob']})"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    judged = [result["ok"] for label, result in results.items() if label != args.noise_floor]
    return 0 if all(judged) else 3


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
