"""siglayer over arrays larger than memory: ``forward`` and ``backward`` for a
``dask.array`` x chunked by rows, computed chunk by chunk by siglayer's kernels.

Importable only when Dask is installed (``pip install "dask[array]"``); it is not
imported by ``import siglayer``.

Everything is lazy: the functions build a graph and return dask arrays, which the scheduler
of your choice computes (threads, processes, or a ``dask.distributed`` cluster). W and b are
in memory (NumPy arrays) and enter the graph once, shared by every task. Each task holds one
row chunk of x and its results, so a computation that reduces (a loss, a gradient, a
column sum) streams through x in memory bounded by a few chunks per worker.

The gradient over the whole array is the sum over row chunks: dW = sum_c x_c^T dZ_c,
db = sum_c sum_rows dZ_c (dZ = dout * out * (1 - out)), and dx is row chunk by row chunk.
``backward`` builds exactly that: one siglayer backward call per chunk, then a tree sum of
the per-chunk dW and db.

For a progress bar, use Dask's own: ``with dask.diagnostics.ProgressBar(): ...compute()``
with the local schedulers, ``dask.distributed.progress(future)`` with a cluster.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Literal, overload

import numpy as np

try:
    import dask  # type: ignore[import-not-found, unused-ignore]
    import dask.array as da  # type: ignore[import-not-found, unused-ignore]
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "siglayer.dask needs Dask, which is not installed: pip install 'dask[array]' "
        "(siglayer's dask extra also brings the distributed scheduler and diagnostics). "
        "The rest of siglayer works without it."
    ) from exc

from . import _api
from ._dtypes import is_bfloat16

__all__ = ["backward", "forward"]

# dask.array.Array: Any to mypy, whether or not dask (untyped) is installed.
DaskArray = Any
_dask: Any = dask
_da: Any = da


@contextlib.contextmanager
def _on_zero_rows(arrays: dict[str, Any]) -> Iterator[None]:
    """The core's checks run on 0 rows of each row-chunked array: a ValueError from them
    shows (0, k) shapes, so it gets the arrays' real shapes added."""
    try:
        yield
    except ValueError as exc:
        shapes = ", ".join(f"{name} {tuple(a.shape)}" for name, a in arrays.items())
        raise type(exc)(  # the class kept (OverlapError is a ValueError)
            f"{exc} (siglayer.dask checks the shapes on 0 rows of each row-chunked "
            f"array; the arrays given: {shapes})"
        ) from None


def _rows(name: str, value: Any) -> Any:
    """value as a 2-D dask array with one chunk across its columns."""
    if not isinstance(value, _da.Array):
        raise TypeError(f"{name} must be a dask.array.Array, got {type(value).__name__}")
    if isinstance(value._meta, np.ma.MaskedArray):  # chunks of masked arrays
        raise TypeError(
            f"{name} is a dask array of masked arrays; masks are not supported: fill the "
            f"masked entries first ({name} = da.ma.filled({name}, value))"
        )
    if value.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n, features), chunked by rows; got shape {value.shape}"
        )
    # Each task needs whole rows; splitting the rows differently is free, columns are joined.
    return value.rechunk({1: -1}) if len(value.chunks[1]) > 1 else value


def _in_memory(name: str, value: Any) -> Any:
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray (held in memory and shared by every task), "
            f"got {type(value).__name__}"
        )
    # One chunk, entered in the graph once under a name derived from its contents.
    return _da.from_array(value, chunks=value.shape)


def _aligned(*arrays: Any) -> list[Any]:
    # Arrays unpickled from a distributed worker's network frames can sit at any byte
    # offset, which the core refuses; only those are copied.
    return [np.require(a, requirements="A") for a in arrays]


def _forward_chunk(x: Any, W: Any, b: Any) -> Any:
    return _api.forward(*_aligned(x, W, b))


def forward(x: DaskArray, W: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> DaskArray:
    """Lazy ``sigmoid(x @ W + b)`` for a dask array x, one siglayer call per row chunk.

    Parameters
    ----------
    x : dask.array.Array, float32, float64 or bfloat16, shape (n, n_in)
        Chunked by rows (any number of rows per chunk; a chunking of the columns is
        joined into whole rows first).
    W : numpy.ndarray, x's dtype, shape (n_in, n_out)
    b : numpy.ndarray, x's dtype (float32 or bfloat16 for bfloat16 x), shape (n_out,)

    Returns
    -------
    dask.array.Array, shape (n, n_out), x's dtype and row chunks
        Computed, each chunk is bitwise ``siglayer.forward`` of that chunk of x; against
        ``siglayer.forward`` on the whole of x it agrees to the BLAS's rounding (a
        product cut into other row blocks may round some elements differently, a few
        ulp).

    Raises
    ------
    TypeError
        x not a dask array, W or b not NumPy arrays, dtypes siglayer refuses.
    ValueError
        x not 2-D; shapes that do not fit together. Both are raised here, when the graph
        is built, by siglayer's own checks on an empty row block, not when it runs.

    Examples
    --------
    >>> import numpy as np, dask.array as da, siglayer, siglayer.dask
    >>> x = da.ones((10, 3), chunks=(4, 3)); W = np.zeros((3, 2)); b = np.zeros(2)
    >>> out = siglayer.dask.forward(x, W, b)
    >>> out.chunks
    ((4, 4, 2), (2,))
    >>> float(out.sum().compute())
    10.0
    """
    x = _rows("x", x)
    # The core's checks (dtypes, shapes, sizes), run now on zero rows of x.
    with _on_zero_rows({"x": x}):
        _api.forward(np.empty((0, x.shape[1]), x.dtype), W, b)
    # b as (n_out,): the core takes (1, n_out) too, the graph's index "j" one axis.
    Wd, bd = _in_memory("W", W), _in_memory("b", b.reshape(-1))
    return _da.blockwise(
        _forward_chunk,
        "ij",
        x,
        "ik",
        Wd,
        "kj",
        bd,
        "j",
        dtype=x.dtype,
        concatenate=True,
        meta=np.empty((0, 0), x.dtype),
        token="siglayer-forward",
    )


def _backward_chunk(dout: Any, x: Any, W: Any, out: Any, need_dx: bool, need_dW: bool) -> Any:
    return _api.backward(*_aligned(dout, x, W, out), need_dx=need_dx, need_dW=need_dW)


@overload
def backward(
    dout: DaskArray,
    x: DaskArray,
    W: np.ndarray[Any, Any],
    out: DaskArray,
    *,
    need_dx: bool = True,
    need_dW: Literal[True] = True,
) -> tuple[DaskArray | None, DaskArray, DaskArray]: ...
@overload
def backward(
    dout: DaskArray,
    x: DaskArray,
    W: np.ndarray[Any, Any],
    out: DaskArray,
    *,
    need_dx: bool = True,
    need_dW: Literal[False],
) -> tuple[DaskArray | None, None, DaskArray]: ...
@overload
def backward(
    dout: DaskArray,
    x: DaskArray,
    W: np.ndarray[Any, Any],
    out: DaskArray,
    *,
    need_dx: bool = True,
    need_dW: bool,
) -> tuple[DaskArray | None, DaskArray | None, DaskArray]: ...
def backward(
    dout: DaskArray,
    x: DaskArray,
    W: np.ndarray[Any, Any],
    out: DaskArray,
    *,
    need_dx: bool = True,
    need_dW: bool = True,
) -> tuple[DaskArray | None, DaskArray | None, DaskArray]:
    """Lazy ``(dx, dW, db)`` over a dask array: per row chunk siglayer's backward, summed.

    Parameters
    ----------
    dout : dask.array.Array, shape (n, n_out)
        The upstream gradient dL/dout (for a loss that sums over the rows, each chunk's
        rows need only their own chunk).
    x : dask.array.Array, shape (n, n_in)
    W : numpy.ndarray, shape (n_in, n_out)
    out : dask.array.Array, shape (n, n_out)
        ``siglayer.dask.forward(x, W, b)``. dout and out are rechunked to x's rows where
        they differ.
    need_dx : bool
        False: no dx (one product fewer per chunk), for a first layer.
    need_dW : bool
        False: no dW (one product fewer per chunk), for a frozen W.

    Returns
    -------
    (dx, dW, db)
        dx: dask array (n, n_in) with x's chunks, or None; dW (n_in, n_out; or None) and
        db (n_out,): one-chunk dask arrays, sums of the per-chunk gradients (a tree reduction, added
        in float64 and rounded once). dtypes as ``siglayer.backward``: x's, except dW and
        db float32 for bfloat16 x.
        ``dask.compute(dW, db)`` runs each chunk's backward once for both.

    Raises
    ------
    TypeError, ValueError
        As ``forward``, raised when the graph is built.

    Examples
    --------
    >>> import numpy as np, dask, dask.array as da, siglayer, siglayer.dask
    >>> x = da.ones((10, 3), chunks=(4, 3)); W = np.zeros((3, 2)); b = np.zeros(2)
    >>> out = siglayer.dask.forward(x, W, b)
    >>> _, dW, db = siglayer.dask.backward(da.ones_like(out), x, W, out, need_dx=False)
    >>> dW, db = dask.compute(dW, db)
    >>> db                     # 10 rows of dZ = 1 * 0.5 * 0.5
    array([2.5, 2.5])
    """
    x = _rows("x", x)
    rows = x.chunks[0]
    dout, out = _rows("dout", dout), _rows("out", out)
    shapes = f"(shapes: dout {tuple(dout.shape)}, x {tuple(x.shape)}, out {tuple(out.shape)})"
    if any(math.isnan(r) for a in (dout, x, out) for r in a.chunks[0]):
        # Unknown row counts (dask's NaN, after a boolean mask): the chunks cannot be
        # moved, so they must pair up as forward's output pairs with its x; each task's
        # core call checks its rows when it runs.
        for name, a in (("dout", dout), ("out", out)):
            if len(a.chunks[0]) != len(rows):
                raise ValueError(
                    f"{name} has {len(a.chunks[0])} row chunks but x has {len(rows)}, and some "
                    f"row counts are unknown (NaN), so they cannot be rechunked to match {shapes}; "
                    "pass the out that forward returned for this x, or call "
                    "compute_chunk_sizes() on the arrays first"
                )
    else:
        for name, a in (("dout", dout), ("out", out)):
            if a.shape[0] != x.shape[0]:
                raise ValueError(f"{name} has {a.shape[0]} rows but x has {x.shape[0]} {shapes}")
        dout, out = dout.rechunk({0: rows}), out.rechunk({0: rows})
    # The core's checks, on zero rows of each.
    empty = {
        n: np.empty((0, a.shape[1]), a.dtype) for n, a in (("dout", dout), ("x", x), ("out", out))
    }
    with _on_zero_rows({"dout": dout, "x": x, "out": out}):
        _api.backward(empty["dout"], empty["x"], W, empty["out"], need_dx=need_dx, need_dW=need_dW)
    Wd = _in_memory("W", W)
    n_in, n_out = W.shape
    dtype = x.dtype
    parts = []
    # Unoptimized: each array's graph optimized alone fused forward's tasks into dout's
    # (dout = 2 * out, say) under new keys, and every chunk's forward ran twice (a
    # review's find); as they are, the three share their tasks.
    chunks = (a.to_delayed(optimize_graph=False).ravel() for a in (dout, x, out))
    for d, xc, o in zip(*chunks, strict=True):
        parts.append(
            _dask.delayed(_backward_chunk, nout=3, pure=True)(d, xc, Wd, o, need_dx, need_dW)
        )
    dx = None
    if need_dx:
        dx = _da.concatenate(
            [
                _da.from_delayed(p[0], shape=(r, n_in), dtype=dtype, meta=np.empty((0, 0), dtype))
                for p, r in zip(parts, rows, strict=True)
            ]
        )
    # dW and db as the core returns them (float32 for bfloat16 inputs), the per-chunk
    # partial sums added in float64 and rounded once, as the core adds its row blocks.
    grad = np.dtype(np.float32) if is_bfloat16(dtype) else dtype

    def total(i: int, shape: tuple[int, ...]) -> Any:
        stack = _da.stack([_da.from_delayed(p[i], shape=shape, dtype=grad) for p in parts])
        return stack.sum(axis=0, dtype=np.float64).astype(grad)

    return dx, total(1, (n_in, n_out)) if need_dW else None, total(2, (n_out,))
