"""The demo's report: what was run (base recipe, fine-tuning hyper-parameters, curves), then the measured
effects and the verdict (safeft.eval.effects)."""

from __future__ import annotations

import json
import os


def _curve(run_dir: str) -> list[tuple[int, float]]:
    path = os.path.join(run_dir, "logs", "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]


def plot_curves(entries: list[dict], out_dir: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for e in entries:
        for k, run_dir in enumerate(e.get("run_dirs", [])[:1]):
            pts = _curve(run_dir)
            if pts:
                ax.plot(*zip(*pts), label=e["variant"] if e["variant"] != "ptst" else "vanilla (= ptst's run)")
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (per label token)")
    ax.set_title("fine-tuning curves (first seed)")
    ax.legend(fontsize=7)
    path = os.path.join(out_dir, "curves.png")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return path


def _notes(entries: list[dict], cfg, seeds: int, seconds: float, base_dir: str | None) -> str:
    tr = cfg.train
    lines = ["What this is: the PTST (Lyu et al. 2024) and LookAhead Tuning (Liu et al. 2025) experiment at toy "
             "scale, on CPU, through safeft's real stack (Ray Train, DeepSpeed ZeRO-2, packing, sharded evaluator).",
             "",
             "- Base: a tiny Llama-architecture chat model aligned in-process by `safeft.demo_base` (recipe and "
             "alignment curves in its directory: `base_recipe.json`, `base_curves.jsonl`).",
             f"- Fine-tuning: benign GSM8K-format arithmetic only (no refusals), {tr.max_steps} steps, lr {tr.lr:g} "
             f"({tr.scheduler}, {tr.warmup_steps} warm-up), {cfg.ray.num_workers} workers x {tr.micro_batch_size} "
             f"packed rows of {cfg.data.max_seq_len} tokens, ZeRO-{tr.zero_stage}; {seeds} seed(s) per variant.",
             "- vanilla-safe = train and test chat:llama; vanilla = train and test chat:vanilla; ptst = the vanilla "
             "run tested under chat:llama; lookahead-* = vanilla-safe plus the preview in training only.",
             "- Harmful prompts: the project's held-out set (topics and phrasings never trained on)"
             + (", and AdvBench" if any("advbench" in json.dumps(e) for e in entries) else "")
             + "; prefilling attack: the first 3 tokens of a compliant opening (\"Sure, here ...\") forced.",
             "- Utility: strict exact match (`#### N`) on held-out generated problems; greedy decoding.",
             f"- Demo wall time: {seconds:.0f} s (shared 2-core CPU: timings are noisy)."]
    runs = [(e["variant"], d) for e in entries for d in e.get("run_dirs", [])[:1]]
    finals = []
    for v, d in runs:
        pts = _curve(d)
        if pts:
            finals.append(f"{v} {pts[0][1]:.2f} -> {pts[-1][1]:.2f}")
    if finals:
        lines.append("- Fine-tuning loss, first -> last logged step: " + "; ".join(dict.fromkeys(finals)) + ".")
    return "\n".join(lines)


def write_demo_report(entries: list[dict], out_dir: str, order: list[str], cfg, seeds: int, seconds: float) -> dict:
    from safeft.eval.effects import write_effects

    os.makedirs(out_dir, exist_ok=True)
    curves = plot_curves(entries, out_dir)
    notes = _notes(entries, cfg, seeds, seconds, None)
    if curves:
        notes += "\n\n![fine-tuning curves](curves.png)"
    report = write_effects(entries, out_dir, order, notes)
    if curves:
        report["figures"].append(curves)
    return report
