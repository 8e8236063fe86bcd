"""Error bounds for bfloat16 storage computing in float32, shared by the PyTorch and JAX
bfloat16 tests. The oracle is siglayer.reference in float64 on the very bfloat16 inputs
(widened exactly), so every bound below covers only what the computation rounds.

Unit roundoffs: U = 2^-8 for bfloat16 (8 significant bits, round to nearest even:
|fl(v) - v| <= U |v|; its machine epsilon, the spacing at 1, is 2^-7) and E = 2^-24 for
float32. Two facts make the bounds short:

- a product of two bfloat16 values is exact in float32 (8 + 8 significant bits <= 24), so
  a float32-accumulated product of inner length k errs by at most gamma_k ~ k E times
  the sum of the magnitudes (conftest's product bound, 2 (k + 4) E, with its slack);
- every rounding to bfloat16 adds at most U times the magnitude of what it rounds.

**Forward.** z = x @ W + b accumulated in float32 (k = n_in + 1 terms), sigma in float32
(a few E), out rounded to bfloat16 once:
    |out - ref| <= U |ref| + 2 Dz,   Dz = sigma' * zerr + 4 E,   sigma' <= 1/4,
    zerr = 2 (n_in + 5) E (|x| @ |W| + |b|),
where 2 Dz covers the rounding of the perturbed value ((1 + U) Dz) generously. For
out in (0, 1) that is one half-ulp of bfloat16 (<= 2^-9 near 1, U |out| in general)
plus a float32-sized term: a wrong result (a wrong sign, a missing bias, a transposed
W) misses it by orders of magnitude.

**Backward**, given the same bfloat16 out and dout on both sides (so that dZ =
dout * out * (1 - out) is the same number, computed in float64 for the oracle): the core
computes dZ in float32 (3 roundings, <= 4 E |dZ|) and rounds it to bfloat16 once for the
two products (<= U |dZ| each element: the dominant term). Then, with P the product of the
magnitudes,
    dW: |dW - ref| <= (U + 2 (n + 6) E) P_W,   P_W = |x|^T @ |dZ|    (n = rows)
    dx: |dx - ref| <= (U + 2 (n_out + 6) E) P_x,   P_x = |dZ| @ |W|^T
and db sums the unrounded float32 dZ: |db - ref| <= 2 (n + 6) E sum_rows |dZ|. A gradient
that is then rounded to bfloat16 (dx always; dW for a bfloat16 W; db for a bfloat16 b)
adds U |ref| plus U times the bound. Relative to max |dW| these are a few U in practice:
the per-element roundings of dZ are independent, so their sum grows like sqrt(n) while
P_W grows like n; the elementwise bound is the one that can never fail on a right
result.
"""

from __future__ import annotations

import math

import numpy as np

import siglayer.reference as reference
from conftest import assert_within

U = 2.0**-8  # bfloat16 unit roundoff
E = 2.0**-24  # float32 unit roundoff


def as64(a) -> np.ndarray:
    """A float64 ndarray holding exactly the values of a NumPy, JAX or torch array (a
    bfloat16 tensor has no NumPy conversion of its own: widened by torch first)."""
    if type(a).__module__.startswith("torch"):
        return a.detach().double().numpy()
    return np.asarray(a).astype(np.float64)


def forward_bound(x, W, b, ref, *, z_rounded: bool = False) -> np.ndarray:
    """Allowed |out - ref| for bfloat16 out (module doc); all arguments float64.

    z_rounded: for PyTorch's and JAX's own bfloat16 layers, whose x @ W is rounded to
    bfloat16 and x @ W + b again before sigma: z then errs by up to
    U (2 |x| @ |W| + |b|) (1 + U) more, scaled by sigma' <= 1/4."""
    n_in = W.shape[0]
    x2 = np.abs(x.reshape(math.prod(x.shape[:-1]), n_in))
    xW = (x2 @ np.abs(W)).reshape(ref.shape)
    dz = 0.25 * 2 * (n_in + 5) * E * (xW + np.abs(b)) + 4 * E
    if z_rounded:
        dz = dz + 0.25 * U * (1 + U) * (2 * xW + np.abs(b))
    return U * np.abs(ref) + 2 * dz


def out_difference_bounds(dout, x, W, out_a, out_b) -> tuple[np.ndarray, ...]:
    """How far the exact gradients from two different outs can be apart: dZ = dout *
    out * (1 - out) moves by at most |dout| |out_a - out_b| (its derivative in out is
    1 - 2 out, at most 1 in magnitude on [0, 1]); the products carry that along."""
    n_in, n_out = W.shape
    rows = math.prod(x.shape[:-1])
    D = (np.abs(dout) * np.abs(out_a - out_b)).reshape(rows, n_out)
    x2 = np.abs(x.reshape(rows, n_in))
    dx = (D @ np.abs(W).T).reshape(x.shape)
    return dx, x2.T @ D, D.sum(axis=0)


def gradient_bounds(
    dout,
    x,
    W,
    out,
    *,
    dW_rounded: bool,
    db_rounded: bool,
    dZ_rounded_for_db: bool = False,
    dZ_roundings: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Allowed errors of (dx, dW, db) against reference.backward(dout, x, W, out), the
    arrays float64 copies of the bfloat16 values (module doc). dx is always rounded
    to bfloat16; dW and db when their primal is. dZ_rounded_for_db: db summed from the
    bfloat16 dZ (PyTorch's and JAX's own backward) instead of the unrounded one
    (siglayer's). dZ_roundings: how many bfloat16 roundings dZ may go through (1 for
    siglayer and PyTorch, which compute it in float32; up to 3 for a chain of bfloat16
    operations, g * out * (1 - out), as JAX's own sigmoid gradient is written)."""
    n_in, n_out = W.shape
    rows = math.prod(x.shape[:-1])
    dZ = np.abs((dout * out * (1 - out)).reshape(rows, n_out))
    x2 = np.abs(x.reshape(rows, n_in))
    _, dW_ref, db_ref = reference.backward(dout, x, W, out)
    dx_ref = reference.backward(dout, x, W, out)[0].reshape(rows, n_in)

    def rounded(bound, ref, yes):
        return (1 + U) * bound + U * np.abs(ref) if yes else bound

    dZ_unit = (1 + U) ** dZ_roundings - 1  # dZ_roundings U, to first order
    dW = rounded((dZ_unit + 2 * (rows + 6) * E) * (x2.T @ dZ), dW_ref, dW_rounded)
    db_unit = (dZ_unit if dZ_rounded_for_db else 0.0) + 2 * (rows + 6) * E
    db = rounded(db_unit * dZ.sum(axis=0), db_ref, db_rounded)
    dx = rounded((dZ_unit + 2 * (n_out + 6) * E) * (dZ @ np.abs(W).T), dx_ref, True)
    return dx.reshape(x.shape), dW, db


def assert_bf16_within(got, want, bound, what: str) -> None:
    """got (any float dtype) against the float64 want, elementwise within bound."""
    assert_within(as64(got), np.asarray(want, np.float64), bound, what)


def normwise(got, want) -> float:
    """max |got - want| / max |want|, in float64."""
    want = np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max(initial=0.0)), np.finfo(np.float64).tiny)
    return float(np.abs(as64(got) - want).max(initial=0.0)) / scale
