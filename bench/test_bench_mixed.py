"""Each library's step right after another library's step, with no pause between them
(bench/mixed.py has the steps): groups mixed-size-dtype-step, one benchmark per
library that ran just before ("after numpy", "after torch", "after siglayer"; after
itself is the step alone).

    pytest bench/test_bench_mixed.py --benchmark-enable --sizes M,L,N --threads 2

pytest-benchmark's pedantic mode runs the preceding step as the untimed setup of every
round, so each timed call follows it directly. Every step's result is checked against
siglayer.reference. `python bench/run.py --mixed` prints the same matrix as ratios.
"""

from __future__ import annotations

from types import ModuleType

import pytest

import harness
import mixed

STEPS = ("numpy", "torch", "siglayer")
PASSES = ("forward_backward",)
CONTENDERS = ("mixed",)


@pytest.mark.parametrize("before", STEPS)
@pytest.mark.parametrize("step", STEPS)
def test_mixed(benchmark, case, group, torch: ModuleType | None, step: str, before: str) -> None:
    size, dtype, _, _ = case
    if torch is None and "torch" in (step, before):
        pytest.skip("PyTorch is not installed (pip install torch==2.13.0)")
    problem, reference = group
    steps = mixed.make_steps(problem, reference, torch)
    # Before the timing, which pytest-benchmark keeps even when a later check fails.
    harness.check(f"{step} {size} {dtype}", steps[step](), reference)
    benchmark.group = f"mixed-{size}-{dtype}-{step}"
    benchmark.name = "alone" if before == step else f"after {before}"

    def run_before() -> None:  # pedantic would take a returned value for the step's arguments
        steps[before]()

    result = benchmark.pedantic(steps[step], setup=run_before, rounds=30, warmup_rounds=5)
    harness.check(f"{step} after {before} {size} {dtype}", result, reference)
