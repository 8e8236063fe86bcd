"""The mixed benchmark: each library's step timed right after another library's step.

A real script mixes libraries: NumPy for preprocessing, metrics and losses, PyTorch around
``siglayer.torch``, siglayer for the layer. Each library's idle threads may keep spinning
after its call and take the cores the next library needs. The steps, each on the same
problem (x (n, n_in), W (n_in, n_out)):

- ``numpy``: the layer's three products with NumPy's BLAS, z = x·W, dW = xᵀ·dZ, dx = dZ·Wᵀ;
- ``torch``: the same three products with PyTorch (when it is installed);
- ``siglayer``: forward + backward (with dx).

Each step's results are checked against siglayer.reference before anything is timed.
Then, for every pair (step, before) the two run alternately, ``before`` untimed and
``step`` timed, with no pause: first ``block_seconds`` of untimed pairs, so that what ran
earlier (another pair's spinning pool) no longer counts, then ``per_block`` timed steps.
"Alone" is the step after itself. The blocks of all pairs are shuffled in every round;
the figure is the median of all timed steps of a pair (``per_block`` per round, over the
rounds), reported as a ratio to the step alone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

import harness

__all__ = ["TARGETS", "make_steps", "matrix", "print_matrix", "run"]

# The goals of issue 10, checked on every run: siglayer right after another library at
# most 1.25x its time alone; another library right after siglayer at most 1.15x.
TARGETS = {"siglayer_after_other": 1.25, "other_after_siglayer": 1.15}

Step = Callable[[], harness.Result]


def make_steps(
    p: harness.Problem, ref: harness.Result, torch: ModuleType | None
) -> dict[str, Step]:
    """The steps for problem ``p`` (``ref`` is ``harness.reference_results(p)``)."""
    x, W, dZ = p.x, p.W, ref["dZ"]

    def numpy_step() -> harness.Result:
        return {"z": x @ W, "dW": x.T @ dZ, "dx": dZ @ W.T}

    siglayer_step = harness.make_contender("siglayer", p, ref)["forward_backward"]
    steps: dict[str, Step] = {"numpy": numpy_step}
    if torch is not None:
        tx, tW, tdZ = (torch.from_numpy(a) for a in (x, W, dZ))

        def torch_step() -> harness.Result:
            z, dW, dx = tx @ tW, tx.T @ tdZ, tdZ @ tW.T
            return {"z": z.numpy(), "dW": dW.numpy(), "dx": dx.numpy()}

        steps["torch"] = torch_step
    steps["siglayer"] = siglayer_step
    return steps


def matrix(
    steps: dict[str, Step],
    *,
    rounds: int = 7,
    block_seconds: float = 0.15,
    per_block: int = 3,
    seed: int = 0,
) -> dict[tuple[str, str], float]:
    """Median seconds of each step right after each step: ``{(step, before): seconds}``."""
    pairs = [(s, b) for s in steps for b in steps]
    samples: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    order = random.Random(seed)
    for _ in range(rounds):
        order.shuffle(pairs)
        for step, before in pairs:
            run, prepare = steps[step], steps[before]
            until = time.perf_counter() + block_seconds
            while time.perf_counter() < until:
                prepare()
                run()
            for _ in range(per_block):
                prepare()
                t0 = time.perf_counter()
                run()
                samples[step, before].append(time.perf_counter() - t0)
    return {pair: float(np.median(s)) for pair, s in samples.items()}


def print_matrix(
    title: str, medians: dict[tuple[str, str], float], names: Sequence[str], file: Any
) -> list[str]:
    """Print the table; return the targets it misses (empty when all are met)."""
    print(f"\n{title}: each step's time right after another's, over its time alone", file=file)
    print(f"{'step':9} {'alone':>10} " + " ".join(f"{'after ' + b:>15}" for b in names), file=file)
    misses = []
    for step in names:
        alone = medians[step, step]
        cells = []
        for before in names:
            ratio = medians[step, before] / alone
            cells.append(f"{ratio:15.2f}")
            if step == before:
                continue
            if step == "siglayer":
                limit = TARGETS["siglayer_after_other"]
            elif before == "siglayer":
                limit = TARGETS["other_after_siglayer"]
            else:
                continue
            if ratio > limit:
                misses.append(f"{title}: {step} after {before} {ratio:.2f} > {limit}")
        print(f"{step:9} {harness._fmt_time(alone)} " + " ".join(cells), file=file)
    return misses


def run(
    sizes: Sequence[str],
    dtypes: Sequence[str],
    *,
    rounds: int,
    torch: ModuleType | None,
    file: Any,
) -> list[str]:
    """The matrix for every size and dtype; returns the missed targets."""
    misses: list[str] = []
    for size in sizes:
        for dtype in dtypes:
            p = harness.make_problem(size, dtype)
            ref = harness.reference_results(p)
            steps = make_steps(p, ref, torch)
            for name, step in steps.items():
                harness.check(f"{name} step {size} {dtype}", step(), ref)
            del ref
            medians = matrix(steps, rounds=rounds)
            title = f"{size} {p.shape} {dtype}"
            misses += print_matrix(title, medians, list(steps), file)
            file.flush()
    return misses
