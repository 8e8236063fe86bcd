"""Optimizers that update a network's parameters in place: :class:`SGD` and :class:`Adam`.

They follow torch.optim.SGD and torch.optim.Adam (same formulas, same hyperparameter
names and defaults), computed in the parameters' own precision. Each ``step()`` is one
call into the compiled core for all parameters; arrays of 65536 elements or more are
split between the OpenMP threads (``siglayer.set_num_threads``).

Gradients are read from each :class:`~siglayer.Parameter`'s ``grad`` array, which the
backward pass overwrites: there is no ``zero_grad`` to call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from . import _core
from .nn import Parameter

__all__ = ["SGD", "Adam", "Optimizer"]

Array = NDArray[np.floating]
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _hyper(value: object, name: str, *, low: float = 0.0, below: float | None = None) -> float:
    """A finite float >= low (and < below when given), or a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < low or (below is not None and v >= below):
        bound = f"in [{low}, {below})" if below is not None else f">= {low}"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return v


class Optimizer:
    """Base class: holds the parameters and the learning rate; ``step()`` updates.

    Parameters
    ----------
    params : iterable of Parameter
        Usually ``net.parameters()``. Values must be writeable, C-contiguous float32 or
        float64 arrays, each with a gradient of the same shape and dtype; no two
        parameters may share memory.
    lr : float >= 0
        Learning rate; may be changed between steps (``optimizer.lr = 0.01``).

    Examples
    --------
    >>> import siglayer
    >>> net = siglayer.Sequential(siglayer.SigmoidLayer(4, 2, seed=0))
    >>> opt = siglayer.optim.SGD(net.parameters(), lr=0.1)
    >>> isinstance(opt, siglayer.optim.Optimizer), opt.lr, opt.steps
    (True, 0.1, 0)
    """

    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
        if hasattr(params, "parameters") and not isinstance(params, (list, tuple)):
            raise TypeError(
                f"params must be an iterable of Parameter; pass "
                f"{type(params).__name__.lower()}.parameters()"
            )
        self.params: list[Parameter] = list(params)
        if not self.params:
            raise ValueError("the optimizer got an empty parameter list")
        for i, p in enumerate(self.params):
            _check_parameter(p, i)
        for i, p in enumerate(self.params):
            for j in range(i):
                if np.shares_memory(p.value, self.params[j].value):
                    raise ValueError(
                        f"parameters {j} ({self.params[j].name}) and {i} "
                        f"({p.name}) share memory; each must be updated once"
                    )
        self._values = [p.value for p in self.params]
        self._grads = [p.grad for p in self.params]
        self.lr = lr
        self.steps = 0

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _hyper(value, "lr")

    def step(self) -> None:
        """Update every parameter in place from its current gradient (in subclasses)."""
        raise NotImplementedError


def _check_parameter(p: object, i: int) -> None:
    if not isinstance(p, Parameter):
        raise TypeError(
            f"params[{i}] must be a siglayer.Parameter (from net.parameters()), "
            f"got {type(p).__name__}"
        )
    v, g = p.value, p.grad
    for what, a in (("value", v), ("grad", g)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{p.name}: {what} must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"{p.name}: {what} has dtype {a.dtype}; optimizers update float32 or float64"
            )
        if not a.flags.c_contiguous:
            raise ValueError(f"{p.name}: {what} must be C-contiguous")
    if not v.flags.writeable:
        raise ValueError(f"{p.name}: value is read-only")
    if g.shape != v.shape or g.dtype != v.dtype:
        raise ValueError(f"{p.name}: grad is {g.dtype} {g.shape} but value is {v.dtype} {v.shape}")
    if np.shares_memory(v, g):
        raise ValueError(f"{p.name}: value and grad share memory")


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and weight decay, as torch.optim.SGD.

    On each step, with g = grad + weight_decay * param:
    velocity = g on the first step, then momentum * velocity + (1 - dampening) * g;
    param -= lr * (g + momentum * velocity if nesterov else velocity) (with momentum),
    or param -= lr * g (without).

    Parameters
    ----------
    params : iterable of Parameter
    lr : float >= 0
    momentum, dampening, weight_decay : float >= 0
    nesterov : bool
        Nesterov momentum; needs momentum > 0 and dampening == 0.

    Examples
    --------
    >>> import siglayer
    >>> net = siglayer.Sequential(siglayer.SigmoidLayer(4, 2, seed=0))
    >>> opt = siglayer.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> opt.step()   # after net.backward(...) has filled the gradients
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float,
        *,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, lr)
        self.momentum = _hyper(momentum, "momentum")
        self.dampening = _hyper(dampening, "dampening")
        self.weight_decay = _hyper(weight_decay, "weight_decay")
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening == 0")
        self.nesterov = nesterov
        self.velocities: list[Array | None] = [
            np.zeros_like(v) if self.momentum != 0 else None for v in self._values
        ]

    def step(self) -> None:
        """Update every parameter in place from its current gradient."""
        _core.sgd_step(
            self._values,
            self._grads,
            self.velocities,
            self._lr,
            self.momentum,
            self.dampening,
            self.weight_decay,
            self.nesterov,
            self.steps == 0,
        )
        self.steps += 1


class Adam(Optimizer):
    """Adam with bias correction, as torch.optim.Adam (AdamW with
    ``decoupled_weight_decay=True``).

    On step t (1, 2, ...):
    param *= 1 - lr * weight_decay (decoupled only); g = grad + weight_decay * param (L2,
    the default); m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
    param -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).

    Parameters
    ----------
    params : iterable of Parameter
    lr : float >= 0, default 1e-3
    betas : (float, float), each in [0, 1), default (0.9, 0.999)
    eps : float >= 0, default 1e-8
    weight_decay : float >= 0, default 0
    decoupled_weight_decay : bool, default False

    Attributes
    ----------
    exp_avgs, exp_avg_sqs : list of ndarray
        The moment estimates m and v, one per parameter.

    Examples
    --------
    >>> import siglayer
    >>> net = siglayer.Sequential(siglayer.SigmoidLayer(4, 2, seed=0))
    >>> opt = siglayer.optim.Adam(net.parameters(), lr=1e-2)
    >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
    ) -> None:
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        self.betas = (
            _hyper(betas[0], "betas[0]", below=1.0),
            _hyper(betas[1], "betas[1]", below=1.0),
        )
        self.eps = _hyper(eps, "eps")
        self.weight_decay = _hyper(weight_decay, "weight_decay")
        if not isinstance(decoupled_weight_decay, bool):
            raise TypeError("decoupled_weight_decay must be a bool")
        self.decoupled_weight_decay = decoupled_weight_decay
        self.exp_avgs: list[Array] = [np.zeros_like(v) for v in self._values]
        self.exp_avg_sqs: list[Array] = [np.zeros_like(v) for v in self._values]

    def step(self) -> None:
        """Update every parameter in place from its current gradient."""
        _core.adam_step(
            self._values,
            self._grads,
            self.exp_avgs,
            self.exp_avg_sqs,
            self._lr,
            self.betas[0],
            self.betas[1],
            self.eps,
            self.weight_decay,
            self.decoupled_weight_decay,
            self.steps + 1,
        )
        self.steps += 1
