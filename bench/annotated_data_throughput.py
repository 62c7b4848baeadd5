"""Throughput (images/s) of Caffe's AnnotatedData layer with the upstream SSDLite COCO training augmentation,
for each count of item threads (``data_param.threads``, patch 0040), all in one run.

Builds a small LMDB of AnnotatedDatum from coco-mini in a temporary directory, then times a net made of the
data layer of the upstream train prototxt (distortion, expansion, batch sampling, 300x300 resize with
random interpolation, mirror; or resize only) alone, after the prefetch queue is drained. For every thread
count it also hashes the first batches of a fresh net with the same seed: the digests must be equal (the
batches do not depend on the thread count). Run with pycaffe importable, on an otherwise idle machine:

    scripts/with-caffe python bench/annotated_data_throughput.py --threads 1 2
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
TRANSFORMS = ("full", "resize-only")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-dir", type=Path, default=SHARED_DIR / "datasets" / "coco-mini")
    parser.add_argument(
        "--train-prototxt",
        type=Path,
        default=SHARED_DIR / "reference" / "upstream" / "chuanqi305-ssdlite-coco-train.prototxt",
        help="net whose first layer (AnnotatedData) is timed",
    )
    parser.add_argument(
        "--transform", choices=TRANSFORMS, nargs="+", default=list(TRANSFORMS), help="resize-only: no augmentation"
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="item thread counts to compare")
    parser.add_argument("--hashed", type=int, default=3, help="first batches hashed to compare thread counts")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--batches", type=int, default=20, help="batches timed")
    parser.add_argument("--warmup", type=int, default=4, help="batches run before timing")
    parser.add_argument("--seed", type=int, default=1)
    return parser


def write_coco_lmdb(coco_dir: Path, path: Path) -> int:
    """coco-mini as encoded 3-channel AnnotatedDatum (contiguous labels); returns the image count."""
    import lmdb
    from caffe.proto import caffe_pb2
    from PIL import Image

    data = json.loads((coco_dir / "annotations" / "instances_mini.json").read_text())
    label_of = {c["id"]: i + 1 for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    boxes_of: dict[int, list] = {}
    for ann in data["annotations"]:
        boxes_of.setdefault(ann["image_id"], []).append(ann)
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for index, image in enumerate(sorted(data["images"], key=lambda i: i["id"])):
            raw = (coco_dir / "images" / image["file_name"]).read_bytes()
            if Image.open(io.BytesIO(raw)).mode != "RGB":
                buffer = io.BytesIO()
                Image.open(io.BytesIO(raw)).convert("RGB").save(buffer, format="JPEG", quality=95)
                raw = buffer.getvalue()
            anno_datum = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
            anno_datum.datum.encoded = True
            anno_datum.datum.data = raw
            groups = {}
            for ann in boxes_of.get(image["id"], []):
                x, y, w, h = ann["bbox"]
                if w <= 0 or h <= 0:
                    continue
                label = label_of[ann["category_id"]]
                if label not in groups:
                    groups[label] = anno_datum.annotation_group.add(group_label=label)
                annotation = groups[label].annotation.add(instance_id=len(groups[label].annotation))
                annotation.bbox.xmin = x / image["width"]
                annotation.bbox.ymin = y / image["height"]
                annotation.bbox.xmax = min(x + w, image["width"]) / image["width"]
                annotation.bbox.ymax = min(y + h, image["height"]) / image["height"]
                annotation.bbox.difficult = bool(ann["iscrowd"])
            txn.put(f"{index:08d}".encode(), anno_datum.SerializeToString())
    env.close()
    return len(data["images"])


def data_only_net(
    train_prototxt: Path, source: Path, batch_size: int, transform: str, out: Path, threads: int = 1
) -> None:
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    upstream = text_format.Parse(train_prototxt.read_text(), caffe_pb2.NetParameter())
    net = caffe_pb2.NetParameter(name="annotated_data_throughput")
    layer = net.layer.add()
    layer.CopyFrom(upstream.layer[0])
    layer.data_param.source = str(source)
    layer.data_param.batch_size = batch_size
    if threads != 1:  # unset at 1, so that the script also times a Caffe without patch 0040 (--threads 1)
        layer.data_param.threads = threads
    layer.annotated_data_param.ClearField("label_map_file")
    if transform == "resize-only":
        for field in ("distort_param", "expand_param", "emit_constraint"):
            layer.transform_param.ClearField(field)
        layer.transform_param.mirror = False
        del layer.transform_param.resize_param.interp_mode[1:]
        layer.annotated_data_param.ClearField("batch_sampler")
    out.write_text(text_format.MessageToString(net))


def measure(net_path: Path, args: argparse.Namespace) -> tuple[float, str, tuple]:
    """(img/s, digest of the first ``args.hashed`` batches, data shape) of a fresh net seeded with ``args.seed``."""
    import caffe

    caffe.set_mode_cpu()
    caffe.set_random_seed(args.seed)
    net = caffe.Net(str(net_path), caffe.TRAIN)
    digest = hashlib.sha256()
    for index in range(max(args.warmup, args.hashed)):
        net.forward()
        if index < args.hashed:
            digest.update(net.blobs["data"].data.tobytes())
            digest.update(net.blobs["label"].data.tobytes())
    start = time.perf_counter()
    for _ in range(args.batches):
        net.forward()
    seconds = time.perf_counter() - start
    shape = net.blobs["data"].data.shape
    del net
    return args.batches * args.batch_size / seconds, digest.hexdigest()[:16], shape


def main(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="annotated_data_throughput_") as tmp:
        tmp_dir = Path(tmp)
        images = write_coco_lmdb(args.coco_dir, tmp_dir / "lmdb")
        for transform in args.transform:
            for threads in args.threads:
                net_path = tmp_dir / f"net_{transform}_{threads}.prototxt"
                data_only_net(args.train_prototxt, tmp_dir / "lmdb", args.batch_size, transform, net_path, threads)
                rate, digest, shape = measure(net_path, args)
                rows.append({"transform": transform, "threads": threads, "img_per_s": rate, "digest": digest})
    print(
        f"AnnotatedData, {shape[2]}x{shape[3]}, batch {args.batch_size}, {images} coco-mini images, "
        f"{args.batches} batches timed, {os.cpu_count()} CPUs ({cpu_model()})"
    )
    print("| augmentation | threads | img/s | vs 1 thread | img/s per thread | first batches (sha256) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        base = next(r["img_per_s"] for r in rows if r["transform"] == row["transform"])
        row["scaling"] = row["img_per_s"] / base
        print(
            f"| {row['transform']} | {row['threads']} | {row['img_per_s']:.1f} | {row['scaling']:.2f}x | "
            f"{row['img_per_s'] / row['threads']:.1f} | {row['digest']} |"
        )
    for transform in args.transform:
        digests = {row["digest"] for row in rows if row["transform"] == transform}
        print(f"{transform}: batches {'identical' if len(digests) == 1 else 'DIFFERENT'} across thread counts")
    return rows


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main(get_args_parser().parse_args())
