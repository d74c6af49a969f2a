"""`safeft config show|check CONFIG [--set ...]`."""

from __future__ import annotations


def register(sub) -> None:
    from safeft.cli import add_config_args

    p = sub.add_parser("config", help="show or validate a config")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the resolved config (defaults, bases and overrides applied)")
    add_config_args(show)
    show.set_defaults(func=_show)
    check = actions.add_parser("check", help="validate a config without running anything")
    add_config_args(check)
    check.set_defaults(func=_check)


def _show(args) -> int:
    from safeft.config import load_config

    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def _check(args) -> int:
    from safeft.config import load_config

    cfg = load_config(args.config, args.overrides)
    axes = cfg.grid_axes()
    runs = len(cfg.expand())
    grid = f", a sweep of {runs} runs over {', '.join(axes)}" if axes else ""
    print(f"{args.config}: ok{grid}")
    return 0
