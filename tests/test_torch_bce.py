"""siglayer.torch.sigmoid_linear_bce_loss, the layer fused with binary cross-entropy:
values and gradients against a float64 oracle (the formulas, in NumPy), against
torch.nn.BCELoss after the layer, gradcheck, the saturated case where the unfused pair
loses the gradient, the eager path against the operators bit for bit, opcheck on both
operators, torch.compile and torch.export, and the errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from siglayer.torch import SigmoidLinear, sigmoid_linear, sigmoid_linear_bce_loss  # noqa: E402

# The dtypes, requires_grad subsets and helpers of the operator tests.
from test_torch_ops import DTYPES, SUBSETS, PassThrough, aot_graphs  # noqa: E402

bce_op = torch.ops.siglayer.sigmoid_linear_bce.default
from_z_op = torch.ops.siglayer.sigmoid_linear_backward_from_preactivation.default
SHAPES = {"2d": (6, 5), "batched": (2, 3, 5)}
N_OUT = 4


def inputs(seed, shape_x, dtype, W_layout="C", scale=1.0):
    """x, W (contiguous or a transposed view), b, and a target of soft labels in [0, 1]
    with some exact 0s and 1s."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape_x, generator=g, dtype=torch.float64)
    n_in = shape_x[-1]
    if W_layout == "T":
        W = torch.randn(N_OUT, n_in, generator=g, dtype=torch.float64).T
    else:
        W = torch.randn(n_in, N_OUT, generator=g, dtype=torch.float64)
    b = torch.randn(N_OUT, generator=g, dtype=torch.float64)
    y = torch.rand(*shape_x[:-1], N_OUT, generator=g, dtype=torch.float64)
    y = torch.where(y < 0.25, 0.0, torch.where(y > 0.75, 1.0, y))
    return x.to(dtype), (W * scale / n_in**0.5).to(dtype), b.to(dtype), y.to(dtype)


def oracle(x, W, b, y, reduction):
    """float64 loss and gradients from the formulas, with elementwise error bounds for a
    computation in x's dtype: |fl(A @ B) - A @ B| <= 2 (K + 4) eps |A| @ |B| for each
    product of inner length K (conftest), sigma' <= 1/4 carrying z's error into out, a
    few roundings (4 eps) for each elementwise step."""
    eps = float(torch.finfo(x.dtype).eps)
    x2 = x.detach().double().reshape(-1, x.shape[-1]).numpy()
    W2, b2 = W.detach().double().numpy(), b.detach().double().numpy()
    y2 = y.double().reshape(-1, W.shape[1]).numpy()
    ax, aW = np.abs(x2), np.abs(W2)
    n_in, n_out = W2.shape
    z = x2 @ W2 + b2
    out = 1 / (1 + np.exp(-z))
    N = out.size if reduction == "mean" else 1
    with np.errstate(divide="ignore"):
        terms = -(y2 * np.maximum(np.log(out), -100) + (1 - y2) * np.maximum(np.log1p(-out), -100))
    loss = terms.sum() / N
    dZ = (out - y2) / N
    z_err = 2 * (n_in + 4) * eps * (ax @ aW) + 4 * eps * (np.abs(z) + np.abs(b2))
    dZ_err = (0.25 * z_err + 4 * eps) / N + 4 * eps * np.abs(dZ)
    loss_err = (np.abs(out - y2) * z_err + 4 * eps * (terms + 1)).sum() / N + eps * abs(loss)
    rows = x2.shape[0]
    dW = x2.T @ dZ
    dW_err = 2 * (rows + 4) * eps * (ax.T @ np.abs(dZ)) + ax.T @ dZ_err
    db = dZ.sum(0)
    db_err = 2 * (rows + 4) * eps * np.abs(dZ).sum(0) + dZ_err.sum(0)
    dx = dZ @ W2.T
    dx_err = 2 * (n_out + 4) * eps * (np.abs(dZ) @ aW.T) + dZ_err @ aW.T
    return {
        "loss": (loss, loss_err),
        "x": (dx.reshape(x.shape), dx_err.reshape(x.shape)),
        "W": (dW, dW_err),
        "b": (db, db_err),
    }


def run(fn, x, W, b, y, needs, reduction="mean"):
    args = [
        t.detach().clone().requires_grad_(n in needs) for n, t in zip("xWb", (x, W, b), strict=True)
    ]
    loss = fn(*args, y, reduction)
    if loss.requires_grad:
        loss.backward()
    return loss.detach(), dict(zip("xWb", (a.grad for a in args), strict=True)), loss.grad_fn


def fused(x, W, b, y, reduction):
    return sigmoid_linear_bce_loss(x, W, b, y, reduction=reduction)


def unfused(x, W, b, y, reduction):
    return torch.nn.functional.binary_cross_entropy(sigmoid_linear(x, W, b), y, reduction=reduction)


def through_operator(x, W, b, y, reduction):
    return bce_op(x, W, b, y, reduction)[0]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("W_layout", ["C", "T"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_loss_and_gradients_match_the_float64_oracle(dtype, W_layout, shape, reduction):
    x, W, b, y = inputs(0, shape, dtype, W_layout, scale=3.0)
    want = oracle(x, W, b, y, reduction)
    for fn in (fused, through_operator):
        loss, grads, _ = run(fn, x, W, b, y, "xWb", reduction)
        assert loss.shape == () and loss.dtype == dtype
        value, bound = want["loss"]
        assert abs(float(loss) - value) <= bound, (float(loss), value, bound)
        for name in "xWb":
            g = grads[name]
            assert g.dtype == dtype
            ref, err = want[name]
            assert g.shape == ref.shape, name
            excess = np.abs(g.double().numpy() - ref) - err
            assert (excess <= 0).all(), (name, excess.max())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_equals_bceloss_after_the_layer(dtype, reduction):
    """Same value and gradients as torch.nn.BCELoss on sigmoid_linear's output (no
    saturation here), within float rounding."""
    x, W, b, y = inputs(1, (2, 3, 5), dtype)
    got = run(fused, x, W, b, y, "xWb", reduction)
    want = run(unfused, x, W, b, y, "xWb", reduction)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    torch.testing.assert_close(got[0], want[0], **tol)
    for name in "xWb":
        torch.testing.assert_close(got[1][name], want[1][name], **tol)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_a_strided_target_is_taken(dtype, reduction):
    """A target sliced from a wider one or transposed gives what a contiguous copy gives,
    on the eager path and through the operator (a mutation that passed it to the core
    uncopied, which refuses it, went unseen: every target here was contiguous; helper-83).
    Oracle: the float64 oracle on the contiguous copy."""
    x, W, b, _ = inputs(2, (6, 5), dtype)
    wide = torch.rand(6, 2 * W.shape[1], dtype=dtype, generator=torch.Generator().manual_seed(3))
    for y in (wide[:, ::2], wide[:, ::2].T.contiguous().T):
        assert not y.is_contiguous()
        want = oracle(x, W, b, y.contiguous(), reduction)
        for fn in (fused, through_operator):
            loss, grads, _ = run(fn, x, W, b, y, "xWb", reduction)
            value, bound = want["loss"]
            assert abs(float(loss) - value) <= bound, (float(loss), value, bound)
            for name in "xWb":
                ref, err = want[name]
                assert (np.abs(grads[name].double().numpy() - ref) <= err).all(), name


def test_gradcheck():
    x, W, b, y = inputs(2, (2, 3, 5), torch.float64, "T")
    args = tuple(t.requires_grad_() for t in (x, W, b))
    for reduction in ("mean", "sum"):
        for fn in (fused, through_operator):
            assert torch.autograd.gradcheck(
                lambda x, W, b, fn=fn, reduction=reduction: fn(x, W, b, y, reduction), args
            )


def test_saturated_outputs_keep_their_gradient():
    """z = 30 and 25: sigmoid(z) rounds to exactly 1 in float32 (from z of about 17 on).
    With target 0 each loss term is BCELoss's clamp, 100, and the true gradient at z is
    (out - y) / N = (1 - 1e-11) / 4, 0.25 in float32. The fused loss gives it; BCELoss after
    the layer gives 0 (its gradient divides by out * (1 - out) = 0, clamped to 1e-12,
    and the layer multiplies by 0)."""
    x = torch.ones(2, 1)
    W = torch.tensor([[30.0, 25.0]], requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    y = torch.zeros(2, 2)  # every output wrong and saturated
    assert torch.equal(sigmoid_linear(x, W, b), torch.ones(2, 2))
    loss = sigmoid_linear_bce_loss(x, W, b, y)
    assert loss.item() == 100.0  # each of the 4 terms clamped at 100, mean over 4
    loss.backward()
    assert torch.equal(W.grad, torch.tensor([[0.5, 0.5]]))  # x.T @ (out - y) / 4
    assert torch.equal(b.grad, torch.tensor([0.5, 0.5]))
    W2, b2 = W.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    unfused_loss = torch.nn.functional.binary_cross_entropy(sigmoid_linear(x, W2, b2), y)
    assert unfused_loss.item() == 100.0
    unfused_loss.backward()
    assert torch.equal(W2.grad, torch.zeros(1, 2))  # what the unfused pair gives


@pytest.mark.parametrize("z", [-30.0, 30.0])
def test_far_saturated_outputs_keep_their_whole_gradient_in_float64(z):
    """|z| = 30 in float64: out * (1 - out) = 9.4e-14, below the 1e-12 that
    torch.nn.BCELoss clamps its denominator to, so the unfused gradient is 0.094 of the
    true one; the fused one is sigmoid(z) - y to the last bits."""
    x = torch.ones(1, 1, dtype=torch.float64)
    y = torch.full((1, 1), 1.0 if z < 0 else 0.0, dtype=torch.float64)
    b = torch.zeros(1, dtype=torch.float64)
    true = 1 / (1 + np.exp(-z)) - float(y)
    W = torch.tensor([[z]], dtype=torch.float64, requires_grad=True)
    sigmoid_linear_bce_loss(x, W, b, y).backward()
    assert abs(W.grad.item() - true) <= 4e-16 * abs(true)
    W2 = W.detach().clone().requires_grad_()
    torch.nn.functional.binary_cross_entropy(sigmoid_linear(x, W2, b), y).backward()
    assert abs(W2.grad.item()) < 0.1 * abs(true)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("needs", SUBSETS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_eager_path_equals_the_operator_bitwise(dtype, shape, needs, reduction):
    x, W, b, y = inputs(3, shape, dtype, "T")
    loss_e, grads_e, fn_e = run(fused, x, W, b, y, needs, reduction)
    loss_o, grads_o, fn_o = run(through_operator, x, W, b, y, needs, reduction)
    if needs == "none":
        assert fn_e is None and fn_o is None
    else:
        assert type(fn_e).__name__ == "_EagerBCEBackward"
        assert type(fn_o).__name__ != "_EagerBCEBackward"
    assert torch.equal(loss_e, loss_o)
    for name in "xWb":
        ge, go = grads_e[name], grads_o[name]
        assert (ge is None) == (go is None) == (name not in needs), name
        if ge is not None:
            assert torch.equal(ge, go), name


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("path", ["eager", "operator"])
def test_the_loss_gradient_scales_the_result(path, dtype):
    """backward from 2.5 * loss (the loss is not the last node, its gradient is 2.5):
    every gradient is 2.5 times the oracle's, within 2.5 times its bound."""
    fn = fused if path == "eager" else through_operator
    x, W, b, y = inputs(4, (6, 5), dtype)
    want = oracle(x, W, b, y, "mean")
    _, scaled, _ = run(lambda *a: 2.5 * fn(*a), x, W, b, y, "xWb")
    for name in "xWb":
        ref, err = want[name]
        excess = np.abs(scaled[name].double().numpy() - 2.5 * ref) - 2.5 * err
        assert (excess <= 0).all(), (name, excess.max())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("needs", ["none", "x", "W", "xWb"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("W_layout", ["C", "T"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_opcheck_loss(dtype, W_layout, shape, needs, reduction):
    x, W, b, y = inputs(5, shape, dtype, W_layout)
    args = [t.requires_grad_(n in needs) for n, t in zip("xWb", (x, W, b), strict=True)]
    # schema, autograd registration, fake kernel against the real one, AOT dispatch
    torch.library.opcheck(bce_op, (*args, y, reduction))


@pytest.mark.parametrize("need_dW", [True, False], ids=["dW", "no-dW"])
@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no-dx"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("W_layout", ["C", "T"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_opcheck_backward_from_preactivation(dtype, W_layout, shape, need_dx, need_dW):
    x, W, _, _ = inputs(6, shape, dtype, W_layout)
    dZ = torch.randn((*shape[:-1], N_OUT), generator=torch.Generator().manual_seed(7))
    dZ = dZ.to(dtype)
    torch.library.opcheck(from_z_op, (dZ, x, W, need_dx, need_dW))
    dx, dW, db = from_z_op(dZ, x, W, need_dx, need_dW)
    assert dx.shape == (x.shape if need_dx else (0,))
    if need_dW:
        torch.testing.assert_close(dW, x.reshape(-1, 5).T @ dZ.reshape(-1, N_OUT))
    else:
        assert dW.shape == (0,)
    torch.testing.assert_close(db, dZ.reshape(-1, N_OUT).sum(0))
    if need_dx:
        torch.testing.assert_close(dx, dZ @ W.T)


def test_the_operators_are_registered():
    assert str(bce_op._schema) == (
        "siglayer::sigmoid_linear_bce(Tensor x, Tensor W, Tensor b, Tensor target, "
        "str reduction) -> (Tensor, Tensor)"
    )
    assert str(from_z_op._schema) == (
        "siglayer::sigmoid_linear_backward_from_preactivation(Tensor dZ, Tensor x, "
        "Tensor W, bool need_dx, bool need_dW=True) -> (Tensor, Tensor, Tensor)"
    )


class Classifier(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.hidden = SigmoidLinear(7, 6, dtype=dtype, seed=0)
        self.head = SigmoidLinear(6, 3, dtype=dtype, seed=1)
        with torch.no_grad():
            self.head.b.copy_(torch.linspace(-1, 1, 3, dtype=dtype))

    def forward(self, x, y):
        return self.head.bce_loss(self.hidden(x), y)


def loss_and_grads(model, x, y):
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    loss = model(x, y)
    loss.backward()
    return [loss.detach(), x.grad, *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_compile_fullgraph_matches_eager(backend, dtype):
    torch._dynamo.reset()
    model = Classifier(dtype)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    g = torch.Generator().manual_seed(8)
    for shape in [(5, 7), (2, 4, 7)]:
        x = torch.randn(shape, generator=g, dtype=dtype)
        y = torch.rand((*shape[:-1], 3), generator=g, dtype=dtype)
        want = loss_and_grads(model, x, y)
        got = loss_and_grads(compiled, x, y)
        # The same kernels; the compiled backward multiplies dZ by the loss's gradient
        # (1.0), which changes no bits.
        for a, b in itertools.zip_longest(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compiled_graphs_hold_the_fused_operators():
    model = Classifier(torch.float64)
    x, y = torch.rand(4, 7, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64)
    forward_graph, backward_graph = aot_graphs(model, x, y)
    assert forward_graph.count("siglayer.sigmoid_linear_bce.default") == 1
    assert backward_graph.count("siglayer.sigmoid_linear_backward_from_preactivation.default") == 1
    assert backward_graph.count("siglayer.sigmoid_linear_backward.default") == 1  # hidden


def test_export_runs_and_matches():
    model = Classifier(torch.float64)
    x, y = torch.rand(5, 7, dtype=torch.float64), torch.rand(5, 3, dtype=torch.float64)
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(model, (x, y), dynamic_shapes=({0: batch}, {0: batch}))
    calls = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert bce_op in calls
    module = exported.module()
    for rows in (5, 9):
        x, y = torch.rand(rows, 7, dtype=torch.float64), torch.rand(rows, 3, dtype=torch.float64)
        torch.testing.assert_close(module(x, y), model(x, y), rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("runner", ["export", "inductor", "aot_eager"])
def test_a_batch_sized_by_the_data_exports_and_compiles(runner, reduction):
    """x[mask]: a batch size known only when the program runs (an unbacked size). The
    check of an empty mean may not guard on it (export and fullgraph compile failed on
    `3*u0 > 0`, found by review helper-77): the program matches eager, value and
    gradients, and an empty batch is still refused when it runs."""
    torch.manual_seed(0)

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W = torch.nn.Parameter(torch.randn(6, 3, dtype=torch.float64))
            self.b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))

        def forward(self, x, y, mask):
            return sigmoid_linear_bce_loss(x[mask], self.W, self.b, y[mask], reduction=reduction)

    model = Masked()
    W, b = model.W, model.b

    x = torch.randn(8, 6, dtype=torch.float64)
    y = (torch.rand(8, 3) > 0.5).double()
    if runner == "export":
        program = torch.export.export(model, (x, y, x[:, 0] > 0)).module()
    else:
        torch._dynamo.reset()
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            program = torch.compile(model, fullgraph=True, backend=runner)
            program(x, y, x[:, 0] > 0)  # compiled here, under the setting
    for column in (0, 1, 2):
        mask = x[:, column] > 0.3
        want = sigmoid_linear_bce_loss(x[mask], W, b, y[mask], reduction=reduction)
        want_grads = torch.autograd.grad(want, (W, b))
        got = program(x, y, mask)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        if runner != "export":  # an exported program's parameters are its own
            got_grads = torch.autograd.grad(got, (W, b))
            for g, w in zip(got_grads, want_grads, strict=True):
                torch.testing.assert_close(g, w, rtol=0, atol=0)
    empty = torch.zeros(8, dtype=torch.bool)
    if reduction == "mean":
        with pytest.raises(ValueError, match=r"the mean loss of an empty output"):
            program(x, y, empty)
    else:
        assert program(x, y, empty).item() == 0


def test_module_method_is_the_function():
    layer = SigmoidLinear(5, N_OUT, dtype=torch.float64, seed=2)
    x, _, _, y = inputs(9, (6, 5), torch.float64)
    got = layer.bce_loss(x, y, reduction="sum")
    want = sigmoid_linear_bce_loss(x, layer.W, layer.b, y, reduction="sum")
    assert torch.equal(got, want)
    torch.testing.assert_close(got, torch.nn.BCELoss(reduction="sum")(layer(x), y))


def test_inputs_are_not_modified_and_in_place_changes_are_caught():
    x, W, b, y = inputs(10, (6, 5), torch.float64, "T")
    W.requires_grad_()
    copies = [t.detach().clone() for t in (x, W, b, y)]
    loss = sigmoid_linear_bce_loss(x, W, b, y)
    loss.backward()
    for t, c in zip((x, W, b, y), copies, strict=True):
        assert torch.equal(t.detach(), c)
    loss = sigmoid_linear_bce_loss(x, W, b, y)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_bad_input_is_refused_with_a_clear_error():
    x, W, b, y = inputs(11, (6, 5), torch.float32)
    with pytest.raises(TypeError, match=r"target has dtype torch.float64 but x has torch.float32"):
        sigmoid_linear_bce_loss(x, W, b, y.double())
    with pytest.raises(ValueError, match=r"target has shape \(6, 3\), expected \(6, 4\)"):
        sigmoid_linear_bce_loss(x, W, b, y[:, :3])
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'none'"):
        sigmoid_linear_bce_loss(x, W, b, y, reduction="none")
    with pytest.raises(TypeError, match=r"target must be a torch\.Tensor, got ndarray"):
        sigmoid_linear_bce_loss(x, W, b, y.numpy())
    with pytest.raises(TypeError, match=r"target has dtype torch\.float16, which is not bfloat16"):
        sigmoid_linear_bce_loss(x, W, b, y.half())
    with pytest.raises(
        ValueError, match="x on cpu, target on meta: all must be on the CPU, or all on the meta"
    ):
        sigmoid_linear_bce_loss(x, W, b, y.to("meta"))
    with pytest.raises(ValueError, match="target requires grad"):
        sigmoid_linear_bce_loss(x, W, b, y.clone().requires_grad_())
    with pytest.raises(ValueError, match="b has shape"):  # the layer's checks come first
        sigmoid_linear_bce_loss(x, W, b[:3], y)
    # Class indices as targets: refused by value, naming target (the core's y), in the
    # eager path and in the operator alike (as torch.nn.BCELoss refuses them;
    # BCEWithLogitsLoss would give a number); so is a NaN label (a review, helper-88, saw
    # a NaN loss).
    for bad, shown in ((3.0, "3"), (float("nan"), "nan")):
        labels = y.clone()
        labels[1, 2] = bad
        for call in (
            lambda labels=labels: sigmoid_linear_bce_loss(x, W, b, labels),
            lambda labels=labels: torch.ops.siglayer.sigmoid_linear_bce(x, W, b, labels, "mean"),
        ):
            with pytest.raises(
                ValueError,
                match=r"^target has a value outside \[0, 1\] \(element 6 of the flattened "
                rf"target is {shown}\): binary cross-entropy takes targets in \[0, 1\]",
            ):
                call()
    with pytest.raises(TypeError, match=r"got torch\.bfloat16"):
        sigmoid_linear_bce_loss(x.bfloat16(), W.bfloat16(), b.bfloat16(), y.bfloat16())
    empty_x, empty_y = x[:0], y[:0]
    with pytest.raises(ValueError, match=r"mean loss of an empty output \(shape \(0, 4\)\)"):
        sigmoid_linear_bce_loss(empty_x, W, b, empty_y)
    W.requires_grad_()
    loss = sigmoid_linear_bce_loss(empty_x, W, b, empty_y, reduction="sum")
    assert loss.item() == 0.0 and not loss.signbit()  # +0, as BCELoss(reduction="sum")
    loss.backward()
    assert torch.equal(W.grad, torch.zeros_like(W))


@pytest.mark.parametrize("path", ["eager", "operator"])
def test_no_double_backward(path):
    fn = fused if path == "eager" else through_operator
    x, W, b, y = inputs(12, (6, 5), torch.float64)
    W.requires_grad_()
    loss = fn(x, W, b, y, "mean")
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(loss, W, create_graph=True)


def test_operator_refuses_a_target_that_requires_grad_at_backward():
    x, W, b, y = inputs(13, (6, 5), torch.float64)
    W.requires_grad_()
    loss = bce_op(x, W, b, y.requires_grad_(), "mean")[0]
    with pytest.raises(RuntimeError, match="does not differentiate with respect to target"):
        loss.backward()


def test_the_eager_path_is_taken_only_in_plain_eager_mode():
    x, W, b, y = inputs(14, (6, 5), torch.float64)
    W.requires_grad_()
    with PassThrough():  # a mode that changes nothing
        loss = sigmoid_linear_bce_loss(x, W, b, y)
    assert type(loss.grad_fn).__name__ != "_EagerBCEBackward"
    loss.backward()
    want = W.grad.clone()
    W.grad = None
    loss = sigmoid_linear_bce_loss(x, W, b, y)
    assert type(loss.grad_fn).__name__ == "_EagerBCEBackward"
    loss.backward()
    assert torch.equal(W.grad, want)
