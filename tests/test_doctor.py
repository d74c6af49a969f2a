"""The preflight (safeft/doctor.py, `safeft doctor`, the start of `make venv`): runs on the standard library
alone, names each failure with what to do, and reads which torch build pip would install."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from helpers import REPO
from safeft import doctor


def test_runs_on_the_standard_library_alone_before_any_venv_exists(tmp_path):
    """`make venv` runs it with the machine's python3 before anything is installed: -S hides site-packages."""
    venv = sys.prefix if sys.prefix != sys.base_prefix else str(tmp_path / "venv")
    r = subprocess.run([sys.executable, "-S", "-m", "safeft.doctor", "--only", "python,venv,compiler,disk",
                        "--venv", venv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr  # this machine runs the suite: it has what DeepSpeed needs
    assert [line.split()[:2] for line in r.stdout.splitlines()[:4]] == [
        ["ok", "python"], ["ok", "venv"], ["ok", "compiler"], ["ok", "disk"]]
    assert r.stdout.splitlines()[-1] == "safeft doctor: ready"


def test_make_venv_runs_the_preflight_before_it_creates_the_venv(tmp_path):
    r = subprocess.run(["make", "-n", "--always-make", "venv", f"VENV={tmp_path / 'v'}"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    lines = r.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if "-m safeft.doctor --only python,venv,compiler,disk" in line)
    assert first < next(i for i, line in enumerate(lines) if "-m venv" in line)
    torch_line = next(line for line in lines if "-m safeft.doctor --torch-pip-args" in line)
    assert '--torch "torch==2.13.0" --torch-index "https://download.pytorch.org/whl/cpu"' in torch_line


def test_no_compiler_fails_and_says_what_to_install(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    r = doctor.check_compiler()
    assert r.status == "FAIL" and "no C++ compiler" in r.detail and "apt-get install g++ python3-dev" in r.fix


def test_a_compiler_without_python_headers_fails(tmp_path, monkeypatch):
    cxx = tmp_path / "c++"
    cxx.write_text("#!/bin/sh\necho 'fatal error: Python.h: No such file or directory' >&2\nexit 1\n")
    cxx.chmod(0o755)
    monkeypatch.setenv("CXX", str(cxx))
    r = doctor.check_compiler()
    assert r.status == "FAIL" and "Python.h: No such file" in r.detail and "python3-dev" in r.fix


def test_missing_venv_support_python_version_and_disk_fail_with_advice(tmp_path, monkeypatch):
    import ensurepip

    def stripped():
        raise ModuleNotFoundError("ensurepip is disabled in Debian/Ubuntu for the system python")

    monkeypatch.setattr(ensurepip, "version", stripped)
    r = doctor.check_venv(str(tmp_path / "venv"))
    assert r.status == "FAIL" and "ensurepip is disabled" in r.detail and "-venv" in r.fix
    (tmp_path / "made" / "bin").mkdir(parents=True)
    (tmp_path / "made" / "bin" / "python").write_text("")
    assert doctor.check_venv(str(tmp_path / "made")).status == "ok"  # an existing venv needs no venv support
    r = doctor.check_python(SimpleNamespace(major=3, minor=9, micro=7))
    assert r.status == "FAIL" and "needs 3.10" in r.detail
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: SimpleNamespace(free=2 * 2 ** 30))
    r = doctor.check_disk(str(tmp_path / "venv"))
    assert r.status == "FAIL" and "2.0 GiB free" in r.detail and "about 4 GiB" in r.detail


def _report(version, requires):
    return {"install": [{"metadata": {"name": "torch", "version": version, "requires_dist": requires},
                         "download_info": {"url": f"https://example.invalid/torch-{version}.whl"}}]}


def test_torch_build_read_from_pips_report():
    cuda = _report("2.13.0", ["filelock", 'nvidia-cublas-cu12==12.8.4.1; platform_system == "Linux"'])
    assert doctor.torch_build(cuda) == ("cuda", "2.13.0", "https://example.invalid/torch-2.13.0.whl")
    assert doctor.torch_build(_report("2.13.0+cpu", ["filelock", "sympy"]))[0] == "cpu"
    assert doctor.torch_build(_report("2.13.0+cu128", []))[0] == "cuda"


CUDA, CPU = _report("2.13.0", ["nvidia-nccl-cu12"]), _report("2.13.0+cpu", [])
INDEX = "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("index,gpu,plain,with_index,args,status,says", [
    (INDEX, False, CPU, None, [], "ok", "the CPU build"),  # pip's configuration finds a CPU wheel: as it is
    (INDEX, False, CUDA, CPU, ["--extra-index-url", INDEX], "ok", "without the CPU wheel index: the CUDA build"),
    (INDEX, False, CUDA, None, [], "warn", "did not answer"),  # the index is unreachable: the CUDA build, said
    ("", False, CUDA, None, [], "warn", f"TORCH_INDEX={INDEX}"),
    (INDEX, True, CUDA, None, [], "ok", "the CUDA build"),  # a GPU machine
    (INDEX, True, CPU, None, [], "warn", "cluster's torch"),
])
def test_which_torch_pip_would_install_and_what_to_do(monkeypatch, index, gpu, plain, with_index, args, status, says):
    asked = []

    def would_install(python, spec, idx):
        asked.append(idx)
        report = plain if not idx else with_index
        return report, "" if report else "connection refused"

    monkeypatch.setattr(doctor, "_would_install", would_install)
    pip_args, r = doctor.torch_install(sys.executable, "torch==2.13.0", index, gpu)
    assert pip_args == ["torch==2.13.0", *args] and r.status == status and says in r.detail + r.fix, r
    assert asked == [""] + ([index] if index and plain is CUDA and not gpu else [])  # the index only when needed


def test_an_installed_torch_is_kept_and_its_build_named(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "_installed_torch", lambda python: {"version": "2.13.0+cu128", "cuda": "12.8",
                                                                    "gpu": False})
    monkeypatch.setattr(doctor, "has_nvidia_gpu", lambda: False)
    r = doctor.check_torch(str(tmp_path / "venv"))
    assert r.status == "warn" and "CUDA 12.8 build" in r.detail and "--index-url " + INDEX in r.fix


def test_safeft_doctor_command(capsys):
    from safeft.cli import main

    assert main(["doctor", "--only", "python,compiler"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "safeft doctor: ready"
    assert main(["doctor", "--only", "gpu"]) == 2


def test_torch_pip_args_mode_prints_only_the_arguments_on_stdout(monkeypatch, capsys):
    """What `make venv` reads: `args=$(python -m safeft.doctor --torch-pip-args ...) && pip install $args`."""
    import argparse

    monkeypatch.setattr(doctor, "torch_install", lambda python, spec, index, gpu: (
        [spec, "--extra-index-url", index], doctor.Result("torch", "ok", "the CPU build")))
    p = argparse.ArgumentParser()
    doctor.add_arguments(p)
    assert doctor.main(p.parse_args(["--torch-pip-args", "--torch", "torch==2.13.0"])) == 0
    out, err = capsys.readouterr()
    assert out == f"torch==2.13.0 --extra-index-url {INDEX}\n" and "ok    torch     the CPU build" in err
