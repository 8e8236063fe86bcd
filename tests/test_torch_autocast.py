"""siglayer.torch inside torch.autocast on the CPU: the layer computes as nn.Linear does
there (bfloat16 x and W, a float32 bias kept, bfloat16 out; float32 for a float16
autocast, which siglayer has no kernels for), the fused loss in float32 as PyTorch's
binary_cross_entropy_with_logits; gradients reach float32 parameters in float32. The
oracle: the same calls with the casts written out, bit for bit, and nn.Linear + sigmoid
under the same autocast within bfloat16's rounding."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ml_dtypes")  # bfloat16 tensors reach the core as ml_dtypes arrays

from siglayer.torch import SigmoidLinear, sigmoid_linear, sigmoid_linear_bce_loss  # noqa: E402


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 6, generator=g)
    W = (torch.randn(6, 4, generator=g) / 2).requires_grad_()
    b = torch.randn(4, generator=g).requires_grad_()
    return x, W, b


def grads(fn, *leaves):
    for t in leaves:
        t.grad = None
    out = fn()
    out.float().sum().backward()
    return out.detach(), [t.grad.clone() for t in leaves]


def test_layer_under_autocast_is_the_bfloat16_call():
    x, W, b = inputs()
    with torch.autocast("cpu"):  # bfloat16, the CPU default
        got, got_grads = grads(lambda: sigmoid_linear(x, W, b), W, b)
    want, want_grads = grads(lambda: sigmoid_linear(x.bfloat16(), W.bfloat16(), b), W, b)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert g.dtype == torch.float32 and torch.equal(g, w)
    # And close to what nn.Linear + sigmoid give under the same autocast (each rounds
    # its operands and out to bfloat16: a few bfloat16 steps at most).
    linear = torch.nn.Linear(6, 4)
    with torch.no_grad():
        linear.weight.copy_(W.T)
        linear.bias.copy_(b)
    with torch.autocast("cpu"):
        ref = torch.sigmoid(linear(x))
    assert ref.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.float(), rtol=0, atol=4 * 2.0**-8)


def test_a_model_mixing_linear_and_sigmoid_linear_runs_under_autocast():
    """nn.Linear hands bfloat16 to the next layer under autocast; without the cast a
    float32 SigmoidLinear would refuse the mixed dtypes."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 5), SigmoidLinear(5, 4, seed=0), torch.nn.Linear(4, 3)
    )
    x = inputs()[0]
    with torch.autocast("cpu"):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(out.float(), model(x).detach(), rtol=0, atol=2e-2)


def test_fused_loss_under_autocast_runs_in_float32():
    x, W, b = inputs(1)
    hidden = torch.sigmoid(x[:, :6] @ torch.randn(6, 6)).bfloat16()  # what autocast hands on
    y = torch.rand(8, 4)
    with torch.autocast("cpu"):
        loss, got = grads(lambda: sigmoid_linear_bce_loss(hidden, W, b, y), W, b)
    want_loss, want = grads(lambda: sigmoid_linear_bce_loss(hidden.float(), W, b, y), W, b)
    assert loss.dtype == torch.float32 and torch.equal(loss, want_loss)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_float16_autocast_computes_in_float32_and_float64_is_left_alone():
    x, W, b = inputs(2)
    with torch.autocast("cpu", dtype=torch.float16):
        out = sigmoid_linear(x, W, b)
        out16 = sigmoid_linear(x.half(), W, b)  # float16 from a previous autocast op
    assert out.dtype == out16.dtype == torch.float32
    assert torch.equal(out, sigmoid_linear(x, W, b))
    assert torch.equal(out16, sigmoid_linear(x.half().float(), W, b))
    x64, W64, b64 = (t.detach().double() for t in (x, W, b))
    with torch.autocast("cpu"):
        out64 = sigmoid_linear(x64, W64, b64)
    assert out64.dtype == torch.float64 and torch.equal(out64, sigmoid_linear(x64, W64, b64))


def test_a_float64_input_to_a_float32_model_under_autocast_names_autocast():
    """autocast casts the float32 W to bfloat16 and leaves the float64 x: the message says
    so, instead of naming a bfloat16 W the user never made without a reason."""
    x, W, b = inputs(3)
    with (
        torch.autocast("cpu"),
        pytest.raises(
            TypeError,
            match=r"got x torch\.float64, W torch\.bfloat16.*inside torch\.autocast.*x\.float",
        ),
    ):
        sigmoid_linear(x.double(), W, b)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_under_autocast_equals_eager(backend):
    torch._dynamo.reset()
    layer = SigmoidLinear(6, 4, seed=3)
    x = inputs(3)[0]

    def f(x):
        with torch.autocast("cpu"):
            return layer(x)

    want = f(x)
    got = torch.compile(f, fullgraph=True, backend=backend)(x)
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)


@pytest.mark.parametrize("runner", ["operator", "export", "jit.trace", "jit.script"])
def test_programs_that_call_the_operator_directly_run_under_autocast(runner):
    """The operator has autocast kernels of its own: a program that calls it without the
    Python function (an exported program, TorchScript, torch.ops.siglayer.*) casts as the
    function does, bit for bit (a review found all four refusing autocast's bfloat16 x
    beside a float32 W)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), SigmoidLinear(5, 4, seed=0))
    x = inputs()[0]
    with torch.autocast("cpu"):
        want = model(x)
    assert want.dtype == torch.bfloat16
    head = model[2]
    if runner == "operator":
        program = lambda x: torch.ops.siglayer.sigmoid_linear(model[1](model[0](x)), head.W, head.b)  # noqa: E731
    elif runner == "export":
        program = torch.export.export(model, (x,)).module()
    elif runner == "jit.trace":
        program = torch.jit.trace(model, (x,))
    else:
        program = torch.jit.script(model)
    with torch.autocast("cpu"):
        got = program(x)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    # Outside autocast the same program computes in float32, as before.
    assert torch.equal(program(x), model(x))


def test_fused_loss_operator_runs_in_float32_under_autocast():
    x, W, b = inputs()
    y = (torch.arange(32).reshape(8, 4) % 3 == 0).float()
    with torch.autocast("cpu"):
        want = sigmoid_linear_bce_loss(x.bfloat16(), W, b, y)
        loss, dZ = torch.ops.siglayer.sigmoid_linear_bce(x.bfloat16(), W, b, y, "mean")
    assert loss.dtype == dZ.dtype == torch.float32
    assert torch.equal(loss, want)
    assert torch.equal(loss, sigmoid_linear_bce_loss(x.bfloat16().float(), W, b, y))
