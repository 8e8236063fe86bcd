"""_core.gemm, the bare product the benchmarks take as the GEMM floor."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DTYPES, assert_within, product_bound
from siglayer import _core

# (M, N, K): one thread below ~2**20 multiply-adds, so (130, 70, 120), (40, 300, 100) and
# (3000, 1, 400) are split between threads (rows, then columns) when two are available.
# One output row or column (M or N = 1) runs as a matrix-vector product, an inner
# dimension of one (K = 1) as an outer product (blas.cpp).
SHAPES = [
    (1, 1, 1),
    (7, 5, 3),
    (130, 70, 120),
    (40, 300, 100),
    (1, 70, 120),
    (130, 1, 120),
    (1, 1, 50),
    (3000, 1, 400),
    (130, 70, 1),
    (3000, 400, 1),
]


def _stored(a: np.ndarray, trans: bool, layout: str) -> np.ndarray:
    """An array whose op() is `a`: a.T when trans, in C or F order."""
    stored = a.T if trans else a
    return np.ascontiguousarray(stored) if layout == "C" else np.asfortranarray(stored)


@pytest.mark.parametrize("threading", ["slabs", "blas"])
@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize(
    ("trans_a", "trans_b"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["NN", "TN", "NT", "TT"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_numpy(rng, threads, shape, dtype, trans_a, trans_b, layout, threading):
    M, N, K = shape
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    A, B = _stored(a, trans_a, layout), _stored(b, trans_b, layout)
    A_before, B_before = A.copy(), B.copy()
    blas_threads = _core.blas_num_threads()
    C = _core.gemm(A, B, trans_a, trans_b, None, threading)
    assert C.shape == (M, N) and C.dtype == np.dtype(dtype) and C.flags.c_contiguous
    want = a.astype(np.float64) @ b.astype(np.float64)
    assert_within(C.astype(np.float64), want, product_bound(np.abs(a), np.abs(b), K, dtype), "C")
    np.testing.assert_array_equal(A, A_before)
    np.testing.assert_array_equal(B, B_before)
    # The BLAS's thread setting is back where it was ('blas' raises it for one call).
    assert _core.blas_num_threads() == blas_threads


@pytest.mark.parametrize(
    ("M", "N", "K"),
    [(33, 9, 17), (33, 1, 17), (1, 9, 17), (33, 9, 1)],
    ids=["gemm", "column", "row", "outer"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_writes_into_out(rng, dtype, M, N, K):
    """A buffer full of NaN is overwritten, never scaled: a product never reads it."""
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    out = np.full((M, N), np.nan, dtype)
    assert _core.gemm(a, b, out=out) is out
    assert_within(
        out.astype(np.float64),
        a.astype(np.float64) @ b,
        product_bound(np.abs(a), np.abs(b), K, dtype),
        "out",
    )


@pytest.mark.parametrize("threading", ["slabs", "blas"])
def test_empty_inner_dimension_gives_zeros(threading):
    out = np.full((3, 4), np.nan)
    _core.gemm(np.empty((3, 0)), np.empty((0, 4)), out=out, threading=threading)
    assert (out == 0).all()
    assert _core.gemm(np.empty((0, 2)), np.empty((2, 5))).shape == (0, 5)


def test_bad_arguments_are_named():
    a, b = np.ones((4, 3)), np.ones((3, 2))
    with pytest.raises(TypeError, match="share one dtype; got A float64, B float32"):
        _core.gemm(a, b.astype(np.float32))
    with pytest.raises(TypeError, match="A has dtype int64"):
        _core.gemm(np.ones((4, 3), np.int64), b)
    with pytest.raises(TypeError, match=r"A must be a numpy\.ndarray, got list"):
        _core.gemm([[1.0]], b)
    with pytest.raises(
        ValueError,
        match=r"op\(A\) has shape \(4, 3\) but op\(B\) has shape "
        r"\(2, 3\)",
    ):
        _core.gemm(a, b, trans_b=True)
    with pytest.raises(ValueError, match="A must be 2-D"):
        _core.gemm(np.ones(3), b)
    with pytest.raises(ValueError, match="A must be C- or F-contiguous"):
        _core.gemm(np.ones((8, 6))[::2, ::2], b)
    with pytest.raises(ValueError, match=r"out has shape \(2, 4\), expected \(4, 2\)"):
        _core.gemm(a, b, out=np.empty((2, 4)))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        _core.gemm(a, b, out=np.empty((2, 4)).T)
    with pytest.raises(ValueError, match="threading must be 'slabs' or 'blas'"):
        _core.gemm(a, b, threading="many")


def test_out_overlapping_an_input_is_refused():
    buf = np.ones((4, 4))
    before = buf.copy()
    with pytest.raises(_core.OverlapError, match="out overlaps A"):
        _core.gemm(buf, buf, out=buf)
    np.testing.assert_array_equal(buf, before)
