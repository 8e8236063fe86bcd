"""bfloat16 under pytest-benchmark: a group per size and pass holding siglayer in bfloat16
and in float32 on the same values, the bfloat16 GEMM floor, and PyTorch in bfloat16 and
float32 (bench/bfloat16.py: the contenders and the check against the float64 reference
on the bfloat16 inputs).

    pytest bench/test_bench_bfloat16.py --benchmark-enable --sizes T,M,L
"""

from __future__ import annotations

from functools import cache
from types import ModuleType
from typing import Any

import pytest

import harness

bfloat16 = pytest.importorskip("bfloat16", reason="bench/bfloat16.py needs ml-dtypes")

CONTENDERS = ("bf16", "f32", "floor", "torch", "torch32")


@cache
def _problem(size: str) -> dict[str, Any]:
    return bfloat16.problem(size)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    sizes = [s.strip() for s in metafunc.config.getoption("sizes").split(",") if s.strip()]
    cases = [(s, p, c) for s in sizes for p in harness.PASSES for c in CONTENDERS]
    metafunc.parametrize("bf16_case", cases, ids=["-".join(c) for c in cases])


def test_bfloat16(benchmark, torch: ModuleType | None, bf16_case: tuple[str, str, str]) -> None:
    size, pass_, contender = bf16_case
    if contender.startswith("torch") and torch is None:
        pytest.skip("PyTorch is not installed (pip install torch==2.13.0)")
    if contender.startswith("torch") and not bfloat16.torch_runs(size, False):
        pytest.skip("PyTorch's bfloat16 without AVX512-BF16/AMX takes seconds a call here")
    p = _problem(size)
    if contender == "bf16":
        calls = bfloat16.siglayer_calls(p, None)
    elif contender == "f32":
        calls = bfloat16.float32_calls(p)
    elif contender == "floor":
        calls = bfloat16.floor_calls(p)
    else:
        assert torch is not None
        calls = bfloat16.torch_calls(
            p, torch, torch.bfloat16 if contender == "torch" else torch.float32
        )
    call = calls[pass_]
    bfloat16.check(f"{contender} {pass_} {size}", bfloat16.as_numpy(call()), p)
    benchmark.group = f"bfloat16-{size}-{pass_}"
    benchmark.name = contender
    benchmark.extra_info["shape (n, n_in, n_out)"] = harness.SIZES[size]
    benchmark(call)
