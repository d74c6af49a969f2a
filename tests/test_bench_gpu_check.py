"""`make gpu-check` and its script: the Makefile target picks a python that has torch and writes its JSON, the
verdicts read the benchmark figures right, and the script's CPU mode runs end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, cpu_env

sys.path.insert(0, os.path.join(str(REPO), "bench"))
from gpu_check_report import render_markdown, verdicts  # noqa: E402


def _report(packed=(1.5, 1.6), mfu=0.46, fused_gb=0.5, torch_gb=6.0, fused_ms=8.0, liger=9.0, speedups=(6.0, 7.0)):
    rows = []
    for model, s in zip(("llama-1b", "llama-3b"), packed):
        rows += [{"model": model, "variant": "padded+sdpa", "attention": "sdpa", "tokens_per_s": 100.0, "mfu": 0.3,
                  "peak_mem_gib": 10.0},
                 {"model": model, "variant": "packed+varlen", "attention": "safeft_torch_varlen",
                  "tokens_per_s": 100.0 * s, "mfu": mfu, "peak_mem_gib": 9.0, "speedup_vs_padded": s}]
    fused_row = {"tokens": 16384, "vocab": 128256, "fused_triton": {"peak_gb": fused_gb, "median_ms": fused_ms},
                 "torch": {"peak_gb": torch_gb, "median_ms": 20.0} if torch_gb else "OOM"}
    if liger:
        fused_row["liger"] = {"peak_gb": 1.0, "median_ms": liger}
    ev = {"prompts": 8, "max_new": 8, "stop_lengths": {}, "naive_tok_s": 1.0,
          "engines": [{"engine": e, "tok_s": s, "speedup": s, "outputs_equal": "8/8", "lengths_equal": "8/8"}
                      for e, s in zip(("budget", "continuous"), speedups)]}
    steps = {"train_mfu": {"status": "ok", "result": {"results": rows}},
             "fused_ce": {"status": "ok", "result": {"rows": [{"tokens": 4096, "vocab": 128256}, fused_row]}},
             "eval": {"status": "ok", "result": ev}}
    return {"mode": "cuda", "steps": steps, "env": {"device": "NVIDIA H200"}}


def test_verdicts_against_targets():
    assert set(verdicts(_report()).values()) == {"pass"}
    v = verdicts(_report(packed=(1.5, 1.39), mfu=0.449, fused_gb=0.61, liger=None, speedups=(6.0, 4.9)))
    assert v == {"packed_vs_padded": "fail", "mfu_3b_packed": "fail", "fused_ce_peak": "fail",
                 "fused_ce_time": "n/a (liger-kernel not installed)", "eval_speedup": "fail"}
    assert verdicts(_report(torch_gb=None, fused_ms=9.5, liger=9.0))["fused_ce_peak"] == "pass"  # torch OOM
    assert verdicts(_report(fused_ms=9.5, liger=9.0))["fused_ce_time"] == "fail"
    empty = {"mode": "cuda", "steps": {"eval": {"status": "timeout (90 s)"}}}
    assert all(x.startswith("n/a") for x in verdicts(empty).values())
    cpu = dict(_report(), mode="cpu-smoke")
    assert set(verdicts(cpu).values()) == {"not judged (CPU smoke)"}
    md = render_markdown(dict(_report(), verdicts=verdicts(_report())))
    assert "| >= 45% MFU, 3B class, packed 4k rows, bf16 | 46.0% (safeft_torch_varlen) | pass |" in md


@pytest.mark.slow
def test_cpu_mode_runs_every_step(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu", "--deadline", "900", "--out", str(out)], cwd=REPO,
                       env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1000)
    assert r.returncode == 0, r.stdout[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    steps = report["steps"]
    assert report["mode"] == "cpu-smoke" and list(steps) == ["install", "env", "tests", "eval", "train_mfu", "fused_ce"]
    status = {n: s["status"] for n, s in steps.items()}
    assert all(s == "ok" for n, s in status.items() if n != "install"), status
    assert steps["env"]["env"]["device"] == "cpu" and steps["env"]["env"]["torch"]
    t = steps["tests"]["tests"]
    assert t["total"] > 0 and t["skipped"] == t["total"]  # every GPU test is collected, and skipped here
    ev = steps["eval"]["result"]
    assert [e["engine"] for e in ev["engines"]] == ["budget"]
    assert all(e["lengths_equal"] == f"{ev['prompts']}/{ev['prompts']}" for e in ev["engines"])
    assert steps["train_mfu"]["result"]["results"][1]["speedup_vs_padded"] > 0
    assert all(steps["fused_ce"]["result"][k]["peak_ratio_over_torch"] > 0 for k in ("fused_sum", "fused_none"))
    assert set(report["verdicts"].values()) == {"not judged (CPU smoke)"}
    md = (out / "gpu_check.md").read_text()
    assert "| target | figure | verdict |" in md and "| eval | ok |" in md
    assert "===== fused_ce: ok" in (out / "gpu_check.log").read_text()


def _make_gpu_check(tmp_path, **make_vars) -> tuple[str, dict]:
    """`make gpu-check` with only the env step (seconds), as a user types it; (console output, gpu_check.json)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = tmp_path / "out"
    env = {k: v for k, v in cpu_env().items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "GPU_CHECK_PY")}
    env.update(make_vars.pop("env", {}))
    args = [f"{k}={v}" for k, v in make_vars.items()]
    r = subprocess.run(["make", "--no-print-directory", "gpu-check", *args,
                        f"GPU_CHECK_ARGS=--steps env --out {out}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:]
    return r.stdout, json.loads((out / "gpu_check.json").read_text())


def _check_env_report(report: dict) -> None:
    import platform

    import torch

    assert report["mode"] == ("cuda" if torch.cuda.is_available() else "cpu-smoke")
    assert list(report["steps"]) == ["env"] and report["steps"]["env"]["status"] == "ok"
    assert report["env"]["torch"] == torch.__version__ and report["env"]["python"] == platform.python_version()


def test_make_gpu_check_runs_with_the_projects_venv(tmp_path):
    """On a CPU machine (the README's): .venv's python, not the system python3 that has no torch."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("these tests do not run in a virtual environment (a GPU image's python3): see the next test")
    console, report = _make_gpu_check(tmp_path, VENV=sys.prefix)
    assert f"gpu-check: {sys.prefix}/bin/python bench/gpu_check.py" in console, console[-2000:]
    _check_env_report(report)


def test_make_gpu_check_without_a_venv_uses_python3_with_torch(tmp_path):
    """On a GPU image (no .venv, a python3 that brings torch): that python3."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a python3 that has torch
    (bin_dir / "python3").chmod(0o755)
    console, report = _make_gpu_check(tmp_path, VENV=str(tmp_path / "no-venv"), PYTHON="false",  # never makes one
                                      env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert "gpu-check: python3 bench/gpu_check.py" in console, console[-2000:]
    _check_env_report(report)
