"""siglayer against the NumPy reference, on given or random inputs."""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import DTypeLike, NDArray

from . import _api, reference
from ._buffers import not_an_ndarray
from ._dtypes import FLOAT_DTYPES, is_bfloat16, layer_dtype
from ._typing import Float

__all__ = ["TOLERANCE", "ErrorStats", "compare"]

# Largest acceptable norm-wise relative error (max |siglayer - reference| / max |reference|)
# for the sizes `python -m siglayer` checks (reductions up to ~1000 long).
# Per dtype of FLOAT_DTYPES (a new dtype without an entry fails at import).
TOLERANCE = dict(zip(FLOAT_DTYPES, (1e-4, 1e-11), strict=True))


class ErrorStats(NamedTuple):
    """Errors of one result of siglayer against ``siglayer.reference``.

    Attributes
    ----------
    max_abs : float
        ``max |siglayer - reference|`` over all elements, computed in float64.
    max_rel : float
        ``max_abs`` divided by the largest finite ``|reference|`` (the norm-wise
        relative error); equal to ``max_abs`` when the reference is all zero.

    Examples
    --------
    >>> import siglayer
    >>> stats = siglayer.compare(n=4, n_in=3, n_out=2)["out"]
    >>> isinstance(stats, siglayer.ErrorStats), stats.max_abs <= stats.max_rel
    (True, True)
    """

    max_abs: float
    max_rel: float


def _errors(got: NDArray[np.floating], want: NDArray[np.floating]) -> ErrorStats:
    if got.size == 0:
        return ErrorStats(0.0, 0.0)
    with np.errstate(invalid="ignore"):
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    # NaN in the same place in both is agreement; anywhere else it is an infinite error.
    same_nan = np.isnan(got) & np.isnan(want)
    same_inf = np.isinf(got) & (got == want)
    diff = np.where(same_nan | same_inf, 0.0, np.where(np.isnan(diff), np.inf, diff))
    max_abs = float(diff.max())
    scale = float(np.abs(np.where(np.isfinite(want), want, 0)).max())
    return ErrorStats(max_abs, max_abs / scale if scale > 0 else max_abs)


def _same(a: NDArray[Any]) -> NDArray[Any]:
    return a


def _widened(a: NDArray[Any]) -> NDArray[Any]:
    return np.asarray(a).astype(np.float64)


def compare(
    x: NDArray[Float] | None = None,
    W: NDArray[Float] | None = None,
    b: NDArray[Float] | None = None,
    dout: NDArray[Float] | None = None,
    *,
    n: int = 64,
    n_in: int = 32,
    n_out: int = 16,
    dtype: DTypeLike = np.float64,
    seed: int = 0,
) -> dict[str, ErrorStats]:
    """Run siglayer and ``siglayer.reference`` on the same inputs and report the errors.

    Parameters
    ----------
    x : ndarray, shape (..., n_in), optional
        Inputs; drawn from a standard normal distribution with shape (n, n_in) when
        not given.
    W : ndarray, shape (n_in, n_out), optional
        Weights; drawn with entries of variance 1/n_in when not given (n_out then from
        b or dout when one is given).
    b : ndarray, shape (n_out,), optional
        Bias; drawn from a standard normal when not given.
    dout : ndarray, shape (..., n_out), optional
        Upstream gradient for the backward pass; drawn when not given.
    n, n_in, n_out : int
        Sizes of the inputs that are drawn.
    dtype : float32, float64 or bfloat16, default float64
        dtype of the inputs that are drawn; when x is given, its dtype is used. For
        bfloat16 (``"bfloat16"`` or ``ml_dtypes.bfloat16``; needs ml-dtypes) the
        reference runs in float64 on the same bfloat16 values.
    seed : int
        Seed of the ``numpy.random.default_rng`` generator the inputs are drawn from.

    Returns
    -------
    dict of str to ErrorStats
        ``{"out": ..., "dx": ..., "dW": ..., "db": ...}``: for each result, the max
        absolute error and that error divided by the largest finite reference
        magnitude (``max_rel``, the norm-wise relative error). NaN or inf in the same
        place in both counts as agreement, anywhere else as an infinite error.

    Raises
    ------
    TypeError, ValueError
        As ``siglayer.forward`` and ``siglayer.backward`` for bad inputs.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> errors = siglayer.compare(n=8, n_in=5, n_out=3)
    >>> list(errors)
    ['out', 'dx', 'dW', 'db']
    >>> errors["dW"].max_rel < 1e-12
    True
    >>> siglayer.compare(dtype=np.float32)["out"].max_rel < 1e-5
    True
    """
    for name, given in (("x", x), ("W", W), ("b", b), ("dout", dout)):
        if given is not None and not isinstance(given, np.ndarray):
            raise not_an_ndarray(given, name, or_none=True)
    for name, size in (("n", n), ("n_in", n_in), ("n_out", n_out)):
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(size).__name__}")
        if size < 0:
            raise ValueError(f"{name} must be >= 0, got {size}")
    rng = np.random.default_rng(seed)
    # The dtype of drawn inputs is checked as a layer's (forward would name x, an array
    # the caller never passed).
    dt = layer_dtype(dtype) if x is None else x.dtype
    if x is None:
        x = rng.standard_normal(size=(n, n_in)).astype(dt)
    # Sizes of what is drawn come from the given arrays where they have them; where one
    # has not (a 0-d x, a 1-D W), the defaults, and forward names the bad argument (a
    # review found a bare IndexError).
    if W is None:
        if x.ndim >= 1:
            n_in = x.shape[-1]
        # n_out from a given b or dout (a review found a given b checked against the
        # default n_out of a W the caller never passed)
        if b is not None and b.ndim >= 1:
            n_out = b.shape[-1]
        elif dout is not None and dout.ndim >= 1:
            n_out = dout.shape[-1]
        W = (rng.standard_normal(size=(n_in, n_out)) / np.sqrt(max(1, n_in))).astype(dt)
    if b is None:
        b = rng.standard_normal(size=(W.shape[1] if W.ndim == 2 else n_out,)).astype(dt)
    out = _api.forward(x, W, b)
    if dout is None:
        dout = rng.standard_normal(size=out.shape).astype(dt)
    dx, dW, db = _api.backward(dout, x, W, out)
    # bfloat16 is storage: the oracle is float64 on the very bfloat16 values (docs/bfloat16.md).
    wide = _widened if is_bfloat16(dt) else _same
    ref_out = reference.forward(wide(x), wide(W), wide(b))
    ref_dx, ref_dW, ref_db = reference.backward(wide(dout), wide(x), wide(W), ref_out)
    assert ref_dx is not None
    return {
        "out": _errors(out, ref_out),
        "dx": _errors(dx, ref_dx),
        "dW": _errors(dW, ref_dW),
        "db": _errors(db, ref_db),
    }
