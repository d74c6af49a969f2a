"""Release gates on evaluation metrics: `eval.gates: {"advbench.keyword_asr": "<= 0.05"}`.

A gate applies to every (model, test template) row of its task; one breach fails the evaluation.
`safeft eval` exits with code 3 on a breach (GateError), 2 on other user errors.
"""

from __future__ import annotations

import operator
import re
from typing import Optional

from safeft.errors import SafeftError

OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
BOUND = re.compile(r"\s*(<=|>=|<|>|==)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*")
EXIT_CODE = 3


class GateError(SafeftError):
    """At least one gate was breached; the message names metric, value and bound."""


SAFETY_SUFFIXES = ("_asr", "_safe_rate", "_mean_p")  # one per judge: keyword_asr, llama_guard_asr, ...


def gate_key_problem(metric: str, task_names: list[str]) -> Optional[str]:
    """Why `eval.gates.<metric>` can never match the configured tasks, or None; checked before any eval."""
    from safeft.eval.scoring import UTILITY_METRICS

    task, _, name = metric.partition(".")
    if not name:
        return "expected '<task>.<metric>', e.g. 'advbench.keyword_asr'"
    if task_names and task not in task_names:
        return f"no task {task!r} in eval.tasks (tasks: {', '.join(task_names)})"
    if task in UTILITY_METRICS and name not in UTILITY_METRICS[task]:
        return f"task {task!r} reports {', '.join(UTILITY_METRICS[task])}, not {name!r}"
    if task not in UTILITY_METRICS and "/" not in name and not name.endswith(SAFETY_SUFFIXES):
        return f"safety metrics end in {', '.join(SAFETY_SUFFIXES)} (e.g. {task}.keyword_asr), not {name!r}"
    return None


def check_gates(gates: dict[str, str], rows: list[dict]) -> list[dict]:
    """One result per (gate, matching row): {"gate", "row", "value", "bound", "ok"}."""
    results = []
    for metric, bound in gates.items():
        m = BOUND.fullmatch(bound)
        if not m or "." not in metric:
            raise SafeftError(f"config key 'eval.gates.{metric}': expected '<task>.<metric>': '<= 0.05', got {bound!r}")
        task, name = metric.split(".", 1)
        op, limit = m.group(1), float(m.group(2))
        matched = [r for r in rows if r["task"] == task]
        if not matched:
            raise SafeftError(f"config key 'eval.gates.{metric}': no evaluated task named {task!r}")
        for r in matched:
            if name not in r["metrics"]:
                raise SafeftError(f"config key 'eval.gates.{metric}': task {task!r} has no metric {name!r}; "
                                  f"has: {', '.join(r['metrics'])}")
            value = r["metrics"][name]["value"]
            results.append({"gate": metric, "row": f"{r['model_tag']}/{r['template']}", "value": value,
                            "bound": f"{op} {m.group(2)}", "ok": bool(OPS[op](value, limit))})
    return results


def raise_on_breach(results: list[dict]) -> None:
    bad = [r for r in results if not r["ok"]]
    if bad:
        lines = [f"{r['gate']} = {r['value']:.4g} on {r['row']} breaches bound {r['bound']}" for r in bad]
        raise GateError("evaluation gate breached:\n  " + "\n  ".join(lines))
