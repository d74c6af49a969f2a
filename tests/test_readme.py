"""The README's commands stay true: files they name exist, `safeft` command lines parse, configs validate."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from helpers import REPO

DOCS = [REPO / "README.md", REPO / "launcher" / "slurm" / "README.md", REPO / "BENCHMARKS.md"]


def blocks(language: str) -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def shell_commands() -> list[str]:
    """Every command line of the README's bash blocks, continuations joined, comments dropped."""
    lines = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line:
                lines.append(line)
    return lines


def test_every_path_the_docs_name_exists():
    missing = []
    for doc in DOCS:
        for path in sorted(set(re.findall(r"\b(?:configs|launcher|bench)/[\w./=-]+", doc.read_text()))):
            if not (REPO / path.rstrip(".")).exists():
                missing.append(f"{doc.name}: {path}")
    assert not missing, missing


@pytest.mark.parametrize("line", [c for c in shell_commands() if c.startswith("safeft ")])
def test_safeft_command_lines_parse(line):
    from safeft.cli import build_parser

    try:
        args = build_parser().parse_args(shlex.split(line)[1:])
    except SystemExit as e:
        pytest.fail(f"README command does not parse (exit {e.code}): {line}")
    config = getattr(args, "config", None)
    if config and config.startswith("configs/"):
        from safeft.config import load_config

        # structure only: the README's configs name data this machine may lack (HEx-PHI for LookAhead)
        load_config(str(REPO / config), getattr(args, "overrides", []), check_data=False)


def test_yaml_snippets_validate():
    from safeft.config import config_from_dict

    snippets = [yaml.safe_load(b) for b in blocks("yaml")]
    assert snippets, "the README shows at least the gates snippet"
    for snippet in snippets:
        cfg = config_from_dict(snippet)
        if cfg.eval.gates:  # gates are checked against the tasks they name
            tasks = sorted({metric.split(".")[0] for metric in cfg.eval.gates})
            snippet = {**snippet, "eval": {**snippet["eval"], "tasks": [{"name": t} for t in tasks]}}
            assert [t.name for t in config_from_dict(snippet).eval.tasks] == tasks
