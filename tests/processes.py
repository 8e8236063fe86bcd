"""A Python child process with a time limit, for the tests that fork or start workers: on
timeout its whole process group is killed (a worker that hangs would otherwise outlive
the test) and the test fails, naming what it ran. And the environment for a child that is
not Python (a compiler, bash): without the sanitizer runtime .ci/sanitize.sh preloads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest


def run_bounded(
    args: list[str], env: dict[str, str], time_limit: float, name: str
) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a session of its own, with ``env``; its output once it ends."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=time_limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{name}: no answer within {time_limit:.0f} s (a worker hangs)")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def without_sanitizers() -> dict[str, str]:
    """This process's environment without the sanitizer runtime .ci/sanitize.sh preloads
    into every child, and its options: another program's own allocations (gcc's, bash's)
    are not siglayer's to leak-check (LeakSanitizer aborted gcc there)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "LSAN_OPTIONS")
    }
