"""Interleaved timing: the contenders take turns, so drift on a shared machine hits all
of them alike, and the median of many rounds is what gets reported.

Before each contender's turn the process sleeps briefly. NumPy's OpenBLAS threads spin
for tens of milliseconds after a call, and OpenMP threads spin too; on a 2-core machine a
spinning pool left over from the previous contender steals a core from the next one and
can stall it for whole scheduler ticks. The pause lets every pool fall asleep, so each
contender is timed as it runs in a program that calls only it. Each turn then starts
with a warm-up of ``warmup_seconds`` of calls: a pool woken from sleep can land on its
caller's core and share it until the kernel migrates it (one stall of a few ms), which
is not the steady state of a loop that calls the contender over and over. Without a
pause there is no warm-up either, unless asked for: the contenders then run back to
back, each timed right after the previous one, with no untimed call between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["interleaved_medians", "numpy_layer"]


def numpy_layer(
    x: np.ndarray, W: np.ndarray, b: np.ndarray, dout: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """The layer as NumPy users write it, the NumPy that timings compare against:
    ``(out,)``, or with ``dout`` ``(out, dx, dW, db)``. Not ``siglayer.reference``, the
    oracle results are checked against, whose stable sigmoid (both branches, then a
    select) and float64 sum for db cost 1.2-1.6x this, fwd+bwd (1.5-3x the forward):
    timed as "NumPy" until 2026-12-06, it flattered every ratio against NumPy (found by
    review helper-80). The exponential overflows, with a warning, for z below about -88
    in float32: timing inputs keep |z| small."""
    out = 1 / (1 + np.exp(-(x @ W + b)))
    if dout is None:
        return (out,)
    dZ = dout * out * (1 - out)
    return out, dZ @ W.T, x.T @ dZ, dZ.sum(axis=0)


def interleaved_medians(
    contenders: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 31,
    min_round_seconds: float = 2e-3,
    settle_seconds: float = 0.1,
    warmup_seconds: float | None = None,
) -> dict[str, float]:
    """Median seconds per call of each contender.

    Each round calls every contender in turn, each as many times as it takes to fill
    ``min_round_seconds`` (calibrated per contender, on its fastest of three calls), after
    a ``settle_seconds`` pause and ``warmup_seconds`` of untimed calls (see the module
    docstring). ``warmup_seconds=None`` (the default) is 0.02 after a pause and 0 without
    one: with ``settle_seconds=0`` the contenders run back to back unless asked.
    """
    if warmup_seconds is None:
        warmup_seconds = 0.02 if settle_seconds > 0 else 0.0
    calls: dict[str, int] = {}
    for name, fn in contenders.items():
        fn()
        fastest = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            fastest = min(fastest, time.perf_counter() - t0)
        calls[name] = max(1, int(min_round_seconds / max(fastest, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            time.sleep(settle_seconds)
            if warmup_seconds > 0:  # at least one untimed call, then up to warmup_seconds
                warm_until = time.perf_counter() + warmup_seconds
                fn()
                while time.perf_counter() < warm_until:
                    fn()
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / calls[name])
    return {name: float(np.median(s)) for name, s in samples.items()}
