"""The sigmoid sweep alone: 2**20 values on one thread (G values/s = 2**20 / time / 1e9)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

import harness


@pytest.mark.parametrize("contender", ["siglayer", "numpy", "torch"])
@pytest.mark.parametrize("dtype", list(harness.DTYPES))
def test_sigmoid(benchmark, dtype: str, contender: str, torch: ModuleType | None) -> None:
    if contender == "torch" and torch is None:
        pytest.skip("PyTorch is not installed (pip install torch==2.13.0)")
    z = harness._sigmoid_input(np.dtype(dtype))
    call = harness.sigmoid_calls(z, torch)[contender]
    harness.check_sigmoid(call(), z)  # before the timing, which a later failure keeps
    benchmark.group = f"sigmoid-{dtype}-1thread-2^20"
    benchmark.name = contender
    with harness.limit_threads(1, torch):
        result = benchmark(call)
    harness.check_sigmoid(result, z)
