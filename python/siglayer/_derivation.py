"""The derivation of backward, made checkable: full Jacobians, finite differences, a worked example.

``jacobian`` builds the tensors that ``backward`` never builds; contracting them with an
upstream gradient G = dL/dout gives backward's dW, db and dx (docs/derivation.md).
``gradcheck`` compares ``backward`` with central finite differences of ``forward``.
``explain`` prints a small worked example (``python -m siglayer explain``).
"""

from __future__ import annotations

import math
import sys
from typing import NamedTuple, TextIO

import numpy as np
from numpy.typing import NDArray

from . import _api, _compare, reference
from ._buffers import not_an_ndarray
from ._dtypes import is_bfloat16

__all__ = ["MAX_JACOBIAN_ELEMENTS", "GradcheckErrors", "explain", "gradcheck", "jacobian"]

Array = NDArray[np.floating]

# J_W alone has n * n_out * n_in * n_out entries: 10**7 of them is 80 MB in float64, and
# far past the sizes where looking at a Jacobian teaches anything.
MAX_JACOBIAN_ELEMENTS = 10**7


def _refuse_bfloat16(name: str, *arrays: Array) -> None:
    """The derivation tools compute in float32 or float64; bfloat16 is refused, by name."""
    held = [
        a for a, arr in zip("xWb", arrays, strict=True) if is_bfloat16(getattr(arr, "dtype", None))
    ]
    if held:
        raise TypeError(
            f"{name} takes float32 or float64 arrays; {', '.join(held)} "
            f"{'is' if len(held) == 1 else 'are'} bfloat16, whose rounding (2**-8) would "
            f"hide what {name} shows: pass .astype(np.float64) copies (the same values, "
            f"exactly). The bfloat16 backward is checked against the float64 reference on "
            f"its rounded inputs (docs/bfloat16.md)."
        )


# Largest norm-wise relative error `explain` accepts between a contracted Jacobian and
# backward (float64, reductions of a few terms: both are within a few ulp of exact).
EXPLAIN_TOLERANCE = 1e-12


def jacobian(x: Array, W: Array, b: Array) -> tuple[Array, Array, Array]:
    """Full Jacobians of out = sigmoid(x @ W + b) with respect to W, b and x.

    With s = out * (1 - out) and delta the Kronecker delta:

    - ``J_W[i, j, k, l] = d out[i, j] / d W[k, l] = s[i, j] * x[i, k] * delta(j, l)``
    - ``J_b[i, j, l]    = d out[i, j] / d b[l]    = s[i, j] * delta(j, l)``
    - ``J_x[i, j, p, k] = d out[i, j] / d x[p, k] = s[i, j] * W[k, j] * delta(i, p)``

    Contracting with an upstream gradient G of out's shape over (i, j) gives
    ``backward(G, x, W, out)``: ``einsum("ij,ijkl->kl", G, J_W)`` is dW, and likewise db
    and dx. Plain NumPy (``siglayer.reference.forward`` for out), for small problems.

    Parameters
    ----------
    x : ndarray, shape (n, n_in)
        Inputs; must be 2-D here (one batch index i).
    W : ndarray, shape (n_in, n_out)
        Weights.
    b : ndarray, shape (n_out,) or (1, n_out)
        Bias.

    All three share one dtype, float32 or float64 (siglayer's rules; bfloat16 is a
    TypeError: pass float64 copies); the Jacobians have that dtype.

    Returns
    -------
    J_W : ndarray, shape (n, n_out, n_in, n_out)
    J_b : ndarray, shape (n, n_out, n_out)
    J_x : ndarray, shape (n, n_out, n, n_in)

    Raises
    ------
    TypeError
        A non-array argument, an unsupported dtype, or mixed dtypes.
    ValueError
        x not 2-D, shapes that do not fit together, or Jacobians that would hold more
        than ``MAX_JACOBIAN_ELEMENTS`` (10**7) elements in total.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> x = np.ones((2, 3)); W = np.zeros((3, 1)); b = np.zeros(1)
    >>> J_W, J_b, J_x = siglayer.jacobian(x, W, b)
    >>> J_W.shape, J_b.shape, J_x.shape
    ((2, 1, 3, 1), (2, 1, 1), (2, 1, 2, 3))
    >>> J_W[0, 0, :, 0]  # out = 0.5 everywhere: s = 0.25, times x[0, k] = 1
    array([0.25, 0.25, 0.25])
    """
    if not isinstance(x, np.ndarray):
        raise not_an_ndarray(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n, n_in) for jacobian, got shape {x.shape}")
    if isinstance(W, np.ndarray) and W.ndim == 2 and W.shape[0] != x.shape[1]:
        # Checked here so that the message shows x's shape, not that of the row below.
        raise ValueError(_api.w_mismatch(W.shape, x.shape))
    # siglayer's own checks (types, one float32/float64 dtype, shapes), on one row: the
    # rules live in one place, and the size check below can trust W's shape.
    _api.forward(x[:1], W, b)
    _refuse_bfloat16("jacobian", x, W, b)
    n, n_in = x.shape
    n_out = W.shape[1]
    sizes = {
        "J_W": n * n_out * n_in * n_out,
        "J_b": n * n_out * n_out,
        "J_x": n * n_out * n * n_in,
    }
    total = sum(sizes.values())
    if total > MAX_JACOBIAN_ELEMENTS:
        raise ValueError(
            f"jacobian of x {x.shape}, W {W.shape} would hold {total:,} elements "
            f"({total * x.dtype.itemsize / 1e6:,.0f} MB: J_W {sizes['J_W']:,}, "
            f"J_b {sizes['J_b']:,}, J_x {sizes['J_x']:,}), more than the limit of "
            f"{MAX_JACOBIAN_ELEMENTS:,}; full Jacobians are for small worked examples "
            "(backward computes their contractions without building them)"
        )
    out = reference.forward(x, W, b)  # (n, n_out)
    s = out * (1 - out)  # (n, n_out): sigmoid'(Z) written through out
    J_W = np.zeros((n, n_out, n_in, n_out), x.dtype)
    J_b = np.zeros((n, n_out, n_out), x.dtype)
    J_x = np.zeros((n, n_out, n, n_in), x.dtype)
    # Only the delta's diagonal is nonzero: out[:, j] depends on column j of W and on b[j]
    # alone, and row i of out on row i of x alone.
    for j in range(n_out):
        J_W[:, j, :, j] = s[:, j, None] * x  # (n, n_in)
        J_b[:, j, j] = s[:, j]  # (n,)
    for i in range(n):
        J_x[i, :, i, :] = s[i, :, None] * W.T  # (n_out, n_in)
    return J_W, J_b, J_x


class GradcheckErrors(NamedTuple):
    """Norm-wise relative error of each gradient of ``backward`` against finite differences.

    What ``siglayer.gradcheck`` returns: for each gradient,
    ``max |backward - finite_difference| / max |finite_difference|``.

    Attributes
    ----------
    dx, dW, db : float
        The error of each gradient.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> errors = siglayer.gradcheck(np.ones((2, 3)), np.zeros((3, 1)), np.zeros(1))
    >>> isinstance(errors, siglayer.GradcheckErrors), errors._fields
    (True, ('dx', 'dW', 'db'))
    >>> errors.dW < 1e-8
    True
    """

    dx: float
    dW: float
    db: float


def gradcheck(
    x: Array,
    W: Array,
    b: Array,
    dout: Array | None = None,
    eps: float = 1e-5,
    *,
    seed: int = 0,
) -> GradcheckErrors:
    """Check ``siglayer.backward`` against central finite differences of ``siglayer.forward``.

    The loss is L = sum(dout * forward(x, W, b)), so dL/dout = dout. Each entry t of x,
    W and b is moved by +-eps in float64 copies of the inputs, and
    dL/dt ~ sum(dout * (out(t + eps) - out(t - eps))) / (2 eps) with siglayer's float64
    forward. ``backward`` runs in the inputs' own dtype: that is what is checked.

    Error measure, per gradient (as in ``siglayer.compare``)::

        max |backward - finite_difference| / max |finite_difference|

    (the max absolute error when the finite-difference gradient is all zero). It is
    norm-wise, so entries near zero, where finite differences have no correct digits,
    do not dominate. Typical values: ~1e-10 in float64; ~1e-7 in float32 when the
    outputs are not close to 1 (backward computes sigma' as out * (1 - out) from the
    rounded out, whose relative error grows like 2**-24 * exp(z) as out -> 1: 3e-6 at
    z = 5, 3e-2 at z = 15, and sigma' = 0 beyond z = 17.3). More, too, when a gradient is
    small through cancellation (db with n_out = 1 and dZ summing to nearly zero), since
    the error is relative to the gradient's own size. The wrong gradients of
    tests/test_derivation.py (dW ignoring dout, dW 1 % off, db as a mean, dx without
    sigma') give 1e-2 or more; an error confined to entries much smaller than the largest
    is diluted by this norm-wise measure (compare entrywise when it matters).

    Parameters
    ----------
    x : ndarray, shape (..., n_in)
    W : ndarray, shape (n_in, n_out)
    b : ndarray, shape (n_out,) or (1, n_out)
    dout : ndarray, shape (..., n_out), optional
        Upstream gradient G; by default drawn from a standard normal generator seeded
        with ``seed`` (a random G also catches a backward that ignores dout).
    eps : float, default 1e-5
        Finite-difference step (absolute), > 0.
    seed : int, default 0
        Seed for the default dout.

    All arrays share one dtype, float32 or float64 (bfloat16 is a TypeError: its
    rounding, ~4e-3, is as large as a wrong gradient's error). Cost: two forward calls
    per entry of x, W and b, so it is meant for small problems.

    Returns
    -------
    GradcheckErrors
        Named tuple of floats ``(dx, dW, db)``.

    Raises
    ------
    TypeError
        A non-array argument, an unsupported dtype, mixed dtypes, or a non-real eps.
    ValueError
        Shapes that do not fit together, or eps not finite and positive.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((4, 3)); W = rng.standard_normal((3, 2)); b = np.zeros(2)
    >>> errors = siglayer.gradcheck(x, W, b)
    >>> max(errors) < 1e-7
    True
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be finite and > 0, got {eps}")
    _refuse_bfloat16("gradcheck", x, W, b)
    out = _api.forward(x, W, b)  # siglayer's checks of x, W, b
    if dout is None:
        dout = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
    dx, dW, db = _api.backward(dout, x, W, out)  # the gradients under test; checks dout
    assert dx is not None  # need_dx defaults to True

    # Fresh C-contiguous float64 copies, perturbed in place through flat views (np.array
    # keeps an F order, and reshape(-1) of that is a copy: the perturbations never reached
    # forward and every difference was zero, a review's find).
    x64, W64, b64, dout64 = (np.array(a, dtype=np.float64, order="C") for a in (x, W, b, dout))

    def numeric_gradient(param: NDArray[np.float64]) -> NDArray[np.float64]:
        grad = np.empty(param.shape)
        flat = param.reshape(-1)  # a view: param is contiguous
        for index in range(flat.size):
            saved = flat[index]
            up, down = saved + eps, saved - eps
            flat[index] = up
            out_up = _api.forward(x64, W64, b64)
            flat[index] = down
            out_down = _api.forward(x64, W64, b64)
            flat[index] = saved
            # Difference the outputs before summing: no cancellation between large sums.
            grad.flat[index] = np.sum(dout64 * (out_up - out_down)) / (up - down)
        return grad

    return GradcheckErrors(
        dx=_compare._errors(dx.astype(np.float64), numeric_gradient(x64)).max_rel,
        dW=_compare._errors(dW.astype(np.float64), numeric_gradient(W64)).max_rel,
        db=_compare._errors(db.astype(np.float64), numeric_gradient(b64).reshape(-1)).max_rel,
    )


def _example() -> tuple[Array, Array, Array, Array]:
    """explain's inputs: x (4, 3), W (3, 2), b (2,) and a random G (4, 2), one decimal each:
    n, n_in and n_out all differ, so that the batch axis and the output axis cannot be
    told apart by shape alone (with n = n_out the wrong x.T @ dZ.T would have W's shape)."""
    rng = np.random.default_rng(12)

    def tenths(*shape: int) -> Array:
        return rng.integers(-20, 21, size=shape) / 10.0

    return tenths(4, 3), tenths(3, 2), tenths(2), tenths(4, 2)


def _show(title: str, a: Array, file: TextIO) -> None:
    print(f"{title} =", file=file)
    print(np.array2string(a, precision=8, floatmode="maxprec_equal"), file=file)


def _side_by_side(blocks: dict[str, Array], file: TextIO) -> None:
    """Print equally shaped 2-D arrays next to each other under their titles."""
    texts = [
        np.array2string(a, precision=8, floatmode="maxprec_equal").splitlines()
        for a in blocks.values()
    ]
    widths = [
        max(len(t) for t in [title, *lines]) for title, lines in zip(blocks, texts, strict=True)
    ]
    print("   ".join(t.ljust(w) for t, w in zip(blocks, widths, strict=True)).rstrip(), file=file)
    for row in zip(*texts, strict=True):
        print("   ".join(r.ljust(w) for r, w in zip(row, widths, strict=True)).rstrip(), file=file)


def explain(file: TextIO | None = None) -> int:
    """Print a small worked example of the derivation; return 0 if everything agrees.

    For x (4, 3), W (3, 2), b (2,): out, the Jacobian J_W, its contraction with G = ones
    next to ``backward``'s dW, then the same for a random G, and whether the contractions
    of J_b and J_x agree with db and dx. The Jacobians are built from their closed forms:
    "equal" means the contraction and ``backward`` agree, not a finite-difference check
    (that is :func:`gradcheck`).
    The exit status is 1 if a contraction and ``backward`` differ by more than
    ``EXPLAIN_TOLERANCE`` (norm-wise relative).
    """
    file = sys.stdout if file is None else file
    x, W, b, G_random = _example()
    n, n_in = x.shape
    n_out = W.shape[1]
    print(
        "out = sigmoid(x @ W + b), float64: the gradient of L with respect to W, from the "
        "Jacobian\n",
        file=file,
    )
    _show(f"x  (n={n}, n_in={n_in})", x, file)
    _show(f"W  (n_in={n_in}, n_out={n_out})", W, file)
    _show(f"b  (n_out={n_out},)", b, file)
    out = _api.forward(x, W, b)
    _show(f"out = sigmoid(x @ W + b)  ({n}, {n_out})", out, file)

    J_W, J_b, J_x = jacobian(x, W, b)
    print(
        "\n1. The Jacobian of out with respect to W, a four-index array of shape "
        f"{J_W.shape}:\n   J_W[i, j, k, l] = d out[i,j] / d W[k,l] "
        "= out[i,j] (1 - out[i,j]) x[i,k] delta(j,l).\n"
        "   Block J_W[i, j] is an (n_in, n_out) matrix: only column l = j is nonzero.",
        file=file,
    )
    for i in range(n):
        _side_by_side({f"J_W[{i}, {j}]": J_W[i, j] for j in range(n_out)}, file)

    failures = 0
    cases = [
        ("G = ones  (L = sum of all outputs: the textbook formula)", np.ones_like(out)),
        ("G random  (any upstream gradient)", G_random),
    ]
    for step, (title, G) in enumerate(cases, start=2):
        print(f"\n{step}. {title}", file=file)
        _show("G", G, file)
        dx, dW, db = _api.backward(G, x, W, out)
        assert dx is not None
        dZ = G * out * (1 - out)
        _show("dZ = G * out * (1 - out)", dZ, file)
        if step == 2:
            print(
                "Each sample i contributes the outer product x[i]^T dZ[i] (n_in, n_out);\n"
                "dW is their sum over the batch, which is the matrix product x.T @ dZ:",
                file=file,
            )
            per_sample = {f"outer(x[{i}], dZ[{i}])": np.outer(x[i], dZ[i]) for i in range(n)}
            _side_by_side(per_sample, file)
            error = _compare._errors(np.stack(list(per_sample.values())).sum(axis=0), dW).max_rel
            failures += error > EXPLAIN_TOLERANCE
            print(
                f"sum of the outer products vs backward's dW, relative error {error:.1e}  "
                f"{'equal' if error <= EXPLAIN_TOLERANCE else 'MISMATCH'}",
                file=file,
            )
        contracted = {
            "dW": np.einsum("ij,ijkl->kl", G, J_W),
            "db": np.einsum("ij,ijl->l", G, J_b),
            "dx": np.einsum("ij,ijpk->pk", G, J_x),
        }
        print(
            "dW[k,l] = sum over i, j of G[i,j] J_W[i,j,k,l], next to backward's x.T @ dZ:",
            file=file,
        )
        _side_by_side({"dW from J_W": contracted["dW"], "dW from backward": dW}, file)
        for name, want in (("dW", dW), ("db", db), ("dx", dx)):
            error = _compare._errors(contracted[name], want).max_rel
            ok = error <= EXPLAIN_TOLERANCE
            failures += not ok
            print(
                f"{name}: contraction of J_{name[1:]} vs backward, relative error "
                f"{error:.1e}  {'equal' if ok else 'MISMATCH'}",
                file=file,
            )
    if failures:
        print(f"\n{failures} contraction(s) MISMATCH backward", file=sys.stderr)
        return 1
    print("\nevery contraction equals backward", file=file)
    return 0
