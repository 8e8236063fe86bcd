"""Shared test helpers: seeded inputs, thread-count fixture and the error bounds.

Tolerances are stated once, here. A matrix product of inner length K computed in
floating point satisfies |fl(A @ B) - A @ B| <= gamma_K * (|A| @ |B|) with
gamma_K ~ K * eps; siglayer and the reference each obey that bound, so they differ by at
most twice it. We allow 2 * (K + 4) * eps * (|A| @ |B|) elementwise: a bound that scales
with the reduction length and cannot be met by a wrong result of any size.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import siglayer

EPS = {
    np.dtype(np.float32): float(np.finfo(np.float32).eps),
    np.dtype(np.float64): float(np.finfo(np.float64).eps),
}
DTYPES = [np.float32, np.float64]


def product_bound(abs_a: np.ndarray, abs_b: np.ndarray, k: int, dtype: np.dtype) -> np.ndarray:
    """Allowed |siglayer - reference| for a product of inner length k (see module doc)."""
    return (
        2 * (k + 4) * EPS[np.dtype(dtype)] * (abs_a.astype(np.float64) @ abs_b.astype(np.float64))
    )


def assert_within(got: np.ndarray, want: np.ndarray, bound: np.ndarray | float, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    # Tiny absolute floor for subnormal noise only.
    ok = err <= np.asarray(bound) + 1e-300
    assert ok.all(), f"{what}: max error {err.max():.3e}, worst excess {(err - bound).max():.3e}"


def make_problem(rng: np.random.Generator, shape_x: tuple[int, ...], n_out: int, dtype: type):
    n_in = shape_x[-1]
    x = rng.standard_normal(shape_x).astype(dtype)
    W = (rng.standard_normal((n_in, n_out)) / math.sqrt(max(n_in, 1))).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    dout = rng.standard_normal((*shape_x[:-1], n_out)).astype(dtype)
    return x, W, b, dout


@pytest.fixture(params=[1, 2], ids=lambda t: f"threads{t}")
def threads(request: pytest.FixtureRequest):
    before = siglayer.get_num_threads()
    siglayer.set_num_threads(request.param)
    yield request.param
    siglayer.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261127)


@pytest.fixture
def restore_threads():
    """Leaves siglayer's thread count as it found it."""
    before = siglayer.get_num_threads()
    yield
    siglayer.set_num_threads(before)
