"""Sizes at the limits: more than 2^31 elements in one array, and an inner dimension of
exactly the BLAS integer maximum. Marked slow (deselected by default, not run in CI):

    pytest -m slow tests/test_large.py

Each test needs up to ~18 GB of memory and skips when the machine has less available.
Dimensions just beyond the BLAS integer range are refused before anything is allocated;
tests/test_catalogue.py checks that on every run with zero-stride views.
"""

from __future__ import annotations

import math
import mmap

import numpy as np
import pytest

import siglayer
from conftest import EPS, assert_within, forward_bound, product_bound
from siglayer import reference

pytestmark = pytest.mark.slow

INT_MAX = 2**31 - 1
GB = 1 << 30


def require_available(nbytes: int) -> None:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    except OSError:
        pytest.skip("needs /proc/meminfo")
    if info["MemAvailable"] < nbytes:
        pytest.skip(f"needs {nbytes / GB:.1f} GiB available, have {info['MemAvailable'] / GB:.1f}")


def sparse_zeros(count: int, dtype: type) -> np.ndarray:
    """count zeros on untouched private pages (MAP_NORESERVE): no memory until written,
    and reading untouched pages costs none either."""
    nbytes = count * np.dtype(dtype).itemsize
    no_reserve = getattr(mmap, "MAP_NORESERVE", 0x4000)
    try:
        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | no_reserve)
    except OSError as e:
        pytest.skip(f"cannot map {nbytes} bytes: {e}")
    return np.frombuffer(buffer, dtype)


def test_more_than_2_31_elements_in_one_array() -> None:
    """x float32 (2^21 + 5, 1024): 2^31 + 5120 elements, 8.6 GB; dx the same size.

    Only the rows in `rows` get a nonzero dout, so dW and db are sums of those rows'
    terms alone (the other terms are exact zeros), and the reference can check them
    with the bound of a sum of that length."""
    n, n_in, n_out = 2**21 + 5, 1024, 8
    require_available(19 * GB)
    rng = np.random.default_rng(31)
    x = np.empty((n, n_in), np.float32)
    chunk = 1 << 16
    for i in range(0, n, chunk):
        rng.standard_normal(out=x[i : i + chunk], dtype=np.float32)
    assert x.size > 2**31
    W = (rng.standard_normal((n_in, n_out)) / math.sqrt(n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    boundary = 2**31 // n_in  # the first row starting beyond element 2^31 - 1
    rows = np.unique(
        np.concatenate(
            [
                np.arange(0, 512),
                np.arange(boundary - 512, n),  # every row at and beyond element 2^31
                rng.choice(n, 2048, replace=False),
            ]
        )
    )

    out = siglayer.forward(x, W, b)
    want = reference.forward(x[rows], W, b)
    assert_within(out[rows], want, forward_bound(x[rows], W, b, want), "out")

    dout = np.zeros((n, n_out), np.float32)
    dout[rows] = rng.standard_normal((rows.size, n_out))
    dx, dW, db = siglayer.backward(dout, x, W, out)
    assert dx is not None
    dZ = (dout[rows] * out[rows] * (1 - out[rows])).astype(np.float32)
    k = rows.size  # nonzero terms per sum
    xs = x[rows]
    want_dW = (xs.T.astype(np.float64) @ dZ).astype(np.float32)
    assert_within(dW, want_dW, product_bound(np.abs(xs.T), np.abs(dZ), k, np.float32), "dW")
    want_db = dZ.astype(np.float64).sum(axis=0).astype(np.float32)
    db_bound = product_bound(np.ones((1, k)), np.abs(dZ), k, np.float32)[0]
    assert_within(db, want_db, db_bound, "db")
    want_dx = dZ @ W.T
    assert_within(
        dx[rows], want_dx, product_bound(np.abs(dZ), np.abs(W).T, n_out, np.float32), "dx"
    )
    zero_rows = np.setdiff1d(np.arange(boundary - 4096, boundary - 512), rows)
    assert not dx[zero_rows].any(), "dx must be exactly 0 where dout is 0"


def test_inner_dimension_at_the_blas_limit() -> None:
    """n_in = 2^31 - 1, the largest the BLAS integer holds: x (1, n_in) and W (n_in, 1)
    are zero except their last three entries, so a truncated inner length would miss
    them. Inputs cost no memory (untouched pages); dW and dx are 8 GiB each."""
    require_available(18 * GB)
    n_in = INT_MAX
    x = sparse_zeros(n_in, np.float32).reshape(1, n_in)
    W = sparse_zeros(n_in, np.float32).reshape(n_in, 1)
    x[0, -3:] = 1.0
    W[-3:, 0] = 2.0
    b = np.array([-6.5], np.float32)
    out = siglayer.forward(x, W, b)  # z = 3 * 1 * 2 - 6.5
    np.testing.assert_allclose(out, [[1 / (1 + math.exp(0.5))]], rtol=4 * EPS[np.dtype(np.float32)])

    dout = np.ones((1, 1), np.float32)
    dx, dW, db = siglayer.backward(dout, x, W, out)
    assert dx is not None
    dZ = out[0, 0] * (1 - out[0, 0])
    assert db[0] == dZ
    np.testing.assert_array_equal(dW[-3:, 0], np.float32(1.0) * dZ)  # x^T . dZ
    np.testing.assert_array_equal(dx[0, -3:], np.float32(2.0) * dZ)  # dZ . W^T
    for name, grad in (("dW", dW.reshape(-1)), ("dx", dx.reshape(-1))):
        sample = np.random.default_rng(0).integers(0, n_in - 3, 4096)
        assert not grad[sample].any(), f"{name} must be 0 where x (or W) is 0"
        assert not grad[: 1 << 20].any() and not grad[-(1 << 20) : -3].any(), name


def test_inner_dimension_beyond_the_blas_limit_is_refused() -> None:
    """n_in = 2^31 with real (untouched) arrays: a clear ValueError, nothing computed."""
    n_in = INT_MAX + 1
    x = sparse_zeros(n_in, np.float32).reshape(1, n_in)
    W = sparse_zeros(n_in, np.float32).reshape(n_in, 1)
    b = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=r"n_in = 2147483648 exceeds the BLAS integer range"):
        siglayer.forward(x, W, b)
    with pytest.raises(ValueError, match=r"n_in = 2147483648 exceeds the BLAS integer range"):
        siglayer.backward(np.ones((1, 1), np.float32), x, W, np.full((1, 1), 0.5, np.float32))
