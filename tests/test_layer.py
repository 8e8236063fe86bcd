"""forward and backward against the NumPy reference, finite differences and a hand case."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import siglayer
from conftest import (
    DTYPES,
    EPS,
    FEW_OUTPUT_BASE,
    NARROW_DZ_OUTPUTS,
    NARROW_DZ_SHAPE,
    SHAPE_IDS,
    SHAPES,
    SUM_ROWS,
    assert_same_bits,
    assert_within,
    backward_bounds,
    forward_bound,
    gradient_bounds,
    make_problem,
    product_bound,
    rows_apart,
    selected_isa,
)
from siglayer import _core, reference
from siglayer._dtypes import FLOAT_DTYPES


def check_backward(dout, x, W, out, got, *, want=None, bounds=None) -> None:
    """Feed siglayer's own out to the reference, so dZ agrees exactly (see backward_bounds);
    want and bounds, the reference's results and backward_bounds', may be given, computed
    once for many calls."""
    want = reference.backward(dout, x, W, out) if want is None else want
    dx_bound, dW_bound, db_bound = backward_bounds(dout, x, W, out) if bounds is None else bounds
    assert_within(got[1], want[1], dW_bound, "dW")
    assert_within(got[2], want[2], db_bound, "db")
    assert_within(got[0], want[0], dx_bound, "dx")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("shape_x", "n_out"), SHAPES, ids=SHAPE_IDS)
def test_matches_reference(rng, threads, dtype, shape_x, n_out):
    x, W, b, dout = make_problem(rng, shape_x, n_out, dtype)
    out = siglayer.forward(x, W, b)
    assert out.shape == (*shape_x[:-1], n_out) and out.dtype == np.dtype(dtype)
    assert_within(out, reference.forward(x, W, b), forward_bound(x, W, b, out), "out")
    check_backward(dout, x, W, out, siglayer.backward(dout, x, W, out))


def _layouts(a: np.ndarray) -> dict[str, np.ndarray]:
    """The same 2-D values in C order, F order, as contiguous rows further apart than their
    length, a strided view, a transposed view and a view with negative strides."""
    big = np.zeros((a.shape[0] * 2, a.shape[1] * 3), a.dtype)
    big[::2, ::3] = a
    return {
        "C": np.ascontiguousarray(a),
        "rows-apart": np.concatenate([a, a], axis=1)[:, : a.shape[1]],
        "F": np.asfortranarray(a),
        "strided": big[::2, ::3],
        "Tview": np.ascontiguousarray(a.T).T,
        "negative": np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1],
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", ["C", "F", "rows-apart", "strided", "Tview", "negative"])
def test_memory_layouts(rng, threads, dtype, layout):
    x, W, b, dout = make_problem(rng, (37, 23), 19, dtype)
    out_ref = siglayer.forward(x, W, b)
    grads_ref = siglayer.backward(dout, x, W, out_ref)
    xl, Wl, doutl = _layouts(x)[layout], _layouts(W)[layout], _layouts(dout)[layout]
    outl = _layouts(out_ref)[layout]
    bl = np.repeat(b, 2)[::2]  # a strided bias
    out = siglayer.forward(xl, Wl, bl)
    assert_within(out, reference.forward(x, W, b), forward_bound(x, W, b, out), "out")
    got = siglayer.backward(doutl, xl, Wl, outl)
    check_backward(dout, x, W, out_ref, got)
    for g, r in zip(got, grads_ref, strict=True):
        assert_within(
            g, r, product_bound(np.ones((1, 1)), np.ones((1, 1)), 64, dtype)[0, 0] * 10, "layout"
        )


@pytest.mark.parametrize("split", ["one-thread", "row-split"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n_out", [3, 19], ids=["few-outputs", "gemm"])
def test_every_mix_of_memory_layouts(rng, restore_threads, dtype, n_out, split):
    """Each argument in its own layout: all 6**4 layouts of x, W, dout and out (x in C and F
    order only for "row-split", below). A mutation
    review (helper-81) gave the forward GEMM x's transpose flag for W, and backward out's
    row step from dout: no test but a lucky one saw it, since every layout test gave all
    arguments the same layout. "row-split": 4 blocks of 128 rows on two threads, so that
    backward splits dZ's rows (layer_detail.hpp, backward_by_rows); a review (helper-84)
    read dout with out's row length and W with the wrong transpose flag or leading
    dimension there, unseen, as every layout test ran on one thread. Oracle: the
    reference, within the bounds of test_matches_reference."""
    if split == "one-thread":
        x, W, b, dout = make_problem(rng, (37, 23), n_out, dtype)
    else:  # past the 2**20 multiply-adds below which one thread runs
        siglayer.set_num_threads(2)
        x, W, b, dout = make_problem(
            rng, (3 * SUM_ROWS + 77, 800 if n_out < 12 else 130), n_out, dtype
        )
    out_c = siglayer.forward(x, W, b)
    L = {name: _layouts(a) for name, a in {"x": x, "W": W, "dout": dout, "out": out_c}.items()}
    if split == "row-split":  # x is read by dW's products only, which the split leaves alone
        L["x"] = {"C": x, "F": L["x"]["F"]}
    want_out = reference.forward(x, W, b)
    bound = forward_bound(x, W, b, out_c)
    want = reference.backward(dout, x, W, out_c)
    bounds = backward_bounds(dout, x, W, out_c)
    for lx, x_l in L["x"].items():
        for lW, W_l in L["W"].items():
            assert_within(siglayer.forward(x_l, W_l, b), want_out, bound, f"out x {lx} W {lW}")
            for ld, dout_l in L["dout"].items():
                for lo, out_l in L["out"].items():
                    got = siglayer.backward(dout_l, x_l, W_l, out_l)
                    try:
                        check_backward(dout, x, W, out_c, got, want=want, bounds=bounds)
                    except AssertionError as e:
                        raise AssertionError(f"x {lx}, W {lW}, dout {ld}, out {lo}: {e}") from e


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_bias_as_row(rng, dtype):
    x, W, b, _ = make_problem(rng, (9, 4), 6, dtype)
    np.testing.assert_array_equal(siglayer.forward(x, W, b[None, :]), siglayer.forward(x, W, b))


def test_hand_computed():
    """z = 1*0.5 + 2*(-0.25) + 0 = 0, so out = 1/2 and dZ = 1 * 1/2 * 1/2 = 1/4; all exact."""
    x = np.array([[1.0, 2.0]])
    W = np.array([[0.5], [-0.25]])
    b = np.array([0.0])
    out = siglayer.forward(x, W, b)
    assert out.tolist() == [[0.5]]
    dx, dW, db = siglayer.backward(np.array([[1.0]]), x, W, out)
    assert dW.tolist() == [[0.25], [0.5]]  # x^T . dZ
    assert db.tolist() == [0.25]
    assert dx.tolist() == [[0.125, -0.0625]]  # dZ . W^T


def test_hand_computed_batch_sums_rows():
    """Two rows with z = 0 and z = ln 3: out = 1/2 and 3/4; dW sums x[i] * dZ[i] over rows."""
    x = np.array([[1.0], [2.0]])
    W = np.array([[math.log(3)]])
    b = np.array([-math.log(3)])
    out = siglayer.forward(x, W, b)
    np.testing.assert_allclose(out, [[0.5], [0.75]], rtol=1e-15, atol=1e-16)
    dx, dW, db = siglayer.backward(np.ones((2, 1)), x, W, out)
    # dZ = [1/4, 3/16]; dW = 1 * 1/4 + 2 * 3/16 = 5/8; db = 7/16.
    np.testing.assert_allclose(dW, [[0.625]], rtol=1e-15)
    np.testing.assert_allclose(db, [0.4375], rtol=1e-15)
    np.testing.assert_allclose(dx, [[0.25 * W[0, 0]], [0.1875 * W[0, 0]]], rtol=1e-15)


@pytest.mark.parametrize("shape_x", [(6, 5), (2, 3, 5)], ids=["2d", "batch"])
def test_finite_differences(rng, shape_x):
    """L = sum(G * out); central differences of L in float64 against backward."""
    x, W, b, G = make_problem(rng, shape_x, 4, np.float64)

    def loss(x_, W_, b_):
        return float(np.sum(G * siglayer.forward(x_, W_, b_)))

    out = siglayer.forward(x, W, b)
    dx, dW, db = siglayer.backward(G, x, W, out)
    h = 1e-6
    for name, param, grad in (("x", x, dx), ("W", W, dW), ("b", b, db)):
        numeric = np.zeros_like(param)
        for idx in np.ndindex(param.shape):
            plus, minus = param.copy(), param.copy()
            plus[idx] += h
            minus[idx] -= h
            args = {"x": x, "W": W, "b": b}
            hi = loss(**{**{k + "_": v for k, v in args.items()}, name + "_": plus})
            lo = loss(**{**{k + "_": v for k, v in args.items()}, name + "_": minus})
            numeric[idx] = (hi - lo) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9, err_msg=name)


def test_need_dx_false(rng):
    x, W, b, dout = make_problem(rng, (8, 5), 3, np.float64)
    out = siglayer.forward(x, W, b)
    dx, dW, db = siglayer.backward(dout, x, W, out, need_dx=False)
    assert dx is None
    _, dW_full, db_full = siglayer.backward(dout, x, W, out)
    np.testing.assert_array_equal(dW, dW_full)
    np.testing.assert_array_equal(db, db_full)


@pytest.mark.parametrize("n_out", [1, 2, 3, 15, 16, 24, 100, 128, 129])
@pytest.mark.parametrize("isa", _core.config()["simd_available"].split(","))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_narrow_outputs_on_every_instruction_set(rng, threads, dtype, isa, n_out):
    """Up to 128 output columns: bias + sigma sweeps groups of rows as one long row
    (kernels_isa.cpp, bias_sigmoid_grouped), on every instruction set; 1000 rows leave a
    partial group; 129 columns go a row at a time."""
    x, W, b, _ = make_problem(rng, (1000, 37), n_out, dtype)
    with selected_isa(isa):
        out = siglayer.forward(x, W, b)
        given = siglayer.forward(x, W, b, out=np.full((1000, n_out), np.nan, dtype))
    assert_within(out, reference.forward(x, W, b), forward_bound(x, W, b, out), "out")
    np.testing.assert_array_equal(given, out)


# conftest's shapes and (1031, 1102), rows of 4 KB and more in float32 and float64:
# 512-column chunks with a partial vector after them, two 512-row blocks and 7 rows after
# them (remainders of col_dots_rows' groups of 4 and 2 rows).
FEW_OUTPUT_SHAPES = [*FEW_OUTPUT_BASE, (1031, 1102)]


@pytest.mark.parametrize("layout", ["C", "strided", "Tview", "negative"])
@pytest.mark.parametrize("n_out", [1, 2, 4, 5, 11, 12, 64, 65])
@pytest.mark.parametrize("isa", _core.config()["simd_available"].split(","))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_few_outputs_on_every_instruction_set_and_layout(
    rng, restore_threads, dtype, isa, n_out, layout
):
    """Fewer than 12 outputs: forward and dW take row_dots and col_dots when x's rows are
    contiguous (the BLAS otherwise) and dx row_combos (layer_detail.hpp), in float32 and
    float64; 12 outputs take the BLAS but for dx, which row_combos makes up to 64 outputs
    from 16 rows (but in the portable loop, isa "baseline"); 65 take the BLAS. Every way against the
    reference; and where the kernels run, the same bits for one thread and two (each sum
    made by one thread, in an order fixed by the sizes; docs/reliability.md,
    Determinism)."""
    best = _core.config()["simd_available"].split(",")[0]
    for n, n_in in FEW_OUTPUT_SHAPES:
        x, W, b, dout = make_problem(rng, (n, n_in), n_out, dtype)
        x, W = _layouts(x)[layout], _layouts(W)[layout]
        runs = []
        _core.select_isa(isa)
        try:
            for t in (1, 2):
                siglayer.set_num_threads(t)
                out = siglayer.forward(x, W, b)
                # backward from the same out both times: only the thread count differs
                out0 = runs[0][0] if runs else out
                runs.append((out, *siglayer.backward(dout, x, W, out0)))
        finally:
            _core.select_isa(best)
        out = runs[0][0]
        assert_within(out, reference.forward(x, W, b), forward_bound(x, W, b, out), "out")
        check_backward(dout, x, W, out, runs[0][1:])
        few = n_out < 12
        same = {
            "db": True,
            "dx": few or (n_out <= 64 and isa != "baseline" and n >= 16),
            "out": few and layout == "C",
            "dW": few and layout == "C",
        }
        for name, one, two in zip(("out", "dx", "dW", "db"), runs[0], runs[1], strict=True):
            if same.get(name, False):
                np.testing.assert_array_equal(one, two, err_msg=f"{name}, {n}x{n_in}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_out", [1, 2, 5, 11])
@pytest.mark.parametrize("isa", _core.config()["simd_available"].split(","))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_few_outputs_dw_along_the_rows_same_bits_as_the_strips(
    restore_threads, dtype, isa, n_out, threads
):
    """dW = x^T . dZ of a layer with few outputs goes along x's rows where a row spans 4
    KB or more (col_dots_rows: on AVX2, and on AVX-512 with one output) and in strips of
    columns down the rows otherwise (col_dots_strip), chunks of columns outside the groups
    of up to 4 outputs either way: the same operations in the same order for every entry,
    so the same bits. x as rows 4.4-8.8 KB apart (a view into a wider array: along the
    rows) against its contiguous copy (rows of 1.2-2.4 KB: strips); 1031 rows (7 after two
    512-row blocks) and n_in leaving a partial vector and a partial chunk. Elsewhere both
    take the strips."""
    rng = np.random.default_rng(n_out)
    n_in = 602 if dtype == np.float32 else 302
    x, W, b, dout = make_problem(rng, (1031, n_in), n_out, dtype)
    apart = rows_apart(x, 1100 - n_in)
    assert apart.strides[0] >= 4096 > x.strides[0]
    siglayer.set_num_threads(threads)
    with selected_isa(isa):
        out = siglayer.forward(x, W, b)
        grads = siglayer.backward(dout, x, W, out)
        grads_apart = siglayer.backward(dout, apart, W, out)
    assert_same_bits(grads_apart[1:], grads[1:], ("dW", "db"))
    check_backward(dout, x, W, out, grads)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_out", NARROW_DZ_OUTPUTS)
@pytest.mark.parametrize("isa", _core.config()["simd_available"].split(","))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dz_of_narrow_rows_end_to_end_same_bits_as_row_by_row(
    restore_threads, dtype, isa, n_out, threads
):
    """dZ and db of rows of fewer than 32 values lying end to end run through one loop over
    many rows (kernels_impl.hpp, end_to_end); rows apart go one at a time. The same
    operations in the same order, so dx, dW and db are the same bits either way."""
    x, W, b, dout = make_problem(np.random.default_rng(n_out), NARROW_DZ_SHAPE, n_out, dtype)
    siglayer.set_num_threads(threads)
    with selected_isa(isa):
        out = siglayer.forward(x, W, b)
        grads = siglayer.backward(dout, x, W, out)
        assert_same_bits(siglayer.backward(rows_apart(dout), x, W, rows_apart(out)), grads)
    check_backward(dout, x, W, out, grads)


@pytest.mark.parametrize("long_rows", [False, True], ids=["short", "4KB"])
@pytest.mark.parametrize("n_out", [1, 2, 3, 4, 5, 7, 11])
@pytest.mark.parametrize("isa", _core.config()["simd_available"].split(","))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_few_outputs_a_rows_out_and_dx_do_not_depend_on_its_batch(dtype, isa, n_out, long_rows):
    """With few outputs each row's out (row_dots) and dx (row_combos) is summed in an order
    fixed by n_in, n_out and the instruction set: a row alone gives the bits it gets inside
    any batch (a review found rows left over from row_dots' groups of four reduced in
    another order: 18 of 64 rows differed alone). Rows of 4120 bytes take row_dots' groups
    of four rows (3-4 outputs per group, AVX-512) and, past 4 outputs, its blocks of about
    256 KB (56 rows: 70 rows cross a block's end)."""
    rng = np.random.default_rng(n_out)
    n, n_in = (70, 4120 // np.dtype(dtype).itemsize) if long_rows else (29, 77)
    x, W, b, dZ = make_problem(rng, (n, n_in), n_out, dtype)
    with selected_isa(isa):
        out = siglayer.forward(x, W, b)
        dx = siglayer.backward_from_preactivation(dZ, x, W)[0]
        for i in range(x.shape[0]):
            for lo, hi in ((i, i + 1), (max(0, i - 2), i + 1), (i, min(n, i + 6))):
                part = slice(lo, hi)
                got = siglayer.forward(x[part], W, b)
                np.testing.assert_array_equal(got, out[part], err_msg=f"out rows {lo}:{hi}")
                got = siglayer.backward_from_preactivation(dZ[part], x[part], W)[0]
                np.testing.assert_array_equal(got, dx[part], err_msg=f"dx rows {lo}:{hi}")


# dx by row_combos up to 64 outputs (layer_detail.hpp, row_combos_path), W^T's rows an odd
# number of cache lines apart where n_in's would crowd a few L1 sets (row_combos_ld): 4 KB
# apart (float32 1024, float64 512) past 6 outputs, 2 KB past 12, 1 KB past 24; (n, n_in,
# n_out) with and without that padding, the last rows of each a partial group of four;
# 512 x 1024 x 32 splits dZ's rows between two threads (4 blocks of 128: backward_by_rows).
COMBO_CASES = [
    (512, 1024, 32),
    (70, 1024, 7),
    (70, 1024, 11),
    (69, 512, 12),
    (67, 256, 24),
    (67, 256, 25),
    (70, 1000, 33),
    (66, 2048, 64),
    (70, 77, 64),
]


@pytest.mark.parametrize("n, n_in, n_out", COMBO_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("isa", _core.config()["simd_available"].split(","))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dx_by_row_combos_rows_do_not_depend_on_batch_or_threads(
    restore_threads, dtype, isa, n, n_in, n_out
):
    """dx with up to 64 outputs (row_combos from 16 rows, at any batch with fewer than 12
    outputs; W^T padded where its rows would share L1 sets): within the float64
    reference's bounds, from backward and from backward_from_preactivation alike (the same
    dZ gives the same bits), for one thread and two, and a row's dx the same bits in any
    batch of 16 rows or more, or alone with fewer than 12 outputs (docs/reliability.md,
    Determinism); equal to the GEMM path's within the same bounds. (Cases under 2**20
    multiply-adds run on one thread whatever the setting.)"""
    if isa == "baseline" and n_out >= 12:
        pytest.skip("the portable loop leaves dx from 12 outputs to the BLAS")
    rng = np.random.default_rng(n_in * 100 + n_out)
    x, W, b, dout = make_problem(rng, (n, n_in), n_out, dtype)
    with selected_isa(isa):
        out = siglayer.forward(x, W, b)
        dZ = (dout * out * (1 - out)).astype(dtype)  # as the core computes it, in the dtype
        runs = []
        for t in (1, 2):
            siglayer.set_num_threads(t)
            runs.append(siglayer.backward(dout, x, W, out)[0])
            runs.append(siglayer.backward_from_preactivation(dZ, x, W)[0])
        for got in runs[1:]:
            np.testing.assert_array_equal(got, runs[0])
        dx = runs[0]
        short = ((0, 1), (n - 1, n), (3, 9), (n - 6, n))
        for lo, hi in (*(short if n_out < 12 else ()), (0, 16), (n - 16, n), (5, 22), (1, n - 2)):
            alone = siglayer.backward_from_preactivation(dZ[lo:hi], x[lo:hi], W)[0]
            np.testing.assert_array_equal(alone, dx[lo:hi], err_msg=f"rows {lo}:{hi}")
        # fewer than 16 rows with 12-64 outputs take the BLAS: right, bits not promised
        for lo, hi in short:
            alone = siglayer.backward_from_preactivation(dZ[lo:hi], x[lo:hi], W)[0]
            want = reference.backward_from_preactivation(dZ[lo:hi], x[lo:hi], W)[0]
            bound = gradient_bounds(dZ[lo:hi], x[lo:hi], W)[0]
            assert_within(alone, want, bound, f"dx rows {lo}:{hi}")
        try:
            _core.select_few_outputs("gemm")
            by_gemm = siglayer.backward_from_preactivation(dZ, x, W)[0]
        finally:
            _core.select_few_outputs("kernels")
    bound = gradient_bounds(dZ, x, W)[0]
    assert_within(dx, reference.backward_from_preactivation(dZ, x, W)[0], bound, "dx")
    assert_within(by_gemm, reference.backward_from_preactivation(dZ, x, W)[0], bound, "dx, gemm")


# A batch of 24 MiB or more (layer_detail.hpp's kStreamedBytes) with rows of 512 bytes and
# more: row_dots fetches rows ahead, and takes 5 to 11 outputs in one pass over x
# (dots_chunked; AVX-512 in groups of 4-8 outputs, AVX2 of 2-4), 1 to 4 as dots_of does.
# (n_in, n_out, rows apart, threads): n_in 1001 runs W^T in
# several chunks (2-3 in float32, 3-6 in float64), the last ending in a partial vector; 200
# is one chunk; 1024 at 8 outputs whole chunks only; rows apart make x's row stride differ
# from n_in. The odd batch ends in a block of fewer than 32 rows and a lone row.
STREAMED_CASES = [
    (1001, 1, False, 2),
    (1001, 2, False, 1),
    (1024, 4, False, 2),
    (1001, 3, True, 1),
    (1001, 5, False, 1),
    (1001, 6, False, 2),
    (1001, 7, False, 1),
    (1001, 8, False, 2),
    (1001, 9, False, 1),
    (1001, 9, False, 2),
    (1001, 10, False, 2),
    (1001, 11, False, 1),
    (200, 9, False, 1),
    (1024, 8, False, 2),
    (1001, 5, True, 1),
    (1001, 10, True, 2),
]


@pytest.mark.parametrize(
    "n_in, n_out, apart, threads", STREAMED_CASES, ids=lambda v: str(v).replace("True", "apart")
)
@pytest.mark.parametrize("isa", _core.config()["simd_available"].split(","))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_few_outputs_streamed_x_same_bits_as_its_rows_alone(
    restore_threads, dtype, isa, n_in, n_out, apart, threads
):
    """A batch too large for the caches takes row_dots' one pass over x (W^T in chunks
    along n_in, the sums kept between chunks): each row's out is still the bits it gets
    alone or in a small batch (row_dots group by group), and within the reference's
    bound."""
    rng = np.random.default_rng(n_out)
    n = ((24 << 20) // (n_in * np.dtype(dtype).itemsize) + 7) | 1
    x, W, b, _ = make_problem(rng, (n, n_in), n_out, dtype)
    if apart:
        x = rows_apart(x, 39)
    assert x.nbytes >= 24 << 20 and n % 2 == 1
    siglayer.set_num_threads(threads)
    with selected_isa(isa):
        out = siglayer.forward(x, W, b)
        for lo, hi in ((0, 1), (0, 40), (31, 33), (255, 258), (n - 40, n), (n - 1, n)):
            got = siglayer.forward(x[lo:hi], W, b)
            np.testing.assert_array_equal(got, out[lo:hi], err_msg=f"out rows {lo}:{hi}")
    assert_within(out, reference.forward(x, W, b), forward_bound(x, W, b, out), "out")


@pytest.mark.parametrize("n_out", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("isa", _core.config()["simd_available"].split(","))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_few_outputs_dw_of_leading_columns_same_bits(dtype, isa, n_out):
    """dW's row c (column c of x) is summed from +0, one FMA per row of x in row order,
    whichever strip of col_dots takes it: dW of x's first m columns is bitwise the first m
    rows of the whole dW, for every m up to 256. That runs every split into whole strips,
    one narrower strip of the vectors left (col_dots_rest) and a last partial vector,
    masked (m under a vector) or shifted back over the columns before it."""
    rng = np.random.default_rng(n_out)
    x, W, _, dZ = make_problem(rng, (9, 256), n_out, dtype)
    with selected_isa(isa):
        full = siglayer.backward_from_preactivation(dZ, x, W, need_dx=False)[1]
        for m in range(1, 257):
            got = siglayer.backward_from_preactivation(dZ, x[:, :m], W[:m], need_dx=False)[1]
            np.testing.assert_array_equal(got, full[:m], err_msg=f"first {m} columns")
    bound = 2 * 9 * np.finfo(dtype).eps * (np.abs(x).T @ np.abs(dZ)) + np.finfo(dtype).tiny
    assert (np.abs(full - x.astype(np.float64).T @ dZ.astype(np.float64)) <= bound).all()


@pytest.mark.parametrize("n_out", [8, 40])
@pytest.mark.parametrize("layout", ["F", "strided", "negative"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_few_outputs_from_preactivation_same_bits_for_any_dz_layout(
    rng, restore_threads, dtype, layout, n_out
):
    """backward_from_preactivation with few outputs (and with 12-64 when dx is asked for,
    40 here) makes dZ row-major whatever its layout, so dx and dW come from the same
    kernels, or the same BLAS call, as for a C-ordered dZ: bitwise equal to that
    call, for one thread and two (a review found an F-ordered dZ took the BLAS for dW,
    whose tiles follow the thread count: 1.3e-4 apart between 1 and 2 threads with
    OpenBLAS's Haswell kernels). And within the bounds of the float64 reference."""
    x, W, _, dZ = make_problem(rng, (3000, 70), n_out, dtype)
    given = _layouts(dZ)[layout]
    assert not given.flags.c_contiguous
    for t in (1, 2):
        siglayer.set_num_threads(t)
        want = siglayer.backward_from_preactivation(np.ascontiguousarray(dZ), x, W)
        got = siglayer.backward_from_preactivation(given, x, W)
        for name, g, w in zip(("dx", "dW", "db"), got, want, strict=True):
            np.testing.assert_array_equal(g, w, err_msg=f"{name}, {t} threads")
    oracle = reference.backward_from_preactivation(dZ, x, W)
    for name, g, w, bound in zip(
        ("dx", "dW", "db"), got, oracle, gradient_bounds(dZ, x, W), strict=True
    ):
        assert_within(g, w, bound, name)


@pytest.mark.parametrize("n_out", [1, 3, 11])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_few_output_kernels_and_the_gemm_path_both_match_the_reference(rng, threads, dtype, n_out):
    """_core.select_few_outputs switches layers with few outputs between their own kernels
    and the GEMM path (for the benchmarks' comparison); both within the bounds."""
    x, W, b, dout = make_problem(rng, (300, 70), n_out, dtype)
    try:
        for path in ("gemm", "kernels"):
            _core.select_few_outputs(path)
            assert _core.config()["few_outputs"] == path
            out = siglayer.forward(x, W, b)
            assert_within(out, reference.forward(x, W, b), forward_bound(x, W, b, out), "out")
            check_backward(dout, x, W, out, siglayer.backward(dout, x, W, out))
    finally:
        _core.select_few_outputs("kernels")
    with pytest.raises(ValueError, match="'kernels' or 'gemm'"):
        _core.select_few_outputs("blas")  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", ["C", "rows-apart", "F", "W-F"])
@pytest.mark.parametrize("bound", [0.0, 5_000.0, 40_000.0, 100_000.0, 1e6])
@pytest.mark.parametrize(
    ("n", "n_in", "n_out"),
    [(1031, 33, 17), (1025, 33, 17), (4099, 64, 16), (2050, 20, 40), (200, 16, 512)],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_forward_in_row_panels_matches_the_reference(
    rng, threads, dtype, n, n_in, n_out, bound, layout
):
    """The forward's tiles run as panels of rows where the BLAS has small-matrix kernels
    (layer_detail.hpp, gemm_panel_rows; OpenBLAS's SkylakeX cores), forced here on any BLAS
    through _core.set_small_gemm. Panels hold bound / (n_in * tile's columns) rows rounded
    down to a multiple of 8: 1031 x 33 x 17 in panels of 8, 64 and 176 rows (the last of 7,
    7 and 151; 1025 x 33 x 17 a last panel of one row, 1, 1 and 145), 4099 x 64 x 16 in 32,
    96 and 976 (two threads' tiles), 2050 x 20 x 40 in 48, 120 and 1248, 200 x 16 x 512 on
    two threads in tiles of 256 columns, panels of 24 rows at 100 000 (one thread: 8 rows at
    100 000); none where a panel would be under 8 rows, where the whole is under the bound
    (1031 x 33 x 17 at 10^6), where x or W is not row-major (F, W-F), and at 0. out starts
    as NaN: every row within the forward's bound of the NumPy reference, so each panel was
    written, with bias + sigma applied once."""
    x, W, b, _ = make_problem(rng, (n, n_in), n_out, dtype)
    if layout == "rows-apart":
        x = rows_apart(x)
    elif layout == "F":
        x = np.asfortranarray(x)
    elif layout == "W-F":
        W = np.asfortranarray(W)
    out = np.full((n, n_out), np.nan, dtype)
    before = _core.set_small_gemm(bound)
    try:
        assert _core.config()["small_gemm"] == bound
        siglayer.forward(x, W, b, out=out)
    finally:
        _core.set_small_gemm(before)
    assert_within(out, reference.forward(x, W, b), forward_bound(x, W, b, out), "out")


@pytest.mark.parametrize("layout", ["C", "x-F", "preactivation", "preactivation-dZ-F"])
@pytest.mark.parametrize("bound", [0.0, 5_000.0, 40_000.0, 1e6])
@pytest.mark.parametrize(
    ("n", "n_in", "n_out"), [(1031, 33, 17), (4099, 64, 16), (2050, 20, 40), (700, 9, 100)]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_dw_in_batch_panels_matches_the_reference(
    rng, threads, dtype, n, n_in, n_out, bound, layout
):
    """dW = x^T . dZ sums the batch in panels of rows added one after the other into dW
    where the BLAS has small-matrix kernels (layer.cpp, gradient_products; x and dZ
    row-major, up to 64 outputs), forced here through _core.set_small_gemm: 1031 x 33 x 17
    in panels of 8 and 64 rows (the last of 7), 4099 x 64 x 16 in 32 and 976 (the last of 3
    and 195), 2050 x 20 x 40 in 48 and 1248; none at 700 x 9 x 100 (100 outputs), for an
    F-ordered x or dZ, where a panel would be under 8 rows, or at 0. dW starts as NaN: each
    panel added, the first one written over it, within the reference's bounds; dx and db
    too."""
    x, W, b, dout = make_problem(rng, (n, n_in), n_out, dtype)
    if layout == "x-F":
        x = np.asfortranarray(x)
    out = siglayer.forward(x, W, b)
    dW = np.full((n_in, n_out), np.nan, dtype)
    before = _core.set_small_gemm(bound)
    try:
        if layout.startswith("preactivation"):
            dZ = dout * out * (1 - out)
            if layout.endswith("F"):
                dZ = np.asfortranarray(dZ)
            got = siglayer.backward_from_preactivation(dZ, x, W, dW=dW)
        else:
            got = siglayer.backward(dout, x, W, out, dW=dW)
    finally:
        _core.set_small_gemm(before)
    assert got[1] is dW
    if layout.startswith("preactivation"):
        oracle = reference.backward_from_preactivation(dZ, x, W)
        for name, g, w, bd in zip(
            ("dx", "dW", "db"), got, oracle, gradient_bounds(dZ, x, W), strict=True
        ):
            assert_within(g, w, bd, name)
    else:
        check_backward(dout, x, W, out, got)


def test_set_small_gemm_bounds():
    """_core.set_small_gemm returns the bound it replaces; a negative one restores this
    BLAS's own (1e6 on OpenBLAS's SkylakeX cores, else 0), NaN is refused by the core,
    and +inf (panels never needed) is a bound like any other."""
    own = _core.set_small_gemm(-1.0)
    assert own in (0.0, 1e6)
    try:
        assert _core.set_small_gemm(0.0) == own
        assert _core.set_small_gemm(math.inf) == 0.0
        assert _core.config()["small_gemm"] == math.inf
        assert _core.set_small_gemm(-5.0) == math.inf
        assert _core.config()["small_gemm"] == own
        with pytest.raises(ValueError, match="bound must be a number"):
            _core.set_small_gemm(math.nan)
        assert _core.config()["small_gemm"] == own
    finally:
        _core.set_small_gemm(-1.0)


@pytest.mark.parametrize("n_out", [1, 2, 5])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_few_outputs_keep_the_sign_of_zero_on_every_path(dtype, n_out):
    """dx = dZ @ W.T with W = 0 and dZ = -1: each entry is a sum of -0 products, which every
    instruction set's row combinations keep as -0 (a review found +0 from a vector sum
    started at +0 where the portable loop gave -0), as the GEMM path's outer product does
    for one output (its GEMM, which starts from +0, gives +0 for more)."""
    x = np.ones((9, 3), dtype)
    W = np.zeros((3, n_out), dtype)
    dZ = -np.ones((9, n_out), dtype)
    best = _core.config()["simd_available"].split(",")[0]
    signs = {}
    try:
        for path in ("gemm", "kernels"):
            _core.select_few_outputs(path)
            for isa in _core.config()["simd_available"].split(","):
                _core.select_isa(isa)
                dx = siglayer.backward_from_preactivation(dZ, x, W)[0]
                signs[path, isa] = bool(np.signbit(dx).all())
    finally:
        _core.select_isa(best)
        _core.select_few_outputs("kernels")
    assert all(v for (path, _), v in signs.items() if path == "kernels"), signs
    if n_out == 1:
        assert all(signs.values()), signs


NEEDS = [(True, False), (False, True), (False, False)]


@pytest.mark.parametrize(("need_dx", "need_dW"), NEEDS, ids=["no-dW", "no-dx", "db-only"])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("method", ["backward", "backward_from_preactivation"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_skipped_gradients_are_none_and_the_others_unchanged(
    rng, threads, dtype, method, layout, need_dx, need_dW
):
    """need_dx / need_dW drop a product, never change the gradients that remain: those are
    bitwise the full call's (checked against the reference by test_matches_reference)."""
    x, W, b, dout = make_problem(rng, (300, 257), 129, dtype)
    x = _layouts(x)[layout]
    out = siglayer.forward(x, W, b)
    call = getattr(siglayer, method)
    args = (dout, x, W, out) if method == "backward" else (dout, x, W)
    full = call(*args)
    got = call(*args, need_dx=need_dx, need_dW=need_dW)
    for name, g, f, needed in zip(
        "dx dW db".split(), got, full, (need_dx, need_dW, True), strict=True
    ):
        if needed:
            np.testing.assert_array_equal(g, f, err_msg=name)
        else:
            assert g is None, name
    # Batched x: the same, through the flattening path.
    x3 = x[:300].reshape(3, 100, 257)
    args3 = (dout.reshape(3, 100, 129), x3, W) + ((out.reshape(3, 100, 129),) * (len(args) == 4))
    got3 = call(*args3, need_dx=need_dx, need_dW=need_dW)
    assert (got3[0] is None) == (not need_dx) and (got3[1] is None) == (not need_dW)
    np.testing.assert_array_equal(got3[2], full[2])


@pytest.mark.parametrize("method", ["backward", "backward_from_preactivation"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_a_skipped_product_never_reads_its_operand(rng, dtype, method):
    """need_dW=False skips x^T . dZ, so x's values (NaN here) reach no result; need_dx=False
    skips dZ . W^T likewise for W. Finite results show the product did not run."""
    x, W, b, dout = make_problem(rng, (300, 40), 20, dtype)
    out = siglayer.forward(x, W, b)
    call = getattr(siglayer, method)
    rest = (out,) if method == "backward" else ()
    nan_x, nan_W = np.full_like(x, np.nan), np.full_like(W, np.nan)
    dx, dW, db = call(dout, nan_x, W, *rest, need_dW=False)
    assert dW is None and np.isfinite(dx).all() and np.isfinite(db).all()
    dx, dW, db = call(dout, x, nan_W, *rest, need_dx=False)
    assert dx is None and np.isfinite(dW).all() and np.isfinite(db).all()


def test_a_dW_buffer_without_need_dW_is_refused_and_nothing_written(rng):
    x, W, b, dout = make_problem(rng, (8, 5), 3, np.float64)
    out = siglayer.forward(x, W, b)
    dW, db = np.full((5, 3), 7.0), np.full(3, 7.0)
    with pytest.raises(ValueError, match="dW was given but need_dW=False"):
        siglayer.backward(dout, x, W, out, need_dW=False, dW=dW, db=db)
    assert (dW == 7.0).all() and (db == 7.0).all()
    assert siglayer.backward(dout, x, W, out, need_dW=False, db=db)[2] is db


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape_x", [(10, 6), (2, 5, 6)], ids=["2d", "batch"])
def test_out_buffers_are_used_and_returned(rng, dtype, shape_x):
    x, W, b, dout = make_problem(rng, shape_x, 3, dtype)
    out = np.full((*shape_x[:-1], 3), np.nan, dtype)
    assert siglayer.forward(x, W, b, out=out) is out
    np.testing.assert_array_equal(out, siglayer.forward(x, W, b))
    dx, dW, db = (np.full(s, np.nan, dtype) for s in (x.shape, W.shape, (3,)))
    got = siglayer.backward(dout, x, W, out, dx=dx, dW=dW, db=db)
    assert got[0] is dx and got[1] is dW and got[2] is db
    for g, r in zip(got, siglayer.backward(dout, x, W, out), strict=True):
        np.testing.assert_array_equal(g, r)


def test_gradients_are_fresh_not_accumulated(rng):
    x, W, b, dout = make_problem(rng, (4, 3), 2, np.float64)
    out = siglayer.forward(x, W, b)
    dW = np.full(W.shape, 123.0)
    siglayer.backward(dout, x, W, out, dW=dW)
    np.testing.assert_array_equal(dW, siglayer.backward(dout, x, W, out)[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_special_values_propagate(dtype):
    """sigma(+inf) = 1, sigma(-inf) = 0, sigma(NaN) = NaN, and no warnings (they are errors)."""
    x = np.array([[1.0], [1.0], [1.0], [1.0], [1.0]], dtype)
    W = np.array([[1.0]], dtype)
    for z, want in ((np.inf, 1.0), (-np.inf, 0.0), (np.nan, np.nan), (1e4, 1.0), (-1e4, 0.0)):
        out = siglayer.forward(x[:1], W, np.array([z], dtype))
        np.testing.assert_array_equal(out, [[want]])
    big = siglayer.forward(
        np.array([[1.0]], dtype), np.array([[1.0]], dtype), np.array([-100.0], dtype)
    )
    np.testing.assert_array_equal(
        big,
        reference.forward(
            np.array([[1.0]], dtype), np.array([[1.0]], dtype), np.array([-100.0], dtype)
        ),
    )


def _db_problem(rng, n, n_out, dtype, n_in=3):
    """x, W, out and a positive dout; dZ = (dout * out) * (1 - out), the core's own dZ bit
    for bit (the same operations in the same order)."""
    x = rng.standard_normal((n, n_in)).astype(dtype)
    W = (rng.standard_normal((n_in, n_out)) / n_in**0.5).astype(dtype)
    out = siglayer.forward(x, W, np.zeros(n_out, dtype))
    dout = rng.uniform(0.5, 1.0, out.shape).astype(dtype)
    return x, W, out, dout, (dout * out) * (dtype(1) - out)


@pytest.mark.parametrize("via", ["backward", "preactivation-C", "preactivation-F"])
def test_db_stays_accurate_over_a_large_batch(rng, threads, via):
    """db of 2^20 + 77 rows in float32 within SUM_ROWS roundings of the float64 sum of the
    same dZ (a running float32 sum was off by ~1e-4 relative here), the last block short."""
    x, W, out, dout, dZ = _db_problem(rng, (1 << 20) + 77, 5, np.float32)
    if via == "backward":
        db = siglayer.backward(dout, x, W, out, need_dx=False)[2]
    else:
        dZ_given = np.asarray(dZ, order="C" if via.endswith("C") else "F")
        db = siglayer.backward_from_preactivation(dZ_given, x, W, need_dx=False)[2]
    exact = dZ.sum(axis=0, dtype=np.float64)  # positive terms: sum |dZ| = |exact|
    bound = (SUM_ROWS + 2) * EPS[np.dtype(np.float32)] * exact
    assert_within(db, exact.astype(np.float32), bound, "db")


@pytest.mark.parametrize("blocks", [3, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_db_same_bits_for_any_thread_count_and_layout(rng, restore_threads, dtype, blocks):
    """3 or 4 blocks of rows (the last short) by 600 columns, cut between 1 to 4 threads:
    db from backward and from backward_from_preactivation with dZ C- or F-ordered is the
    same bits as one thread's. backward's threads split dZ's columns, or its rows where
    the blocks go evenly to them (4 blocks on 2 and 4 threads, 3 on 3: layer.cpp,
    rows_for_threads). (n * n_out * n_in is past the 2^20 below which one thread runs.)"""
    x, W, out, dout, dZ = _db_problem(rng, (blocks - 1) * SUM_ROWS + 77, 600, dtype, n_in=16)
    siglayer.set_num_threads(1)
    want = siglayer.backward(dout, x, W, out, need_dx=False)[2]
    for threads in (1, 2, 3, 4):
        siglayer.set_num_threads(threads)
        got = [siglayer.backward(dout, x, W, out, need_dx=False)[2]]
        for order in "CF":
            dZ_given = np.asarray(dZ, order=order)
            got.append(siglayer.backward_from_preactivation(dZ_given, x, W, need_dx=False)[2])
        for db in got:
            np.testing.assert_array_equal(db, want, err_msg=f"{threads} threads")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_repeatable_bitwise(rng, threads, dtype):
    x, W, b, dout = make_problem(rng, (333, 129), 77, dtype)
    first = siglayer.forward(x, W, b)
    grads = siglayer.backward(dout, x, W, first)
    for _ in range(3):
        again = siglayer.forward(x, W, b)
        np.testing.assert_array_equal(again, first)
        for g, r in zip(siglayer.backward(dout, x, W, again), grads, strict=True):
            np.testing.assert_array_equal(g, r)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_preallocated_training_step_allocates_nothing(rng, threads, dtype):
    """With out=, dx=, dW=, db= buffers a step allocates no array after warm-up: the peak
    traced memory over 200 steps stays below the size of the smallest array involved."""
    import tracemalloc

    x, W, b, dout = make_problem(rng, (64, 48), 32, dtype)
    out, dx, dW, db = (
        np.empty((64, 32), dtype),
        np.empty_like(x),
        np.empty_like(W),
        np.empty_like(b),
    )

    def step() -> None:
        siglayer.forward(x, W, b, out=out)
        siglayer.backward(dout, x, W, out, dx=dx, dW=dW, db=db)

    step()
    tracemalloc.start()
    try:
        step()
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(200):
            step()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - start <= 0
    assert peak - start < db.nbytes, f"a step allocated {peak - start} bytes"


# ---------------------------------------------------------------- the one dtype list


@pytest.mark.parametrize(
    "dtype", [np.float16, np.int32, np.complex64, np.longdouble], ids=lambda d: np.dtype(d).name
)
def test_an_unknown_dtype_reaching_the_dispatch_raises_type_error(dtype):
    """The dispatch names every supported dtype and refuses the rest (it used to run any
    other as float64); probed with no dtype check in front of it."""
    with pytest.raises(TypeError, match=r"^a: no kernel for NumPy type number \d+; siglayer"):
        _core.dispatch_probe(np.zeros(3, dtype))


def test_the_dispatch_lists_exactly_the_package_dtypes():
    assert [_core.dispatch_probe(np.zeros(1, dt)) for dt in FLOAT_DTYPES] == [
        dt.name for dt in FLOAT_DTYPES
    ]


def test_an_overlap_is_told_apart_by_its_class(rng):
    x = rng.standard_normal((4, 4))
    with pytest.raises(siglayer.OverlapError, match="out overlaps x"):
        siglayer.forward(x, np.eye(4), np.zeros(4), out=x)
    # The public name is the core's class (raised from C++ and from Python alike).
    assert siglayer.OverlapError is _core.OverlapError
    assert issubclass(siglayer.OverlapError, ValueError)


class _FrameStandIn:
    """An object whose type says it comes from pandas (not a test dependency)."""


_FrameStandIn.__module__ = "pandas.core.frame"


def _not_an_array(kind: str) -> tuple[object, str, str]:
    """(object, its type's full name, the advice after it, with NAME for the argument)."""
    if kind == "torch":
        torch = pytest.importorskip("torch")
        use = "; for PyTorch tensors use siglayer.torch (sigmoid_linear, SigmoidLinear)"
        return torch.ones(4, 2), "torch.Tensor", use
    if kind == "torch parameter":
        torch = pytest.importorskip("torch")
        use = "; for PyTorch tensors use siglayer.torch (sigmoid_linear, SigmoidLinear)"
        return torch.nn.Parameter(torch.ones(4, 2)), "torch.nn.parameter.Parameter", use
    if kind == "jax":
        jnp = pytest.importorskip("jax.numpy")
        x = jnp.ones((4, 2))
        name = f"{type(x).__module__}.{type(x).__qualname__}"  # jaxlib's, which moves
        return x, name, "; for JAX arrays use siglayer.jax.sigmoid_linear"
    if kind == "dask":
        da = pytest.importorskip("dask.array")
        use = "; for Dask arrays use siglayer.dask (forward, backward)"
        return da.ones((4, 2)), "dask.array.core.Array", use
    if kind == "pandas":
        return (
            _FrameStandIn(),
            "pandas.core.frame._FrameStandIn",
            "; pass NAME.to_numpy(np.float32) (or np.float64)",
        )
    if kind == "list":
        return [[1.0, 2.0]] * 4, "list", "; pass np.asarray(NAME, np.float32) (or np.float64)"
    if kind == "tuple":
        return ((1.0, 2.0),) * 4, "tuple", "; pass np.asarray(NAME, np.float32) (or np.float64)"
    assert kind == "number"
    return 1.0, "float", ""  # nothing known to advise


def _entry_points() -> dict[str, tuple[str, object]]:
    """Each place that checks for an ndarray, in C++ or Python: (argument, call(obj))."""
    from siglayer.losses import BCELoss, mse_grad

    x, W, b = np.ones((4, 2)), np.ones((2, 3)), np.zeros(3)
    out = siglayer.forward(x, W, b)
    layer = siglayer.SigmoidLayer(2, 3, dtype=np.float64, seed=0)
    layer(x)
    loss = BCELoss()
    loss(out, np.zeros_like(out))
    return {
        "forward (bindings)": ("x", lambda a: siglayer.forward(a, W, b)),
        "backward dx= (Python)": ("dx", lambda a: siglayer.backward(out, x, W, out, dx=a)),
        "SigmoidLayer x": ("x", lambda a: layer(a)),
        "SigmoidLayer.backward dout": ("dout", lambda a: layer.backward(a)),
        "BCELoss out": ("out", lambda a: loss(a, np.zeros_like(out))),
        "mse_grad dout=": ("dout", lambda a: mse_grad(out, np.zeros_like(out), dout=a)),
        "jacobian x": ("x", lambda a: siglayer.jacobian(a, W, b)),
        "compare x": ("x", lambda a: siglayer.compare(x=a)),
    }


@pytest.mark.parametrize("where", list(_entry_points()))
@pytest.mark.parametrize(
    "kind", ["torch", "torch parameter", "jax", "dask", "pandas", "list", "tuple", "number"]
)
def test_a_framework_array_or_a_list_is_refused_with_what_to_pass_instead(kind, where):
    """Each check for an ndarray, in the bindings and in Python alike, names the type in
    full and says what to pass instead where that is known: a user who hands a PyTorch
    tensor or a JAX array to the NumPy API is pointed to the frontend for it."""
    given, type_name, advice = _not_an_array(kind)
    name, call = _entry_points()[where]
    what = "a numpy.ndarray or None" if where == "compare x" else "a numpy.ndarray"
    want = f"{name} must be {what}, got {type_name}{advice.replace('NAME', name)}"
    with pytest.raises(TypeError) as info:
        call(given)
    assert str(info.value) == want


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"x": [[1.0]]}, TypeError, "x must be a numpy.ndarray or None, got list"),
        ({"dout": 3.0}, TypeError, "dout must be a numpy.ndarray or None, got float"),
        ({"n": -1}, ValueError, "n must be >= 0, got -1"),
        ({"n_in": 1.5}, TypeError, "n_in must be an int, got float"),
        ({"n_out": True}, TypeError, "n_out must be an int, got bool"),
        # Shapes that leave nothing to draw from: forward's errors (an IndexError before)
        ({"x": np.array(1.0)}, ValueError, "x must have shape (..., n_in), got a 0-d array"),
        ({"W": np.ones(32)}, ValueError, "W must be 2-D (n_in, n_out), got shape (32,)"),
        ({"dtype": "f32"}, TypeError, "dtype must be float32, float64 or bfloat16, got 'f32'"),
        ({"dtype": "int32"}, TypeError, "dtype must be float32, float64 or bfloat16, got int32"),
    ],
)
def test_compare_names_a_bad_argument(kwargs, error, message):
    """siglayer.compare's own arguments: an AttributeError ('list' has no dtype) or
    NumPy's 'negative dimensions' before, naming nothing."""
    with pytest.raises(error, match=re.escape(message)):
        siglayer.compare(**kwargs)


def test_compare_draws_w_to_fit_a_given_b_or_dout(rng):
    """W drawn for a given b (or dout) has its n_out: a review found b checked against
    the default n_out = 16 of a W the caller never passed."""
    x = rng.standard_normal((4, 5))
    for given in ({"b": rng.standard_normal(3)}, {"dout": rng.standard_normal((4, 3))}):
        errors = siglayer.compare(x, **given)
        assert errors["dW"].max_rel < 1e-12 and errors["out"].max_rel < 1e-12
    with pytest.raises(ValueError, match=r"dout has shape \(4, 2\), expected \(4, 3\)"):
        siglayer.compare(x, b=np.zeros(3), dout=np.zeros((4, 2)))


def test_compare_of_an_empty_batch_reports_no_error():
    assert siglayer.compare(n=0)["dW"].max_abs == 0.0


@pytest.mark.parametrize("call", ["forward", "backward", "backward_from_preactivation"])
def test_batch_dimensions_beyond_the_blas_limit_are_refused_before_any_copy(call) -> None:
    """x of shape (2^16, 2^16, 4) broadcast from 2^16 x 4 values: 2^32 rows once flattened.
    A review found the reshape copied it first (a 64 GiB MemoryError, or the whole copy on a
    bigger machine) before the documented ValueError; now the rows are checked first."""
    f = np.float32
    lead = (1 << 16, 1 << 16)
    x = np.broadcast_to(np.zeros((1 << 16, 1, 4), f), (*lead, 4))
    W = np.zeros((4, 3), f)
    per_row = np.broadcast_to(np.full((1, 1, 3), 0.5, f), (*lead, 3))
    match = r"n = 4294967296 exceeds the BLAS integer range.*x of shape \(65536, 65536, 4\)"
    with pytest.raises(ValueError, match=match):
        if call == "forward":
            siglayer.forward(x, W, np.zeros(3, f))
        elif call == "backward":
            siglayer.backward(per_row, x, W, per_row)
        else:
            siglayer.backward_from_preactivation(per_row, x, W)
