"""Bring up (and tear down) a real single-node SLURM cluster on 127.0.0.1 for the integration test.

Uses Debian's packages (``slurmctld slurmd slurm-client munge``), started by hand (no systemd),
as root. What the set-up needs, learnt the hard way:

- ``slurm.conf`` must be ``/etc/slurm/slurm.conf``: the executor plugin's job step drops every
  ``SLURM_*`` variable, so a ``SLURM_CONF`` elsewhere breaks ``srun`` inside the job.
- There is no accounting (no slurmdbd), so the plugin must read job states from ``squeue``, and
  ``MinJobAge`` must be at least 3x its first status-check wait (or it falls back to ``sacct``).
- A fake GPU (``GresTypes=gpu``, ``gres.conf`` with ``AutoDetect=off`` and ``File=/dev/null``)
  lets jobs that ask for ``--gpus=1`` run.
- ``NodeName`` must equal ``hostname -s``; ``DefMemPerCPU`` keeps a job from taking the whole node.

Only files this module wrote are removed again and only daemons it started are stopped (by PID).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SLURM_DIR = Path("/etc/slurm")
SLURM_CONF = SLURM_DIR / "slurm.conf"
GRES_CONF = SLURM_DIR / "gres.conf"
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
MARKER = "# written by ssdlite-coco tests/slurm_cluster.py"
DEBIAN_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "srun", "sinfo", "scontrol")
MIN_JOB_AGE_S = 3600  # job records must outlive the whole test run (they are purged this long after the end)


class SlurmClusterError(RuntimeError):
    """The cluster did not come up; the message says which daemon and where its log is."""


def unavailable_reason() -> str | None:
    """Why this machine cannot run the cluster (to skip the test with), or None if it can."""
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root to start slurmctld/slurmd/munged"
    missing = [name for name in PROGRAMS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if missing:
        return (
            f"SLURM programs missing ({', '.join(missing)}): "
            f"apt-get install -y --no-install-recommends {' '.join(DEBIAN_PACKAGES)}"
        )
    if SLURM_CONF.exists() and MARKER not in SLURM_CONF.read_text(errors="replace"):
        return f"{SLURM_CONF} exists and was not written by this test: not touching a real cluster's config"
    return None


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin") / name)


def _total_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmClusterError("cannot read MemTotal from /proc/meminfo")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path, timeout_s: float = 20) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text().strip()
            if text.isdigit():
                return int(text)
        time.sleep(0.2)
    raise SlurmClusterError(f"no PID file {path} after {timeout_s:.0f} s")


def _stop_pid(pid: int, timeout_s: float = 20) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def munge_works() -> bool:
    try:
        credential = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if credential.returncode != 0:
            return False
        check = subprocess.run(["unmunge"], input=credential.stdout, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return check.returncode == 0


@dataclass
class SlurmCluster:
    """One node (``hostname -s``) on 127.0.0.1 with all its CPUs, most of its memory and one fake GPU."""

    state_dir: Path
    partition: str = "debug"
    gpus: int = 1
    mem_per_cpu_mb: int = 1000
    hostname: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory_mb: int = field(default_factory=lambda: int(_total_memory_mb() * 0.8))
    _pids: dict[str, int] = field(default_factory=dict)
    _written: list[Path] = field(default_factory=list)

    @property
    def log_files(self) -> list[Path]:
        return [self.state_dir / "slurmctld.log", self.state_dir / "slurmd.log"]

    def slurm_conf(self) -> str:
        state = self.state_dir
        return "\n".join(
            [
                MARKER,
                "ClusterName=ssdlitetest",
                f"SlurmctldHost={self.hostname}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CryptoType=crypto/munge",
                f"StateSaveLocation={state}/ctld-state",
                f"SlurmdSpoolDir={state}/slurmd-spool",
                f"SlurmctldPidFile={state}/slurmctld.pid",
                f"SlurmdPidFile={state}/slurmd.pid",
                f"SlurmctldLogFile={state}/slurmctld.log",
                f"SlurmdLogFile={state}/slurmd.log",
                "SlurmctldDebug=info",
                "SlurmdDebug=info",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "MpiDefault=none",
                "ReturnToService=2",
                "SchedulerType=sched/backfill",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                f"DefMemPerCPU={self.mem_per_cpu_mb}",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                f"MinJobAge={MIN_JOB_AGE_S}",
                "GresTypes=gpu",
                f"NodeName={self.hostname} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb}"
                + (f" Gres=gpu:{self.gpus}" if self.gpus else "")
                + " State=UNKNOWN",
                f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def gres_conf(self) -> str:
        lines = [MARKER, "AutoDetect=off"]
        lines += [f"NodeName={self.hostname} Name=gpu File=/dev/null" for _ in range(self.gpus)]
        return "\n".join(lines) + "\n"

    def _write(self, path: Path, text: str) -> None:
        if path.exists() and MARKER not in path.read_text(errors="replace"):
            raise SlurmClusterError(f"{path} exists and was not written by this test; remove it or skip the test")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self._written.append(path)

    def _start_munge(self) -> None:
        if munge_works():
            return  # someone else's munged is running: use it, and leave it running
        if not MUNGE_KEY.exists():
            MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
            MUNGE_KEY.write_bytes(secrets.token_bytes(128))
            shutil.chown(MUNGE_KEY, "munge", "munge")
            MUNGE_KEY.chmod(0o600)
        MUNGE_RUN_DIR.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_RUN_DIR, "munge", "munge")
        pid_file = MUNGE_RUN_DIR / "munged.pid"
        pid_file.unlink(missing_ok=True)
        subprocess.run(["runuser", "-u", "munge", "--", _program("munged")], check=True, timeout=30)
        self._pids["munged"] = _read_pid(pid_file)
        deadline = time.monotonic() + 20
        while not munge_works():
            if time.monotonic() > deadline:
                raise SlurmClusterError("munged started but `munge -n | unmunge` fails")
            time.sleep(0.5)

    def _start_daemon(self, name: str, args: list[str]) -> None:
        pid_file = self.state_dir / f"{name}.pid"
        pid_file.unlink(missing_ok=True)
        result = subprocess.run([_program(name), *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise SlurmClusterError(
                f"{name} did not start (exit {result.returncode}): {result.stderr.strip()[-500:]}; "
                f"see {self.state_dir / (name + '.log')}"
            )
        self._pids[name] = _read_pid(pid_file)

    def node_state(self) -> str:
        result = subprocess.run(
            ["sinfo", "-h", "-N", "-n", self.hostname, "-o", "%T"], capture_output=True, text=True, timeout=30
        )
        return result.stdout.strip().lower() if result.returncode == 0 else ""

    def start(self, timeout_s: float = 180) -> SlurmCluster:
        reason = unavailable_reason()
        if reason:
            raise SlurmClusterError(reason)
        for sub in ("ctld-state", "slurmd-spool"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self._write(SLURM_CONF, self.slurm_conf())
        self._write(GRES_CONF, self.gres_conf())
        try:
            self._start_munge()
            self._start_daemon("slurmctld", ["-c"])  # -c: clean start, no saved jobs
            self._start_daemon("slurmd", [])
            deadline = time.monotonic() + timeout_s
            state = ""
            while time.monotonic() < deadline:
                state = self.node_state()
                if state.startswith("idle"):
                    return self
                if state.startswith(("down", "drain", "unknown")):
                    subprocess.run(
                        ["scontrol", "update", f"nodename={self.hostname}", "state=resume"],
                        capture_output=True,
                        timeout=30,
                    )
                time.sleep(1)
            raise SlurmClusterError(
                f"node {self.hostname} is {state or 'not known'} after {timeout_s:.0f} s, not idle; "
                f"see {', '.join(map(str, self.log_files))}"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if "slurmctld" in self._pids:
            subprocess.run(["scancel", "--full", f"--partition={self.partition}"], capture_output=True, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self._pids.pop(name, None)
            if pid is not None:
                _stop_pid(pid)
        while self._written:
            path = self._written.pop()
            if path.exists() and MARKER in path.read_text(errors="replace"):
                path.unlink()

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def job_details(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as key=value pairs (finished jobs stay visible for MinJobAge)."""
        result = subprocess.run(
            ["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise SlurmClusterError(f"scontrol show job {job_id}: {result.stderr.strip()}")
        details = {}
        for token in result.stdout.split():
            key, sep, value = token.partition("=")
            if sep:
                details[key] = value
        return details


if __name__ == "__main__":  # manual check: python tests/slurm_cluster.py /tmp/slurm-state
    import sys

    started = time.monotonic()
    with SlurmCluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ssdlite-slurm")) as cluster:
        print(f"up in {time.monotonic() - started:.1f} s: node {cluster.hostname} is {cluster.node_state()}")
        out = subprocess.run(["srun", "--gpus=1", "-n1", "hostname"], capture_output=True, text=True, timeout=60)
        print("srun --gpus=1 hostname:", out.returncode, out.stdout.strip(), out.stderr.strip())
    print(f"down after {time.monotonic() - started:.1f} s")
