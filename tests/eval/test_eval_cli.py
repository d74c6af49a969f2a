"""`safeft eval` on a tiny model with the shared GSM8K/AdvBench files, then `safeft report`; gates; templates."""

import json
import os

import yaml
from helpers import ADVBENCH, GSM8K_TEST, needs_shared

from safeft.cli import main
from safeft.config import Config
from safeft.eval.runner import resolve_templates


def _config(tmp_path, model, gates):
    cfg = {
        "template": {"train": "chat:vanilla", "test": ["chat:vanilla", "chat:llama"]},
        "eval": {"models": [model], "backend": "local", "batch_tokens": 2048, "gates": gates,
                 "tasks": [{"name": "gsm8k", "path": str(GSM8K_TEST), "limit": 6, "max_new_tokens": 8},
                           {"name": "advbench", "path": str(ADVBENCH), "limit": 6, "max_new_tokens": 8}]},
        "output": {"dir": str(tmp_path / "runs"), "name": "tiny"},
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@needs_shared(GSM8K_TEST, ADVBENCH)
def test_eval_then_report_then_gate(tiny_model_dir, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model_dir, {"advbench.refusal_asr": "<= 1.0"})
    assert main(["eval", cfg]) == 0
    eval_dir = tmp_path / "runs" / "tiny" / "eval"
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert set(summary["metrics"]) == {f"model/{t}/{s}" for t in ("gsm8k", "advbench")
                                       for s in ("chat:vanilla", "chat:llama")}
    row = next(r for r in summary["rows"] if r["task"] == "advbench" and r["template"] == "chat:llama")
    assert row["metrics"]["refusal_asr"]["judge"] == "refusal:rules-v3" and row["n"] == 6  # the default judge
    recs = [json.loads(x) for x in (eval_dir / row["predictions"]).read_text().splitlines()]
    first = ADVBENCH.read_text().splitlines()[0]
    assert recs[0]["question"] == first and recs[0]["prompt"].startswith("[INST] <<SYS>>\n")
    assert recs[0]["prompt"].endswith(f"Question: {first} [/INST]")
    assert summary["provenance"]["models"]["model"]["path"] == tiny_model_dir and summary["gates"][0]["ok"]
    capsys.readouterr()

    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs" / "tiny"), "--out", str(out)]) == 0
    table = (out / "report.md").read_text()
    assert "| chat:llama |" in table and "advbench.refusal_asr" in table and "refusal:rules-v3" in table
    pngs = sorted(os.listdir(out))
    assert "safety_vs_utility.png" in pngs and "heatmap_advbench.refusal_asr.png" in pngs
    assert (out / "safety_vs_utility.png").read_bytes()[:4] == b"\x89PNG"

    bad = _config(tmp_path, tiny_model_dir, {"advbench.refusal_asr": "< -1"})
    assert main(["eval", bad]) == 3  # cached shards: no generation, just the gate
    err = capsys.readouterr().err
    assert "advbench.refusal_asr =" in err and "breaches bound < -1" in err


def test_recommended_test_template_only_when_config_keeps_default():
    cfg = Config()
    assert resolve_templates(cfg, {"recommended_test_template": "chat:mpt"}) == (["chat:mpt"], "safeft_run.json")
    assert resolve_templates(cfg, {}) == (["chat:llama"], "config")
    cfg.template.test = ["chat:vanilla"]
    assert resolve_templates(cfg, {"recommended_test_template": "chat:mpt"}) == (["chat:vanilla"], "config")


def test_unknown_task_and_judge_are_config_errors(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"eval": {"models": ["x"], "tasks": [{"name": "gsm9k"}]}}))
    assert main(["eval", str(path)]) == 2
    assert "unknown task 'gsm9k'" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"eval": {"models": ["x"], "judges": ["llama-guard"]}}))
    assert main(["eval", str(path)]) == 2
    assert "eval.judge_model" in capsys.readouterr().err
