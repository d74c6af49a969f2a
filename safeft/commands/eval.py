"""`safeft eval CONFIG`, `safeft score --task T --input PRED.jsonl`, `safeft report RUN_DIRS... [--out DIR]`."""

from __future__ import annotations

import json
import sys

SCORE_TASKS = ("gsm8k", "samsum", "generic", "keyword")


def register(sub) -> None:
    from safeft.cli import add_config_args

    p = sub.add_parser("eval", help="evaluate models on utility and safety tasks (sharded, resumable)")
    add_config_args(p)
    p.add_argument("--model", dest="models", action="append", default=None, metavar="PATH",
                   help="model directory or hub name (repeatable); default: eval.models or the run's export")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default <run_dir>/eval)")
    p.set_defaults(func=_eval)

    s = sub.add_parser("score", help="re-score saved generations without generating")
    s.add_argument("--task", required=True, choices=SCORE_TASKS)
    s.add_argument("--input", required=True, metavar="PRED.jsonl",
                   help="JSONL with 'completion' (and 'reference' for utility tasks) per line")
    s.add_argument("--keyword-list", default="gcg", choices=("gcg", "qi"))
    s.set_defaults(func=_score)

    r = sub.add_parser("report", help="markdown table and plots from evaluated runs")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (with eval/summary.json)")
    r.add_argument("--out", default="report", metavar="DIR")
    r.set_defaults(func=_report)


def _eval(args) -> int:
    from safeft.config import load_config
    from safeft.eval import evaluate
    from safeft.eval.gates import EXIT_CODE, GateError

    cfg = load_config(args.config, args.overrides).single("eval")
    try:
        summary = evaluate(cfg, models=args.models, out_dir=args.out)
    except GateError as e:
        print(f"safeft: gate failed: {e}", file=sys.stderr)
        return EXIT_CODE
    if "metrics" in summary:
        print(json.dumps(summary["metrics"], indent=2))
    return 0


def read_predictions(path: str, need_reference: bool) -> tuple[list[str], list[str]]:
    """Completions (and references) of a predictions file: JSONL, JSON or CSV with a 'completion' field."""
    from safeft.data.load import read_records
    from safeft.errors import DataError

    completions, references = [], []
    for row, where in read_records(path):
        if not isinstance(row.get("completion"), str):
            raise DataError(f"{where}: expected a string field 'completion'")
        if need_reference and row.get("reference") is None:
            raise DataError(f"{where}: missing field 'reference' (needed to score a utility task)")
        completions.append(row["completion"])
        references.append(str(row.get("reference", "")))
    if not completions:
        raise DataError(f"{path}: no predictions")
    return completions, references


def _score(args) -> int:
    from safeft.eval.judges import keyword_judge
    from safeft.eval.scoring import UTILITY_SCORERS

    completions, references = read_predictions(args.input, need_reference=args.task != "keyword")
    if args.task == "keyword":
        judge, _, metrics = keyword_judge(completions, args.keyword_list)
    else:
        judge, (_, metrics) = f"reference:{args.task}", UTILITY_SCORERS[args.task](completions, references)
    print(json.dumps({"task": args.task, "judge": judge, "n": len(completions), "metrics": metrics}, indent=2))
    return 0


def _report(args) -> int:
    from safeft.eval.report import write_report

    out = write_report(args.runs, args.out)
    print(out["table"])
    print(f"wrote {out['report']} and {len(out['figures'])} figures")
    return 0
