"""Losses for sigmoid outputs: mean squared error and binary cross-entropy.

Binary cross-entropy is fused with the sigmoid of the last layer. With out = sigmoid(Z)
and mean reduction over N elements,

    L = -(1/N) * sum(y * log(out) + (1 - y) * log(1 - out)),
    dL/dout = (out - y) / (out * (1 - out)) / N,
    dL/dZ = dL/dout * out * (1 - out) = (out - y) / N.

The gradient with respect to out divides by out * (1 - out), which is 0 once the
sigmoid saturates: inf or NaN, or a vanishing product, in the chain rule. The two sides
saturate far apart. out rounds to exactly 1 for Z above about 17.3 in float32 (where
1 - exp(-Z) rounds to 1) and 36.7 in float64 (where the kernel's 1 + exp(-Z) rounds to
1; a correctly rounded sigmoid would reach 1 only at 37.4); towards -inf out is about
exp(Z), which goes down through the subnormal numbers and rounds to exactly 0 only for Z
below about -104 (-103.97) in float32 and -745 (-745.13) in float64; 1 / (out * (1 -
out)) overflows well before, below about -88.7 and -709.8. The fused dL/dZ is always
finite, with an absolute error of about one rounding of out (at most 2**-24 / N in
float32; where out rounds to 1 and y = 1 it is 0, a true value below that), while the
unfused pair loses the gradient or shrinks it by orders of magnitude; so
:class:`BCELoss` gives dZ and the network takes it through
``backward_from_preactivation``, skipping the sigmoid's derivative.

>>> import numpy as np, siglayer
>>> def saturated(z, dtype):  # which of sigmoid(z) are exactly 0, which exactly 1
...     one, zero = np.ones((1, 1), dtype), np.zeros(1, dtype)
...     out = siglayer.forward(np.array(z, dtype).reshape(-1, 1), one, zero).ravel()
...     return (out == 0).tolist(), (out == 1).tolist()
>>> saturated([-104.0, -103.9, 17.3, 17.4], np.float32)
([True, False, False, False], [False, False, False, True])
>>> saturated([-746.0, -745.0, 36.7, 36.8], np.float64)
([True, False, False, False], [False, False, False, True])

The loss *value* from probabilities needs log(out) and log(1 - out), which are -inf at
saturation. Two ways to keep it finite:

- From logits (exact): with Z available, y*log(sigmoid(Z)) + (1-y)*log(1-sigmoid(Z)) =
  -(max(Z, 0) - Z*y + log1p(exp(-|Z|))), finite for every finite Z and accurate to a few
  ulp for 0/1 labels (for soft labels near 0 or 1 at large |Z| the term max(Z, 0) - Z*y
  cancels and loses relative accuracy) (:func:`bce_with_logits_loss`; ``BCELoss(..., logits=Z)``;
  :meth:`siglayer.SigmoidLayer.preactivation` recomputes Z).
- From probabilities (bounded): each log is clamped to >= -100, the convention of
  torch.nn.BCELoss, so a saturated wrong output costs 100 instead of infinity
  (:func:`bce_loss`). The value then matches torch.nn.BCELoss, and is exact wherever the
  clamp is not reached; the training gradient never depends on it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

from . import _core
from ._buffers import BufferCache, not_an_ndarray, refuse_matrix_or_masked, refuse_overlap
from ._dtypes import FLOAT_DTYPES
from ._gradients import OutputGradient, PreactivationGradient

__all__ = [
    "BCELoss",
    "MSELoss",
    "OutputGradient",
    "PreactivationGradient",
    "bce_grad_preactivation",
    "bce_loss",
    "bce_with_logits_loss",
    "mse_grad",
    "mse_loss",
]

Array = NDArray[np.floating]
Reduction = Literal["mean", "sum"]
_ndarray = np.ndarray

# torch.nn.BCELoss clamps each log term to >= -100; we use the same bound so that the
# values agree where outputs saturate (the compiled core applies it).
LOG_CLAMP = -100.0


def _contiguous(a: Array) -> Array:
    """a itself when C-contiguous (the training loop's case), else a C-ordered copy."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _check_pair(pred: object, y: object, pred_name: str) -> None:
    """Both float32/float64 ndarrays of one dtype and one shape, or a clear error."""
    for name, a in ((pred_name, pred), ("y", y)):
        if not isinstance(a, _ndarray):
            raise not_an_ndarray(a, name)
        refuse_matrix_or_masked(a, name)
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {a.dtype}; losses take float32 or float64")
    assert isinstance(pred, _ndarray) and isinstance(y, _ndarray)
    if y.dtype != pred.dtype:
        raise TypeError(
            f"y has dtype {y.dtype} but {pred_name} has {pred.dtype}; pass "
            f"y.astype(np.{pred.dtype.name}) (nothing is converted silently)"
        )
    if y.shape != pred.shape:
        raise ValueError(f"y has shape {y.shape} but {pred_name} has shape {pred.shape}")


_PROBABILITIES = "probabilities, such as a sigmoid's output, not logits"
_TARGETS = "targets in [0, 1] (0/1 labels or probabilities); one-hot encode class indices first"


def _check_unit_interval(a: Array, name: str, what: str, *, nan_refused: bool) -> None:
    """The core's check of out and y (cpp/siglayer/losses.cpp, the same words) for the
    binary cross-entropy functions computed in NumPy here: NaN passes unless nan_refused
    (as there: refused in y, a target, and passed in out, a computed value)."""
    outside = ~((a >= 0) & (a <= 1)) if nan_refused else (a < 0) | (a > 1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{name} has a value outside [0, 1] (element {i} of the flattened {name} is "
            f"{float(a.flat[i]):.9g}): binary cross-entropy takes {what}"
        )


def _divisor(size: int, reduction: str) -> int:
    if reduction == "mean":
        if size == 0:
            raise ValueError(
                "the mean loss of an empty batch is undefined; use "
                "reduction='sum' or skip the batch"
            )
        return size
    if reduction == "sum":
        return 1
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def mse_loss(out: Array, y: Array, *, reduction: Reduction = "mean") -> float:
    """Mean (or sum) of (out - y)**2 over all elements.

    Parameters
    ----------
    out, y : ndarray, same shape and dtype (float32 or float64)
    reduction : 'mean' (over all N elements, as torch.nn.MSELoss) or 'sum'

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from siglayer.losses import mse_loss
    >>> mse_loss(np.array([0.5, 1.0]), np.array([0.0, 1.0]))
    0.125
    """
    _check_pair(out, y, "out")
    n = _divisor(out.size, reduction)
    out, y = _contiguous(out), _contiguous(y)
    return float(_core.mse(out, y, np.empty_like(out), n)) / n


def mse_grad(
    out: Array, y: Array, *, reduction: Reduction = "mean", dout: Array | None = None
) -> Array:
    """dL/dout of :func:`mse_loss`: 2 * (out - y) / N (N = 1 for reduction='sum').

    Without ``dout``, a new :class:`OutputGradient` (an ndarray that ``backward`` takes
    and ``backward_from_preactivation`` refuses). ``dout``, if given, is a C-contiguous
    buffer of out's shape and dtype to write into; it is returned as it is.

    Parameters
    ----------
    out, y : ndarray, same shape and dtype (float32 or float64)
    reduction : 'mean' or 'sum'
    dout : ndarray, out's shape and dtype, optional

    Returns
    -------
    ndarray, out's shape and dtype

    Examples
    --------
    >>> import numpy as np
    >>> from siglayer.losses import mse_grad
    >>> mse_grad(np.array([0.5, 1.0]), np.array([0.0, 1.0]))
    OutputGradient([0.5, 0. ])
    """
    _check_pair(out, y, "out")
    n = _divisor(out.size, reduction)
    if dout is None:
        dout = _new(OutputGradient, out)
    else:
        _check_buffer(dout, "dout", out)
        # The core sees copies of strided out or y, so it cannot see dout meet them.
        refuse_overlap("dout", dout, (("out", out), ("y", y)))
    _core.mse(_contiguous(out), _contiguous(y), dout, n)
    return dout


def bce_loss(out: Array, y: Array, *, reduction: Reduction = "mean") -> float:
    """Binary cross-entropy from probabilities, each log clamped to >= -100.

    -(1/N) sum(y log(out) + (1 - y) log(1 - out)), with log(1 - out) evaluated as
    log1p(-out). Finite for every out in [0, 1], including exactly 0 and 1 (see the
    module docstring); equals torch.nn.BCELoss. Targets y are 0/1 labels or
    probabilities in [0, 1]; a target outside [0, 1] (class indices passed as targets,
    say) is a ValueError, as torch.nn.BCELoss refuses it (torch.nn.BCEWithLogitsLoss
    gives a meaningless number), and so is a NaN target. One pass in
    the compiled core, summed in float64.

    Parameters
    ----------
    out, y : ndarray, same shape and dtype (float32 or float64)
        Probabilities in [0, 1] and targets.
    reduction : 'mean' (over all N elements) or 'sum'

    Returns
    -------
    float

    Raises
    ------
    ValueError
        An out below 0 or above 1 (logits, say), as torch.nn.BCELoss refuses it, or a y
        outside [0, 1] or NaN (a NaN label would turn the weights to NaN); a NaN out
        gives a NaN loss.

    Examples
    --------
    >>> import numpy as np
    >>> from siglayer.losses import bce_loss
    >>> round(bce_loss(np.array([0.5]), np.array([1.0])), 6)  # log 2
    0.693147
    >>> bce_loss(np.array([1.0]), np.array([0.0]))  # saturated and wrong: clamped
    100.0
    """
    _check_pair(out, y, "out")
    n = _divisor(out.size, reduction)
    out, y = _contiguous(out), _contiguous(y)
    return float(_core.bce_sigmoid(out, y, np.empty_like(out), n)) / n


def bce_with_logits_loss(z: Array, y: Array, *, reduction: Reduction = "mean") -> float:
    """Binary cross-entropy of sigmoid(z), computed from the logits z.

    Each term is max(z, 0) - z * y + log1p(exp(-|z|)): no overflow, finite for every
    finite z, exact where the sigmoid has saturated. Equals torch.nn.BCEWithLogitsLoss.

    Parameters
    ----------
    z, y : ndarray, same shape and dtype (float32 or float64)
        Logits (pre-activations) and targets.
    reduction : 'mean' (over all N elements) or 'sum'

    Returns
    -------
    float

    Raises
    ------
    ValueError
        A y outside [0, 1] (class indices passed as targets, say) or NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from siglayer.losses import bce_with_logits_loss
    >>> bce_with_logits_loss(np.array([300.0]), np.array([0.0]))  # sigmoid(300) == 1.0
    300.0
    """
    _check_pair(z, y, "z")
    n = _divisor(z.size, reduction)
    _check_unit_interval(y, "y", _TARGETS, nan_refused=True)
    terms = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    return float(terms.sum()) / n


def bce_grad_preactivation(
    out: Array, y: Array, *, reduction: Reduction = "mean", dZ: Array | None = None
) -> Array:
    """dL/dZ of binary cross-entropy through the sigmoid out = sigmoid(Z): (out - y) / N.

    Finite for every out in [0, 1] (no division by out * (1 - out)), with an absolute
    error of about one rounding of out. Feed it to
    ``backward_from_preactivation`` of the layer that produced out. Without ``dZ``, a new
    :class:`PreactivationGradient` (which ``backward`` refuses). ``dZ``, if given, is a
    C-contiguous buffer of out's shape and dtype to write into; it is returned as it is.

    Parameters
    ----------
    out, y : ndarray, same shape and dtype (float32 or float64)
        The sigmoid's output and the targets.
    reduction : 'mean' (N = out.size) or 'sum' (N = 1)
    dZ : ndarray, out's shape and dtype, optional

    Returns
    -------
    ndarray, out's shape and dtype

    Raises
    ------
    ValueError
        An out or a y outside [0, 1] (logits, or class indices, passed by mistake), or
        a NaN y; nothing is written into dZ then.

    Examples
    --------
    >>> import numpy as np
    >>> from siglayer.losses import bce_grad_preactivation
    >>> bce_grad_preactivation(np.array([1.0, 0.25]), np.array([0.0, 0.0]))
    PreactivationGradient([0.5  , 0.125])
    """
    _check_pair(out, y, "out")
    n = _divisor(out.size, reduction)
    _check_unit_interval(out, "out", _PROBABILITIES, nan_refused=False)
    _check_unit_interval(y, "y", _TARGETS, nan_refused=True)
    if dZ is None:
        dZ = _new(PreactivationGradient, out)
    else:
        _check_buffer(dZ, "dZ", out)
        refuse_overlap("dZ", dZ, (("out", out), ("y", y)))  # NumPy writes it, not the core
    np.subtract(out, y, out=dZ)
    np.divide(dZ, n, out=dZ)
    return dZ


def _check_buffer(buf: object, name: str, like: Array) -> None:
    if not isinstance(buf, _ndarray):
        raise not_an_ndarray(buf, name)
    refuse_matrix_or_masked(buf, name)
    if buf.shape != like.shape:
        raise ValueError(f"{name} has shape {buf.shape}, expected {like.shape}")
    if buf.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {buf.dtype}, expected {like.dtype}")
    if not buf.flags.c_contiguous or not buf.flags.writeable:
        raise ValueError(f"{name} must be a C-contiguous, writeable array")


def _new(kind: type[Array], like: Array) -> Array:
    """A new C-contiguous array of like's shape and dtype, of the gradient class ``kind``."""
    new: Array = np.ndarray.__new__(kind, like.shape, like.dtype)
    return new


class _Loss:
    """Loss value on call, gradient from :meth:`backward`."""

    _kind: type[Array] = OutputGradient

    def __init__(self, *, reduction: Reduction = "mean", reuse_buffers: bool = False) -> None:
        _divisor(1, reduction)  # validates
        if not isinstance(reuse_buffers, bool):
            raise TypeError(f"reuse_buffers must be a bool, got {type(reuse_buffers).__name__}")
        self.reduction: Reduction = reduction
        self.reuse_buffers = reuse_buffers
        self._caches: dict[np.dtype[np.floating], BufferCache] = {}
        self._grad: Array | None = None

    def __repr__(self) -> str:
        reuse = ", reuse_buffers=True" if self.reuse_buffers else ""
        return f"{type(self).__name__}(reduction={self.reduction!r}{reuse})"

    def _gradient_buffer(self, like: Array, inputs: tuple[tuple[str, Array], ...]) -> Array:
        """A new gradient array of like's shape and dtype, or the reused one; this loss's
        inputs must not be (views of) the reused one, which the call overwrites."""
        if not self.reuse_buffers:
            return _new(self._kind, like)
        cache = self._caches.get(like.dtype)
        if cache is None:
            cache = self._caches[like.dtype] = BufferCache(like.dtype, kind=self._kind)
        buffer = cache.get(like.shape)
        for name, a in inputs:
            if np.may_share_memory(buffer, a):
                raise _core.OverlapError(
                    f"{name} shares memory with this loss's own gradient buffer, which "
                    f"reuse_buffers=True overwrites on every call (it is what backward() "
                    f"returned): pass {name}.copy(), or use reuse_buffers=False"
                )
        return buffer

    def backward(self) -> Array:
        """The gradient of the last call's loss: a new array per call (with
        ``reuse_buffers=True``, a buffer overwritten by the next call of the same shape)."""
        if self._grad is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called before the loss, or after a loss "
                f"call that raised: call loss_fn(out, y) first"
            )
        return self._grad


class MSELoss(_Loss):
    """Mean squared error; ``backward()`` gives dL/dout for the network's ``backward``.

    Parameters
    ----------
    reduction : 'mean' (over all elements, default) or 'sum'
    reuse_buffers : bool, default False
        True: the gradient is written into one buffer per shape, overwritten by the next
        call (no allocation in a loop with a fixed batch size).

    The gradient is an :class:`OutputGradient`: ``backward_from_preactivation`` refuses
    it with a TypeError instead of skipping the sigmoid's derivative.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> net = siglayer.Sequential(siglayer.SigmoidLayer(3, 2, seed=0))
    >>> loss_fn = siglayer.losses.MSELoss()
    >>> out = net(np.ones((4, 3), np.float32))
    >>> loss = loss_fn(out, np.zeros((4, 2), np.float32))
    >>> _ = net.backward(loss_fn.backward())
    """

    def __call__(self, out: Array, y: Array) -> float:
        """The loss (a float); computes the gradient that :meth:`backward` returns."""
        self._grad = None  # a call that raises leaves no gradient behind (not the last one)
        _check_pair(out, y, "out")
        n = _divisor(out.size, self.reduction)
        dout = self._gradient_buffer(out, (("out", out), ("y", y)))
        loss = float(_core.mse(_contiguous(out), _contiguous(y), dout, n)) / n
        self._grad = dout
        return loss


class BCELoss(_Loss):
    """Binary cross-entropy fused with the sigmoid of the last layer.

    Calling it returns the loss; :meth:`backward` returns dZ = (out - y) / N, the gradient
    with respect to the last layer's *pre-activation*, for
    ``net.backward_from_preactivation``. It is a :class:`PreactivationGradient`:
    ``net.backward``, which would apply the sigmoid's derivative a second time, refuses
    it with a TypeError.

    Parameters
    ----------
    reduction : 'mean' (over all elements, default, as torch.nn.BCELoss) or 'sum'
    reuse_buffers : bool, default False
        As for :class:`MSELoss`.

    Notes
    -----
    The value is finite even where out is exactly 0 or 1. By default it is computed
    from out with each log clamped to >= -100 (torch.nn.BCELoss's convention); pass
    ``logits=Z`` (e.g. ``net[-1].preactivation()``) for the exact value from logits. The
    gradient is (out - y) / N either way. See :mod:`siglayer.losses`.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> net = siglayer.Sequential(siglayer.SigmoidLayer(3, 2, seed=0))
    >>> loss_fn = siglayer.losses.BCELoss()
    >>> out = net(np.ones((4, 3), np.float32))
    >>> loss = loss_fn(out, np.zeros((4, 2), np.float32))
    >>> _ = net.backward_from_preactivation(loss_fn.backward())
    """

    _kind = PreactivationGradient

    def __call__(self, out: Array, y: Array, *, logits: Array | None = None) -> float:
        """The loss (a float); computes the dZ that :meth:`backward` returns. An out below 0
        or above 1 is a ValueError (as for :func:`bce_loss`), raised before dZ changes;
        after any call that raises, :meth:`backward` raises too."""
        self._grad = None  # a call that raises leaves no gradient behind (not the last one)
        _check_pair(out, y, "out")
        n = _divisor(out.size, self.reduction)
        if logits is not None:
            _check_pair(logits, y, "logits")
        dZ = self._gradient_buffer(out, (("out", out), ("y", y)))
        # One pass writes dZ = (out - y) / n and sums the clamped logs.
        loss = float(_core.bce_sigmoid(_contiguous(out), _contiguous(y), dZ, n)) / n
        if logits is not None:
            loss = bce_with_logits_loss(logits, y, reduction=self.reduction)
        self._grad = dZ
        return loss
