"""End to end: the demo path (tiny model, PTST + LookAhead sweep on local Ray, sharded eval, report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, cpu_env


@pytest.mark.slow
def test_demo_quick_produces_every_artefact_and_reruns_as_noop(tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "safeft", "demo", "--quick", "--out", str(out)]
    first = subprocess.run(cmd, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "report:" in first.stdout and "mean little" in first.stdout

    sweep = json.loads((out / "demo" / "sweep.json").read_text())
    assert sweep["counts"]["done"] == 2 and len(sweep["runs"]) == 2
    for run in sweep["runs"]:
        export = os.path.join(run["run_dir"], "export")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(export)
        AutoTokenizer.from_pretrained(export)
        meta = json.loads(open(os.path.join(export, "safeft_run.json")).read())
        assert meta["lookahead"]["mode"] in ("none", "virtual")
        summary = json.loads(open(os.path.join(run["run_dir"], "eval", "summary.json")).read())
        text = json.dumps(summary)
        for template in ("chat:vanilla", "chat:llama"):
            assert template in text
        for metric in ("strict", "keyword"):
            assert metric in text

    report = out / "demo" / "report"
    assert (report / "report.md").is_file()
    assert any(p.suffix == ".png" and p.stat().st_size > 1000 for p in report.iterdir())

    again = subprocess.run(cmd, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 to run" in again.stdout
