"""forward and backward: shape the call, let the compiled core check and compute.

2-D ndarrays go straight to the core (it validates dtypes, shapes, strides and
buffers itself, naming the argument in every error). Leading batch dimensions and
1-D inputs are reshaped here first, with the shape checks done on the shapes the
caller passed, so that error messages show them.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from . import _core

__all__ = ["forward", "backward", "backward_from_preactivation"]

_ndarray = np.ndarray
Array = NDArray[np.floating]


def forward(x: Array, W: Array, b: Array, *, out: Array | None = None) -> Array:
    """Forward pass of a dense layer followed by a sigmoid: ``sigmoid(x @ W + b)``.

    Parameters
    ----------
    x : ndarray, shape (..., n_in)
        Inputs; leading dimensions are batch dimensions, as in ``torch.nn.Linear``.
        A 1-D x is one sample and gives a 1-D result.
    W : ndarray, shape (n_in, n_out)
        Weights.
    b : ndarray, shape (n_out,) or (1, n_out)
        Bias.
    out : ndarray, shape (..., n_out), optional
        C-contiguous, writeable buffer for the result; it must not overlap an input.

    All arrays share one dtype, float32 or float64; nothing is converted silently.
    C- or F-ordered 2-D inputs are used without a copy; other strided views are
    copied once into scratch memory.

    Returns
    -------
    ndarray, shape (..., n_out)
        ``out`` itself when given, else a new array.

    Raises
    ------
    TypeError
        A non-array argument, an unsupported dtype, or mixed dtypes.
    ValueError
        Shapes that do not fit together, or an unusable ``out``.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> x = np.zeros((2, 3)); W = np.ones((3, 4)); b = np.zeros(4)
    >>> siglayer.forward(x, W, b)
    array([[0.5, 0.5, 0.5, 0.5],
           [0.5, 0.5, 0.5, 0.5]])
    """
    if type(x) is _ndarray and x.ndim == 2:
        return _core.forward(x, W, b, out)  # type: ignore[no-any-return]
    if not isinstance(x, _ndarray) or x.ndim == 0:
        if isinstance(x, _ndarray):
            raise ValueError("x must have shape (..., n_in), got a 0-d array")
        return _core.forward(x, W, b, out)  # raises the TypeError naming x
    n_in = x.shape[-1]
    if isinstance(W, _ndarray) and W.ndim == 2 and W.shape[0] != n_in:
        raise ValueError(
            f"W has shape {W.shape} but x has {n_in} features (shape {x.shape})"
        )
    lead = x.shape[:-1]
    rows = math.prod(lead)
    x2 = x.reshape(rows, n_in)
    if out is None:
        result = _core.forward(x2, W, b, None)
        return result.reshape(*lead, result.shape[1])  # type: ignore[no-any-return]
    n_out = W.shape[1] if isinstance(W, _ndarray) and W.ndim == 2 else -1
    out2 = _as_2d_buffer(out, "out", (*lead, n_out))
    _core.forward(x2, W, b, out2)
    return out


def backward(
    dout: Array,
    x: Array,
    W: Array,
    out: Array,
    *,
    need_dx: bool = True,
    dx: Array | None = None,
    dW: Array | None = None,
    db: Array | None = None,
) -> tuple[Array | None, Array, Array]:
    """Backward pass: gradients of a loss L from the upstream gradient dout = dL/dout.

    With dZ = dout * out * (1 - out) (the gradient with respect to x @ W + b):

    - dW = x.T @ dZ, shape (n_in, n_out): every row of the batch contributes, and the
      sum over rows is exactly the matrix product with x.T on the left
      (see docs/derivation.md);
    - db = dZ summed over the rows, shape (n_out,);
    - dx = dZ @ W.T, shape of x, or None when ``need_dx=False`` (one GEMM fewer; the
      first layer of a network needs no dx).

    Parameters
    ----------
    dout : ndarray, shape (..., n_out)
        Upstream gradient.
    x : ndarray, shape (..., n_in)
        The forward pass's input.
    W : ndarray, shape (n_in, n_out)
        The forward pass's weights.
    out : ndarray, shape (..., n_out)
        The forward pass's result; the sigmoid is never recomputed.
    need_dx : bool, default True
        Compute dx.
    dx, dW, db : ndarray, optional
        C-contiguous, writeable buffers for the results (shapes as above).

    Gradients are returned fresh (or written into the given buffers), never
    accumulated into existing values. All arrays share one dtype, float32 or float64.

    Returns
    -------
    (dx, dW, db) : tuple of ndarray (dx may be None)

    Raises
    ------
    TypeError
        A non-array argument, an unsupported dtype, or mixed dtypes.
    ValueError
        Shapes that do not fit together, or an unusable buffer.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> x = np.ones((2, 3)); W = np.zeros((3, 1)); b = np.zeros(1)
    >>> out = siglayer.forward(x, W, b)
    >>> dx, dW, db = siglayer.backward(np.ones((2, 1)), x, W, out)
    >>> dW.ravel()  # each of the 2 rows adds 1 * 0.5 * 0.5 * x = 0.25
    array([0.5, 0.5, 0.5])
    """
    if type(x) is _ndarray and x.ndim == 2 and type(dout) is _ndarray and dout.ndim == 2:
        return _core.backward(dout, x, W, out, need_dx, dx, dW, db)  # type: ignore[no-any-return]
    arrays = {"dout": dout, "x": x, "W": W, "out": out}
    if not all(isinstance(a, _ndarray) for a in arrays.values()):
        return _core.backward(dout, x, W, out, need_dx, dx, dW, db)  # type: ignore[no-any-return]
    if x.ndim == 0:
        raise ValueError("x must have shape (..., n_in), got a 0-d array")
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (n_in, n_out), got shape {W.shape}")
    n_in, n_out = W.shape
    if x.shape[-1] != n_in:
        raise ValueError(f"W has shape {W.shape} but x has {x.shape[-1]} features (shape {x.shape})")
    lead = x.shape[:-1]
    for name in ("out", "dout"):
        if arrays[name].shape != (*lead, n_out):
            raise ValueError(
                f"{name} has shape {arrays[name].shape}, expected {(*lead, n_out)} "
                f"from x {x.shape} and W {W.shape}"
            )
    rows = math.prod(lead)
    dx2 = _as_2d_buffer(dx, "dx", x.shape) if dx is not None else None
    dx_r, dW_r, db_r = _core.backward(
        dout.reshape(rows, n_out), x.reshape(rows, n_in), W, out.reshape(rows, n_out),
        need_dx, dx2, dW, db,
    )
    if dx_r is not None:
        dx_r = dx if dx is not None else dx_r.reshape(x.shape)
    return dx_r, dW_r, db_r


def backward_from_preactivation(
    dZ: Array,
    x: Array,
    W: Array,
    *,
    need_dx: bool = True,
    dx: Array | None = None,
    dW: Array | None = None,
    db: Array | None = None,
) -> tuple[Array | None, Array, Array]:
    """Backward pass from dZ, the gradient with respect to the pre-activation ``x @ W + b``.

    The same products as :func:`backward` without its first step (dZ = dout * out *
    (1 - out)): dW = x.T @ dZ, db = dZ summed over the rows, dx = dZ @ W.T. Use it when
    the loss gives dZ directly, as binary cross-entropy fused with the sigmoid does:
    dZ = (out - y) / N, with no division by out * (1 - out), which is 0 where the
    sigmoid saturates (see :mod:`siglayer.losses`).

    Parameters
    ----------
    dZ : ndarray, shape (..., n_out)
        Gradient of the loss with respect to ``x @ W + b``.
    x : ndarray, shape (..., n_in)
        The forward pass's input.
    W : ndarray, shape (n_in, n_out)
        The forward pass's weights.
    need_dx : bool, default True
        Compute dx (one product fewer without it).
    dx, dW, db : ndarray, optional
        C-contiguous, writeable buffers for the results, of shapes x.shape,
        (n_in, n_out) and (n_out,); they must not overlap an input or each other.

    All arrays share one dtype, float32 or float64. C- and F-ordered dZ is used as it
    is; other layouts are copied once into scratch memory. Gradients are overwritten,
    never accumulated; db is bitwise the same for any thread count.

    Returns
    -------
    (dx, dW, db) : tuple of ndarray (dx is None when ``need_dx=False``)

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
    if type(x) is _ndarray and x.ndim == 2 and type(dZ) is _ndarray and dZ.ndim == 2:
        return _core.backward_from_preactivation(  # type: ignore[no-any-return]
            dZ, x, W, need_dx, dx, dW, db
        )
    if not (isinstance(dZ, _ndarray) and isinstance(x, _ndarray) and isinstance(W, _ndarray)):
        # The core raises the TypeError naming the argument.
        return _core.backward_from_preactivation(dZ, x, W, need_dx, dx, dW, db)
    if x.ndim == 0:
        raise ValueError("x must have shape (..., n_in), got a 0-d array")
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (n_in, n_out), got shape {W.shape}")
    n_in, n_out = W.shape
    if x.shape[-1] != n_in:
        raise ValueError(
            f"W has shape {W.shape} but x has {x.shape[-1]} features (shape {x.shape})"
        )
    lead = x.shape[:-1]
    if dZ.shape != (*lead, n_out):
        raise ValueError(
            f"dZ has shape {dZ.shape}, expected {(*lead, n_out)} from x {x.shape} and W {W.shape}"
        )
    rows = math.prod(lead)
    dx2 = _as_2d_buffer(dx, "dx", x.shape) if dx is not None else None
    dx_r, dW_r, db_r = _core.backward_from_preactivation(
        dZ.reshape(rows, n_out), x.reshape(rows, n_in), W, need_dx, dx2, dW, db
    )
    if dx_r is not None:
        dx_r = dx if dx is not None else dx_r.reshape(x.shape)
    return dx_r, dW_r, db_r


def _as_2d_buffer(buf: object, name: str, shape: tuple[int, ...]) -> Array:
    """A caller's output buffer of the given N-d shape as a 2-D view (never a copy)."""
    if not isinstance(buf, _ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(buf).__name__}")
    if buf.shape != shape:
        raise ValueError(f"{name} has shape {buf.shape}, expected {shape}")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (strides {buf.strides})")
    return buf.reshape(math.prod(shape[:-1]), shape[-1])
