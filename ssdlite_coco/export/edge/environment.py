"""A venv per edge toolchain, made from ``envs/toolchains/<name>.txt`` on first use and cached.

The toolchains pin what the project cannot share (rknn-toolkit2 an old torch and numpy, onnx2tf TensorFlow),
so each gets its own venv under ``~/.cache/ssdlite-coco/toolchains/<name>-<key>`` (``SSDLITE_TOOLCHAIN_CACHE``
moves it), keyed by the requirements file and the base Python: a changed pin makes a new venv. It is made
under a lock and counts as installed only once its marker file is written, so a killed install leaves nothing
that looks finished (the next use removes it and starts again). ``SSDLITE_<NAME>_PYTHON`` (e.g.
``SSDLITE_RKNN_PYTHON``) names a Python that has the toolchain already, such as a conda env made from
``envs/edge-<name>.yaml``; then nothing is installed.

    python -m ssdlite_coco.export.edge.environment rknn openvino   # install (what `make setup-edge` runs)
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ssdlite_coco.common.cache import cache_dir
from ssdlite_coco.common.errors import SsdliteError

REQUIREMENTS_DIR = Path(__file__).resolve().parents[3] / "envs" / "toolchains"
TOOLCHAINS = ("rknn", "openvino", "ncnn", "litert")


class ToolchainEnvError(SsdliteError):
    """A toolchain's venv cannot be made; the message names the toolchain, its log and the fix."""


def requirements_file(name: str) -> Path:
    if name not in TOOLCHAINS:
        raise ToolchainEnvError(f"unknown edge toolchain '{name}': choose one of {', '.join(TOOLCHAINS)}")
    return REQUIREMENTS_DIR / f"{name}.txt"


def cache_root() -> Path:
    return cache_dir("toolchains", "SSDLITE_TOOLCHAIN_CACHE")


def base_python() -> str:
    """The Python the venvs are made with: the one that runs this (the project's), outside its venv."""
    return os.environ.get("SSDLITE_TOOLCHAIN_BASE_PYTHON") or getattr(sys, "_base_executable", sys.executable)


def venv_key(requirements: Path, python: str) -> str:
    digest = hashlib.sha256(requirements.read_bytes())
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True, check=True
    ).stdout
    digest.update(version.encode())
    return digest.hexdigest()[:16]


def _install(venv: Path, requirements: Path, python: str, log_path: Path) -> None:
    """``python -m venv`` then ``pip install --no-deps -r``: each file pins every package its toolchain needs
    (their declared requirements conflict or pull a CUDA torch), so pip resolves nothing itself."""
    with log_path.open("w") as log:
        for command in (
            [python, "-m", "venv", str(venv)],
            [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-deps", "-r", str(requirements)],
        ):
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                raise ToolchainEnvError(
                    f"installing the {requirements.stem} toolchain from {requirements} failed at "
                    f"'{' '.join(command[-3:])}'; see {log_path} (network or a pin that no longer installs)"
                )


def toolchain_python(name: str, log=print) -> Path:
    """The Python of ``name``'s venv, made first if it is not cached yet."""
    requirements = requirements_file(name)
    explicit = os.environ.get(f"SSDLITE_{name.upper()}_PYTHON")
    if explicit:
        return Path(explicit)
    python = base_python()
    root = cache_root()
    venv = root / f"{name}-{venv_key(requirements, python)}"
    ready = venv / "installed"
    if ready.exists():
        return venv / "bin/python"
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent install of the same venv waits here
        if ready.exists():
            return venv / "bin/python"
        started = time.monotonic()
        log(f"installing the {name} toolchain into {venv} (once; {requirements})")
        log_path = root / f"{venv.name}.log"
        # A venv hard-codes its own path, so it is made in place and published by its marker file; a
        # killed install's half venv (no marker) is removed here, under the lock, before a new one.
        shutil.rmtree(venv, ignore_errors=True)
        try:
            _install(venv, requirements, python, log_path)
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        ready.write_text(f"{requirements.read_text()}\n# installed in {time.monotonic() - started:.0f} s\n")
        log(f"{name} toolchain installed in {time.monotonic() - started:.0f} s")
    return venv / "bin/python"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Install the edge toolchains' venvs (cached; once each).")
    parser.add_argument("names", nargs="*", help=f"toolchains (default: all of {', '.join(TOOLCHAINS)})")
    return parser


def main(args: argparse.Namespace) -> int:
    for name in args.names or TOOLCHAINS:
        print(f"{name}: {toolchain_python(name)}")
    return 0


if __name__ == "__main__":
    from ssdlite_coco.common.cli import run

    run(main, get_args_parser())
