"""backward_from_preactivation (dZ in, no dZ sweep) against the NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

import siglayer
from conftest import DTYPES, SHAPE_IDS, SHAPES, assert_within, gradient_bounds
from siglayer import reference


def make(rng: np.random.Generator, shape_x: tuple[int, ...], n_out: int, dtype: type):
    n_in = shape_x[-1]
    x = rng.standard_normal(shape_x).astype(dtype)
    W = (rng.standard_normal((n_in, n_out)) / math.sqrt(max(n_in, 1))).astype(dtype)
    dZ = rng.standard_normal((*shape_x[:-1], n_out)).astype(dtype)
    return dZ, x, W


def check(got, dZ, x, W) -> None:
    """The products differ from the reference only by summation order (gradient_bounds)."""
    want = reference.backward_from_preactivation(dZ, x, W)
    dx_bound, dW_bound, db_bound = gradient_bounds(dZ, x, W)
    assert_within(got[1], want[1], dW_bound, "dW")
    assert_within(got[2], want[2], db_bound, "db")
    assert_within(got[0], want[0], dx_bound, "dx")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("shape_x", "n_out"), SHAPES, ids=SHAPE_IDS)
def test_matches_reference(rng, threads, dtype, shape_x, n_out):
    dZ, x, W = make(rng, shape_x, n_out, dtype)
    copies = [a.copy() for a in (dZ, x, W)]
    check(siglayer.backward_from_preactivation(dZ, x, W), dZ, x, W)
    for before, after in zip(copies, (dZ, x, W), strict=True):
        np.testing.assert_array_equal(before, after)  # inputs never modified


def _layouts(a: np.ndarray) -> dict[str, np.ndarray]:
    big = np.zeros((a.shape[0] * 2, a.shape[1] * 3), a.dtype)
    big[::2, ::3] = a
    return {
        "C": np.ascontiguousarray(a),
        "F": np.asfortranarray(a),
        "strided": big[::2, ::3],
        "negative": np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1],
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", ["C", "F", "strided", "negative"])
def test_memory_layouts(rng, threads, dtype, layout):
    # Large enough (n * n_out * n_in > 2^20) for the two-thread split.
    dZ, x, W = make(rng, (211, 97), 67, dtype)
    dZl, xl, Wl = (_layouts(a)[layout] for a in (dZ, x, W))
    check(siglayer.backward_from_preactivation(dZl, xl, Wl), dZ, x, W)


def test_agrees_with_backward_through_the_sigmoid(rng):
    """backward(dout) is backward_from_preactivation(dout * out * (1 - out))."""
    x = rng.standard_normal((40, 30))
    W = rng.standard_normal((30, 20)) / 6
    b = rng.standard_normal(20)
    dout = rng.standard_normal((40, 20))
    out = siglayer.forward(x, W, b)
    via_dout = siglayer.backward(dout, x, W, out)
    via_dZ = siglayer.backward_from_preactivation(dout * out * (1 - out), x, W)
    for a, c in zip(via_dout, via_dZ, strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-13, atol=1e-15)


def test_need_dx_false_and_buffers(rng):
    dZ, x, W = make(rng, (9, 5), 4, np.float64)
    dW, db = np.empty((5, 4)), np.empty(4)
    dx_r, dW_r, db_r = siglayer.backward_from_preactivation(dZ, x, W, need_dx=False, dW=dW, db=db)
    assert dx_r is None and dW_r is dW and db_r is db
    check((reference.backward_from_preactivation(dZ, x, W)[0], dW, db), dZ, x, W)
    dx = np.empty((9, 5))
    assert siglayer.backward_from_preactivation(dZ, x, W, dx=dx)[0] is dx
    dx3 = np.empty((3, 3, 5))
    x3 = x.reshape(3, 3, 5)
    assert siglayer.backward_from_preactivation(dZ.reshape(3, 3, 4), x3, W, dx=dx3)[0] is dx3


def test_db_bitwise_independent_of_threads(rng):
    dZ, x, W = make(rng, (4000, 64), 96, np.float32)
    before = siglayer.get_num_threads()
    try:
        siglayer.set_num_threads(1)
        db1 = siglayer.backward_from_preactivation(dZ, x, W)[2]
        siglayer.set_num_threads(2)
        db2 = siglayer.backward_from_preactivation(dZ, x, W)[2]
    finally:
        siglayer.set_num_threads(before)
    np.testing.assert_array_equal(db1, db2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dZ": np.zeros((4, 2))}, ValueError, r"dZ has shape \(4, 2\), expected \(3, 2\)"),
        ({"dZ": np.zeros((3, 2), np.float32)}, TypeError, "share one dtype"),
        ({"dZ": [[0.0, 0.0]] * 3}, TypeError, "dZ must be a numpy.ndarray"),
        ({"dZ": np.zeros((3, 2), np.int64)}, TypeError, "dZ has dtype int64"),
        ({"W": np.zeros((4, 2))}, ValueError, "W has shape"),
        ({"dx": np.zeros((3, 5)), "need_dx": False}, ValueError, "need_dx=False"),
        ({"dW": np.zeros((2, 5))}, ValueError, r"dW has shape \(2, 5\)"),
        ({"db": np.zeros(2, np.float32)}, TypeError, "db has dtype float32"),
    ],
    ids=[
        "dZ-rows",
        "dZ-dtype",
        "dZ-list",
        "dZ-int",
        "W-shape",
        "dx-without-need",
        "dW-shape",
        "db-dtype",
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"dZ": np.zeros((3, 2)), "x": np.zeros((3, 5)), "W": np.zeros((5, 2))}
    options = {}
    for key, value in kwargs.items():
        (args if key in args else options)[key] = value
    with pytest.raises(error, match=match):
        siglayer.backward_from_preactivation(args["dZ"], args["x"], args["W"], **options)


def test_output_overlapping_an_input_is_refused():
    dZ = np.ones((3, 2))
    x = np.ones((3, 5))
    W = np.ones((5, 2))
    with pytest.raises(ValueError, match="dW overlaps W"):
        siglayer.backward_from_preactivation(dZ, x, W, dW=W)
    buf = np.zeros(20)
    with pytest.raises(ValueError, match="overlaps"):
        siglayer.backward_from_preactivation(
            dZ, x, W, dx=buf[:15].reshape(3, 5), dW=buf[10:20].reshape(5, 2)
        )
    np.testing.assert_array_equal(buf, 0)  # nothing half-written
