"""`safeft report RUN_DIRS...`: a markdown table, PTST heatmaps (train x test template), a safety/utility scatter
and the two-sided view (harmful-answer rate, over-refusal rate, utility per train x test template).

Reads each run's `eval/summary.json` (or a directory that holds summary.json directly).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

from safeft.errors import SafeftError
from safeft.io import read_json, save_figure, write_text

UTILITY_KEYS = ("exact_match_strict", "rouge1", "exact_match", "exact_match_flexible", "contains")
REFUSAL_KEYS = ("over_refusal_rate", "unsafe_refusal_rate")  # XSTest: lower / higher is better


def load_rows(run_dirs: list[str]) -> list[dict]:
    rows = []
    for d in run_dirs:
        path = next((p for p in (os.path.join(d, "eval", "summary.json"), os.path.join(d, "summary.json"))
                     if os.path.isfile(p)), None)
        if path is None:
            raise SafeftError(f"{d}: no eval/summary.json or summary.json; run 'safeft eval' first")
        for r in read_json(path).get("rows", []):
            rows.append({**r, "run": os.path.basename(os.path.normpath(d))})
    if not rows:
        raise SafeftError("no evaluation results in " + ", ".join(run_dirs))
    return rows


def _columns(rows: list[dict]) -> list[str]:
    """'task.metric' columns: utility headline metrics and every ASR (no derived safe rates, no categories)."""
    cols = []
    for r in rows:
        for m in r["metrics"]:
            if r["kind"] == "utility":
                keep = m in UTILITY_KEYS[:3]
            elif r["kind"] == "refusal":
                keep = m in REFUSAL_KEYS
            else:
                keep = m.endswith("_asr") and "/" not in m
            col = f"{r['task']}.{m}"
            if keep and col not in cols:
                cols.append(col)
    return cols


def grid(rows: list[dict]) -> dict[tuple, dict[str, float]]:
    """(run, model, train template, test template) -> {task.metric: value}."""
    out: dict[tuple, dict] = defaultdict(dict)
    for r in rows:
        key = (r["run"], r["model_tag"], r.get("train_template") or "?", r["template"])
        for m, v in r["metrics"].items():
            out[key][f"{r['task']}.{m}"] = v["value"]
    return out


def markdown_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    judges = {f"{r['task']}.{m}": v["judge"] for r in rows for m, v in r["metrics"].items()}
    head = ["run", "model", "train template", "test template"] + cols
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, vals in sorted(grid(rows).items()):
        cells = [_fmt(vals.get(c)) for c in cols]
        lines.append("| " + " | ".join(list(key) + cells) + " |")
    notes = [f"- `{c}`: judge `{judges[c]}`" for c in cols]
    return "\n".join(lines) + "\n\nJudges:\n" + "\n".join(notes) + "\n"


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _is_rate(col: str) -> bool:
    return col.endswith(("_asr", "_refusal_rate", "contains")) or ".exact_match" in col


def _lower_is_better(col: str) -> bool:
    return col.endswith(("_asr", ".over_refusal_rate"))


def _variant(run: str) -> str:
    """A sweep run's name without its seed and train-template parts: 'lookahead=virtual,seed=42' -> 'lookahead=virtual'."""
    return ",".join(p for p in run.split(",") if not p.startswith(("seed=", "train=")))


def _row_labels(cells: dict) -> dict[tuple, str]:
    """(run, model, train template) -> plot row label: the train template, plus the run's variant and model
    where several share that template. Seeds share a label, so plots average them; LookAhead variants of one
    template get labels of their own and are never averaged together."""
    per_train = defaultdict(set)
    for run, model, train, _ in cells:
        per_train[train].add((run, model))
    labels = {}
    for train, members in per_train.items():
        several_variants = len({_variant(run) for run, _ in members}) > 1
        several_models = len({model for _, model in members}) > 1
        for run, model in members:
            prefix = [_variant(run)] if several_variants else []
            prefix += [model] if several_models and model != run else []
            labels[(run, model, train)] = " · ".join(prefix + [train])
    return labels


def plot_heatmaps(rows: list[dict], out_dir: str) -> list[str]:
    """One PNG per metric: rows = train template (per variant where several share one; seeds averaged),
    columns = test template."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = grid(rows)
    labels = _row_labels(cells)
    row_names = sorted(set(labels.values()))
    tests = sorted({k[3] for k in cells})
    paths = []
    for col in _columns(rows):
        acc: dict[tuple, list] = defaultdict(list)  # (row label, test template) -> values of its seeds
        for (run, model, tr, te), vals in cells.items():
            if col in vals:
                acc[(labels[(run, model, tr)], te)].append(vals[col])
        mat = np.full((len(row_names), len(tests)), np.nan)  # [rows, test templates], mean over seeds
        for (name, te), values in acc.items():
            mat[row_names.index(name), tests.index(te)] = sum(values) / len(values)
        fig, ax = plt.subplots(figsize=(1.6 * len(tests) + 0.09 * max(map(len, row_names)) + 2.5,
                                        0.6 * len(row_names) + 2))
        rate = _is_rate(col)
        im = ax.imshow(mat, cmap="viridis_r" if _lower_is_better(col) else "viridis", aspect="auto",
                       vmin=0 if rate else None, vmax=1 if rate else None)
        ax.set_xticks(range(len(tests)), tests, rotation=30, ha="right")
        ax.set_yticks(range(len(row_names)), row_names)
        ax.set_xlabel("test template")
        ax.set_ylabel("train template")
        ax.set_title(col)
        for i in range(len(row_names)):
            for j in range(len(tests)):
                if not np.isnan(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.3g}", ha="center", va="center", color="white", fontsize=9)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        paths.append(save_figure(fig, os.path.join(out_dir, f"heatmap_{col.replace('/', '_')}.png")))
        plt.close(fig)
    return paths


def plot_scatter(rows: list[dict], out_dir: str) -> str | None:
    """Safety (first ASR column) against utility (first utility column): colour = trained model, marker =
    test template, named in a legend (points of a tiny model often coincide; labels on points would overlap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _columns(rows)
    util = next((c for c in cols if not c.endswith(("_asr", "_refusal_rate"))), None)
    asr = next((c for c in cols if c.endswith("_asr")), None)
    if not util or not asr:
        return None
    cells = grid(rows)
    labels = _row_labels(cells)
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(sorted(set(labels.values())))}
    markers = {te: "os^DvP*X"[i % 8] for i, te in enumerate(sorted({k[3] for k in cells}))}
    fig, ax = plt.subplots(figsize=(9, 4.8))
    named, xs, ys = set(), [], []
    for (run, model, tr, te), vals in sorted(cells.items()):
        if util in vals and asr in vals:
            name = labels[(run, model, tr)]
            legend = f"{name} -> {te}"
            ax.scatter(vals[util], vals[asr], color=colours[name], marker=markers[te], s=60, alpha=0.8,
                       label=None if legend in named else legend)  # seeds: one point each, one legend entry
            named.add(legend)
            xs.append(vals[util])
            ys.append(vals[asr])
    if xs:
        ax.set_xlim(*_limits(xs, _is_rate(util)))
        ax.set_ylim(*_limits(ys, True))
    ax.set_xlabel(util + " (higher is better)")
    ax.set_ylabel(asr + " (lower is safer)")
    ax.set_title("safety vs utility (train -> test template)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    path = save_figure(fig, os.path.join(out_dir, "safety_vs_utility.png"))
    plt.close(fig)
    return path


def two_sided(rows: list[dict]) -> tuple[list[str], list[tuple[str, list]]]:
    """The three sides of one (run, model, train template, test template) cell, seeds kept apart:
    harmful-answer rate (the first safety ASR column; the rule judge's when present), over-refusal rate
    (XSTest safe prompts) and utility (the first utility column)."""
    cols = _columns(rows)
    asrs = [c for c in cols if c.endswith("_asr")]
    harmful = next((c for c in asrs if c.endswith(".refusal_asr")), asrs[0] if asrs else None)
    over = next((c for c in cols if c.endswith(".over_refusal_rate")), None)
    util = next((c for c in cols if not c.endswith(("_asr", "_refusal_rate"))), None)
    picked = [harmful, over, util]
    out = []
    for key, vals in sorted(grid(rows).items()):
        out.append((" / ".join(key), [vals.get(c) if c else None for c in picked]))
    return [c or "" for c in picked], out


def two_sided_table(rows: list[dict]) -> str:
    (harmful, over, util), cells = two_sided(rows)
    judges = {f"{r['task']}.{m}": v["judge"] for r in rows for m, v in r["metrics"].items()}
    head = ["run / model / train template / test template", f"harmful rate ({harmful or 'n/a'})",
            f"over-refusal ({over or 'n/a: add an xstest task'})", f"utility ({util or 'n/a'})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([name] + [_fmt(v) for v in values]) + " |" for name, values in cells]
    notes = [f"- `{c}`: judge `{judges[c]}`" for c in (harmful, over, util) if c in judges]
    return ("Two-sided view: lower harmful rate and lower over-refusal are better, higher utility is better.\n\n"
            + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n")


def plot_two_sided(rows: list[dict], out_dir: str) -> str | None:
    """Grouped bars per train -> test template cell: harmful rate, over-refusal rate, utility (rates in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols, cells = two_sided(rows)
    if not cells or not any(cols[:2]):
        return None
    labels = {"harmful": cols[0], "over-refusal": cols[1], "utility": cols[2]}
    series = [(name, col, i) for i, (name, col) in enumerate(labels.items()) if col and (i < 2 or _is_rate(col))]
    x = np.arange(len(cells))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cells) + 3), 4.8))
    for k, (name, col, i) in enumerate(series):
        ys = [np.nan if v[i] is None else v[i] for _, v in cells]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, ys, width, label=f"{name} ({col})")
    ax.set_xticks(x, [name.split(" / ", 2)[-1] for name, _ in cells], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate")
    ax.set_title("two-sided view per train / test template")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = save_figure(fig, os.path.join(out_dir, "two_sided.png"))
    plt.close(fig)
    return path


def _limits(values: list[float], rate: bool) -> tuple[float, float]:
    """Axis limits around the data with a minimum span (a lone point still gets readable axes), kept inside
    [0, 1] for rates."""
    lo, hi = min(values), max(values)
    pad = max(0.05, 0.1 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    return (max(lo, -0.02), min(hi, 1.02)) if rate else (lo, hi)


def write_report(run_dirs: list[str], out_dir: str) -> dict:
    rows = load_rows(run_dirs)
    table = markdown_table(rows) + "\n" + two_sided_table(rows)
    heatmaps = plot_heatmaps(rows, out_dir)
    scatter = plot_scatter(rows, out_dir)
    sides = plot_two_sided(rows, out_dir)
    figures = [os.path.basename(p) for p in heatmaps + [p for p in (scatter, sides) if p]]
    body = "# Evaluation report\n\n" + table + "\n" + "".join(f"![{f}]({f})\n" for f in figures)
    write_text(os.path.join(out_dir, "report.md"), body)
    return {"report": os.path.join(out_dir, "report.md"), "figures": [os.path.join(out_dir, f) for f in figures],
            "table": table}
