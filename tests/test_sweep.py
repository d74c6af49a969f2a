"""Sweeps: grid expansion and naming, DONE bookkeeping, concurrency, experiment configs, and a real
2x2 sweep on the tiny model through `ray job submit ... python -m safeft.launch sweep` (twice: the second
run schedules nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ADVBENCH, GSM8K_TEST, GSM8K_TRAIN, REPO, SAMSUM_TEST, have_shared_data, skip_without_shared
from safeft.config import config_from_dict, load_config
from safeft.errors import ConfigError
from safeft.io import write_json
from safeft.sweep import DONE, concurrency, plan_sweep, run_label

CONFIG_FILES = sorted((REPO / "configs").rglob("*.yaml"))


def test_run_names_are_readable_and_filesystem_safe():
    point = {"template.train": "chat:vanilla", "lookahead.mode": "virtual", "train.lr": 1e-4,
             "data.path": "/data/gsm8k/train.jsonl"}
    assert run_label(point) == "train=chat-vanilla,lookahead=virtual,lr=0.0001,data=train"
    assert run_label({}) == "single"


def test_plan_expands_grid_and_reads_done_markers(tmp_path):
    cfg = config_from_dict({"template": {"train": ["chat:vanilla", "text:vanilla"]},
                            "lookahead": {"mode": ["none", "virtual"]},
                            "output": {"dir": str(tmp_path), "name": "grid"}})
    runs = plan_sweep(cfg)
    assert [r.name for r in runs] == [
        "grid/train=chat-vanilla,lookahead=none", "grid/train=chat-vanilla,lookahead=virtual",
        "grid/train=text-vanilla,lookahead=none", "grid/train=text-vanilla,lookahead=virtual"]
    assert [(r.cfg.template.train, r.cfg.lookahead.mode) for r in runs] == [
        ("chat:vanilla", "none"), ("chat:vanilla", "virtual"), ("text:vanilla", "none"), ("text:vanilla", "virtual")]
    assert {r.status for r in runs} == {"pending"}
    write_json(Path(runs[1].run_dir) / DONE, {"export": "x"})
    again = plan_sweep(cfg)
    assert [r.status for r in again] == ["pending", "done", "pending", "pending"]
    assert again[1].result == {"export": "x"}


def test_explicit_points_name_their_runs_and_override_keys(tmp_path):
    cfg = config_from_dict({"output": {"dir": str(tmp_path), "name": "v"}})
    points = {"safe": {"template.train": "chat:llama", "template.test": ["chat:llama"]},
              "plain,seed=1": {"template.train": "chat:vanilla", "train.seed": 43}}
    runs = plan_sweep(cfg, points)
    assert [r.name for r in runs] == ["v/safe", "v/plain,seed=1"]
    assert [(r.cfg.template.train, r.cfg.train.seed) for r in runs] == [("chat:llama", 42), ("chat:vanilla", 43)]
    assert runs[0].cfg.test_templates == ["chat:llama"] and cfg.template.train == "chat:vanilla"  # cfg untouched
    with pytest.raises(Exception, match="train.lr"):
        plan_sweep(cfg, {"bad": {"train.lr": 5.0}})  # every point is validated


def test_explicit_points_refuse_a_grid_naming_the_key(tmp_path):
    """Named runs (the demo's variants) override one configuration: a list-valued grid key is an error that
    names the key and the runs (it named a `sweep --variants` flag that does not exist)."""
    cfg = config_from_dict({"train": {"seed": [1, 2]}, "output": {"dir": str(tmp_path), "name": "v"}})
    with pytest.raises(ConfigError) as e:
        plan_sweep(cfg, {"safe": {"template.train": "chat:llama"}, "plain": {}})
    assert "config key 'train.seed' lists 2 values [1, 2]" in str(e.value) and "(safe, plain)" in str(e.value)
    assert "--variants" not in str(e.value)


def test_sweep_records_the_runs_the_safety_gate_stopped(tmp_path):
    """execute_run reads each run's train_summary.json: sweep.json names the stopped runs and why."""
    from safeft.sweep import train_outcome, write_summary
    from safeft.train.summary import write_train_summary

    cfg = config_from_dict({"train": {"lr": [1e-5, 1e-4]}, "output": {"dir": str(tmp_path), "name": "g"}})
    runs = plan_sweep(cfg)
    curve = [{"step": 0, "template": "chat:llama", "harmful_rate": 0.0, "ci95": [0.0, 0.2]},
             {"step": 10, "template": "chat:llama", "harmful_rate": 0.6, "ci95": [0.4, 0.8]}]
    stopped = {"stopped_at_step": 10, "exported_step": 0, "why": "harmful rate 0.600 on chat:llama is over ..."}
    write_train_summary(runs[1].run_dir, {"steps": 10, "stopped": stopped, "safety_probe": {"results": curve}})
    assert train_outcome(runs[0].run_dir) == {"stopped": None, "safety_probe": None}
    outcome = train_outcome(runs[1].run_dir)
    assert outcome == {"stopped": stopped, "safety_probe": {"chat:llama": {"step": 10, "harmful_rate": 0.6,
                                                                           "ci95": [0.4, 0.8]}}}
    runs[0].status, runs[1].status, runs[1].result = "done", "done", {"export": "x", **outcome}
    summary = json.loads(Path(write_summary(cfg, runs)).read_text())
    assert summary["stopped"] == ["g/lr=0.0001"] and summary["counts"]["done"] == 2
    assert summary["runs"][1]["stopped"]["exported_step"] == 0


def test_same_basename_data_paths_get_distinct_names(tmp_path):
    cfg = config_from_dict({"data": {"path": ["a/train.jsonl", "b/train.jsonl"]},
                            "output": {"dir": str(tmp_path), "name": "d"}})
    names = [r.name for r in plan_sweep(cfg)]
    assert len(set(names)) == 2 and names[0] == "d/data=train"


@pytest.mark.parametrize("ray_cfg,resources,expected", [
    ({"num_workers": 1, "cpus_per_worker": 1}, {"CPU": 2}, 2),
    ({"num_workers": 2, "cpus_per_worker": 1}, {"CPU": 2}, 1),
    ({"num_workers": 4, "use_gpu": True, "cpus_per_worker": 2}, {"CPU": 64, "GPU": 8}, 2),
    ({"num_workers": 4, "max_concurrent_runs": 3}, {"CPU": 2}, 3),
    ({"num_workers": 8}, {"CPU": 2}, 1),
])
def test_concurrency_from_cluster_resources(ray_cfg, resources, expected):
    assert concurrency(config_from_dict({"ray": ray_cfg}), resources) == expected


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_passes_config_check(path, shared_data_with_hexphi):
    proc = subprocess.run([sys.executable, "-m", "safeft", "config", "check", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    if proc.returncode != 0 and "shared data folder" in proc.stderr and not have_shared_data():
        skip_without_shared(GSM8K_TRAIN, GSM8K_TEST, SAMSUM_TEST, ADVBENCH)
    assert proc.returncode == 0, proc.stderr
    assert ": ok" in proc.stdout


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_experiment_runs_pass_trainer_checks_for_their_worker_count(path, shared_data_with_hexphi):
    from safeft.distributed import check_train_config

    cfg = load_config(str(path))
    runs = plan_sweep(cfg)
    assert len(runs) > 1 and len({r.name for r in runs}) == len(runs)
    for run in runs:
        ds = check_train_config(run.cfg, run.cfg.ray.num_workers, has_bf16=True)
        assert ds["bf16"]["enabled"]


def test_ptst_grid_is_the_papers_protocol():
    cfg = load_config(str(REPO / "configs" / "experiments" / "ptst_gsm8k_llama2_7b.yaml"))
    five = ["text:vanilla", "text:alpaca", "chat:vanilla", "chat:alpaca", "chat:llama"]
    assert cfg.template.train == five and cfg.test_templates == five
    assert cfg.train.seed == [42, 43, 44] and cfg.train.lr == 1e-4 and cfg.train.epochs == 6
    assert len(plan_sweep(cfg)) == 15


def test_dry_run_lists_runs_without_ray(tmp_path, capsys):
    from safeft.cli import main

    assert main(["sweep", str(REPO / "configs" / "examples" / "sweep_tiny.yaml"), "--dry-run",
                 "--set", f"output.dir={tmp_path}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.startswith("pending") for line in lines)


@pytest.mark.slow
def test_sweep_job_completes_and_rerun_schedules_nothing(cluster, tmp_path, tiny_model_dir):
    """The bundled sweep through `ray job submit`, cut to its LookAhead axis (2 runs side by side on 2 cores);
    the 2x2 expansion itself is checked by test_dry_run_lists_runs_without_ray."""
    pytest.importorskip("safeft.train")
    cfg_path = tmp_path / "sweep.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs" / "examples" / "sweep_tiny.yaml"),
        "model": {"name_or_path": tiny_model_dir},
        "data": {"cache_dir": str(tmp_path / "cache")},
        "template": {"train": "chat:vanilla"},
        "train": {"keep_checkpoints": False},
        "output": {"dir": str(tmp_path / "runs"), "name": "sweep_tiny"},
    }))
    first = cluster.submit(["sweep", str(cfg_path)], "safeft-sweep-1")
    assert first.returncode == 0 and cluster.job_status("safeft-sweep-1") == "SUCCEEDED", first.stdout[-5000:]
    summary = json.loads((tmp_path / "runs" / "sweep_tiny" / "sweep.json").read_text())
    assert summary["counts"] == {"done": 2, "failed": 0, "pending": 0}
    for run in summary["runs"]:
        run_dir = Path(run["run_dir"])
        assert (run_dir / DONE).is_file() and (run_dir / "export" / "model.safetensors").is_file()
        assert not (run_dir / "checkpoints").exists() and run["checkpoint"] is None  # train.keep_checkpoints
        assert json.loads((run_dir / "train_summary.json").read_text())["last_checkpoint"] is None  # none written
        assert run["eval"] == "done" and (run_dir / "eval" / "summary.json").is_file()
        rows = json.loads((run_dir / "eval" / "summary.json").read_text())["rows"]
        assert {(r["task"], r["template"]) for r in rows} == {
            (task, template) for task in ("gsm8k", "advbench") for template in ("chat:vanilla", "chat:llama")}
    exported = [json.loads((Path(r["run_dir"]) / "export" / "safeft_run.json").read_text()) for r in summary["runs"]]
    assert sorted(e["lookahead"]["mode"] for e in exported) == ["none", "virtual"]  # each run got its grid point
    second = cluster.submit(["sweep", str(cfg_path)], "safeft-sweep-2")
    assert second.returncode == 0, second.stdout[-3000:]
    assert "2 already done, 0 to run" in second.stdout and '"scheduled": 0' in second.stdout
