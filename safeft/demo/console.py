"""The demos' console: one progress line per stage (with an ETA where it can be estimated) on the terminal,
while every library's output (Ray, DeepSpeed, transformers, tqdm bars) goes to the demo's log file."""

from __future__ import annotations

import contextlib
import os
import sys
import time


class Console:
    """Progress lines to the real terminal while fd 1/2 (and so every library's prints) go to a log file."""

    def __init__(self, log_path: str):
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self.log_path = log_path
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        self.quiet_now = False

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()
        if self.quiet_now:
            print(f"[demo] {text}", flush=True)  # also into the log, for context

    @contextlib.contextmanager
    def quiet(self):
        sys.stdout.flush(), sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(self.log_path, "a") as f:
            os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
        self.quiet_now = True
        try:
            yield
        finally:
            self.quiet_now = False
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def eta(done: float, total: float, started: float) -> str:
    """'about N min left' from the share done so far and the time it took ('' before anything is done)."""
    if done <= 0 or total <= done:
        return ""
    left = (time.time() - started) * (total - done) / done
    return f"about {left / 60:.0f} min left" if left >= 90 else f"about {left:.0f} s left"
