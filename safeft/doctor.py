"""Preflight: can this machine build and run safeft's environment? Each check says what to do when it fails.

    safeft doctor                                    # every check, from the installed environment
    python3 -m safeft.doctor --only python,venv,compiler,disk    # what `make venv` checks before it starts

Standard library only: `make venv` runs it with the machine's python3 before any dependency is installed.
Checks: the Python version; venv support (Debian/Ubuntu split `venv`/`ensurepip` into python3-venv); a C++
compiler and the Python headers (DeepSpeed JIT-builds its CPU ops, CPU Adam and the shared-memory
communication op, at first use); free disk (the environment is about 3 GB); and which torch build is there,
or which one pip would install (on x86-64 Linux PyPI's torch is the CUDA build, several GB of nvidia-*
wheels; `make venv` then adds the PyTorch CPU wheel index; a GPU cluster keeps its own torch).
A failed check exits 1; a warning does not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

from safeft import REPO

MIN_PYTHON = (3, 10)
VENV_GIB = 4.0  # the environment (~3 GB: torch CPU, deepspeed, ray, transformers, ...) plus pip's unpacking
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_SPEC = "torch==2.13.0"  # the Makefile's TORCH_CPU
CHECKS = ("python", "venv", "compiler", "disk", "torch")


@dataclass
class Result:
    name: str
    status: str  # ok | warn | FAIL
    detail: str
    fix: str = ""


def check_python(v=sys.version_info) -> Result:
    if (v.major, v.minor) >= MIN_PYTHON:
        return Result("python", "ok", f"{sys.executable}: Python {v.major}.{v.minor}.{v.micro}")
    return Result("python", "FAIL", f"{sys.executable}: Python {v.major}.{v.minor}; safeft needs 3.10 or newer",
                  "install Python >= 3.10 (Debian/Ubuntu: apt-get install python3.11 python3.11-venv) and run "
                  "make venv PYTHON=python3.11")


def check_venv(venv: str) -> Result:
    if os.path.isfile(os.path.join(venv, "bin", "python")):
        return Result("venv", "ok", f"{venv} exists")
    try:
        import ensurepip
        import venv as _venv  # noqa: F401

        pip = ensurepip.version()  # reads the bundled pip wheel: absent where the distribution strips it
    except Exception as e:  # ImportError, or a Debian ensurepip without its wheels
        return Result("venv", "FAIL", f"{sys.executable} cannot create a virtual environment with pip "
                      f"({type(e).__name__}: {e})",
                      f"Debian/Ubuntu: apt-get install python{sys.version_info.major}.{sys.version_info.minor}-venv "
                      "(or python3-venv); other systems: a Python build with venv and ensurepip")
    return Result("venv", "ok", f"venv and ensurepip (pip {pip}) available; {venv} will be created")


def find_cxx() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def check_compiler() -> Result:
    """A C++ compiler that can build a Python extension (what torch.utils.cpp_extension does for DeepSpeed)."""
    fix = ("Debian/Ubuntu: apt-get install g++ python3-dev; Fedora/RHEL: dnf install gcc-c++ python3-devel; "
           "macOS: xcode-select --install; or set CXX to your compiler")
    cxx = find_cxx()
    if cxx is None:
        return Result("compiler", "FAIL", "no C++ compiler (CXX, c++, g++, clang++) on PATH: DeepSpeed builds its "
                      "CPU ops (CPU Adam, the shared-memory comm op) with one at first use", fix)
    include = sysconfig.get_paths()["include"]
    src = "#include <Python.h>\nint main() { return 0; }\n"
    try:
        p = subprocess.run([cxx, "-x", "c++", "-fsyntax-only", "-I", include, "-"], input=src, text=True,
                           capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Result("compiler", "FAIL", f"{cxx} does not run: {e}", fix)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return Result("compiler", "FAIL", f"{cxx} cannot compile against Python.h in {include}: {last}", fix)
    return Result("compiler", "ok", f"{cxx} compiles against Python.h ({include})")


def check_disk(venv: str) -> Result:
    where = os.path.dirname(os.path.abspath(venv)) or "."
    free = shutil.disk_usage(where).free / 2 ** 30
    need = 1.0 if os.path.isdir(venv) else VENV_GIB
    if free >= need:
        return Result("disk", "ok", f"{free:.1f} GiB free in {where} (needs about {need:.0f} GiB)")
    return Result("disk", "FAIL", f"{free:.1f} GiB free in {where}; the environment needs about {need:.0f} GiB",
                  "free space there, or clone onto a larger disk; pip's cache can go: pip cache purge")


def has_nvidia_gpu() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def _installed_torch(python: str) -> dict | None:
    code = ("import json, torch; print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda, "
            "'gpu': torch.cuda.is_available()}))")
    try:
        p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None


def torch_build(report: dict) -> tuple[str, str, str]:
    """(build, version, source) of torch in a `pip install --dry-run --report` report: build is 'cpu' or 'cuda'."""
    item = next(i for i in report["install"] if i["metadata"]["name"].lower() == "torch")
    meta, url = item["metadata"], item.get("download_info", {}).get("url", "?")
    cuda = "+cu" in meta["version"] or any(r.lower().startswith("nvidia-") for r in meta.get("requires_dist") or [])
    return ("cuda" if cuda else "cpu"), meta["version"], url


def _would_install(python: str, spec: str, index: str) -> tuple[dict | None, str]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        cmd = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed",
               "--report", out, spec] + (["--extra-index-url", index] if index else [])
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, str(e)
        if p.returncode != 0 or not os.path.isfile(out):
            return None, (p.stderr.strip().splitlines() or ["pip failed"])[-1]
        with open(out, encoding="utf-8") as f:
            return json.load(f), ""


def torch_install(python: str, spec: str, index: str, gpu: bool) -> tuple[list[str], Result]:
    """The `pip install` arguments that give this machine the right torch build, and what they will install.

    pip's own configuration first (a CPU wheel it finds, macOS, a GPU machine: as it is); where that is the
    CUDA build on a machine without an NVIDIA GPU, the CPU wheel index is added. Asking the index only then
    keeps an unreachable index (an offline mirror) from costing retries on every package."""
    plain, error = _would_install(python, spec, "")
    if plain is None:
        return [spec], Result("torch", "warn", f"cannot tell which torch pip would install for {spec} ({error})",
                              "check the network or pip's index (pip config list): make venv needs it")
    build, version, url = torch_build(plain)
    detail = f"pip would install torch {version}, the {build.upper()} build, from {url}"
    if build == "cpu" and gpu:
        return [spec], Result("torch", "warn", detail + " on a machine with an NVIDIA GPU",
                              "a GPU cluster brings its own torch: python3 -m venv .venv, install the cluster's torch "
                              "into it first (make venv keeps it), or make venv TORCH_CPU=torch TORCH_INDEX=")
    if build == "cpu" or gpu:
        return [spec], Result("torch", "ok", detail)
    if index:
        cpu, _ = _would_install(python, spec, index)
        if cpu is not None and torch_build(cpu)[0] == "cpu":
            _, version, url = torch_build(cpu)
            return [spec, "--extra-index-url", index], Result(
                "torch", "ok", f"pip would install torch {version}, the CPU build, from {url} (without the CPU "
                "wheel index: the CUDA build)")
    fix = (f"the CPU wheel index {index} did not answer: check the network, or point TORCH_CPU at a CPU wheel file "
           "(make venv TORCH_CPU=/path/to/torch-2.13.0+cpu-....whl)" if index else
           f"make venv TORCH_INDEX={CPU_INDEX} (the CPU wheel index)")
    return [spec], Result("torch", "warn", detail + " (nvidia-* wheels, several GB) on a machine without an NVIDIA "
                          "GPU; it runs on CPU too", fix)


def check_torch(venv: str, spec: str = TORCH_SPEC, index: str = CPU_INDEX) -> Result:
    gpu = has_nvidia_gpu()
    in_venv = os.path.isfile(os.path.join(venv, "bin", "python"))
    python = os.path.join(venv, "bin", "python") if in_venv else sys.executable
    have = _installed_torch(python)
    if have is None:
        return torch_install(python, spec, index, gpu)[1]
    build = f"CUDA {have['cuda']} build" if have["cuda"] else "CPU build"
    detail = f"{python} has torch {have['version']} ({build})" + ("; make venv keeps it" if in_venv else "")
    if have["cuda"] and not gpu:
        return Result("torch", "warn", detail + ", on a machine without an NVIDIA GPU (it runs on CPU too)",
                      f"to save several GB: {python} -m pip install --force-reinstall {spec} --index-url {CPU_INDEX}")
    if gpu and not have["cuda"]:
        return Result("torch", "warn", detail + ", on a machine with an NVIDIA GPU",
                      f"install your cluster's CUDA build of torch into {venv} (its wheel, or pip install torch "
                      "--index-url https://download.pytorch.org/whl/cu12X)")
    return Result("torch", "ok", detail)


def run(only: tuple[str, ...] = CHECKS, venv: str = os.path.join(REPO, ".venv"), spec: str = TORCH_SPEC,
        index: str = CPU_INDEX) -> list[Result]:
    checks = {"python": check_python, "venv": lambda: check_venv(venv), "compiler": check_compiler,
              "disk": lambda: check_disk(venv), "torch": lambda: check_torch(venv, spec, index)}
    return [checks[name]() for name in only]


def report(results: list[Result], out=None) -> int:
    out = out or sys.stdout
    for r in results:
        print(f"  {r.status:<4}  {r.name:<8}  {r.detail}", file=out)
        if r.fix:
            print(f"  {'':<4}  {'':<8}  what to do: {r.fix}", file=out)
    failed = [r.name for r in results if r.status == "FAIL"]
    print(f"safeft doctor: {', '.join(failed)} failed" if failed else "safeft doctor: ready", file=out)
    return 1 if failed else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated checks (default: all of {CHECKS})")
    p.add_argument("--venv", default=os.path.join(REPO, ".venv"), help="the environment make venv builds")
    p.add_argument("--torch", default=TORCH_SPEC, help="the torch requirement make venv installs (TORCH_CPU)")
    p.add_argument("--torch-index", default=CPU_INDEX,
                   help="the CPU wheel index, used where pip would otherwise install the CUDA build (TORCH_INDEX)")
    p.add_argument("--torch-pip-args", action="store_true",
                   help="print the `pip install` arguments for torch on stdout (the report goes to stderr): make venv")


def main(args: argparse.Namespace) -> int:
    if args.torch_pip_args:
        pip_args, result = torch_install(sys.executable, args.torch, args.torch_index, has_nvidia_gpu())
        report([result], out=sys.stderr)
        print(" ".join(pip_args))
        return 0
    only = tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = [n for n in only if n not in CHECKS]
    if unknown:
        print(f"safeft doctor: unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    return report(run(only, args.venv, args.torch, args.torch_index))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python3 -m safeft.doctor", description=__doc__.split("\n")[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
