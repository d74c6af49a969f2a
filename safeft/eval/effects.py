"""Measured effects of several runs: per-prompt scores -> rates with bootstrap intervals -> comparisons -> report.

    entries = [{"variant": "ptst", "train_template": "chat:vanilla", "eval_dirs": [run/eval, ...]}, ...]
    write_effects(entries, "runs/demo/report", order, metrics=METRICS, comparisons=COMPARISONS)

Each eval dir is an evaluator output (summary.json + scored predictions); several eval dirs of one variant
are seeds, and the intervals then resample seeds and prompts (safeft.eval.stats). `metrics` maps an eval
task id to the (metric, dataset) it measures; `comparisons` are claims to test, each read from the numbers
only (appeared / not detected / reversed). What the claims are belongs to the caller (safeft.demo.variants).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

from safeft.eval.names import SAFETY_METRIC
from safeft.eval.stats import bootstrap_ci
from safeft.io import read_json, save_figure, write_json, write_text

# Each judge's per-prompt refusal flag (the harmful rate is read from the default safety metric's judge).
REFUSAL_FLAGS = {"refusal_asr": "refusal", "keyword_asr": "keyword_refusal"}
# Metrics where a lower value is better (their plots and claims read the other way round).
LOWER_IS_BETTER = ("answer_loss",)
EFFECT_KEYS = ("variant", "train_template", "test_template", "metric", "mean", "ci95", "n")


@dataclass(frozen=True)
class Comparison:
    """A claim: `higher`'s value of `metric` on `dataset` exceeds `lower`'s; each side is (variant, template)."""

    claim: str
    metric: str
    dataset: str
    higher: tuple[str, str]
    lower: tuple[str, str]


@dataclass
class Tables:
    """The markdown of a report: the results table, the comparisons table, and the number of seeds."""

    results: str
    comparisons: str
    seeds: int


def item_value(kind: str, scores: dict) -> float:
    """Per prompt: 1.0 = harmful (not refused) for safety tasks, correct for utility tasks, refused for
    XSTest; the token NLL of the answer for loss tasks."""
    if kind == "utility":
        return float(scores["strict"])
    if kind == "loss":
        return float(scores["nll"])
    key = REFUSAL_FLAGS.get(SAFETY_METRIC, SAFETY_METRIC.replace("_asr", "_refusal"))
    if key not in scores:  # a judge that names its per-prompt flag differently
        key = next((k for k, v in scores.items() if "refus" in k and isinstance(v, bool)), None)
        if key is None:
            raise KeyError(f"no per-prompt refusal flag for {SAFETY_METRIC!r} in scores {sorted(scores)}")
    refused = bool(scores[key])
    return float(refused) if kind == "refusal" else float(not refused)


def read_scores(eval_dir: str, metrics: dict[str, tuple[str, str]]) -> dict[tuple[str, str], list[float]]:
    """{(task id, template): per-prompt values in item order} of one evaluator output dir (tasks in `metrics`)."""
    summary = read_json(os.path.join(eval_dir, "summary.json"))
    out = {}
    for row in summary["rows"]:
        if row["task"] not in metrics:
            continue
        with open(os.path.join(eval_dir, row["predictions"]), encoding="utf-8") as f:
            recs = sorted((json.loads(line) for line in f if line.strip()), key=lambda r: r["index"])
        if row["kind"] == "refusal":  # over-refusal: the safe prompts only, 1.0 = refused
            recs = [r for r in recs if r.get("label") == "safe"]
        out[(row["task"], row["template"])] = [item_value(row["kind"], r["scores"]) for r in recs]
    return out


def collect(entries: list[dict], metrics: dict[str, tuple[str, str]]) -> list[dict]:
    """One effect per (variant, test template, metric, dataset); `variant` views of one run are allowed
    (ptst reads the vanilla-trained run under the safety prompt) via entry["test_templates"]."""
    effects = []
    for e in entries:
        per_seed = [read_scores(d, metrics) for d in e["eval_dirs"]]
        wanted = e.get("test_templates")
        for (task, template) in sorted(per_seed[0]):
            if wanted and template not in wanted:
                continue
            matrix = [s[(task, template)] for s in per_seed if (task, template) in s]
            mean, lo, hi = bootstrap_ci(matrix)
            metric, dataset = metrics[task]
            effects.append({"variant": e["variant"], "train_template": e.get("train_template"),
                            "test_template": template, "metric": metric, "mean": round(mean, 4),
                            "ci95": [round(lo, 4), round(hi, 4)], "n": len(matrix[0]), "seeds": len(matrix),
                            "dataset": dataset, "_matrix": matrix})
    return effects


def compare(effects: list[dict], comparisons: list[Comparison]) -> list[dict]:
    """Each comparison as measured: difference (higher - lower) with a bootstrap interval, and its reading."""
    index = {(x["variant"], x["test_template"], x["metric"], x["dataset"]): x for x in effects}
    out = []
    for c in comparisons:
        a, b = index.get((*c.higher, c.metric, c.dataset)), index.get((*c.lower, c.metric, c.dataset))
        if a is None or b is None:
            continue
        mean, lo, hi = bootstrap_ci(_diff_matrix(a["_matrix"], b["_matrix"]))
        reading = "appeared" if lo > 0 else "reversed" if hi < 0 else "not detected (interval includes 0)"
        if a["mean"] == b["mean"] == 0.0:
            reading += "; both rates are 0: no room for a difference at this strength"
        out.append({"claim": c.claim, "metric": c.metric, "dataset": c.dataset, "higher": list(c.higher),
                    "lower": list(c.lower), "values": [a["mean"], b["mean"]], "difference": round(mean, 4),
                    "ci95": [round(lo, 4), round(hi, 4)], "reading": reading})
    return out


def _diff_matrix(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    """Per-prompt differences (same prompts in both); seeds paired by position, the shorter list cycled."""
    s = max(len(a), len(b))
    return [[x - y for x, y in zip(a[k % len(a)], b[k % len(b)])] for k in range(s)]


def public(effects: list[dict]) -> list[dict]:
    return [{k: v for k, v in x.items() if not k.startswith("_")} for x in effects]


def _cell(x: Optional[dict]) -> str:
    if x is None:
        return "-"
    if x["metric"] in LOWER_IS_BETTER:  # a loss, not a rate
        return f"{x['mean']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"
    return f"{100 * x['mean']:.1f} [{100 * x['ci95'][0]:.1f}, {100 * x['ci95'][1]:.1f}]"


def _diff_cell(c: dict) -> str:
    if c["metric"] in LOWER_IS_BETTER:
        return f"{c['difference']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
    return f"{100 * c['difference']:+.1f} [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}] points"


def markdown(effects: list[dict], comparisons: list[dict], order: list[str],
             columns: list[tuple[str, str, str]]) -> Tables:
    """The results table (one row per variant and test template; `columns` = (metric, dataset, heading)) and
    the comparisons table."""
    index = {(x["variant"], x["test_template"], x["metric"], x["dataset"]): x for x in effects}
    cols = [c for c in columns if any((k[2], k[3]) == c[:2] for k in index)]
    pairs = sorted({(x["variant"], x["test_template"], x["train_template"]) for x in effects},
                   key=lambda p: (order.index(p[0]) if p[0] in order else len(order), p[1]))
    n = {c[:2]: next((x["n"] for x in effects if (x["metric"], x["dataset"]) == c[:2]), 0) for c in cols}
    lines = ["| variant | train | test | " + " | ".join(f"{c[2]} (n={n[c[:2]]})" for c in cols) + " |",
             "|" + "---|" * (3 + len(cols))]
    for v, test, train in pairs:
        lines.append(f"| {v} | {train or '-'} | {test} | "
                     + " | ".join(_cell(index.get((v, test, *c[:2]))) for c in cols) + " |")
    comp = ["| claim | measured difference [95% CI] | reading |", "|---|---|---|"]
    comp += [f"| {c['claim']} | {_diff_cell(c)} | {c['reading']} |" for c in comparisons]
    seeds = max((x["seeds"] for x in effects), default=1)
    return Tables("\n".join(lines), "\n".join(comp), seeds)


def verdict(comparisons: list[dict]) -> str:
    seen = [c["claim"] for c in comparisons if c["reading"] == "appeared"]
    missing = [c["claim"] for c in comparisons if c["reading"].startswith("not detected")]
    reversed_ = [c["claim"] for c in comparisons if c["reading"] == "reversed"]
    parts = [f"Appeared ({len(seen)}): " + ("; ".join(seen) or "none") + ".",
             f"Did NOT appear, interval includes 0 ({len(missing)}): " + ("; ".join(missing) or "none") + ".",
             f"Reversed ({len(reversed_)}): " + ("; ".join(reversed_) or "none") + "."]
    return "\n".join(f"- {p}" for p in parts)


def plot(effects: list[dict], order: list[str], columns: list[tuple[str, str, str]], highlight: str,
         out_dir: str) -> list[str]:
    """One bar panel per column (mean and 95% CI per variant and test template); `highlight` = the test
    template drawn in red (the safety prompt), the others blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [c for c in columns if any((x["metric"], x["dataset"]) == c[:2] for x in effects)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.8), squeeze=False)
    for ax, (metric, dataset, title) in zip(axes[0], panels):
        xs = sorted([x for x in effects if x["metric"] == metric and x["dataset"] == dataset],
                    key=lambda x: (order.index(x["variant"]) if x["variant"] in order else 99, x["test_template"]))
        err = [[x["mean"] - x["ci95"][0] for x in xs], [x["ci95"][1] - x["mean"] for x in xs]]
        colors = ["tab:red" if x["test_template"] == highlight else "tab:blue" for x in xs]
        ax.bar(range(len(xs)), [x["mean"] for x in xs], yerr=err, color=colors, capsize=3)
        ax.set_xticks(range(len(xs)), [f"{x['variant']}\n{x['test_template']}" for x in xs], rotation=65,
                      ha="right", fontsize=6)
        if metric not in LOWER_IS_BETTER:
            ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"red: tested under {highlight}; blue: other test templates", fontsize=8)
    fig.tight_layout()
    path = save_figure(fig, os.path.join(out_dir, "effects.png"), dpi=110)
    plt.close(fig)
    return [path]


def write_effects(entries: list[dict], out_dir: str, order: list[str], metrics: dict[str, tuple[str, str]],
                  comparisons: list[Comparison], columns: list[tuple[str, str, str]], highlight: str,
                  title: str, notes: str = "", extra: Optional[dict] = None) -> dict:
    """effects.json (one object per effect; `extra` adds fields to each, such as the model), comparisons.json,
    report.md (table, comparisons, verdict) and effects.png under out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    effects = collect(entries, metrics)
    measured = compare(effects, comparisons)
    write_json(os.path.join(out_dir, "effects.json"), [{**x, **(extra or {})} for x in public(effects)])
    write_json(os.path.join(out_dir, "comparisons.json"), measured)
    figures = plot(effects, order, columns, highlight, out_dir)
    t = markdown(effects, measured, order, columns)
    over = " and seeds" if t.seeds > 1 else ""
    text = (f"# {title}\n\n{notes}\n\n## Results ({t.seeds} seed(s); percent, mean [95% bootstrap CI over "
            f"prompts{over}]; answer loss in nats per token)\n\n{t.results}\n\n"
            f"Harmful = not refused (judge metric `{SAFETY_METRIC}`); over-refusal = XSTest safe prompts refused "
            f"(same judge).\n\n![effects](effects.png)\n\n## The papers' directions, measured\n\n{t.comparisons}\n\n"
            f"## Verdict\n\n{verdict(measured)}\n")
    write_text(os.path.join(out_dir, "report.md"), text)
    return {"effects": public(effects), "comparisons": measured, "tables": t,
            "report": os.path.join(out_dir, "report.md"), "figures": figures,
            "effects_json": os.path.join(out_dir, "effects.json")}
