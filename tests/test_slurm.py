"""The Slurm templates on a real single-node Slurm (slurmctld + slurmd started here, stopped by PID):
`deepspeed.sbatch` (srun + torchrun, 2 CPU ranks) and `ray_cluster.sbatch` (Ray head via srun, then
`ray job submit` of `safeft.launch train` on 2 Ray workers) each train the tiny model to an export."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import REPO, cpu_env, free_port, held_port

pytestmark = pytest.mark.slow
TINY = "configs/examples/tiny.yaml"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    from slurm_cluster import SlurmCluster, ensure_installed

    ensure_installed()
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


def _overrides(tmp_path, tiny_model_dir, name: str) -> list[str]:
    sets = [f"model.name_or_path={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}", f"output.name={name}",
            f"data.cache_dir={tmp_path / 'cache'}", "data.limit=60", "train.max_steps=3", "train.save_steps=0"]
    return [x for kv in sets for x in ("--set", kv)]


def _job_env(**extra: str) -> dict:
    return cpu_env(SAFEFT_VENV=str(REPO / ".venv"), GPUS_PER_NODE="0", CPU_PROCS_PER_NODE="2", **extra)


def _check_export(run_dir) -> None:
    from transformers import AutoModelForCausalLM

    record = json.loads((run_dir / "export" / "safeft_run.json").read_text())
    assert record  # written by the trainer after the 16-bit consolidation
    assert AutoModelForCausalLM.from_pretrained(run_dir / "export").config.hidden_size == 64


def test_deepspeed_sbatch_trains_two_ranks_to_export(slurm, tmp_path, tiny_model_dir):
    out = tmp_path / "ds-%j.out"
    job, code = slurm.sbatch_wait(
        ["--nodes=1", "--cpus-per-task=2", f"--output={out}", "launcher/slurm/deepspeed.sbatch", TINY,
         *_overrides(tmp_path, tiny_model_dir, "slurm_ds")],
        env=_job_env(MASTER_PORT=str(free_port())), cwd=str(REPO))
    log = (tmp_path / f"ds-{job}.out").read_text()
    assert code == "0:0", log[-4000:]
    assert "world 2" in log
    _check_export(tmp_path / "runs" / "slurm_ds")


def test_deepspeed_sbatch_rejects_bad_config_before_training(slurm, tmp_path, tiny_model_dir):
    out = tmp_path / "bad-%j.out"
    job, code = slurm.sbatch_wait(
        ["--nodes=1", "--cpus-per-task=2", f"--output={out}", "launcher/slurm/deepspeed.sbatch", TINY,
         *_overrides(tmp_path, tiny_model_dir, "bad"), "--set", "train.global_batch_size=7"],
        env=_job_env(), cwd=str(REPO))
    log = (tmp_path / f"bad-{job}.out").read_text()
    assert code == "2:0", log[-3000:]
    assert "global_batch_size" in log and "torch.distributed.run" not in log
    assert not (tmp_path / "runs" / "bad" / "checkpoints").exists()


def _ray_job_env(ray_tmp: str, client_port: int | None = None) -> dict:
    """ray_cluster.sbatch's environment with every Ray port chosen here (`client_port`: the client server's)."""
    ports = {"--ray-client-server-port": client_port or free_port(), "--dashboard-agent-listen-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}
    return _job_env(RAY_PORT=str(free_port()), RAY_DASHBOARD_PORT=str(free_port()), RAY_TMPDIR=ray_tmp,
                    CPUS_PER_NODE="2", RAY_START_ARGS=" ".join(f"{flag}={port}" for flag, port in ports.items()))


def _ray_processes_left(ray_tmp: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()


def test_ray_cluster_sbatch_trains_on_ray_and_tears_down(slurm, tmp_path, tiny_model_dir):
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must stay short
    env = _ray_job_env(ray_tmp)
    out = tmp_path / "ray-%j.out"
    job, code = slurm.sbatch_wait(
        ["--nodes=1", "--cpus-per-task=2", f"--output={out}", "launcher/slurm/ray_cluster.sbatch", TINY,
         *_overrides(tmp_path, tiny_model_dir, "slurm_ray")], env=env, cwd=str(REPO))
    log = (tmp_path / f"ray-{job}.out").read_text()
    assert code == "0:0", log[-5000:]
    assert "Ray cluster stopped; exit status 0" in log
    run_dir = tmp_path / "runs" / "slurm_ray"
    _check_export(run_dir)
    assert sorted(p.name for p in run_dir.glob("logs/consumed-rank*.jsonl")) == [
        "consumed-rank0.jsonl", "consumed-rank1.jsonl"]  # 2 Ray Train workers
    left = _ray_processes_left(ray_tmp)
    assert left == [], f"Ray processes of the job still running: {left}"
    assert not (Path.home() / ".ray" / f"safeft-{job}.token").exists()  # the per-job token is removed


def test_ray_cluster_sbatch_stops_when_the_head_cannot_start(slurm, tmp_path):
    """The head's `ray start` exits (here: its client-server port is taken, as happened in CI): the job ends
    with an error naming it within a poll or two, rather than waiting on a cluster that will never come up."""
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    with held_port() as taken:
        job, code = slurm.sbatch_wait(
            ["--nodes=1", "--cpus-per-task=2", f"--output={tmp_path / 'head-%j.out'}",
             "launcher/slurm/ray_cluster.sbatch", TINY, "--set", f"output.dir={tmp_path / 'runs'}"],
            env=_ray_job_env(ray_tmp, client_port=taken), cwd=str(REPO), timeout=240)
    log = (tmp_path / f"head-{job}.out").read_text()
    assert code != "0:0" and "the Ray head exited before the cluster came up" in log, log[-3000:]
    assert "running: safeft.launch" not in log
    left = _ray_processes_left(ray_tmp)
    assert left == [], f"Ray processes of the job still running: {left}"
