"""The dense + sigmoid layer and the optimizer updates in plain NumPy, written for clarity.

This is the oracle the tests and ``python -m siglayer`` compare the compiled core
against; it does not use the compiled core at all. Shapes: x is (..., n_in), W is
(n_in, n_out), b is (n_out,) or (1, n_out), and out = sigmoid(x @ W + b) is
(..., n_out). Every function keeps the dtype of its inputs. The optimizer updates follow
the formulas of torch.optim.SGD and torch.optim.Adam, in the parameter's dtype.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from ._typing import Float

__all__ = [
    "sigmoid",
    "forward",
    "backward",
    "backward_from_preactivation",
    "sgd_step",
    "adam_step",
]


def sigmoid(z: NDArray[Float]) -> NDArray[Float]:
    """Elementwise ``1 / (1 + exp(-z))``, in a form that never overflows.

    With t = exp(-|z|) <= 1: sigmoid(z) = 1 / (1 + t) for z >= 0 and t / (1 + t)
    for z < 0.

    Parameters
    ----------
    z : ndarray, any shape, float32 or float64

    Returns
    -------
    ndarray, the shape and dtype of z
        Exactly 1 at +inf, 0 at -inf and NaN at NaN, without floating-point warnings.

    Examples
    --------
    >>> import numpy as np
    >>> from siglayer import reference
    >>> reference.sigmoid(np.array([-np.inf, 0.0, np.inf, np.nan]))
    array([0. , 0.5, 1. , nan])
    """
    # exp(-|z|) underflows to 0 past |z| ~ 745 (float64), as intended: no warning, nor a
    # FloatingPointError under np.seterr(all="raise") (a review found one)
    with np.errstate(under="ignore"):
        t = np.exp(-np.abs(z))
        result: NDArray[Float] = np.where(z >= 0, 1 / (1 + t), t / (1 + t))
    return result


def forward(x: NDArray[Float], W: NDArray[Float], b: NDArray[Float]) -> NDArray[Float]:
    """``sigmoid(x @ W + b)``, the NumPy counterpart of ``siglayer.forward``.

    Parameters
    ----------
    x : ndarray, shape (..., n_in)
    W : ndarray, shape (n_in, n_out)
    b : ndarray, shape (n_out,) or (1, n_out)

    Returns
    -------
    ndarray, shape (..., n_out)
        A new array. Unlike ``siglayer.forward`` nothing is validated beyond what
        NumPy's ``@`` checks, and mixed dtypes follow NumPy's promotion rules.

    Examples
    --------
    >>> import numpy as np
    >>> from siglayer import reference
    >>> reference.forward(np.ones((1, 2)), np.zeros((2, 3)), np.zeros(3))
    array([[0.5, 0.5, 0.5]])
    """
    return sigmoid(x @ W + b.reshape(-1))


def _column_sums(dZ: NDArray[Float]) -> NDArray[Float]:
    """dZ summed over its rows, accumulated in float64 (NumPy's sum over axis 0 is a
    running sum, which in float32 loses ~1e-4 relative at 10^6 rows) and rounded once."""
    total: NDArray[np.float64] = dZ.sum(axis=0, dtype=np.float64)
    return total.astype(dZ.dtype, copy=False)


def backward(
    dout: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    out: NDArray[Float],
    *,
    need_dx: bool = True,
) -> tuple[NDArray[Float] | None, NDArray[Float], NDArray[Float]]:
    """Gradients of a loss L given dout = dL/dout, the counterpart of ``siglayer.backward``.

    dZ = dout * out * (1 - out) is the gradient with respect to the pre-activation
    Z = x @ W + b. Every row of the batch contributes to W and b, so their gradients
    sum over the rows: dW = x.T @ dZ, db = dZ.sum(axis=0). dx = dZ @ W.T.

    Parameters
    ----------
    dout : ndarray, shape (..., n_out)
    x : ndarray, shape (..., n_in)
    W : ndarray, shape (n_in, n_out)
    out : ndarray, shape (..., n_out)
        The result of ``forward``.
    need_dx : bool, default True
        With False, dx is None.

    Returns
    -------
    dx : ndarray, shape (..., n_in), or None
    dW : ndarray, shape (n_in, n_out)
    db : ndarray, shape (n_out,)

    Examples
    --------
    >>> import numpy as np
    >>> from siglayer import reference
    >>> x = np.array([[1.0, 2.0]]); W = np.array([[0.5], [-0.25]])
    >>> out = reference.forward(x, W, np.zeros(1))  # sigmoid(0) = 0.5
    >>> dx, dW, db = reference.backward(np.ones((1, 1)), x, W, out)
    >>> dW.ravel(), db, dx
    (array([0.25, 0.5 ]), array([0.25]), array([[ 0.125 , -0.0625]]))
    """
    n_in, n_out = W.shape
    rows = math.prod(x.shape[:-1])
    x2 = x.reshape(rows, n_in)
    dZ = (dout * out * (1 - out)).reshape(rows, n_out)
    dW = x2.T @ dZ
    db = _column_sums(dZ)
    dx = (dZ @ W.T).reshape(x.shape) if need_dx else None
    return dx, dW, db


def backward_from_preactivation(
    dZ: NDArray[Float],
    x: NDArray[Float],
    W: NDArray[Float],
    *,
    need_dx: bool = True,
) -> tuple[NDArray[Float] | None, NDArray[Float], NDArray[Float]]:
    """Gradients of a loss L given dZ = dL/dZ, Z = x @ W + b: backward without its dZ step.

    The counterpart of ``siglayer.backward_from_preactivation``.

    Parameters
    ----------
    dZ : ndarray, shape (..., n_out)
    x : ndarray, shape (..., n_in)
    W : ndarray, shape (n_in, n_out)
    need_dx : bool, default True
        With False, dx is None.

    Returns
    -------
    dx : ndarray, shape (..., n_in), or None
        ``dZ @ W.T``.
    dW : ndarray, shape (n_in, n_out)
        ``x.T @ dZ`` (batch dimensions flattened into rows).
    db : ndarray, shape (n_out,)
        dZ summed over the rows.

    Examples
    --------
    >>> import numpy as np
    >>> from siglayer import reference
    >>> dx, dW, db = reference.backward_from_preactivation(
    ...     np.full((2, 1), 0.5), np.ones((2, 3)), np.zeros((3, 1)))
    >>> dW.ravel(), db
    (array([1., 1., 1.]), array([1.]))
    """
    n_in, n_out = W.shape
    rows = math.prod(x.shape[:-1])
    dZ2 = dZ.reshape(rows, n_out)
    dW = x.reshape(rows, n_in).T @ dZ2
    db = _column_sums(dZ2)
    dx = (dZ2 @ W.T).reshape(x.shape) if need_dx else None
    return dx, dW, db


def sgd_step(
    param: NDArray[Float],
    grad: NDArray[Float],
    velocity: NDArray[Float] | None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    first_step: bool = False,
) -> None:
    """One SGD update of ``param`` (and ``velocity``) in place, as torch.optim.SGD does it.

    g = grad + weight_decay * param; the velocity starts at g and is then
    momentum * velocity + (1 - dampening) * g; the step is g + momentum * velocity
    (Nesterov), the velocity (momentum), or g (no momentum); param -= lr * step.

    Parameters
    ----------
    param : ndarray
        Updated in place.
    grad : ndarray, param's shape and dtype
    velocity : ndarray, param's shape and dtype, or None
        The momentum buffer, updated in place; needed when momentum != 0.
    lr, momentum, dampening, weight_decay : float
        As in torch.optim.SGD.
    nesterov : bool
        Nesterov momentum.
    first_step : bool
        The first update, which sets the velocity to g.

    Examples
    --------
    >>> import numpy as np
    >>> from siglayer import reference
    >>> param = np.array([1.0, 2.0]); velocity = np.zeros(2)
    >>> reference.sgd_step(param, np.array([1.0, -1.0]), velocity, lr=0.5, momentum=0.9,
    ...                    first_step=True)
    >>> param, velocity
    (array([0.5, 2.5]), array([ 1., -1.]))
    """
    dtype = param.dtype.type
    g = grad + dtype(weight_decay) * param if weight_decay != 0 else grad.copy()
    if momentum != 0:
        assert velocity is not None
        if first_step:
            velocity[...] = g
        else:
            velocity[...] = dtype(momentum) * velocity + dtype(1 - dampening) * g
        g = g + dtype(momentum) * velocity if nesterov else velocity.copy()
    param -= dtype(lr) * g


def adam_step(
    param: NDArray[Float],
    grad: NDArray[Float],
    exp_avg: NDArray[Float],
    exp_avg_sq: NDArray[Float],
    *,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
) -> None:
    """One Adam update (step 1, 2, ...) of ``param`` and its moments in place.

    As torch.optim.Adam: L2 weight decay adds weight_decay * param to the gradient,
    decoupled (AdamW) multiplies param by 1 - lr * weight_decay first; the moments are
    exponential averages of g and g * g; the step is
    lr / (1 - beta1**step) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2**step) + eps).

    Parameters
    ----------
    param : ndarray
        Updated in place.
    grad : ndarray, param's shape and dtype
    exp_avg, exp_avg_sq : ndarray, param's shape and dtype
        The first and second moments, updated in place (zeros before step 1).
    step : int
        1 for the first update.
    lr, beta1, beta2, eps, weight_decay : float
        As in torch.optim.Adam.
    decoupled_weight_decay : bool
        AdamW's weight decay instead of L2.

    Examples
    --------
    >>> import numpy as np
    >>> from siglayer import reference
    >>> param, m, v = np.array([1.0]), np.zeros(1), np.zeros(1)
    >>> reference.adam_step(param, np.array([2.0]), m, v, step=1, lr=0.1)
    >>> param.round(6)  # the first step moves by lr * sign(grad)
    array([0.9])
    """
    dtype = param.dtype.type
    if weight_decay != 0 and decoupled_weight_decay:
        param *= dtype(1 - lr * weight_decay)
    l2 = weight_decay != 0 and not decoupled_weight_decay
    g = grad + dtype(weight_decay) * param if l2 else grad
    exp_avg[...] = dtype(beta1) * exp_avg + dtype(1 - beta1) * g
    exp_avg_sq[...] = dtype(beta2) * exp_avg_sq + dtype(1 - beta2) * (g * g)
    step_size = dtype(lr / (1 - beta1**step))
    denom = np.sqrt(exp_avg_sq) / dtype(math.sqrt(1 - beta2**step)) + dtype(eps)
    param -= step_size * (exp_avg / denom)
