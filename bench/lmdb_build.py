"""LMDB build throughput against ``cp -r`` of the same image bytes.

Makes a split of about 5,000 images (coco-mini repeated; distinct files and image ids) in a work
folder, then alternates, round after round, ``cp -r images/`` and the LMDB build of the whole split
(readers, checks, protobuf, one LMDB writer, fsync, rename), each started after a ``sync``, and
prints the median time of each and their ratio (goal: the build within 1.5x the copy). As the
build makes its LMDB durable (fsync) and ``cp`` does not, ``cp -r`` followed by ``sync`` is
reported too. Run with pycaffe importable:

    scripts/with-caffe python bench/lmdb_build.py [--repeat 40] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ssdlite_coco.common.settings import parse_settings  # noqa: E402
from ssdlite_coco.labelmap import format_labelmap, labelmap_from_categories  # noqa: E402
from ssdlite_coco.lmdb.settings import BuildSettings  # noqa: E402
from ssdlite_coco.lmdb.writer import BuildOptions, build_lmdb  # noqa: E402

SHARED_DIR = REPO_ROOT.parent / "shared"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-dir", type=Path, default=SHARED_DIR / "datasets" / "coco-mini")
    parser.add_argument("--repeat", type=int, default=40, help="copies of coco-mini (128 images each)")
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds (copy, then build)")
    parser.add_argument("--readers", type=int, default=4, help="reader threads of the build")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the split (default: a temp dir)")
    return parser


def make_split(coco_dir: Path, repeat: int, out: Path, link: bool = False) -> tuple[Path, Path, Path]:
    """coco-mini ``repeat`` times as one split (distinct file names and ids); ``link``: symlinks, not copies."""
    data = json.loads((coco_dir / "annotations" / "instances_mini.json").read_text())
    images_dir = out / "images"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    id_step = max(image["id"] for image in data["images"]) + 1
    annotation_step = max(a["id"] for a in data["annotations"]) + 1
    for copy in range(repeat):
        for image in data["images"]:
            name = f"{copy:03d}_{image['file_name']}"
            source = coco_dir / "images" / image["file_name"]
            if link:
                (images_dir / name).symlink_to(source.resolve())
            else:
                shutil.copyfile(source, images_dir / name)
            images.append({**image, "id": image["id"] + copy * id_step, "file_name": name})
        for annotation in data["annotations"]:
            annotations.append(
                {**annotation, "id": annotation["id"] + copy * annotation_step,
                 "image_id": annotation["image_id"] + copy * id_step}
            )  # fmt: skip
    instances = out / "instances.json"
    instances.write_text(json.dumps({**data, "images": images, "annotations": annotations}))
    labelmap = out / "labelmap.prototxt"
    labelmap.write_text(format_labelmap(labelmap_from_categories(data["categories"], "coco81")))
    return instances, images_dir, labelmap


def trainval_settings(readers: int) -> BuildSettings:
    """The build's `lmdb` settings: the schema's, shuffle seed 1 and ``readers`` reader threads."""
    return parse_settings(BuildSettings, json.dumps({"shuffle_seed": 1, "readers": readers}))


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main(args: argparse.Namespace) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lmdb-bench-"))
    try:
        instances, images_dir, labelmap = make_split(args.coco_dir, args.repeat, workdir / "split")
        count = 128 * args.repeat
        size = sum(path.stat().st_size for path in images_dir.iterdir())
        print(f"{count} images, {size / 2**20:.0f} MiB, {args.readers} readers, {args.rounds} rounds")
        copy_target, lmdb_target = workdir / "copy", workdir / "trainval_lmdb"
        options = BuildOptions(trainval_settings(args.readers), "trainval", progress=False)

        def copy():
            subprocess.run(["cp", "-r", str(images_dir), str(copy_target)], check=True)

        def build():
            build_lmdb(instances, images_dir, labelmap, lmdb_target, workdir / "report.json", options)

        # one warm-up of each (page cache, imports), not counted
        for action, target in ((copy, copy_target), (build, lmdb_target)):
            action()
            shutil.rmtree(target)

        def flush():
            subprocess.run(["sync"], check=True)

        copies, synced_copies, builds = [], [], []
        for round_index in range(args.rounds):
            flush()  # every timing starts with no dirty pages of the previous step
            copies.append(timed(copy))
            synced_copies.append(copies[-1] + timed(flush))
            shutil.rmtree(copy_target)
            flush()
            builds.append(timed(build))  # the build fsyncs its LMDB itself
            lmdb_size = (lmdb_target / "data.mdb").stat().st_size
            shutil.rmtree(lmdb_target)
            print(f"round {round_index + 1}: cp -r {copies[-1]:.2f} s (+ sync {synced_copies[-1]:.2f} s), "
                  f"build {builds[-1]:.2f} s")  # fmt: skip
        copy_median, build_median = statistics.median(copies), statistics.median(builds)
        synced_median = statistics.median(synced_copies)
        print(f"median cp -r: {copy_median:.2f} s ({count / copy_median:.0f} images/s); "
              f"with sync: {synced_median:.2f} s")  # fmt: skip
        print(f"median build: {build_median:.2f} s ({count / build_median:.0f} images/s), "
              f"data.mdb {lmdb_size / 2**20:.0f} MiB")  # fmt: skip
        print(f"ratio build / cp -r: {build_median / copy_median:.2f} (goal <= 1.5); "
              f"build / (cp -r + sync): {build_median / synced_median:.2f}")  # fmt: skip
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
