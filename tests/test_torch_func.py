"""siglayer.torch under torch.func: grad, vjp, jacrev, jvp, jacfwd, vmap (one call when only x is
batched, per sample otherwise), per-sample gradients (vmap of grad), functional_call; the
results bit-equal to eager autograd on the same kernels and close to PyTorch's own
Linear + sigmoid; second derivatives refused loudly, never a silent zero."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch.autograd import forward_ad as fwAD  # noqa: E402
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap  # noqa: E402

from siglayer.torch import SigmoidLinear, sigmoid_linear, sigmoid_linear_bce_loss  # noqa: E402
from test_torch_ops import DTYPES  # noqa: E402  (float32, float64)

F = torch.nn.functional
TOL = {torch.float32: {"rtol": 2e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-12, "atol": 1e-14}}


def inputs(dtype, seed=0, rows=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 5, generator=g, dtype=dtype)
    W = torch.randn(5, 4, generator=g, dtype=dtype) / 2
    b = torch.randn(4, generator=g, dtype=dtype)
    y = torch.rand(rows, 4, generator=g, dtype=dtype)
    return x, W, b, y


def reference(x, W, b):
    return torch.sigmoid(x @ W + b)


def reference_bce(x, W, b, y):
    return F.binary_cross_entropy(reference(x, W, b), y)


def eager_grads(fn, args, dout=None):
    """Gradients of fn(*args) (summed against dout, or a scalar) by plain autograd."""
    leaves = [a.detach().clone().requires_grad_() for a in args]
    out = fn(*leaves)
    out.backward(dout if dout is not None else torch.ones_like(out))
    return [a.grad for a in leaves]


@pytest.mark.parametrize("dtype", [*DTYPES.values(), torch.bfloat16], ids=[*DTYPES, "bfloat16"])
def test_grad_equals_eager_autograd_bitwise(dtype):
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    x, W, b, _ = (t.to(dtype) for t in inputs(torch.float64))
    dout = torch.rand(6, 4, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = eager_grads(sigmoid_linear, (x, W, b), dout)
    got = grad(lambda *a: (sigmoid_linear(*a) * dout).sum(), argnums=(0, 1, 2))(x, W, b)
    for name, g, w in zip("xWb", got, want, strict=True):
        assert g.dtype == w.dtype == dtype, name
        assert torch.equal(g, w), name


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_grad_vjp_jacrev_match_pytorch(dtype):
    x, W, b, _ = inputs(dtype)
    tol = TOL[dtype]
    for argnums in (0, 1, 2):
        got = grad(lambda *a: sigmoid_linear(*a).sum(), argnums=argnums)(x, W, b)
        want = grad(lambda *a: reference(*a).sum(), argnums=argnums)(x, W, b)
        torch.testing.assert_close(got, want, **tol)
    out, pullback = vjp(sigmoid_linear, x, W, b)
    torch.testing.assert_close(out, reference(x, W, b), **tol)
    dout = torch.randn_like(out)
    for got, want in zip(pullback(dout), vjp(reference, x, W, b)[1](dout), strict=True):
        torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(
        jacrev(sigmoid_linear, argnums=1)(x, W, b), jacrev(reference, argnums=1)(x, W, b), **tol
    )


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_vmap_over_x_over_weights_and_in_other_dims(dtype):
    x, W, b, _ = inputs(dtype)
    tol = TOL[dtype]
    # x batched alone: one call with the batch as a leading dimension.
    torch.testing.assert_close(
        vmap(sigmoid_linear, in_dims=(0, None, None))(x, W, b), reference(x, W, b), **tol
    )
    xt = x.T.contiguous()  # the batch in dimension 1
    torch.testing.assert_close(
        vmap(sigmoid_linear, in_dims=(1, None, None))(xt, W, b), reference(x, W, b), **tol
    )
    # An ensemble: a batch of weights and biases, one x.
    g = torch.Generator().manual_seed(2)
    Ws = torch.randn(3, 5, 4, generator=g, dtype=dtype)
    bs = torch.randn(3, 4, generator=g, dtype=dtype)
    want = torch.stack([reference(x, Ws[i], bs[i]) for i in range(3)])
    torch.testing.assert_close(vmap(sigmoid_linear, in_dims=(None, 0, 0))(x, Ws, bs), want, **tol)
    want = torch.stack([reference(x, Ws[i], b) for i in range(3)])
    torch.testing.assert_close(vmap(sigmoid_linear, in_dims=(None, 0, None))(x, Ws, b), want, **tol)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_per_sample_gradients(dtype):
    """vmap(grad(...)) over the samples of a batch: each sample's own gradient, equal to a
    loop of plain autograd calls on one sample each (up to the last bits: vmap's forward
    runs the batch as one product, a single sample runs as a matrix-vector product)."""
    x, W, b, y = inputs(dtype)

    def loss(W, b, xi, yi):
        return sigmoid_linear_bce_loss(xi, W, b, yi)

    def layer_loss(W, b, xi, yi):
        return ((sigmoid_linear(xi, W, b) - yi) ** 2).sum()

    for fn in (loss, layer_loss):
        dW, db = vmap(grad(fn, argnums=(0, 1)), in_dims=(None, None, 0, 0))(W, b, x, y)
        assert dW.shape == (6, 5, 4) and db.shape == (6, 4)
        for i in range(6):
            want_W, want_b = eager_grads(lambda W, b, i=i, fn=fn: fn(W, b, x[i], y[i]), (W, b))
            torch.testing.assert_close(dW[i], want_W, **TOL[dtype], msg=f"{fn.__name__} {i}")
            torch.testing.assert_close(db[i], want_b, **TOL[dtype], msg=f"{fn.__name__} {i}")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_fused_loss_under_grad(dtype):
    x, W, b, y = inputs(dtype)
    want = eager_grads(lambda *a: sigmoid_linear_bce_loss(*a, y), (x, W, b))
    got = grad(sigmoid_linear_bce_loss, argnums=(0, 1, 2))(x, W, b, y)
    for name, g, w in zip("xWb", got, want, strict=True):
        assert torch.equal(g, w), name
        torch.testing.assert_close(
            g, grad(reference_bce, argnums="xWb".index(name))(x, W, b, y), **TOL[dtype]
        )


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_forward_mode_jvp_and_jacfwd(dtype):
    """Forward mode (PyTorch's own ops on the saved out, or dZ for the fused loss) against
    PyTorch's Linear + sigmoid, and jacfwd against jacrev (reverse mode, the kernels)."""
    x, W, b, y = inputs(dtype)
    tol = TOL[dtype]
    g = torch.Generator().manual_seed(3)
    tangents = tuple(torch.randn(t.shape, generator=g, dtype=dtype) for t in (x, W, b))
    for fn, ref in (
        (sigmoid_linear, reference),
        (
            lambda *a: sigmoid_linear_bce_loss(*a, y),
            lambda *a: reference_bce(*a, y),
        ),
    ):
        out, tangent = jvp(fn, (x, W, b), tangents)
        want_out, want_tangent = jvp(ref, (x, W, b), tangents)
        torch.testing.assert_close(out, want_out, **tol)
        torch.testing.assert_close(tangent, want_tangent, **tol)
    torch.testing.assert_close(
        jacfwd(sigmoid_linear, argnums=1)(x, W, b),
        jacrev(sigmoid_linear, argnums=1)(x, W, b),
        **tol,
    )
    with pytest.raises(RuntimeError, match="does not differentiate with respect to target"):
        jvp(lambda t: sigmoid_linear_bce_loss(x, W, b, t), (y,), (torch.ones_like(y),))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES)
@pytest.mark.parametrize("requires_grad", [False, True], ids=["plain", "W-requires-grad"])
def test_forward_ad_dual_tensors_carry_tangents(dtype, requires_grad):
    """torch.autograd.forward_ad outside torch.func: the tangent of a dual input reaches
    the output (it was silently dropped, a zero tangent, before), for the layer and the
    fused loss, with or without a leaf requiring grad; and the forward-mode Jacobian of
    torch.autograd.functional equals PyTorch's."""
    fwAD = torch.autograd.forward_ad
    x, W, b, y = inputs(dtype)
    W = W.clone().requires_grad_(requires_grad)
    tx = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    for fn, ref in (
        (sigmoid_linear, reference),
        (lambda *a: sigmoid_linear_bce_loss(*a, y), lambda *a: reference_bce(*a, y)),
    ):
        with fwAD.dual_level():
            got = fwAD.unpack_dual(fn(fwAD.make_dual(x, tx), W, b))
            want = fwAD.unpack_dual(ref(fwAD.make_dual(x, tx), W, b))
        assert got.tangent is not None
        torch.testing.assert_close(got.primal, want.primal, **TOL[dtype])
        torch.testing.assert_close(got.tangent, want.tangent, **TOL[dtype])
    jacobian = torch.autograd.functional.jacobian
    W = W.detach()
    for strategy in ("forward-mode", "reverse-mode"):
        got = jacobian(lambda a: sigmoid_linear(a, W, b), x, vectorize=True, strategy=strategy)
        want = jacobian(lambda a: reference(a, W, b), x, vectorize=True, strategy=strategy)
        torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("fused", [False, True], ids=["layer", "fused-loss"])
def test_batched_grad_outputs(fused):
    """torch.autograd.grad(is_grads_batched=True) runs the backward under PyTorch's older
    vmap: the eager path's backward hands that to the operator's batching rule."""
    x, W, b, y = inputs(torch.float64)
    results = []
    for layer, loss in ((sigmoid_linear, sigmoid_linear_bce_loss), (reference, None)):
        Wg = W.clone().requires_grad_()
        if fused:
            out = loss(x, Wg, b, y) if loss else reference_bce(x, Wg, b, y)
            cotangents = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
        else:
            out = layer(x, Wg, b)
            cotangents = torch.eye(out.numel(), dtype=torch.float64).reshape(-1, *out.shape)
        results.append(torch.autograd.grad(out, Wg, cotangents, is_grads_batched=True)[0])
    torch.testing.assert_close(results[0], results[1], **TOL[torch.float64])


def test_functional_call_grad_equals_backward():
    model = torch.nn.Sequential(
        SigmoidLinear(5, 4, dtype=torch.float64, seed=0),
        SigmoidLinear(4, 2, dtype=torch.float64, seed=1),
    )
    x = inputs(torch.float64)[0]
    params = {k: v.detach() for k, v in model.named_parameters()}
    got = grad(lambda p: functional_call(model, p, (x,)).sum())(params)
    model(x).sum().backward()
    for name, p in model.named_parameters():
        assert torch.equal(got[name], p.grad), name


@pytest.mark.parametrize("fused", [False, True], ids=["layer", "fused-loss"])
def test_second_derivatives_are_refused_not_zero(fused):
    """The backward kernels are not differentiable. PyTorch would differentiate an
    operator without an autograd formula as zero (with a warning); here every way to a
    second derivative raises."""
    x, W, b, y = inputs(torch.float64)

    def f(W):
        return sigmoid_linear_bce_loss(x, W, b, y) if fused else sigmoid_linear(x, W, b).sum()

    name = "sigmoid_linear_bce_loss" if fused else "sigmoid_linear"
    with pytest.raises(RuntimeError, match=f"siglayer.torch.{name} has no second derivative"):
        jacrev(grad(f))(W)
    with pytest.raises(RuntimeError, match=f"siglayer.torch.{name} has no second derivative"):
        grad(lambda W: grad(f)(W).sum())(W)
    # hessian is jacfwd of jacrev: forward mode through the backward kernels.
    with pytest.raises(RuntimeError, match=f"siglayer.torch.{name} has no second derivative"):
        hessian(f)(W)
    # Forward over forward (PyTorch would pass the inner rule's result on with a zero
    # tangent: an all-zero second derivative).
    with pytest.raises(RuntimeError, match=f"siglayer.torch.{name} has no second derivative"):
        jacfwd(jacfwd(f))(W)
    ones = torch.ones_like(W)
    with pytest.raises(RuntimeError, match=f"siglayer.torch.{name} has no second derivative"):
        jvp(lambda W: jvp(f, (W,), (ones,))[1], (W,), (ones,))


def test_reverse_over_forward_is_the_hessian_or_refused():
    """jacrev of jacfwd, and a backward from a forward_ad tangent, run the jvp rule's
    PyTorch ops under reverse mode: for the layer, whose rule is written in the
    differentiable out, that is the true second derivative (against torch.sigmoid's);
    the fused loss's rule uses its saved dZ, a constant to reverse mode, so it refuses
    rather than miss d dZ (it gave 0)."""
    x, W, b, y = inputs(torch.float64)
    got = jacrev(jacfwd(lambda W: sigmoid_linear(x, W, b).sum()))(W)
    want = jacrev(jacfwd(lambda W: torch.sigmoid(x @ W + b).sum()))(W)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, **TOL[torch.float64])
    with pytest.raises(RuntimeError, match="sigmoid_linear_bce_loss has no second derivative"):
        jacrev(jacfwd(lambda W: sigmoid_linear_bce_loss(x, W, b, y)))(W)

    def reverse_of_tangent(f):
        Wg = W.clone().requires_grad_()
        with fwAD.dual_level():
            tangent = fwAD.unpack_dual(f(fwAD.make_dual(Wg, torch.ones_like(W)))).tangent
        return torch.autograd.grad(tangent, Wg)[0]

    got = reverse_of_tangent(lambda W: sigmoid_linear(x, W, b).sum())
    torch.testing.assert_close(
        got, reverse_of_tangent(lambda W: torch.sigmoid(x @ W + b).sum()), **TOL[torch.float64]
    )
    with pytest.raises(RuntimeError, match="sigmoid_linear_bce_loss has no second derivative"):
        reverse_of_tangent(lambda W: sigmoid_linear_bce_loss(x, W, b, y))


def test_reverse_over_a_tangent_with_respect_to_the_tangent_is_first_order():
    """The directional derivative t -> jvp(f, (W,), (t,)) is linear in t; its gradient in
    t is the plain first derivative dL/dW, which reverse mode over the jvp rule gives
    without a second derivative (the fused loss's rule had refused it). Also with x's
    tangent, and by forward_ad; against the plain gradient of torch.sigmoid +
    binary_cross_entropy."""
    x, W, b, y = inputs(torch.float64)
    F = torch.nn.functional

    def ours(x, W):
        return sigmoid_linear_bce_loss(x, W, b, y)

    def ref(x, W):
        return F.binary_cross_entropy(torch.sigmoid(x @ W + b), y)

    for argnum, primal in ((1, W), (0, x)):

        def directional(t, f, argnum=argnum, primal=primal):
            return jvp(lambda p: f(*((p, W) if argnum == 0 else (x, p))), (primal,), (t,))[1]

        t = torch.ones_like(primal)
        got = jacrev(directional)(t, ours)
        torch.testing.assert_close(got, jacrev(ref, argnums=argnum)(x, W), **TOL[torch.float64])
        # PyTorch's own reverse over forward, through BCE's jvp (a division by
        # out (1 - out)), rounds differently: 1e-10 relative seen.
        torch.testing.assert_close(got, jacrev(directional)(t, ref), rtol=1e-8, atol=1e-12)
    # forward_ad: a tangent that requires grad, the primal not.
    tg = torch.ones_like(W).requires_grad_()
    with fwAD.dual_level():
        loss_tangent = fwAD.unpack_dual(ours(x, fwAD.make_dual(W, tg))).tangent
    (got,) = torch.autograd.grad(loss_tangent, tg)
    torch.testing.assert_close(got, jacrev(ref, argnums=1)(x, W), **TOL[torch.float64])
    # Twice in the tangent: the directional derivative is linear, so 0 exactly.
    twice = jacrev(jacrev(lambda t: jvp(lambda p: ours(x, p), (W,), (t,))[1]))(torch.ones_like(W))
    assert twice.shape == (*W.shape, *W.shape) and not twice.any()


def test_a_reverse_level_through_the_primals_over_the_tangents_gradient_is_refused():
    """That gradient in the tangent, dL/dW = x^T dZ, depends on x, W, b through dZ: an
    outer reverse level that differentiates it there is a second derivative and must
    raise. It returned numbers without d dZ (grad in x of grad in t: 0.059 in every
    entry where torch gives 0.071, 0.078, 0.052), by torch.func or by plain autograd."""
    x, W, b, y = inputs(torch.float64)
    t0 = torch.ones_like(W)

    def grad_in_t(x, W, b):
        return grad(lambda t: jvp(lambda p: sigmoid_linear_bce_loss(x, p, b, y), (W,), (t,))[1])(t0)

    for argnum in range(3):
        with pytest.raises(RuntimeError, match="sigmoid_linear_bce_loss has no second derivative"):
            grad(lambda *a: grad_in_t(*a).sum(), argnums=argnum)(x, W, b)
    with pytest.raises(RuntimeError, match="sigmoid_linear_bce_loss has no second derivative"):
        jacrev(
            lambda x: vjp(
                lambda t: jvp(lambda p: sigmoid_linear_bce_loss(x, p, b, y), (W,), (t,))[1], t0
            )[1](torch.tensor(1.0, dtype=x.dtype))[0]
        )(x)
    xg = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="sigmoid_linear_bce_loss has no second derivative"):
        torch.autograd.grad(grad_in_t(xg, W, b).sum(), xg)
