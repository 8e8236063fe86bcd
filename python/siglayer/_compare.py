"""siglayer against the NumPy reference, on given or random inputs."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import DTypeLike, NDArray

from . import _api, reference

__all__ = ["ErrorStats", "compare", "TOLERANCE"]

# Largest acceptable norm-wise relative error (max |siglayer - reference| / max |reference|)
# for the sizes `python -m siglayer` checks (reductions up to ~1000 long).
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-11}


class ErrorStats(NamedTuple):
    """Max absolute error, and that error relative to the largest reference value."""

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


def compare(
    x: NDArray[np.floating] | None = None,
    W: NDArray[np.floating] | None = None,
    b: NDArray[np.floating] | None = None,
    dout: NDArray[np.floating] | None = None,
    *,
    n: int = 64,
    n_in: int = 32,
    n_out: int = 16,
    dtype: DTypeLike = np.float64,
    seed: int = 0,
) -> dict[str, ErrorStats]:
    """Run siglayer and ``siglayer.reference`` on the same inputs and report the errors.

    Inputs not given are drawn from a seeded generator with shapes (n, n_in),
    (n_in, n_out), (n_out,) and (n, n_out) in ``dtype``.

    Returns
    -------
    dict
        ``{"out": ErrorStats, "dx": ..., "dW": ..., "db": ...}``, where ``max_rel`` is
        the max absolute error divided by the largest finite reference magnitude.

    Examples
    --------
    >>> import siglayer
    >>> errors = siglayer.compare(n=8, n_in=5, n_out=3)
    >>> errors["dW"].max_rel < 1e-12
    True
    """
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype) if x is None else x.dtype
    if x is None:
        x = rng.standard_normal((n, n_in)).astype(dt)
    if W is None:
        W = (rng.standard_normal((x.shape[-1], n_out)) / np.sqrt(max(1, x.shape[-1]))).astype(dt)
    if b is None:
        b = rng.standard_normal(W.shape[1]).astype(dt)
    out = _api.forward(x, W, b)
    if dout is None:
        dout = rng.standard_normal(out.shape).astype(dt)
    dx, dW, db = _api.backward(dout, x, W, out)
    ref_out = reference.forward(x, W, b)
    ref_dx, ref_dW, ref_db = reference.backward(dout, x, W, ref_out)
    assert dx is not None and ref_dx is not None
    return {
        "out": _errors(out, ref_out),
        "dx": _errors(dx, ref_dx),
        "dW": _errors(dW, ref_dW),
        "db": _errors(db, ref_db),
    }
