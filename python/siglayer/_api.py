"""forward and backward: shape the call, let the compiled core check and compute.

2-D ndarrays go straight to the core (it validates dtypes, shapes, strides and
buffers itself, naming the argument in every error). Leading batch dimensions and
1-D inputs are reshaped here first, with the shape checks done on the shapes the
caller passed, so that error messages show them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, overload

import numpy as np
from numpy.typing import DTypeLike, NDArray

from . import _core
from ._buffers import not_an_ndarray, refuse_overlap
from ._dtypes import as_dtype, is_bfloat16
from ._gradients import refuse_kind
from ._typing import Float

__all__ = ["backward", "backward_from_preactivation", "forward"]

_ndarray = np.ndarray
# The BLAS integer's largest value: every matrix dimension must fit (checks.cpp).
_BLAS_MAX = 2 ** (int(_core.config()["blas_int_bits"]) - 1) - 1


def w_mismatch(W_shape: tuple[int, ...], x_shape: tuple[int, ...]) -> str:
    """The message for a W whose rows are not x's features (the core's own words, for
    the checks made in Python: batched x, jacobian); a W that would fit transposed is
    likely torch.nn.Linear's weight, (n_out, n_in)."""
    message = f"W has shape {W_shape} but x has {x_shape[-1]} features (shape {x_shape})"
    if W_shape[1] == x_shape[-1]:
        message += (
            "; W is (n_in, n_out): pass W.T if it is laid out as torch.nn.Linear's "
            "weight, (n_out, n_in)"
        )
    return message


def _batch_rows(x_shape: tuple[int, ...]) -> int:
    """The rows of x's batch dimensions flattened, checked against the BLAS integer
    before anything is reshaped (a reshape can copy a broadcast x at full size)."""
    rows = math.prod(x_shape[:-1])
    if rows > _BLAS_MAX:
        raise ValueError(
            f"n = {rows} exceeds the BLAS integer range ({_BLAS_MAX}): the rows of x of "
            f"shape {x_shape}, its batch dimensions flattened; split the problem"
        )
    return rows


def _no_rows(a: NDArray[Float], n_cols: int) -> NDArray[Float]:
    """A zero-row stand-in for a batched argument, of its dtype: the core's dtype checks
    (whose messages show no shapes) run on it before the argument is flattened, since a
    reshape copies a batch that is no view of rows (broadcast along an inner batch
    dimension, transposed) at full size: a review found 489 MiB copied for a 256 KB
    int64 view before its TypeError, and a MemoryError in its place under a memory
    limit."""
    return np.empty((0, n_cols), a.dtype)


def forward(
    x: NDArray[Float], W: NDArray[Float], b: NDArray[Float], *, out: NDArray[Float] | None = None
) -> NDArray[Float]:
    """Forward pass of a dense layer followed by a sigmoid: ``sigmoid(x @ W + b)``.

    Parameters
    ----------
    x : ndarray, float32, float64 or bfloat16, shape (..., n_in)
        Inputs, one row per sample. Leading dimensions are batch dimensions, as in
        ``torch.nn.Linear``; a 1-D x is one sample and gives a 1-D result.
    W : ndarray, x's dtype, shape (n_in, n_out)
        Weights (note: ``torch.nn.Linear.weight`` is the transpose, (n_out, n_in)).
    b : ndarray, x's dtype (or float32 with bfloat16 x and W), shape (n_out,) or (1, n_out)
        Bias.
    out : ndarray, x's dtype, shape (..., n_out), optional
        Buffer for the result: C-contiguous, writeable, of the inputs' dtype and not
        overlapping any input. Without it a new array is returned.

    Returns
    -------
    ndarray, shape (..., n_out), dtype of the inputs
        ``out`` itself when given, else a new C-contiguous array. Keep it: ``backward``
        takes it instead of recomputing the sigmoid.

    Raises
    ------
    TypeError
        An argument that is not a ``numpy.ndarray`` (lists, scalars, ``np.matrix``,
        masked arrays), a dtype other than float32/float64/bfloat16 (native byte
        order; float16 is refused, never taken for bfloat16), or arrays of mixed dtypes
        (but a float32 b with bfloat16 x and W). Nothing is converted silently: call
        ``.astype`` first. Likewise an ``out`` that is not an ndarray or not of the
        result's dtype.
    ValueError
        Shapes that do not fit together, strides that are not a whole number of
        elements, an array that starts inside an element's bytes (not aligned: pass a
        ``.copy()``), or an unusable ``out`` (wrong shape, not C-contiguous, read-only,
        overlapping an input). A failed call writes nothing into ``out``.

    See Also
    --------
    backward : the gradients, from this function's result.
    siglayer.reference.forward : the same computation in plain NumPy.

    Notes
    -----
    All arrays share one dtype, float32 or float64, and the result has it too; or x and
    W are bfloat16 (``ml_dtypes.bfloat16``), b bfloat16 or float32, and the result is
    bfloat16: products accumulated in float32, bias and sigmoid in float32, one rounding
    (docs/bfloat16.md). 2-D inputs with unit stride along one axis (C- or F-ordered,
    or rows sliced as in ``x[::2]``) reach BLAS without a copy; other strided views are
    copied once into scratch memory. Inputs are never modified. The sigmoid is evaluated
    stably: exactly 1 at +inf, 0 at -inf, NaN at NaN, with no overflow warning.
    Large problems run on ``siglayer.get_num_threads()`` threads.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> x = np.zeros((2, 3)); W = np.ones((3, 4)); b = np.zeros(4)
    >>> siglayer.forward(x, W, b)
    array([[0.5, 0.5, 0.5, 0.5],
           [0.5, 0.5, 0.5, 0.5]])

    Batch dimensions and float32:

    >>> x = np.ones((5, 2, 3), np.float32); W = np.zeros((3, 4), np.float32)
    >>> out = siglayer.forward(x, W, np.zeros(4, np.float32))
    >>> out.shape, out.dtype
    ((5, 2, 4), dtype('float32'))
    """
    if type(x) is _ndarray and x.ndim == 2:
        return _core.forward(x, W, b, out)
    if not isinstance(x, _ndarray) or x.ndim == 0:
        if isinstance(x, _ndarray):
            raise ValueError("x must have shape (..., n_in), got a 0-d array")
        return _core.forward(x, W, b, out)  # raises the TypeError naming x
    n_in = x.shape[-1]
    if isinstance(W, _ndarray) and W.ndim == 2 and W.shape[0] != n_in:
        raise ValueError(w_mismatch(W.shape, x.shape))
    lead: tuple[int, ...] = x.shape[:-1]
    rows = _batch_rows(x.shape)
    if not x.flags.c_contiguous:
        _core.forward(_no_rows(x, n_in), W, b, None)
    x2 = x.reshape(rows, n_in)
    if out is None:
        result = _core.forward(x2, W, b, None)
        return result.reshape(*lead, result.shape[1])
    if not (isinstance(W, _ndarray) and W.ndim == 2):
        # out= is sized from W, so W's own error comes first (the core raises it).
        return _core.forward(x2, W, b, None)
    out2 = _as_2d_buffer(out, "out", (*lead, W.shape[1]))
    _refuse_hidden_overlap(("x",), (x,), (x2,), ("out",), (out,))
    _core.forward(x2, W, b, out2)
    return out


# need_dx=True (the default) gives a dx, need_dx=False gives None, a bool either; need_dW
# likewise for dW.
@overload
def backward(
    dout: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    out: NDArray[Float],
    *,
    need_dx: Literal[True] = True,
    need_dW: Literal[True] = True,
    dx: NDArray[Float] | None = None,
    dW: NDArray[Float] | None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[NDArray[Float], NDArray[Float], NDArray[Float]]: ...
@overload
def backward(
    dout: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    out: NDArray[Float],
    *,
    need_dx: Literal[False],
    need_dW: Literal[True] = True,
    dx: None = None,
    dW: NDArray[Float] | None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[None, NDArray[Float], NDArray[Float]]: ...
@overload
def backward(
    dout: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    out: NDArray[Float],
    *,
    need_dx: Literal[True] = True,
    need_dW: Literal[False],
    dx: NDArray[Float] | None = None,
    dW: None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[NDArray[Float], None, NDArray[Float]]: ...
@overload
def backward(
    dout: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    out: NDArray[Float],
    *,
    need_dx: Literal[False],
    need_dW: Literal[False],
    dx: None = None,
    dW: None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[None, None, NDArray[Float]]: ...
@overload
def backward(
    dout: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    out: NDArray[Float],
    *,
    need_dx: bool,
    need_dW: Literal[True] = True,
    dx: NDArray[Float] | None = None,
    dW: NDArray[Float] | None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[NDArray[Float] | None, NDArray[Float], NDArray[Float]]: ...
@overload
def backward(
    dout: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    out: NDArray[Float],
    *,
    need_dx: bool = True,
    need_dW: bool = True,
    dx: NDArray[Float] | None = None,
    dW: NDArray[Float] | None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[NDArray[Float] | None, NDArray[Float] | None, NDArray[Float]]: ...
def backward(
    dout: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    out: NDArray[Float],
    *,
    need_dx: bool = True,
    need_dW: bool = True,
    dx: NDArray[Float] | None = None,
    dW: NDArray[Float] | None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[NDArray[Float] | None, NDArray[Float] | None, NDArray[Float]]:
    """Backward pass: the gradients of a loss L from the upstream gradient dout = dL/dout.

    With dZ = dout * out * (1 - out), the gradient with respect to the pre-activation
    Z = x @ W + b:

    - dW = x.T @ dZ, shape (n_in, n_out): every row of the batch contributes, and the
      sum over the rows is exactly the matrix product with x.T on the left
      (docs/derivation.md derives it);
    - db = dZ summed over the rows, shape (n_out,);
    - dx = dZ @ W.T, the shape of x, or None when ``need_dx=False`` (one matrix
      product fewer; the first layer of a network needs no dx).

    ``need_dW=False`` likewise skips dW = x.T @ dZ, for a frozen W (fine-tuning the
    bias alone, or a fixed layer that still passes dx back).

    Leading batch dimensions of x, dout and out are flattened into rows: dW and db sum
    over all of them.

    Parameters
    ----------
    dout : ndarray, float32, float64 or bfloat16, shape (..., n_out)
        Upstream gradient dL/dout.
    x : ndarray, dout's dtype, shape (..., n_in)
        The input of the forward pass.
    W : ndarray, dout's dtype, shape (n_in, n_out)
        The weights of the forward pass.
    out : ndarray, dout's dtype, shape (..., n_out)
        The result of the forward pass; the sigmoid is never recomputed.
    need_dx : bool, default True
        Compute dx. With False, dx is returned as None and must not be given.
    need_dW : bool, default True
        Compute dW. With False, dW is returned as None and must not be given.
    dx, dW, db : ndarray, optional
        Buffers for the results, shapes as above: C-contiguous, writeable, of the
        inputs' dtype (dW and db: of ``grad_dtype``), not overlapping an input or each
        other.
    grad_dtype : dtype, optional
        For bfloat16 inputs, dW and db are float32 (master-weight gradients);
        ``grad_dtype="bfloat16"`` rounds their float32 values to bfloat16 instead. For float32 and
        float64 inputs only their own dtype is accepted.

    Returns
    -------
    dx : ndarray, shape (..., n_in), or None
        dL/dx; None when ``need_dx=False``. The ``dx`` buffer itself when given.
    dW : ndarray, shape (n_in, n_out), or None
        dL/dW; None when ``need_dW=False``. The ``dW`` buffer itself when given.
    db : ndarray, shape (n_out,)
        dL/db. The ``db`` buffer itself when given.

    All three have the inputs' dtype (float32 or float64); for bfloat16 inputs dx is
    bfloat16 and dW, db are float32 (docs/bfloat16.md). They are written fresh,
    never accumulated into a buffer's previous contents; db is bitwise independent of
    the number of threads.

    Raises
    ------
    TypeError
        An argument that is not a ``numpy.ndarray``, a dtype other than
        float32/float64/bfloat16, or arrays of mixed dtypes (nothing is converted
        silently).
    ValueError
        Shapes that do not fit together (dout and out must be x's batch shape by
        n_out), an unusable buffer, or ``dx`` given with ``need_dx=False`` (``dW``
        with ``need_dW=False``). A failed
        call writes nothing into the buffers.

    See Also
    --------
    forward : computes ``out``.
    siglayer.reference.backward : the same computation in plain NumPy.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> x = np.ones((2, 3)); W = np.zeros((3, 1)); b = np.zeros(1)
    >>> out = siglayer.forward(x, W, b)  # sigmoid(0) = 0.5 everywhere
    >>> dx, dW, db = siglayer.backward(np.ones((2, 1)), x, W, out)
    >>> dW.ravel()  # each of the 2 rows adds 1 * 0.5 * (1 - 0.5) * x = 0.25
    array([0.5, 0.5, 0.5])
    >>> db
    array([0.5])
    >>> siglayer.backward(np.ones((2, 1)), x, W, out, need_dx=False)[0] is None
    True
    """
    rounded = grad_dtype is not None and _rounds_gradients(grad_dtype, x)
    if type(x) is _ndarray and x.ndim == 2 and isinstance(dout, _ndarray) and dout.ndim == 2:
        if type(dout) is not _ndarray:  # a loss's tagged gradient
            refuse_kind(dout, "dout", "backward")
        return _core.backward(dout, x, W, out, need_dx, need_dW, dx, dW, db, rounded)
    return _batched_backward(
        _core.backward,
        "backward",
        {"dout": dout, "out": out},
        x,
        W,
        (need_dx, need_dW),
        dx,
        dW,
        db,
        rounded,
    )


@overload
def backward_from_preactivation(
    dZ: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    *,
    need_dx: Literal[True] = True,
    need_dW: Literal[True] = True,
    dx: NDArray[Float] | None = None,
    dW: NDArray[Float] | None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[NDArray[Float], NDArray[Float], NDArray[Float]]: ...
@overload
def backward_from_preactivation(
    dZ: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    *,
    need_dx: Literal[False],
    need_dW: Literal[True] = True,
    dx: None = None,
    dW: NDArray[Float] | None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[None, NDArray[Float], NDArray[Float]]: ...
@overload
def backward_from_preactivation(
    dZ: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    *,
    need_dx: Literal[True] = True,
    need_dW: Literal[False],
    dx: NDArray[Float] | None = None,
    dW: None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[NDArray[Float], None, NDArray[Float]]: ...
@overload
def backward_from_preactivation(
    dZ: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    *,
    need_dx: Literal[False],
    need_dW: Literal[False],
    dx: None = None,
    dW: None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[None, None, NDArray[Float]]: ...
@overload
def backward_from_preactivation(
    dZ: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    *,
    need_dx: bool,
    need_dW: Literal[True] = True,
    dx: NDArray[Float] | None = None,
    dW: NDArray[Float] | None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[NDArray[Float] | None, NDArray[Float], NDArray[Float]]: ...
@overload
def backward_from_preactivation(
    dZ: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    *,
    need_dx: bool = True,
    need_dW: bool = True,
    dx: NDArray[Float] | None = None,
    dW: NDArray[Float] | None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[NDArray[Float] | None, NDArray[Float] | None, NDArray[Float]]: ...
def backward_from_preactivation(
    dZ: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    *,
    need_dx: bool = True,
    need_dW: bool = True,
    dx: NDArray[Float] | None = None,
    dW: NDArray[Float] | None = None,
    db: NDArray[Float] | None = None,
    grad_dtype: DTypeLike | None = None,
) -> tuple[NDArray[Float] | None, NDArray[Float] | None, NDArray[Float]]:
    """Backward pass from dZ, the gradient with respect to the pre-activation ``x @ W + b``.

    The same products as :func:`backward` without its first step (dZ = dout * out *
    (1 - out)): dW = x.T @ dZ, db = dZ summed over the rows, dx = dZ @ W.T. Use it when
    the loss gives dZ directly, as binary cross-entropy fused with the sigmoid does:
    dZ = (out - y) / N (N = out.size for the mean, every element as in torch.nn.BCELoss,
    not the batch size; 1 for the sum), with no division by out * (1 - out), which is 0
    or tiny where the sigmoid saturates (see :mod:`siglayer.losses`).

    Parameters
    ----------
    dZ : ndarray, float32, float64 or bfloat16, shape (..., n_out)
        Gradient of the loss with respect to ``x @ W + b``.
    x : ndarray, dZ's dtype, shape (..., n_in)
        The forward pass's input.
    W : ndarray, dZ's dtype, shape (n_in, n_out)
        The forward pass's weights.
    need_dx : bool, default True
        Compute dx (one product fewer without it).
    need_dW : bool, default True
        Compute dW (one product fewer without it: a frozen W).
    dx, dW, db : ndarray, optional
        C-contiguous, writeable buffers for the results, of shapes x.shape,
        (n_in, n_out) and (n_out,); they must not overlap an input or each other.
    grad_dtype : dtype, optional
        As for :func:`backward`: ``"bfloat16"`` rounds a bfloat16 call's float32 dW and
        db to bfloat16.

    All arrays share one dtype, float32 or float64 (or bfloat16, with float32 dW and db:
    docs/bfloat16.md). C- and F-ordered dZ is used as it is; other layouts (and, for a
    layer with fewer than 12 outputs, or up to 64 from 16 rows when dx is asked for and
    the CPU has AVX2, a dZ whose rows are not contiguous) are copied once into scratch
    memory. Gradients are overwritten, never accumulated; db is bitwise the same for any
    thread count.

    Returns
    -------
    dx : ndarray, shape (..., n_in), or None
        None when ``need_dx=False``; the ``dx`` buffer itself when given.
    dW : ndarray, shape (n_in, n_out), or None
        None when ``need_dW=False``; the ``dW`` buffer itself when given.
    db : ndarray, shape (n_out,)

    Raises
    ------
    TypeError
        A non-array argument, an unsupported dtype, or mixed dtypes.
    ValueError
        Shapes that do not fit together, or an unusable buffer.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> x = np.ones((2, 3)); W = np.zeros((3, 1)); dZ = np.full((2, 1), 0.5)
    >>> dx, dW, db = siglayer.backward_from_preactivation(dZ, x, W)
    >>> dW.ravel(), db  # two rows, each adding 0.5 * x = 0.5
    (array([1., 1., 1.]), array([1.]))
    """
    rounded = grad_dtype is not None and _rounds_gradients(grad_dtype, x)
    if type(x) is _ndarray and x.ndim == 2 and isinstance(dZ, _ndarray) and dZ.ndim == 2:
        if type(dZ) is not _ndarray:  # a loss's tagged gradient (BCELoss gives one)
            refuse_kind(dZ, "dZ", "backward_from_preactivation")
        return _core.backward_from_preactivation(dZ, x, W, need_dx, need_dW, dx, dW, db, rounded)
    return _batched_backward(
        _core.backward_from_preactivation,
        "backward_from_preactivation",
        {"dZ": dZ},
        x,
        W,
        (need_dx, need_dW),
        dx,
        dW,
        db,
        rounded,
    )


def _rounds_gradients(grad_dtype: DTypeLike, x: object) -> bool:
    """Whether dW and db are to be rounded to bfloat16 (True), or are of grad_dtype as the
    core returns them (False); TypeError naming grad_dtype for anything else."""
    x_dtype = getattr(x, "dtype", None)
    try:
        wanted = as_dtype(grad_dtype)
    except TypeError:
        raise TypeError(f"grad_dtype must be a dtype, got {grad_dtype!r}") from None
    if x_dtype is None:
        return False  # x is no array: the core's check names x
    x_is_bf16 = is_bfloat16(x_dtype)
    native = np.dtype(np.float32) if x_is_bf16 else x_dtype
    if wanted == native:
        return False
    if x_is_bf16 and is_bfloat16(wanted):
        return True
    allowed = "float32 (default) or bfloat16" if x_is_bf16 else f"{native} (the inputs' dtype)"
    raise TypeError(f"grad_dtype is {wanted} but for {x_dtype} inputs dW and db are {allowed}")


def _batched_backward(
    core: Callable[..., tuple[NDArray[Float] | None, NDArray[Float] | None, NDArray[Float]]],
    method: str,
    per_row: dict[str, NDArray[Float]],
    x: NDArray[Float],
    W: NDArray[Float],
    needs: tuple[bool, bool],
    dx: NDArray[Float] | None,
    dW: NDArray[Float] | None,
    db: NDArray[Float] | None,
    rounded: bool,
) -> tuple[NDArray[Float] | None, NDArray[Float] | None, NDArray[Float]]:
    """Both backwards off their 2-D fast path: the gradient's kind checked, then leading
    batch dimensions flattened. ``per_row`` holds the (..., n_out) arguments in the
    core's order: the gradient first (dout or dZ), then out for ``backward``; ``needs``
    is (need_dx, need_dW); the core takes ``core(grad, x, W, [out,] need_dx, need_dW, dx,
    dW, db, rounded)``."""
    (name, grad), *rest = per_row.items()
    refuse_kind(grad, name, method)
    arrays = (*per_row.values(), x, W)
    bools = all(isinstance(need, (bool, np.bool_)) for need in needs)
    if not bools or not all(isinstance(a, _ndarray) for a in arrays):
        # The core raises the TypeError naming the argument (a need_dx or need_dW that is
        # no bool before any shape is read, as in 2-D).
        return core(grad, x, W, *(a for _, a in rest), *needs, dx, dW, db, rounded)
    # A dx given with need_dx=False is neither reshaped nor checked here: the core gets it
    # as it is and refuses it with the message of the 2-D path ("dx was given but
    # need_dx=False"), not one about its shape.
    dx_used = dx if needs[0] else None
    rows = _check_batch_shapes(x, W, per_row)
    n_in, n_out = W.shape
    if not all(a.flags.c_contiguous for a in (x, *per_row.values())):
        grad0, *rest0 = (_no_rows(a, n_out) for a in per_row.values())
        core(grad0, _no_rows(x, n_in), W, *rest0, False, False, None, None, None, rounded)
    dx2 = _as_2d_buffer(dx_used, "dx", x.shape) if dx_used is not None else None
    x2 = x.reshape(rows, n_in)
    flat = [a.reshape(rows, n_out) for a in per_row.values()]
    if dx_used is not None or dW is not None or db is not None:
        _refuse_hidden_overlap(
            ("x", *per_row),
            (x, *per_row.values()),
            (x2, *flat),
            ("dx", "dW", "db"),
            (dx_used, dW, db),
        )
    grad2, *rest2 = flat
    dx_r, dW_r, db_r = core(grad2, x2, W, *rest2, *needs, dx2 if needs[0] else dx, dW, db, rounded)
    return _batch_shaped(dx_r, dx, x.shape), dW_r, db_r


def _check_batch_shapes(
    x: NDArray[Float], W: NDArray[Float], per_row: dict[str, NDArray[Float]]
) -> int:
    """The rows of a backward call's x (..., n_in) and (..., n_out) arrays, their batch
    dimensions flattened. The shapes are checked here, on what the caller passed, so
    that the messages show them; the core checks dtypes and everything else.
    """
    if x.ndim == 0:
        raise ValueError("x must have shape (..., n_in), got a 0-d array")
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (n_in, n_out), got shape {W.shape}")
    n_in, n_out = W.shape
    if x.shape[-1] != n_in:
        raise ValueError(w_mismatch(W.shape, x.shape))
    lead: tuple[int, ...] = x.shape[:-1]
    for name, a in per_row.items():
        if a.shape != (*lead, n_out):
            raise ValueError(
                f"{name} has shape {a.shape}, expected {(*lead, n_out)} "
                f"from x {x.shape} and W {W.shape}"
            )
    return _batch_rows(x.shape)


def _refuse_hidden_overlap(
    names: tuple[str, ...],
    given: tuple[NDArray[Float], ...],
    flat: tuple[NDArray[Float], ...],
    buffer_names: tuple[str, ...],
    buffers: tuple[NDArray[Float] | None, ...],
) -> None:
    """An input whose flattening to 2-D had to copy it reaches the core as the copy, so
    the core's overlap check cannot see the caller's array: the buffers are checked
    against it here, with the core's rule (their byte ranges meet) and error."""
    for name, a, a2 in zip(names, given, flat, strict=True):
        if np.may_share_memory(a, a2):
            continue  # a view: the core checks it
        for buffer_name, buffer in zip(buffer_names, buffers, strict=True):
            if buffer is not None:
                refuse_overlap(buffer_name, buffer, ((name, a),))


def _batch_shaped(
    dx_r: NDArray[Float] | None, dx: NDArray[Float] | None, shape: tuple[int, ...]
) -> NDArray[Float] | None:
    """The core's 2-D dx in x's shape: the caller's own buffer when one was given."""
    if dx_r is None:
        return None
    return dx if dx is not None else dx_r.reshape(shape)


def _as_2d_buffer(buf: NDArray[Float], name: str, shape: tuple[int, ...]) -> NDArray[Float]:
    """A caller's output buffer of the given N-d shape as a 2-D view (never a copy)."""
    if not isinstance(buf, _ndarray):
        raise not_an_ndarray(buf, name)
    if buf.shape != shape:
        raise ValueError(f"{name} has shape {buf.shape}, expected {shape}")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (strides {buf.strides})")
    return buf.reshape(math.prod(shape[:-1]), shape[-1])
