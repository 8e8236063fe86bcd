"""Shared test helpers: seeded inputs, thread-count fixture and the error bounds.

Tolerances are stated once, here. A matrix product of inner length K computed in
floating point satisfies |fl(A @ B) - A @ B| <= gamma_K * (|A| @ |B|) with
gamma_K ~ K * eps; siglayer and the reference each obey that bound, so they differ by at
most twice it. We allow 2 * (K + 4) * eps * (|A| @ |B|) elementwise: a bound that scales
with the reduction length and cannot be met by a wrong result of any size.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import settings

import siglayer
from siglayer import _core
from siglayer._dtypes import FLOAT_DTYPES

# Hypothesis: by default ("ci") a bounded and reproducible run (the same examples every
# time, nothing written to .hypothesis/); SIGLAYER_HYPOTHESIS_PROFILE=long searches
# longer, at random, and keeps failing examples in the local database.
settings.register_profile(
    "ci", max_examples=100, deadline=None, derandomize=True, database=None, print_blob=True
)
settings.register_profile("long", max_examples=5000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("SIGLAYER_HYPOTHESIS_PROFILE", "ci"))

# Every per-dtype table of the tests is keyed by the package's one list of dtypes.
DTYPES = [dt.type for dt in FLOAT_DTYPES]
EPS = {dt: float(np.finfo(dt).eps) for dt in FLOAT_DTYPES}


# (n, n_in) of the layers with few outputs (n_out < 12) in test_layer.py and
# test_bfloat16.py: remainders of the four-row groups and of the vector widths (8, 16, 32)
# of the few-outputs kernels; (4100, 260) crosses a 256-column chunk of dx and is past 2**20
# multiply-adds even with one output, so that two threads really run. Each file adds a
# shape whose rows span 4 KB in its dtypes, whose dW goes along the rows (col_dots_rows,
# kernels_simd.hpp: on AVX2, and on AVX-512 with one output).
FEW_OUTPUT_BASE = [(1, 1), (3, 17), (4, 16), (7, 33), (9, 64), (1001, 100), (4100, 260)]


# db adds blocks of SUM_ROWS rows in the dtype and the block sums in float64 (the core's
# kSumRows, views.hpp), and the reference sums in float64: for float32, db's error grows
# with the block, not with the batch.
SUM_ROWS = _core.config()["db_sum_rows"]


def db_terms(rows: int, dtype: np.dtype) -> int:
    """The roundings db's bound allows: SUM_ROWS in a block plus one per block; for float64
    the reference's own running float64 sum, one per row."""
    if np.dtype(dtype) == np.float64:
        return rows
    return min(rows, SUM_ROWS) + rows // SUM_ROWS


def product_bound(abs_a: np.ndarray, abs_b: np.ndarray, k: int, dtype: np.dtype) -> np.ndarray:
    """Allowed |siglayer - reference| for a product of inner length k (see module doc)."""
    return (
        2 * (k + 4) * EPS[np.dtype(dtype)] * (abs_a.astype(np.float64) @ abs_b.astype(np.float64))
    )


def assert_within(got: np.ndarray, want: np.ndarray, bound: np.ndarray | float, what: str) -> None:
    """|got - want| <= bound where want is finite; where it is NaN or +-inf, got is the same."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    finite = np.isfinite(want)
    nan_ok = np.isnan(got) == np.isnan(want)
    assert nan_ok.all(), f"{what}: NaN at {np.argwhere(~nan_ok)[:5].tolist()} in one result only"
    inf = np.isinf(want)
    assert (got[inf] == want[inf]).all(), f"{what}: an infinity differs"
    got64, want64 = got.astype(np.float64)[finite], want.astype(np.float64)[finite]
    bound = np.broadcast_to(np.asarray(bound, np.float64), want.shape)[finite]
    err = np.abs(got64 - want64)
    # Tiny absolute floor for subnormal noise only. A NaN error (got infinite where want
    # is finite) or NaN bound fails.
    ok = err <= bound + 1e-300
    assert ok.all(), f"{what}: max error {err.max():.3e}, worst excess {(err - bound).max():.3e}"


def forward_bound(x: np.ndarray, W: np.ndarray, b: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Allowed |out - reference| for out = sigma(x @ W + b): sigma' <= 1/4 scales the error
    of x @ W + b, and sigma itself adds a few ulp of out."""
    n_in = W.shape[0]
    x2 = np.abs(x.reshape(math.prod(x.shape[:-1]), n_in))
    eps = EPS[x.dtype]
    z_bound = product_bound(x2, np.abs(W), n_in + 1, x.dtype) + 2 * eps * np.abs(b.reshape(-1))
    return 0.25 * z_bound.reshape(want.shape) + 4 * eps * np.abs(want)


def backward_bounds(
    dout: np.ndarray, x: np.ndarray, W: np.ndarray, out: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Allowed errors of (dx, dW, db) given the same out on both sides: dZ then agrees
    exactly (both compute (dout * out) * (1 - out)), and the products differ only by
    summation order, within product_bound."""
    return gradient_bounds(dout * out * (1 - out), x, W)


def gradient_bounds(
    dZ: np.ndarray, x: np.ndarray, W: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Allowed errors of (dx, dW, db) = (dZ @ W.T, x.T @ dZ, dZ summed over rows)."""
    n_in, n_out = W.shape
    rows = math.prod(x.shape[:-1])
    dZ = np.abs(dZ.reshape(rows, n_out))
    x2 = np.abs(x.reshape(rows, n_in))
    dW = product_bound(x2.T, dZ, rows, x.dtype)
    db = product_bound(np.ones((1, rows)), dZ, db_terms(rows, x.dtype), x.dtype)[0]
    dx = product_bound(dZ, np.abs(W).T, n_out, x.dtype).reshape(x.shape)
    return dx, dW, db


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


def rows_apart(a: np.ndarray, extra: int = 5) -> np.ndarray:
    """a's values in a view whose rows lie `extra` elements beyond their ends apart: the
    same matrix, not end to end."""
    wide = np.zeros((a.shape[0], a.shape[1] + extra), a.dtype)
    wide[:, : a.shape[1]] = a
    return wide[:, : a.shape[1]]


@contextlib.contextmanager
def selected_isa(isa: str) -> Iterator[None]:
    """The kernels of instruction set `isa` inside the block, the best one after it."""
    best = _core.config()["simd_available"].split(",")[0]
    _core.select_isa(isa)
    try:
        yield
    finally:
        _core.select_isa(best)


def assert_same_bits(got, want, names=("dx", "dW", "db")) -> None:
    """Each result of `got` bit for bit the one of `want` at its place."""
    for name, one, two in zip(names, got, want, strict=True):
        np.testing.assert_array_equal(one, two, err_msg=name)


# Outputs whose dZ and db run end to end in kernels_impl.hpp (fewer than 32 outputs): db's
# sums in registers (1 to 8) and through memory (11 to 31), runs of whole blocks of 128 rows
# (up to 4 outputs) and runs that end inside a block (11 and 24). With NARROW_DZ_SHAPE, 32
# of db's blocks and 7 rows left, past 2**20 multiply-adds with one output: two threads
# really run, each taking whole blocks (layer_detail.hpp, backward_by_rows).
NARROW_DZ_OUTPUTS = [1, 2, 3, 5, 8, 11, 16, 24, 31]
NARROW_DZ_SHAPE = (4103, 256)


@pytest.fixture
def restore_threads():
    """Leaves siglayer's thread count as it found it."""
    before = siglayer.get_num_threads()
    yield
    siglayer.set_num_threads(before)


# Layer test shapes (shape of x, n_out): tiny, primes, large-ish, zero-size, batch
# dimensions, 1-D x; one output column (n_out = 1) and one row (n = 1), which run as
# matrix-vector products (blas.cpp).
SHAPES = [
    ((1, 1), 1),
    ((257, 33), 1),
    ((1, 65), 33),
    ((7, 13), 5),
    ((64, 33), 17),
    ((300, 257), 129),
    ((1031, 67), 3),
    ((3, 70), 600),
    # Batch below n_out or n_in: on two threads the products split into column tiles
    # (out and dW by W's columns, dx by x's), whose offsets into W, b and W^T nothing
    # smaller reaches (three planted offset bugs passed every layer test without these).
    ((64, 4096), 4),
    ((64, 256), 128),
    ((16, 1024), 64),
    # Four blocks of 128 rows, the last short: on two threads backward cuts dZ's rows
    # between them, each computing dx for its own (layer.cpp, rows_for_threads).
    ((461, 130), 40),
    ((0, 4), 3),
    ((5, 0), 3),
    ((5, 4), 0),
    ((2, 3, 5), 4),
    ((2, 0, 3, 5), 4),
    ((6,), 4),
]
SHAPE_IDS = ["x" + "x".join(map(str, s)) + f"-out{o}" for s, o in SHAPES]
