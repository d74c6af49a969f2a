"""A local Ray cluster started the way users start one (`ray start --head`), for job-submission tests.

`ray start --block` stays in the foreground as our child; terminating it stops every Ray process it
started, so the finalizer never needs a machine-wide `ray stop` (other clusters may share this host).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import REPO, cpu_env, free_port

RAY_BIN = str(Path(sys.executable).with_name("ray"))
UPLOAD_EXCLUDES = [".venv", ".git", "runs", ".cache", "*.egg-info", "__pycache__", ".pytest_cache"]


class RayCluster:
    def __init__(self, num_cpus: int = 2, **env: str):
        self.temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths have a limit
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        # Token auth with a token of our own: the dashboard/job API of a test cluster is never open.
        self.token = secrets.token_hex(32)
        token_path = os.path.join(self.temp_dir, "auth_token")
        with open(token_path, "w") as f:
            f.write(self.token)
        self.env = cpu_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path, **env)
        ports = {"--ray-client-server-port": free_port(), "--dashboard-agent-listen-port": free_port(),
                 "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}
        cmd = [RAY_BIN, "start", "--head", "--block", f"--port={self.port}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", f"--num-cpus={num_cpus}", "--num-gpus=0",
               f"--temp-dir={self.temp_dir}", "--include-dashboard=true", "--disable-usage-stats",
               *[f"{k}={v}" for k, v in ports.items()]]
        self.log = open(os.path.join(self.temp_dir, "ray_start.log"), "w")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}: {self.log_text()}")
            try:
                request = urllib.request.Request(f"{self.address}/api/version",
                                                 headers={"Authorization": f"Bearer {self.token}"})
                with urllib.request.urlopen(request, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"Ray dashboard not up after {timeout}s: {self.log_text()}")

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def submit(self, args: list[str], submission_id: str, env_vars: dict | None = None, wait: bool = True,
               timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir <repo>` of `python -m safeft.launch ...`; blocks until the job ends
        unless `wait` is false."""
        runtime_env = {"excludes": UPLOAD_EXCLUDES, "env_vars": env_vars or {}}
        cmd = [RAY_BIN, "job", "submit", *([] if wait else ["--no-wait"]), "--address", self.address,
               "--submission-id", submission_id,
               "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
               sys.executable, "-m", "safeft.launch", *args]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def job_status(self, submission_id: str) -> str:
        out = subprocess.run([RAY_BIN, "job", "status", "--address", self.address, submission_id],
                             env=self.env, capture_output=True, text=True, timeout=60).stdout
        for status in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING"):
            if status in out or f"' {status.lower()}" in out:  # "status: SUCCEEDED" or "Job 'x' succeeded"
                return status
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own session: `ray start` and what it spawned
            try:
                self.proc.wait(timeout=10)  # a graceful stop takes ~3 s; the group is killed below anyway
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever of the group is left (gcs_server may ignore SIGTERM while shutting down)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


@pytest.fixture(scope="module")
def cluster():
    """One `ray start --head` cluster per test module (import this fixture into the module)."""
    c = RayCluster(num_cpus=2)
    yield c
    c.stop()
