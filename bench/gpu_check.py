"""One command that checks every GPU path of safeft on one CUDA GPU in under 8 minutes: `make gpu-check`.

    python bench/gpu_check.py                 # CUDA: install carried wheels, report, test, benchmark
    python bench/gpu_check.py --cpu           # the same steps at smoke size on CPU (automatic without CUDA)

Steps run in order, each in its own subprocess under a time cap, all under one global deadline
(default 470 s); a failing or timed-out step is recorded and the next one runs:
  install     pip-installs .whl/*.whl (bench/gpu_wheels.sh gathers them) offline into a scratch site dir
  env         versions, device, which optional packages and attention backends really import
  tests       the GPU-marked tests plus the Triton kernel tests (pytest, JUnit XML parsed)
  eval        bench/eval_throughput.py: budget and continuous engines vs the naive loop, varied stops
              (CPU mode: budget only; continuous batching's CPU cache set-up alone takes tens of seconds)
  train_mfu   bench/train_mfu.py: padded vs packed tokens/s and MFU on 1B- and 3B-class shapes
  fused_ce    bench/fused_ce.py: fused CE peak memory and time vs torch (and Liger when present)
Writes gpu_check.json (every figure, verdict and log tail), gpu_check.md (a table to paste into
BENCHMARKS.md) and gpu_check.log (every step's output) to --out (default: $OUT, else runs/gpu-check).
Targets are judged only on CUDA; CPU figures are a smoke record that the kit runs, not results.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/, also when imported from elsewhere

from gpu_check_report import TARGETS, render_markdown, verdicts  # noqa: E402
from repo_root import REPO  # noqa: E402

CAPS = {"install": 90, "env": 60, "tests": 200, "eval": 100, "train_mfu": 150, "fused_ce": 120}  # seconds, CUDA
# CPU mode is a smoke run on a possibly shared CI machine: generous caps, figures not judged
CPU_CAPS = {"install": 60, "env": 120, "tests": 180, "eval": 180, "train_mfu": 180, "fused_ce": 300}

ENV_PROBE = r"""
import importlib, json, platform, sys
out = {"python": platform.python_version()}
for name in ("torch", "transformers", "triton", "deepspeed", "datasets", "liger_kernel", "accelerate"):
    try:
        out[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as e:
        out[name] = None
import torch
out["cuda"] = torch.version.cuda
out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    out["gpu_mem_gib"] = round(total / 2**30, 1)
    out["bf16"] = torch.cuda.is_bf16_supported()
import safeft.model as m
out["flash_attn_usable"] = m.flash_attn_usable()
out["torch_varlen"] = m._torch_varlen() is not None
try:
    import safeft.kernels
    out["safeft_kernels"] = True
except Exception as e:
    out["safeft_kernels"] = f"{type(e).__name__}: {e}"
if out["deepspeed"]:
    from deepspeed.accelerator import get_accelerator
    out["ds_accelerator"] = get_accelerator().device_name()
print("ENV " + json.dumps(out))
"""


class Check:
    """The steps' shared state: deadline, environment for subprocesses, output folder, results."""

    def __init__(self, args):
        self.cpu, self.out, self.work = args.cpu, args.out, tempfile.mkdtemp(prefix="safeft-gpu-check-")
        self.deadline = time.monotonic() + args.deadline
        self.caps = CPU_CAPS if args.cpu else CAPS
        self.env = {k: v for k, v in os.environ.items() if not (k == "DS_ACCELERATOR" and not args.cpu)}
        self.env.update(PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p),
                        TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
                        HF_DATASETS_OFFLINE="1")
        if args.cpu:
            self.env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
        self.steps: dict[str, dict] = {}
        self.log = open(os.path.join(self.out, "gpu_check.log"), "w", encoding="utf-8")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], parse=None) -> dict:
        """Run one step under min(its cap, time left); record status, seconds, figures and the output tail."""
        cap = min(self.caps[name], self.left() - 5)
        if cap < 10:
            return self._record(name, {"status": "skipped", "detail": "global deadline reached", "seconds": 0})
        shown = " ".join("<probe>" if "\n" in c else os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd)
        print(f"[gpu-check] {name}: {shown} (cap {cap:.0f} s)", flush=True)
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=cap)
            text, status = p.stdout, "ok" if p.returncode == 0 else f"failed (exit {p.returncode})"
        except subprocess.TimeoutExpired as e:
            out = e.stdout or ""
            text, status = out.decode(errors="replace") if isinstance(out, bytes) else out, f"timeout ({cap:.0f} s)"
        rec = {"status": status, "seconds": round(time.monotonic() - t0, 1), "tail": text[-3000:]}
        self.log.write(f"\n===== {name}: {status}, {rec['seconds']} s\n$ {' '.join(cmd)}\n{text}\n")
        self.log.flush()
        if parse is not None and status == "ok":
            try:
                rec.update(parse(text))
            except Exception as e:  # a step that ran but whose output cannot be read still reports
                rec["parse_error"] = f"{type(e).__name__}: {e}"
        return self._record(name, rec)

    def _record(self, name: str, rec: dict) -> dict:
        self.steps[name] = rec
        print(f"[gpu-check] {name}: {rec['status']} ({rec.get('seconds', 0)} s)", flush=True)
        return rec


def step_install(c: Check, wheels: str) -> None:
    whls = sorted(glob.glob(os.path.join(wheels, "*.whl")))
    if c.cpu or not whls:
        why = "cpu mode: this environment as is" if c.cpu else f"no wheels in {wheels}: this environment as is"
        c._record("install", {"status": "skipped", "detail": why, "seconds": 0})
        return
    site = os.path.join(c.work, "site")
    rec = c.run("install", [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--upgrade", "--target", site, *whls])
    rec["wheels"] = [os.path.basename(w) for w in whls]
    if rec["status"] == "ok":
        c.env["PYTHONPATH"] = os.pathsep.join([REPO, site] + [p for p in [os.environ.get("PYTHONPATH")] if p])


def _parse_env(text: str) -> dict:
    line = next(ln for ln in text.splitlines() if ln.startswith("ENV "))
    return {"env": json.loads(line[4:])}


def gpu_test_files() -> list[str]:
    """Test modules with GPU-marked tests, plus the Triton kernel tests (skip-if-no-CUDA, not marked)."""
    files = ["tests/kernels/test_fused_linear_cross_entropy_triton.py"]
    for path in sorted(glob.glob(os.path.join(REPO, "tests", "**", "test_*.py"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            if "pytest.mark.gpu" in f.read():
                files.append(os.path.relpath(path, REPO))
    return files


def _parse_junit(path: str) -> dict:
    root = ET.parse(path).getroot()
    cases, failed, skipped = 0, [], 0
    for case in root.iter("testcase"):
        cases += 1
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skipped += 1
    return {"tests": {"total": cases, "passed": cases - len(failed) - skipped, "failed": failed, "skipped": skipped}}


def step_tests(c: Check) -> None:
    xml = os.path.join(c.work, "gpu_tests.xml")
    rec = c.run("tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=200",
                          f"--junitxml={xml}", *gpu_test_files()])
    if os.path.isfile(xml):
        rec.update(_parse_junit(xml))


def _bench(c: Check, name: str, script: str, args: list[str]) -> None:
    out = os.path.join(c.work, f"{name}.json")

    def parse(_text):
        with open(out, encoding="utf-8") as f:
            return {"result": json.load(f)}

    c.run(name, [sys.executable, os.path.join(REPO, "bench", script), *args, "--out", out], parse)


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="smoke size on CPU (automatic without CUDA)")
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else runs/gpu-check)")
    p.add_argument("--deadline", type=float, default=470, help="global deadline in seconds")
    p.add_argument("--wheels", default=os.path.join(REPO, ".whl"), help="carried wheels to install offline")
    p.add_argument("--steps", default="install,env,tests,eval,train_mfu,fused_ce", help="comma-separated subset")
    args = p.parse_args(argv)
    if not args.cpu:
        import torch

        args.cpu = not torch.cuda.is_available()
    args.out = args.out or os.environ.get("OUT") or os.path.join(REPO, "runs", "gpu-check")
    os.makedirs(args.out, exist_ok=True)
    c, steps = Check(args), args.steps.split(",")
    t0 = time.monotonic()
    py = sys.executable
    if "install" in steps:
        step_install(c, args.wheels)
    if "env" in steps:
        c.run("env", [py, "-c", ENV_PROBE], _parse_env)
    if "tests" in steps:
        step_tests(c)
    if "eval" in steps:
        _bench(c, "eval", "eval_throughput.py", ["--prompts", "8", "--max-new", "8", "--engines", "budget"] if c.cpu
               else ["--device", "cuda", "--arch", "1b", "--prompts", "128", "--max-new", "128"])
    if "train_mfu" in steps:
        _bench(c, "train_mfu", "train_mfu.py", ["--smoke", "--steps", "2"] if c.cpu
               else ["--models", "llama-1b,llama-3b", "--steps", "6", "--warmup", "2", "--docs", "1200"])
    if "fused_ce" in steps:
        _bench(c, "fused_ce", "fused_ce.py", ["--device", "cpu", "--reps", "1", "--cpu-shape", "1024", "256", "8000", "--tmp", c.work] if c.cpu
               else ["--device", "cuda", "--tokens", "16384", "--vocabs", "128256", "--tmp", c.work])
    report = {"mode": "cpu-smoke" if c.cpu else "cuda", "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "wall_s": round(time.monotonic() - t0, 1), "deadline_s": args.deadline,
              "env": c.steps.get("env", {}).get("env", {}), "steps": c.steps, "targets": TARGETS}
    report["verdicts"] = verdicts(report)
    md = render_markdown(report)
    _write(os.path.join(args.out, "gpu_check.json"), json.dumps(report, indent=2, default=str))
    _write(os.path.join(args.out, "gpu_check.md"), md)
    c.log.close()
    print(md)
    print(f"[gpu-check] {report['mode']}: {report['wall_s']} s; results in {args.out}", flush=True)
    return 0 if all(s["status"] in ("ok", "skipped") for s in c.steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
