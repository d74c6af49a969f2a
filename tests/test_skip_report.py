"""The skip report (tests/skip_report.py, what `make test` and .ci/run print): skips counted by reason, and a
skip for missing shared data failing under SAFEFT_REQUIRE_SHARED_DATA=1 where the shared folder exists."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO

SAMPLE = '''
import pytest
from skip_report import NO_CUDA, NO_SHARED_DATA

def test_runs():
    pass

def test_needs_a_shared_file():
    pytest.skip(f"{NO_SHARED_DATA}: gsm8k/train.jsonl")

@pytest.mark.skipif(True, reason=f"{NO_SHARED_DATA}: xstest/xstest_prompts.csv")
def test_marked_for_a_shared_file():
    pass

def test_needs_cuda():
    pytest.skip(f"{NO_CUDA} (pytest -m gpu)")

def test_needs_slurm():
    pytest.skip("Slurm is not installed")

@pytest.mark.xfail(reason="a known failure, not a skip")
def test_known_failure():
    assert False
'''


def run_sample(tmp_path, shared: str, require: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k != "SAFEFT_REQUIRE_SHARED_DATA"}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]), SAFEFT_SHARED_DATA=shared)
    if require:
        env["SAFEFT_REQUIRE_SHARED_DATA"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "skip_report", "-p", "no:cacheprovider",
                           "test_sample.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_skips_are_counted_by_reason_and_their_reasons_printed(tmp_path):
    (tmp_path / "shared").mkdir()
    r = run_sample(tmp_path, str(tmp_path / "shared"), require=False)
    assert r.returncode == 0, r.stdout
    assert f"skipped: 2 for missing shared data (shared data in {tmp_path / 'shared'}), 1 for missing CUDA, " \
           "1 other" in r.stdout, r.stdout
    assert "shared data missing: gsm8k/train.jsonl" in r.stdout and "Slurm is not installed" in r.stdout  # -rs
    assert "1 passed, 4 skipped, 1 xfailed" in r.stdout


def test_a_shared_data_skip_fails_ci_where_the_shared_folder_exists(tmp_path):
    (tmp_path / "shared").mkdir()
    r = run_sample(tmp_path, str(tmp_path / "shared"), require=True)
    assert r.returncode == 1, r.stdout
    assert r.stdout.count("skipped for missing shared data although") == 2, r.stdout
    assert "1 failed, 1 passed, 2 skipped, 1 xfailed, 1 error" in r.stdout  # the skipif mark fails in setup
    assert "skipped: 0 for missing shared data (shared data in " in r.stdout and "; 2 more failed (" in r.stdout
    r = run_sample(tmp_path, str(tmp_path / "absent"), require=True)  # no shared folder: a skip stays a skip
    assert r.returncode == 0 and "skipped: 2 for missing shared data (no shared/data folder found" in r.stdout, r.stdout
