"""forward and forward + backward: siglayer, NumPy, the GEMM floor, PyTorch.

Groups are named size-dtype-pass (e.g. L-float32-forward_backward); every benchmark
checks its result against siglayer.reference, computed once per group.
"""

from __future__ import annotations

from types import ModuleType

import pytest

import harness

CONTENDERS = harness.CONTENDERS


def test_layer(benchmark, case, group, torch: ModuleType | None) -> None:
    size, dtype, pass_, contender = case
    if contender == "torch" and torch is None:
        pytest.skip("PyTorch is not installed (pip install torch==2.13.0)")
    problem, reference = group
    call = harness.make_contender(contender, problem, reference, torch)[pass_]
    # Checked before it is timed: pytest-benchmark keeps the timing of a call that returns,
    # so a check after it failed the test but left a wrong contender's time in the table
    # and the JSON (a review's find). Then once more on what the timed calls returned.
    harness.check(f"{contender} {pass_} {size} {dtype}", call(), reference)
    benchmark.group = f"{size}-{dtype}-{pass_}"
    benchmark.name = contender
    benchmark.extra_info["shape (n, n_in, n_out)"] = problem.shape
    result = benchmark(call)
    harness.check(f"{contender} {pass_} {size} {dtype}", result, reference)
