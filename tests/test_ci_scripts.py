"""The CI's own logic that decides what passes: .ci/tracer_crash.sh, with which
.ci/sanitize.sh tells a crash of LeakSanitizer's tracer thread (rerun the test) from a
real failure or a sanitizer report (fail at once), run on made-up pytest logs shaped as
the real ones were (the ASan leg of 2026-12-07 failed where a test quoted only the
tracer's HINT line, which the script did not know)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import processes

ROOT = Path(__file__).resolve().parents[1]  # the source checkout
SCRIPT = ROOT / ".ci" / "tracer_crash.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("awk") is None or not SCRIPT.exists(),
    reason="needs bash, awk and the checkout's .ci folder",
)

# The four lines LeakSanitizer prints when its tracer crashes, and a leak report's first
# line. Built by concatenation: were a test to fail under .ci/sanitize.sh, pytest would
# print its source, and the script would take a literal report line there for a report.
TRACER = "Tracer caught signal 11: addr=0x1e90 pc=0x7fab560e80f0 sp=0x7fab4f9ffd10"
FATAL = "==10033==" + "LeakSanitizer has encountered a fatal error."
HINT_DEBUG = (
    "==10033==" + "HINT: For debugging, try setting environment variable "
    "LSAN_OPTIONS=verbosity=1:log_threads=1"
)
HINT_PTRACE = "==10940==" + "HINT: LeakSanitizer does not work under ptrace (strace, gdb, etc)"
LEAK_REPORT = "==7==" + "ERROR: " + "LeakSanitizer: detected memory leaks"


def crashed_ids(log: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "pytest.log"
    path.write_text(log)
    done = subprocess.run(
        ["bash", "-c", 'source "$1" && tracer_crashed_ids "$2"', "-", str(SCRIPT), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=processes.without_sanitizers(),
    )
    return done.stdout.splitlines()


def test_each_shape_of_the_tracer_crash_is_known_and_nothing_else(tmp_path: Path) -> None:
    # As pytest -ra writes it: the tracebacks first, then the short summary (ERROR lines
    # before FAILED ones), then the count.
    log = "\n".join(
        [
            "tests/test_a.py ....F..F..F..F.FE",
            "=================================== FAILURES ===================================",
            "_____________________ test_workers[nested_fork-default] ______________________",
            f"E       AssertionError: {TRACER}",
            f"E         {FATAL}",
            "=========================== short test summary info ============================",
            "SKIPPED [2] tests/test_optim.py:204: could not import 'torch'",
            # An error in a fixture whose child crashed so.
            f"ERROR tests/test_pool.py::test_setup - AssertionError: {TRACER}",
            # A real error: no sign of the tracer in its text.
            "ERROR tests/test_torch.py::test_other_setup - RuntimeError: boom",
            f"  {LEAK_REPORT}",
            # The tracer's own line in the summary (a test quoting the child's stderr).
            "FAILED tests/test_fork.py::test_workers[nested_fork-default] - AssertionError: "
            + TRACER,
            f"  {FATAL}",
            f"  {HINT_DEBUG}",
            f"  {HINT_PTRACE}",
            "assert -6 == 0",
            # Only the last HINT line (a test quoting the child's last line): 2026-12-07.
            "FAILED tests/test_mkl_runtime.py::test_clear_error[libm.so.6-mkl: 'libm.so.6' "
            f"has no cblas] - AssertionError: {HINT_PTRACE}",
            "assert False",
            # The tracer's line further down a failure's text, after a child's usage text.
            "FAILED tests/test_cli.py::test_usage[--epochs 0] - AssertionError: usage: x",
            "  error: argument --epochs",
            f"  {TRACER}",
            # A real failure.
            "FAILED tests/test_layer.py::test_values[float32] - assert 1.0 == 2.0",
            "4 failed, 4946 passed, 1265 skipped, 2 errors in 481.77s (0:08:01)",
            # After the count nothing belongs to a failure.
            f"{TRACER}",
        ]
    )
    assert crashed_ids(log, tmp_path) == [
        "tests/test_pool.py::test_setup",
        "tests/test_fork.py::test_workers[nested_fork-default]",
        "tests/test_mkl_runtime.py::test_clear_error[libm.so.6-mkl: 'libm.so.6' has no cblas]",
        "tests/test_cli.py::test_usage[--epochs 0]",
    ]


@pytest.mark.parametrize(
    "line",
    [TRACER, FATAL, HINT_DEBUG, HINT_PTRACE],
    ids=["tracer", "fatal_error", "hint_debug", "hint_ptrace"],
)
def test_a_failure_showing_any_one_line_of_the_crash_is_rerun(tmp_path: Path, line: str) -> None:
    log = f"FAILED tests/test_x.py::test_y - AssertionError: {line}\n1 failed, 3 passed in 1.0s\n"
    assert crashed_ids(log, tmp_path) == ["tests/test_x.py::test_y"]


def test_a_leak_report_or_a_plain_failure_is_not_rerun(tmp_path: Path) -> None:
    log = (
        f"FAILED tests/test_x.py::test_y - AssertionError: {LEAK_REPORT}\n"
        "FAILED tests/test_x.py::test_z - assert 0 == 1\n"
        "2 failed, 3 passed in 1.0s\n"
    )
    assert crashed_ids(log, tmp_path) == []
