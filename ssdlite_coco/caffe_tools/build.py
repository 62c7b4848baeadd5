"""Build the project's Caffe-SSD from the pinned sdist and its own patches, into a keyed cache.

The result is a prefix ``<cache>/<key>/`` with ``bin/caffe``, ``lib/libcaffe.so``,
``python/caffe`` (pycaffe) and ``manifest.json``. The key hashes everything that changes the
result, so a second build with the same inputs is a lookup. Builds of the same key are serialised
with a lock file and published by renaming a finished temporary prefix, so a reader never sees a
half-built prefix.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ssdlite_coco.caffe_tools.device import DEVICES
from ssdlite_coco.common.cache import cache_dir
from ssdlite_coco.common.digests import file_digest
from ssdlite_coco.common.errors import SsdliteError

REPO_ROOT = Path(__file__).resolve().parents[2]
CAFFE_DIR = REPO_ROOT / "caffe"
SOURCE_FILE = CAFFE_DIR / "source.json"
PATCH_DIR = CAFFE_DIR / "patches"
DEBIAN_PACKAGES_FILE = CAFFE_DIR / "debian-packages.txt"


class CaffeBuildError(SsdliteError):
    """A build step failed; the message says which and what to do."""


@dataclass(frozen=True)
class SdistPin:
    name: str
    version: str
    sha256: str
    stale_generated_files: tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"


def read_pin(path: Path = SOURCE_FILE) -> SdistPin:
    data = json.loads(path.read_text())
    return SdistPin(
        name=data["name"],
        version=data["version"],
        sha256=data["sha256"],
        stale_generated_files=tuple(data["stale_generated_files"]),
    )


def patch_files(patch_dir: Path = PATCH_DIR) -> list[Path]:
    """The project's patches, in the order they apply (by file name)."""
    return sorted(patch_dir.glob("*.patch"))


def cmake_flags(device: str) -> list[str]:
    if device not in DEVICES:
        raise CaffeBuildError(f"unknown Caffe device {device!r}: use one of {', '.join(DEVICES)}")
    return [
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCPU_ONLY={'ON' if device == 'cpu' else 'OFF'}",
        "-DUSE_LMDB=ON",
        "-DUSE_OPENCV=ON",
        "-DBUILD_python=ON",
        "-DBUILD_python_layer=ON",
    ]


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return "missing"
    return out.splitlines()[0] if out else "unknown"


def toolchain_fingerprint() -> dict[str, str]:
    """Versions of the tools and interpreter the built binaries depend on."""
    import numpy

    return {
        "compiler": _first_line(["c++", "--version"]),
        "protoc": _first_line(["protoc", "--version"]),
        # the base interpreter, not the venv: every venv of one Python shares a build
        "python": f"{sys.base_prefix} {platform.python_version()}",
        "numpy": ".".join(numpy.__version__.split(".")[:2]),
        "machine": platform.machine(),
    }


def build_key(pin: SdistPin, patches: list[Path], flags: list[str], toolchain: dict[str, str]) -> str:
    digest = hashlib.sha256()
    digest.update(pin.sha256.encode())
    digest.update(json.dumps(pin.stale_generated_files).encode())
    for patch in patches:
        digest.update(patch.name.encode())
        digest.update(patch.read_bytes())
    digest.update(json.dumps(flags).encode())
    digest.update(json.dumps(toolchain, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def cache_root() -> Path:
    return cache_dir("caffe", "SSDLITE_CAFFE_CACHE")


def fetch_sdist(pin: SdistPin, dest_dir: Path, log) -> Path:
    """Download the sdist with pip (once) and verify it against the pinned sha256."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / pin.filename
    if not target.exists():
        log(f"downloading {pin.name}=={pin.version} (source distribution) with pip")
        with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "--dest",
                    tmp,
                    f"{pin.name}=={pin.version}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            downloaded = Path(tmp) / pin.filename
            if result.returncode != 0 or not downloaded.exists():
                raise CaffeBuildError(
                    f"could not download {pin.name}=={pin.version} from PyPI "
                    f"(pip said: {result.stderr.strip().splitlines()[-1:] or ['nothing']}); "
                    f"check the network, or put {pin.filename} into {dest_dir}"
                )
            os.replace(downloaded, target)
    actual = file_digest(target, "sha256")
    if actual != pin.sha256:
        bad = target.with_suffix(".rejected")
        os.replace(target, bad)
        raise CaffeBuildError(
            f"{target} has sha256 {actual}, but caffe/source.json pins {pin.sha256}; "
            f"moved it to {bad}. Delete it and build again to re-download."
        )
    return target


def extract_sdist(archive: Path, pin: SdistPin, work_dir: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(work_dir, filter="data")
    source = work_dir / f"{pin.name}-{pin.version}"
    for relative in pin.stale_generated_files:
        stale = source / relative
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    return source


def apply_patches(source: Path, patches: list[Path], log) -> None:
    """Apply each patch with ``patch -p1``; one that does not apply stops with its name."""
    for patch in patches:
        log(f"applying {patch.name}")
        args = ["patch", "-p1", "--forward", "--batch", "--silent", "-i", str(patch)]
        check = subprocess.run([*args, "--dry-run"], cwd=source, capture_output=True, text=True)
        if check.returncode != 0:
            raise CaffeBuildError(
                f"patch {patch} does not apply to {source.name}:\n{check.stdout}{check.stderr}"
                "Fix or regenerate the patch against the pinned sdist (see caffe/README.md)."
            )
        subprocess.run(args, cwd=source, check=True)


def _run_logged(cmd: list[str], cwd: Path, log_path: Path, step: str) -> None:
    # ccache hits across builds in different temporary folders need paths made relative to it.
    env = dict(os.environ, CCACHE_BASEDIR=str(cwd.parent), CCACHE_NOHASHDIR="1")
    with log_path.open("a") as log_file:
        log_file.write(f"\n$ {' '.join(cmd)}\n")
        log_file.flush()
        result = subprocess.run(cmd, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise CaffeBuildError(f"Caffe {step} failed; full log in {log_path}. Last lines:\n{tail}")


def compile_and_install(source: Path, prefix: Path, flags: list[str], jobs: int, log_path: Path, log) -> None:
    build_dir = source.parent / "build"
    build_dir.mkdir()
    configure = [
        "cmake",
        "-S",
        str(source),
        "-B",
        str(build_dir),
        *flags,
        f"-DPython3_EXECUTABLE={sys.executable}",
        f"-DCMAKE_INSTALL_PREFIX={prefix}",
    ]
    log("configuring (cmake)")
    _run_logged(configure, source, log_path, "configuration")
    log(f"compiling with {jobs} jobs (about 4 minutes on 2 cores, seconds with a warm ccache)")
    _run_logged(["cmake", "--build", str(build_dir), "--parallel", str(jobs)], source, log_path, "compilation")
    _run_logged(["cmake", "--install", str(build_dir)], source, log_path, "installation")


def layer_types(prefix: Path) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(prefix / "python"), GLOG_minloglevel="2")
    out = subprocess.run(
        [sys.executable, "-c", "import caffe, json; print(json.dumps(sorted(caffe.layer_type_list())))"],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise CaffeBuildError(f"the built pycaffe does not import from {prefix}:\n{out.stderr}")
    return json.loads(out.stdout)


def layer_types_record(prefix: Path, device: str) -> dict:
    """The manifest's ``layer_types``; a CUDA build may be made on a machine that cannot load it.

    A CPU build that does not import is an error. A CUDA build is built where nvcc is, which need not
    have a GPU driver (libcuda): there the list is null and ``layer_types_unavailable`` says why.
    """
    try:
        return {"layer_types": layer_types(prefix)}
    except CaffeBuildError as error:
        if device != "cuda":
            raise
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown"
        return {"layer_types": None, "layer_types_unavailable": f"pycaffe did not import here: {reason}"}


def missing_debian_packages(packages_file: Path = DEBIAN_PACKAGES_FILE) -> list[str]:
    """Listed Debian packages that dpkg does not report as installed ([] where dpkg is absent)."""
    wanted = [
        line.strip() for line in packages_file.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    if shutil.which("dpkg-query") is None:
        return []
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *wanted], capture_output=True, text=True
    )
    installed = {line.split()[0].split(":")[0] for line in out.stdout.splitlines() if line.endswith(" installed")}
    return [name for name in wanted if name not in installed]


@dataclass(frozen=True)
class BuildPlan:
    pin: SdistPin
    patches: list[Path]
    flags: list[str]
    toolchain: dict[str, str]
    key: str
    prefix: Path


def plan_build(device: str = "cpu") -> BuildPlan:
    pin = read_pin()
    patches = patch_files()
    flags = cmake_flags(device)
    toolchain = toolchain_fingerprint()
    if device == "cuda":  # the CUDA compiler's release (its last version line) changes the binaries too
        version = (
            subprocess.run(["nvcc", "--version"], capture_output=True, text=True, check=False).stdout
            if shutil.which("nvcc")
            else ""
        )
        toolchain["nvcc"] = version.strip().splitlines()[-1] if version.strip() else "missing"
    key = build_key(pin, patches, flags, toolchain)
    return BuildPlan(pin, patches, flags, toolchain, key, cache_root() / f"{device}-{key}")


def ensure_caffe(device: str = "cpu", jobs: int | None = None, log=None) -> Path:
    """Return the prefix of a finished build for ``device``, building it first if needed."""
    log = log or _log
    plan = plan_build(device)
    manifest = plan.prefix / "manifest.json"
    if manifest.exists():
        return plan.prefix
    missing = missing_debian_packages()
    if missing:
        sudo = "" if os.geteuid() == 0 else "sudo "
        raise CaffeBuildError(
            "Caffe needs system packages that are not installed: "
            + " ".join(missing)
            + f"\nInstall them with:\n  {sudo}apt-get install -y --no-install-recommends "
            + " ".join(missing)
        )
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{plan.prefix.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of the same key waits here
        if manifest.exists():
            return plan.prefix
        started = time.monotonic()
        log(f"building Caffe ({device}) into {plan.prefix}")
        with tempfile.TemporaryDirectory(prefix=f"{plan.prefix.name}.tmp-", dir=root) as tmp:
            work = Path(tmp)
            archive = fetch_sdist(plan.pin, root / "sdists", log)
            source = extract_sdist(archive, plan.pin, work)
            apply_patches(source, plan.patches, log)
            staging = work / "prefix"
            compile_and_install(source, staging, plan.flags, jobs or os.cpu_count() or 1, work / "build.log", log)
            record = {
                "sdist": f"{plan.pin.name}=={plan.pin.version}",
                "sdist_sha256": plan.pin.sha256,
                "patches": [patch.name for patch in plan.patches],
                "device": device,
                "cmake_flags": plan.flags,
                "toolchain": plan.toolchain,
                "key": plan.key,
                "build_seconds": round(time.monotonic() - started, 1),
                **layer_types_record(staging, device),
            }
            shutil.copy(work / "build.log", staging / "build.log")
            (staging / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")
            os.replace(staging, plan.prefix)
        log(f"done in {time.monotonic() - started:.0f} s")
    return plan.prefix


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=DEVICES, default=os.environ.get("SSDLITE_CAFFE_DEVICE", "cpu"))
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: all cores)")
    parser.add_argument("--print-prefix", action="store_true", help="print the install prefix on stdout")
    parser.add_argument("--manifest-out", type=Path, help="copy the build manifest here")
    parser.add_argument(
        "--source-only",
        type=Path,
        metavar="DIR",
        help="only unpack the sdist into DIR and apply the patches (to develop a new patch)",
    )
    return parser


def prepare_source(dest: Path, log) -> Path:
    """Unpack the pinned sdist into ``dest`` and apply the project's patches; return the source tree."""
    pin = read_pin()
    dest.mkdir(parents=True, exist_ok=True)
    source = extract_sdist(fetch_sdist(pin, cache_root() / "sdists", log), pin, dest)
    apply_patches(source, patch_files(), log)
    return source


def _log(message: str) -> None:
    print(f"[caffe-build] {message}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    try:
        if args.source_only:
            print(prepare_source(args.source_only, _log))
            return 0
        prefix = ensure_caffe(args.device, args.jobs)
    except CaffeBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.manifest_out:
        from ssdlite_coco.common.atomic import atomic_write_text

        atomic_write_text(args.manifest_out, (prefix / "manifest.json").read_text())
    if args.print_prefix:
        print(prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
