"""python -m siglayer [check|explain|docs]: the main job for a newcomer.

``check`` (the default) compares siglayer with the NumPy reference on a few sizes in
both dtypes, printing the errors, then prints a short timing table against NumPy.
Exit status 1 on any mismatch. ``explain`` prints a small worked example of the
derivation of backward, exit status 1 if its numbers disagree. ``docs`` prints where the
installed documentation is. The full benchmark (against NumPy, the GEMM floor and
PyTorch, alone and beside each other) runs from a source checkout: python bench/run.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import _api, _compare, _config, _derivation
from ._timing import interleaved_medians, numpy_layer
from ._typing import Float

CHECK_SIZES = [(1, 1, 1), (7, 13, 5), (32, 64, 32), (64, 256, 128), (256, 512, 512)]
TIMING_SIZES = [(32, 64, 32), (64, 256, 128), (256, 512, 512), (1024, 1024, 1024)]
TIMING_ROUNDS = 9
# What the timing table takes on a 2-core AMD EPYC (Zen 3) VM, rounded up: said before
# it starts, so that nobody waits without knowing for how long.
TIMING_SECONDS = 30
# The exit status when stdout's reader went away: 128 + SIGPIPE (13), what a shell
# reports for a command that SIGPIPE ended.
SIGPIPE_STATUS = 141


def _header() -> str:
    c = _config.config()
    return (
        f"siglayer {c['version']}: BLAS {c['blas']} ({c['blas_details']}), "
        f"{c['threads']} threads, SIMD {c['simd']}, numpy {c['numpy']}"
    )


def check(*, timing: bool = True) -> int:
    """Print errors against the reference (and timings); return the exit status."""
    print(_header())
    print("\nsiglayer vs siglayer.reference: max abs error (norm-wise relative error)")
    print(
        f"{'dtype':8} {'n':>5} {'n_in':>5} {'n_out':>5}  "
        + "".join(f"{k:>22}" for k in ("out", "dx", "dW", "db"))
        + "  status"
    )
    failures = 0
    for dtype in (np.float32, np.float64):
        tol = _compare.TOLERANCE[np.dtype(dtype)]
        for n, n_in, n_out in CHECK_SIZES:
            errors = _compare.compare(n=n, n_in=n_in, n_out=n_out, dtype=dtype, seed=n + n_in)
            ok = all(e.max_rel <= tol for e in errors.values())
            failures += not ok
            cells = "".join(f"{e.max_abs:>11.2e} ({e.max_rel:.1e})" for e in errors.values())
            status = "ok" if ok else "MISMATCH"
            print(f"{np.dtype(dtype).name:8} {n:>5} {n_in:>5} {n_out:>5}  {cells}  {status}")
    print(
        f"tolerance on the relative error: float32 {_compare.TOLERANCE[np.dtype(np.float32)]:.0e}, "
        f"float64 {_compare.TOLERANCE[np.dtype(np.float64)]:.0e}"
    )
    if timing:
        cases = 2 * len(TIMING_SIZES)
        print(
            f"\nforward + backward (with dx), median time per call, interleaved runs: "
            f"{cases} rows, about {TIMING_SECONDS} s in all (python -m siglayer --quick skips "
            f"this); numpy: the layer as NumPy users write it, 1 / (1 + np.exp(-(x @ W + b))) "
            f"and its gradients",
            flush=True,
        )
        note = busy_note(*_load())
        if note:
            print(note)
        print(f"{'dtype':8} {'(n, n_in, n_out)':>20} {'numpy':>12} {'siglayer':>12} {'speedup':>8}")
        start = time.perf_counter()
        for dtype in (np.float32, np.float64):
            for size in TIMING_SIZES:
                t = _time_pair(size, dtype)
                print(
                    f"{np.dtype(dtype).name:8} {size!s:>20} {_fmt(t['numpy'])} "
                    f"{_fmt(t['siglayer'])} {t['numpy'] / t['siglayer']:>7.2f}x",
                    flush=True,
                )
        print(f"(timed in {time.perf_counter() - start:.0f} s)")
    if failures:
        print(f"\n{failures} size(s) MISMATCH the reference", file=sys.stderr)
        return 1
    print("\nall results match the reference")
    return 0


def _load() -> tuple[float, int]:
    """(1-minute load average, CPUs this process may run on); (0, 1) where unknown."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0, 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return load, cpus or 1


def busy_note(load: float, cpus: int) -> str | None:
    """A warning when other work holds half the CPUs or more: a multi-threaded library's
    time then swings with it (NumPy's OpenBLAS at (64, 256, 128) was seen 100 times
    slower in some runs at a load average of 4 on 2 CPUs), and so does the speedup."""
    if load < cpus / 2:
        return None
    return (
        f"note: this machine is busy (1-minute load average {load:.1f} on {cpus} CPUs): "
        f"multi-threaded timings swing with the other work, some rows by 10x or more; "
        f"time again when it is quiet"
    )


def _docs_folder() -> tuple[Any, str]:
    """Where the documentation is, and how to name it: the source tree's docs/ when this
    package runs from a source tree (an editable install, whose installed copies were made
    at build time and go stale as the pages change), else the copy installed with it."""
    root = Path(__file__).resolve().parent.parent.parent  # <root>/python/siglayer
    if (root / "docs").is_dir() and (root / "python" / "siglayer").is_dir():
        pyproject = root / "pyproject.toml"
        if pyproject.is_file() and 'name = "siglayer"' in pyproject.read_text(encoding="utf-8"):
            return root / "docs", "the source tree this package runs from (an editable install)"
    return resources.files("siglayer") / "docs", "installed with the package"


def docs() -> int:
    """Print the documentation files; exit status 1 if they are missing."""
    folder, where = _docs_folder()
    pages = sorted(
        (p for p in folder.iterdir() if p.name.endswith(".md")) if folder.is_dir() else [],
        key=lambda p: p.name,
    )
    # The README, which the pages cite: one folder up, installed (siglayer/README.md) or
    # the source tree's own.
    readme = Path(str(folder)).parent / "README.md"
    if pages and not any(p.name == "README.md" for p in pages) and readme.is_file():
        pages.insert(0, readme)
    if not pages:
        print(f"no documentation found in {folder} (an incomplete install?)", file=sys.stderr)
        return 1
    # The README sits one folder up: the heading names both folders (a review, helper-88,
    # read it as claimed to be inside docs/).
    places = (
        f"{folder}" if pages[0].parent == Path(str(folder)) else f"{readme.parent} and {folder}"
    )
    print(f"siglayer's documentation, {where}, in {places}:")
    for page in pages:
        print(f"  {page}")
    return 0


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e6:>10.1f}us" if seconds < 1e-3 else f"{seconds * 1e3:>10.2f}ms"


def _time_pair(size: tuple[int, int, int], dtype: type[Float]) -> dict[str, float]:
    n, n_in, n_out = size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n_in)).astype(dtype)
    W = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    dout = rng.standard_normal((n, n_out)).astype(dtype)

    def with_numpy() -> object:
        return numpy_layer(x, W, b, dout)

    def with_siglayer() -> object:
        out = _api.forward(x, W, b)
        return _api.backward(dout, x, W, out)

    return interleaved_medians(
        {"numpy": with_numpy, "siglayer": with_siglayer}, rounds=TIMING_ROUNDS
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m siglayer",
        description=(__doc__ or "").replace("``", ""),  # reST literals read as plain words
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="check only, no timing table (under a second)"
    )
    sub = parser.add_subparsers(dest="command")
    check_p = sub.add_parser(
        "check",
        help=f"compare with the NumPy reference, then time (default; about {TIMING_SECONDS} s)",
    )
    check_p.add_argument(
        "--no-timing", "--quick", action="store_true", help="skip the timing table"
    )
    sub.add_parser("explain", help="a worked example: the Jacobian of W contracted vs backward")
    sub.add_parser("docs", help="print where the installed documentation is")
    args = parser.parse_args(argv)
    if args.quick and args.command not in (None, "check"):
        parser.error(f"--quick skips check's timing table; {args.command} has none")
    try:
        if args.command in (None, "check"):
            status = check(timing=not (args.quick or getattr(args, "no_timing", False)))
        elif args.command == "explain":
            status = _derivation.explain()
        else:
            status = docs()
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
    except BrokenPipeError:
        # python -m siglayer explain | head: the reader closed the pipe. Stop without a
        # traceback, as a command that SIGPIPE ends would (status 128 + 13), and point
        # stdout at devnull so that the flush at exit does not fail again (the recipe of
        # Python's signal documentation, "Note on SIGPIPE").
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is no file descriptor (replaced, captured)
            pass
        return SIGPIPE_STATUS
    return status


if __name__ == "__main__":
    sys.exit(main())
