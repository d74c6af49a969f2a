"""`safeft eval CONFIG`, `safeft score --task T --input PRED.jsonl`, `safeft report RUN_DIRS... [--out DIR]`."""

from __future__ import annotations

import json
import sys

SCORE_TASKS = ("gsm8k", "samsum", "generic", "refusal", "keyword")


def register(sub) -> None:
    from safeft.cli import add_config_args
    from safeft.eval.refusal import KEYWORD_LISTS

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
    s.add_argument("--keyword-list", default="gcg", choices=tuple(KEYWORD_LISTS))
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
        _to_trackers(cfg, args)
        print(f"safeft: gate failed: {e}", file=sys.stderr)
        return EXIT_CODE
    _to_trackers(cfg, args)
    if "metrics" in summary:
        print(json.dumps(summary["metrics"], indent=2))
        for line in over_refusal_lines(summary.get("rows", [])):
            print(line)
    return 0


def _to_trackers(cfg, args) -> None:
    """An evaluation of the run's own export joins the tracker runs its training recorded (train.report_to)."""
    import os

    from safeft.train.trackers import log_evaluation

    if args.models or cfg.eval.models or int(os.environ.get("RANK", "0")) != 0:
        return
    log_evaluation(cfg.run_dir, args.out or cfg.eval.output_dir or os.path.join(cfg.run_dir, "eval"))


def over_refusal_lines(rows: list[dict]) -> list[str]:
    """One line per (model, test template) of an XSTest task: over-refusal on safe prompts, refusal on unsafe."""
    out = []
    for r in rows:
        m = r.get("metrics", {})
        if r.get("kind") == "refusal" and "over_refusal_rate" in m:
            unsafe = m.get("unsafe_refusal_rate", {}).get("value", float("nan"))
            out.append(f"{r['task']} {r['model_tag']} [{r['template']}]: over-refusal {m['over_refusal_rate']['value']:.3f} "
                       f"on safe prompts, refusal {unsafe:.3f} on unsafe prompts (n={r['n']}, judge "
                       f"{m['over_refusal_rate']['judge']}: a rule-based proxy)")
    return out


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
    from safeft.eval.judges import keyword_judge, refusal_judge
    from safeft.eval.scoring import UTILITY_SCORERS

    completions, references = read_predictions(args.input, need_reference=args.task not in ("keyword", "refusal"))
    if args.task == "keyword":
        judge, _, metrics = keyword_judge(completions, args.keyword_list)
    elif args.task == "refusal":
        judge, _, metrics = refusal_judge(completions)
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
