"""What is bitwise reproducible (docs/reliability.md, "Determinism").

Guaranteed, and tested here:
- the same call (shapes, dtype, layouts, thread count) repeated gives the same bits;
- db is the same bits for any thread count and any input layout, given the same dout
  and out: each column of dZ is summed in row order by one thread.

Not guaranteed: out, dx and dW with a different thread count. Each thread calls BLAS on
its own slab of the product, and OpenBLAS's result for a row depends on how many rows
the call has (bench/determinism.py measures it); float64 mostly agrees, float32 rarely.
"""

from __future__ import annotations

import numpy as np
import pytest

import siglayer
from conftest import make_problem

# Large enough for a two-thread team (>= 2^20 multiply-adds), several 16-column blocks.
SHAPES = [((333, 129), 77), ((1031, 67), 33), ((70, 300), 1000), ((2, 64, 100), 48)]
SHAPE_IDS = ["x" + "x".join(map(str, s)) + f"-out{o}" for s, o in SHAPES]


def run(x, W, b, dout, threads: int):
    before = siglayer.get_num_threads()
    siglayer.set_num_threads(threads)
    try:
        out = siglayer.forward(x, W, b)
        return (out, *siglayer.backward(dout, x, W, out))
    finally:
        siglayer.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("shape_x", "n_out"), SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_repeated_calls_are_bitwise_identical(rng, dtype, shape_x, n_out, threads):
    x, W, b, dout = make_problem(rng, shape_x, n_out, dtype)
    first = run(x, W, b, dout, threads)
    for _ in range(3):
        for name, got, want in zip(
            ("out", "dx", "dW", "db"), run(x, W, b, dout, threads), first, strict=True
        ):
            assert got.tobytes() == want.tobytes(), f"{name} changed between identical calls"


def _layouts(a: np.ndarray) -> list[np.ndarray]:
    big = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
    big[..., ::2] = a
    return [a, np.asfortranarray(a), big[..., ::2], np.ascontiguousarray(a[::-1])[::-1]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("shape_x", "n_out"), SHAPES, ids=SHAPE_IDS)
def test_db_independent_of_thread_count_and_layout(rng, dtype, shape_x, n_out):
    x, W, b, dout = make_problem(rng, shape_x, n_out, dtype)
    out = siglayer.forward(x, W, b)
    want = siglayer.backward(dout, x, W, out, need_dx=False)[2]
    before = siglayer.get_num_threads()
    try:
        for threads in (1, 2, 3, 4):
            siglayer.set_num_threads(threads)
            for dout_l, out_l in zip(_layouts(dout), _layouts(out), strict=True):
                db = siglayer.backward(dout_l, x, W, out_l, need_dx=False)[2]
                assert db.tobytes() == want.tobytes(), f"db differs with {threads} threads"
    finally:
        siglayer.set_num_threads(before)


@pytest.mark.parametrize(
    "dtype",
    [np.float32, np.float64, "bfloat16"],
    ids=lambda d: np.dtype(d).name if d != "bfloat16" else d,
)
@pytest.mark.parametrize("threads", [1, 2], ids=lambda t: f"threads{t}")
def test_db_into_a_buffer_at_any_alignment(rng, dtype, threads):
    """db given as a buffer that starts anywhere in a cache line (its tiles' block sums
    are kept in scratch and db written once per column: two threads' columns once shared a
    line of a db that NumPy had aligned to 16 bytes, 2-3x slower) holds the same bits as
    a fresh db, from both backwards, at 1 and 2 threads; the floats around it untouched."""
    if dtype == "bfloat16":
        bf16 = pytest.importorskip("ml_dtypes").bfloat16
        x, W, _, dout = make_problem(rng, (1031, 67), 77, np.float32)
        x, W, dout = x.astype(bf16), W.astype(bf16), dout.astype(bf16)
        b, db_dtype = np.zeros(77, np.float32), np.dtype(np.float32)
    else:
        x, W, b, dout = make_problem(rng, (1031, 67), 77, dtype)
        db_dtype = np.dtype(dtype)
    before = siglayer.get_num_threads()
    siglayer.set_num_threads(threads)
    try:
        out = siglayer.forward(x, W, b)
        want = siglayer.backward(dout, x, W, out, need_dx=False)[2]
        want_pre = siglayer.backward_from_preactivation(dout, x, W, need_dx=False)[2]
        raw = np.full(77 + 64 + 32, -7.0, db_dtype)
        base = (-raw.ctypes.data % 64) // db_dtype.itemsize
        for offset in range(0, 64 // db_dtype.itemsize):
            raw[:] = -7.0
            db = raw[base + offset : base + offset + 77]
            assert siglayer.backward(dout, x, W, out, need_dx=False, db=db)[2] is db
            assert db.tobytes() == want.tobytes(), offset
            siglayer.backward_from_preactivation(dout, x, W, need_dx=False, db=db)
            assert db.tobytes() == want_pre.tobytes(), offset
            rest = np.concatenate([raw[: base + offset], raw[base + offset + 77 :]])
            assert (rest == -7.0).all(), offset
    finally:
        siglayer.set_num_threads(before)
