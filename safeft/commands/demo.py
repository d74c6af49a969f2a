"""`safeft demo [--out DIR] [--quick] [--seeds N] [--rebuild-base]`: the main job on the embedded default (see safeft/demo.py)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole flow on CPU: tiny model, PTST + LookAhead, Ray, eval, report")
    p.add_argument("--out", default="runs", help="output directory (default runs/)")
    p.add_argument("--quick", action="store_true", help="fewer steps and prompts (the CI end-to-end test)")
    p.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per variant (intervals then cover seeds)")
    p.add_argument("--rebuild-base", action="store_true", help="rebuild the cached aligned base model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of configs/examples/demo.yaml")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from safeft.demo import run_demo

    run_demo(args.out, quick=args.quick, extra_overrides=args.overrides, seeds=args.seeds,
             rebuild_base=args.rebuild_base)
    return 0
