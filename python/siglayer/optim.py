"""Optimizers that update a network's parameters in place: :class:`SGD`, :class:`Adam`
and :class:`AdamW`.

They follow torch.optim.SGD, torch.optim.Adam and torch.optim.AdamW: the same formulas,
hyperparameter names and defaults (SGD's lr=1e-3; AdamW's weight_decay=1e-2, Adam's 0),
computed in the parameters' own precision. Every hyperparameter is checked by the rules
of torch's constructors (and is also required to be finite; dampening, which torch does
not check, >= 0), both at construction and when assigned between steps
(``optimizer.momentum = 0.9``). The differences from torch: one parameter group, the
hyperparameters after ``lr`` are keyword-only, and torch's other options (``maximize``,
``amsgrad``, ``foreach``, ``fused``, ...) do not exist. Each
``step()`` is one call into the compiled core for all parameters; arrays of 65536
elements or more are split between the OpenMP threads (``siglayer.set_num_threads``).

Gradients are read from each :class:`~siglayer.Parameter`'s ``grad`` array, which the
backward pass overwrites (not accumulates): ``zero_grad()`` exists for PyTorch habits and
for code that adds into the gradients itself, but a plain loop does not need it.
``state_dict()`` / ``load_state_dict()`` save and restore an optimizer mid-training, so
that a resumed run continues bitwise as if it had not stopped; :func:`flatten_state_dict`
turns the state into arrays for ``np.savez`` and :func:`unflatten_state_dict` turns what
``np.load`` gives back into a state for ``load_state_dict``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar, cast, overload

import numpy as np
from numpy.typing import NDArray

from . import _core
from ._dtypes import FLOAT_DTYPES
from .nn import Parameter

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "flatten_state_dict", "unflatten_state_dict"]

Array = NDArray[np.floating]
V = TypeVar("V")

_STATE_KEYS = frozenset({"type", "steps", "hyper", "params", "state"})


def _hyper(value: object, name: str, *, low: float = 0.0, below: float | None = None) -> float:
    """A finite float >= low (and < below when given), or a clear error."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]  # a 0-d array (as torch takes one): the number it holds
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        v = float(value)
    except OverflowError:  # an int beyond float's range
        v = math.inf
    if not math.isfinite(v) or v < low or (below is not None and v >= below):
        bound = f"in [{low}, {below})" if below is not None else f">= {low}"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def _flag(value: object, name: str) -> bool:
    """A bool (Python's or NumPy's), or a TypeError: 0 and 1 are not taken for flags."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def _betas(value: object) -> tuple[float, float]:
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = tuple(value)  # as np.load or a user's np.array gives a pair
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"betas must be a pair of floats, got {value!r}")
    return (_hyper(value[0], "betas[0]", below=1.0), _hyper(value[1], "betas[1]", below=1.0))


def _from_numpy(value: object) -> Any:
    """What np.savez / np.load turn a Python value into, back to that value: a 0-d array or
    a NumPy scalar to the Python scalar it holds (np.int64 -> int, np.bool_ -> bool,
    np.str_ -> str: the same kind, never another), a 1-d array to a tuple of them.
    Anything else is returned unchanged, for the checks that follow to judge."""
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            value = value[()]
        elif value.ndim == 1 and value.dtype.kind in "biufU":
            return tuple(v.item() for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


class _Hyperparameter(Generic[V]):
    """A hyperparameter of an optimizer, read as it is and assigned through the
    optimizer's checks (``_update_hyper``: all its hyperparameters checked together, the
    same rules as the constructor's, nothing changed on a refusal)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.attr = name, "_" + name

    @overload
    def __get__(self, obj: None, owner: type) -> _Hyperparameter[V]: ...
    @overload
    def __get__(self, obj: Optimizer, owner: type) -> V: ...
    def __get__(self, obj: Optimizer | None, owner: type) -> V | _Hyperparameter[V]:
        return self if obj is None else cast("V", getattr(obj, self.attr))

    def __set__(self, obj: Optimizer, value: V) -> None:
        obj._update_hyper(self.name, value)


# Adam's step count reaches the core as a signed 64-bit integer (step + 1).
_MAX_STEPS = 2**62


def _check_steps(steps: object, name: str = "steps") -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps < _MAX_STEPS:
        raise ValueError(f"{name} must be an int in [0, 2**62), got {steps!r}")


# torch.optim's options that siglayer.optim does not have: set on an optimizer, they would
# be kept and never read.
_TORCH_ONLY = frozenset({"maximize", "amsgrad", "foreach", "fused", "capturable", "differentiable"})
# Other spellings of a setting (lower case): the setting meant, where this optimizer has it.
_ALIASES = {
    "learning_rate": "lr",
    "weightdecay": "weight_decay",
    "wd": "weight_decay",
    "epsilon": "eps",
    "beta1": "betas",
    "beta2": "betas",
    "beta": "betas",
}


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
                q = self.params[j]
                if np.shares_memory(p.value, q.value):
                    raise ValueError(
                        f"parameters {j} ({q.name}) and {i} "
                        f"({p.name}) share memory; each must be updated once"
                    )
                for a, b in ((p, q), (q, p)):
                    if np.shares_memory(a.grad, b.value):
                        raise ValueError(
                            f"{a.name}'s grad shares memory with {b.name}'s value: the "
                            f"update of one would change what the other reads"
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
    # state_dict() records. A list named in _optional_state holds None for every parameter
    # until the optimizer first needs it (SGD's velocities, as torch's momentum_buffer).
    _state_names: tuple[str, ...] = ()
    _optional_state: tuple[str, ...] = ()
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

    def __setattr__(self, name: str, value: object) -> None:
        # A new public attribute whose name is close to a hyperparameter's is a typo
        # (opt.weight_decy = 0.1 would otherwise be kept and never read: a review found
        # it silently ignored), and so is one of torch.optim's options that siglayer does
        # not have (opt.amsgrad = True, a review, helper-88) or another spelling of a
        # setting (LR, epsilon, wd, beta1); other new names are the caller's own.
        if not name.startswith("_") and name not in self.__dict__ and not hasattr(type(self), name):
            cls = type(self).__name__
            hypers = type(self)._hyper_names
            own = f"Its settings are {', '.join(hypers)}"
            if name in _TORCH_ONLY:
                raise AttributeError(
                    f"{cls} has no setting {name!r}: an option of torch.optim's that "
                    f"siglayer.optim does not have (docs/guide.md, siglayer.optim). {own}"
                )
            close = difflib.get_close_matches(name.lower(), hypers, n=1, cutoff=0.8)
            meant = _ALIASES.get(name.lower()) or (close[0] if close else None)
            if meant in hypers:
                raise AttributeError(
                    f"{cls} has no setting {name!r}: did you mean {meant!r}? {own}"
                )
            if meant is not None or name in set(SGD._hyper_names) | set(Adam._hyper_names):
                raise AttributeError(f"{cls} has no setting {name!r}. {own}")  # another's
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper_names)
        return f"{type(self).__name__}({len(self.params)} parameters, {hyper}, steps={self.steps})"

    def _hyper_values(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._hyper_names}

    def _update_hyper(self, name: str, value: object) -> None:
        """Assign one hyperparameter through _set_hyper: checked together with the others."""
        self._set_hyper({**self._hyper_values(), name: value})

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs besides the parameters themselves: copies.

        Returns
        -------
        dict
            ``{"type": class name, "steps": int, "hyper": {name: value},
            "params": [(name, shape, dtype str)], "state": {list name: [ndarray or
            None per parameter]}}``: plain Python and NumPy objects, independent of later
            steps. Picklable as it is; :func:`flatten_state_dict` makes it a flat dict of
            arrays for ``np.savez``.

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
            "hyper": self._hyper_values(),
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

        Scalars may come as NumPy scalars or 0-d arrays and tuples as 1-d arrays, as
        ``np.load`` gives them back (see :func:`unflatten_state_dict`); they are taken as
        the Python values they hold, of the same kind (an integer step count, a bool
        flag), never converted from another kind. Every check runs before anything
        changes; the state arrays are copied in.

        Raises
        ------
        TypeError
            ``state`` is not a mapping, or comes from another kind of optimizer, or a
            hyperparameter has the wrong type.
        ValueError
            Its parameters, state lists or arrays do not match this optimizer's, or a
            hyperparameter is out of range.
        """
        if not isinstance(state, Mapping) or not _STATE_KEYS <= set(state):
            raise TypeError("state must be a dict returned by Optimizer.state_dict()")
        kind = _from_numpy(state["type"])
        if kind != type(self).__name__:
            raise TypeError(f"state is from {kind}, this optimizer is {type(self).__name__}")
        mine = [(p.name, p.value.shape, p.value.dtype.str) for p in self.params]
        theirs = [
            (_from_numpy(n), tuple(_from_numpy(k) for k in s), _from_numpy(d))
            for n, s, d in state["params"]
        ]
        if theirs != mine:
            raise ValueError(f"state is for parameters {theirs}, this optimizer has {mine}")
        if set(state["state"]) != set(self._state_names):
            raise ValueError(
                f"state holds {sorted(state['state'])}, expected {sorted(self._state_names)}"
            )
        for name in self._state_names:
            arrays = list(state["state"][name])
            if len(arrays) != len(self.params):
                raise ValueError(
                    f"state['state']['{name}'] has {len(arrays)} entries, expected "
                    f"{len(self.params)}"
                )
            if name in self._optional_state:
                if len({a is None for a in arrays}) > 1:
                    raise ValueError(
                        f"state['state']['{name}'] must hold an array for every parameter "
                        f"or None for every parameter"
                    )
            for i, (p, a) in enumerate(zip(self.params, arrays, strict=True)):
                if a is None and name in self._optional_state:
                    continue
                if (
                    not isinstance(a, np.ndarray)
                    or a.shape != p.value.shape
                    or a.dtype != p.value.dtype
                ):
                    got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                    raise ValueError(
                        f"state['state']['{name}'][{i}] must be a {p.value.dtype} array of "
                        f"shape {p.value.shape} like parameter {p.name}, got {got}"
                    )
        steps = _from_numpy(state["steps"])
        _check_steps(steps, "state['steps']")
        hyper = state["hyper"]
        if not isinstance(hyper, Mapping) or set(hyper) != set(self._hyper_names):
            raise ValueError(
                f"state['hyper'] must hold {sorted(self._hyper_names)}, got "
                f"{sorted(hyper) if isinstance(hyper, Mapping) else hyper!r}"
            )
        # Checks every value before it assigns any.
        self._set_hyper({k: _from_numpy(v) for k, v in hyper.items()})
        for name in self._state_names:
            held = getattr(self, name)
            for i, a in enumerate(state["state"][name]):
                if a is None:
                    held[i] = None
                else:
                    if held[i] is None:
                        held[i] = np.empty_like(self._values[i])
                    np.copyto(held[i], a)
        self.steps = steps

    def _set_hyper(self, hyper: Mapping[str, Any]) -> None:
        """Check every hyperparameter in ``hyper`` (all of _hyper_names), then assign them:
        nothing changes when one is refused."""
        self.lr = hyper["lr"]


def flatten_state_dict(state: Mapping[str, Any]) -> dict[str, NDArray[Any]]:
    """An optimizer's :meth:`~Optimizer.state_dict` as a flat dict of arrays, for
    ``np.savez(file, **flat)`` (no pickling: ``np.load`` reads it back with its default
    ``allow_pickle=False``).

    Parameters
    ----------
    state : dict
        What :meth:`Optimizer.state_dict` returned.

    Returns
    -------
    dict of str to ndarray
        Keys ``type``, ``steps``, ``state_names``, ``hyper/<name>``,
        ``params/<i>/name``, ``params/<i>/shape``, ``params/<i>/dtype`` and
        ``state/<list name>/<i>`` (absent where the state holds None).

    Examples
    --------
    >>> import io, numpy as np, siglayer
    >>> net = siglayer.Sequential(siglayer.SigmoidLayer(4, 2, seed=0))
    >>> opt = siglayer.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> opt.step()
    >>> file = io.BytesIO()
    >>> np.savez(file, **siglayer.optim.flatten_state_dict(opt.state_dict()))
    >>> _ = file.seek(0)
    >>> opt2 = siglayer.optim.SGD(net.parameters())
    >>> with np.load(file) as saved:
    ...     opt2.load_state_dict(siglayer.optim.unflatten_state_dict(saved))
    >>> opt2.steps, opt2.lr, opt2.momentum
    (1, 0.1, 0.9)
    """
    flat: dict[str, NDArray[Any]] = {
        "type": np.array(state["type"]),
        "steps": np.array(state["steps"], np.int64),
        "state_names": np.array(sorted(state["state"]), dtype=np.str_),
    }
    for name, value in state["hyper"].items():
        flat[f"hyper/{name}"] = np.array(value)
    for i, (name, shape, dtype) in enumerate(state["params"]):
        flat[f"params/{i}/name"] = np.array(name)
        flat[f"params/{i}/shape"] = np.array(shape, np.int64).reshape(-1)
        flat[f"params/{i}/dtype"] = np.array(dtype)
    for name, arrays in state["state"].items():
        for i, a in enumerate(arrays):
            if a is not None:
                flat[f"state/{name}/{i}"] = np.asarray(a)
    return flat


def unflatten_state_dict(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_state_dict`, for :meth:`Optimizer.load_state_dict`:
    takes the ``NpzFile`` that ``np.load`` returns (or any mapping of those keys).

    Scalars stay the 0-d arrays ``np.load`` gives; ``load_state_dict`` takes them. State
    arrays are read (copied out of the file) here.

    Parameters
    ----------
    flat : mapping of str to ndarray
        ``np.load(file)`` of a file that ``np.savez(file, **flatten_state_dict(...))``
        wrote.

    Returns
    -------
    dict
        In the layout of :meth:`Optimizer.state_dict`.

    Examples
    --------
    >>> import siglayer
    >>> net = siglayer.Sequential(siglayer.SigmoidLayer(4, 2, seed=0))
    >>> state = siglayer.optim.Adam(net.parameters()).state_dict()
    >>> again = siglayer.optim.unflatten_state_dict(siglayer.optim.flatten_state_dict(state))
    >>> sorted(again), str(again["params"][0][0]), again["hyper"]["betas"].tolist()
    (['hyper', 'params', 'state', 'steps', 'type'], '0.W', [0.9, 0.999])
    """
    if not isinstance(flat, Mapping) or not {"type", "steps", "state_names"} <= set(flat):
        raise TypeError(
            "flat must be a mapping written by flatten_state_dict (e.g. np.load's NpzFile)"
        )
    keys = list(flat)
    count = sum(1 for k in keys if k.startswith("params/") and k.endswith("/name"))
    state_names = [str(n) for n in np.asarray(flat["state_names"]).reshape(-1)]
    return {
        "type": flat["type"],
        "steps": flat["steps"],
        "hyper": {k.removeprefix("hyper/"): flat[k] for k in keys if k.startswith("hyper/")},
        "params": [
            (flat[f"params/{i}/name"], flat[f"params/{i}/shape"], flat[f"params/{i}/dtype"])
            for i in range(count)
        ],
        "state": {
            name: [
                flat[f"state/{name}/{i}"] if f"state/{name}/{i}" in flat else None
                for i in range(count)
            ]
            for name in state_names
        },
    }


def _check_parameter(p: object, i: int) -> None:
    if not isinstance(p, Parameter):
        kind = type(p)
        if kind.__module__.split(".")[0] == "torch":
            raise TypeError(
                f"params[{i}] is a {kind.__module__}.{kind.__qualname__}, not a "
                f"siglayer.Parameter: siglayer.optim updates the NumPy layers' parameters "
                f"(siglayer.SigmoidLayer, siglayer.Sequential); for a siglayer.torch module "
                f"use torch.optim, e.g. torch.optim.Adam(module.parameters())"
            )
        raise TypeError(
            f"params[{i}] must be a siglayer.Parameter (from net.parameters()), got {kind.__name__}"
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
    for what, a in (("value", v), ("grad", g)):
        if not a.flags.aligned:  # a view starting inside an element (np.frombuffer, offset=1)
            raise ValueError(
                f"{p.name}: {what} is not aligned to its item size (it starts inside an "
                f"element's bytes); make the Parameter with aligned arrays (np.zeros, "
                f"np.empty or .copy() give one), which the optimizer then updates in place"
            )
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
    velocity = g on the first step with momentum, then momentum * velocity +
    (1 - dampening) * g; param -= lr * (g + momentum * velocity if nesterov else velocity)
    (with momentum), or param -= lr * g (without).

    Every hyperparameter may be changed between steps (``opt.momentum = 0.9``), checked
    as in the constructor. As in torch, the velocities (torch's momentum buffers) are
    created on the first step with momentum != 0, starting at g, and kept when momentum
    is set to 0 later: set back to non-zero, it continues from them.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float >= 0, default 1e-3
    momentum, dampening, weight_decay : float >= 0, default 0
    nesterov : bool, default False
        Nesterov momentum; needs momentum > 0 and dampening == 0.

    Attributes
    ----------
    velocities : list of (ndarray or None)
        One per parameter; None until the first step with momentum.

    Examples
    --------
    >>> import siglayer
    >>> net = siglayer.Sequential(siglayer.SigmoidLayer(4, 2, seed=0))
    >>> opt = siglayer.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> opt.step()   # after net.backward(...) has filled the gradients
    >>> opt.momentum = -0.5
    Traceback (most recent call last):
    ...
    ValueError: momentum must be finite and >= 0.0, got -0.5
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 1e-3,
        *,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, lr)
        self._set_hyper(
            {
                "lr": lr,
                "momentum": momentum,
                "dampening": dampening,
                "weight_decay": weight_decay,
                "nesterov": nesterov,
            }
        )
        self.velocities: list[Array | None] = [None] * len(self.params)

    _state_names = ("velocities",)
    _optional_state = ("velocities",)
    _hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    momentum = _Hyperparameter[float]()
    dampening = _Hyperparameter[float]()
    weight_decay = _Hyperparameter[float]()
    nesterov = _Hyperparameter[bool]()

    def _set_hyper(self, hyper: Mapping[str, Any]) -> None:
        lr = _hyper(hyper["lr"], "lr")
        momentum = _hyper(hyper["momentum"], "momentum")
        dampening = _hyper(hyper["dampening"], "dampening")
        weight_decay = _hyper(hyper["weight_decay"], "weight_decay")
        nesterov = _flag(hyper["nesterov"], "nesterov")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"nesterov momentum needs momentum > 0 and dampening == 0, got "
                f"momentum={momentum}, dampening={dampening}"
            )
        self._lr, self._momentum, self._dampening = lr, momentum, dampening
        self._weight_decay, self._nesterov = weight_decay, nesterov

    def step(self) -> None:
        """Update every parameter in place from its current gradient."""
        first_with_momentum = self._momentum != 0 and self.velocities[0] is None
        if first_with_momentum:
            self.velocities[:] = [np.zeros_like(v) for v in self._values]
        try:
            _core.sgd_step(
                self._values,
                self._grads,
                self.velocities,
                self._lr,
                self._momentum,
                self._dampening,
                self._weight_decay,
                self._nesterov,
                first_with_momentum,
            )
        except BaseException:
            # The core checked and wrote nothing: the next step is still the first.
            if first_with_momentum:
                self.velocities[:] = [None] * len(self.velocities)
            raise
        self.steps += 1


class Adam(Optimizer):
    """Adam with bias correction, as torch.optim.Adam (decoupled weight decay as AdamW
    with ``decoupled_weight_decay=True``, or the class :class:`AdamW`).

    On step t (1, 2, ...):
    param *= 1 - lr * weight_decay (decoupled only); g = grad + weight_decay * param (L2,
    the default); m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
    param -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).

    Every hyperparameter may be changed between steps (``opt.eps = 1e-6``), checked as in
    the constructor.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float >= 0, default 1e-3
    betas : (float, float), each in [0, 1), default (0.9, 0.999)
    eps : float >= 0, default 1e-8
    weight_decay : float >= 0, default 0
        Also 0 with ``decoupled_weight_decay=True``, as in torch.optim.Adam; the class
        :class:`AdamW` defaults to 1e-2, as torch.optim.AdamW.
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
    >>> opt.eps = -1.0
    Traceback (most recent call last):
    ...
    ValueError: eps must be finite and >= 0.0, got -1.0
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
        self._set_hyper(
            {
                "lr": lr,
                "betas": betas,
                "eps": eps,
                "weight_decay": weight_decay,
                "decoupled_weight_decay": decoupled_weight_decay,
            }
        )
        self.exp_avgs: list[Array] = [np.zeros_like(v) for v in self._values]
        self.exp_avg_sqs: list[Array] = [np.zeros_like(v) for v in self._values]

    _state_names = ("exp_avgs", "exp_avg_sqs")
    _hyper_names = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay")

    betas = _Hyperparameter[tuple[float, float]]()
    eps = _Hyperparameter[float]()
    weight_decay = _Hyperparameter[float]()
    decoupled_weight_decay = _Hyperparameter[bool]()

    def _set_hyper(self, hyper: Mapping[str, Any]) -> None:
        lr = _hyper(hyper["lr"], "lr")
        betas = _betas(hyper["betas"])
        eps = _hyper(hyper["eps"], "eps")
        weight_decay = _hyper(hyper["weight_decay"], "weight_decay")
        decoupled = _flag(hyper["decoupled_weight_decay"], "decoupled_weight_decay")
        self._check_decoupled(decoupled)
        self._lr, self._betas, self._eps = lr, betas, eps
        self._weight_decay, self._decoupled_weight_decay = weight_decay, decoupled

    def _check_decoupled(self, decoupled: bool) -> None:
        """Adam takes either kind of weight decay."""

    def step(self) -> None:
        """Update every parameter in place from its current gradient."""
        _check_steps(self.steps)
        _core.adam_step(
            self._values,
            self._grads,
            self.exp_avgs,
            self.exp_avg_sqs,
            self._lr,
            self._betas[0],
            self._betas[1],
            self._eps,
            self._weight_decay,
            self._decoupled_weight_decay,
            self.steps + 1,
        )
        self.steps += 1


class AdamW(Adam):
    """Adam with decoupled weight decay, as torch.optim.AdamW, with its defaults
    (weight_decay=1e-2): ``Adam(..., decoupled_weight_decay=True)`` with another default.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float >= 0, default 1e-3
    betas : (float, float), each in [0, 1), default (0.9, 0.999)
    eps : float >= 0, default 1e-8
    weight_decay : float >= 0, default 1e-2

    Examples
    --------
    >>> import siglayer
    >>> net = siglayer.Sequential(siglayer.SigmoidLayer(4, 2, seed=0))
    >>> opt = siglayer.optim.AdamW(net.parameters())
    >>> opt.weight_decay, opt.decoupled_weight_decay
    (0.01, True)
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(
            params, lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True
        )

    def _check_decoupled(self, decoupled: bool) -> None:
        if not decoupled:
            raise ValueError(
                "AdamW always decouples its weight decay, got decoupled_weight_decay=False; "
                "use Adam for L2 weight decay"
            )
