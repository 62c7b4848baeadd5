"""Write outputs atomically: into a temporary sibling first, then rename over the target.

A crash leaves at most a ``.<name>.tmp-<host>-<pid>-*`` sibling, never a half-written file or folder
under the real name; the next write of the same target removes the siblings left behind (a 19 GB LMDB
folder, say). Which ones: in a workflow rule's job (``scripts/logged`` sets ``SSDLITE_RULE_OWNS_OUTPUTS``),
every sibling of an output inside the workflow's directory, whatever host wrote it, since Snakemake lets one
job own an output at a time (a killed job's rerun on a cluster lands on another node); elsewhere only those
whose writer was a process of this host that has died (another may still be writing).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

HOST = socket.gethostname().replace("-", "_")
# Set by scripts/logged, which runs every rule's command: this process is the job that owns its outputs.
RULE_OWNS_OUTPUTS = "SSDLITE_RULE_OWNS_OUTPUTS"


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def rule_owns(target: str | os.PathLike) -> bool:
    """Whether this process is the workflow job that owns ``target`` (an output in the workflow's directory)."""
    if os.environ.get(RULE_OWNS_OUTPUTS) != "1":
        return False
    return Path(target).resolve().is_relative_to(Path.cwd().resolve())


def _is_stale(name: str, target_name: str, owned: bool) -> bool:
    host_pid = name[len(f".{target_name}.tmp-") :]
    if host_pid.startswith(f"{HOST}-{os.getpid()}-"):
        return False  # this process's own
    if owned:
        return True
    pid = host_pid[len(f"{HOST}-") :].split("-", 1)[0] if host_pid.startswith(f"{HOST}-") else ""
    return pid.isdigit() and _process_is_gone(int(pid))


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``target`` that no live writer will finish (see the module docstring)."""
    target = Path(target)
    owned = rule_owns(target)
    removed = []
    for path in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        if _is_stale(path.name, target.name, owned):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    prefix = f".{target.name}.tmp-{HOST}-{os.getpid()}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp/mkdtemp create owner-only entries; give the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod((0o777 if tmp.is_dir() else 0o666) & ~umask)
        if directory and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
