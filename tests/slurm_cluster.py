"""A real single-node Slurm cluster on this machine, for the sbatch template tests.

Installs slurm-wlm and munge from Debian when missing (root only), writes slurm.conf to a temporary
directory and points SLURM_CONF at it (the system's /etc/slurm stays untouched), starts munged (unless
one runs already), slurmctld and slurmd, and stops exactly the daemons it started, by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers import free_port

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch")


def ensure_installed() -> None:
    """apt-get install slurm-wlm munge if a daemon is missing; pytest.skip with the reason if impossible."""
    if all(shutil.which(d) or os.path.exists(f"/usr/sbin/{d}") for d in DAEMONS):
        return
    if os.geteuid() != 0:
        pytest.skip("Slurm is not installed and installing it needs root (apt-get install slurm-wlm munge)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "slurm-wlm", "munge"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"cannot install Slurm ({' '.join(cmd)} failed, offline?): {proc.stderr[-500:]}")


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    """slurmctld + slurmd for this host with a private config, state and log directory."""

    def __init__(self, root: Path, memory_mb: int = 16000):
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.started: list[int] = []
        self._write_conf(memory_mb)
        self._start_munge()
        self._start("slurmctld", root / "slurmctld.pid")
        self._start("slurmd", root / "slurmd.pid")
        self._wait_idle()

    def _write_conf(self, memory_mb: int) -> None:
        for d in ("state", "spool"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        cpus = os.cpu_count() or 1
        self.conf.write_text("\n".join([
            "ClusterName=safeft-test", f"SlurmctldHost={self.host}", "AuthType=auth/munge",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "MpiDefault=none", "SlurmUser=root", "ReturnToService=2",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}", f"SlurmdLogFile={self.root / 'slurmd.log'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            "MinJobAge=3600",  # keep finished jobs visible to scontrol while the test reads them
            f"NodeName={self.host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")

    def _start_munge(self) -> None:
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
            return  # a running munged (system or another test) serves us as well; not ours to stop
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        # As the munge user: munged refuses key and log files owned by another user.
        cmd = [_sbin("munged")] if os.geteuid() != 0 else ["runuser", "-u", "munge", "--", _sbin("munged")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"munged failed to start: {proc.stderr}")
        pid = Path("/run/munge/munged.pid")
        if pid.exists():
            self.started.append(int(pid.read_text().strip()))

    def _start(self, daemon: str, pid_file: Path) -> None:
        proc = subprocess.run([_sbin(daemon), "-f", str(self.conf)], env=self.env, capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{daemon} failed to start: {proc.stderr}\n{self.log(daemon)}")
        deadline = time.time() + 30
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        self.started.append(int(pid_file.read_text().strip()))

    def _wait_idle(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = self.run(["sinfo", "-h", "-o", "%T"]).stdout.strip()
            if out.startswith("idle"):
                return
            time.sleep(1)
        raise RuntimeError(f"Slurm node not idle: {out!r}\n{self.log('slurmctld')}\n{self.log('slurmd')}")

    def run(self, cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=kw.pop("env", self.env), capture_output=True, text=True, timeout=timeout, **kw)

    def sbatch_wait(self, args: list[str], env: dict, cwd: str, timeout: float = 900) -> tuple[int, str]:
        """Submit with `sbatch --wait`; returns (job id, exit code as `scontrol` reports it)."""
        proc = subprocess.run(["sbatch", "--parsable", "--wait", *args], env={**env, "SLURM_CONF": str(self.conf)},
                              cwd=cwd, capture_output=True, text=True, timeout=timeout)
        job_id = proc.stdout.strip().split(";")[0].splitlines()[0] if proc.stdout.strip() else ""
        if not job_id:
            raise RuntimeError(f"sbatch failed: {proc.stderr}")
        info = self.run(["scontrol", "show", "job", job_id]).stdout
        exit_code = next((w.split("=", 1)[1] for w in info.split() if w.startswith("ExitCode=")), "?")
        return int(job_id), exit_code

    def log(self, daemon: str) -> str:
        path = self.root / f"{daemon}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for pid in reversed(self.started):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
