"""The checkout every benchmark runs from (REPO), put first on sys.path so `import safeft` is this checkout's.
Bench scripts run as `python bench/NAME.py` (this folder is on sys.path) and start with `from repo_root import REPO`."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
