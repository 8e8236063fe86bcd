"""siglayer.torch with torch.bfloat16: the operator and autograd against the float64
reference on the same bfloat16 inputs and against PyTorch's own bfloat16 layer, within the
bounds derived in bf16_bounds.py; the gradient dtypes and where they are rounded;
opcheck, torch.compile and torch.export; the dtype mixes that are refused."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")
import bf16_bounds as bb  # noqa: E402
import siglayer  # noqa: E402
from siglayer import _core, reference  # noqa: E402
from siglayer.torch import SigmoidLinear, sigmoid_linear  # noqa: E402

forward_op = torch.ops.siglayer.sigmoid_linear.default
backward_op = torch.ops.siglayer.sigmoid_linear_backward.default
BF16 = torch.bfloat16

# (shape of x, n_out): T, batched, a larger one (n = 512 rows to reduce over for dW).
SHAPES = {"T": ((32, 64), 32), "batched": ((4, 8, 64), 16), "L": ((512, 512), 256)}
SUBSETS = ["none", "x", "W", "b", "xW", "xb", "Wb", "xWb"]


def inputs(seed, shape_x, n_out, *, b_dtype=BF16, x_layout="C", W_layout="C"):
    """bfloat16 x, W, dout and b (bfloat16 or float32), rounded from float32 normals; x
    and W in the layout asked for (views of bfloat16 tensors, so the strides are kept)."""
    g = torch.Generator().manual_seed(seed)
    n_in = shape_x[-1]
    *lead, rows = shape_x[:-1] or (1,)
    if x_layout == "F":  # column-major rows: a transposed view
        x = torch.randn(*lead, n_in, rows, generator=g).to(BF16).transpose(-1, -2)
    elif x_layout == "strided":  # every other column of a wider array
        x = torch.randn(*lead, rows, 2 * n_in, generator=g).to(BF16)[..., ::2]
    else:
        x = torch.randn(*lead, rows, n_in, generator=g).to(BF16)
    x = x.reshape(shape_x) if x.dim() != len(shape_x) else x
    if W_layout == "T":
        W = (torch.randn(n_out, n_in, generator=g) / n_in**0.5).to(BF16).T
    else:
        W = (torch.randn(n_in, n_out, generator=g) / n_in**0.5).to(BF16)
    b = torch.randn(n_out, generator=g).to(b_dtype)
    dout = torch.randn(*shape_x[:-1], n_out, generator=g).to(BF16)
    assert x.is_contiguous() == (x_layout == "C") and W.is_contiguous() == (W_layout == "C")
    return x, W, b, dout


def as64(t):
    return t.detach().double().numpy()


def run(f, x, W, b, dout, needs="xWb"):
    """f's output and the gradients autograd gives the leaves in `needs`."""
    # detach: new leaves over the same memory, strides kept.
    leaves = [t.detach().requires_grad_(n in needs) for n, t in zip("xWb", (x, W, b), strict=True)]
    out = f(*leaves)
    if needs != "none":
        out.backward(dout)
    return out.detach(), *(t.grad for t in leaves)


def torch_layer(x, W, b):
    return torch.sigmoid(torch.nn.functional.linear(x, W.T, b))


@pytest.mark.parametrize("b_dtype", [BF16, torch.float32], ids=["b_bf16", "b_f32"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_float64_reference(shape, b_dtype):
    shape_x, n_out = SHAPES[shape]
    x, W, b, dout = inputs(0, shape_x, n_out, b_dtype=b_dtype)
    out, dx, dW, db = run(sigmoid_linear, x, W, b, dout)
    assert (out.dtype, dx.dtype, dW.dtype, db.dtype) == (BF16, BF16, BF16, b_dtype)
    assert out.shape == (*shape_x[:-1], n_out) and out.is_contiguous()
    x64, W64, b64, dout64, out64 = map(as64, (x, W, b, dout, out))
    want = reference.forward(x64, W64, b64)
    bb.assert_bf16_within(out, want, bb.forward_bound(x64, W64, b64, want), "out")
    # The backward against the reference on siglayer's own bfloat16 out (that isolates
    # the backward's rounding; out's own error is checked just above).
    want_grads = reference.backward(dout64, x64, W64, out64)
    bounds = bb.gradient_bounds(
        dout64, x64, W64, out64, dW_rounded=True, db_rounded=b_dtype == BF16
    )
    for name, got, want_g, bound in zip(
        ("dx", "dW", "db"), (dx, dW, db), want_grads, bounds, strict=True
    ):
        bb.assert_bf16_within(got, want_g, bound, name)
    # Norm-wise, the roundings of dZ average out (bf16_bounds.py): within 2 U of max |ref|
    # on these seeded problems (measured: under 1 U).
    for name, got, want_g in zip(("dx", "dW"), (dx, dW), want_grads[:2], strict=True):
        assert bb.normwise(got, want_g) <= 2 * bb.U, name


@pytest.mark.parametrize("shape", ["T", "batched", "L"])
def test_matches_pytorchs_own_bfloat16_layer(shape):
    """torch.sigmoid(F.linear(x, W.T, b)) in bfloat16, forward and backward: each of the
    two within its bound of the float64 reference, so they are within the sum of the two
    (and, for the gradients, of how far their two outs set the exact gradients apart)."""
    shape_x, n_out = SHAPES[shape]
    x, W, b, dout = inputs(1, shape_x, n_out)
    ours = run(sigmoid_linear, x, W, b, dout)
    theirs = run(torch_layer, x, W, b, dout)
    for a, c in zip(ours, theirs, strict=True):
        assert a.dtype == c.dtype == BF16 and a.shape == c.shape
    x64, W64, b64, dout64 = map(as64, (x, W, b, dout))
    want = reference.forward(x64, W64, b64)
    ours_out, theirs_out = as64(ours[0]), as64(theirs[0])
    our_bound = bb.forward_bound(x64, W64, b64, want)
    their_bound = bb.forward_bound(x64, W64, b64, want, z_rounded=True)
    bb.assert_bf16_within(theirs[0], want, their_bound, "PyTorch's out")
    bb.assert_bf16_within(ours[0], theirs_out, our_bound + their_bound, "out against PyTorch")
    our_bounds = bb.gradient_bounds(dout64, x64, W64, ours_out, dW_rounded=True, db_rounded=True)
    their_bounds = bb.gradient_bounds(
        dout64, x64, W64, theirs_out, dW_rounded=True, db_rounded=True, dZ_rounded_for_db=True
    )
    apart = bb.out_difference_bounds(dout64, x64, W64, ours_out, theirs_out)
    their_want = reference.backward(dout64, x64, W64, theirs_out)
    for k, name in enumerate(("dx", "dW", "db")):
        bb.assert_bf16_within(theirs[k + 1], their_want[k], their_bounds[k], f"PyTorch's {name}")
        bound = our_bounds[k] + their_bounds[k] + apart[k]
        bb.assert_bf16_within(ours[k + 1], as64(theirs[k + 1]), bound, f"{name} against PyTorch")


LAYOUTS = [("C", "C"), ("F", "C"), ("strided", "T"), ("C", "T")]


@pytest.mark.parametrize("x_layout, W_layout", LAYOUTS, ids=["-".join(p) for p in LAYOUTS])
@pytest.mark.parametrize("shape_x", [(24, 40), (3, 8, 40)], ids=["2d", "batched"])
def test_layouts_give_the_contiguous_results(shape_x, x_layout, W_layout):
    """Strided tensors are read through their strides: the same bits as contiguous copies."""
    x, W, b, dout = inputs(2, shape_x, 12, x_layout=x_layout, W_layout=W_layout)
    got = run(sigmoid_linear, x, W, b, dout)
    want = run(sigmoid_linear, x.contiguous(), W.contiguous(), b, dout)
    for a, c in zip(got, want, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_tensors_reach_the_core_without_a_copy():
    from siglayer.torch import _to_numpy

    x, W, _, _ = inputs(3, (6, 10), 4, x_layout="strided", W_layout="T")
    for t in (x, W):
        a = _to_numpy(t)
        assert a.dtype == ml_dtypes.bfloat16
        assert a.ctypes.data == t.data_ptr() and a.strides == tuple(2 * s for s in t.stride())
        np.testing.assert_array_equal(a.astype(np.float32), t.float().numpy())


@pytest.mark.parametrize("b_dtype", [BF16, torch.float32], ids=["b_bf16", "b_f32"])
@pytest.mark.parametrize("needs", SUBSETS)
def test_requires_grad_subsets(needs, b_dtype):
    """Only the leaves that require grad get one, each in its own dtype, and each the
    same bits as when all three require grad."""
    x, W, b, dout = inputs(4, (2, 5, 16), 6, b_dtype=b_dtype)
    out, *grads = run(sigmoid_linear, x, W, b, dout, needs)
    _, *all_grads = run(sigmoid_linear, x, W, b, dout)
    for name, grad, full, leaf in zip("xWb", grads, all_grads, (x, W, b), strict=True):
        if name in needs:
            assert grad.dtype == leaf.dtype and grad.shape == leaf.shape
            torch.testing.assert_close(grad, full, rtol=0, atol=0)
        else:
            assert grad is None
    assert out.requires_grad is False and out.dtype == BF16


@pytest.mark.parametrize(
    ("shape_x", "n_out"),
    [((40, 24), 10), ((3, 8, 64), 16), ((512, 256), 600), ((2000, 64), 4)],
    ids=["small", "batched", "wide", "few-outputs"],
)
@pytest.mark.parametrize("b_dtype", [BF16, torch.float32], ids=["b_bf16", "b_f32"])
def test_gradients_are_the_operators_rounded_once(b_dtype, shape_x, n_out):
    """The backward operator returns the core's float32 dW and db; the gradients are
    those rounded to nearest even once: bit for bit the core's to_bfloat16 (with a
    bfloat16 b the eager path asks the core to round them as it writes them; with a
    float32 b autograd rounds dW). A float32 b's gradient is the operator's db itself."""
    x, W, b, dout = inputs(5, shape_x, n_out, b_dtype=b_dtype)
    out, dx, dW, db = run(sigmoid_linear, x, W, b, dout)
    op_dx, op_dW, op_db = backward_op(dout, x, W, out, True)
    assert (op_dx.dtype, op_dW.dtype, op_db.dtype) == (BF16, torch.float32, torch.float32)
    torch.testing.assert_close(dx, op_dx, rtol=0, atol=0)

    def core_rounded(t):
        bits = _core.to_bfloat16(np.ascontiguousarray(t.numpy())).view(np.int16)
        return torch.from_numpy(bits.copy())

    assert torch.equal(dW.view(torch.int16), core_rounded(op_dW))
    if b_dtype == BF16:
        assert torch.equal(db.view(torch.int16), core_rounded(op_db))
    else:
        assert torch.equal(db, op_db)
    # And the operator's float32 results are siglayer.backward's on the same arrays.
    arrays = [t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) for t in (dout, x, W, out)]
    want = siglayer.backward(*arrays)
    for got, w in zip((op_dW, op_db), want[1:], strict=True):
        np.testing.assert_array_equal(got.numpy(), w)


def test_module_in_bfloat16():
    layer = SigmoidLinear(7, 3, dtype=BF16, seed=0)
    assert layer.W.dtype == layer.b.dtype == BF16
    float32_W = torch.from_numpy(siglayer.SigmoidLayer(7, 3, seed=0, dtype=np.float32).W)
    assert torch.equal(layer.W.detach(), float32_W.to(BF16))
    x = torch.randn(4, 7).to(BF16)
    out = layer(x)
    assert out.dtype == BF16
    out.sum().backward()
    assert layer.W.grad.dtype == layer.b.grad.dtype == BF16
    linear = torch.nn.Linear(7, 3, dtype=BF16)
    from_linear = SigmoidLinear.from_linear(linear)
    assert torch.equal(from_linear.W.detach(), linear.weight.detach().T)
    assert torch.equal(from_linear.b.detach(), linear.bias.detach())


BAD_MIXES = [
    # (x, W, b dtypes) -> message
    (
        (BF16, torch.float32, torch.float32),
        "got x torch.bfloat16, W torch.float32, b torch.float32",
    ),
    ((torch.float32, BF16, BF16), "got x torch.float32, W torch.bfloat16, b torch.bfloat16"),
    (
        (torch.float32, torch.float32, BF16),
        "got x torch.float32, W torch.float32, b torch.bfloat16",
    ),
    ((BF16, BF16, torch.float64), "got x torch.bfloat16, W torch.bfloat16, b torch.float64"),
    ((torch.float64, torch.float64, torch.float32), "got x torch.float64, W torch.float64, b"),
]


@pytest.mark.parametrize(
    "dtypes, message", BAD_MIXES, ids=["-".join(str(d)[6:] for d in m[0]) for m in BAD_MIXES]
)
def test_bad_dtype_mixes_are_refused(dtypes, message):
    x, W, b, _ = inputs(6, (3, 4), 2)
    x, W, b = (t.to(d) for t, d in zip((x, W, b), dtypes, strict=True))
    with pytest.raises(TypeError, match=r"x, W and b must share one dtype; " + message):
        sigmoid_linear(x, W, b)


@pytest.mark.parametrize("name", ["x", "W", "b"])
def test_float16_is_not_bfloat16(name):
    args = dict(zip("xWb", inputs(7, (3, 4), 2)[:3], strict=True))
    args[name] = args[name].to(torch.float16)
    with pytest.raises(TypeError, match=rf"{name} has dtype torch.float16, which is not bfloat16"):
        sigmoid_linear(**args)
    with pytest.raises(TypeError, match="float16"):
        SigmoidLinear(4, 2, dtype=torch.float16)


def test_missing_ml_dtypes_is_a_clear_import_error():
    # A finder that refuses ml_dtypes, as an environment without it would.
    code = (
        "import sys\n"
        "class NoMlDtypes:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'ml_dtypes':\n"
        "            raise ModuleNotFoundError(\"No module named 'ml_dtypes'\")\n"
        "sys.meta_path.insert(0, NoMlDtypes())\n"
        "import torch\n"
        "from siglayer.torch import sigmoid_linear\n"
        "x = torch.zeros(2, 3); W = torch.zeros(3, 1); b = torch.zeros(1)\n"
        "print(sigmoid_linear(x, W, b).sum().item())\n"  # float32 needs no ml_dtypes
        "try:\n"
        "    sigmoid_linear(x.bfloat16(), W.bfloat16(), b)\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "1.0"
    assert "ImportError: bfloat16 needs the ml-dtypes package" in result.stdout
    assert "pip install ml-dtypes" in result.stdout


# ---- torch.library.opcheck, torch.compile, torch.export


@pytest.mark.parametrize("b_dtype", [BF16, torch.float32], ids=["b_bf16", "b_f32"])
@pytest.mark.parametrize("needs", ["none", "x", "W", "xWb"])
@pytest.mark.parametrize("layout", ["C", "T"])
@pytest.mark.parametrize("shape_x", [(6, 5), (2, 3, 5)], ids=["2d", "batched"])
def test_opcheck_forward(shape_x, layout, needs, b_dtype):
    x, W, b, _ = inputs(8, shape_x, 4, b_dtype=b_dtype, W_layout=layout)
    args = tuple(t.requires_grad_(n in needs) for n, t in zip("xWb", (x, W, b), strict=True))
    # The same kernels run on every path opcheck compares, so the results agree bit for
    # bit: no tolerance at all (its default for bfloat16 would be rtol 1.6e-2).
    torch.library.opcheck(forward_op, args, rtol=0, atol=0)


@pytest.mark.parametrize("need_dW", [True, False], ids=["dW", "no-dW"])
@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no-dx"])
@pytest.mark.parametrize("layout", ["C", "T"])
@pytest.mark.parametrize("shape_x", [(6, 5), (2, 3, 5)], ids=["2d", "batched"])
def test_opcheck_backward(shape_x, layout, need_dx, need_dW):
    x, W, b, _ = inputs(9, shape_x, 4, W_layout=layout)
    out = forward_op(x, W, b)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(10)).to(BF16)
    # opcheck's fake-tensor test compares the real kernel's dtypes with the fake one's:
    # dW's empty stand-in (need_dW=False) was bfloat16 against float32 (a review's find).
    torch.library.opcheck(backward_op, (dout, x, W, out, need_dx, need_dW), rtol=0, atol=0)
    dx, dW, db = backward_op(dout, x, W, out, need_dx, need_dW)
    assert dx.shape == (x.shape if need_dx else (0,)) and dx.dtype == BF16
    assert dW.shape == (W.shape if need_dW else (0,)) and db.shape == b.shape
    assert dW.dtype == db.dtype == torch.float32


@pytest.mark.parametrize("need_dW", [True, False], ids=["dW", "no-dW"])
@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no-dx"])
@pytest.mark.parametrize("shape_x", [(6, 5), (2, 3, 5)], ids=["2d", "batched"])
def test_backward_from_preactivation_operator(shape_x, need_dx, need_dW):
    """The operator on bfloat16 tensors gives the NumPy function's results bit for bit
    (tests/test_bfloat16.py checks those against the float64 reference): dx bfloat16, dW
    and db float32. Its kernel failed in NumPy's conversion of a bfloat16 dx, naming no
    argument (a review's find)."""
    x, W, _, dZ = inputs(11, shape_x, 4)
    op = torch.ops.siglayer.sigmoid_linear_backward_from_preactivation.default
    torch.library.opcheck(op, (dZ, x, W, need_dx, need_dW), rtol=0, atol=0)
    dx, dW, db = op(dZ, x, W, need_dx, need_dW)
    assert (dx.dtype, dW.dtype, db.dtype) == (BF16, torch.float32, torch.float32)
    want = siglayer.backward_from_preactivation(
        *(t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) for t in (dZ, x, W)),
        need_dx=need_dx,
        need_dW=need_dW,
    )
    if need_dx:
        assert np.array_equal(dx.view(torch.int16).numpy(), want[0].view(np.int16))
    else:
        assert dx.shape == (0,)
    if need_dW:
        assert np.array_equal(dW.numpy(), want[1])
    else:
        assert dW.shape == (0,)
    assert np.array_equal(db.numpy(), want[2])


def test_fake_kernels_give_the_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, W = torch.empty(5, 3, dtype=BF16), torch.empty(3, 2, dtype=BF16)
        for b_dtype in (BF16, torch.float32):
            out = forward_op(x, W, torch.empty(2, dtype=b_dtype))
            assert out.dtype == BF16 and out.shape == (5, 2) and out.is_contiguous()
        dx, dW, db = backward_op(out, x, W, out, True)
        assert (dx.dtype, dW.dtype, db.dtype) == (BF16, torch.float32, torch.float32)
        assert dx.stride() == (3, 1) and dW.stride() == (2, 1) and db.stride() == (1,)


def network(b_dtype=BF16):
    layers = [SigmoidLinear(7, 6, dtype=BF16, seed=0), SigmoidLinear(6, 3, dtype=BF16, seed=1)]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            b = torch.linspace(-1, 1, layer.n_out) * (i + 1)
            layer.b = torch.nn.Parameter(b.to(b_dtype))
    return torch.nn.Sequential(*layers)


def run_model(model, x, dout):
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.backward(dout)
    return [out.detach(), x.grad, *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("b_dtype", [BF16, torch.float32], ids=["b_bf16", "b_f32"])
@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_compile_fullgraph_matches_eager(backend, b_dtype):
    torch._dynamo.reset()
    model = network(b_dtype)
    g = torch.Generator().manual_seed(11)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    for shape in [(5, 7), (2, 4, 7)]:
        x = torch.randn(shape, generator=g).to(BF16)
        dout = torch.randn((*shape[:-1], 3), generator=g).to(BF16)
        want = run_model(model, x, dout)
        got = run_model(compiled, x, dout)
        assert [t.dtype for t in got] == [BF16, BF16, BF16, b_dtype, BF16, b_dtype]
        # The same kernels and the same one rounding of dW: the same bits.
        for a, c in itertools.zip_longest(got, want):
            torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_export_runs_and_matches():
    model = network()
    x = torch.rand(5, 7).to(BF16)
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    calls = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert calls == [forward_op, forward_op]
    module = exported.module()
    for rows in (5, 9):
        x = torch.rand(rows, 7).to(BF16)
        torch.testing.assert_close(module(x), model(x), rtol=0, atol=0)


def test_training_run_learns_like_pytorchs_bfloat16_layer():
    """Sixty Adam steps of a two-layer bfloat16 network, with SigmoidLinear and with
    nn.Linear + nn.Sigmoid from the same weights. The runs round differently, so their
    trajectories part by a few bfloat16 ulps: both must learn (the loss falls by a third)
    and end within 0.02 of each other (the loss moves by ~0.2 over the run)."""
    torch.manual_seed(0)
    reference_net = torch.nn.Sequential(
        torch.nn.Linear(10, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 3), torch.nn.Sigmoid()
    ).to(BF16)
    net = torch.nn.Sequential(
        SigmoidLinear.from_linear(reference_net[0]), SigmoidLinear.from_linear(reference_net[2])
    )
    x = torch.rand(64, 10).to(BF16)
    y = (x[:, :3] > 0.5).to(BF16)
    losses = []
    for model in (net, reference_net):
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        record = []
        for _ in range(60):
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy(model(x).float(), y.float())
            loss.backward()
            optimizer.step()
            record.append(loss.item())
        losses.append(record)
    ours, theirs = losses
    assert ours[-1] < ours[0] * 2 / 3 and theirs[-1] < theirs[0] * 2 / 3
    assert abs(ours[-1] - theirs[-1]) < 0.02, (ours[-1], theirs[-1])
