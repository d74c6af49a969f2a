"""Ray Train plumbing: `ray job submit ... python -m safeft.launch train`, fault tolerance, checks.

The job tests use a real `ray start --head` cluster (one per module). Training runs either the real
trainer (`safeft.train.run`, when importable) or `ray_standin.train`, which has the trainer's contract
(hooks, resume_from, export) and the real sampler schedule but no model, so the Ray side is exercised in
seconds.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from ray_cluster import RAY_BIN
from safeft.config import config_from_dict
from safeft.errors import ConfigError
from safeft.ray_train import ray_run_name, restored_step, trim_consumed_log

TESTS = str(REPO / "tests")
STANDIN_ENV = {"SAFEFT_TRAIN_FN": "ray_standin:train", "PYTHONPATH": f"{TESTS}:{REPO}"}


def _write_config(tmp_path: Path, name: str, **sections) -> str:
    data = {"model": {"name_or_path": "standin"}, "output": {"dir": str(tmp_path / "runs"), "name": name},
            "ray": {"num_workers": 2, "cpus_per_worker": 1}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _consumed(run_dir: Path) -> collections.Counter:
    rows = collections.Counter()
    for f in run_dir.glob("logs/consumed-rank*.jsonl"):
        for line in f.read_text().splitlines():
            rows.update(json.loads(line)["rows"])
    return rows


# --- unit: no cluster -------------------------------------------------------------------------------


def test_run_name_is_filesystem_safe():
    cfg = config_from_dict({"output": {"name": "ptst/train=chat-vanilla,lookahead=virtual"}})
    assert ray_run_name(cfg) == "ptst--train=chat-vanilla,lookahead=virtual"


def test_checkpoint_marker_resolves_to_the_trainer_checkpoint(tmp_path):
    """With a shared filesystem Ray holds a marker, not a copy; a restore resolves it to the real directory."""
    from safeft.errors import ConfigError
    from safeft.ray_train import resolve_checkpoint, write_marker

    ckpt = tmp_path / "run" / "checkpoints" / "step00000004"
    ckpt.mkdir(parents=True)
    marker = tmp_path / "ray" / "step-00000004"
    marker.mkdir(parents=True)
    write_marker(str(marker), str(ckpt), 4)
    assert resolve_checkpoint(str(marker)) == str(ckpt)
    assert resolve_checkpoint(str(ckpt)) == str(ckpt)  # an uploaded checkpoint is its own directory
    ckpt.rmdir()
    with pytest.raises(ConfigError, match="no longer exists"):
        resolve_checkpoint(str(marker))


def test_trim_consumed_log_drops_steps_after_restore(tmp_path):
    log = tmp_path / "consumed-rank0.jsonl"
    log.write_text("".join(json.dumps({"step": s, "rows": [s]}) + "\n" for s in range(1, 6)))
    trim_consumed_log(str(log), restored_step(str(tmp_path / "step-00000003")))
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3]
    assert restored_step(None) == 0


def test_bad_config_rejected_before_any_worker(tmp_path, capsys):
    from safeft.launch import main

    cfg = _write_config(tmp_path, "bad", ray={"num_workers": 0})
    assert main(["train", cfg]) == 2
    assert "ray.num_workers" in capsys.readouterr().err


def test_grid_config_rejected_by_train(tmp_path):
    from safeft.ray_train import check_before_workers

    cfg = config_from_dict({"train": {"lr": [1e-4, 2e-5]}})
    with pytest.raises(ConfigError, match="train.lr"):
        check_before_workers(cfg)


# --- a real cluster -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_deepspeed_worker_killed_after_checkpoint_resumes_without_repeats(cluster, tmp_path, tiny_model_dir):
    """The real trainer (ZeRO-2, 2 Ray workers), each step slowed so the test can SIGKILL rank 1 after the first
    reported checkpoint: Ray Train restarts the group from that checkpoint (max_failures 1), the run
    completes and exports, and the consumed-row log holds every row of the epoch exactly once."""
    pytest.importorskip("safeft.train")
    sets = [f"model.name_or_path={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}", "output.name=fault",
            f"data.cache_dir={tmp_path / 'cache'}", "data.limit=120", "train.save_steps=3", "train.epochs=1",
            "ray.num_workers=2", "ray.max_failures=1"]
    args = ["train", str(REPO / "configs" / "examples" / "tiny.yaml"), *[x for kv in sets for x in ("--set", kv)]]
    env = {**STANDIN_ENV, "SAFEFT_TRAIN_FN": "ray_standin:slow_real_train", "STANDIN_STEP_SECONDS": "1.0"}
    submitted = cluster.submit(args, "safeft-fault", env_vars=env, wait=False, timeout=120)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    run_dir = tmp_path / "runs" / "fault"
    # Killed once Ray Train has registered the checkpoint (its snapshot names it), so the restart takes the
    # Ray path: get_checkpoint() -> TrainHooks.resume_from on the copy in Ray storage.
    snapshot = run_dir / "ray" / "fault" / "checkpoint_manager_snapshot.json"
    _wait_for(lambda: snapshot.is_file() and "step-00000003" in snapshot.read_text(), 400, "registered checkpoint")
    pid_file = run_dir / "logs" / "pids" / "rank1.pid"
    victim = int(pid_file.read_text())
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: cluster.job_status("safeft-fault") in ("SUCCEEDED", "FAILED", "STOPPED"), 500, "job end")
    logs = subprocess.run([RAY_BIN, "job", "logs", "--address", cluster.address, "safeft-fault"], env=cluster.env,
                          capture_output=True, text=True, timeout=60).stdout
    assert cluster.job_status("safeft-fault") == "SUCCEEDED", logs[-4000:]
    assert int(pid_file.read_text()) != victim, "the worker group was not restarted"
    assert "resuming from" in logs and "step-00000003" in logs
    rows = len(load_from_disk_rows(tmp_path / "cache"))
    consumed = _consumed(run_dir)
    assert sorted(consumed) == list(range(rows)) and set(consumed.values()) == {1}, consumed
    assert (run_dir / "export" / "model.safetensors").is_file()


def load_from_disk_rows(cache_dir: Path) -> list:
    """The packed rows the trainer prepared (one dataset under the data cache)."""
    import datasets

    (data_dir,) = [p.parent for p in cache_dir.rglob("dataset_info.json")]
    return list(range(len(datasets.load_from_disk(str(data_dir)))))


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_job_real_trainer_zero2_then_restore_by_name(cluster, tmp_path, tiny_model_dir):
    """The real trainer on 2 Ray workers under ZeRO-2; a second job with the same run name resumes from the
    checkpoint Ray Train holds (not from scratch) and trains only the remaining steps."""
    pytest.importorskip("safeft.train")
    cfg = str(REPO / "configs" / "examples" / "tiny.yaml")
    common = [f"model.name_or_path={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}", "output.name=real",
              f"data.cache_dir={tmp_path / 'cache'}", "data.limit=120", "train.save_steps=2",
              "ray.num_workers=2", "train.zero_stage=2"]
    args = ["train", cfg, *[x for kv in common for x in ("--set", kv)]]
    first = cluster.submit([*args, "--set", "train.max_steps=4"], "safeft-real-1")
    assert first.returncode == 0 and cluster.job_status("safeft-real-1") == "SUCCEEDED", first.stdout[-4000:]
    run_dir = tmp_path / "runs" / "real"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "export")
    assert model.config.hidden_size == 64
    second = cluster.submit([*args, "--set", "train.max_steps=6"], "safeft-real-2")
    assert second.returncode == 0 and cluster.job_status("safeft-real-2") == "SUCCEEDED", second.stdout[-4000:]
    assert "resuming from" in second.stdout and "step-00000004" in second.stdout
    steps = collections.Counter()
    for f in run_dir.glob("logs/consumed-rank*.jsonl"):
        steps.update(json.loads(line)["step"] for line in f.read_text().splitlines())
    assert steps == {s: 2 for s in range(1, 7)}  # each step once per rank across both jobs
    metrics = [json.loads(x) for x in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m][-2:] == [5, 6]
    assert _consumed(run_dir).most_common(1)[0][1] == 1  # no row twice within this first epoch


@pytest.mark.slow
def test_safeft_train_ray_flag_starts_local_cluster(tmp_path):
    """`safeft train --ray` without an address starts a local Ray cluster and runs the same workers."""
    import subprocess
    import sys

    from helpers import cpu_env

    cfg = _write_config(tmp_path, "flag", ray={"num_workers": 2})
    env = cpu_env(**STANDIN_ENV)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "safeft", "train", "--ray", cfg], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "export:" in proc.stdout and "done; export at" in proc.stdout
    assert json.loads((tmp_path / "runs" / "flag" / "export" / "safeft_run.json").read_text())["world_size"] == 2


def test_restart_without_ray_checkpoint_trims_log_to_trainer_auto_resume(tmp_path):
    """If a worker group restarts before Ray registered any checkpoint, the trainer's `resume: auto` picks up
    <run_dir>/checkpoints; the consumed log must be cut at that step, not at 0."""
    pytest.importorskip("safeft.train")
    from dataclasses import asdict

    from safeft.ray_train import _trainer_auto_resume_step
    from safeft.train.checkpoint import TrainState, tag_for

    cfg = config_from_dict({"output": {"dir": str(tmp_path), "name": "r"}})
    assert _trainer_auto_resume_step(cfg) == 0
    root = tmp_path / "r" / "checkpoints"
    (root / tag_for(5)).mkdir(parents=True)
    (root / tag_for(5) / "safeft_state.json").write_text(json.dumps(asdict(TrainState(step=5))))
    (root / "latest").write_text(tag_for(5))
    assert _trainer_auto_resume_step(cfg) == 5
    cfg.train.resume = "never"
    assert _trainer_auto_resume_step(cfg) == 0
