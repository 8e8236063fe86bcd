"""Layer objects for training loops: :class:`SigmoidLayer`, :class:`Sequential`, and saving
and loading their parameters.

A layer owns its weights and the gradients that its backward pass fills::

    net = siglayer.Sequential(siglayer.SigmoidLayer(64, 32, seed=0),
                              siglayer.SigmoidLayer(32, 10, seed=1))
    loss_fn = siglayer.losses.BCELoss()
    optimizer = siglayer.optim.Adam(net.parameters(), lr=1e-2)
    for x, y in batches:
        out = net(x)                                       # (n, 10)
        loss = loss_fn(out, y)                             # float
        net.backward_from_preactivation(loss_fn.backward())
        optimizer.step()

Every call returns a new array, as NumPy and PyTorch do, so ``[net(x) for x in batches]``
holds every batch's output. A loop that wants to allocate nothing after its first step
builds its layers with ``reuse_buffers=True``: each layer then returns its own buffer,
overwritten by the next call with the same shapes.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any, Generic, Literal, NoReturn, Protocol, cast, overload, runtime_checkable

import numpy as np
from numpy.typing import DTypeLike, NDArray

from . import _api, _core
from ._buffers import BufferCache, not_an_ndarray, refuse_matrix_or_masked, refuse_overlap
from ._dtypes import is_bfloat16, layer_dtype
from ._gradients import refuse_kind
from ._typing import Float

__all__ = ["Layer", "Parameter", "Sequential", "SigmoidLayer", "load_parameters", "save_parameters"]

Array = NDArray[np.floating]
_ndarray = np.ndarray


def _same_array(owner: str, name: str, current: object, value: object) -> None:
    """Accept ``value`` only if it is the array already held (what ``a -= b`` hands back).

    ``layer.W -= lr * layer.dW`` first updates W in place, then assigns the very same
    array back; that assignment must succeed, or the update would be applied and then
    reported as an error. A different object is refused before anything changes.
    """
    if value is current:
        return
    raise AttributeError(
        f"{owner}.{name} cannot be rebound to another object (got {type(value).__name__}; "
        f"optimizers hold the array itself): change it in place, e.g. "
        f"{owner}.{name}[...] = values or {owner}.{name} -= step"
    )


class _InPlaceOnly:
    """An array attribute that changes only in place: reading gives the array held in
    ``_<name>``; assigning it back, which is what ``obj.W -= step`` ends with, is
    accepted; assigning anything else is refused (:func:`_same_array`). The one
    definition behind a layer's W, b, dW, db and a Parameter's value and grad."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._name = self._slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name, self._slot = name, "_" + name

    @overload
    def __get__(self, obj: None, objtype: object = None) -> _InPlaceOnly: ...
    @overload
    def __get__(self, obj: SigmoidLayer[Float], objtype: object = None) -> NDArray[Float]: ...
    @overload
    def __get__(self, obj: Parameter, objtype: object = None) -> Array: ...
    def __get__(self, obj: object, objtype: object = None) -> Any:
        return self if obj is None else getattr(obj, self._slot)

    def __set__(self, obj: object, value: NDArray[np.floating]) -> None:
        _same_array(self._owner, self._name, getattr(obj, self._slot), value)

    def __delete__(self, obj: object) -> None:
        raise AttributeError(
            f"{self._owner}.{self._name} cannot be deleted: the layer and the optimizers "
            f"hold this very array (change it in place, or make a new one)"
        )


class Parameter:
    """A trainable array and the array that the backward pass writes its gradient into.

    ``Parameter(name, value, grad)``; unpacks as ``name, value, grad = p``.

    Attributes
    ----------
    name : str
        ``"W"`` or ``"b"`` for a layer; ``"0.W"``, ``"1.b"``, ... in a :class:`Sequential`
        (the keys used by :func:`save_parameters`).
    value : ndarray
        The parameter itself; optimizers update it in place.
    grad : ndarray, same shape and dtype
        Its gradient, overwritten (not accumulated) by each backward pass.

    ``value`` and ``grad`` cannot be rebound to other arrays (the layer and the
    optimizers hold these very arrays), but every in-place operator works:
    ``p.value -= lr * p.grad`` and ``p.grad *= 0.5`` change the arrays exactly once.

    Examples
    --------
    >>> import siglayer
    >>> layer = siglayer.SigmoidLayer(3, 2, seed=0)
    >>> [(p.name, p.value.shape, p.grad.shape) for p in layer.parameters()]
    [('W', (3, 2), (3, 2)), ('b', (2,), (2,))]
    >>> for p in layer.parameters():
    ...     p.value -= 0.1 * p.grad                      # a plain SGD step
    """

    __slots__ = ("_grad", "_name", "_value")

    def __init__(self, name: str, value: Array, grad: Array) -> None:
        self._name = name
        self._value = value
        self._grad = grad

    value = _InPlaceOnly("parameter")
    grad = _InPlaceOnly("parameter")

    @property
    def name(self) -> str:
        return self._name

    def __iter__(self) -> Iterator[Any]:
        return iter((self._name, self._value, self._grad))

    def __reduce__(self) -> tuple[type[Parameter], tuple[str, Array, Array]]:
        # Every pickle protocol (0 and 1 refuse __slots__ without this); copies keep the
        # arrays shared with whatever else is copied with them (pickle's memo).
        return (Parameter, (self._name, self._value, self._grad))

    def __repr__(self) -> str:
        v = self._value
        return f"Parameter(name={self._name!r}, shape={v.shape}, dtype={v.dtype})"


@runtime_checkable
class Layer(Protocol[Float]):
    """What :class:`Sequential` needs from a layer (SigmoidLayer implements it)."""

    n_in: int
    n_out: int

    @property
    def dtype(self) -> np.dtype[Float]: ...

    def forward(self, x: NDArray[Float]) -> NDArray[Float]: ...

    def backward(self, dout: NDArray[Float], *, need_dx: bool = True) -> NDArray[Float] | None: ...

    def parameters(self) -> list[Parameter]: ...


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _float_dtype(dtype: DTypeLike) -> np.dtype[np.floating]:
    if dtype is None:  # the default, as torch's dtype=None (np.dtype(None) is float64)
        return np.dtype(np.float32)
    return cast("np.dtype[np.floating]", layer_dtype(dtype))


class SigmoidLayer(Generic[Float]):
    """A dense layer followed by a sigmoid, ``out = sigmoid(x @ W + b)``, with its own
    weights and gradients.

    Parameters
    ----------
    n_in, n_out : int
        Input and output features, each >= 1.
    dtype : float32, float64 or bfloat16, default float32 (also for None)
        float32 or float64: the precision of the parameters and of every array the
        layer takes; inputs of another dtype are refused (TypeError), never converted.
        bfloat16 (``ml_dtypes.bfloat16`` or ``"bfloat16"``; needs ml-dtypes): mixed
        precision as ``torch.autocast`` does it. W, b, dW and db are float32 (the
        master weights the optimizers update); each forward rounds W to bfloat16 once
        and computes with it, b stays float32; outputs and dx are bfloat16. x and the
        gradients given to backward may be bfloat16, or float32, rounded to bfloat16
        once on the way in (docs/bfloat16.md says where every rounding happens).
    seed : int, numpy.random.Generator or None
        Seed of the initialisation: W is Glorot-uniform, drawn from
        U(-sqrt(6 / (n_in + n_out)), +sqrt(6 / (n_in + n_out))) in float64 and rounded to
        ``dtype``; b is zero. The same seed gives bitwise the same W.
    reuse_buffers : bool, default False
        False: every forward and backward returns a new array. True: the layer returns
        its own buffer for each shape (a few shapes are kept), overwritten by the next
        call with the same shape, so a loop with a fixed batch size allocates nothing
        after its first step; keep ``out.copy()`` of a result you need for longer.

    Attributes
    ----------
    W : ndarray, shape (n_in, n_out)
        Weights (note: ``torch.nn.Linear`` stores its weight as (n_out, n_in)).
    b : ndarray, shape (n_out,)
        Bias.
    dW, db : ndarray, shapes of W and b
        Gradients, overwritten by each :meth:`backward`.

    W, b, dW and db are writeable arrays that change in place: ``layer.W -= lr *
    layer.dW``, ``layer.dW *= 0.5`` and ``layer.W[...] = values`` all work. They cannot be
    rebound to other arrays (AttributeError, before anything changes), because
    optimizers hold references to these very arrays.

    Notes
    -----
    **What backward uses.** forward keeps references (not copies) to its input x and its
    output; backward computes the gradients of the *last* forward from them. The output is
    returned as a read-only view, so changing it in place raises; do not change x (or an
    ``out=`` buffer you passed) between forward and backward.

    **Threads.** A layer is not for sharing between threads (that last forward, and with
    ``reuse_buffers=True`` the output buffer, belong to whichever call came last): give
    each thread its own, ``copy.deepcopy(layer)``. The functions of :mod:`siglayer` may
    be called from many threads at once.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> layer = siglayer.SigmoidLayer(3, 2, seed=0)
    >>> x = np.ones((4, 3), np.float32)
    >>> out = layer(x)                              # (4, 2), float32
    >>> dx = layer.backward(np.ones_like(out))      # fills layer.dW, layer.db
    >>> layer.dW.shape, dx.shape
    ((3, 2), (4, 3))
    >>> layer.W -= 0.1 * layer.dW                    # an in-place update
    """

    @overload
    def __init__(
        self: SigmoidLayer[np.float32],
        n_in: int,
        n_out: int,
        *,
        dtype: type[np.float32] | np.dtype[np.float32] | Literal["float32"] = ...,
        seed: int | np.random.Generator | None = ...,
        reuse_buffers: bool = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: SigmoidLayer[np.float64],
        n_in: int,
        n_out: int,
        *,
        dtype: type[np.float64] | type[float] | np.dtype[np.float64] | Literal["float64"],
        seed: int | np.random.Generator | None = ...,
        reuse_buffers: bool = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: SigmoidLayer[np.floating],
        n_in: int,
        n_out: int,
        *,
        dtype: DTypeLike,
        seed: int | np.random.Generator | None = ...,
        reuse_buffers: bool = ...,
    ) -> None: ...
    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        dtype: DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
        reuse_buffers: bool = False,
    ) -> None:
        n_in = _positive_int(n_in, "n_in")
        n_out = _positive_int(n_out, "n_out")
        for name, size in (("n_in", n_in), ("n_out", n_out)):  # before W is drawn
            if size > _api._BLAS_MAX:
                raise ValueError(
                    f"{name} = {size} exceeds the BLAS integer range ({_api._BLAS_MAX}): "
                    f"no layer call could run"
                )
        self._dtype = _float_dtype(dtype)
        # bfloat16 keeps float32 master weights, and bfloat16 copies of W (below).
        self._mixed = is_bfloat16(self._dtype)
        param_dtype = np.dtype(np.float32) if self._mixed else self._dtype
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.random.Generator))
        ):
            raise TypeError(
                f"seed must be an int, a numpy.random.Generator or None, got {type(seed).__name__}"
            )
        if isinstance(seed, numbers.Integral) and seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if not isinstance(reuse_buffers, bool):
            raise TypeError(f"reuse_buffers must be a bool, got {type(reuse_buffers).__name__}")
        self.reuse_buffers = reuse_buffers
        rng = np.random.default_rng(seed)
        limit = math.sqrt(6.0 / (n_in + n_out))
        W = rng.uniform(-limit, limit, size=(n_in, n_out)).astype(param_dtype)
        self._W = cast("NDArray[Float]", W)
        self._b = cast("NDArray[Float]", np.zeros(n_out, param_dtype))
        # What the products use: W itself, or its bfloat16 copy of the last forward. A
        # forward rounds W into a spare copy and swaps it in only once the call has
        # succeeded: a forward that fails (a wrong out=, say) leaves the last one's copy,
        # which backward and preactivation() use, as it was.
        self._W_compute = np.empty(W.shape, self._dtype) if self._mixed else self._W
        self._W_spare: NDArray[Any] | None = None
        self._dW = np.zeros_like(self._W)
        self._db = np.zeros_like(self._b)
        self._outputs = BufferCache(self._dtype)
        self._input_grads = BufferCache(self._dtype)
        # reuse_buffers=True, bfloat16 layer: float32 inputs rounded into buffers of the
        # layer's, two for x (the one the last forward kept stays whole while a forward
        # that may fail rounds into the other) and one for dout and dZ (used within a call).
        self._rounded_x = (BufferCache(self._dtype), BufferCache(self._dtype))
        self._rounded_grads = BufferCache(self._dtype)
        self._x: NDArray[Float] | None = None
        self._out: NDArray[Float] | None = None
        self._view_of: NDArray[Float] | None = None  # the last out and its read-only view
        self._view: NDArray[Float] | None = None

    @property
    def dtype(self) -> np.dtype[Float]:
        return cast("np.dtype[Float]", self._dtype)

    # Rebinding one of them would silently detach it from an optimizer holding the old
    # array; an in-place operator (layer.W -= step) assigns it back, which must succeed.
    W = _InPlaceOnly("layer")
    b = _InPlaceOnly("layer")
    dW = _InPlaceOnly("layer")
    db = _InPlaceOnly("layer")

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle) makes its own read-only view: a copied view would be an
        # independent array, no longer showing the copied buffer.
        state = self.__dict__.copy()
        state["_view_of"] = state["_view"] = None
        state["_W_spare"] = None  # made again by the next forward
        return state

    @property
    def n_in(self) -> int:
        """Inputs per sample: W's first dimension (fixed, as W's shape is)."""
        return int(self._W.shape[0])

    @n_in.setter
    def n_in(self, value: object) -> None:
        raise AttributeError(
            f"n_in is W's first dimension ({self.n_in}) and cannot be set; make a new SigmoidLayer"
        )

    @property
    def n_out(self) -> int:
        """Outputs per sample: W's second dimension (fixed, as W's shape is)."""
        return int(self._W.shape[1])

    @n_out.setter
    def n_out(self, value: object) -> None:
        raise AttributeError(
            f"n_out is W's second dimension ({self.n_out}) and cannot be set; make a new "
            f"SigmoidLayer"
        )

    def __repr__(self) -> str:
        reuse = ", reuse_buffers=True" if self.reuse_buffers else ""
        return (
            f"SigmoidLayer(n_in={self.n_in}, n_out={self.n_out}, dtype={self._dtype.name}{reuse})"
        )

    def forward(self, x: NDArray[Float], *, out: NDArray[Float] | None = None) -> NDArray[Float]:
        """``sigmoid(x @ W + b)``, kept for the next :meth:`backward`.

        Parameters
        ----------
        x : ndarray, shape (..., n_in), dtype of the layer
            Any memory layout; it is referenced, not copied, until the next forward.
        out : ndarray, shape (..., n_out), dtype of the layer, optional
            A C-contiguous, writeable buffer for the result, not overlapping x.

        Returns
        -------
        ndarray, shape (..., n_out)
            ``out`` when given; else a read-only view of a new array, or with
            ``reuse_buffers=True`` of the layer's buffer for this shape (overwritten by
            the next forward of the shape). Read-only because :meth:`backward` reads it:
            change a copy (``out.copy()``). x and a given ``out`` must likewise stay
            unchanged until the backward.

        Raises
        ------
        TypeError
            x is not an ndarray, or has another dtype than the layer.
        ValueError
            x does not have n_in features, or ``out`` is unusable.
        """
        if (
            type(x) is not _ndarray
            or x.dtype != self._dtype
            or x.ndim == 0
            or x.shape[-1] != self.n_in
        ):
            self._check_input(x)
            x = self._rounded(x, self._rounded_x)
        W = self._W_compute
        if self._mixed:
            if self._W_spare is None:
                self._W_spare = np.empty(self._W.shape, self._dtype)
            W = _core.to_bfloat16(self._W, out=self._W_spare)
        given = out is not None
        if given and self._mixed:  # the core sees only the bfloat16 copy of W
            refuse_overlap("out", out, (("W", self._W),))
        own = not given and self.reuse_buffers
        if out is None:
            shape = (*x.shape[:-1], self.n_out)
            fresh = self._outputs.get(shape) if own else np.empty(shape, self._dtype)
            out = cast("NDArray[Float]", fresh)
        try:
            _api.forward(x, W, self._b, out=out)
        except _core.OverlapError:
            if own:
                raise ValueError(
                    "x shares memory with this layer's output buffer (the result of an "
                    "earlier call, reuse_buffers=True); a layer keeps one forward at a "
                    "time: pass x.copy()"
                ) from None
            raise
        if W is not self._W_compute:  # the bfloat16 copy this forward multiplied
            self._W_spare, self._W_compute = self._W_compute, W
        self._x = x
        self._out = out
        if not given:
            # The layer's backward reads this out: the caller gets a read-only view, so
            # that `out -= y` or np.clip(out, ..., out=out) raises instead of silently
            # changing the gradients (NumPy has no version counter to catch it later).
            # The view of the last buffer is kept: a buffer reused step after step
            # (reuse_buffers=True, one shape) allocates nothing.
            view = self._view
            if view is None or self._view_of is not out:
                view = out.view()
                view.flags.writeable = False
                self._view_of, self._view = out, view
            return view
        self._view_of = self._view = None  # a given buffer: keep no earlier output alive
        return out

    __call__ = forward

    @overload
    def backward(
        self,
        dout: NDArray[Float],
        *,
        need_dx: Literal[True] = ...,
        dx: NDArray[Float] | None = ...,
    ) -> NDArray[Float]: ...
    @overload
    def backward(self, dout: NDArray[Float], *, need_dx: Literal[False]) -> None: ...
    @overload
    def backward(
        self, dout: NDArray[Float], *, need_dx: bool = ..., dx: NDArray[Float] | None = ...
    ) -> NDArray[Float] | None: ...
    def backward(
        self, dout: NDArray[Float], *, need_dx: bool = True, dx: NDArray[Float] | None = None
    ) -> NDArray[Float] | None:
        """Gradients from ``dout = dL/dout`` of the last :meth:`forward`.

        Fills :attr:`dW` and :attr:`db` (overwriting them) and returns dx. dx is computed
        with W as it is now: change W only after the backward, as an optimizer's step
        does (a bfloat16 layer uses the bfloat16 copy of W its forward made). NumPy has
        no version counter to detect a W changed in between, as PyTorch's autograd does.

        Parameters
        ----------
        dout : ndarray, shape of the last forward's output, dtype of the layer
            Not dL/dZ: :meth:`siglayer.losses.BCELoss.backward`'s gradient goes to
            :meth:`backward_from_preactivation` (given here, it is a TypeError).
        need_dx : bool, default True
            Compute dx (the first layer of a network needs none: one product fewer).
        dx : ndarray, shape of the last x, optional
            A C-contiguous, writeable buffer for dx (with ``need_dx=True``).

        Returns
        -------
        ndarray of the shape of the last x, or None
            dx = dZ @ W.T with dZ = dout * out * (1 - out): ``dx`` when given, else a
            new array (the layer's buffer for the shape with ``reuse_buffers=True``).

        Raises
        ------
        RuntimeError
            No forward has been run yet.
        TypeError
            dout is not an ndarray, has another dtype, or is a loss's dL/dZ.
        ValueError
            dout's shape differs from the last forward's output.
        """
        x, out = self._saved("backward")
        if type(dout) is not _ndarray or dout.shape != out.shape or dout.dtype != self._dtype:
            refuse_kind(dout, "dout", "backward")
            self._check_gradient(dout, "dout", out.shape)
            dout = self._rounded(dout, (self._rounded_grads,))
        dx, own = self._dx_buffer(x, need_dx, dx)
        try:
            _api.backward(
                dout, x, self._W_compute, out, need_dx=need_dx, dx=dx, dW=self._dW, db=self._db
            )
        except _core.OverlapError:
            self._explain_own_dx(own, dx, x, out, dout, "dout")
            raise
        return dx

    @overload
    def backward_from_preactivation(
        self,
        dZ: NDArray[Float],
        *,
        need_dx: Literal[True] = ...,
        dx: NDArray[Float] | None = ...,
    ) -> NDArray[Float]: ...
    @overload
    def backward_from_preactivation(
        self, dZ: NDArray[Float], *, need_dx: Literal[False]
    ) -> None: ...
    @overload
    def backward_from_preactivation(
        self, dZ: NDArray[Float], *, need_dx: bool, dx: NDArray[Float] | None = ...
    ) -> NDArray[Float] | None: ...
    def backward_from_preactivation(
        self, dZ: NDArray[Float], *, need_dx: bool = True, dx: NDArray[Float] | None = None
    ) -> NDArray[Float] | None:
        """Gradients from ``dZ = dL/dZ``, Z = x @ W + b of the last :meth:`forward`.

        For a loss that gives the gradient with respect to the pre-activation directly
        (binary cross-entropy fused with this sigmoid: dZ = (out - y) / N, see
        :class:`siglayer.losses.BCELoss`); the sigmoid's derivative is not applied, and a
        dL/dout from :class:`siglayer.losses.MSELoss` is refused (TypeError).
        Fills :attr:`dW` and :attr:`db` and returns dx = dZ @ W.T.

        Parameters, returns and errors are those of :meth:`backward`, with dZ in place of
        dout.
        """
        x, out = self._saved("backward_from_preactivation")
        if type(dZ) is not _ndarray or dZ.shape != out.shape or dZ.dtype != self._dtype:
            refuse_kind(dZ, "dZ", "backward_from_preactivation")
            self._check_gradient(dZ, "dZ", out.shape)
            dZ = self._rounded(dZ, (self._rounded_grads,))
        dx, own = self._dx_buffer(x, need_dx, dx)
        try:
            _api.backward_from_preactivation(
                dZ, x, self._W_compute, need_dx=need_dx, dx=dx, dW=self._dW, db=self._db
            )
        except _core.OverlapError:
            self._explain_own_dx(own, dx, x, out, dZ, "dZ")
            raise
        return dx

    def preactivation(self) -> NDArray[Float]:
        """Z = x @ W + b of the last forward's x, recomputed with W and b as they are now
        (one extra product; a new array): call it before an optimizer's step. A bfloat16
        layer uses the bfloat16 copy of W its forward made.

        Useful for an exact loss from logits where the sigmoid output has saturated to 0
        or 1 (see :class:`siglayer.losses.BCELoss`).
        """
        x, _ = self._saved("preactivation")
        if self._mixed:  # in float32, from the bfloat16 values the forward multiplied
            x32 = _core.to_float32(np.ascontiguousarray(x))
            return cast("NDArray[Float]", x32 @ _core.to_float32(self._W_compute) + self._b)
        return cast("NDArray[Float]", np.asarray(x @ self._W + self._b))

    def parameters(self) -> list[Parameter]:
        """``[Parameter("W", W, dW), Parameter("b", b, db)]``."""
        return [Parameter("W", self._W, self._dW), Parameter("b", self._b, self._db)]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save W and b to an .npz file; see :func:`save_parameters`."""
        save_parameters(self.parameters(), path)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Load W and b in place from an .npz file; see :func:`load_parameters`."""
        load_parameters(self.parameters(), path)

    def _buffers_written(self, lead: tuple[int, ...]) -> Iterator[NDArray[Float]]:
        """The output buffer a forward of x with leading shape ``lead`` writes over
        (reuse_buffers=True, once it exists): for a Sequential's check of its input."""
        if self.reuse_buffers:
            buffer = self._outputs.peek((*lead, self.n_out))
            if buffer is not None:
                yield cast("NDArray[Float]", buffer)

    def _saved(self, what: str) -> tuple[NDArray[Float], NDArray[Float]]:
        if self._x is None or self._out is None:
            raise RuntimeError(
                f"{what} called before any forward: run forward(x) first (of this layer, or "
                f"of the Sequential that holds it)"
            )
        return self._x, self._out

    def _dx_buffer(
        self, x: NDArray[Float], need_dx: object, dx: NDArray[Float] | None
    ) -> tuple[NDArray[Float] | None, bool]:
        """The dx buffer for a backward, and whether it is the layer's own. A given dx
        must not overlap the parameters the core does not see in a backward: b, and a
        bfloat16 layer's float32 W (it sees the bfloat16 copy)."""
        if dx is not None and _need_dx(need_dx):
            refuse_overlap(
                "dx", dx, (("b", self._b), ("W", self._W)) if self._mixed else (("b", self._b),)
            )
        if not _need_dx(need_dx) or dx is not None:
            return dx, False  # the core refuses a dx with need_dx=False
        if self.reuse_buffers:
            return cast("NDArray[Float]", self._input_grads.get(x.shape)), True
        return np.empty(x.shape, self._dtype), False

    @staticmethod
    def _explain_own_dx(
        own: bool,
        dx: NDArray[Float] | None,
        x: NDArray[Float],
        out: NDArray[Float],
        grad: object,
        name: str,
    ) -> None:
        """After the core refused an overlap (nothing written): when the dx it would
        have written is the layer's own buffer, say which of the caller's arrays is that
        buffer (the dx an earlier backward returned) instead of naming dx."""
        if not own:
            return
        for what, a, fix in (
            ("the last forward's x", x, "pass x.copy() to the forward"),
            ("the last forward's out", out, "give the forward another out="),
            (name, grad, f"pass {name}.copy()"),
        ):
            if np.may_share_memory(a, dx):
                raise ValueError(
                    f"{what} shares memory with this layer's dx buffer (the dx an earlier "
                    f"backward returned, reuse_buffers=True), which this backward would "
                    f"overwrite: {fix}"
                ) from None

    def _refuse_dtype(self, a: NDArray[Any], name: str) -> NoReturn:
        """The TypeError for an input whose dtype this layer does not take."""
        if self._mixed:
            raise TypeError(
                f"{name} has dtype {a.dtype} but this bfloat16 layer takes bfloat16, or "
                f"float32 (which it rounds to bfloat16, as documented); pass "
                f"{name}.astype(np.float32) or {name}.astype(ml_dtypes.bfloat16): a "
                f"{a.dtype} is never rounded silently"
            )
        raise TypeError(
            f"{name} has dtype {a.dtype} but this layer computes in {self._dtype}; pass "
            f"{name}.astype(np.{self._dtype.name}) (nothing is converted silently)"
        )

    def _rounded(self, a: NDArray[Any], caches: tuple[BufferCache, ...]) -> NDArray[Any]:
        """A float32 input of a bfloat16 layer, rounded to bfloat16 once (the checks
        have passed), into a new array or, with reuse_buffers=True, into the first of the
        caches' buffers for its shape that is not the x the last forward kept (so that a
        loop with a fixed batch size allocates nothing: a review found 33 KB a step at
        256 x 64); anything else as it is."""
        if self._mixed and a.dtype == np.float32:
            # C order and aligned (a copy only where a is not): the rounding makes a new
            # array anyway, so a misaligned input costs a copy, not a refusal.
            a = np.require(a, requirements=("C", "A"))
            if not self.reuse_buffers:
                return _core.to_bfloat16(a)
            buffer = next(b for b in (c.get(a.shape) for c in caches) if b is not self._x)
            return _core.to_bfloat16(a, out=buffer)
        return a

    def _check_input(self, x: object) -> None:
        if not isinstance(x, _ndarray):
            raise not_an_ndarray(x, "x")
        refuse_matrix_or_masked(x, "x")
        if self._mixed and x.dtype == np.float32:
            pass  # rounded to bfloat16 by the caller
        elif x.dtype != self._dtype:
            self._refuse_dtype(x, "x")
        if x.ndim == 0 or x.shape[-1] != self.n_in:
            raise ValueError(
                f"x has shape {x.shape}, expected (..., {self.n_in}) for a layer "
                f"with n_in={self.n_in}"
            )

    def _check_gradient(self, grad: object, name: str, expected: tuple[int, ...]) -> None:
        if not isinstance(grad, _ndarray):
            raise not_an_ndarray(grad, name)
        refuse_matrix_or_masked(grad, name)
        if self._mixed and grad.dtype == np.float32:
            pass  # rounded to bfloat16 by the caller
        elif grad.dtype != self._dtype:
            self._refuse_dtype(grad, name)
        if grad.shape != expected:
            raise ValueError(
                f"{name} has shape {grad.shape} but the last forward produced "
                f"{expected}; backward needs the gradient of that output"
            )


def _need_dx(need_dx: object) -> bool:
    # numpy.bool_ too, as the functional API (and its core binding) takes it.
    if not isinstance(need_dx, (bool, np.bool_)):
        raise TypeError(f"need_dx must be a bool, got {type(need_dx).__name__}")
    return bool(need_dx)


def _refuse_repeated_layers(layers: Sequence[Layer[Any]]) -> None:
    """The same layer object twice, at any depth of nested Sequentials: it keeps only its
    last forward's x and out, so backward would give wrong gradients without an error."""
    seen: dict[int, str] = {}

    def visit(layer: Layer[Any], path: str) -> None:
        if id(layer) in seen:
            raise ValueError(
                f"the same layer object appears twice (at {seen[id(layer)]} and at {path}); "
                f"create separate layers (a layer keeps only its last forward's input, so "
                f"its backward could not serve both places)"
            )
        seen[id(layer)] = path
        if isinstance(layer, Sequential):
            for j, inner in enumerate(layer.layers):
                visit(inner, f"{path}.{j}")

    for i, layer in enumerate(layers):
        visit(layer, str(i))


class Sequential(Generic[Float]):
    """Layers applied one after the other, with backward through the whole stack.

    Parameters
    ----------
    *layers : SigmoidLayer (or any :class:`Layer`)
        At least one; layer i's n_out must equal layer i+1's n_in and all share one
        dtype. A layer may appear only once (it keeps the state of one forward).

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> net = siglayer.Sequential(siglayer.SigmoidLayer(4, 3, seed=0),
    ...                           siglayer.SigmoidLayer(3, 2, seed=1))
    >>> out = net(np.ones((5, 4), np.float32))
    >>> net.backward(np.ones_like(out)) is None      # the first layer computes no dx
    True
    >>> [p.name for p in net.parameters()]
    ['0.W', '0.b', '1.W', '1.b']
    """

    def __init__(self, *layers: Layer[Float]) -> None:
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"layer {i} is a {type(layer).__name__}, not a layer (it needs "
                    f"n_in, n_out, dtype, forward, backward and parameters)"
                )
        for i, (a, b) in enumerate(itertools.pairwise(layers)):
            if a.n_out != b.n_in:
                raise ValueError(
                    f"layer {i + 1} takes {b.n_in} inputs but layer {i} gives {a.n_out} outputs"
                )
            if a.dtype != b.dtype:
                raise TypeError(f"layer {i} computes in {a.dtype} but layer {i + 1} in {b.dtype}")
        _refuse_repeated_layers(layers)
        self.layers: tuple[Layer[Float], ...] = tuple(layers)

    @property
    def n_in(self) -> int:
        return self.layers[0].n_in

    @property
    def n_out(self) -> int:
        return self.layers[-1].n_out

    @property
    def dtype(self) -> np.dtype[Float]:
        return self.layers[0].dtype

    def __len__(self) -> int:
        return len(self.layers)

    # Any, not Layer[Float]: the layer as given, whose own attributes (a SigmoidLayer's W,
    # dW, preactivation: the README's net[-1].preactivation()) must type-check too; the
    # Layer protocol names only what Sequential needs (a review, helper-88, found the
    # README's idiom refused by mypy --strict). As torch.nn.Sequential's items are Modules.
    def __getitem__(self, i: int) -> Any:
        try:
            return self.layers[i]
        except IndexError:
            raise IndexError(
                f"layer index {i} is out of range for a Sequential of {len(self.layers)} "
                f"layers (0 to {len(self.layers) - 1}, or negative from the end)"
            ) from None

    def __iter__(self) -> Iterator[Any]:  # as __getitem__
        return iter(self.layers)

    def __repr__(self) -> str:
        inner = ",\n".join(f"  {layer!r}" for layer in self.layers)
        return f"Sequential(\n{inner}\n)"

    def forward(self, x: NDArray[Float]) -> NDArray[Float]:
        """The output of the last layer, shape (..., n_out), as that layer returns it: a
        read-only view of a new array (of the layer's buffer if it was built with
        ``reuse_buffers=True``), kept for the backward pass."""
        if type(x) is _ndarray and not x.flags.writeable:  # as a layer's outputs are
            self._refuse_a_buffer_it_writes(x)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def _buffers_written(self, lead: tuple[int, ...]) -> Iterator[NDArray[Float]]:
        """The output buffers of its layers a forward writes over (SigmoidLayer's)."""
        for layer in self.layers:
            written = getattr(layer, "_buffers_written", None)
            if written is not None:
                yield from written(lead)

    def _refuse_a_buffer_it_writes(self, x: NDArray[Float]) -> None:
        """x (an earlier result of this network) must not be the output buffer of a layer
        after the first: that layer would overwrite it while the first keeps x for the
        backward, whose dW would be silently wrong (a review's find). The first layer
        refuses its own buffer itself."""
        for i, layer in enumerate(self.layers[1:], 1):
            written = getattr(layer, "_buffers_written", None)
            if written is None:
                continue
            for buffer in written(x.shape[:-1]):
                if np.may_share_memory(x, buffer):
                    raise ValueError(
                        f"x shares memory with the output buffer of layer {i} (an earlier "
                        f"result of this network, reuse_buffers=True), which this forward "
                        f"overwrites while layer 0 keeps x for the backward: pass x.copy()"
                    )

    __call__ = forward

    @overload
    def backward(self, dout: NDArray[Float], *, need_dx: Literal[False] = ...) -> None: ...
    @overload
    def backward(self, dout: NDArray[Float], *, need_dx: Literal[True]) -> NDArray[Float]: ...
    @overload
    def backward(self, dout: NDArray[Float], *, need_dx: bool) -> NDArray[Float] | None: ...
    def backward(self, dout: NDArray[Float], *, need_dx: bool = False) -> NDArray[Float] | None:
        """Fill every layer's gradients from ``dout = dL/dout`` of the last forward.

        Returns the gradient with respect to the network's input when ``need_dx=True``,
        else None (the first layer then skips that product). A loss's dL/dZ
        (:meth:`siglayer.losses.BCELoss.backward`) is refused with a TypeError: it goes
        to :meth:`backward_from_preactivation`.
        """
        refuse_kind(dout, "dout", "backward")
        need = _need_dx(need_dx)
        grad: NDArray[Float] | None = dout
        for i in range(len(self.layers) - 1, -1, -1):
            assert grad is not None
            grad = self.layers[i].backward(grad, need_dx=i > 0 or need)
        return grad

    @overload
    def backward_from_preactivation(
        self, dZ: NDArray[Float], *, need_dx: Literal[False] = ...
    ) -> None: ...
    @overload
    def backward_from_preactivation(
        self, dZ: NDArray[Float], *, need_dx: Literal[True]
    ) -> NDArray[Float]: ...
    @overload
    def backward_from_preactivation(
        self, dZ: NDArray[Float], *, need_dx: bool
    ) -> NDArray[Float] | None: ...
    def backward_from_preactivation(
        self, dZ: NDArray[Float], *, need_dx: bool = False
    ) -> NDArray[Float] | None:
        """As :meth:`backward`, from dZ, the gradient with respect to the *last* layer's
        pre-activation (what :class:`siglayer.losses.BCELoss` gives); a loss's dL/dout
        (:meth:`siglayer.losses.MSELoss.backward`) is refused with a TypeError."""
        refuse_kind(dZ, "dZ", "backward_from_preactivation")
        need = _need_dx(need_dx)
        last = self.layers[-1]
        if not hasattr(last, "backward_from_preactivation"):
            raise TypeError(
                f"the last layer ({type(last).__name__}) has no backward_from_preactivation"
            )
        n = len(self.layers)
        grad: NDArray[Float] | None = last.backward_from_preactivation(dZ, need_dx=n > 1 or need)
        for i in range(n - 2, -1, -1):
            assert grad is not None
            grad = self.layers[i].backward(grad, need_dx=i > 0 or need)
        return grad

    def parameters(self) -> list[Parameter]:
        """Every layer's parameters, named ``"<layer index>.<name>"``: "0.W", "0.b", ..."""
        return [
            Parameter(f"{i}.{p.name}", p.value, p.grad)
            for i, layer in enumerate(self.layers)
            for p in layer.parameters()
        ]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save every parameter to an .npz file; see :func:`save_parameters`."""
        save_parameters(self.parameters(), path)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Load every parameter in place from an .npz file; see :func:`load_parameters`."""
        load_parameters(self.parameters(), path)


def save_parameters(parameters: Sequence[Parameter], path: str | os.PathLike[str]) -> None:
    """Write the parameters' values to ``path`` as an uncompressed .npz, keyed by name.

    The file is written exactly at ``path`` (no ".npz" is appended), through a temporary
    file in the same folder that replaces ``path`` only once complete. Values are stored
    bit for bit: :func:`load_parameters` restores them exactly.

    Parameters
    ----------
    parameters : sequence of Parameter
        Usually ``net.parameters()``; their names must be unique.
    path : str or os.PathLike
        The file to write (replaced if it exists).

    Raises
    ------
    ValueError
        Two parameters with one name.

    Examples
    --------
    >>> import siglayer, tempfile, os
    >>> net = siglayer.Sequential(siglayer.SigmoidLayer(2, 2, seed=0))
    >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
    >>> net.save(path); net.load(path)
    """
    parameters = _parameter_list(parameters)
    names = [p.name for p in parameters]
    if len(set(names)) != len(names):
        raise ValueError(f"parameter names must be unique, got {names}")
    target = os.fspath(path)
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        # The .npz layout (a zip of one NAME.npy per array, stored), written entry by entry
        # rather than through np.savez's keyword arguments: a parameter named "file" or
        # "allow_pickle" was taken for savez's own argument (a review found the second
        # left out of the file, with no error).
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
            for p in parameters:
                with archive.open(f"{p.name}.npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, p.value, allow_pickle=False)
        os.replace(tmp, target)
    except OSError as exc:
        if exc.filename != tmp:
            raise
        # Opening or renaming the temporary file failed (no folder, a folder at path):
        # the error names the user's file, not the temporary one beside it.
        raise type(exc)(exc.errno, exc.strerror, target) from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _parameter_list(parameters: Sequence[Parameter]) -> list[Parameter]:
    """parameters as a list, each a Parameter, or a TypeError naming the first that is not
    (a review found a plain array failing on a missing attribute)."""
    if hasattr(parameters, "parameters") and not isinstance(parameters, (list, tuple)):
        raise TypeError(
            f"parameters must be a sequence of Parameter; pass "
            f"{type(parameters).__name__.lower()}.parameters()"
        )
    listed = list(parameters)
    for i, p in enumerate(listed):
        if not isinstance(p, Parameter):
            raise TypeError(
                f"parameters[{i}] must be a siglayer.Parameter (as net.parameters() gives), "
                f"got {type(p).__name__}"
            )
    return listed


def load_parameters(parameters: Sequence[Parameter], path: str | os.PathLike[str]) -> None:
    """Copy the arrays stored at ``path`` into the parameters' values, in place.

    Every check runs before anything is written, so a failed load changes nothing.

    Parameters
    ----------
    parameters : sequence of Parameter
        The parameters to fill, e.g. ``net.parameters()`` of a network of the same
        shape as the one saved.
    path : str or os.PathLike
        A file written by :func:`save_parameters`.

    Raises
    ------
    ValueError
        The file's names differ from the parameters' (missing or unexpected entries), or
        an array's shape differs.
    TypeError
        An array's dtype differs (nothing is converted silently).

    Examples
    --------
    >>> import numpy as np, siglayer, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "layer.npz")
    >>> trained = siglayer.SigmoidLayer(2, 2, seed=0)
    >>> siglayer.save_parameters(trained.parameters(), path)
    >>> fresh = siglayer.SigmoidLayer(2, 2, seed=1)
    >>> siglayer.load_parameters(fresh.parameters(), path)
    >>> bool(np.array_equal(fresh.W, trained.W))
    True
    """
    parameters = _parameter_list(parameters)
    # The file opened here, so that it is closed whatever np.load makes of it (NumPy
    # leaves its own handle open when the archive is broken).
    with open(os.fspath(path), "rb") as file:
        head = file.read(6)
        file.seek(0)
        if not head.startswith((b"PK\x03\x04", b"\x93NUMPY")):
            # Not a zip archive nor an .npy array: NumPy would guess at pickled data.
            raise ValueError(
                f"{os.fspath(path)} is not an .npz file of parameters as save_parameters "
                f"writes (it begins {head!r}; an .npz file begins b'PK\\x03\\x04')"
            )
        import zipfile  # here, not at import: 20-50 ms that only loading needs

        try:
            loaded = np.load(file, allow_pickle=False)
        except (ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(
                f"{os.fspath(path)} is not an .npz file of parameters as save_parameters "
                f"writes ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(
                f"{os.fspath(path)} holds one array (.npy), not an .npz file of named "
                f"parameters as save_parameters writes"
            )
        with loaded as data:
            stored = set(data.files)
            expected = {p.name for p in parameters}
            if stored != expected:
                missing = sorted(expected - stored)
                unexpected = sorted(stored - expected)
                raise ValueError(
                    f"{os.fspath(path)} does not match these parameters: missing "
                    f"{missing}, unexpected {unexpected}"
                )
            arrays = {}
            for name in expected:
                try:
                    arrays[name] = data[name]
                except ValueError as exc:  # an object array, which only pickle can read
                    raise ValueError(
                        f"{name}: {os.fspath(path)} holds it as Python objects, not numbers "
                        f"(not a file save_parameters writes; {exc})"
                    ) from exc
    for p in parameters:
        a = arrays[p.name]
        if a.shape != p.value.shape:
            raise ValueError(
                f"{p.name}: the file holds shape {a.shape}, the parameter has {p.value.shape}"
            )
        if a.dtype != p.value.dtype:
            # np.savez stores an ml_dtypes.bfloat16 array as 2-byte opaque records.
            hint = (
                " (2-byte records: how np.savez stores a bfloat16 array; the layer's "
                "parameters are its float32 masters, which save_parameters writes)"
                if a.dtype.kind == "V" and a.dtype.itemsize == 2
                else ""
            )
            raise TypeError(
                f"{p.name}: the file holds dtype {a.dtype}{hint}, the parameter has "
                f"{p.value.dtype} (nothing is converted silently)"
            )
    for p in parameters:
        np.copyto(p.value, arrays[p.name])
