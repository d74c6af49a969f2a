"""`safeft judge-agreement FILE... [--label-column final_label]`: refusal judges vs each other and vs labels."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("judge-agreement",
                       help="accuracy / Cohen's kappa between refusal judges and against human labels")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="safeft predictions (<task>__<template>.jsonl) or CSV/JSONL with a completion column")
    p.add_argument("--label-column", default=None, metavar="COL",
                   help="human label column, e.g. final_label (XSTest: full or partial refusal = refusal)")
    p.add_argument("--completion-column", default="completion", metavar="COL")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the kappa interval")
    p.add_argument("--out", default=None, metavar="FILE.md", help="also write the tables to this file")
    p.set_defaults(func=_agreement)


def _agreement(args) -> int:
    from safeft.eval.agreement import agreement_tables, judge_file
    from safeft.io import write_text

    files = [judge_file(f, args.label_column, args.completion_column) for f in args.files]
    table = agreement_tables(files, args.resamples)
    print(table, end="")
    if args.out:
        write_text(args.out, table)
    return 0
