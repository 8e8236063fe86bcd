"""siglayer.dask: forward and the gradient recipe over dask arrays chunked by rows, with the
threaded scheduler and a distributed LocalCluster (2 worker processes) on an input larger
than a worker's memory limit; the progress bar."""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
from dask.diagnostics import ProgressBar  # noqa: E402

import siglayer  # noqa: E402
import siglayer.dask as sd  # noqa: E402

DTYPES = [np.float32, np.float64]
# Whole-array and chunked products may round differently (the BLAS sums a row in another
# order depending on where it sits in its block); relative to the largest magnitude.
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def inputs(n, n_in, n_out, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n_in)).astype(dtype)
    W = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    return x, W, b


def assert_close(actual, expected, dtype):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    error = np.max(np.abs(actual - expected), initial=0.0) / np.max(np.abs(expected))
    assert error <= RTOL[dtype], f"relative error {error:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("chunks", [(100, 24), (37, 24), (64, 7), (1000, 24)],
                         ids=["rows100", "rows37", "rows64-cols7", "one-chunk"])  # fmt: skip
def test_forward_equals_siglayer_forward(dtype, chunks):
    x, W, b = inputs(1000, 24, 9, dtype)
    out = sd.forward(da.from_array(x, chunks=chunks), W, b)
    assert out.dtype == dtype and out.shape == (1000, 9)
    assert out.chunks == (da.from_array(x, chunks=chunks).chunks[0], (9,))
    got = out.compute(scheduler="threads")
    # Bitwise: one siglayer.forward per row chunk; close: siglayer.forward on the whole.
    starts = np.cumsum((0, *out.chunks[0]))
    per_chunk = np.concatenate(
        [siglayer.forward(x[i:j], W, b) for i, j in itertools.pairwise(starts)]
    )
    np.testing.assert_array_equal(got, per_chunk)
    assert_close(got, siglayer.forward(x, W, b), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_gradient_recipe_equals_siglayer_backward(dtype):
    x, W, b = inputs(900, 16, 5, dtype, seed=1)
    y = (np.random.default_rng(2).random((900, 5)) > 0.5).astype(dtype)
    xd, yd = da.from_array(x, chunks=(128, 16)), da.from_array(y, chunks=(300, 5))
    out = sd.forward(xd, W, b)
    dout = 2 * (out - yd) / out.size  # mean squared error, lazily, row chunk by row chunk
    dx, dW, db = dask.compute(*sd.backward(dout, xd, W, out), scheduler="threads")
    out_np = siglayer.forward(x, W, b)
    expected = siglayer.backward(2 * (out_np - y) / out_np.size, x, W, out_np)
    for got, want in zip((dx, dW, db), expected, strict=True):
        assert_close(got, want, dtype)
    none, dW2, _ = sd.backward(dout, xd, W, out, need_dx=False)
    assert none is None
    assert_close(dW2.compute(scheduler="threads"), expected[1], dtype)
    # x and dout chunked across their columns too: backward joins them into whole rows
    # (a mutation that dropped the join went unseen, every x having one column chunk:
    # helper-83); the same figures as the plain arrays'.
    x_cols = da.from_array(x, chunks=(128, 7))
    dout_np = 2 * (out_np - y) / out_np.size
    out_cols = sd.forward(x_cols, W, b)
    got = dask.compute(
        *sd.backward(da.from_array(dout_np, chunks=(128, 2)), x_cols, W, out_cols),
        scheduler="threads",
    )
    for g, want in zip(got, expected, strict=True):
        assert_close(g, want, dtype)
    dx3, none, db3 = sd.backward(dout, xd, W, out, need_dW=False)  # a frozen W
    assert none is None
    dx3, db3 = dask.compute(dx3, db3, scheduler="threads")
    assert_close(dx3, expected[0], dtype)
    assert_close(db3, expected[2], dtype)


def test_bfloat16_gradients_are_float32_as_siglayer_backward():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    x, W, _ = (a.astype(bf16) for a in inputs(500, 12, 4, np.float32, seed=3))
    b = inputs(1, 12, 4, np.float32, seed=4)[2]  # a float32 master bias
    xd = da.from_array(x, chunks=(64, 12))
    out = sd.forward(xd, W, b)
    assert out.dtype == bf16
    dout = da.ones_like(out)
    lazy = sd.backward(dout, xd, W, out)
    assert [a.dtype for a in lazy] == [bf16, np.float32, np.float32]
    dx, dW, db = dask.compute(*lazy, scheduler="threads")
    assert [a.dtype for a in (dx, dW, db)] == [bf16, np.float32, np.float32]
    out_np = out.compute(scheduler="threads")
    np.testing.assert_array_equal(out_np, siglayer.forward(x, W, b))
    # Each chunk's dx is bitwise siglayer's; dW and db are float32 (never rounded to
    # bfloat16), equal to siglayer.backward on the whole to float32 summation order.
    ex_dx, ex_dW, ex_db = siglayer.backward(np.ones_like(out_np), x, W, out_np)
    np.testing.assert_array_equal(dx, ex_dx)
    assert_close(dW, ex_dW, np.float32)
    assert_close(db, ex_db, np.float32)


def test_chunk_partials_are_added_in_float64_and_rounded_once():
    # 400 chunks of 5 rows: the partial dW and db of each chunk, added in float64 and
    # rounded once to float32 (partial sums of float32 values of one magnitude: exact in
    # float64, so any order of the tree gives the same bits).
    x, W, b = inputs(2000, 6, 3, np.float32, seed=6)
    xd = da.from_array(x, chunks=(5, 6))
    out = sd.forward(xd, W, b)
    dout = da.from_array(np.random.default_rng(8).random((2000, 3), np.float32), chunks=(5, 3))
    _, dW, db = dask.compute(*sd.backward(dout, xd, W, out, need_dx=False), scheduler="threads")
    out_np, dout_np = out.compute(scheduler="threads"), dout.compute(scheduler="threads")
    partials = [
        siglayer.backward(dout_np[i : i + 5], x[i : i + 5], W, out_np[i : i + 5], need_dx=False)
        for i in range(0, 2000, 5)
    ]
    for got, k in ((dW, 1), (db, 2)):
        want = np.sum([p[k] for p in partials], axis=0, dtype=np.float64).astype(np.float32)
        np.testing.assert_array_equal(got, want)


def test_unknown_row_counts_after_a_mask():
    """A boolean mask leaves row chunks of unknown size (NaN): forward keeps them and
    backward pairs dout, x and out chunk by chunk without rechunking. Oracle: the NumPy
    arrays with the same rows kept, through siglayer.backward."""
    x, W, b = inputs(300, 6, 4, np.float64, seed=3)
    xd = da.from_array(x, chunks=(70, 6))
    keep = x[:, 0] > -0.5
    xu = xd[xd[:, 0] > -0.5]
    assert any(np.isnan(c) for c in xu.chunks[0])
    out = sd.forward(xu, W, b)
    dout = out - 0.5
    dx, dW, db = dask.compute(*sd.backward(dout, xu, W, out), scheduler="threads")
    out_np = siglayer.forward(x[keep], W, b)
    expected = siglayer.backward(out_np - 0.5, x[keep], W, out_np)
    for got, want in zip((dx, dW, db), expected, strict=True):
        assert_close(got, want, np.float64)
    # Chunks that cannot be paired are refused when the graph is built.
    x2 = da.from_array(x, chunks=(150, 6))
    out2 = sd.forward(x2[x2[:, 0] > -0.5], W, b)
    with pytest.raises(ValueError, match=r"out has 2 row chunks but x has 5, .* unknown \(NaN\)"):
        sd.backward(dout, xu, W, out2)


def test_errors_are_raised_when_the_graph_is_built():
    x, W, b = inputs(10, 4, 3, np.float64)
    xd = da.from_array(x, chunks=5)
    with pytest.raises(TypeError, match=r"x must be a dask\.array\.Array"):
        sd.forward(x, W, b)
    with pytest.raises(TypeError, match=r"W must be a numpy\.ndarray"):
        sd.forward(xd, da.from_array(W), b)
    with pytest.raises(TypeError, match="float32"):
        sd.forward(xd, W.astype(np.float32), b)
    # The check runs on 0 rows of x; the message adds x's real shape.
    with pytest.raises(
        ValueError, match=r"W has shape \(5, 3\) but x has 4 features .* given: x \(10, 4\)"
    ):
        sd.forward(xd, np.zeros((5, 3)), b)
    with pytest.raises(ValueError, match="must be 2-D"):
        sd.forward(xd[:, 0], W, b)
    # A masked dask array: refused here, not from inside a task at compute time.
    masked = da.ma.masked_array(xd, mask=xd > 1)
    with pytest.raises(TypeError, match=r"^x is a dask array of masked arrays; masks are not"):
        sd.forward(masked, W, b)
    out = sd.forward(xd, W, b)
    with pytest.raises(ValueError, match="dout has shape"):
        sd.backward(out[:, :2], xd, W, out)
    with pytest.raises(ValueError, match=r"dout has 8 rows but x has 10 \(shapes: dout \(8, 3\)"):
        sd.backward(out[:8], xd, W, out)
    with pytest.raises(ValueError, match=r"out has 9 rows but x has 10"):
        sd.backward(out, xd, W, out[:9])
    # b of shape (1, n_out), as siglayer.forward takes it.
    np.testing.assert_array_equal(
        sd.forward(xd, W, b[None]).compute(scheduler="threads"), siglayer.forward(x, W, b)
    )


def test_progress_bar():
    x, W, b = inputs(400, 8, 3, np.float64)
    buffer = io.StringIO()
    with ProgressBar(out=buffer, minimum=0):
        sd.forward(da.from_array(x, chunks=100), W, b).sum().compute(scheduler="threads")
    assert "100% Completed" in buffer.getvalue()


@pytest.fixture
def environ_kept():
    """distributed's nanny leaves its workers' environment (OMP_NUM_THREADS=1,
    OPENBLAS_NUM_THREADS=1, ...) in this process's os.environ, where every later test's
    subprocess inherited it (a forked child then ran on one thread): put it back."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.mark.usefixtures("environ_kept")
def test_distributed_input_larger_than_worker_memory(tmp_path):
    distributed = pytest.importorskip("distributed")
    memory_limit = 300 * 2**20
    n, n_in, n_out, rows = 700_000, 256, 16, 25_000  # x: 684 MiB of float32, 28 chunks
    # Dask's own memory management, as a user runs it: a worker spills what it holds to
    # disk (tmp_path) before it pauses, and is restarted past 95 % (asserted not to
    # happen). With spilling off, a worker holding x chunks for the backward could
    # pause and never resume: seen once in CI as a 240 s timeout with both workers
    # paused at ~250 MiB, depending on the scheduler's order.
    config = {
        "distributed.worker.memory.target": 0.6,
        "distributed.worker.memory.spill": 0.7,
        "distributed.worker.memory.pause": 0.85,
        "distributed.worker.memory.terminate": 0.95,
    }
    W, b = (a.astype(np.float32) for a in inputs(1, n_in, n_out, np.float32, seed=5)[1:])

    def graph():
        x = da.random.default_rng(7).standard_normal(
            (n, n_in), chunks=(rows, n_in), dtype=np.float32
        )
        out = sd.forward(x, W, b)
        _, dW, db = sd.backward(out - 0.5, x, W, out, need_dx=False)
        return x, (out.sum(axis=0), dW, db)

    x, results = graph()
    assert x.nbytes > 2 * memory_limit
    with (
        dask.config.set(config),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # no fixed port: 8787 may be taken
            memory_limit=memory_limit,
            local_directory=str(tmp_path),
        ) as cluster,
        distributed.Client(cluster, timeout=60) as client,
    ):
        workers = set(client.scheduler_info()["workers"])
        futures = client.compute(results)
        distributed.wait(futures, timeout=240)
        got = client.gather(futures)
        assert set(client.scheduler_info()["workers"]) == workers  # none restarted
    # The same graph, streamed through this process by the threaded scheduler.
    expected = dask.compute(*graph()[1], scheduler="threads")
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e, np.float32)


def test_every_public_name_is_documented():
    docs = "\n".join(p.read_text() for p in (Path(__file__).parents[1] / "docs").glob("*.md"))
    for name in sd.__all__:
        assert f"siglayer.dask.{name}" in docs, name
        assert ">>> " in getattr(sd, name).__doc__, name


def test_each_chunk_is_read_and_run_forward_once(monkeypatch):
    """A dout computed from out (dL/dout = 2 out, or the mean squared error's) shares
    out's tasks: each row chunk of x is read once and runs one forward and one backward.
    Each array's graph optimized on its own ran every forward twice (16 calls for 8
    chunks; a review's find)."""
    import threading

    from siglayer import _api

    calls = {"read": 0, "forward": 0, "backward": 0}
    lock = threading.Lock()

    def counted(name, function):
        def wrapper(*args, **kwargs):
            with lock:
                calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(_api, "forward", counted("forward", _api.forward))
    monkeypatch.setattr(_api, "backward", counted("backward", _api.backward))
    x_np, W, b = inputs(800, 16, 4, np.float64, seed=3)

    def read(block_id):  # a chunk from disk, say (map_blocks passes block_id by name)
        with lock:
            calls["read"] += 1
        return x_np[block_id[0] * 100 : (block_id[0] + 1) * 100]

    x = da.map_blocks(read, dtype=np.float64, chunks=((100,) * 8, (16,)))
    out = sd.forward(x, W, b)
    for dout in (2 * out, 2 * (out - 1.0) / out.size):
        for need_dx in (False, True):
            grads = [g for g in sd.backward(dout, x, W, out, need_dx=need_dx) if g is not None]
            for key in calls:
                calls[key] = 0
            got = dask.compute(out.mean(), *grads, scheduler="threads")
            assert calls == {"read": 8, "forward": 8, "backward": 8}, (need_dx, calls)
    out_np = siglayer.forward(x_np, W, b)
    want = siglayer.backward(2 * (out_np - 1.0) / out_np.size, x_np, W, out_np)
    for g, w in zip(got[1:], want, strict=True):
        assert_close(g, w, np.float64)
