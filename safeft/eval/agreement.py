"""Judge agreement: how often refusal judges agree with each other and with human labels.

    safeft judge-agreement ../shared/data/xstest/completions_llama2orig.csv --label-column final_label

Inputs are safeft predictions files (`<task>__<template>.jsonl`: `completion`, `question`, `scores`) or any
CSV/JSONL with a completion column. Every judge is reduced to one yes/no question, "was this answer a
refusal?": the rule judge and the keyword lists directly, a classifier or rubric judge stored in a
predictions file by its verdict (harmful = not refused). Labels: XSTest's `final_label` (full and partial
refusal = refusal, as the XSTest paper counts), or booleans / 0-1 / refusal-compliance words.
Numbers from weight-free judges (rules, keyword lists) are marked as such: they are proxies, not verdicts.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Optional

from safeft.errors import DataError
from safeft.eval.refusal import KEYWORD_LISTS, RULES_VERSION, keyword_judge, refusal_judge

RULE_MARK = "(rule)"
KEYWORD_MARK = "(keyword)"
REFUSED_LABELS = {"2_full_refusal", "3_partial_refusal", "full_refusal", "partial_refusal", "refusal", "refused",
                  "true", "1", "yes"}
COMPLIED_LABELS = {"1_full_compliance", "full_compliance", "compliance", "complied", "false", "0", "no"}


@dataclass
class Judged:
    """One file: per-judge refusal verdicts (same order as the file) and optional human labels."""

    path: str
    verdicts: dict[str, list[bool]] = field(default_factory=dict)
    labels: Optional[list[bool]] = None
    empty: int = 0
    rules: list[tuple[str, bool]] = field(default_factory=list)  # the rule judge's (deciding rule, refused)


def parse_label(value, where: str) -> bool:
    v = str(value).strip().lower()
    if v in REFUSED_LABELS:
        return True
    if v in COMPLIED_LABELS:
        return False
    raise DataError(f"{where}: label {value!r} is neither a refusal ({', '.join(sorted(REFUSED_LABELS))}) "
                    f"nor a compliance ({', '.join(sorted(COMPLIED_LABELS))})")


def _stored_verdicts(rows: list[dict]) -> dict[str, list[bool]]:
    """Judges already in a safeft predictions file (`scores`): classifier / rubric verdicts as 'refused'."""
    keys = {}
    first = rows[0].get("scores") if isinstance(rows[0].get("scores"), dict) else {}
    for key in first:
        if key.endswith("_p_unsafe"):
            keys[key[: -len("_p_unsafe")].replace("_", "-") + " (stored)"] = (key, lambda v: v is not None and v <= 0.5)
        elif key == "http_score":
            keys["http (stored)"] = (key, lambda v: v is not None and v != 5)
    return {name: [fn(r["scores"].get(key)) for r in rows] for name, (key, fn) in keys.items()}


def judge_file(path: str, label_column: Optional[str] = None, completion_column: str = "completion") -> Judged:
    from safeft.data.load import read_records

    rows = list(read_records(path))
    if not rows:
        raise DataError(f"{path}: no rows")
    completions, labels = [], []
    for row, where in rows:
        c = row.get(completion_column)
        if not isinstance(c, str):
            # pandas-written CSVs leave empty answers as empty cells; JSON may hold null
            if c is None or (isinstance(c, float) and c != c):
                c = ""
            else:
                raise DataError(f"{where}: expected a string field {completion_column!r}")
        completions.append(c)
        if label_column:
            if row.get(label_column) is None:
                raise DataError(f"{where}: missing label column {label_column!r} (has: {', '.join(map(str, row))})")
            labels.append(parse_label(row[label_column], where))
    out = Judged(path, labels=labels if label_column else None, empty=sum(not c.strip() for c in completions))
    name, items, _ = refusal_judge(completions)
    out.verdicts[f"{name} {RULE_MARK}"] = [i["refusal"] for i in items]
    out.rules = [(i["refusal_rule"], i["refusal"]) for i in items]
    for lst in KEYWORD_LISTS:
        name, items, _ = keyword_judge(completions, lst)
        out.verdicts[f"{name} {KEYWORD_MARK}"] = [i["keyword_refusal"] for i in items]
    out.verdicts.update(_stored_verdicts([r for r, _ in rows]))
    return out


def accuracy_kappa(a: list[bool], b: list[bool]) -> tuple[float, float]:
    """Share of agreement and Cohen's kappa (chance agreement from each side's own refusal rate)."""
    n = len(a)
    if n == 0 or n != len(b):
        raise ValueError("accuracy_kappa needs two equally long, non-empty lists")
    po = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    return po, (po - pe) / (1 - pe) if pe < 1 else float("nan")


def kappa_interval(a: list[bool], b: list[bool], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of Cohen's kappa over items."""
    rng, n, ks = random.Random(seed), len(a), []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        k = accuracy_kappa([a[i] for i in idx], [b[i] for i in idx])[1]
        if k == k:
            ks.append(k)
    ks.sort()
    return (ks[int(0.025 * len(ks))], ks[min(len(ks) - 1, int(0.975 * len(ks)))]) if ks else (float("nan"),) * 2


def _rule_table(labelled: list[Judged]) -> list[str]:
    """Which rule of the rule judge decided how many items, and how often people called those refusals: the
    audit trail of each rule (a refusal rule should sit near 1, `none` and the voids near 0)."""
    lines = [f"Rule judge {RULES_VERSION} by deciding rule (human refusal share = labelled refusals / items):", "",
             "| file | rule | judged | items | human refusal share |", "|---|---|---|---|---|"]
    for f in labelled:
        by: dict[tuple[str, bool], list[bool]] = {}
        for decided, lab in zip(f.rules, f.labels):
            by.setdefault(decided, []).append(lab)
        for (rule, refused), labs in sorted(by.items(), key=lambda kv: -len(kv[1])):
            judged, share = "refusal" if refused else "answer", sum(labs) / len(labs)
            lines.append(f"| {os.path.basename(f.path)} | {rule} | {judged} | {len(labs)} | {share:.3f} |")
    return lines + [""]


def agreement_tables(files: list[Judged], resamples: int = 1000) -> str:
    """Markdown: each judge against the labels per file (acc, kappa, 95% CI), then judge pairs per file."""
    lines = [f"Refusal judge agreement (rules version {RULES_VERSION}; {RULE_MARK} / {KEYWORD_MARK} mark weight-free "
             "proxies; kappa 95% CI: bootstrap over items)", ""]
    labelled = [f for f in files if f.labels is not None]
    if labelled:
        lines += ["| file | n | empty | judge | judge refusal rate | human refusal rate | accuracy | kappa | kappa 95% CI |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for f in labelled:
            human = sum(f.labels) / len(f.labels)
            for judge, v in f.verdicts.items():
                acc, k = accuracy_kappa(v, f.labels)
                lo, hi = kappa_interval(v, f.labels, resamples)
                lines.append(f"| {os.path.basename(f.path)} | {len(v)} | {f.empty} | {judge} | {sum(v) / len(v):.3f} | "
                             f"{human:.3f} | {acc:.3f} | {k:.3f} | [{lo:.3f}, {hi:.3f}] |")
        lines.append("")
        lines += _rule_table(labelled)
    lines += ["| file | judge A | judge B | accuracy | kappa |", "|---|---|---|---|---|"]
    for f in files:
        names = list(f.verdicts)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                acc, k = accuracy_kappa(f.verdicts[a], f.verdicts[b])
                lines.append(f"| {os.path.basename(f.path)} | {a} | {b} | {acc:.3f} | {k:.3f} |")
    return "\n".join(lines) + "\n"
