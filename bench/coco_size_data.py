"""The COCO-size data run: a 118,287-record trainval LMDB built by the project's builder, then read by Caffe's
AnnotatedData layer with the full SSD augmentation, and the first batch of a run resumed at a late iteration.

coco-mini's 128 images are repeated (``--repeat 925``: 118,400 records, distinct file names and ids; symlinks,
so the image files cost no disk and are read from the page cache; the JPEG decode and check, protobuf, LMDB
writes and fsync are the real ones). Prints the build's wall time, records/s, peak memory and LMDB size, then
the data layer's img/s on that LMDB per thread count, and how long a net started at ``start_item`` of
iteration ``--resume-iteration`` takes to give its first batch (the reader's seek). Needs about 20 GB free
under ``--workdir``. Run with pycaffe importable, on an otherwise idle machine:

    scripts/with-caffe python bench/coco_size_data.py --workdir /path/with/20GB
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from annotated_data_throughput import cpu_model, data_only_net  # noqa: E402
from lmdb_build import make_split, trainval_settings  # noqa: E402

from ssdlite_coco.lmdb.writer import BuildOptions, build_lmdb  # noqa: E402

SHARED_DIR = BENCH_DIR.parent.parent / "shared"
COCO_TRAIN2017_IMAGES = 118_287


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-dir", type=Path, default=SHARED_DIR / "datasets" / "coco-mini")
    parser.add_argument(
        "--train-prototxt",
        type=Path,
        default=SHARED_DIR / "reference" / "upstream" / "chuanqi305-ssdlite-coco-train.prototxt",
    )
    parser.add_argument("--repeat", type=int, default=925, help="copies of coco-mini (128 images each)")
    parser.add_argument("--readers", type=int, default=4, help="reader threads of the build")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="data layer thread counts")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--resume-iteration", type=int, default=150_000, help="iteration of the resumed start")
    parser.add_argument("--workdir", type=Path, default=None, help="where the split and LMDB go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the LMDB (e.g. to rerun the read part)")
    return parser


def peak_rss_mib() -> float:
    """Largest resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_rate(net_path: Path, batches: int, batch_size: int) -> tuple[float, float]:
    """(seconds to the first batch of a fresh net, img/s of ``batches`` batches after 4 warm-up batches)."""
    import caffe

    caffe.set_mode_cpu()
    caffe.set_random_seed(1)
    start = time.perf_counter()
    net = caffe.Net(str(net_path), caffe.TRAIN)
    net.forward()
    first = time.perf_counter() - start
    for _ in range(3):
        net.forward()
    start = time.perf_counter()
    for _ in range(batches):
        net.forward()
    rate = batches * batch_size / (time.perf_counter() - start)
    del net
    return first, rate


def main(args: argparse.Namespace) -> int:
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="coco-size-data-"))
    workdir.mkdir(parents=True, exist_ok=True)
    lmdb_path = workdir / "trainval_lmdb"
    try:
        instances, images_dir, labelmap = make_split(args.coco_dir, args.repeat, workdir / "split", link=True)
        records = 128 * args.repeat
        print(f"{records} records (COCO train2017: {COCO_TRAIN2017_IMAGES}); {cpu_model()}, {args.readers} readers")
        rss_before = peak_rss_mib()
        start = time.perf_counter()
        build_lmdb(
            instances,
            images_dir,
            labelmap,
            lmdb_path,
            workdir / "report.json",
            BuildOptions(trainval_settings(args.readers), "trainval", progress=True),
        )
        seconds = time.perf_counter() - start
        size = sum(path.stat().st_size for path in lmdb_path.iterdir())
        print(
            f"build: {seconds:.0f} s, {records / seconds:.0f} records/s, peak RSS {peak_rss_mib():.0f} MiB "
            f"(before the build {rss_before:.0f} MiB), LMDB {size / 2**30:.2f} GiB "
            f"({size / records / 1024:.0f} KiB/record)"
        )
        print("| data layer threads | first batch (s) | img/s | first batch resumed at iteration "
              f"{args.resume_iteration} (s) |")  # fmt: skip
        print("|---|---|---|---|")
        for threads in args.threads:
            net_path = workdir / f"net_{threads}.prototxt"
            data_only_net(args.train_prototxt, lmdb_path, args.batch_size, "full", net_path, threads)
            net = text_format.Parse(net_path.read_text(), caffe_pb2.NetParameter())
            # the builder stores grayscale JPEGs as they are: decode in colour, as the generated nets do
            net.layer[0].transform_param.force_color = True
            net_path.write_text(text_format.MessageToString(net))
            first, rate = read_rate(net_path, args.batches, args.batch_size)
            net.layer[0].data_param.start_item = args.resume_iteration * args.batch_size
            resumed_path = workdir / f"net_{threads}_resumed.prototxt"
            resumed_path.write_text(text_format.MessageToString(net))
            resumed_first, _ = read_rate(resumed_path, 1, args.batch_size)
            print(f"| {threads} | {first:.2f} | {rate:.1f} | {resumed_first:.2f} |")
    finally:
        if not args.keep:
            shutil.rmtree(lmdb_path, ignore_errors=True)
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
