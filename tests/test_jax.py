"""siglayer.jax against JAX's own layer, jax.nn.sigmoid(x @ W + b), and the FFI path against
the callback path: values, gradients (jax.grad, jax.test_util.check_grads), under jax.jit
and jax.vmap, in float32 and float64; bfloat16 against the float64 reference and JAX's own
bfloat16 layer within the bounds of bf16_bounds.py."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.extend.core import Jaxpr  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import bf16_bounds as bb  # noqa: E402
import siglayer  # noqa: E402
import siglayer.jax as sj  # noqa: E402
from siglayer import _core  # noqa: E402
from siglayer import reference as np_reference  # noqa: E402

IMPLEMENTATIONS = [
    pytest.param(
        "ffi",
        marks=pytest.mark.skipif(not sj.ffi_available(), reason="built without the FFI handlers"),
    ),
    "callback",
]
DTYPES = [np.float32, np.float64]
# Relative to the largest reference magnitude. float64: the bound. float32: a few
# ulp of the sigmoid plus the products' rounding over n_in <= 48 terms.
RTOL = {np.float32: 2e-6, np.float64: 1e-12}


@pytest.fixture(autouse=True, scope="module")
def x64():
    """float64 arrays need jax_enable_x64; float32 ones stay float32 under it."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


def reference(x, W, b):
    return jax.nn.sigmoid(x @ W + b)


BF16 = jnp.bfloat16


def inputs(shape_x, n_out, dtype, seed=0, b_dtype=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape_x).astype(dtype)
    W = (rng.standard_normal((shape_x[-1], n_out)) / np.sqrt(shape_x[-1])).astype(dtype)
    b = rng.standard_normal(n_out).astype(b_dtype or dtype)
    return jnp.asarray(x), jnp.asarray(W), jnp.asarray(b)


def assert_close(actual, expected, dtype):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = max(np.max(np.abs(expected), initial=0.0), np.finfo(dtype).tiny)
    error = np.max(np.abs(actual - expected), initial=0.0) / scale
    assert error <= RTOL[dtype], f"relative error {error:.3g} > {RTOL[dtype]:.0e}"


def layer(implementation):
    return lambda x, W, b: sj.sigmoid_linear(x, W, b, implementation=implementation)


def loss(f):
    # Not just a sum: dout varies, so that every gradient term is exercised.
    return lambda x, W, b: jnp.sum(jnp.sin(3 * f(x, W, b)))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("shape_x", [(17, 24), (3, 5, 24), (24,)], ids=["2d", "3d", "1d"])
def test_forward_and_gradients_match_jax(implementation, dtype, shape_x):
    f = layer(implementation)
    x, W, b = inputs(shape_x, 9, dtype)
    out = jax.jit(f)(x, W, b)
    assert out.dtype == dtype and out.shape == (*shape_x[:-1], 9)
    assert_close(out, reference(x, W, b), dtype)
    grads = jax.jit(jax.grad(loss(f), argnums=(0, 1, 2)))(x, W, b)
    expected = jax.grad(loss(reference), argnums=(0, 1, 2))(x, W, b)
    for g, e in zip(grads, expected, strict=True):
        assert_close(g, e, dtype)


def equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside its equations (the calls sit
    inside custom_jvp_call, which refuses forward mode over them)."""
    for e in jaxpr.eqns:
        yield e
        for value in e.params.values():
            inner = getattr(value, "jaxpr", value)  # a ClosedJaxpr's jaxpr, or a Jaxpr
            if isinstance(inner, Jaxpr):
                yield from equations(inner)


@pytest.mark.parametrize("argnums", [(1, 2), (0,), (0, 2), (2,), (1,)], ids=str)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_only_the_differentiated_inputs_cost_a_product(implementation, argnums):
    """jax.grad in some of x, W, b: the backward call returns an empty dx (dW) where x (W)
    is not differentiated, its product skipped (read off the jaxpr), and the gradients
    asked for match JAX's own, under jit and vmap too."""
    f = layer(implementation)
    x, W, b = inputs((12, 7), 5, np.float64)
    g = jax.grad(loss(f), argnums=argnums)
    calls = [
        e
        for e in equations(jax.make_jaxpr(g)(x, W, b).jaxpr)
        if e.primitive.name in ("ffi_call", "pure_callback")
    ]
    (backward,) = [e for e in calls if len(e.outvars) == 3]
    dx_shape, dW_shape, _ = (v.aval.shape for v in backward.outvars)
    assert dx_shape == ((12, 7) if 0 in argnums else (0,))
    assert dW_shape == ((7, 5) if 1 in argnums else (0,))
    expected = jax.grad(loss(reference), argnums=argnums)(x, W, b)
    for got in (jax.jit(g)(x, W, b), g(x, W, b)):
        for a, e in zip(got, expected, strict=True):
            assert_close(a, e, np.float64)
    per_sample = jax.vmap(g, in_axes=(0, None, None))(x.reshape(3, 4, 7), W, b)
    for i in range(3):
        for a, e in zip(
            per_sample,
            jax.grad(loss(reference), argnums=argnums)(x.reshape(3, 4, 7)[i], W, b),
            strict=True,
        ):
            assert_close(a[i], e, np.float64)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_check_grads(implementation):
    x, W, b = inputs((6, 5), 4, np.float64)
    check_grads(layer(implementation), (x, W, b), order=1, modes=["rev"])
    check_grads(jax.jit(loss(layer(implementation))), (x, W, b), order=1, modes=["rev"])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_second_derivatives_are_refused_in_siglayers_words(implementation, jit):
    """jax.hessian and jax.jacfwd of jax.grad met JAX's "Pure callbacks do not support
    JVP" (or the FFI call's "cannot be differentiated"); now siglayer's NotImplementedError
    names what works and what to use instead. First-order gradients are unchanged."""
    x, W, b = inputs((6, 5), 4, np.float64)
    f = loss(layer(implementation))
    for second in (jax.hessian(f, argnums=1), jax.jacfwd(jax.grad(f, argnums=1), argnums=1)):
        with pytest.raises(
            NotImplementedError,
            match=r"^siglayer\.jax\.sigmoid_linear is differentiable once, in reverse mode "
            r"\(jax\.grad, jax\.vjp, jax\.jacrev\).*use jax\.nn\.sigmoid\(x @ W \+ b\) there",
        ):
            (jax.jit(second) if jit else second)(x, W, b)
    grad = jax.grad(f, argnums=1)
    assert_close(grad(x, W, b), jax.grad(loss(reference), argnums=1)(x, W, b), np.float64)
    # Forward mode of the layer itself is JAX's own refusal of a custom_vjp function.
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(layer(implementation), (x, W, b), (x, W, b))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_vjp_returns_siglayers_backward(implementation):
    x, W, b = inputs((8, 6), 5, np.float64)
    out, vjp = jax.vjp(layer(implementation), x, W, b)
    dout = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape))
    dx, dW, db = vjp(dout)
    expected = siglayer.backward(np.asarray(dout), np.asarray(x), np.asarray(W), np.asarray(out))
    for got, want in zip((dx, dW, db), expected, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)


# (x, W, b) batch axes for jax.vmap: None is shared.
VMAPS = {
    "x": (0, None, None),
    "x_axis1": (1, None, None),
    "W": (None, 0, None),
    "b": (None, None, 0),
    "all": (0, 0, 0),
}


_FRESH_ROWS = itertools.count()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("argnums", [(0, 1, 2), (1, 2), (0,)], ids=str)
def test_eager_grad_compiles_once(implementation, argnums, caplog):
    """An unjitted training loop: once the first step has compiled, later steps reuse it.
    A backward callback that was a fresh object each call defeated JAX's compile cache and
    kept one executable a step (~1.5 MB a layer a step); this counts JAX's own compile logs."""
    import logging

    # A batch size no earlier run in this process used, so that the first step compiles
    # (the test run again in one process, by pytest-repeat say, found the cache warm).
    x, W, b = inputs((9 + next(_FRESH_ROWS), 6), 5, np.float32, seed=3)
    grad = jax.grad(loss(layer(implementation)), argnums=argnums)
    with jax.log_compiles(), caplog.at_level(logging.DEBUG, logger="jax"):
        expected = grad(x, W, b)
        first = sum(r.getMessage().startswith("Compiling") for r in caplog.records)
        caplog.clear()
        for _ in range(3):
            again = grad(x, W, b)
        later = [
            r.getMessage()[:100] for r in caplog.records if r.getMessage().startswith("Compiling")
        ]
    assert first > 0, "JAX logged no compile at all: the check below would prove nothing"
    assert later == [], f"later eager steps compiled again: {later}"
    for a, e in zip(again, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("batched", list(VMAPS))
def test_vmap_forward_and_gradient(implementation, batched):
    in_axes = VMAPS[batched]
    x, W, b = inputs((4, 7, 6), 3, np.float64)
    Ws = jnp.stack([W, -W, 2 * W, W / 2])
    bs = jnp.stack([b, -b, 2 * b, b / 2])
    args = (x, Ws if in_axes[1] == 0 else W, bs if in_axes[2] == 0 else b)
    f = layer(implementation)
    got = jax.jit(jax.vmap(f, in_axes=in_axes))(*args)
    assert_close(got, jax.vmap(reference, in_axes=in_axes)(*args), np.float64)
    # Per-example gradients (vmap of grad) and the gradient of a batched loss (grad of vmap).
    per_example = jax.vmap(jax.grad(loss(f), argnums=(0, 1, 2)), in_axes=in_axes)(*args)
    expected = jax.vmap(jax.grad(loss(reference), argnums=(0, 1, 2)), in_axes=in_axes)(*args)
    for g, e in zip(per_example, expected, strict=True):
        assert_close(g, e, np.float64)

    def batched_loss(g):
        return lambda *a: jnp.sum(jnp.sin(3 * jax.vmap(g, in_axes=in_axes)(*a)))

    grads = jax.grad(batched_loss(f), argnums=(0, 1, 2))(*args)
    expected = jax.grad(batched_loss(reference), argnums=(0, 1, 2))(*args)
    for g, e in zip(grads, expected, strict=True):
        assert_close(g, e, np.float64)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_nested_vmap(implementation):
    x, W, b = inputs((2, 3, 4, 5), 3, np.float64)
    f = jax.vmap(jax.vmap(layer(implementation), in_axes=(0, None, None)), in_axes=(1, None, None))
    g = jax.vmap(jax.vmap(reference, in_axes=(0, None, None)), in_axes=(1, None, None))
    assert_close(jax.jit(f)(x, W, b), g(x, W, b), np.float64)


@pytest.mark.skipif(not sj.ffi_available(), reason="built without the FFI handlers")
@pytest.mark.parametrize(
    "dtype, b_dtype",
    [(np.float32, None), (np.float64, None), (BF16, None), (BF16, np.float32)],
    ids=["float32", "float64", "bfloat16", "bfloat16-b_float32"],
)
def test_ffi_and_callback_agree_bitwise(dtype, b_dtype):
    # Problems this small run on one thread: the same core on the same buffers gives the
    # same bits, whichever way JAX reached it (for bfloat16, dW and db rounded the same
    # way after it).
    x, W, b = inputs((31, 40), 12, dtype, seed=3, b_dtype=b_dtype)
    fwd = [jax.jit(layer(i))(x, W, b) for i in ("ffi", "callback")]
    np.testing.assert_array_equal(np.asarray(fwd[0]), np.asarray(fwd[1]))
    grads = [
        jax.jit(jax.grad(loss(layer(i)), argnums=(0, 1, 2)))(x, W, b) for i in ("ffi", "callback")
    ]
    for a, c in zip(*grads, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.skipif(not sj.ffi_available(), reason="built without the FFI handlers")
def test_ffi_is_a_custom_call_and_auto_picks_it():
    x, W, b = inputs((4, 3), 2, np.float32)
    hlo = jax.jit(sj.sigmoid_linear).lower(x, W, b).as_text()
    assert "siglayer_forward" in hlo
    backward = jax.jit(jax.grad(lambda W: sj.sigmoid_linear(x, W, b).sum())).lower(W).as_text()
    assert "siglayer_backward" in backward
    callback = jax.jit(layer("callback")).lower(x, W, b).as_text()
    assert "siglayer_forward" not in callback


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_empty_batch(implementation):
    x, W, b = inputs((0, 3), 2, np.float64)
    f = layer(implementation)
    assert jax.jit(f)(x, W, b).shape == (0, 2)
    dW = jax.grad(lambda W: f(x, W, b).sum())(W)
    np.testing.assert_array_equal(np.asarray(dW), np.zeros((3, 2)))


# ---- bfloat16: x and W bfloat16, b bfloat16 or float32 (bf16_bounds.py derives the bounds)

BF16_SHAPES = {"T": ((32, 64), 32), "3d": ((3, 5, 24), 9), "1d": ((24,), 9), "L": ((512, 512), 256)}
B_DTYPES = {"b_bf16": BF16, "b_f32": np.float32}


def forward_and_vjp(f, x, W, b, seed=5):
    """f's output and its VJP with a bfloat16 dout (drawn from a seeded normal)."""
    out, vjp = jax.vjp(jax.jit(f), x, W, b)
    dout = jnp.asarray(np.random.default_rng(seed).standard_normal(out.shape), BF16)
    return out, dout, vjp(dout)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("b_dtype", B_DTYPES.values(), ids=B_DTYPES.keys())
@pytest.mark.parametrize("shape", list(BF16_SHAPES))
def test_bfloat16_matches_float64_reference(shape, b_dtype, implementation):
    shape_x, n_out = BF16_SHAPES[shape]
    x, W, b = inputs(shape_x, n_out, BF16, b_dtype=b_dtype)
    out, dout, (dx, dW, db) = forward_and_vjp(layer(implementation), x, W, b)
    # Each cotangent in its primal's dtype: a float32 b keeps a float32 db.
    assert (out.dtype, dx.dtype, dW.dtype, db.dtype) == (BF16, BF16, BF16, np.dtype(b_dtype))
    assert out.shape == (*shape_x[:-1], n_out)
    x64, W64, b64, dout64, out64 = map(bb.as64, (x, W, b, dout, out))
    want = np_reference.forward(x64, W64, b64)
    bb.assert_bf16_within(out, want, bb.forward_bound(x64, W64, b64, want), "out")
    # The backward against the reference on siglayer's own out (its error is checked above).
    wants = np_reference.backward(dout64, x64, W64, out64)
    bounds = bb.gradient_bounds(
        dout64, x64, W64, out64, dW_rounded=True, db_rounded=b_dtype == BF16
    )
    for name, got, w, bound in zip(("dx", "dW", "db"), (dx, dW, db), wants, bounds, strict=True):
        bb.assert_bf16_within(got, w, bound, name)
    # Norm-wise the roundings of dZ average out: within 2 U on these seeded problems
    # (measured: under 1 U).
    for name, got, w in zip(("dx", "dW"), (dx, dW), wants[:2], strict=True):
        assert bb.normwise(got, w) <= 2 * bb.U, name


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", ["T", "3d", "L"])
def test_bfloat16_matches_jaxs_own(shape, implementation):
    """jax.nn.sigmoid(x @ W + b) in bfloat16 and its gradient: each within its bound of the
    float64 reference, so siglayer and JAX are within the sum (and, for the gradients, of
    how far their two outs set the exact gradients apart). JAX's own layer rounds x @ W
    and x @ W + b to bfloat16 (z_rounded) and may round each step of
    g * out * (1 - out) (three roundings of dZ); XLA's CPU dots and reductions accumulate
    bfloat16 in float32."""
    shape_x, n_out = BF16_SHAPES[shape]
    x, W, b = inputs(shape_x, n_out, BF16, seed=1)
    out, dout, ours = forward_and_vjp(layer(implementation), x, W, b)
    theirs_out, _, theirs = forward_and_vjp(reference, x, W, b)
    x64, W64, b64, dout64 = map(bb.as64, (x, W, b, dout))
    ours_out, their_out = bb.as64(out), bb.as64(theirs_out)
    want = np_reference.forward(x64, W64, b64)
    our_bound = bb.forward_bound(x64, W64, b64, want)
    their_bound = bb.forward_bound(x64, W64, b64, want, z_rounded=True)
    bb.assert_bf16_within(theirs_out, want, their_bound, "JAX's out")
    bb.assert_bf16_within(out, their_out, our_bound + their_bound, "out against JAX")
    our_bounds = bb.gradient_bounds(dout64, x64, W64, ours_out, dW_rounded=True, db_rounded=True)
    their_bounds = bb.gradient_bounds(
        dout64,
        x64,
        W64,
        their_out,
        dW_rounded=True,
        db_rounded=True,
        dZ_rounded_for_db=True,
        dZ_roundings=3,
    )
    apart = bb.out_difference_bounds(dout64, x64, W64, ours_out, their_out)
    their_wants = np_reference.backward(dout64, x64, W64, their_out)
    for k, name in enumerate(("dx", "dW", "db")):
        assert ours[k].dtype == theirs[k].dtype == BF16
        bb.assert_bf16_within(theirs[k], their_wants[k], their_bounds[k], f"JAX's {name}")
        bound = our_bounds[k] + their_bounds[k] + apart[k]
        bb.assert_bf16_within(ours[k], bb.as64(theirs[k]), bound, f"{name} against JAX")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("b_dtype", B_DTYPES.values(), ids=B_DTYPES.keys())
def test_bfloat16_vjp_is_siglayers_backward_rounded_once(implementation, b_dtype):
    """dx is siglayer.backward's; dW (and db of a bfloat16 b) is its float32 result
    rounded to nearest even once, bit for bit the core's to_bfloat16; a float32 b's db
    is siglayer's float32 db itself."""
    x, W, b = inputs((8, 6), 5, BF16, b_dtype=b_dtype)
    out, dout, (dx, dW, db) = forward_and_vjp(layer(implementation), x, W, b)
    want_dx, want_dW, want_db = siglayer.backward(*(np.asarray(a) for a in (dout, x, W, out)))
    assert want_dW.dtype == want_db.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(dx).view(np.uint16), want_dx.view(np.uint16))
    rounded_dW = _core.to_bfloat16(want_dW)
    np.testing.assert_array_equal(np.asarray(dW).view(np.uint16), rounded_dW.view(np.uint16))
    if b_dtype == BF16:
        rounded_db = _core.to_bfloat16(want_db)
        np.testing.assert_array_equal(np.asarray(db).view(np.uint16), rounded_db.view(np.uint16))
    else:
        np.testing.assert_array_equal(np.asarray(db), want_db)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("batched", ["x", "W", "all"])
def test_bfloat16_vmap(implementation, batched):
    in_axes = VMAPS[batched]
    x, W, b = inputs((4, 7, 6), 3, BF16)
    Ws = jnp.stack([W, -W, 2 * W, W / 2])
    bs = jnp.stack([b, -b, 2 * b, b / 2])
    args = (x, Ws if in_axes[1] == 0 else W, bs if in_axes[2] == 0 else b)
    f = jax.vmap(layer(implementation), in_axes=in_axes)
    got = jax.jit(f)(*args)
    assert got.dtype == BF16
    want = jax.vmap(lambda *a: reference(*(t.astype(jnp.float64) for t in a)), in_axes=in_axes)(
        *args
    )
    # One bfloat16 rounding of a value in (0, 1), and float32 accumulation of 6 terms.
    assert bb.normwise(got, want) <= 2 * bb.U
    grads = jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=(0, 1, 2))(*args)
    assert [g.dtype for g in grads] == [BF16] * 3
    assert [g.shape for g in grads] == [a.shape for a in args]


@pytest.mark.skipif(not sj.ffi_available(), reason="built without the FFI handlers")
def test_ffi_handler_refuses_dtypes_by_name():
    """The handler's own dtype dispatch, reached past sigmoid_linear's checks."""
    x, W, b = inputs((4, 3), 2, BF16)
    with pytest.raises(
        jax.errors.JaxRuntimeError,
        match=r"b has dtype float64, expected bfloat16 or float32 since x has bfloat16",
    ):
        jax.jit(sj._ffi_forward)(x, W, b.astype(jnp.float64)).block_until_ready()
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"x has dtype float16; siglayer"):
        x16, W16, b16 = (a.astype(jnp.float16) for a in (x, W, b))
        jax.jit(sj._ffi_forward)(x16, W16, b16).block_until_ready()


@pytest.mark.parametrize(
    "dtypes, message",
    [
        ((BF16, np.float32, np.float32), "got x bfloat16, W float32, b float32"),
        ((np.float32, np.float32, BF16), "got x float32, W float32, b bfloat16"),
        ((BF16, BF16, np.float64), "got x bfloat16, W bfloat16, b float64"),
    ],
    ids=["x_bf16-W_f32", "b_bf16-with-f32", "b_f64-with-bf16"],
)
def test_bfloat16_mixes_are_refused(dtypes, message):
    x, W, b = (a.astype(d) for a, d in zip(inputs((4, 3), 2, np.float64), dtypes, strict=True))
    with pytest.raises(TypeError, match=r"x, W and b must share one dtype; " + message):
        sj.sigmoid_linear(x, W, b)


@pytest.mark.parametrize("name", ["x", "W", "b"])
def test_float16_is_not_bfloat16(name):
    args = dict(zip("xWb", inputs((4, 3), 2, BF16), strict=True))
    args[name] = args[name].astype(jnp.float16)
    with pytest.raises(TypeError, match=rf"{name} has dtype float16, which is not bfloat16"):
        sj.sigmoid_linear(**args)


def test_dtypes_are_refused_not_converted():
    x, W, b = inputs((4, 3), 2, np.float64)
    with pytest.raises(TypeError, match=r"x, W and b must share one dtype"):
        sj.sigmoid_linear(x.astype(jnp.float32), W, b)
    with pytest.raises(TypeError, match=r"W has dtype int32"):
        sj.sigmoid_linear(x, W.astype(jnp.int32), b)
    with pytest.raises(TypeError, match=r"b must be a JAX or NumPy array, got list"):
        sj.sigmoid_linear(x, W, [0.0, 0.0])


def test_ranks_and_implementation_are_checked():
    x, W, b = inputs((4, 3), 2, np.float64)
    with pytest.raises(ValueError, match=r"W must be 2-D"):
        sj.sigmoid_linear(x, W.ravel(), b)
    with pytest.raises(ValueError, match=r"b must be 1-D"):
        sj.sigmoid_linear(x, W, b[None])
    with pytest.raises(ValueError, match=r"x must have at least 1 dimension"):
        sj.sigmoid_linear(x[0, 0], W, b)
    with pytest.raises(ValueError, match=r"implementation must be"):
        sj.sigmoid_linear(x, W, b, implementation="cuda")  # type: ignore[arg-type]
    # Named before the shapes, and not as "unhashable type" for a list.
    with pytest.raises(ValueError, match=r"^implementation must be .*, got \['ffi'\]$"):
        sj.sigmoid_linear(x, W.ravel(), b, implementation=["ffi"])  # type: ignore[arg-type]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_shape_mismatch_is_the_cores_error_when_traced(implementation):
    x, W, b = inputs((4, 5, 3), 2, np.float64)
    traced = jax.jit(layer(implementation))
    with pytest.raises(
        ValueError,
        match=r"W has shape \(5, 2\) but x has 3 features .* given: x \(4, 5, 3\), W \(5, 2\)",
    ):
        traced.lower(x, jnp.zeros((5, 2)), b)  # traced only: raised before anything runs
    with pytest.raises(ValueError, match=r"b has 3 entries but W has shape \(3, 2\)"):
        traced(x, W, jnp.zeros(3))
    with pytest.raises(ValueError, match=r"W has shape \(4, 2\) but x has 3 features"):
        jax.vmap(layer(implementation), in_axes=(0, None, None))(x, jnp.zeros((4, 2)), b)


@pytest.mark.skipif(not sj.ffi_available(), reason="built without the FFI handlers")
def test_ffi_handler_checks_shapes_itself():
    """The handler's own checks, reached past sigmoid_linear's: an INVALID_ARGUMENT error
    that names the argument, shown on the (n, n_in) view the handler sees."""
    x, _, b = inputs((4, 3), 2, np.float64)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"W has shape \(5, 2\) but x has 3"):
        jax.jit(sj._ffi_forward)(x, jnp.zeros((5, 2)), b).block_until_ready()
    # db's length (the core takes db as a pointer), with result types of the wrong size.
    W = jnp.zeros((3, 2))
    out = sj._ffi_forward(x, W, b)
    wrong = (*sj._gradient_types(x, W, True, True)[:2], jax.ShapeDtypeStruct((5,), W.dtype))
    call = jax.ffi.ffi_call(sj._BACKWARD_TARGET, wrong, vmap_method="sequential")
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"db has 5 entries but W has shape"):
        jax.block_until_ready(call(jnp.ones_like(out), x, W, out, need_dx=True, need_dW=True))


def test_every_public_name_is_documented():
    docs = "\n".join(p.read_text() for p in (Path(__file__).parents[1] / "docs").glob("*.md"))
    for name in sj.__all__:
        assert f"siglayer.jax.{name}" in docs, name
        doc = getattr(sj, name).__doc__
        assert ">>> " in doc and "Returns\n    -------" in doc, name


def test_numpy_float64_without_x64_is_refused_not_computed_in_float32():
    """With jax_enable_x64 off JAX would turn a NumPy float64 array into float32 on entry
    (silently), and under grad it mixed with the other float64 arrays into a dtype error;
    both ways are refused up front, naming the array."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        _numpy_float64_refused()
    finally:
        jax.config.update("jax_enable_x64", before)


def _numpy_float64_refused():
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), rng.standard_normal(2)
    with pytest.raises(TypeError, match="x is a float64 ndarray but jax_enable_x64 is off"):
        sj.sigmoid_linear(x, W, b)
    with pytest.raises(TypeError, match="x is a float64 ndarray but jax_enable_x64 is off"):
        jax.grad(lambda W: sj.sigmoid_linear(x, W, b).sum())(W.astype(np.float32))
    # The documented fix runs in float32.
    out = sj.sigmoid_linear(*(jnp.asarray(a, jnp.float32) for a in (x, W, b)))
    assert out.dtype == jnp.float32


def test_symbolic_dimensions_are_refused_by_name():
    """jax.export's shape polymorphism: both ways in refuse it up front, naming the array
    (the callback path failed with a bare std::bad_cast inside JAX)."""
    import jax.export  # an attribute of jax only from jax 0.8 on

    x_shape = jax.export.symbolic_shape("n, 5")
    W, b = jnp.ones((5, 3), jnp.float32), jnp.zeros(3, jnp.float32)
    for implementation in ("ffi", "callback") if sj.ffi_available() else ("callback",):
        f = jax.jit(lambda x, W, b, i=implementation: sj.sigmoid_linear(x, W, b, implementation=i))
        with pytest.raises(ValueError, match=r"symbolic dimensions .* x \(n, 5\)"):
            jax.export.export(f)(jax.ShapeDtypeStruct(x_shape, jnp.float32), W, b)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", ["vmap W", "vmap b", "vmap grad W", "per-example grad"])
def test_eager_vmap_compiles_once(implementation, case, caplog):
    """Eager jax.vmap over W or b, and vmapped gradients: once the first call has compiled,
    later calls reuse it. A fresh closure per call (forward) and the calls' own sequential
    vmap (backward) compiled and kept a loop at every call, ~1.8 MB each (a review)."""
    import logging

    n = 9 + next(_FRESH_ROWS)  # a batch size no earlier run in this process used
    x, W, b = inputs((n, 6), 5, np.float32, seed=4)
    f = layer(implementation)
    Ws, bs, xs = jnp.stack([W, 2 * W]), jnp.stack([b, -b]), jnp.stack([x, -x])
    run = {
        "vmap W": lambda: jax.vmap(f, in_axes=(None, 0, None))(x, Ws, b),
        "vmap b": lambda: jax.vmap(f, in_axes=(None, None, 0))(x, W, bs),
        "vmap grad W": lambda: jax.vmap(jax.grad(lambda W: jnp.sum(f(x, W, b))))(Ws),
        "per-example grad": lambda: jax.vmap(
            jax.grad(lambda x, W: jnp.sum(jnp.sin(f(x, W, b))), argnums=(0, 1)),
            in_axes=(0, None),
        )(xs, W),
    }[case]
    with jax.log_compiles(), caplog.at_level(logging.DEBUG, logger="jax"):
        expected = run()
        first = sum(r.getMessage().startswith("Compiling") for r in caplog.records)
        caplog.clear()
        for _ in range(3):
            again = run()
        later = [m[:100] for m in map(logging.LogRecord.getMessage, caplog.records)]
        later = [m for m in later if m.startswith("Compiling")]
    assert first > 0, "JAX logged no compile at all: the check below would prove nothing"
    assert later == [], f"later eager calls compiled again: {later}"
    for a, e in zip(jax.tree.leaves(again), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


_SHARD_MAP = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
import siglayer.jax as sj
rng = np.random.default_rng(0)
x, W, b, dout = (rng.standard_normal(s).astype(np.float32) for s in ((8, 6), (6, 4), (4,), (8, 4)))
mesh = Mesh(np.array(jax.devices()), ("d",))
ref = lambda x, W, b: jax.nn.sigmoid(x @ W + b)
SPECS = {"rows": ((P("d"), P(), P()), P("d")), "cols": ((P(), P(None, "d"), P("d")), P(None, "d"))}
def grads(f):
    return jax.grad(lambda x, W, b: jnp.sum(f(x, W, b) * dout), argnums=(0, 1, 2))
def rel(got, expected):
    return max(float(np.max(np.abs(g - e)) / np.max(np.abs(e))) for g, e in zip(got, expected))
for impl in IMPLEMENTATIONS:
    f = lambda x, W, b: sj.sigmoid_linear(x, W, b, implementation=impl)
    for check_vma in (True, False):
        for split, (ins, outs) in SPECS.items():
            g = jax.shard_map(f, mesh=mesh, in_specs=ins, out_specs=outs, check_vma=check_vma)
            print(impl, check_vma, split, "value", rel([jax.jit(g)(x, W, b)], [ref(x, W, b)]))
            got, expected = jax.jit(grads(g))(x, W, b), grads(ref)(x, W, b)
            print(impl, check_vma, split, "grads", rel(got, expected))
    # Data parallel: gradients taken inside the shard_map, then summed; as JAX's own layer.
    def step(layer):
        def local(x, W, b, dout):
            gW, gb = jax.grad(lambda W, b: jnp.sum(layer(x, W, b) * dout), argnums=(0, 1))(W, b)
            return jax.lax.psum(gW, "d"), jax.lax.psum(gb, "d")
        return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("d"), P(), P(), P("d")),
                                     out_specs=(P(), P())))(x, W, b, dout)
    print(impl, "data-parallel", rel(step(f), step(ref)))
    g = jax.shard_map(f, mesh=mesh, in_specs=(P("d"), P(), P()), out_specs=P("d"))
    try:
        g(x, W, b)
    except NotImplementedError as error:
        print(impl, "eager", "jax.jit" in str(error))
"""


def test_shard_map():
    """jax.shard_map over two host devices: rows of x sharded (W, b replicated), and
    columns of W and b sharded (x replicated), with check_vma on (JAX's default) and off;
    values and gradients against jax.nn.sigmoid's over the whole batch, and gradients
    taken inside the shard_map then summed against JAX's own layer's. With check_vma=True
    the calls' results had not carried the operands' varying mesh axes: jax.grad left out
    the sum over devices (dW and db wrong, silently; a review). Eagerly JAX cannot run the
    custom_vjp in a shard_map: siglayer says to jit."""
    import subprocess
    import sys

    implementations = ["ffi", "callback"] if sj.ffi_available() else ["callback"]
    script = f"IMPLEMENTATIONS = {implementations!r}\n" + _SHARD_MAP
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().split("\n")
    errors = {
        " ".join(line.split()[:-1]): float(line.split()[-1])
        for line in lines
        if " eager " not in line
    }
    for impl in implementations:
        for check_vma in (True, False):
            for split in ("rows", "cols"):
                for what in ("value", "grads"):
                    assert errors[f"{impl} {check_vma} {split} {what}"] < 1e-5, result.stdout
        assert errors[f"{impl} data-parallel"] < 1e-5, result.stdout
    assert [line for line in lines if " eager " in line] == [
        f"{impl} eager True" for impl in implementations
    ], result.stdout
