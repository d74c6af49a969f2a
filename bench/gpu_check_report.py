"""Verdicts and the markdown table of `bench/gpu_check.py` (kept apart so the figures' reading is testable).

Every verdict is `pass`, `fail`, `n/a (why)` or, in CPU mode, `not judged (CPU smoke)`: CPU figures
only show that the kit runs.
"""

from __future__ import annotations

from typing import Any, Optional

TARGETS = {
    "packed_vs_padded": ">= 1.4x real tokens/s, packed rows vs padded batches (each model)",
    "mfu_3b_packed": ">= 45% MFU, 3B class, packed 4k rows, bf16",
    "fused_ce_peak": "fused CE peak <= 1/10 of torch's at 16k tokens x 128k vocab",
    "fused_ce_time": "fused CE time <= Liger's at 16k tokens x 128k vocab",
    "eval_speedup": ">= 5x the naive loop's generated tokens/s (each engine)",
}


def _result(report: dict, step: str) -> Optional[Any]:
    return report.get("steps", {}).get(step, {}).get("result")


def _judge(ok: Optional[bool], why: str = "") -> str:
    return f"n/a ({why})" if ok is None else "pass" if ok else "fail"


def figures(report: dict) -> dict[str, tuple[str, Optional[bool], str]]:
    """target -> (figure text, met or None, why when None)."""
    out: dict[str, tuple[str, Optional[bool], str]] = {}
    mfu = _result(report, "train_mfu")
    rows = (mfu or {}).get("results", [])
    packed = [r for r in rows if "speedup_vs_padded" in r]
    if packed:
        text = ", ".join(f"{r['model']} {r['speedup_vs_padded']:.2f}x" for r in packed)
        out["packed_vs_padded"] = (text, all(r["speedup_vs_padded"] >= 1.4 for r in packed), "")
    else:
        out["packed_vs_padded"] = ("-", None, "train_mfu gave no figures")
    big = next((r for r in packed if r["model"] == "llama-3b"), None)
    if big and big.get("mfu") is not None:
        out["mfu_3b_packed"] = (f"{big['mfu'] * 100:.1f}% ({big['attention']})", big["mfu"] >= 0.45, "")
    else:
        out["mfu_3b_packed"] = ("-", None, "no 3B packed row with a known peak")
    out.update(_fused_figures(_result(report, "fused_ce")))
    ev = _result(report, "eval")
    engines = (ev or {}).get("engines", [])
    if engines:
        text = ", ".join(f"{e['engine']} {e['speedup']:.2f}x" for e in engines)
        out["eval_speedup"] = (text, all(e["speedup"] >= 5 for e in engines), "")
    else:
        out["eval_speedup"] = ("-", None, "eval gave no figures")
    return out


def _fused_figures(res: Optional[dict]) -> dict[str, tuple[str, Optional[bool], str]]:
    none = {"fused_ce_peak": ("-", None, "fused_ce gave no figures"),
            "fused_ce_time": ("-", None, "fused_ce gave no figures")}
    if not res:
        return none
    if isinstance(res.get("fused_sum"), dict):  # the CPU form: one shape, reference path, sum and none
        ratios = {k: res[k]["peak_ratio_over_torch"] for k in ("fused_sum", "fused_none") if k in res}
        text = ", ".join(f"{k[6:]} {v:.3f}" for k, v in ratios.items())
        return {"fused_ce_peak": (f"{text} of torch (CPU shape {res.get('shape')})", None, "not judged on CPU"),
                "fused_ce_time": ("-", None, "Liger needs CUDA")}
    row = next((r for r in res.get("rows", []) if r.get("tokens") == 16384 and r.get("vocab") == 128256), None)
    if row is None or not isinstance(row.get("fused_triton"), dict):
        return none
    fused, torch_row, liger = row["fused_triton"], row.get("torch"), row.get("liger")
    if isinstance(torch_row, dict):
        ratio = fused["peak_gb"] / torch_row["peak_gb"]
        peak = (f"{fused['peak_gb']:.2f} / {torch_row['peak_gb']:.2f} GiB = {ratio:.3f}", ratio <= 0.1, "")
    else:
        peak = (f"{fused['peak_gb']:.2f} GiB; torch {torch_row}", True if torch_row == "OOM" else None, "no torch row")
    if isinstance(liger, dict):
        t = (f"{fused['median_ms']:.1f} ms vs Liger {liger['median_ms']:.1f} ms",
             fused["median_ms"] <= liger["median_ms"], "")
    else:
        t = (f"{fused['median_ms']:.1f} ms", None, "liger-kernel not installed" if liger is None else f"Liger {liger}")
    return {"fused_ce_peak": peak, "fused_ce_time": t}


def verdicts(report: dict) -> dict[str, str]:
    cpu = report.get("mode") != "cuda"
    return {k: "not judged (CPU smoke)" if cpu else _judge(ok, why) for k, (_, ok, why) in figures(report).items()}


def render_markdown(report: dict) -> str:
    env, steps = report.get("env", {}), report.get("steps", {})
    lines = [f"### gpu-check {report.get('date_utc', '')} UTC: {report.get('mode')} on {env.get('device', '?')}",
             "",
             f"torch {env.get('torch')} (CUDA {env.get('cuda')}), transformers {env.get('transformers')}, "
             f"triton {env.get('triton')}, deepspeed {env.get('deepspeed')}, datasets {env.get('datasets')}, "
             f"liger {env.get('liger_kernel')}, flash-attn usable: {env.get('flash_attn_usable')}, "
             f"torch varlen: {env.get('torch_varlen')}; wall {report.get('wall_s')} s "
             f"(deadline {report.get('deadline_s')} s).", ""]
    if report.get("mode") != "cuda":
        lines += ["CPU smoke record: the kit runs end to end; these figures are not results.", ""]
    lines += ["| target | figure | verdict |", "|---|---|---|"]
    figs, verdict = figures(report), report.get("verdicts", {})
    for key, text in TARGETS.items():
        lines.append(f"| {text} | {figs[key][0]} | {verdict.get(key, '')} |")
    lines += ["", "| step | status | seconds | detail |", "|---|---|---|---|"]
    for name, s in steps.items():
        lines.append(f"| {name} | {s['status']} | {s.get('seconds', '')} | {_detail(name, s)} |")
    mfu = _result(report, "train_mfu")
    if mfu:
        lines += ["", "| model | variant | attention | tokens/s | MFU | speedup | peak GiB |",
                  "|---|---|---|---|---|---|---|"]
        for r in mfu.get("results", []):
            m = f"{r['mfu'] * 100:.1f}%" if r.get("mfu") else "-"
            mem = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") else "-"
            lines.append(f"| {r['model']} | {r['variant']} | {r['attention']} | {r['tokens_per_s']:.0f} | {m} | "
                         f"{r.get('speedup_vs_padded', 1.0):.2f}x | {mem} |")
    ev = _result(report, "eval")
    if ev:
        lines += ["", f"Evaluator: {ev['prompts']} prompts, max {ev['max_new']} new tokens, forced stops "
                  f"{ev['stop_lengths']}, naive {ev['naive_tok_s']} tok/s.", "",
                  "| engine | tok/s | speedup | outputs equal | lengths equal |", "|---|---|---|---|---|"]
        for e in ev.get("engines", []):
            lines.append(f"| {e['engine']} | {e['tok_s']} | {e['speedup']}x | {e['outputs_equal']} | "
                         f"{e['lengths_equal']} |")
    return "\n".join(lines) + "\n"


def _detail(name: str, s: dict) -> str:
    if "tests" in s:
        t = s["tests"]
        failed = "; failed: " + ", ".join(t["failed"][:8]) if t["failed"] else ""
        return f"{t['passed']} passed, {len(t['failed'])} failed, {t['skipped']} skipped{failed}"
    if "parse_error" in s:
        return f"output unreadable: {s['parse_error']}"
    if s["status"] != "ok":
        tail = [ln for ln in s.get("tail", "").splitlines() if ln.strip()]
        return (s.get("detail") or (tail[-1] if tail else "")).replace("|", "/")[:200]
    return s.get("detail", "")
