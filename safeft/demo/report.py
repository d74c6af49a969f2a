"""A demo's report: what was run (base, data, hyper-parameters, curves), then the measured effects and the
verdict (safeft.eval.effects), and the harmful rate against the fine-tuning step where runs probed it."""

from __future__ import annotations

import json
import os
from typing import Any

from safeft.io import save_figure


def _jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_curve(run_dir: str) -> list[tuple[int, float]]:
    rows = _jsonl(os.path.join(run_dir, "logs", "metrics.jsonl"))
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]


def safety_curve(run_dir: str) -> list[dict]:
    """The run's safety probes (train.safety_probe): one dict per probe and template."""
    from safeft.train.summary import read_safety_curve

    return read_safety_curve(run_dir)


def _first_runs(entries: list[dict]) -> list[tuple[str, str]]:
    """(label, run dir) of each run's first seed, once per run (ptst is a view of vanilla's run)."""
    seen, out = set(), []
    for e in entries:
        for run_dir in e.get("run_dirs", [])[:1]:
            if run_dir not in seen:
                seen.add(run_dir)
                out.append((e["variant"], run_dir))
    return out


def plot_loss_curves(entries: list[dict], out_dir: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = False
    for label, run_dir in _first_runs(entries):
        pts = loss_curve(run_dir)
        if pts:
            ax.plot(*zip(*pts), label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (per label token)")
    ax.set_title("fine-tuning curves (first seed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = save_figure(fig, os.path.join(out_dir, "curves.png"), dpi=110)
    plt.close(fig)
    return path


def plot_safety_curves(entries: list[dict], out_dir: str, template: str) -> tuple[str | None, str]:
    """Harmful rate (probe, under `template`) against the fine-tuning step per run: a plot and a table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {label: [p for p in safety_curve(d) if p["template"] == template] for label, d in _first_runs(entries)}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None, ""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, pts in curves.items():
        steps = [p["step"] for p in pts]
        rate = [p["harmful_rate"] for p in pts]
        err = [[r - p["ci95"][0] for r, p in zip(rate, pts)], [p["ci95"][1] - r for r, p in zip(rate, pts)]]
        ax.errorbar(steps, rate, yerr=err, capsize=2, label=label)
    ax.set_ylim(0, 1)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel(f"harmful rate (probe, {template})")
    ax.set_title("alignment during fine-tuning (first seed; 95% intervals)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = save_figure(fig, os.path.join(out_dir, "safety_curves.png"), dpi=110)
    plt.close(fig)
    steps = sorted({p["step"] for pts in curves.values() for p in pts})
    n = next(iter(curves.values()))[0]["n"]
    lines = ["| run | " + " | ".join(f"step {s}" for s in steps) + " |", "|" + "---|" * (1 + len(steps))]
    for label, pts in curves.items():
        by_step = {p["step"]: p for p in pts}
        lines.append(f"| {label} | " + " | ".join(f"{100 * by_step[s]['harmful_rate']:.0f}" if s in by_step else "-"
                                                  for s in steps) + " |")
    table = (f"Harmful rate (percent) of the safety probe (n = {n} prompts, {template}) against the fine-tuning "
             f"step:\n\n" + "\n".join(lines))
    return path, table


def _stopped(entries: list[dict]) -> list[str]:
    """Runs that the safety gate (train.safety_probe action: stop) ended early, from their run summaries."""
    from safeft.sweep import train_outcome

    out = []
    for label, run_dir in _first_runs(entries):
        stopped = train_outcome(run_dir)["stopped"]
        if stopped:
            out.append(f"{label}: stopped at step {stopped['stopped_at_step']}, exported step "
                       f"{stopped['exported_step']} ({stopped['why']})")
    return out


def write_demo_report(spec: Any, entries: list[dict], out_dir: str, cfg: Any, seeds: int, seconds: float,
                      facts: list[str], base: str) -> dict:
    from safeft.eval.effects import write_effects

    os.makedirs(out_dir, exist_ok=True)
    lines = spec.describe(cfg, seeds) + [f"- Data: {f}" for f in facts]
    lines.append(f"- Demo wall time: {seconds:.0f} s (2-core CPU).")
    finals = [f"{label} {pts[0][1]:.2f} -> {pts[-1][1]:.2f}" for label, d in _first_runs(entries)
              if (pts := loss_curve(d))]
    if finals:
        lines.append("- Fine-tuning loss, first -> last logged step: " + "; ".join(finals) + ".")
    stopped = _stopped(entries)
    lines.append("- Runs stopped by the safety gate: " + ("; ".join(stopped) if stopped else "none") + ".")
    figures = [p for p in [plot_loss_curves(entries, out_dir)] if p]
    notes = "\n".join(lines)
    if figures:
        notes += "\n\n![fine-tuning curves](curves.png)"
    curve_plot, curve_table = plot_safety_curves(entries, out_dir, spec.safety_template)
    if curve_plot:
        figures.append(curve_plot)
        notes += f"\n\n## Alignment during fine-tuning\n\n{curve_table}\n\n![safety curves](safety_curves.png)"
    model = _model_name(base)
    report = write_effects(entries, out_dir, spec.order, spec.metrics, spec.comparisons, spec.columns,
                           spec.safety_template, spec.title, notes, extra={"model": model})
    report["figures"] = figures + report["figures"]
    return report


def _model_name(base: str) -> str:
    """What effects.json names as the model: the base recipe's model where it records one, else the path."""
    path = os.path.join(base, "base_recipe.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            recipe = json.load(f).get("recipe", {})
        return recipe.get("model_name") or recipe.get("model", {}).get("name") or base
    return base
