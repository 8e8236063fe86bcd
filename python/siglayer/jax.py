"""siglayer inside JAX: ``sigmoid_linear(x, W, b)``, traceable by ``jax.jit``, ``jax.grad``
and ``jax.vmap``, computed by siglayer's compiled forward and backward on the CPU.

Importable only when JAX is installed (``pip install jax``); it is not imported
by ``import siglayer``.

Two ways into the core, the same numbers:

- **XLA FFI** (``implementation="ffi"``): a custom call whose handler, compiled into
  ``siglayer._core`` against the FFI headers jaxlib ships, passes XLA's own buffers to the
  core: no copy, no Python, no GIL at run time. Built when the build finds jaxlib's
  headers (``-C cmake.define.SIGLAYER_XLA_FFI_INCLUDE=<jax.ffi.include_dir()>``, or a
  build without isolation where jax is installed; see the README); ``ffi_available()``
  says whether this installation has it.
- **Callback** (``implementation="callback"``): ``jax.pure_callback`` into
  ``siglayer.forward`` / ``siglayer.backward`` on the host buffers. Always there; the
  fallback when the FFI handlers were not built.

The gradient is a ``jax.custom_vjp`` whose backward is siglayer's backward
(dZ = dout * out * (1 - out), dW = x^T dZ, db = sum_rows dZ, dx = dZ W^T), from the ``out``
saved by the forward pass. Under ``jax.vmap`` a batch of x (with W and b shared) is one more
leading axis of x: one call. A batch of weights, and the backward pass of a batch (whose
dW is per batch element), run as a loop over the batch (``jax.lax.map``), one call each.

float32, and float64 with ``jax_enable_x64``; all three arrays of one dtype (nothing is
converted). Or bfloat16 x and W with a bfloat16 or float32 b: out is bfloat16, the core
accumulates in float32 and rounds once. Its backward computes dW and db in float32 (from
dZ rounded once to bfloat16; db from the unrounded dZ) and dx in bfloat16; JAX needs each
cotangent in its primal's dtype, so dW is then rounded to bfloat16 once (XLA's convert,
round to nearest even) and db to b's dtype (a float32 b keeps its float32 db).

CPU only. First-order reverse mode only: ``jax.jvp`` and second derivatives are not
available (use ``jax.nn.sigmoid(x @ W + b)`` for those); ``jax.hessian`` raises a
NotImplementedError that says so.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

try:
    import jax  # type: ignore[import-not-found, unused-ignore]
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "siglayer.jax needs JAX, which is not installed: pip install jax (siglayer's jax "
        "extra). The rest of siglayer works without it."
    ) from exc

from . import _api, _core

if TYPE_CHECKING:
    from jax import Array  # type: ignore[import-not-found, unused-ignore]
else:
    Array = Any

# jax's constructors and callbacks are untyped: reached through Any, so that mypy --strict
# accepts this module whether or not jax is installed.
_jax: Any = jax

__all__ = ["ffi_available", "sigmoid_linear"]

Implementation = Literal["auto", "ffi", "callback"]
_BFLOAT16 = np.dtype(_jax.numpy.bfloat16)  # ml_dtypes.bfloat16, which jax depends on
_FLOAT32 = np.dtype(np.float32)
_DTYPES = (_FLOAT32, np.dtype(np.float64), _BFLOAT16)
_FORWARD_TARGET = "siglayer_forward"
_BACKWARD_TARGET = "siglayer_backward"


def _register_ffi_targets() -> bool:
    """Register the handlers compiled into _core (if they were) with XLA's CPU backend."""
    library = ctypes.CDLL(_core.__file__)  # already loaded: the same handle, not a second copy
    try:
        handlers = {
            _FORWARD_TARGET: library.siglayer_jax_forward,
            _BACKWARD_TARGET: library.siglayer_jax_backward,
        }
    except AttributeError:
        return False
    for name, handler in handlers.items():
        _jax.ffi.register_ffi_target(name, _jax.ffi.pycapsule(handler), platform="cpu")
    return True


_FFI = _register_ffi_targets()


def ffi_available() -> bool:
    """Whether this installation has the XLA FFI handlers (else only the callback path).

    Returns
    -------
    bool
        True when ``siglayer._core`` was built with the handlers (the build found jaxlib's
        FFI headers); ``sigmoid_linear(..., implementation="auto")`` then uses them.

    Examples
    --------
    >>> import siglayer.jax
    >>> siglayer.jax.ffi_available() in (True, False)
    True
    """
    return _FFI


# ---- the two ways into the core: (x, W, b) -> out and (dout, x, W, out) -> (dx, dW, db)


def _out_type(x: Array, W: Array) -> Any:
    return _jax.ShapeDtypeStruct((*x.shape[:-1], W.shape[1]), x.dtype)


def _gradient_types(x: Array, W: Array, need_dx: bool, need_dW: bool) -> tuple[Any, ...]:
    # dx in the storage dtype; dW and db in the compute dtype, as the core returns them.
    # A gradient not needed is an empty array (its product is skipped).
    compute = _FLOAT32 if W.dtype == _BFLOAT16 else W.dtype
    return (
        _jax.ShapeDtypeStruct(x.shape if need_dx else (0,), x.dtype),
        _jax.ShapeDtypeStruct(W.shape if need_dW else (0,), compute),
        _jax.ShapeDtypeStruct(W.shape[1:], compute),
    )


def _ffi_forward(x: Array, W: Array, b: Array) -> Array:
    call = _jax.ffi.ffi_call(_FORWARD_TARGET, _out_type(x, W), vmap_method="sequential")
    out: Array = call(x, W, b)
    return out


def _ffi_backward(
    dout: Array, x: Array, W: Array, out: Array, need_dx: bool, need_dW: bool
) -> tuple[Array, Array, Array]:
    types = _gradient_types(x, W, need_dx, need_dW)
    call = _jax.ffi.ffi_call(_BACKWARD_TARGET, types, vmap_method="sequential")
    dx, dW, db = call(dout, x, W, out, need_dx=need_dx, need_dW=need_dW)
    return dx, dW, db


def _host_forward(x: Any, W: Any, b: Any) -> np.ndarray[Any, Any]:
    return _api.forward(np.asarray(x), np.asarray(W), np.asarray(b))


def _host_backward(
    dout: Any, x: Any, W: Any, out: Any, need_dx: bool, need_dW: bool
) -> tuple[np.ndarray[Any, Any], ...]:
    x, W = np.asarray(x), np.asarray(W)
    dx, dW, db = _api.backward(
        np.asarray(dout), x, W, np.asarray(out), need_dx=need_dx, need_dW=need_dW
    )
    compute = db.dtype
    return (
        dx if dx is not None else np.empty(0, x.dtype),
        dW if dW is not None else np.empty(0, compute),
        db,
    )


def _callback_forward(x: Array, W: Array, b: Array) -> Array:
    out: Array = _jax.pure_callback(
        _host_forward, _out_type(x, W), x, W, b, vmap_method="sequential"
    )
    return out


@functools.cache
def _host_backward_for(need_dx: bool, need_dW: bool) -> Callable[..., Any]:
    """One callable per flag pair: JAX keys its compile cache on the callback's equality,
    and a fresh partial each call (equal only to itself) made every eager (unjitted)
    grad compile and keep a new executable, ~1.5 MB a layer a step (a memory audit)."""
    return functools.partial(_host_backward, need_dx=need_dx, need_dW=need_dW)


def _callback_backward(
    dout: Array, x: Array, W: Array, out: Array, need_dx: bool, need_dW: bool
) -> tuple[Array, Array, Array]:
    dx, dW, db = _jax.pure_callback(
        _host_backward_for(bool(need_dx), bool(need_dW)),
        _gradient_types(x, W, need_dx, need_dW),
        dout,
        x,
        W,
        out,
        vmap_method="sequential",
    )
    return dx, dW, db


# ---- batching and differentiation, the same for both ways in


def _sequential(
    function: Callable[..., Array], in_batched: Sequence[bool], args: Sequence[Array]
) -> Array:
    """``function`` once per batch element: the batched args sliced, the others shared."""
    outs: Array = _sequential_runner(function, tuple(bool(f) for f in in_batched))(tuple(args))
    return outs


@functools.cache
def _sequential_runner(
    function: Callable[..., Array], in_batched: tuple[bool, ...]
) -> Callable[[tuple[Array, ...]], Array]:
    """One jitted runner per (layer, batched flags), every operand an argument: a closure
    made afresh at each call (what lax.map was given before) is a new function to JAX's
    compile cache, and an eager jax.vmap over W or b compiled and kept a new executable
    every call, ~1.8 MB each (a review of the JAX frontend)."""

    def run(args: tuple[Array, ...]) -> Array:
        def one(batched: tuple[Array, ...]) -> Array:
            slices = iter(batched)
            return function(
                *(next(slices) if flag else a for flag, a in zip(in_batched, args, strict=True))
            )

        outs: Array = _jax.lax.map(
            one, tuple(a for flag, a in zip(in_batched, args, strict=True) if flag)
        )
        return outs

    runner: Callable[[tuple[Array, ...]], Array] = _jax.jit(run)
    return runner


_SECOND_ORDER = (
    "siglayer.jax.sigmoid_linear is differentiable once, in reverse mode (jax.grad, "
    "jax.vjp, jax.jacrev): its passes are calls into siglayer's core, which JAX cannot "
    "differentiate again, so forward mode over them (jax.jvp, jax.jacfwd) and second "
    "derivatives (jax.hessian) are not available; use jax.nn.sigmoid(x @ W + b) there"
)


def _no_forward_mode(function: Callable[..., Any], nondiff_argnums: tuple[int, ...] = ()) -> Any:
    """function, whose forward-mode derivative (what a second derivative takes of the
    forward and backward passes) is siglayer's own error rather than JAX's about callbacks
    or FFI calls (a user saw "Pure callbacks do not support JVP"). Traced away under jit;
    the rule runs only at trace time, when JAX asks for it."""
    wrapped = _jax.custom_jvp(function, nondiff_argnums=nondiff_argnums)

    def refuse(*args: Any) -> Any:
        raise NotImplementedError(_SECOND_ORDER)

    wrapped.defjvp(refuse)
    return wrapped


def _make_layer(
    forward: Callable[[Array, Array, Array], Array],
    backward: Callable[[Array, Array, Array, Array, bool, bool], tuple[Array, Array, Array]],
) -> Callable[[Array, Array, Array], Array]:
    raw_backward = backward

    @functools.cache
    def batchable_backward(need_dx: bool, need_dW: bool) -> Callable[..., Any]:
        # Batched (vmap over W, or per-example gradients), the backward runs once per
        # element through the cached runner: the calls' own vmap_method="sequential" made
        # JAX compile a new loop at every eager call (a review counted one a call).
        def call(dout: Array, x: Array, W: Array, out: Array) -> tuple[Array, Array, Array]:
            return raw_backward(dout, x, W, out, need_dx, need_dW)

        wrapped = _jax.custom_batching.custom_vmap(call)

        def rule(
            axis_size: int, in_batched: Sequence[bool], *args: Array
        ) -> tuple[Any, tuple[bool, bool, bool]]:
            return _sequential(wrapped, in_batched, args), (True, True, True)

        wrapped.def_vmap(rule)
        batchable: Callable[..., Any] = wrapped
        return batchable

    def backward_call(
        dout: Array, x: Array, W: Array, out: Array, need_dx: bool, need_dW: bool
    ) -> tuple[Array, Array, Array]:
        result: tuple[Array, Array, Array] = batchable_backward(bool(need_dx), bool(need_dW))(
            dout, x, W, out
        )
        return result

    backward = _no_forward_mode(backward_call, nondiff_argnums=(4, 5))

    def forward_batchable(x: Array, W: Array, b: Array) -> Array:
        return forward(x, W, b)

    batchable = _jax.custom_batching.custom_vmap(forward_batchable)

    def vmap_rule(
        axis_size: int, in_batched: Sequence[bool], x: Array, W: Array, b: Array
    ) -> tuple[Array, bool]:
        _, W_batched, b_batched = in_batched
        if not (W_batched or b_batched):
            # The batch axis (in front) is one more leading axis of x: one call for all.
            return batchable(x, W, b), True
        return _sequential(batchable, in_batched, (x, W, b)), True

    batchable.def_vmap(vmap_rule)
    batchable = _no_forward_mode(batchable)

    def layer(x: Array, W: Array, b: Array) -> Array:
        return _varying_like((x, W, b), batchable(x, W, b))

    # symbolic_zeros: the forward rule learns which inputs JAX differentiates
    # (CustomVJPPrimal.perturbed), so that the backward computes only their cotangents
    # (jax.grad in W and b of a first layer: no dx product). Which ones is kept in the
    # residuals' structure, () for needed and None for not, static under jit.
    def layer_forward(x: Any, W: Any, b: Any) -> tuple[Array, tuple[Any, ...]]:
        out = _varying_like((x.value, W.value, b.value), batchable(x.value, W.value, b.value))
        needs = tuple(() if p.perturbed else None for p in (x, W, b))
        # b only for its dtype (a saved reference, not a copy).
        return out, (x.value, W.value, b.value, out, needs)

    def layer_backward(saved: tuple[Any, ...], dout: Any) -> tuple[Array | None, ...]:
        x, W, b, out, needs = saved
        need_dx, need_dW, need_db = (flag is not None for flag in needs)
        if isinstance(dout, _jax.custom_derivatives.SymbolicZero):
            return None, None, None  # out is not differentiated: zero cotangents
        dx, dW, db = backward(dout, x, W, out, need_dx, need_dW)
        # Cotangents in their primals' dtypes: for bfloat16 the core's float32 dW (and db
        # of a bfloat16 b) rounded once, to nearest even; otherwise no conversion at all.
        # None: a symbolic zero, for an input JAX does not differentiate.
        axes = _union_of_varying((x, W, b))
        return (
            _cotangent(axes, x, dx) if need_dx else None,
            _cotangent(axes, W, dW.astype(W.dtype)) if need_dW else None,
            _cotangent(axes, b, db.astype(b.dtype)) if need_db else None,
        )

    differentiable = _jax.custom_vjp(layer)
    differentiable.defvjp(layer_forward, layer_backward, symbolic_zeros=True)
    typed: Callable[[Array, Array, Array], Array] = differentiable
    return typed


_LAYERS: dict[str, Callable[[Array, Array, Array], Array]] = {
    "ffi": _make_layer(_ffi_forward, _ffi_backward),
    "callback": _make_layer(_callback_forward, _callback_backward),
}


def _varying_axes(a: Array) -> frozenset[str]:
    """The mesh axes a varies over inside jax.shard_map with check_vma (empty outside,
    and in a JAX without the notion)."""
    try:
        aval = _jax.typeof(a)
    except (AttributeError, TypeError):
        return frozenset()
    varying = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
    if varying is None:
        varying = getattr(aval, "vma", None)
    return frozenset(varying or ())


def _union_of_varying(operands: Sequence[Array]) -> frozenset[str]:
    """The mesh axes any of operands varies over."""
    return frozenset().union(*map(_varying_axes, operands))


def _varying_like(operands: Sequence[Array], result: Array) -> Array:
    """result, computed by a call into the core from operands, typed as varying over every
    mesh axis any operand varies over (inside jax.shard_map with check_vma; JAX cannot see
    through the call, which it types as varying over none)."""
    axes = _union_of_varying(operands)
    return _to_varying(result, axes) if axes else result


def _to_varying(a: Array, axes: frozenset[str]) -> Array:
    """a typed as varying over axes: jax.lax.pcast(to="varying"), pvary before JAX 0.7."""
    pcast = getattr(_jax.lax, "pcast", None)
    if pcast is not None:
        out: Array = pcast(a, tuple(sorted(axes)), to="varying")
    else:
        out = _jax.lax.pvary(a, tuple(sorted(axes)))
    return out


def _cotangent(axes: frozenset[str], primal: Array, local: Array) -> Array:
    """The core's cotangent for primal, computed on this device's share, as JAX's
    transpose would have it: summed over the mesh axes (axes: those any operand varies
    over) the other operands vary over but primal does not (a replicated W's gradient is
    the sum over the devices' rows), and typed as varying over primal's own axes."""
    if not axes:
        return local
    local = _to_varying(local, axes)
    summed = axes - _varying_axes(primal)
    return _jax.lax.psum(local, tuple(sorted(summed))) if summed else local


def _check_shapes(x: Array, W: Array, b: Array) -> None:
    """The core's own shape checks, now (when traced) rather than when the call runs: on
    zero rows of x and zero-stride stand-ins for W and b (nothing allocated or read). A
    ValueError from them gets the arrays' real shapes."""

    def stand_in(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
        return np.broadcast_to(np.zeros((), dtype), shape)

    try:
        _api.forward(
            stand_in((0, x.shape[-1]), x.dtype),
            stand_in(W.shape, W.dtype),
            stand_in(b.shape, b.dtype),
        )
    except ValueError as exc:
        raise ValueError(
            f"{exc} (siglayer.jax checks the shapes on 0 rows of x when it traces; the "
            f"arrays given: x {tuple(x.shape)}, W {tuple(W.shape)}, b {tuple(b.shape)})"
        ) from None


def sigmoid_linear(
    x: Array, W: Array, b: Array, *, implementation: Implementation = "auto"
) -> Array:
    """``jax.nn.sigmoid(x @ W + b)`` computed by siglayer, for ``jax.jit``, ``jax.grad``
    and ``jax.vmap``.

    Parameters
    ----------
    x : jax.Array, float32, float64 or bfloat16, shape (..., n_in)
        Leading dimensions are batch dimensions; a 1-D x is one sample.
    W : jax.Array, x's dtype, shape (n_in, n_out)
    b : jax.Array, x's dtype (or float32 with bfloat16 x), shape (n_out,)
    implementation : {"auto", "ffi", "callback"}
        "ffi": the XLA FFI custom call (zero copies); "callback": ``jax.pure_callback``
        into ``siglayer.forward``; "auto" (the default): "ffi" when
        ``siglayer.jax.ffi_available()``, else "callback".

    Returns
    -------
    jax.Array, shape (..., n_out), x's dtype
        Differentiable in x, W and b by reverse mode (``jax.grad``, ``jax.vjp``), with
        siglayer's backward pass; each gradient has its argument's dtype.

    Raises
    ------
    TypeError
        A dtype other than float32 / float64 / bfloat16, or mixed dtypes other than a
        float32 b with bfloat16 x and W (nothing is converted).
    ValueError
        W not 2-D, b not 1-D, x 0-D, shapes that do not fit together (siglayer's own
        checks, run when the function is traced, with the arrays' shapes), an unknown
        implementation; "ffi" in an installation without the handlers.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from siglayer.jax import sigmoid_linear
    >>> x = jnp.zeros((2, 3)); W = jnp.ones((3, 4)); b = jnp.zeros(4)
    >>> jax.jit(sigmoid_linear)(x, W, b)
    Array([[0.5, 0.5, 0.5, 0.5],
           [0.5, 0.5, 0.5, 0.5]], dtype=float32)
    >>> dW = jax.grad(lambda W: sigmoid_linear(x, W, b).sum())(W)
    >>> dW.shape
    (3, 4)
    """
    # The option first: a bad one (a list, say) is named, before any shape is looked at.
    if not (isinstance(implementation, str) and implementation in ("auto", *_LAYERS)):
        raise ValueError(
            f"implementation must be 'auto', 'ffi' or 'callback', got {implementation!r}"
        )
    for name, value in (("x", x), ("W", W), ("b", b)):
        dtype = getattr(value, "dtype", None)
        if dtype is None:
            raise TypeError(
                f"{name} must be a JAX or NumPy array, got {type(value).__name__}: pass "
                f"jnp.asarray({name}, jnp.float32)"
            )
        if isinstance(dtype, np.dtype) and dtype == np.float16:
            raise TypeError(
                f"{name} has dtype float16, which is not bfloat16; siglayer.jax takes "
                f"float32, float64 or bfloat16 and never converts: pass "
                f"{name}.astype(jnp.bfloat16) or {name}.astype(jnp.float32)"
            )
        # (np.dtype(None) is float64: the isinstance check keeps a list from passing.)
        if not isinstance(dtype, np.dtype) or dtype not in _DTYPES:
            raise TypeError(
                f"{name} has dtype {dtype}; siglayer.jax computes in float32 or float64 "
                f"(float64 needs jax_enable_x64), or stores bfloat16, and never converts: "
                f"pass {name}.astype(jnp.float32)"
            )
        if dtype == np.float64 and not _jax.config.jax_enable_x64:
            # Only a NumPy array can be float64 here: JAX would compute it in float32.
            raise TypeError(
                f"{name} is a float64 {type(value).__name__} but jax_enable_x64 is off, so "
                f"JAX would compute it in float32; siglayer.jax never converts: pass "
                f"jnp.asarray({name}, jnp.float32), or enable float64 with "
                f'jax.config.update("jax_enable_x64", True)'
            )
    if not (
        x.dtype == W.dtype
        and (b.dtype == x.dtype or (x.dtype == _BFLOAT16 and b.dtype == _FLOAT32))
    ):
        raise TypeError(
            f"x, W and b must share one dtype; got x {x.dtype}, W {W.dtype}, b {b.dtype} "
            f"(with bfloat16 x and W, b may also be float32)"
        )
    symbolic = [
        f"{name} {tuple(a.shape)}"
        for name, a in (("x", x), ("W", W), ("b", b))
        if not all(isinstance(d, int) for d in a.shape)
    ]
    if symbolic:
        # jax.export's shape polymorphism: the callback failed inside JAX with a bare
        # std::bad_cast, and the handlers' shapes are fixed when the call is compiled.
        raise ValueError(
            f"siglayer.jax needs concrete shapes; symbolic dimensions (jax.export shape "
            f"polymorphism) are not supported: {', '.join(symbolic)} (nor can jax.export "
            f"serialize siglayer's calls: README, JAX)"
        )
    # What the result's and the gradients' shapes need, then whether the shapes fit.
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (n_in, n_out), got shape {tuple(W.shape)}")
    if b.ndim != 1:
        raise ValueError(f"b must be 1-D (n_out,), got shape {tuple(b.shape)}")
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension (..., n_in), got a scalar")
    _check_shapes(x, W, b)
    if implementation == "auto":
        implementation = "ffi" if _FFI else "callback"
    if implementation == "ffi" and not _FFI:
        raise ValueError(
            "implementation='ffi': this siglayer was built without the XLA FFI handlers "
            "(jax was not importable at build time); rebuild with jax installed, "
            "pip install --no-build-isolation ., or use implementation='callback'"
        )
    try:
        return _LAYERS[implementation](x, W, b)
    except NotImplementedError as error:
        if "symbolic_zeros" not in str(error):
            raise
        # JAX's custom_vjp(symbolic_zeros=True), which spares the products of inputs not
        # differentiated, is not implemented in an eager (unjitted) jax.shard_map.
        raise NotImplementedError(
            "siglayer.jax.sigmoid_linear inside jax.shard_map needs jax.jit around the "
            "shard_map (JAX does not run its custom_vjp there eagerly: "
            f"{error})"
        ) from error
