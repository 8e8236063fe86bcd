"""The operators themselves (not the public functions' eager paths) under every mode of
differentiation: called directly, inside torch.compile (aot_eager and inductor) and in a
torch.export program, with forward mode (torch.func.jvp / jacfwd, forward_ad dual
tensors), reverse mode in torch.func (grad, vmap of grad) and second derivatives. Each
result is checked against PyTorch's own Linear + sigmoid (or binary cross-entropy with
logits, whose gradient in the pre-activation is the fused loss's dZ) on the same inputs,
in float64 to 1e-10 (an autograd formula that dropped a tangent gave exact zeros here,
and torch.func refused the operator outright)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch.autograd import forward_ad as fwAD  # noqa: E402
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap  # noqa: E402

from siglayer.torch import SigmoidLinear, sigmoid_linear, sigmoid_linear_bce_loss  # noqa: E402

F = torch.nn.functional
D = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-12}
layer_op = torch.ops.siglayer.sigmoid_linear
bce_op = torch.ops.siglayer.sigmoid_linear_bce


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, generator=g, dtype=D)
    W = torch.randn(3, 2, generator=g, dtype=D)
    b = torch.randn(2, generator=g, dtype=D)
    y = torch.rand(6, 2, generator=g, dtype=D)
    return x, W, b, y


def reference(x, W, b):
    return torch.sigmoid(x @ W + b)


def layer_loss(layer):
    """W -> a scalar through layer(x, W, b): nonlinear in out, so that second
    derivatives through the layer matter."""
    x, _, b, _ = inputs()
    return lambda W: layer(x, W, b).pow(2).sum()


def bce_loss_of(op_or_ref):
    x, _, b, y = inputs()
    if op_or_ref == "op":
        return lambda W: bce_op(x, W, b, y, "mean")[0]
    return lambda W: F.binary_cross_entropy_with_logits(x @ W + b, y)


TRANSFORMS = {
    "grad": grad,
    "jacfwd": jacfwd,
    "jacrev": jacrev,
    "hessian": hessian,
    "jacrev-of-jacfwd": lambda f: jacrev(jacfwd(f)),
}


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize("which", ["layer", "bce"])
def test_the_operator_called_directly_under_torch_func(transform, which):
    """First and second derivatives of the operator itself equal PyTorch's own formula's
    (second ones too: inside a transform the operator differentiates as that formula)."""
    _, W, _, _ = inputs()
    if which == "layer":
        got, want = layer_loss(layer_op), layer_loss(reference)
    else:
        got, want = bce_loss_of("op"), bce_loss_of("reference")
    torch.testing.assert_close(transform(got)(W), transform(want)(W), **TOL)


def test_values_under_a_transform_are_the_kernels_bits():
    x, W, b, _ = inputs()
    seen = []

    def f(W):
        out = layer_op(x, W, b)
        seen.append(torch._C._functorch.get_unwrapped(out))
        return out.sum()

    grad(f)(W)
    assert torch.equal(seen[0], layer_op(x, W, b))
    vmap(grad(f), in_dims=0)(torch.stack([W, 2 * W]))  # per-sample, batched W


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("transform", ["jacfwd", "grad"])
def test_torch_func_inside_torch_compile(backend, transform):
    """torch.compile of a torch.func transform sees the operator itself (the public
    function sends compiled code there): jacfwd gave zeros, grad was refused."""
    torch._dynamo.reset()
    _, W, _, _ = inputs()
    t = TRANSFORMS[transform]
    got = torch.compile(t(layer_loss(sigmoid_linear)), backend=backend, fullgraph=False)(W)
    torch.testing.assert_close(got, t(layer_loss(reference))(W), **TOL)


def test_exported_program_under_jvp_and_grad():
    x, _, _, _ = inputs()
    module = SigmoidLinear(3, 2, dtype=D, seed=0)
    program = torch.export.export(module, (x,)).module()
    W, b = module.W.detach(), module.b.detach()
    tangent = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=D)
    got = jvp(lambda a: program(a).sum(), (x,), (tangent,))[1]
    want = jvp(lambda a: reference(a, W, b).sum(), (x,), (tangent,))[1]
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(
        grad(lambda a: program(a).sum())(x), grad(lambda a: reference(a, W, b).sum())(x), **TOL
    )


@pytest.mark.parametrize("which", ["layer", "bce"])
def test_forward_ad_dual_tensors_through_the_operator(which):
    x, W, b, y = inputs()
    tangent = torch.randn(W.shape, generator=torch.Generator().manual_seed(2), dtype=D)
    with fwAD.dual_level():
        dual = fwAD.make_dual(W, tangent)
        if which == "layer":
            got = fwAD.unpack_dual(layer_op(x, dual, b)).tangent
            want = fwAD.unpack_dual(reference(x, dual, b)).tangent
        else:
            got = fwAD.unpack_dual(bce_op(x, dual, b, y, "sum")[0]).tangent
            want = fwAD.unpack_dual(
                F.binary_cross_entropy_with_logits(x @ dual + b, y, reduction="sum")
            ).tangent
    assert got is not None
    torch.testing.assert_close(got, want, **TOL)


def test_gradcheck_of_the_operator_in_both_modes():
    x, W, b, _ = inputs()
    leaves = tuple(t.clone().requires_grad_() for t in (x, W, b))
    assert torch.autograd.gradcheck(
        layer_op, leaves, check_forward_ad=True, check_batched_grad=True
    )


def test_the_operators_plain_autograd_is_first_order_only():
    """Outside transforms the operator keeps siglayer's backward kernels, which are not
    differentiable: create_graph=True is refused, as for the public function."""
    x, W, b, _ = inputs()
    W = W.clone().requires_grad_()
    out = layer_op(x, W, b)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.sum(), W, create_graph=True)
    (dW,) = torch.autograd.grad(layer_op(x, W, b).sum(), W)
    torch.testing.assert_close(dW, grad(lambda W: reference(x, W, b).sum())(W.detach()), **TOL)


def test_bfloat16_operator_under_grad_is_close_to_the_public_function():
    """bfloat16: the operator under grad (PyTorch's formula in float32, rounded once) and
    the public function (siglayer's kernels, dZ rounded to bfloat16) agree within the
    bound of those roundings."""
    x, W, b, _ = inputs()
    xb, Wb, bf = x.to(torch.bfloat16), W.to(torch.bfloat16), b.float()
    got = grad(lambda W: layer_op(xb, W, bf).float().sum())(Wb)
    want = grad(lambda W: sigmoid_linear(xb, W, bf).float().sum())(Wb)
    assert got.dtype == want.dtype == torch.bfloat16
    # Each side rounds dZ (or out) and dW once or twice by 2^-8 relative: bounded by
    # |x|^T |dZ| (no cancellation), plus the final rounding of |dW|.
    xf, Wf = xb.double(), Wb.double()
    s = torch.sigmoid(xf @ Wf + b)
    scale = xf.abs().T @ (s * (1 - s)).abs()
    bound = 4 * 2.0**-8 * scale + 2.0**-8 * want.double().abs()
    assert bool(((got.double() - want.double()).abs() <= bound).all())


def test_fused_loss_value_under_a_transform_and_its_target_derivative():
    """The fused operator's loss under grad is its own value; its derivative in the
    target (refused on the eager path) is that of binary cross-entropy with logits."""
    x, W, b, y = inputs()
    value = []

    def f(W):
        loss = bce_op(x, W, b, y, "mean")[0]
        value.append(torch._C._functorch.get_unwrapped(loss))
        return loss

    grad(f)(W)
    assert torch.equal(value[0], bce_op(x, W, b, y, "mean")[0])
    got = grad(lambda t: bce_op(x, W, b, t, "mean")[0])(y)
    want = grad(lambda t: F.binary_cross_entropy_with_logits(x @ W + b, t))(y)
    torch.testing.assert_close(got, want, **TOL)
    # sigmoid_linear_bce_loss itself stays first order in eager transforms
    with pytest.raises(RuntimeError, match="second derivative"):
        hessian(lambda W: sigmoid_linear_bce_loss(x, W, b, y))(W)


def test_vmap_over_an_empty_batch_gives_empty_results():
    """An empty batch of weights (or samples): the shapes PyTorch's own layer gives."""
    x, W, b, _ = inputs()
    out = vmap(sigmoid_linear, in_dims=(None, 0, None))(x, W.new_empty(0, 3, 2), b)
    want = vmap(reference, in_dims=(None, 0, None))(x, W.new_empty(0, 3, 2), b)
    assert out.shape == want.shape == (0, 6, 2) and out.dtype == D
    per_sample = vmap(grad(lambda W, xi: sigmoid_linear(xi[None], W, b).sum()), in_dims=(None, 0))
    assert per_sample(W, x[:0]).shape == (0, 3, 2)


def test_a_direct_call_refuses_what_a_compiled_one_refuses():
    """The operator's CPU kernel runs the fake kernel's checks: a (1, n_out) b, which the
    NumPy API accepts, is refused with the same message in eager and under FakeTensorMode."""
    x, W, b, y = inputs()
    with pytest.raises(ValueError, match=r"b has shape \(1, 2\), expected \(2,\)"):
        layer_op(x, W, b.reshape(1, 2))
    b_row = b.reshape(1, 2)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fakes = [mode.from_tensor(t) for t in (x, W, b_row)]
        with pytest.raises(ValueError, match=r"b has shape \(1, 2\), expected \(2,\)"):
            layer_op(*fakes)
    with pytest.raises(TypeError, match="x, W and b must share one dtype"):
        layer_op(x.float(), W, b)
    with pytest.raises(ValueError, match="b has shape"):
        bce_op(x, W, b.reshape(1, 2), y, "mean")


@pytest.mark.parametrize("x_requires_grad", [False, True])
@pytest.mark.parametrize("fused", [False, True], ids=["layer", "fused-loss"])
def test_flop_counter_counts_what_pytorch_counts_for_its_own_layer(x_requires_grad, fused):
    """FlopCounterMode counted 0 for the operators; now their matrix products, as it
    counts PyTorch's own matmul (forward, dW, and dx when x requires grad)."""
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 5, generator=g).requires_grad_(x_requires_grad)
    W = torch.randn(5, 3, generator=g, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    y = torch.rand(2, 4, 3, generator=g)
    ours = (
        (lambda: sigmoid_linear_bce_loss(x, W, b, y))
        if fused
        else (lambda: sigmoid_linear(x, W, b).sum())
    )
    theirs = (
        (lambda: F.binary_cross_entropy_with_logits(x @ W + b, y))
        if fused
        else (lambda: torch.sigmoid(x @ W + b).sum())
    )
    counts = []
    for loss in (ours, theirs):
        with FlopCounterMode(display=False) as counter:
            loss().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 2 * 8 * 5 * 3 * (3 if x_requires_grad else 2)
