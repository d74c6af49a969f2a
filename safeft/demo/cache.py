"""Cache keys of the demos' aligned bases: the recipe, and the package source that could change its weights.

A base is minutes (toy) to a quarter of an hour (SmolLM2) of CPU, so it is cached; a stale one would silently
give a wrong demo. The key hashes every Python file of the package except the parts that never run while a
base is built (the command-line layer, the demos' report writer, sweeps and Ray plumbing). A file added
anywhere else is covered without anyone listing it; an edit of a comment rebuilds too, which costs minutes,
never a wrong result.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # safeft/
# Relative to the package: code a base build never runs (everything else is hashed).
NOT_IN_BUILD = ("commands/", "cli.py", "__main__.py", "demo/report.py", "demo/console.py", "sweep.py",
                "ray_train.py", "launch.py", "plan.py")


def build_sources(package: Path = PACKAGE) -> list[Path]:
    """The package's .py files that a base build may run, in a stable order."""
    files = sorted(package.rglob("*.py"))
    return [f for f in files if not str(f.relative_to(package)).startswith(NOT_IN_BUILD)]


def code_key(package: Path = PACKAGE) -> str:
    """A hash of the sources a base build may run."""
    digest = hashlib.sha256()
    for path in build_sources(package):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def recipe_key(recipe: dict, package: Path = PACKAGE) -> str:
    """The cache key of a base: its recipe (every number of it) and the code that builds it."""
    blob = json.dumps(recipe, sort_keys=True, default=str).encode() + code_key(package).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
