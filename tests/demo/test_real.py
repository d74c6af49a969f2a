"""The main job's path on the real model at smoke size (`safeft demo --quick`): SmolLM2-135M-Instruct imported,
a few alignment rows answered by the model itself and trained on Ray, two variants fine-tuned for two steps,
every task evaluated under both templates, and effects.json naming the model. Its numbers mean nothing; the
full run's figures are in BENCHMARKS.md ("Main job")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import GSM8K_TRAIN, REPO, cpu_env, skip_without_shared


@pytest.mark.slow
def test_quick_main_job_runs_every_stage_on_the_real_model(tmp_path):
    from safeft.demo.real import METRICS

    skip_without_shared(GSM8K_TRAIN)
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "safeft", "demo", "--quick", "--out", str(out)], cwd=REPO,
                          env=cpu_env(), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert any(line.startswith(stage) for line in lines), done.stdout
    assert any("GSM8K train rows" in line for line in lines)  # the report says which data it fine-tuned on
    report = out / "smollm2" / "report"
    effects = json.loads((report / "effects.json").read_text())
    assert {x["model"] for x in effects} == {"SmolLM2-135M-Instruct"}
    assert {x["variant"] for x in effects} == {"base", "vanilla-safe", "vanilla", "ptst"}
    got = {(x["variant"], x["test_template"], x["metric"], x["dataset"]) for x in effects}
    for metric, dataset in METRICS.values():  # every task measured for the base under both templates
        for template in ("chat-template:llama2", "chat-template:none"):
            assert ("base", template, metric, dataset) in got
    recipe = json.loads(next((out / "smollm2" / "base").glob("*/base_recipe.json")).read_text())
    assert recipe["data"]["benign"] == 16 and recipe["data"]["refusals"] == 16
    assert recipe["data"]["answer_seconds"] > 0 and recipe["data"]["align_seconds"] > 0
    gsm8k_em = {x["variant"] for x in effects if (x["metric"], x["dataset"]) == ("exact_match", "gsm8k")}
    assert gsm8k_em == {"base", "vanilla-safe"}  # GSM8K_EM_RUNS: the costliest task where a claim reads it
    assert "WARNING" not in done.stdout  # DeepSpeed's and Ray's warnings go to the log
    assert "Verdict" in (report / "report.md").read_text()
    runs = list((out / "smollm2").glob("runs-*/*,seed=0"))
    assert len(runs) == 2 and not any((r / "checkpoints").exists() for r in runs)  # 2.1 GB each otherwise


def test_every_run_evaluates_the_same_tasks_but_gsm8k_em_only_where_a_claim_reads_it(tmp_path):
    from safeft.demo import real

    files = {k: str(tmp_path / f"{k}.jsonl") for k in ("heldout", "prefill", "arithmetic", "finetune", "refusals")}
    ids = {run: [t.get("id", t["name"]) for t in real.run_overrides(run, files, False).get(
        "eval.tasks", real.eval_tasks(files, False))] for run in real.VARIANTS}
    full = [t.get("id", t["name"]) for t in real.eval_tasks(files, False)]
    for run, tasks in ids.items():
        assert tasks == (full if run in real.GSM8K_EM_RUNS else [t for t in full if t != "gsm8k"]), run
    # every claim on GSM8K exact match compares runs that measure it
    em_views = {"base"} | {view for view, run, _ in real.VIEWS if run in real.GSM8K_EM_RUNS}
    for c in real.COMPARISONS:
        if (c.metric, c.dataset) == ("exact_match", "gsm8k"):
            assert {c.higher[0], c.lower[0]} <= em_views, c.claim
    assert "data.mixture" in real.run_overrides("safety-mix", files, False)
