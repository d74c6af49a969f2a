"""`safeft train CONFIG [--set ...] [--resume]`, `safeft export CHECKPOINT OUT`, `safeft ckpt to-universal
CHECKPOINT`, `safeft plan ...`."""

from __future__ import annotations


def register(sub) -> None:
    from safeft.cli import add_config_args

    p = sub.add_parser("train", help="full-parameter fine-tune with DeepSpeed ZeRO (one process, or under a launcher)")
    add_config_args(p)
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from the run's latest checkpoint (or the given one); it must exist")
    p.add_argument("--check-only", action="store_true",
                   help="validate the config for --world-size processes and exit (launchers call this first)")
    p.add_argument("--world-size", type=int, default=None, help="with --check-only: the number of processes")
    p.add_argument("--ray", action="store_true",
                   help="run on ray.num_workers Ray Train workers (cluster: RAY_ADDRESS, ray.address, else local)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse_suppress())
    p.set_defaults(func=_train)

    e = sub.add_parser("export", help="DeepSpeed checkpoint -> Hugging Face directory (offline, one process)")
    e.add_argument("checkpoint", metavar="CHECKPOINT", help="a run's checkpoints/ directory or one step directory")
    e.add_argument("out", metavar="OUT", help="output directory")
    e.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    e.set_defaults(func=_export)

    ck = sub.add_parser("ckpt", help="checkpoint tools")
    ck_sub = ck.add_subparsers(dest="ckpt_command", metavar="ACTION", required=True)
    u = ck_sub.add_parser("to-universal", help="convert a checkpoint to DeepSpeed's universal format (offline), "
                                               "so a run can resume it at another number of GPUs")
    u.add_argument("checkpoint", metavar="CHECKPOINT", help="a run's checkpoints/ directory or one step directory")
    u.add_argument("--workers", type=int, default=None, help="extract/merge processes (default: CPU cores, max 16)")
    u.set_defaults(func=_to_universal)

    from safeft.plan import add_plan_args

    pl = sub.add_parser("plan", help="per-GPU memory of a ZeRO setup, from a model config alone")
    add_plan_args(pl)
    pl.set_defaults(func=_plan)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def _train(args) -> int:
    import os

    from safeft.config import load_config
    from safeft.errors import SafeftError
    from safeft.train import TrainHooks, run
    from safeft.train.checkpoint import drop_after_export, latest_tag

    cfg = load_config(args.config, args.overrides).single("train")
    if args.check_only:
        from safeft.distributed import check_train_config, stage_name

        world = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
        ds = check_train_config(cfg, world)
        stage = cfg.train.zero_stage
        print(f"{args.config}: ok for {world} process(es): {stage_name(stage)}, "
              f"global batch {ds['train_batch_size']} rows, bf16 {ds['bf16']['enabled']}")
        return 0
    if args.ray:  # Ray resumes from the checkpoint it holds for this run name (see safeft.ray_train)
        from safeft.ray_train import train_on_ray

        train_on_ray(cfg)
        drop_after_export(cfg)
        return 0
    hooks = TrainHooks()
    if args.resume == "auto":
        root = os.path.join(cfg.run_dir, "checkpoints")
        if latest_tag(root) is None:
            raise SafeftError(f"--resume: no checkpoint under {root!r} to resume from")
        hooks.resume_from = root
    elif args.resume:
        hooks.resume_from = args.resume
    result = run(cfg, hooks)
    if int(os.environ.get("RANK", "0")) == 0:
        dropped = drop_after_export(cfg)  # train.keep_checkpoints: false
        print(f"trained {result.steps} steps; checkpoint {'deleted' if dropped else result.last_checkpoint}; "
              f"export {result.export_dir}")
    return 0


def _export(args) -> int:
    from safeft.export import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out, args.dtype))
    return 0


def _to_universal(args) -> int:
    import os

    from safeft.train.checkpoint import locate, to_universal

    root, tag = locate(args.checkpoint)
    workers = args.workers or min(16, os.cpu_count() or 1)
    print(os.path.join(root, to_universal(root, tag, workers)))
    return 0


def _plan(args) -> int:
    from safeft.plan import plan_from_args

    report = plan_from_args(args)
    print(report.render())
    return 0 if report.fits else 1
