"""The `safeft` command line. Each command group lives in `safeft/commands/<group>.py` and exposes
`register(subparsers)`; those modules import heavy libraries (torch, ray) only inside their handlers,
so `safeft --help` and config checks stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from safeft import __version__
from safeft.errors import SafeftError

COMMAND_MODULES = [
    "safeft.commands.config",
    "safeft.commands.render",
    "safeft.commands.eval",
    "safeft.commands.agreement",
    "safeft.commands.data",
    "safeft.commands.sweep",
    "safeft.commands.train",
    "safeft.commands.demo",
    "safeft.commands.model",
    "safeft.commands.doctor",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safeft",
        description="Full-parameter fine-tuning of chat LLMs that keeps their safety alignment (PTST, LookAhead).",
    )
    parser.add_argument("--version", action="version", version=f"safeft {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The CONFIG positional and repeated `--set key=value` overrides, shared by every command that reads one."""
    p.add_argument("config", metavar="CONFIG", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.max_seq_len=2048 (repeatable)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
        return int(result or 0)
    except SafeftError as e:
        if args.verbose:
            raise
        print(f"safeft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("safeft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
