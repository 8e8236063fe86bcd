"""Property-based tests: random shapes, dtypes, memory layouts and values against
siglayer.reference, with the error bounds of conftest.py, for forward, backward and
backward_from_preactivation.

Shapes run from 0 to 65 per dimension with up to two leading batch dimensions; every
array gets its own layout (C, F, strided, negative strides, zero strides); values are
normal with a random scale, sprinkled with +-inf, NaN, +-1e4, +-0 and subnormals. Where
the reference is NaN or infinite siglayer must be the same; elsewhere within the bound.
The example count comes from the hypothesis profile in conftest.py ("ci" by default,
SIGLAYER_HYPOTHESIS_PROFILE=long for a longer search).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st

import siglayer
from conftest import assert_within, backward_bounds, forward_bound, gradient_bounds
from siglayer import reference

LAYOUTS = ["C", "F", "strided", "negative", "zero-stride"]
SPECIALS = [np.inf, -np.inf, np.nan, 1e4, -1e4, 0.0, -0.0, 1e-40]


def lay_out(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values as `a` in another memory layout (the last two axes of a batched
    array); "zero-stride" repeats a's first row instead, so it changes the values."""
    if a.ndim < 2:
        return a if layout != "negative" else np.ascontiguousarray(a[::-1])[::-1]
    if layout == "F":
        return np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2)
    if layout == "strided":
        big = np.zeros((*a.shape[:-2], 2 * a.shape[-2], 3 * a.shape[-1]), a.dtype)
        big[..., ::2, ::3] = a
        return big[..., ::2, ::3]
    if layout == "negative":
        return np.ascontiguousarray(a[..., ::-1, ::-1])[..., ::-1, ::-1]
    if layout == "zero-stride" and a.shape[-2] > 0:
        return np.broadcast_to(a[..., :1, :], a.shape)
    return a


@dataclass
class Problem:
    x: np.ndarray
    W: np.ndarray
    b: np.ndarray
    dout: np.ndarray
    threads: int
    use_buffers: bool
    need_dx: bool


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = tuple(draw(st.lists(st.integers(0, 4), max_size=2)))
    n, n_in, n_out = (draw(st.integers(0, 65)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 1e-3, 30.0]))
    special_rate = draw(st.sampled_from([0.0, 0.0, 0.01, 0.2]))
    mask = draw(st.integers(1, 2 ** len(SPECIALS) - 1))  # a non-empty subset of SPECIALS
    specials = [value for i, value in enumerate(SPECIALS) if mask >> i & 1]

    def values(shape: tuple[int, ...], unit: float) -> np.ndarray:
        a = rng.standard_normal(shape) * scale * unit
        hit = rng.random(shape) < special_rate
        a[hit] = rng.choice(specials, size=int(hit.sum()))
        return a.astype(dtype)

    x = values((*batch, n, n_in), 1.0)
    W = values((n_in, n_out), 1 / math.sqrt(max(n_in, 1)))
    b = values((n_out,), 1.0)
    dout = values((*batch, n, n_out), 1.0)
    layout = {name: draw(st.sampled_from(LAYOUTS)) for name in ("x", "W", "b", "dout")}
    note(f"dtype={np.dtype(dtype).name} x{x.shape} W{W.shape} layouts={layout} specials={specials}")
    return Problem(
        x=lay_out(x, layout["x"]),
        W=lay_out(W, layout["W"]),
        b=lay_out(b, layout["b"]),
        dout=lay_out(dout, layout["dout"]),
        threads=draw(st.sampled_from([1, 2])),
        use_buffers=draw(st.booleans()),
        need_dx=draw(st.booleans()),
    )


def nan_buffer(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A caller's buffer full of NaN: a product that scales it by beta = 0 instead of
    overwriting it would leave NaN behind."""
    return np.full(shape, np.nan, dtype)


@given(problems())
def test_forward_backward_match_reference(p: Problem) -> None:
    before = siglayer.get_num_threads()
    siglayer.set_num_threads(p.threads)
    try:
        check(p)
    finally:
        siglayer.set_num_threads(before)


def check(p: Problem) -> None:
    x, W, b, dout = p.x, p.W, p.b, p.dout
    inputs = [a.copy() for a in (x, W, b, dout)]
    out_shape = (*x.shape[:-1], W.shape[1])
    if p.use_buffers:
        out = nan_buffer(out_shape, x.dtype)
        assert siglayer.forward(x, W, b, out=out) is out
    else:
        out = siglayer.forward(x, W, b)

    with np.errstate(all="ignore"):  # the reference meets inf * 0 on purpose
        want = reference.forward(x, W, b)
        z = x @ W + b
        bound = forward_bound(x, W, b, want)
    # sigma(+-inf) is exactly 1 or 0; the bound there is inf, so it is required exactly.
    bound = np.where(np.isinf(z), 0.0, bound)
    assert_within(out, want, bound, "out")

    buffers = {}
    if p.use_buffers:
        buffers = {"dW": nan_buffer(W.shape, x.dtype), "db": nan_buffer(W.shape[1:], x.dtype)}
        if p.need_dx:
            buffers["dx"] = nan_buffer(x.shape, x.dtype)
    dx, dW, db = siglayer.backward(dout, x, W, out, need_dx=p.need_dx, **buffers)
    for name, buffer in buffers.items():
        assert {"dx": dx, "dW": dW, "db": db}[name] is buffer
    assert (dx is None) == (not p.need_dx)

    with np.errstate(all="ignore"):
        want_dx, want_dW, want_db = reference.backward(dout, x, W, out)
        dx_bound, dW_bound, db_bound = backward_bounds(dout, x, W, out)
    assert_within(dW, want_dW, dW_bound, "dW")
    assert_within(db, want_db, db_bound, "db")
    if p.need_dx:
        assert dx is not None
        assert_within(dx, want_dx, dx_bound, "dx")

    # From the pre-activation, with dout standing in for dZ (specials included).
    dx, dW, db = siglayer.backward_from_preactivation(dout, x, W, need_dx=p.need_dx, **buffers)
    with np.errstate(all="ignore"):
        want_dx, want_dW, want_db = reference.backward_from_preactivation(dout, x, W)
        dx_bound, dW_bound, db_bound = gradient_bounds(dout, x, W)
    assert_within(dW, want_dW, dW_bound, "dW from dZ")
    assert_within(db, want_db, db_bound, "db from dZ")
    if p.need_dx:
        assert dx is not None
        assert_within(dx, want_dx, dx_bound, "dx from dZ")

    for a, kept in zip((x, W, b, dout), inputs, strict=True):
        np.testing.assert_array_equal(a, kept, err_msg="an input changed")
