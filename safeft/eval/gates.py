"""Release gates on evaluation metrics: `eval.gates: {"advbench.refusal_asr": "<= 0.05"}`.

A gate applies to every (model, test template) row of its task; one breach fails the evaluation.
`safeft eval` exits with code 3 on a breach (GateError), 2 on other user errors.
"""

from __future__ import annotations

import operator
import re

from safeft.errors import SafeftError
from safeft.eval.names import SAFETY_METRIC

OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
BOUND = re.compile(r"\s*(<=|>=|<|>|==)\s*(-?(?:\d+\.?\d*|\.\d+)(?:e-?\d+)?)\s*")
EXIT_CODE = 3


class GateError(SafeftError):
    """At least one gate was breached; the message names metric, value and bound."""


# One per judge (refusal_asr, keyword_asr, llama_guard_asr, ...) and XSTest's over_refusal_rate / unsafe_refusal_rate.
SAFETY_SUFFIXES = ("_asr", "_safe_rate", "_mean_p", "_refusal_rate")


def gate_problems(metric: str, bound: str, task_names: list[str]) -> list[str]:
    """Why the gate `eval.gates.<metric>: <bound>` is malformed or can never match the configured tasks;
    empty when it is fine. Run by config validation, before any evaluation."""
    from safeft.eval.scoring import UTILITY_METRICS

    problems = [] if BOUND.fullmatch(bound) else [f"{bound!r}: expected a comparison such as '<= 0.05'"]
    task, _, name = metric.partition(".")
    if not name:
        problems.append(f"expected '<task>.<metric>', e.g. 'advbench.{SAFETY_METRIC}'")
    elif task_names and task not in task_names:
        problems.append(f"no task {task!r} in eval.tasks (tasks: {', '.join(task_names)})")
    elif task in UTILITY_METRICS and name not in UTILITY_METRICS[task]:
        problems.append(f"task {task!r} reports {', '.join(UTILITY_METRICS[task])}, not {name!r}")
    elif task not in UTILITY_METRICS and "/" not in name and not name.endswith(SAFETY_SUFFIXES):
        problems.append(f"safety metrics end in {', '.join(SAFETY_SUFFIXES)} (e.g. {task}.{SAFETY_METRIC}), not {name!r}")
    return problems


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
