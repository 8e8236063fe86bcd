"""siglayer.torch: gradcheck, agreement with nn.Linear + torch.sigmoid (values, gradients,
a training run), requires-grad subsets, layouts, and every unsupported input."""

from __future__ import annotations

import math

import numpy as np
import pytest

import siglayer

torch = pytest.importorskip("torch")
from siglayer.torch import SigmoidLinear, sigmoid_linear, sigmoid_linear_bce_loss  # noqa: E402


def tensors(seed, shape_x=(6, 5), n_out=4, dtype=torch.float64, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape_x, generator=g, dtype=dtype)
    W = torch.randn(shape_x[-1], n_out, generator=g, dtype=dtype) / shape_x[-1] ** 0.5
    b = torch.randn(n_out, generator=g, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (x, W, b)]


@pytest.mark.parametrize(
    "shape_x", [(6, 5), (2, 3, 5), (5,), (0, 5)], ids=["2d", "3d", "1d", "empty"]
)
def test_gradcheck_float64(shape_x):
    x, W, b = tensors(0, shape_x)
    assert torch.autograd.gradcheck(sigmoid_linear, (x, W, b))


def test_gradcheck_non_contiguous_inputs():
    x = tensors(1, (5, 8))[0]
    # A transposed x, a column-strided W and a strided b: read through their strides.
    xt = x.detach().T.contiguous().T.requires_grad_()
    Wt = torch.randn(8, 8, dtype=torch.float64)[:, ::2].requires_grad_()
    bt = torch.randn(8, dtype=torch.float64)[::2].requires_grad_()
    assert not (xt.is_contiguous() or Wt.is_contiguous() or bt.is_contiguous())
    assert torch.autograd.gradcheck(sigmoid_linear, (xt, Wt, bt))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_matches_linear_and_sigmoid(dtype):
    x, W, b = tensors(2, (33, 17), 9, dtype)
    linear = torch.nn.Linear(17, 9, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(W.T)
        linear.bias.copy_(b)
    x2 = x.detach().clone().requires_grad_()
    out = sigmoid_linear(x, W, b)
    want = torch.sigmoid(linear(x2))
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    torch.testing.assert_close(out, want, **tol)
    grad = torch.randn(33, 9, dtype=dtype, generator=torch.Generator().manual_seed(3))
    out.backward(grad)
    want.backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, **tol)
    torch.testing.assert_close(W.grad, linear.weight.grad.T, **tol)
    torch.testing.assert_close(b.grad, linear.bias.grad, **tol)


def test_training_run_matches_linear_and_sigmoid():
    """Forty Adam steps of a two-layer network, once with SigmoidLinear, once with
    nn.Linear + nn.Sigmoid from the same weights: the same losses and weights."""
    torch.manual_seed(0)
    reference_net = torch.nn.Sequential(
        torch.nn.Linear(10, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 3), torch.nn.Sigmoid()
    )
    net = torch.nn.Sequential(
        SigmoidLinear.from_linear(reference_net[0]), SigmoidLinear.from_linear(reference_net[2])
    )
    x = torch.rand(64, 10)
    y = (x[:, :3] > 0.5).float()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    ref_opt = torch.optim.Adam(reference_net.parameters(), lr=0.05)
    losses, ref_losses = [], []
    for _ in range(40):
        for model, optimizer, record in ((net, opt, losses), (reference_net, ref_opt, ref_losses)):
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            record.append(loss.item())
    assert ref_losses[-1] < 0.5 * ref_losses[0]  # it did train
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    torch.testing.assert_close(net[0].W, reference_net[0].weight.T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net[1].b, reference_net[2].bias, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("needs", ["x", "W", "b", "xW", "none"])
def test_requires_grad_subsets(needs):
    x, W, b = tensors(4, requires_grad=False)
    for name, t in zip("xWb", (x, W, b), strict=True):
        t.requires_grad_(name in needs)
    out = sigmoid_linear(x, W, b)
    if needs == "none":
        assert not out.requires_grad and out.grad_fn is None
        return
    out.sum().backward()  # an expanded (stride 0) upstream gradient
    dZ = (out * (1 - out)).detach()
    want = {"x": dZ @ W.detach().T, "W": x.detach().T @ dZ, "b": dZ.sum(0)}
    for name, t in zip("xWb", (x, W, b), strict=True):
        if name in needs:
            torch.testing.assert_close(t.grad, want[name], rtol=1e-12, atol=1e-14)
        else:
            assert t.grad is None


def test_no_grad_and_inference_mode():
    x, W, b = tensors(5)
    with torch.no_grad():
        assert sigmoid_linear(x, W, b).grad_fn is None
    with torch.inference_mode():
        out = sigmoid_linear(x.detach(), W.detach(), b.detach())
    torch.testing.assert_close(out, torch.sigmoid(x @ W + b).detach())


def test_in_place_change_before_backward_is_detected():
    x, W, b = tensors(6)
    out = sigmoid_linear(x, W, b)
    out.mul_(2)  # backward needs the original out
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_double_backward_is_refused():
    x, W, b = tensors(7)
    out = sigmoid_linear(x, W, b)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            {"x": torch.zeros(6, 5, dtype=torch.float64, device="meta")},
            ValueError,
            "x on meta, W on cpu, b on cpu: all must be on the CPU, or all on the meta",
        ),
        ({"W": torch.zeros(5, 4, dtype=torch.float16)}, TypeError, "W has dtype torch.float16"),
        (
            {"x": torch.zeros(6, 5, dtype=torch.bfloat16)},
            TypeError,
            "must share one dtype; got x torch.bfloat16, W torch.float64",
        ),
        ({"b": torch.zeros(4, dtype=torch.int64)}, TypeError, "b has dtype torch.int64"),
        (
            {"x": torch.zeros(6, 5, dtype=torch.float32)},
            TypeError,
            "must share one dtype; got x torch.float32, W torch.float64",
        ),
        (
            {"x": torch.zeros(6, 5, dtype=torch.float64).to_sparse()},
            TypeError,
            "x has layout torch.sparse_coo",
        ),
        ({"x": np.zeros((6, 5))}, TypeError, "x must be a torch.Tensor, got ndarray"),
        (
            {"x": torch.zeros(6, 7, dtype=torch.float64)},
            ValueError,
            r"x has shape \(6, 7\), expected \(..., 5\) for W of shape \(5, 4\) \(n_in, n_out\)$",
        ),
        (
            {"W": torch.zeros(4, 5, dtype=torch.float64)},
            ValueError,
            r"expected \(..., 4\) for W of shape \(4, 5\) \(n_in, n_out\); pass W\.T if it is "
            r"a torch\.nn\.Linear's weight, \(out_features, in_features\)$",
        ),
        ({"b": torch.zeros(3, dtype=torch.float64)}, ValueError, r"b has shape \(3,\)"),
        ({"W": torch.zeros(5, dtype=torch.float64)}, ValueError, "W must be 2-D"),
    ],
    ids=[
        "device",
        "float16",
        "bfloat16",
        "int",
        "mixed",
        "sparse",
        "numpy",
        "x-shape",
        "W-linear-layout",
        "b-shape",
        "W-1d",
    ],
)
def test_unsupported_inputs(change, error, match):
    x, W, b = tensors(8)
    args = {"x": x, "W": W, "b": b, **change}
    with pytest.raises(error, match=match):
        sigmoid_linear(args["x"], args["W"], args["b"])


@pytest.mark.parametrize("width", [3, 2], ids=["n_out-wide", "other"])
@pytest.mark.parametrize("call", ["forward", "bce_loss"])
def test_layer_names_a_wrong_width_of_x_in_its_own_words(width, call):
    """From the module W is its own: an x as wide as n_out gets no advice to pass W.T (a
    review found the function's hint there), but the layer's n_in, as SigmoidLayer says."""
    layer = SigmoidLinear(5, 3, seed=0)
    x = torch.zeros(4, width)
    expected = rf"^x has shape \(4, {width}\), expected \(\.\.\., 5\) for a layer with n_in=5$"
    with pytest.raises(ValueError, match=expected):
        if call == "forward":
            layer(x)
        else:
            layer.bce_loss(x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"target has shape \(4, 2\)"):  # other errors pass
        layer.bce_loss(torch.zeros(4, 5), torch.zeros(4, 2))


def test_layer_leaves_other_errors_as_they_are():
    """Only the width error gets the layer's words: an x on another device whose width is
    also wrong is named by its device, as the function names it (a review's find), and a
    misaligned target of the fused loss is called target (the core calls it y)."""
    layer = SigmoidLinear(5, 3, seed=0)
    with pytest.raises(ValueError, match=r"^x on meta, W on cpu"):
        layer(torch.randn(4, 6, device="meta"))
    raw = torch.frombuffer(bytearray(4 * 12 + 1), dtype=torch.float32, offset=1, count=12)
    target = raw.reshape(4, 3)
    target.fill_(0.5)
    with pytest.raises(ValueError, match=r"^target is not aligned .* pass target\.clone\(\)"):
        layer.bce_loss(torch.rand(4, 5), target)
    want = layer.bce_loss(
        torch.rand(4, 5, generator=torch.Generator().manual_seed(0)), target.clone()
    )
    assert torch.isfinite(want)


def _misaligned(*shape: int) -> torch.Tensor:
    """A float32 tensor starting one byte into its buffer (torch.frombuffer at an odd
    offset): aligned to nothing, filled with 0.25."""
    count = math.prod(shape)
    raw = torch.frombuffer(bytearray(4 * count + 1), dtype=torch.float32, offset=1, count=count)
    assert raw.data_ptr() % 4 != 0
    return raw.reshape(shape).fill_(0.25)


@pytest.mark.parametrize(
    ("path", "where"),
    [(p, w) for p in ("function", "operator", "loss") for w in ("x", "W", "b")]
    + [("operator", "dout")],
)
def test_misaligned_tensors_get_torch_advice(where, path):
    """A misaligned tensor is refused with torch's remedy, .clone() (the core's words are
    NumPy's, .copy(), which a tensor does not have), naming the argument, in every path;
    the clone then computes."""
    args = {
        "x": torch.full((4, 5), 0.5),
        "W": torch.full((5, 3), 0.1),
        "b": torch.zeros(3),
        "dout": torch.ones(4, 3),
    }
    shapes = {"x": (4, 5), "W": (5, 3), "b": (3,), "dout": (4, 3)}
    args[where] = _misaligned(*shapes[where])

    def run(a):
        if path == "loss":
            return sigmoid_linear_bce_loss(a["x"], a["W"], a["b"], torch.full((4, 3), 0.5))
        if where == "dout":
            out = torch.ops.siglayer.sigmoid_linear(a["x"], a["W"], a["b"])
            return torch.ops.siglayer.sigmoid_linear_backward(a["dout"], a["x"], a["W"], out, True)
        if path == "operator":
            return torch.ops.siglayer.sigmoid_linear(a["x"], a["W"], a["b"])
        return sigmoid_linear(a["x"], a["W"], a["b"])

    with pytest.raises(ValueError, match=rf"^{where} is not aligned .* pass {where}\.clone\(\)"):
        run(args)
    args[where] = args[where].clone()
    result = run(args)
    first = result[0] if isinstance(result, tuple) else result
    assert torch.isfinite(first).all()


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
@pytest.mark.parametrize("where", ["x", "W", "b", "layer", "target"])
def test_nested_tensors_are_refused(where):
    """A nested tensor of the strided layout passes a layout check but has no one shape (a
    review found PyTorch's internal error "NestedTensorImpl doesn't support sizes" instead
    of siglayer's TypeError)."""
    from siglayer.torch import sigmoid_linear_bce_loss

    x, W, b = tensors(8)
    nested = torch.nested.nested_tensor(
        [torch.ones(2, 5, dtype=torch.float64), torch.ones(3, 5, dtype=torch.float64)]
    )
    name = "target" if where == "target" else "x" if where == "layer" else where
    with pytest.raises(TypeError, match=rf"^{name} is a nested tensor"):
        if where == "layer":
            SigmoidLinear(5, 4, dtype=torch.float64)(nested)
        elif where == "target":
            sigmoid_linear_bce_loss(x, W, b, nested)
        else:
            args = {"x": x, "W": W, "b": b, where: nested}
            sigmoid_linear(args["x"], args["W"], args["b"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_is_refused():
    x, W, b = tensors(9)
    with pytest.raises(ValueError, match="on cuda"):
        sigmoid_linear(x.cuda(), W, b)


def test_module():
    layer = SigmoidLinear(7, 3, seed=0)
    np.testing.assert_array_equal(layer.W.detach().numpy(), siglayer.SigmoidLayer(7, 3, seed=0).W)
    assert layer.W.shape == (7, 3) and layer.b.shape == (3,)
    assert [n for n, _ in layer.named_parameters()] == ["W", "b"]
    assert "W: (n_in, n_out)" in repr(layer)
    torch.manual_seed(1)
    a = SigmoidLinear(7, 3, dtype=torch.float64)
    torch.manual_seed(1)
    b = SigmoidLinear(7, 3, dtype=torch.float64)
    torch.testing.assert_close(a.W, b.W, rtol=0, atol=0)
    assert a.W.abs().max() <= (6 / 10) ** 0.5
    x = torch.rand(4, 7, dtype=torch.float64)
    torch.testing.assert_close(a(x), torch.sigmoid(x @ a.W + a.b))
    linear = torch.nn.Linear(7, 3, bias=False)
    from_linear = SigmoidLinear.from_linear(linear)
    torch.testing.assert_close(from_linear.W, linear.weight.T)
    # A bias-free Linear gives a layer without b, bias-free under training even after
    # requires_grad_(True) (a zero b that required no grad came back to life there); a
    # frozen weight stays frozen.
    assert from_linear.b is None and [n for n, _ in from_linear.named_parameters()] == ["W"]
    assert from_linear.W.requires_grad and "bias=False" in repr(from_linear)
    x7 = torch.rand(4, 7)
    from_linear.requires_grad_(True)
    optimizer = torch.optim.SGD(from_linear.parameters(), lr=1.0)
    for _ in range(3):
        optimizer.zero_grad()
        from_linear(x7).sum().backward()
        optimizer.step()
    torch.testing.assert_close(from_linear(x7), torch.sigmoid(x7 @ from_linear.W))
    linear.weight.requires_grad_(False)
    assert not SigmoidLinear.from_linear(linear).W.requires_grad
    # A frozen bias stays frozen too, and gets no gradient, as in the Linear (a mutation
    # that made every converted b trainable went unseen: helper-83).
    with_bias = torch.nn.Linear(4, 3)
    with_bias.bias.requires_grad_(False)
    converted = SigmoidLinear.from_linear(with_bias)
    assert converted.W.requires_grad and not converted.b.requires_grad
    x4 = torch.rand(5, 4)
    torch.sigmoid(with_bias(x4)).sum().backward()
    converted(x4).sum().backward()
    assert with_bias.bias.grad is None and converted.b.grad is None
    torch.testing.assert_close(converted.W.grad, with_bias.weight.grad.T)
    with pytest.raises(
        TypeError, match=r"dtype must be torch\.float32, torch\.float64 or torch\.bfloat16"
    ):
        SigmoidLinear(3, 2, dtype=torch.float16)
    # Sizes as SigmoidLayer takes them: any integer (a NumPy one too), never a bool.
    assert SigmoidLinear(np.int64(3), np.int32(2), seed=0).W.shape == (3, 2)
    with pytest.raises(TypeError, match="n_in must be an int, got bool"):
        SigmoidLinear(True, 2)
    with pytest.raises(ValueError, match="n_out must be >= 1, got 0"):
        SigmoidLinear(3, 0)
    # torch.nn.Linear's keywords: named in the errors as given, one name for each size
    with pytest.raises(ValueError, match="out_features must be >= 1, got 0"):
        SigmoidLinear(in_features=3, out_features=0)
    with pytest.raises(TypeError, match="in_features must be an int, got float"):
        SigmoidLinear(in_features=3.0, out_features=2)
    with pytest.raises(TypeError, match=r"both n_in=3 and in_features=4 \(torch\.nn\.Line"):
        SigmoidLinear(3, 2, in_features=4)
    with pytest.raises(TypeError, match=r"needs n_out \(or out_features, torch\.nn\.Line"):
        SigmoidLinear(in_features=3)
    with pytest.raises(TypeError, match=r"needs n_in \(or in_features"):
        SigmoidLinear()
    # After .half() every parameter is float16: the error names them all and the
    # module's fix (it named x alone, whose .float() then failed on W).
    half = SigmoidLinear(3, 2, seed=0).half()
    for x in (torch.ones(2, 3, dtype=torch.float16), torch.ones(2, 3)):
        names = "x, W and b" if x.dtype == torch.float16 else "W and b"
        with pytest.raises(TypeError, match=rf"^{names} have dtype torch\.float16.*module\.fl"):
            half(x)
        with pytest.raises(TypeError, match=rf"^{names} have dtype torch\.float16.*module\.fl"):
            half.bce_loss(x, torch.ones(2, 2, dtype=x.dtype))
    with pytest.raises(ValueError, match="n_out must be >= 1"):
        SigmoidLinear(3, 0)
    with pytest.raises(TypeError, match=r"linear must be a torch\.nn\.Linear"):
        SigmoidLinear.from_linear(torch.nn.Conv1d(1, 1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_module_takes_linears_arguments_and_state(dtype):
    """nn.Linear's constructor arguments (bias, device, dtype; in_features/out_features)
    and its state dict: a review found bias=/device= refused, torch.nn.utils.skip_init
    failing, and a Linear's state dict loading nothing under strict=False. Oracle:
    torch.sigmoid(linear(x)) of the same Linear."""
    torch.manual_seed(0)
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    x = torch.rand(5, 6, dtype=dtype)
    for bias in (True, False):
        linear = torch.nn.Linear(6, 4, bias=bias, dtype=dtype)
        layer = SigmoidLinear(6, 4, bias, dtype=dtype, device="cpu")
        assert (layer.in_features, layer.out_features) == (6, 4)
        assert (layer.b is None) == (not bias)
        assert set(layer.state_dict()) == ({"W", "b"} if bias else {"W"})
        assert layer.load_state_dict(linear.state_dict()) is not None  # strict: all keys
        torch.testing.assert_close(layer(x), torch.sigmoid(linear(x)), **tol)
        torch.testing.assert_close(layer.W, linear.weight.T, rtol=0, atol=0)
        # from the layer's own state as before, and inside a bigger module's state
        twin = SigmoidLinear(6, 4, bias, dtype=dtype)
        twin.load_state_dict(layer.state_dict())
        assert torch.equal(twin(x), layer(x))
        net = torch.nn.Sequential(SigmoidLinear(6, 4, bias, dtype=dtype))
        net.load_state_dict(torch.nn.Sequential(linear).state_dict())
        torch.testing.assert_close(net(x), torch.sigmoid(linear(x)), **tol)
        x_grad = x.clone().requires_grad_(True)
        layer(x_grad).sum().backward()
        assert layer.W.grad is not None and (layer.b is None or layer.b.grad is not None)
        if dtype != torch.bfloat16:  # the fused loss is float32/float64 only
            want = torch.nn.functional.binary_cross_entropy(layer(x), torch.ones(5, 4, dtype=dtype))
            torch.testing.assert_close(layer.bce_loss(x, torch.ones(5, 4, dtype=dtype)), want)
    no_bias = SigmoidLinear(6, 4, bias=False, dtype=dtype)
    torch.testing.assert_close(no_bias(x), torch.sigmoid(x @ no_bias.W), **tol)
    # nn.Linear's keywords, as a swapped-in constructor call writes them
    named = SigmoidLinear(in_features=6, out_features=4, bias=False, dtype=dtype, seed=1)
    assert (named.n_in, named.n_out, named.b) == (6, 4, None)
    assert torch.equal(named.W, SigmoidLinear(6, 4, False, dtype=dtype, seed=1).W)
    assert SigmoidLinear(6, out_features=4, dtype=dtype).W.shape == (6, 4)
    if dtype != torch.bfloat16:
        assert no_bias.double()(x.double()).dtype == torch.float64  # the zero follows .to
    with pytest.raises(RuntimeError, match=r"Unexpected key.*bias"):
        no_bias.load_state_dict(torch.nn.Linear(6, 4, dtype=dtype).state_dict())
    # A Linear of other sizes: the error names the checkpoint's key and shape, not W's.
    with pytest.raises(
        RuntimeError,
        match=r"size mismatch for 0\.weight: a torch\.nn\.Linear weight of shape \(2, 3\) in "
        r"the checkpoint, but this layer is SigmoidLinear\(6, 4\), which takes \(4, 6\), "
        r"\(out_features, in_features\)\n\s*size mismatch for 0\.bias: a "
        r"torch\.nn\.Linear bias of shape \(2,\) in the checkpoint, but this layer is "
        r"SigmoidLinear\(6, 4\), which takes \(4,\)$",
    ):
        torch.nn.Sequential(SigmoidLinear(6, 4, dtype=dtype)).load_state_dict(
            torch.nn.Sequential(torch.nn.Linear(3, 2, dtype=dtype)).state_dict()
        )
    # device: the meta device works as with torch.device("meta"); skip_init needs it
    meta = SigmoidLinear(6, 4, device="meta", dtype=dtype)
    assert meta.W.is_meta and meta.b is not None and meta.b.is_meta
    assert torch.nn.utils.skip_init(SigmoidLinear, 6, 4, dtype=dtype).W.shape == (6, 4)
    from_meta = SigmoidLinear.from_linear(torch.nn.Linear(6, 4, device="meta", dtype=dtype))
    assert from_meta.W.is_meta and from_meta.W.shape == (6, 4)
    for bad in ("cuda", "cuda:0", torch.device("cuda"), "nonsense"):
        with pytest.raises(ValueError, match="device must be 'cpu' or 'meta'"):
            SigmoidLinear(6, 4, device=bad)
    with pytest.raises(TypeError, match="bias must be True or False, got str"):
        SigmoidLinear(6, 4, "no")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_from_linear_leaves_the_global_generator_alone(dtype, bias):
    """Converting a Linear draws nothing: the layers created after it get the values they
    would get beside the Linear (an audit saw a converted network differ from its
    nn.Linear twin by 0.47, through the next layer's initialisation)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16, bias=bias, dtype=dtype)
    expected = torch.rand(5)
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16, bias=bias, dtype=dtype)
    layer = SigmoidLinear.from_linear(linear)
    assert torch.equal(torch.rand(5), expected)
    assert layer.W.dtype == dtype and torch.equal(layer.W.detach(), linear.weight.detach().T)
    assert (layer.b is None) == (not bias)
    if bias:
        assert torch.equal(layer.b.detach(), linear.bias.detach())
    assert layer.W.requires_grad and layer.W.device.type == "cpu"


def test_from_linear_keeps_what_a_subclass_sets_up():
    """A subclass's buffers, parameters and tensor hooks made in __init__ survive the
    conversion (a first fix, built on the meta device then to_empty, wiped them)."""

    class Scaled(SigmoidLinear):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_buffer("scale", torch.full((3,), 2.0))
            self.calls = 0
            self.W.register_hook(self._count)

        def _count(self, grad):
            self.calls += 1
            return grad

        def forward(self, x):
            return super().forward(x) * self.scale

    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 3)
    expected = torch.rand(2)
    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 3)
    layer = Scaled.from_linear(linear)
    assert torch.equal(torch.rand(2), expected)  # the generator untouched
    assert type(layer) is Scaled and torch.equal(layer.scale, torch.full((3,), 2.0))
    x = torch.rand(4, 5)
    out = layer(x)
    torch.testing.assert_close(out, 2.0 * torch.sigmoid(linear(x)))
    out.sum().backward()
    assert layer.calls == 1


def test_from_linear_names_the_linear_in_its_errors():
    with pytest.raises(TypeError, match=r"linear has dtype torch\.float16.*linear\.float\(\)"):
        SigmoidLinear.from_linear(torch.nn.Linear(3, 2, dtype=torch.float16))


def test_a_bias_free_module_scripts_and_compiles():
    layer = SigmoidLinear(6, 4, bias=False, seed=0)
    x = torch.rand(3, 6)
    want = torch.sigmoid(x @ layer.W)
    torch.testing.assert_close(torch.jit.script(layer)(x), want)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), want)


def test_module_follows_torch_defaults():
    """As torch.nn.Linear: dtype=None takes torch's default dtype; inside
    torch.device("meta") the parameters are meta (no memory), and reset_parameters() after
    to_empty() gives what the constructor gives (the same bits with a seed); a layer
    pickled without a seed attribute still resets."""
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        model = torch.nn.Sequential(torch.nn.Linear(8, 4), SigmoidLinear(4, 3))
        assert model[1].W.dtype == model[1].b.dtype == torch.float64
        x = torch.rand(2, 8)
        torch.testing.assert_close(model(x), torch.sigmoid(model[0](x) @ model[1].W))
        torch.set_default_dtype(torch.float16)
        with pytest.raises(TypeError, match=r"torch\.get_default_dtype\(\), torch\.float16"):
            SigmoidLinear(3, 2)
    finally:
        torch.set_default_dtype(before)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        with torch.device("meta"):
            lazy = SigmoidLinear(7, 3, dtype=dtype, seed=4)
        assert lazy.W.is_meta and lazy.b.is_meta
        lazy.to_empty(device="cpu")
        lazy.reset_parameters()
        eager = SigmoidLinear(7, 3, dtype=dtype, seed=4)
        assert torch.equal(lazy.W, eager.W) and torch.equal(lazy.b, eager.b)
        assert lazy.W.dtype == dtype
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        SigmoidLinear(3, 2, seed=-1)
    old = SigmoidLinear(3, 2)
    del old._seed  # as unpickled from a version that did not keep it
    torch.manual_seed(0)
    old.reset_parameters()
    torch.manual_seed(0)
    assert torch.equal(old.W, SigmoidLinear(3, 2).W)


def test_frozen_layer_gradients_as_shapes_and_dtypes_change():
    """The eager path reuses its last stand-in for an unsaved x while (dtype, shape) stay
    the same: steps that change batch size, leading dimensions or dtype get dx right."""
    g = torch.Generator().manual_seed(0)
    for shape, dtype in [
        ((4, 5), torch.float32),
        ((4, 5), torch.float32),
        ((6, 5), torch.float32),
        ((2, 3, 5), torch.float32),
        ((6, 5), torch.float64),
        ((4, 5), torch.float32),
    ]:
        W = torch.randn(5, 3, generator=g, dtype=dtype)  # frozen: x is not saved
        b = torch.randn(3, generator=g, dtype=dtype)
        x = torch.randn(*shape, generator=g, dtype=dtype, requires_grad=True)
        weights = torch.randn(*shape[:-1], 3, generator=g, dtype=dtype)
        (sigmoid_linear(x, W, b) * weights).sum().backward()
        got, x.grad = x.grad, None
        (torch.sigmoid(x @ W + b) * weights).sum().backward()
        tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
        torch.testing.assert_close(got, x.grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("frozen", ["W", "x"])
@pytest.mark.parametrize("fused", [False, True], ids=["layer", "fused-loss"])
@pytest.mark.parametrize("path", ["eager", "operator", "compiled"])
# Dynamo reads .grad of each input tensor while it builds the graph (x * 1.0 is not a leaf)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_saves_only_what_the_gradients_read(dtype, frozen, fused, path):
    """As nn.Linear: x is kept only for dW. A frozen W keeps no activation alive, and an
    x changed in place after the forward (a residual h += layer(h)) is no error when no
    gradient reads it; one that is read is still caught. A review found the layer
    saving x always (more memory when fine-tuning, and an error PyTorch does not raise),
    and a second one the operators' own autograd kernels still doing so (direct calls,
    compiled and exported graphs). W, a parameter, is always kept."""
    if path == "compiled" and dtype == torch.float64:
        pytest.skip("one dtype is enough for the compiled graph (its compile is slow)")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, dtype=dtype, requires_grad=frozen == "W")
    W = torch.randn(5, 3, generator=g, dtype=dtype, requires_grad=frozen == "x")
    b = torch.randn(3, generator=g, dtype=dtype, requires_grad=True)
    y = torch.rand(6, 3, generator=g, dtype=dtype).round()
    saved: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    def call(a: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        if path == "operator":  # the operators' autograd kernels, as a graph calls them
            if fused:
                return torch.ops.siglayer.sigmoid_linear_bce(a, W, b, y, "sum")[0]
            return (torch.ops.siglayer.sigmoid_linear(a, W, b) * y).sum()
        if fused:
            return sigmoid_linear_bce_loss(a, W, b, y, reduction="sum")
        return (sigmoid_linear(a, W, b) * y).sum()

    # (aot_eager: the partitioner decides what a compiled graph saves, as with inductor)
    run = torch.compile(call, fullgraph=True, backend="aot_eager") if path == "compiled" else call

    def oracle(a: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        out = torch.sigmoid(a @ W + b)
        if fused:
            return torch.nn.functional.binary_cross_entropy(out, y, reduction="sum")
        return (out * y).sum()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(x * 1.0, W)
    # x (6, 5) is saved only when W is trained.
    assert ((6, 5) in saved) == (frozen == "x") and (5, 3) in saved
    h = x * 1.0  # (without hooks: those skip autograd's version check)
    loss = run(h, W)
    h.add_(1.0)  # in place, after the forward: read by dW only
    if frozen == "x":  # W trains: dW reads x, changed since
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
        return
    loss.backward()
    leaf = x
    got = [leaf.grad, b.grad]
    leaf.grad, b.grad = None, None
    oracle(x * 1.0, W).backward()
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for a, e in zip(got, [leaf.grad, b.grad], strict=True):
        torch.testing.assert_close(a, e, **tol)
