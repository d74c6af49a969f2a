"""A training run's result files, readable without torch: the safety curve and the run summary.

    <run_dir>/logs/safety_curve.jsonl    one line per probe x test template (safeft.train.probe writes it)
    <run_dir>/train_summary.json         written by rank 0 when training ends (stopped or not)

    curve = read_safety_curve("runs/my-run")      # [{"step", "template", "harmful_rate", "ci95", "n", ...}]
    summary = read_train_summary("runs/my-run")   # None until the run has ended
"""

from __future__ import annotations

import json
import os
from typing import Optional

from safeft.io import read_json, write_json, write_text

CURVE = os.path.join("logs", "safety_curve.jsonl")
SUMMARY = "train_summary.json"


def curve_path(run_dir: str) -> str:
    return os.path.join(run_dir, CURVE)


def read_safety_curve(run_dir: str) -> list[dict]:
    """The probes of a run in step order: {"step", "template", "harmful_rate", "ci95": [lo, hi] (Wilson 95%),
    "n", "harmful", "seconds" (the whole probe, all templates), "judge", "dataset", "over_bound"}. [] without probes."""
    path = curve_path(run_dir)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return sorted(rows, key=lambda r: r["step"])  # stable: templates keep their order within a step


def append_curve(run_dir: str, rows: list[dict]) -> None:
    path = curve_path(run_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:  # one writer (rank 0); a line per template
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def trim_curve(run_dir: str, from_step: int) -> None:
    """Drop probes at `from_step` and later: a resumed run probes those steps again with the same weights."""
    rows = read_safety_curve(run_dir)
    if any(r["step"] >= from_step for r in rows):
        write_text(curve_path(run_dir), "".join(json.dumps(r) + "\n" for r in rows if r["step"] < from_step))


def write_train_summary(run_dir: str, summary: dict) -> str:
    path = os.path.join(run_dir, SUMMARY)
    write_json(path, summary)
    return path


def read_train_summary(run_dir: str) -> Optional[dict]:
    path = os.path.join(run_dir, SUMMARY)
    return read_json(path) if os.path.isfile(path) else None


def probe_totals(curve: list[dict]) -> dict:
    """Probe count and seconds over a curve (each probe's seconds appear on each of its template lines)."""
    per_step = {r["step"]: r["seconds"] for r in curve}
    return {"probes": len(per_step), "seconds": round(sum(per_step.values()), 3)}
