"""Entry point for Ray jobs: `python -m safeft.launch train|eval|sweep CONFIG [--set KEY=VALUE ...]`.

    ray job submit --address http://HEAD:8265 --working-dir . -- python -m safeft.launch train CONFIG

Inside a Ray job RAY_ADDRESS is set, so the driver joins that cluster; elsewhere `ray.address` in the
config (or a local cluster) is used. The config is validated here, before any worker starts; a user
mistake prints one message and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from safeft.errors import SafeftError


def _parser() -> argparse.ArgumentParser:
    from safeft.cli import add_config_args

    p = argparse.ArgumentParser(prog="python -m safeft.launch", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("train", "train on Ray Train workers"), ("eval", "evaluate the run's export"),
                         ("sweep", "train and evaluate every point of the config's grid")):
        a = sub.add_parser(action, help=text)
        add_config_args(a)
        if action == "sweep":
            a.add_argument("--no-eval", action="store_true", help="train only; skip evaluation")
    return p


def run(action: str, config: str, overrides: list[str], evaluate: bool = True) -> dict:
    from safeft.config import load_config

    cfg = load_config(config, overrides)
    if action == "train":
        from safeft.ray_train import train_on_ray

        return train_on_ray(cfg)
    if action == "sweep":
        from safeft.sweep import run_sweep

        return run_sweep(cfg, evaluate=evaluate)
    from safeft.eval import evaluate as evaluate_fn

    cfg = cfg.single("eval")
    if cfg.eval.backend != "local" and (cfg.ray.use_gpu or os.environ.get("RAY_ADDRESS") or cfg.ray.address):
        from safeft.ray_train import connect

        connect(cfg)  # the job's cluster: replicas then run in GPU actors, never on the driver's GPU
    return evaluate_fn(cfg)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = run(args.action, args.config, args.overrides, evaluate=not getattr(args, "no_eval", False))
    except SafeftError as e:
        print(f"safeft: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 1 if isinstance(result, dict) and result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
