"""`safeft report`'s two-sided view: harmful rate, over-refusal and utility per train x test template."""

import json

from safeft.eval.report import two_sided, write_report


def _row(task, kind, template, metrics, judge):
    return {"model_tag": "m", "task": task, "kind": kind, "template": template, "train_template": "chat:vanilla",
            "n": 4, "metrics": {k: {"value": v, "judge": judge} for k, v in metrics.items()}}


def test_two_sided_table_and_plot(tmp_path):
    rows = []
    for template, harmful, over, em in (("chat:vanilla", 0.5, 0.1, 0.3), ("chat:llama", 0.05, 0.4, 0.25)):
        rows += [_row("gsm8k", "utility", template, {"exact_match_strict": em}, "reference:gsm8k"),
                 _row("advbench", "safety", template, {"refusal_asr": harmful, "keyword_asr": 0.9}, "refusal:rules-v3"),
                 _row("xstest", "refusal", template, {"over_refusal_rate": over, "unsafe_refusal_rate": 0.9,
                                                      "over_refusal_rate/homonyms": 0.0}, "refusal:rules-v3")]
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "summary.json").write_text(json.dumps({"rows": rows}))
    cols, cells = two_sided([{**r, "run": "run"} for r in rows])
    assert cols == ["advbench.refusal_asr", "xstest.over_refusal_rate", "gsm8k.exact_match_strict"]
    assert dict(cells) == {"run / m / chat:vanilla / chat:llama": [0.05, 0.4, 0.25],
                           "run / m / chat:vanilla / chat:vanilla": [0.5, 0.1, 0.3]}
    out = write_report([str(run)], str(tmp_path / "report"))
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| run / m / chat:vanilla / chat:llama | 0.05 | 0.4 | 0.25 |" in report
    assert "`xstest.over_refusal_rate`: judge `refusal:rules-v3`" in report
    assert "two_sided.png" in report and (tmp_path / "report" / "two_sided.png").read_bytes()[:4] == b"\x89PNG"
    assert any(f.endswith("heatmap_xstest.over_refusal_rate.png") for f in out["figures"])
