"""effects.json schema and the comparisons, on evaluator-shaped outputs written by hand."""

import json
import os

from safeft.demo.toy import COLUMNS, COMPARISONS, METRICS
from safeft.eval.effects import EFFECT_KEYS, write_effects

KINDS = {"instructions": "safety", "prefill": "safety", "gsm8k": "utility", "answer-loss": "loss"}


def _eval_dir(root, name, rates: dict) -> str:
    """An evaluator output dir: summary.json rows + scored predictions, with given per-prompt flags."""
    d = os.path.join(root, name)
    os.makedirs(d)
    rows = []
    for (task, template), flags in rates.items():
        pred = f"{task}__{template.replace(':', '_')}.jsonl"
        with open(os.path.join(d, pred), "w") as f:
            for i, flag in enumerate(flags):
                scores = {"strict": float(flag)} if task == "gsm8k" else {"refusal": not flag}
                if task == "answer-loss":
                    scores = {"nll": flag, "tokens": 10}
                f.write(json.dumps({"index": i, "scores": scores}) + "\n")
        rows.append({"task": task, "kind": KINDS[task], "template": template, "predictions": pred})
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump({"rows": rows}, f)
    return d


def test_effects_file_schema_and_readings(tmp_path):
    L, V = "chat:llama", "chat:vanilla"
    base = _eval_dir(tmp_path, "base", {("instructions", L): [0] * 20, ("instructions", V): [0] * 20,
                                        ("gsm8k", L): [1] * 5 + [0] * 15, ("gsm8k", V): [1] * 5 + [0] * 15, ("prefill", L): [1] * 10 + [0] * 10})
    safe = _eval_dir(tmp_path, "safe", {("instructions", L): [1] * 12 + [0] * 8, ("gsm8k", L): [1] * 18 + [0] * 2,
                                        ("prefill", L): [1] * 10 + [0] * 10})
    van = _eval_dir(tmp_path, "van", {("instructions", L): [0] * 20, ("instructions", V): [1] * 10 + [0] * 10,
                                      ("gsm8k", V): [1] * 5 + [0] * 15})
    entries = [{"variant": "base", "train_template": None, "eval_dirs": [base]},
               {"variant": "vanilla-safe", "train_template": L, "eval_dirs": [safe]},
               {"variant": "ptst", "train_template": V, "eval_dirs": [van], "test_templates": [L]},
               {"variant": "vanilla", "train_template": V, "eval_dirs": [van], "test_templates": [V]}]
    out = write_effects(entries, str(tmp_path / "report"), ["base", "vanilla-safe", "vanilla", "ptst"], METRICS,
                        COMPARISONS, COLUMNS, L, "a title", extra={"model": "tiny"})

    effects = json.loads((tmp_path / "report" / "effects.json").read_text())
    assert isinstance(effects, list) and effects
    for x in effects:
        assert set(EFFECT_KEYS) <= set(x) and (x["metric"], x["dataset"]) in METRICS.values()
        assert x["model"] == "tiny"
        assert x["ci95"][0] <= x["mean"] <= x["ci95"][1] and x["n"] == 20
    get = {(x["variant"], x["test_template"], x["metric"]): x for x in effects}
    assert get[("vanilla-safe", L, "harmful_rate")]["mean"] == 0.6
    assert get[("ptst", L, "harmful_rate")]["mean"] == 0.0
    assert ("ptst", V, "harmful_rate") not in get  # a view shows only its test templates
    readings = {c["claim"]: c["reading"] for c in out["comparisons"]}
    assert readings["PTST: vanilla-safe more harmful than ptst"] == "appeared"
    assert readings["fine-tuning raises utility (vanilla over base)"].startswith("not detected")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Verdict" in text and "Did NOT appear" in text and "n=20" in text


def test_a_loss_is_reported_as_a_loss_and_compared_lower_is_better(tmp_path):
    from safeft.eval.effects import Comparison

    L = "chat:llama"
    base = _eval_dir(tmp_path, "base", {("answer-loss", L): [1.5] * 10})
    tuned = _eval_dir(tmp_path, "tuned", {("answer-loss", L): [1.0] * 10})
    entries = [{"variant": "base", "eval_dirs": [base]}, {"variant": "tuned", "eval_dirs": [tuned]}]
    claim = Comparison("loss falls", "answer_loss", "gsm8k", ("base", L), ("tuned", L))
    out = write_effects(entries, str(tmp_path / "r"), ["base", "tuned"], {"answer-loss": ("answer_loss", "gsm8k")},
                        [claim], [("answer_loss", "gsm8k", "answer loss")], L, "t")
    assert out["comparisons"][0]["reading"] == "appeared" and out["comparisons"][0]["difference"] == 0.5
    assert "1.500 [1.500, 1.500]" in out["tables"].results and "+0.500" in out["tables"].comparisons
