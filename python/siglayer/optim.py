"""Optimizers that update a network's parameters in place: :class:`SGD` and :class:`Adam`.

They follow torch.optim.SGD and torch.optim.Adam (same formulas, same hyperparameter
names and defaults), computed in the parameters' own precision. Each ``step()`` is one
call into the compiled core for all parameters; arrays of 65536 elements or more are
split between the OpenMP threads (``siglayer.set_num_threads``).

Gradients are read from each :class:`~siglayer.Parameter`'s ``grad`` array, which the
backward pass overwrites (not accumulates): ``zero_grad()`` exists for PyTorch habits and
for code that adds into the gradients itself, but a plain loop does not need it.
``state_dict()`` / ``load_state_dict()`` save and restore an optimizer mid-training, so
that a resumed run continues bitwise as if it had not stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _core
from ._dtypes import FLOAT_DTYPES
from .nn import Parameter

__all__ = ["SGD", "Adam", "Optimizer"]

Array = NDArray[np.floating]


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

    # Names of the per-parameter state lists (subclasses) and of the hyperparameters that
    # state_dict() records.
    _state_names: tuple[str, ...] = ()
    _hyper_names: tuple[str, ...] = ("lr",)

    def step(self) -> None:
        """Update every parameter in place from its current gradient (in subclasses)."""
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero, in place.

        Not needed before a backward pass, which overwrites the gradients; for code that
        accumulates into them itself (``p.grad += ...``).
        """
        for g in self._grads:
            g.fill(0)

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper_names)
        return f"{type(self).__name__}({len(self.params)} parameters, {hyper}, steps={self.steps})"

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs besides the parameters themselves: copies.

        Returns
        -------
        dict
            ``{"type": class name, "steps": int, "hyper": {name: value},
            "params": [(name, shape, dtype str)], "state": {list name: [ndarray or
            None per parameter]}}``: plain Python and NumPy objects (picklable, and
            ``np.savez``-able after flattening), independent of later steps.

        Examples
        --------
        >>> import siglayer
        >>> net = siglayer.Sequential(siglayer.SigmoidLayer(4, 2, seed=0))
        >>> opt = siglayer.optim.Adam(net.parameters(), lr=1e-2)
        >>> opt.step()
        >>> state = opt.state_dict()
        >>> state["steps"], sorted(state["state"])
        (1, ['exp_avg_sqs', 'exp_avgs'])
        >>> opt2 = siglayer.optim.Adam(net.parameters())
        >>> opt2.load_state_dict(state); opt2.steps, opt2.lr
        (1, 0.01)
        """
        return {
            "type": type(self).__name__,
            "steps": self.steps,
            "hyper": {k: getattr(self, k) for k in self._hyper_names},
            "params": [(p.name, p.value.shape, p.value.dtype.str) for p in self.params],
            "state": {
                name: [None if a is None else a.copy() for a in getattr(self, name)]
                for name in self._state_names
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, for the same kind of optimizer over
        parameters of the same names, shapes and dtypes (parameter values are restored
        separately, e.g. with :func:`siglayer.load_parameters`).

        Every check runs before anything changes; the state arrays are copied in.

        Raises
        ------
        TypeError
            ``state`` is not a mapping, or comes from another kind of optimizer.
        ValueError
            Its parameters, state lists or arrays do not match this optimizer's.
        """
        if not isinstance(state, Mapping) or not {
            "type",
            "steps",
            "hyper",
            "params",
            "state",
        } <= set(state):
            raise TypeError("state must be a dict returned by Optimizer.state_dict()")
        if state["type"] != type(self).__name__:
            raise TypeError(
                f"state is from {state['type']}, this optimizer is {type(self).__name__}"
            )
        mine = [(p.name, p.value.shape, p.value.dtype.str) for p in self.params]
        theirs = [(n, tuple(s), d) for n, s, d in state["params"]]
        if theirs != mine:
            raise ValueError(f"state is for parameters {theirs}, this optimizer has {mine}")
        if set(state["state"]) != set(self._state_names):
            raise ValueError(
                f"state holds {sorted(state['state'])}, expected {sorted(self._state_names)}"
            )
        for name in self._state_names:
            for i, (mine_a, theirs_a) in enumerate(
                zip(getattr(self, name), state["state"][name], strict=True)
            ):
                if (mine_a is None) != (theirs_a is None) or (
                    mine_a is not None
                    and (
                        not isinstance(theirs_a, np.ndarray)
                        or theirs_a.shape != mine_a.shape
                        or theirs_a.dtype != mine_a.dtype
                    )
                ):
                    raise ValueError(
                        f"state['state']['{name}'][{i}] does not match parameter "
                        f"{self.params[i].name} (or the hyperparameters differ: "
                        f"{state['hyper']})"
                    )
        steps = state["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"state['steps'] must be an int >= 0, got {steps!r}")
        old = {k: getattr(self, k) for k in self._hyper_names}
        try:
            self._set_hyper(state["hyper"])
        except (TypeError, ValueError):
            self._set_hyper(old)
            raise
        for name in self._state_names:
            for mine_a, theirs_a in zip(getattr(self, name), state["state"][name], strict=True):
                if mine_a is not None:
                    np.copyto(mine_a, theirs_a)
        self.steps = steps

    def _set_hyper(self, hyper: Mapping[str, Any]) -> None:
        self.lr = hyper["lr"]


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
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{p.name}: {what} has dtype {a.dtype}; optimizers update float32 or float64"
            )
        if not a.flags.c_contiguous:
            raise ValueError(f"{p.name}: {what} must be C-contiguous")
    if not v.flags.writeable:
        raise ValueError(f"{p.name}: value is read-only")
    if g.shape != v.shape or g.dtype != v.dtype:
        # Another shape is a ValueError (checked first, as the binding does); only another
        # dtype, a TypeError, as everywhere in siglayer.
        error = ValueError if g.shape != v.shape else TypeError
        raise error(f"{p.name}: grad is {g.dtype} {g.shape} but value is {v.dtype} {v.shape}")
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

    _state_names = ("velocities",)
    _hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def _set_hyper(self, hyper: Mapping[str, Any]) -> None:
        momentum = _hyper(hyper["momentum"], "momentum")
        if (momentum != 0) != (self.momentum != 0):
            raise ValueError(
                f"state has momentum={momentum}, this optimizer {self.momentum}: with and "
                f"without momentum keep different state"
            )
        nesterov = hyper["nesterov"]
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
        self.lr = hyper["lr"]
        self.momentum = momentum
        self.dampening = _hyper(hyper["dampening"], "dampening")
        self.weight_decay = _hyper(hyper["weight_decay"], "weight_decay")
        self.nesterov = nesterov

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

    _state_names = ("exp_avgs", "exp_avg_sqs")
    _hyper_names = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay")

    def _set_hyper(self, hyper: Mapping[str, Any]) -> None:
        betas = hyper["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        decoupled = hyper["decoupled_weight_decay"]
        if not isinstance(decoupled, bool):
            raise TypeError("decoupled_weight_decay must be a bool")
        self.lr = hyper["lr"]
        self.betas = (
            _hyper(betas[0], "betas[0]", below=1.0),
            _hyper(betas[1], "betas[1]", below=1.0),
        )
        self.eps = _hyper(hyper["eps"], "eps")
        self.weight_decay = _hyper(hyper["weight_decay"], "weight_decay")
        self.decoupled_weight_decay = decoupled

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
