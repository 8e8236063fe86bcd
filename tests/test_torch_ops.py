"""siglayer.torch as PyTorch operators: torch.library.opcheck on both operators,
torch.compile(fullgraph=True) with inductor and aot_eager against eager, torch.export."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
from siglayer.torch import SigmoidLinear, sigmoid_linear, sigmoid_linear_bce_loss  # noqa: E402

forward_op = torch.ops.siglayer.sigmoid_linear.default
backward_op = torch.ops.siglayer.sigmoid_linear_backward.default

DTYPES = {"float32": torch.float32, "float64": torch.float64}
SUBSETS = ["none", "x", "W", "b", "xW", "xb", "Wb", "xWb"]


def inputs(seed, shape_x, n_out, dtype, W_layout):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape_x, generator=g, dtype=dtype)
    n_in = shape_x[-1]
    if W_layout == "T":  # a transposed view: column-major (n_in, n_out)
        W = torch.randn(n_out, n_in, generator=g, dtype=dtype).T
    else:
        W = torch.randn(n_in, n_out, generator=g, dtype=dtype)
    b = torch.randn(n_out, generator=g, dtype=dtype)
    return x, W / n_in**0.5, b


@pytest.mark.parametrize("needs", SUBSETS)
@pytest.mark.parametrize("shape_x", [(6, 5), (2, 3, 5)], ids=["2d", "batched"])
@pytest.mark.parametrize("W_layout", ["C", "T"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_opcheck_forward(dtype, W_layout, shape_x, needs):
    x, W, b = inputs(0, shape_x, 4, dtype, W_layout)
    assert W.is_contiguous() == (W_layout == "C")
    args = tuple(t.requires_grad_(name in needs) for name, t in zip("xWb", (x, W, b), strict=True))
    # schema, autograd registration, fake kernel against the real one, AOT dispatch
    torch.library.opcheck(forward_op, args)


@pytest.mark.parametrize("need_dW", [True, False], ids=["dW", "no-dW"])
@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no-dx"])
@pytest.mark.parametrize("shape_x", [(6, 5), (2, 3, 5)], ids=["2d", "batched"])
@pytest.mark.parametrize("W_layout", ["C", "T"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_opcheck_backward(dtype, W_layout, shape_x, need_dx, need_dW):
    x, W, b = inputs(1, shape_x, 4, dtype, W_layout)
    out = forward_op(x, W, b)
    dout = torch.randn(out.shape, dtype=dtype, generator=torch.Generator().manual_seed(2))
    torch.library.opcheck(backward_op, (dout, x, W, out, need_dx, need_dW))
    dx, dW, db = backward_op(dout, x, W, out, need_dx, need_dW)
    assert dx.shape == (x.shape if need_dx else (0,))
    assert dW.shape == (W.shape if need_dW else (0,)) and db.shape == b.shape
    dZ = (dout * out * (1 - out)).reshape(-1, 4)
    torch.testing.assert_close(db, dZ.sum(0))
    if need_dW:
        torch.testing.assert_close(dW, x.reshape(-1, 5).T @ dZ)


FROZEN = [("", 3), ("W", 2), ("x", 2), ("xW", 1)]


def _grads_and_reference(fn, frozen):
    """fn's gradients of sum(out^2) for the inputs not in ``frozen``, and PyTorch's."""
    x, W, b = inputs(3, (8, 5), 4, torch.float64, "C")
    for name, t in zip("xWb", (x, W, b), strict=True):
        t.requires_grad_(name not in frozen)
    wanted = [t for t in (x, W, b) if t.requires_grad]
    grads = torch.autograd.grad(fn(x, W, b).square().sum(), wanted)
    plain = [t.detach().requires_grad_(t.requires_grad) for t in (x, W, b)]
    reference = torch.sigmoid(plain[0] @ plain[1] + plain[2]).square().sum()
    want = torch.autograd.grad(reference, [t for t in plain if t.requires_grad])
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize(("frozen", "products"), FROZEN, ids=["none", "W", "x", "xW"])
def test_inputs_that_need_no_gradient_cost_no_product(frozen, products):
    """A frozen W (requires_grad=False) skips dW's product, an x that needs no gradient
    dx's, counted by PyTorch's FLOP counter (which runs the operators); the gradients that
    are computed match PyTorch's."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _grads_and_reference(sigmoid_linear, frozen)
    # siglayer's products plus the reference's (forward, and one per gradient product)
    reference_products = 1 + sum(name not in frozen for name in "xW")
    assert counter.get_total_flops() == (products + reference_products) * 2 * 8 * 5 * 4


@pytest.mark.parametrize(("frozen", "products"), FROZEN, ids=["none", "W", "x", "xW"])
def test_a_compiled_graph_asks_only_for_the_gradients_it_needs(frozen, products):
    """In a compiled graph the backward operator is called with need_dx / need_dW from
    requires_grad (read off the backward graph AOTAutograd builds)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    calls = []

    def backward_compiler(gm, example_inputs):
        calls.extend(n.args for n in gm.graph.nodes if n.target is backward_op)
        return make_boxed_func(gm.forward)

    backend = aot_autograd(
        fw_compiler=lambda gm, _: make_boxed_func(gm.forward), bw_compiler=backward_compiler
    )
    torch._dynamo.reset()
    _grads_and_reference(torch.compile(sigmoid_linear, backend=backend, fullgraph=True), frozen)
    assert len(calls) == 1
    need_dx, need_dW = (*calls[0][4:], True)[:2]  # the graph leaves out a default argument
    assert (need_dx, need_dW) == ("x" not in frozen, "W" not in frozen)
    assert 1 + need_dx + need_dW == products


def test_the_operators_are_registered():
    assert str(forward_op._schema) == (
        "siglayer::sigmoid_linear(Tensor x, Tensor W, Tensor b) -> Tensor"
    )
    assert str(backward_op._schema) == (
        "siglayer::sigmoid_linear_backward(Tensor dout, Tensor x, Tensor W, Tensor out, "
        "bool need_dx, bool need_dW=True) -> (Tensor, Tensor, Tensor)"
    )


def network(dtype):
    layers = [SigmoidLinear(7, 6, dtype=dtype, seed=0), SigmoidLinear(6, 3, dtype=dtype, seed=1)]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            layer.b.copy_(torch.linspace(-1, 1, layer.n_out, dtype=dtype) * (i + 1))
    return torch.nn.Sequential(*layers)


def run(model, x, dout):
    """Output and the gradients of every parameter and of x."""
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.backward(dout)
    return [out.detach(), x.grad, *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_compile_fullgraph_matches_eager(backend, dtype):
    torch._dynamo.reset()
    model = network(dtype)
    g = torch.Generator().manual_seed(3)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    for shape in [(5, 7), (2, 4, 7)]:
        x = torch.randn(shape, generator=g, dtype=dtype)
        dout = torch.randn((*shape[:-1], 3), generator=g, dtype=dtype)
        want = run(model, x, dout)
        got = run(compiled, x, dout)
        # The same kernels run in both: the same numbers, bit for bit.
        for a, b in itertools.zip_longest(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def aot_graphs(model, *args):
    """The forward and backward graphs AOT autograd makes of model(*args).sum() (whole
    graph, no break), as text."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    compiled = torch.compile(
        model, fullgraph=True, backend=aot_autograd(fw_compiler=keep_graph, bw_compiler=keep_graph)
    )
    compiled(*args).sum().backward()
    return [str(gm.graph) for gm in graphs]


def test_compiled_graph_calls_the_operator():
    """aot_eager's forward and backward graphs hold siglayer's operators, nothing
    decomposed and no graph break."""
    model = network(torch.float64)
    forward_graph, backward_graph = aot_graphs(model, torch.rand(4, 7, dtype=torch.float64))
    assert forward_graph.count("siglayer.sigmoid_linear.default") == 2
    assert backward_graph.count("siglayer.sigmoid_linear_backward.default") == 2


def test_export_runs_and_matches():
    model = network(torch.float64)
    x = torch.rand(5, 7, dtype=torch.float64)
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    calls = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert calls == [forward_op, forward_op]
    module = exported.module()
    for rows in (5, 9):
        x = torch.rand(rows, 7, dtype=torch.float64)
        torch.testing.assert_close(module(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("grad_mode", ["no_grad", "grad"])
def test_jit_trace_records_the_operator(grad_mode):
    """torch.jit.trace (and the TorchScript ONNX exporter behind it) records the operator,
    never the eager path's result as a constant: a traced model follows new inputs."""
    model = network(torch.float64).eval()
    x_trace, x_new = (torch.rand(5, 7, dtype=torch.float64) for _ in range(2))
    mode = torch.no_grad() if grad_mode == "no_grad" else torch.enable_grad()
    with mode:
        traced = torch.jit.trace(model, x_trace, check_trace=False)
    assert str(traced.inlined_graph).count("siglayer::sigmoid_linear(") == 2
    torch.testing.assert_close(traced(x_new), model(x_new), rtol=0, atol=0)


def test_jit_script_of_the_module_runs_the_operator(tmp_path):
    """torch.jit.script of SigmoidLinear (alone and in a Sequential) compiles its forward
    to the operator: the eager results and gradients bitwise, after a save and load too,
    and a bad shape still names the argument."""
    model = network(torch.float64)
    scripted = torch.jit.script(model)
    assert str(scripted.inlined_graph).count("siglayer::sigmoid_linear(") == 2
    x = torch.rand(6, 7, dtype=torch.float64, requires_grad=True)
    want = model(x)
    (want_dx,) = torch.autograd.grad(want.sum(), x)
    torch.jit.save(scripted, tmp_path / "m.pt")
    for m in (scripted, torch.jit.load(tmp_path / "m.pt")):
        got = m(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        (dx,) = torch.autograd.grad(got.sum(), x)
        torch.testing.assert_close(dx, want_dx, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"x has shape \(6, 3\)"):
        scripted(torch.rand(6, 3, dtype=torch.float64))


def test_fx_symbolic_trace_records_the_functions():
    """torch.fx.symbolic_trace keeps sigmoid_linear (and the fused loss) as one call each,
    which the traced module runs with the same bits."""
    model = network(torch.float64)
    graph_module = torch.fx.symbolic_trace(model)
    calls = [n.target for n in graph_module.graph.nodes if n.op == "call_function"]
    assert calls == [sigmoid_linear, sigmoid_linear]
    x = torch.rand(5, 7, dtype=torch.float64)
    torch.testing.assert_close(graph_module(x), model(x), rtol=0, atol=0)
    layer = model[-1]

    class WithLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x, y):
            return self.layer.bce_loss(x, y)

    traced = torch.fx.symbolic_trace(WithLoss())
    assert [n.target for n in traced.graph.nodes if n.op == "call_function"] == [
        sigmoid_linear_bce_loss
    ]
    x, y = torch.rand(5, layer.n_in, dtype=torch.float64), torch.rand(5, layer.n_out).double()
    torch.testing.assert_close(traced(x, y), layer.bce_loss(x, y), rtol=0, atol=0)

    # Imported by name into the traced code's module (this one), which torch.fx.wrap does
    # not patch: still one call each.
    def f(x, W, b, y):
        return sigmoid_linear(x, W, b) * 2 + sigmoid_linear_bce_loss(x, W, b, y, reduction="sum")

    traced_f = torch.fx.symbolic_trace(f)
    calls = [n.target for n in traced_f.graph.nodes if n.op == "call_function"]
    assert sigmoid_linear in calls and sigmoid_linear_bce_loss in calls
    args = (x, layer.W.detach(), layer.b.detach(), y)
    torch.testing.assert_close(traced_f(*args), f(*args), rtol=0, atol=0)


def test_meta_tensors_give_shapes():
    """Tensors on the meta device (shape inference, a layer built under
    torch.device("meta")) run through the fake kernels, backward too; a mix of meta and
    CPU tensors is refused by name."""
    with torch.device("meta"):
        layer = SigmoidLinear(7, 3)
        x = torch.empty(2, 5, 7, requires_grad=True)
    out = layer(x)
    assert out.is_meta and out.shape == (2, 5, 3)
    out.sum().backward()
    assert x.grad.is_meta and x.grad.shape == x.shape and layer.W.grad.shape == (7, 3)
    loss = layer.bce_loss(x, torch.empty(2, 5, 3, device="meta"))
    assert loss.is_meta and loss.shape == ()
    with pytest.raises(ValueError, match=r"x on meta, W on cpu, b on cpu: all must be"):
        sigmoid_linear(x, torch.ones(7, 3), torch.ones(3))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_backward_operators_called_directly_name_a_bad_argument(device):
    """torch.ops.siglayer's backward operators check what autograd always gets right,
    in the CPU kernel and the fake one alike: a mismatched dout on the meta device gave
    shapes without a word, and an int32 x on the CPU NumPy's advice (x.astype)."""
    backward = torch.ops.siglayer.sigmoid_linear_backward
    from_dZ = torch.ops.siglayer.sigmoid_linear_backward_from_preactivation

    def t(*shape, dtype=torch.float32):
        return torch.rand(*shape, dtype=dtype).to(device)

    x, W, out = t(4, 5), t(5, 3), t(4, 3)
    cases = [
        (
            lambda: backward(t(7, 2), x, W, out, True),
            ValueError,
            r"^dout has shape \(7, 2\), expected \(4, 3\) from x \(4, 5\)",
        ),
        (lambda: backward(t(4, 3), x, W, t(4, 2), True), ValueError, r"^out has shape \(4, 2\)"),
        (
            lambda: backward(t(4, 3, dtype=torch.float64), x, W, out, True),
            TypeError,
            r"^dout has dtype torch\.float64, expected x's, torch\.float32",
        ),
        (
            lambda: backward(t(4, 3), x.int(), W, out, True),
            TypeError,
            r"^x has dtype torch\.int32.*x\.float\(\)",
        ),
        (
            lambda: backward(t(4, 3), x, W.double(), out, True),
            TypeError,
            r"^x and W must share one dtype",
        ),
        (
            lambda: backward(t(4, 3), t(4, 6), W, out, True),
            ValueError,
            r"^x has shape \(4, 6\), expected \(\.\.\., 5\)",
        ),
        (
            lambda: from_dZ(t(4, 2), x, W, True),
            ValueError,
            r"^dZ has shape \(4, 2\), expected \(4, 3\)",
        ),
        (lambda: from_dZ(t(4, 3).half(), x, W, True), TypeError, r"^dZ has dtype torch\.float16"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    dx, dW, db = backward(t(4, 3), x, W, out, True)  # and the right call runs
    assert (dx.shape, dW.shape, db.shape) == ((4, 5), (5, 3), (3,)) and dx.device.type == device


def test_compile_reports_bad_input():
    """The fake kernel checks its inputs as eager mode does; Dynamo wraps its ValueError
    in a RuntimeError that quotes it."""
    x, W, _ = inputs(4, (3, 5), 2, torch.float64, "C")
    bad_b = torch.zeros(3, dtype=torch.float64)
    compiled = torch.compile(sigmoid_linear, fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match=r"ValueError\('b has shape \(3,\), expected \(2,\)"):
        compiled(x, W, bad_b)
    with pytest.raises(ValueError, match=r"b has shape \(3,\), expected \(2,\)"):
        sigmoid_linear(x, W, bad_b)


# --- the eager path -------------------------------------------------------------------
# In plain eager mode sigmoid_linear runs the kernels through a private autograd.Function
# (siglayer.torch._Eager) instead of the operator, for speed; everything that watches
# operators gets the operator. Both must give the same bits.

EAGER_DTYPES = {**DTYPES, "bfloat16": torch.bfloat16, "bfloat16-b32": "bf16-b32"}


def through_operator(x, W, b):
    """The operator with its registered autograd, called directly."""
    return forward_op(x, W, b)


def grads_of(fn, x, W, b, needs, dout):
    args = [
        t.detach().clone().requires_grad_(name in needs)
        for name, t in zip("xWb", (x, W, b), strict=True)
    ]
    out = fn(*args)
    if out.requires_grad:
        out.backward(dout)
    return out, [a.grad for a in args], out.grad_fn


@pytest.mark.parametrize("needs", SUBSETS)
@pytest.mark.parametrize("shape_x", [(6, 5), (2, 3, 5)], ids=["2d", "batched"])
@pytest.mark.parametrize("W_layout", ["C", "T"])
@pytest.mark.parametrize("dtype", EAGER_DTYPES.values(), ids=EAGER_DTYPES.keys())
def test_eager_path_equals_the_operator_bitwise(dtype, W_layout, shape_x, needs):
    b_dtype = torch.float32 if dtype == "bf16-b32" else dtype
    dtype = torch.bfloat16 if dtype == "bf16-b32" else dtype
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    x, W, b = (
        t.to(d)
        for t, d in zip(
            inputs(5, shape_x, 4, torch.float64, W_layout), (dtype, dtype, b_dtype), strict=True
        )
    )
    dout = torch.randn((*shape_x[:-1], 4), generator=torch.Generator().manual_seed(6)).to(dtype)
    out_e, grads_e, fn_e = grads_of(sigmoid_linear, x, W, b, needs, dout)
    out_o, grads_o, fn_o = grads_of(through_operator, x, W, b, needs, dout)
    if needs == "none":
        assert fn_e is None and fn_o is None
    else:
        assert type(fn_e).__name__ == "_EagerBackward"
        assert type(fn_o).__name__ != "_EagerBackward"
    assert out_e.dtype == out_o.dtype == dtype
    assert torch.equal(out_e, out_o)
    for name, ge, go in zip("xWb", grads_e, grads_o, strict=True):
        assert (ge is None) == (go is None) == (name not in needs), name
        if ge is not None:
            assert ge.dtype == go.dtype and torch.equal(ge, go), name


def test_eager_path_resolves_lazy_negation():
    """A tensor with PyTorch's lazy negation bit (torch._neg_view; autograd makes such
    views) cannot be read as a NumPy array without resolving it: the eager path falls
    back to numpy(force=True) and computes with the negated values."""
    gen = torch.Generator().manual_seed(8)
    x0 = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    W0 = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    b = torch.randn(3, dtype=torch.float64, generator=gen)
    x, W = torch._neg_view(x0), torch._neg_view(W0).requires_grad_(True)
    assert x.is_neg() and W.is_neg()
    out = sigmoid_linear(x, W, b)
    assert type(out.grad_fn).__name__ == "_EagerBackward"
    want = torch.sigmoid(-x0 @ -W0 + b)
    assert torch.allclose(out, want, rtol=0, atol=1e-15)
    out.backward(torch.ones_like(out))
    dZ = want * (1 - want)
    assert torch.allclose(W.grad, (-x0).T @ dZ, rtol=0, atol=1e-14)


def test_eager_path_resolves_lazy_negation_in_bfloat16():
    """The same for bfloat16 tensors, which reach NumPy through an int16 view that a
    lazily negated tensor cannot take (a review found the eager path raising where the
    operator computed): the results are those of the negation made first, bit for bit."""
    pytest.importorskip("ml_dtypes")
    gen = torch.Generator().manual_seed(9)
    x0 = torch.randn(5, 4, generator=gen).bfloat16()
    W0 = torch.randn(4, 3, generator=gen).bfloat16()
    b = torch.randn(3, generator=gen)
    x, W = torch._neg_view(x0), torch._neg_view(W0).requires_grad_(True)
    assert x.is_neg() and W.is_neg()
    W_plain = (-W0).requires_grad_(True)
    out, want = sigmoid_linear(x, W, b), sigmoid_linear(-x0, W_plain, b)
    assert out.dtype == torch.bfloat16 and torch.equal(out, want)
    out.backward(torch.ones_like(out))
    want.backward(torch.ones_like(want))
    assert torch.equal(W.grad, W_plain.grad)


def test_eager_path_takes_tensors_left_over_from_a_functorch_transform():
    """A tensor that escaped torch.func.grad (a "dead" functorch wrapper) goes through
    autograd.Function.apply, which unwraps it, rather than the direct C++ apply: same
    values and gradients as the plain tensor."""
    leaked = []

    def f(W):
        leaked.append(W)
        return (W**2).sum()

    W0 = torch.randn(4, 3, dtype=torch.float64)
    torch.func.grad(f)(W0)
    dead = leaked[0]
    assert torch._C._functorch.is_functorch_wrapped_tensor(dead)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    b = torch.randn(3, dtype=torch.float64, generator=gen)
    results = []
    for W in (dead, W0):
        xg = x.clone().requires_grad_(True)
        out = sigmoid_linear(xg, W, b)
        assert type(out.grad_fn).__name__ == "_EagerBackward"
        out.backward(torch.ones_like(out))
        results.append((out.detach(), xg.grad))
    want = torch.sigmoid(x @ W0 + b)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.allclose(results[1][0], want, rtol=0, atol=1e-15)
    assert torch.equal(results[0][1], results[1][1])


class RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class PassThrough(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_dispatch_and_function_modes_see_the_operators():
    x, W, b = inputs(7, (6, 5), 4, torch.float64, "C")
    W.requires_grad_()
    with RecordOps() as mode:
        out = sigmoid_linear(x, W, b)
        out.sum().backward()
    assert "siglayer.sigmoid_linear.default" in mode.ops
    assert "siglayer.sigmoid_linear_backward.default" in mode.ops
    want = W.grad.clone()
    W.grad = None
    with PassThrough():  # a mode that changes nothing
        out = sigmoid_linear(x, W, b)
    assert type(out.grad_fn).__name__ != "_EagerBackward"
    out.sum().backward()
    assert torch.equal(W.grad, want)
    # Plain eager again: the fast path, the same gradient.
    W.grad = None
    out = sigmoid_linear(x, W, b)
    assert type(out.grad_fn).__name__ == "_EagerBackward"
    out.sum().backward()
    assert torch.equal(W.grad, want)


def test_eager_path_detects_in_place_changes_and_frees_its_arrays():
    import gc
    import weakref

    x, W, b = inputs(8, (6, 5), 4, torch.float64, "C")
    W.requires_grad_()
    out = sigmoid_linear(x, W, b)
    x.add_(1.0)  # after the forward, before the backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    # The graph (and the NumPy views it keeps) goes with the output.
    probe = sigmoid_linear(x, W, b)
    ref = weakref.ref(probe.grad_fn)
    del probe
    gc.collect()
    assert ref() is None


def test_eager_path_reads_what_saved_tensor_hooks_give_back():
    """Backward must use the tensors autograd hands back, so that saved-tensor hooks
    (torch.utils.checkpoint, save_on_cpu, offloading) work: here the hook keeps copies,
    the originals are then overwritten, and the gradients must still be those of the
    original values."""
    x, W, b = inputs(9, (6, 5), 4, torch.float64, "C")
    W.requires_grad_()
    want_out = sigmoid_linear(x, W, b)
    want_out.sum().backward()
    want = W.grad.clone()
    W.grad = None
    xx = x.clone()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
        out = sigmoid_linear(xx, W, b)
    assert type(out.grad_fn).__name__ == "_EagerBackward"
    xx.zero_()  # the hook's copy is what backward may read
    out.sum().backward()
    assert torch.equal(W.grad, want)
    # Non-reentrant checkpointing recomputes the forward from the hooks: same bits.
    W.grad = None
    layer = SigmoidLinear(5, 4, dtype=torch.float64, seed=3)
    ref = layer(x)
    ref.sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    ckpt = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
    assert torch.equal(ckpt, ref)
    ckpt.sum().backward()
    for p, g in zip(layer.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)
