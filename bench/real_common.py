"""What bench/real_train.py and bench/real_eval.py share: the model, the GSM8K rows, child processes, the record.

Both benchmarks run every side in its own process with the same thread count (`--threads`, 1 by default:
on this shared 2-core machine, two OpenMP threads per process wait a scheduler slice at every parallel
region whenever another job holds the other core, which made single runs 5-10x slower and unrepeatable).
A side that uses two processes (safeft's two ranks or two replicas) uses twice the cores, and says so.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_MODEL = "smollm2-135m-instruct"
TEMPLATE = "chat-template"  # the model's own chat template (ChatML) ...
SYSTEM = "none"  # ... without a system prompt of ours: SmolLM2's template then inserts its default one
PACKAGES = ("safeft", "torch", "transformers", "accelerate", "deepspeed", "datasets", "trl", "lm_eval")


def model_dir(name_or_path: str) -> str:
    """A plain HF directory: the named default (imported once from its GGUF file) or a directory as is."""
    from safeft.model_import import resolve_model

    return resolve_model(name_or_path)


def gsm8k_rows(split: str) -> list[dict]:
    from safeft.data.load import read_records
    from safeft.data.shared import shared_file

    path = shared_file("gsm8k", f"{split}.jsonl")
    if path is None:
        sys.exit(f"needs GSM8K {split}: set SAFEFT_SHARED_DATA to the folder holding gsm8k/{split}.jsonl")
    return [row for row, _ in read_records(path)]


def chat_template(tokenizer):
    from safeft.templates import get_template

    return get_template(TEMPLATE, tokenizer=tokenizer, system=SYSTEM)


def parse_sides(parser, text: str, known) -> list[str]:
    """`--sides a,b`: the named sides in order, or a parser error naming the unknown ones and the known."""
    sides = [s for s in text.split(",") if s]
    unknown = [s for s in sides if s not in known]
    if unknown:
        parser.error(f"--sides: unknown {unknown}; known: {', '.join(known)}")
    return sides


def child_env(threads: int, **extra: str) -> dict:
    """A side's environment: no rendezvous variables of this process (a side's ranks get theirs in `extra`)."""
    from safeft.distributed import RENDEZVOUS_VARS

    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), DS_ACCELERATOR="cpu",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    env.update(extra)
    return env


def run_children(cmds: list[list[str]], envs: list[dict], log_path: str, timeout: float) -> float:
    """Start every command at once (one side: one process, or its ranks), wait for all; wall seconds.
    Each child writes its own log (`log_path` + .<side>.<i>); a failure raises with the failing child's last
    line first (a truncated report still shows why) and its tail."""
    t0 = time.perf_counter()
    side = cmds[0][cmds[0].index("--child") + 1] if "--child" in cmds[0] else "child"
    logs = [f"{log_path}.{side}.{i}" for i in range(len(cmds))]
    procs = []
    try:
        for c, e, path in zip(cmds, envs, logs):
            with open(path, "w", encoding="utf-8") as log:
                procs.append(subprocess.Popen(c, cwd=REPO, env=e, stdout=log, stderr=subprocess.STDOUT))
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    bad = [i for i, code in enumerate(codes) if code]
    if bad:
        tail = Path(logs[bad[0]]).read_text(encoding="utf-8", errors="replace")[-6000:]
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "(no output)")
        raise RuntimeError(f"{side} exited with {codes}: {last.strip()}\nlog {logs[bad[0]]}:\n{tail}")
    return time.perf_counter() - t0


def slots(sides: list[str], processes: dict, pair: bool) -> list[list[str]]:
    """The order sides run in, as slots of sides that run at once. `pair`: one-process sides two at a time, in
    the order given, one per core (so a pair meets the same outside load); a side of several processes runs
    alone. Without `pair`, one side at a time."""
    out: list[list[str]] = []
    waiting: Optional[list[str]] = None
    for s in sides:
        if not pair or processes.get(s, 1) > 1:
            out.append([s])
        elif waiting is None:
            waiting = [s]
            out.append(waiting)
        else:
            waiting.append(s)
            waiting = None
    return out


def run_slot(slot: list[str], run_one) -> list[dict]:
    """Run the sides of one slot at once (`run_one(side) -> dict`, each starting its own processes); a side's
    record says which sides shared its slot."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(slot)) as pool:
        results = list(pool.map(run_one, slot))
    for r in results:
        r["ran_with"] = [s for s in slot if s != r["side"]]
    return results


class LoadSampler:
    """The 1-minute load average, sampled every `every` seconds while the benchmark runs."""

    def __init__(self, every: float = 15.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(every)

    def summary(self) -> dict:
        self._stop.set()
        s = self.samples or [os.getloadavg()[0]]
        return {"min": round(min(s), 2), "median": round(statistics.median(s), 2), "max": round(max(s), 2),
                "samples": len(s)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE")
                                                                       * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def median(values: list[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_outputs(out: str, record: dict, markdown: str) -> None:
    """`out` (JSON) and the same name with .md, atomically."""
    from safeft.io import write_json, write_text

    write_json(out, record)
    write_text(str(Path(out).with_suffix(".md")), markdown)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
