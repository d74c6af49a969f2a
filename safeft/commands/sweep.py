"""`safeft sweep CONFIG [--set ...] [--dry-run] [--no-eval]`: train and evaluate a config's grid on Ray."""

from __future__ import annotations


def register(sub) -> None:
    from safeft.cli import add_config_args

    p = sub.add_parser("sweep", help="run every point of the config's grid (lists in grid keys) on Ray")
    add_config_args(p)
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status; run nothing")
    p.add_argument("--no-eval", action="store_true", help="train only; skip evaluation")
    p.set_defaults(func=_sweep)


def _sweep(args) -> int:
    from safeft.config import load_config
    from safeft.sweep import plan_sweep, run_sweep

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        for run in plan_sweep(cfg):
            print(f"{run.status:8s} {run.name}  ->  {run.run_dir}")
        return 0
    summary = run_sweep(cfg, evaluate=not args.no_eval)
    return 1 if summary["failed"] else 0
