"""The sigmoid sweep alone: 2**20 values on one thread (G values/s = 2**20 / time / 1e9)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from siglayer import _bench, _core, reference


@pytest.mark.parametrize("contender", ["siglayer", "numpy", "torch"])
@pytest.mark.parametrize("dtype", list(_bench.DTYPES))
def test_sigmoid(benchmark, dtype: str, contender: str, torch: ModuleType | None) -> None:
    z = _bench._sigmoid_input(np.dtype(dtype))
    call: Callable[[], Any]
    if contender == "siglayer":
        y = np.empty_like(z)
        call = lambda: _core.sigmoid(z, y)  # noqa: E731
    elif contender == "numpy":
        call = lambda: reference.sigmoid(z)  # noqa: E731
    else:
        if torch is None:
            pytest.skip("PyTorch is not installed (pip install torch==2.13.0)")
        zt, yt = torch.from_numpy(z), torch.from_numpy(np.empty_like(z))
        call = lambda: torch.sigmoid(zt, out=yt).numpy()  # noqa: E731
    benchmark.group = f"sigmoid-{dtype}-1thread-2^20"
    benchmark.name = contender
    with _bench.limit_threads(1, torch):
        result = benchmark(call)
    _bench.check_sigmoid(result, z)
