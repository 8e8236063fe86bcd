"""Threads and build information."""

from __future__ import annotations

import platform
import sys
from typing import Any, TextIO

import numpy as np

from . import _core

__all__ = ["set_num_threads", "get_num_threads", "show_config", "config"]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for both the BLAS products and the OpenMP sweeps.

    Like ``omp_set_num_threads``, the OpenMP part applies to calls made from the
    calling thread (and threads started by it afterwards). Small problems run on one
    thread whatever this says. Raises ValueError for n < 1.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads siglayer uses for large problems (the OpenMP pool's size)."""
    return int(_core.get_num_threads())


def config() -> dict[str, Any]:
    """Version, BLAS backend, threads and SIMD level, as a dict."""
    info: dict[str, Any] = {"version": _core.__version__}
    info.update(_core.config())
    info["threads"] = get_num_threads()
    info["blas_threads"] = int(_core.blas_num_threads())
    info["numpy"] = np.__version__
    info["python"] = platform.python_version()
    info["machine"] = platform.machine()
    return info


def show_config(file: TextIO | None = None) -> None:
    """Print version, BLAS backend and version, threads and the SIMD level in use."""
    out = sys.stdout if file is None else file
    for key, value in config().items():
        print(f"{key:>15}: {value}", file=out)
