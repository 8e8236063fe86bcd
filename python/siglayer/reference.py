"""The dense + sigmoid layer in plain NumPy, written for clarity.

This is the oracle the tests and ``python -m siglayer`` compare the compiled core
against. Shapes: x is (..., n_in), W is (n_in, n_out), b is (n_out,), and
out = sigmoid(x @ W + b) is (..., n_out).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

__all__ = ["sigmoid", "forward", "backward"]


def sigmoid(z: NDArray[np.floating]) -> NDArray[np.floating]:
    """1 / (1 + exp(-z)) in a form that never overflows.

    With t = exp(-|z|) <= 1: sigmoid(z) = 1 / (1 + t) for z >= 0 and t / (1 + t)
    for z < 0. Gives exactly 1 at +inf, 0 at -inf and NaN at NaN, without warnings.
    """
    t = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + t), t / (1 + t))


def forward(
    x: NDArray[np.floating], W: NDArray[np.floating], b: NDArray[np.floating]
) -> NDArray[np.floating]:
    """out = sigmoid(x @ W + b); x is (..., n_in), returns (..., n_out)."""
    return sigmoid(x @ W + b.reshape(-1))


def backward(
    dout: NDArray[np.floating],
    x: NDArray[np.floating],
    W: NDArray[np.floating],
    out: NDArray[np.floating],
    *,
    need_dx: bool = True,
) -> tuple[NDArray[np.floating] | None, NDArray[np.floating], NDArray[np.floating]]:
    """Gradients of a loss L given dout = dL/dout.

    dZ = dout * out * (1 - out) is the gradient with respect to the pre-activation
    Z = x @ W + b. Every row of the batch contributes to W and b, so their gradients
    sum over the rows: dW = x.T @ dZ, db = dZ.sum(axis=0). dx = dZ @ W.T.
    """
    n_in, n_out = W.shape
    rows = math.prod(x.shape[:-1])
    x2 = x.reshape(rows, n_in)
    dZ = (dout * out * (1 - out)).reshape(rows, n_out)
    dW = x2.T @ dZ
    db = dZ.sum(axis=0)
    dx = (dZ @ W.T).reshape(x.shape) if need_dx else None
    return dx, dW, db
