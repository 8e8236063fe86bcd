"""The dense + sigmoid layer and the optimizer updates in plain NumPy, written for clarity.

This is the oracle the tests and ``python -m siglayer`` compare the compiled core
against. Shapes: x is (..., n_in), W is (n_in, n_out), b is (n_out,), and
out = sigmoid(x @ W + b) is (..., n_out). The optimizer updates follow the formulas of
torch.optim.SGD and torch.optim.Adam, in the parameter's dtype.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "sigmoid",
    "forward",
    "backward",
    "backward_from_preactivation",
    "sgd_step",
    "adam_step",
]


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


def backward_from_preactivation(
    dZ: NDArray[np.floating],
    x: NDArray[np.floating],
    W: NDArray[np.floating],
    *,
    need_dx: bool = True,
) -> tuple[NDArray[np.floating] | None, NDArray[np.floating], NDArray[np.floating]]:
    """Gradients of a loss L given dZ = dL/dZ, Z = x @ W + b: backward without its dZ step."""
    n_in, n_out = W.shape
    rows = math.prod(x.shape[:-1])
    dZ2 = dZ.reshape(rows, n_out)
    dW = x.reshape(rows, n_in).T @ dZ2
    db = dZ2.sum(axis=0)
    dx = (dZ2 @ W.T).reshape(x.shape) if need_dx else None
    return dx, dW, db


def sgd_step(
    param: NDArray[np.floating],
    grad: NDArray[np.floating],
    velocity: NDArray[np.floating] | None,
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
    param: NDArray[np.floating],
    grad: NDArray[np.floating],
    exp_avg: NDArray[np.floating],
    exp_avg_sq: NDArray[np.floating],
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
