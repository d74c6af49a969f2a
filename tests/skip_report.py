"""Skips are counted, not silent: a pytest plugin (loaded by tests/conftest.py) that classifies every skip by
its reason and prints one line at the end of the run, e.g.

    skipped: 31 for missing shared data (no shared/data folder found), 22 for missing CUDA, 1 other

With SAFEFT_REQUIRE_SHARED_DATA=1 (set by .ci/run) a skip for missing shared data FAILS its test when the
shared data folder exists (safeft.data.shared.shared_data_dir): a CI run that tested less than the data
allows must not look green. Every skip for missing data or CUDA says so with the prefixes below
(tests/helpers.py: skip_without_shared, needs_shared); the classification reads those prefixes.
"""

from __future__ import annotations

import os
from typing import Optional

import pytest

NO_SHARED_DATA = "shared data missing"  # prefix of every skip reason for absent ../shared/data files
NO_CUDA = "needs a CUDA device"  # prefix of every skip reason for an absent GPU
REQUIRE_ENV = "SAFEFT_REQUIRE_SHARED_DATA"
KINDS = ("missing shared data", "missing CUDA", "other")


def skip_kind(reason: str) -> str:
    """The class of a skip reason: one of KINDS."""
    if NO_SHARED_DATA in reason:
        return KINDS[0]
    if NO_CUDA in reason:
        return KINDS[1]
    return KINDS[2]


def _reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def _shared_dir() -> Optional[str]:
    from safeft.data.shared import shared_data_dir

    root = shared_data_dir()
    return str(root) if root is not None and root.is_dir() else None


SHARED_ROOT = _shared_dir()  # as the run starts: tests that point SAFEFT_SHARED_DATA elsewhere do not move it
FAILED_SKIPS: list[str] = []  # tests whose skip for missing shared data was turned into a failure


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under SAFEFT_REQUIRE_SHARED_DATA, a skip for missing shared data where the folder exists is a failure."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not _required():
        return
    reason = _reason(report)
    root = SHARED_ROOT if skip_kind(reason) == KINDS[0] else None
    if root is not None:
        FAILED_SKIPS.append(report.nodeid)
        report.outcome = "failed"
        report.longrepr = (f"skipped for missing shared data although {root} exists ({REQUIRE_ENV} is set): "
                           f"{reason}. Add the missing files to the shared folder, or fix the test's path.")


def skip_counts(reports) -> dict[str, int]:
    counts = dict.fromkeys(KINDS, 0)
    for report in reports:
        if not hasattr(report, "wasxfail"):
            counts[skip_kind(_reason(report))] += 1
    return counts


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = skip_counts(terminalreporter.stats.get("skipped", []))
    where = f"shared data in {SHARED_ROOT}" if SHARED_ROOT else "no shared/data folder found; set SAFEFT_SHARED_DATA"
    failed = f"; {len(FAILED_SKIPS)} more failed ({REQUIRE_ENV}=1)" if FAILED_SKIPS else ""
    terminalreporter.write_line(f"skipped: {counts[KINDS[0]]} for missing shared data ({where}{failed}), "
                                f"{counts[KINDS[1]]} for missing CUDA, {counts[KINDS[2]]} other")
