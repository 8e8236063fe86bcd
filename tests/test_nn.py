"""SigmoidLayer and Sequential: initialisation, forward/backward against the reference and
finite differences, buffer reuse (no allocation in steady state), errors, save/load."""

from __future__ import annotations

import copy
import gc
import importlib.util
import itertools
import math
import pickle
import tracemalloc

import numpy as np
import pytest

import siglayer
from conftest import DTYPES, EPS, assert_within, product_bound
from siglayer import reference
from siglayer.losses import BCELoss, MSELoss, OutputGradient, bce_loss, mse_loss

DTYPE_IDS = [np.dtype(d).name for d in DTYPES]


def out_bound(x: np.ndarray, W: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """sigma' <= 1/4 scales the error of x @ W + b; sigma itself adds a few ulp of out."""
    n_in = W.shape[0]
    x2 = np.abs(x.reshape(-1, n_in))
    z = product_bound(x2, np.abs(W), n_in + 1, x.dtype) + 2 * EPS[x.dtype] * np.abs(b)
    return 0.25 * z.reshape(out.shape) + 4 * EPS[x.dtype] * np.abs(out)


# ---------------------------------------------------------------- initialisation


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_glorot_uniform_init(dtype):
    layer = siglayer.SigmoidLayer(300, 200, dtype=dtype, seed=7)
    limit = math.sqrt(6 / 500)
    assert layer.W.shape == (300, 200) and layer.b.shape == (200,)
    assert layer.W.dtype == layer.b.dtype == layer.dW.dtype == layer.db.dtype == np.dtype(dtype)
    assert np.abs(layer.W).max() <= limit
    # U(-a, a) has mean 0 and variance a^2/3; with 60000 draws both sit within 5 standard
    # errors (the variance's sampling variance is 4 a^4 / 45 / N).
    n = layer.W.size
    assert abs(layer.W.mean()) < 5 * limit / math.sqrt(3 * n)
    assert abs(layer.W.var() - limit**2 / 3) < 5 * limit**2 * math.sqrt(4 / 45 / n)
    np.testing.assert_array_equal(layer.b, 0)
    np.testing.assert_array_equal(layer.dW, 0)
    np.testing.assert_array_equal(layer.db, 0)
    assert all(a.flags.writeable and a.flags.c_contiguous for a in (layer.W, layer.b))


def test_seed_reproducible():
    a = siglayer.SigmoidLayer(5, 4, seed=3)
    b = siglayer.SigmoidLayer(5, 4, seed=3)
    c = siglayer.SigmoidLayer(5, 4, seed=4)
    np.testing.assert_array_equal(a.W, b.W)
    assert not np.array_equal(a.W, c.W)
    # A Generator is accepted; float64 W is the float64 draw that float32 W rounds.
    w64 = siglayer.SigmoidLayer(5, 4, dtype=np.float64, seed=np.random.default_rng(3)).W
    np.testing.assert_array_equal(w64.astype(np.float32), a.W)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0, 3), {}, ValueError, "n_in must be >= 1"),
        ((3, -1), {}, ValueError, "n_out must be >= 1"),
        ((2.5, 3), {}, TypeError, "n_in must be an int"),
        ((True, 3), {}, TypeError, "n_in must be an int"),
        ((2, 3), {"dtype": np.float16}, TypeError, "float32, float64 or bfloat16"),
        ((2, 3), {"dtype": np.int32}, TypeError, "float32, float64 or bfloat16"),
        ((2, 3), {"dtype": "nonsense"}, TypeError, "float32, float64 or bfloat16"),
        ((2, 3), {"seed": "abc"}, TypeError, "seed must be"),
    ],
)
def test_bad_construction(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        siglayer.SigmoidLayer(*args, **kwargs)


def test_dtype_none_is_the_default_float32():
    """dtype=None means the default, as in torch (np.dtype(None) is float64: a review found
    SigmoidLayer(3, 2, dtype=None) silently built a float64 layer)."""
    layer = siglayer.SigmoidLayer(3, 2, dtype=None, seed=0)
    assert layer.dtype == np.float32 and layer.W.dtype == np.float32
    np.testing.assert_array_equal(layer.W, siglayer.SigmoidLayer(3, 2, seed=0).W)


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_a_failed_save_names_the_users_file(tmp_path, where):
    """save writes a temporary file beside the target, then renames it: an error names
    the target the user gave, not the temporary name (a review saw '...npz.tmp-<pid>'),
    whether opening the temporary file fails or renaming it over a folder does (a later
    review saw 'Is a directory: '<dir>.tmp-<pid>' -> '<dir>'')."""
    if where == "a folder":
        target = tmp_path / "net.npz"
        target.mkdir()
        error: type[OSError] = IsADirectoryError
    else:
        target = tmp_path / "missing" / "net.npz"
        error = FileNotFoundError
    with pytest.raises(error) as caught:
        siglayer.SigmoidLayer(3, 2, seed=0).save(target)
    assert caught.value.filename == str(target)
    assert "tmp-" not in str(caught.value)
    assert not list(tmp_path.rglob("*tmp-*"))


def test_a_layer_too_big_for_the_blas_is_refused_before_drawing_w():
    """n_in = 2^31 (2^32 float64 draws, 32 GiB) gave a MemoryError; now the ValueError
    every call on such a layer would give, first."""
    for args, name in (((2**31, 2), "n_in"), ((2, 2**31), "n_out")):
        with pytest.raises(ValueError, match=rf"{name} = 2147483648 exceeds the BLAS integer"):
            siglayer.SigmoidLayer(*args)


def test_save_and_load_name_what_is_not_a_parameter(tmp_path):
    """A plain array (or a network instead of its parameters) gives a TypeError naming
    the argument; nothing is written (a review found an AttributeError on .name)."""
    net = siglayer.Sequential(siglayer.SigmoidLayer(3, 2, seed=0))
    path = tmp_path / "p.npz"
    for save_or_load in (siglayer.save_parameters, siglayer.load_parameters):
        with pytest.raises(
            TypeError, match=r"parameters\[1\] must be a siglayer\.Parameter.*ndarray"
        ):
            save_or_load([net.parameters()[0], np.zeros(3)], path)
        with pytest.raises(TypeError, match=r"pass sequential\.parameters\(\)"):
            save_or_load(net, path)  # type: ignore[arg-type]
    assert not path.exists()
    siglayer.save_parameters(net.parameters(), path)
    W = net[0].W.copy()
    net[0].W[...] = 0
    siglayer.load_parameters(net.parameters(), path)
    np.testing.assert_array_equal(net[0].W, W)


def test_parameters_cannot_be_rebound_but_change_in_place():
    layer = siglayer.SigmoidLayer(3, 2, dtype=np.float64, seed=0)
    W = layer.W
    for name in ("W", "b", "dW", "db"):
        before = getattr(layer, name).copy()
        with pytest.raises(AttributeError, match="in place"):
            setattr(layer, name, np.zeros_like(before))
        with pytest.raises(AttributeError, match="cannot be rebound"):
            setattr(layer, name, 3.0)
        np.testing.assert_array_equal(getattr(layer, name), before)  # nothing changed
    layer.W[...] = 0
    layer.b[...] = 1
    assert layer.W is W
    np.testing.assert_array_equal(layer(np.ones((2, 3))), reference.sigmoid(np.ones((2, 2))))


PLAIN = {
    "+=": np.add,
    "-=": np.subtract,
    "*=": np.multiply,
    "/=": np.true_divide,
    "//=": np.floor_divide,
    "%=": np.mod,
    "**=": np.power,
}


@pytest.mark.parametrize("name", ["W", "b", "dW", "db"])
@pytest.mark.parametrize("op", list(PLAIN))
def test_in_place_operators_apply_exactly_once(rng, name, op):
    """``layer.W -= lr * layer.dW`` (and every other augmented assignment on a parameter or
    a gradient) changes the array once, keeps it the same object and raises nothing: the
    statement is run through Python's own augmented assignment, property setter included."""
    layer = siglayer.SigmoidLayer(4, 3, dtype=np.float64, seed=0)
    layer(rng.random((5, 4)))
    layer.backward(rng.standard_normal((5, 3)))
    for a in (layer.W, layer.b, layer.dW, layer.db):
        a[...] = rng.random(a.shape) + 0.5  # positive, so that ** and // are defined
    held = getattr(layer, name)
    operand = rng.random(held.shape) + 0.5
    want = PLAIN[op](held, operand)
    namespace = {"layer": layer, "operand": operand}
    exec(f"layer.{name} {op} operand", namespace)  # the user's statement, verbatim
    assert getattr(layer, name) is held
    np.testing.assert_array_equal(held, want)
    # The same through a Parameter, as in `for p in net.parameters(): p.value -= ...`.
    param = next(p for p in layer.parameters() if name in (p.name, "d" + p.name))
    attr = "value" if name == param.name else "grad"
    want = PLAIN[op](held, operand)
    exec(f"param.{attr} {op} operand", {"param": param, "operand": operand})
    assert getattr(param, attr) is held
    np.testing.assert_array_equal(held, want)


def test_parameter_unpacks_and_refuses_rebinding():
    layer = siglayer.SigmoidLayer(3, 2, seed=0)
    name, value, grad = layer.parameters()[0]
    assert name == "W" and value is layer.W and grad is layer.dW
    p = layer.parameters()[1]
    with pytest.raises(AttributeError, match="cannot be rebound"):
        p.value = np.zeros(2, np.float32)
    with pytest.raises(AttributeError):
        p.name = "c"  # type: ignore[misc]
    assert repr(p) == "Parameter(name='b', shape=(2,), dtype=float32)"


def test_fresh_output_per_call(rng):
    """``preds = [net(xb) for xb in batches]`` keeps every batch's result (it used to return
    the same buffer N times, all holding the last batch); likewise dx from backward."""
    net = siglayer.Sequential(
        siglayer.SigmoidLayer(6, 5, dtype=np.float64, seed=0),
        siglayer.SigmoidLayer(5, 3, dtype=np.float64, seed=1),
    )
    batches = [rng.standard_normal((4, 6)) for _ in range(3)]
    preds = [net(xb) for xb in batches]
    for xb, pred in zip(batches, preds, strict=True):
        want = siglayer.forward(siglayer.forward(xb, net[0].W, net[0].b), net[1].W, net[1].b)
        np.testing.assert_array_equal(pred, want)
    layer = net[0]
    dxs = []
    for xb in batches:
        layer(xb)
        dxs.append(layer.backward(np.ones((4, 5))))
    for xb, dx in zip(batches, dxs, strict=True):
        out = siglayer.forward(xb, layer.W, layer.b)
        np.testing.assert_array_equal(dx, siglayer.backward(np.ones((4, 5)), xb, layer.W, out)[0])


def test_out_and_dx_buffers(rng):
    layer = siglayer.SigmoidLayer(4, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((5, 4))
    out = np.empty((5, 3))
    assert layer(x, out=out) is out
    np.testing.assert_array_equal(out, siglayer.forward(x, layer.W, layer.b))
    dx = np.empty((5, 4))
    assert layer.backward(np.ones((5, 3)), dx=dx) is dx
    np.testing.assert_array_equal(dx, siglayer.backward(np.ones((5, 3)), x, layer.W, out)[0])
    with pytest.raises(ValueError, match="out"):
        layer(x, out=np.empty((5, 4)))
    with pytest.raises(ValueError, match="dx"):
        layer.backward(np.ones((5, 3)), need_dx=False, dx=dx)


# ---------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape_x", [(17, 12), (4, 3, 12), (12,)], ids=["2d", "3d", "1d"])
def test_layer_matches_reference(rng, dtype, shape_x):
    layer = siglayer.SigmoidLayer(12, 5, dtype=dtype, seed=1)
    layer.b[...] = rng.standard_normal(5)
    x = rng.standard_normal(shape_x).astype(dtype)
    x_before = x.copy()
    out = layer(x)
    want = reference.forward(x, layer.W, layer.b)
    assert_within(out, want, out_bound(x, layer.W, layer.b, out), "out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = layer.backward(dout)
    want_dx, want_dW, want_db = reference.backward(dout, x, layer.W, out)
    rows = math.prod(shape_x[:-1])
    dZ = np.abs((dout * out * (1 - out)).reshape(rows, 5))
    x2 = np.abs(x.reshape(rows, 12))
    assert_within(layer.dW, want_dW, product_bound(x2.T, dZ, rows, dtype), "dW")
    assert_within(layer.db, want_db, product_bound(np.ones((1, rows)), dZ, rows, dtype)[0], "db")
    assert_within(
        dx, want_dx, product_bound(dZ, np.abs(layer.W).T, 5, dtype).reshape(x.shape), "dx"
    )
    np.testing.assert_array_equal(x, x_before)


def test_backward_from_preactivation_and_need_dx(rng):
    layer = siglayer.SigmoidLayer(6, 4, dtype=np.float64, seed=2)
    x = rng.standard_normal((9, 6))
    layer(x)
    dZ = rng.standard_normal((9, 4))
    assert layer.backward_from_preactivation(dZ, need_dx=False) is None
    np.testing.assert_allclose(layer.dW, x.T @ dZ, rtol=1e-13)
    np.testing.assert_allclose(layer.db, dZ.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(layer.backward_from_preactivation(dZ), dZ @ layer.W.T, rtol=1e-13)
    np.testing.assert_allclose(layer.preactivation(), x @ layer.W + layer.b, rtol=1e-15)
    layer.dW[...] = 99
    assert layer.backward(np.ones((9, 4)), need_dx=False) is None
    assert not (layer.dW == 99).any()  # overwritten, not accumulated


def test_buffers_are_reused_and_overwritten(rng):
    """The opt-in contract of reuse_buffers=True: one output buffer per input shape."""
    layer = siglayer.SigmoidLayer(4, 3, dtype=np.float64, seed=0, reuse_buffers=True)
    x1, x2 = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    out1 = layer(x1)
    kept = out1.copy()
    out2 = layer(x2)
    assert out2.base is out1.base  # same buffer (read-only views of it) ...
    assert not np.array_equal(out1, kept)  # ... so the earlier result is overwritten
    # Bitwise against the functional API (the same kernels): the NumPy reference may round
    # differently in the last bit with another BLAS (MKL).
    second = siglayer.forward(x2, layer.W, layer.b)
    np.testing.assert_array_equal(out1, second)
    short = layer(x1[:2])  # another batch size: another buffer, the first untouched
    assert not np.shares_memory(short, out1)
    np.testing.assert_array_equal(out1, second)
    assert layer(x1).base is out1.base
    dx1 = layer.backward(np.ones((5, 3)))
    assert layer.backward(np.ones((5, 3))) is dx1


@pytest.mark.parametrize("reuse_buffers", [False, True])
def test_output_kept_for_backward_is_read_only(rng, reuse_buffers):
    """The layer's backward reads the out it returned: changing it in place (out -= y,
    np.clip(..., out=out)) raises instead of silently changing dW; a copy is free to
    change, and the gradients stay those of the forward. A buffer the caller passes
    is returned as it is."""
    layer = siglayer.SigmoidLayer(4, 3, dtype=np.float64, seed=0, reuse_buffers=reuse_buffers)
    x = rng.standard_normal((8, 4))
    out = layer(x)
    with pytest.raises(ValueError, match="read-only"):
        out -= 1.0
    with pytest.raises(ValueError, match="read-only"):
        np.clip(out, 0.1, 0.9, out=out)
    changed = out.copy()
    changed -= 1.0
    dout = rng.standard_normal((8, 3))
    layer.backward(dout)
    want = reference.backward(dout, x, layer.W, reference.forward(x, layer.W, layer.b))
    np.testing.assert_allclose(layer.dW, want[1], rtol=1e-12, atol=1e-14)
    buf = np.empty((8, 3))
    assert layer(x, out=buf) is buf and buf.flags.writeable
    # A copy of the layer shows its own results (not a copy of the view it was given).
    layer(x)
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        x2 = rng.standard_normal((8, 4))
        got = twin(x2)
        np.testing.assert_array_equal(got, siglayer.forward(x2, twin.W, twin.b))
        assert not got.flags.writeable


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_network_and_optimizer_pickle_with_every_protocol(rng, protocol):
    """A network (one layer reusing its buffers) and its optimizer, pickled together
    mid-training with any protocol (0 and 1 refused classes with __slots__): the copy's
    optimizer updates the copy's own arrays, and training continues bitwise as the
    original's does."""
    net = siglayer.Sequential(
        siglayer.SigmoidLayer(3, 4, seed=0), siglayer.SigmoidLayer(4, 2, seed=1, reuse_buffers=True)
    )
    opt = siglayer.optim.Adam(net.parameters(), lr=0.1)
    x = rng.standard_normal((5, 3)).astype(np.float32)

    def step(net, opt):
        out = net(x)
        net.backward(out - 0.5)
        opt.step()
        return out.copy()

    step(net, opt)
    net2, opt2 = pickle.loads(pickle.dumps((net, opt), protocol=protocol))
    for p2, q2 in zip(opt2.params, net2.parameters(), strict=True):
        assert p2.value is q2.value and p2.grad is q2.grad
    for _ in range(2):
        np.testing.assert_array_equal(step(net2, opt2), step(net, opt))
    for p, p2 in zip(net.parameters(), net2.parameters(), strict=True):
        np.testing.assert_array_equal(p.value, p2.value)


def test_layer_errors(rng):
    layer = siglayer.SigmoidLayer(4, 3, seed=0)
    with pytest.raises(RuntimeError, match="before any forward"):
        layer.backward(np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="before any forward"):
        layer.backward_from_preactivation(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"x has dtype float64 but this layer computes in float32"):
        layer(np.ones((2, 4)))
    with pytest.raises(TypeError, match=r"x must be a numpy\.ndarray, got list"):
        layer([[1.0] * 4])
    with pytest.raises(ValueError, match=r"x has shape \(2, 5\), expected \(..., 4\)"):
        layer(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="expected"):
        layer(np.array(1.0, np.float32))
    layer(np.ones((2, 4), np.float32))
    with pytest.raises(
        ValueError,
        match=r"dout has shape \(3, 3\) but the last forward produced "
        r"\(2, 3\)",
    ):
        layer.backward(np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="dZ has shape"):
        layer.backward_from_preactivation(np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match=r"^dout has dtype float64 but this layer computes in"):
        layer.backward(np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"^dZ has dtype float64 but this layer computes in"):
        layer.backward_from_preactivation(np.ones((2, 3)))
    with pytest.raises(TypeError, match="need_dx must be a bool"):
        layer.backward(np.ones((2, 3), np.float32), need_dx=1)  # type: ignore[arg-type]
    square = siglayer.SigmoidLayer(3, 3, seed=0, reuse_buffers=True)
    out = square(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="shares memory with this layer's output buffer"):
        square(out)
    np.testing.assert_array_equal(square(out.copy()).shape, (2, 3))
    # The same for its dx buffer: a forward of an earlier backward's dx, then a backward.
    dx = square.backward(np.ones((2, 3), np.float32))
    square(dx)
    with pytest.raises(ValueError, match="shares memory with this layer's dx buffer"):
        square.backward(np.ones((2, 3), np.float32))
    square(dx.copy())
    assert square.backward(np.ones((2, 3), np.float32)) is dx  # the buffer, reused
    # An earlier backward's dx given back as the gradient (dx is the next layer's dout
    # in a stack of one shape): named as the gradient, nothing written.
    square(np.ones((2, 3), np.float32))
    dW, db = square.dW.copy(), square.db.copy()
    for method, name in (("backward", "dout"), ("backward_from_preactivation", "dZ")):
        with pytest.raises(ValueError, match=rf"^{name} shares memory with this layer's dx buf"):
            getattr(square, method)(dx)
        np.testing.assert_array_equal(square.dW, dW)
        np.testing.assert_array_equal(square.db, db)
    # The dx buffer given to a forward as out=: named as the forward's out.
    square(np.ones((2, 3), np.float32), out=dx)
    with pytest.raises(ValueError, match=r"^the last forward's out shares memory with this"):
        square.backward(np.ones((2, 3), np.float32))
    square(np.ones((2, 3), np.float32))
    grad = dx.copy()
    got = square.backward(grad)  # into the buffer: dx itself
    fresh = siglayer.SigmoidLayer(3, 3, seed=0)
    fresh(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(got, fresh.backward(grad))


# ---------------------------------------------------------------- Sequential


def make_net(dtype=np.float64, sizes=(6, 5, 4, 3), seed=0):
    rng = np.random.default_rng(seed)
    layers = [
        siglayer.SigmoidLayer(a, b, dtype=dtype, seed=rng) for a, b in itertools.pairwise(sizes)
    ]
    for layer in layers:
        layer.b[...] = rng.standard_normal(layer.n_out)
    return siglayer.Sequential(*layers)


def test_sequential_matches_composed_reference(rng):
    net = make_net()
    x = rng.standard_normal((7, 6))
    dout = rng.standard_normal((7, 3))
    out = net(x)
    hs = [x]
    for layer in net:
        hs.append(reference.forward(hs[-1], layer.W, layer.b))
    np.testing.assert_allclose(out, hs[-1], rtol=1e-14)
    assert net.backward(dout) is None  # the first layer computes no dx by default
    grad = dout
    for i in range(len(net) - 1, -1, -1):
        dx, dW, db = reference.backward(grad, hs[i], net[i].W, hs[i + 1])
        np.testing.assert_allclose(net[i].dW, dW, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(net[i].db, db, rtol=1e-12, atol=1e-15)
        grad = dx
    np.testing.assert_allclose(net.backward(dout, need_dx=True), grad, rtol=1e-12, atol=1e-15)


def _loss_and_grads(net, loss_name, x, y):
    out = net(x)
    if loss_name == "mse":
        loss_fn = MSELoss()
        loss = loss_fn(out, y)
        dx = net.backward(loss_fn.backward(), need_dx=True)
    else:
        loss_fn = BCELoss()
        loss = loss_fn(out, y)
        dx = net.backward_from_preactivation(loss_fn.backward(), need_dx=True)
    return loss, [p.grad.copy() for p in net.parameters()], dx.copy()


@pytest.mark.parametrize("loss_name", ["mse", "bce"])
def test_network_gradients_match_finite_differences(rng, loss_name):
    """The whole chain (loss, fused or not, through three layers) against central
    differences in float64: error O(h^2) ~ 1e-10 against gradients of order 1e-2."""
    net = make_net()
    x = rng.standard_normal((5, 6))
    y = (rng.random((5, 3)) > 0.5).astype(np.float64)
    loss_of = (lambda o: mse_loss(o, y)) if loss_name == "mse" else (lambda o: bce_loss(o, y))
    _, grads, dx = _loss_and_grads(net, loss_name, x, y)
    h = 1e-6
    for p, g in zip(net.parameters(), grads, strict=True):
        flat = p.value.reshape(-1)
        numeric = np.empty(flat.size)
        for k in range(flat.size):
            saved = flat[k]
            flat[k] = saved + h
            up = loss_of(net(x))
            flat[k] = saved - h
            down = loss_of(net(x))
            flat[k] = saved
            numeric[k] = (up - down) / (2 * h)
        np.testing.assert_allclose(g.reshape(-1), numeric, rtol=1e-6, atol=1e-9, err_msg=p.name)
    numeric_dx = np.empty(x.size)
    xf = x.reshape(-1)
    for k in range(xf.size):
        saved = xf[k]
        xf[k] = saved + h
        up = loss_of(net(x))
        xf[k] = saved - h
        down = loss_of(net(x))
        xf[k] = saved
        numeric_dx[k] = (up - down) / (2 * h)
    np.testing.assert_allclose(dx.reshape(-1), numeric_dx, rtol=1e-6, atol=1e-9)


def test_sequential_parameters_and_errors():
    a, b = siglayer.SigmoidLayer(4, 3, seed=0), siglayer.SigmoidLayer(3, 2, seed=1)
    net = siglayer.Sequential(a, b)
    params = net.parameters()
    assert [p.name for p in params] == ["0.W", "0.b", "1.W", "1.b"]
    assert params[0].value is a.W and params[0].grad is a.dW and params[3].grad is b.db
    assert (net.n_in, net.n_out, net.dtype, len(net), net[1]) == (4, 2, np.float32, 2, b)
    assert "SigmoidLayer(n_in=4, n_out=3" in repr(net)
    with pytest.raises(ValueError, match="at least one layer"):
        siglayer.Sequential()
    with pytest.raises(ValueError, match="layer 1 takes 4 inputs but layer 0 gives 3 outputs"):
        siglayer.Sequential(a, siglayer.SigmoidLayer(4, 2))
    with pytest.raises(TypeError, match="layer 0 computes in float32 but layer 1 in float64"):
        siglayer.Sequential(a, siglayer.SigmoidLayer(3, 2, dtype=np.float64))
    sq = siglayer.SigmoidLayer(3, 3)
    with pytest.raises(ValueError, match=r"appears twice \(at 0 and at 1\)"):
        siglayer.Sequential(sq, sq)
    # At any depth: the layer keeps one forward's input, so a backward through both places
    # gave dx 23 % off and a wrong dW, without an error.
    with pytest.raises(ValueError, match=r"appears twice \(at 0\.0 and at 1\)"):
        siglayer.Sequential(siglayer.Sequential(sq), sq)
    inner = siglayer.Sequential(sq)
    with pytest.raises(ValueError, match=r"appears twice \(at 0 and at 1\)"):
        siglayer.Sequential(inner, inner)
    with pytest.raises(TypeError, match="not a layer"):
        siglayer.Sequential(a, "relu")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"before any forward: run forward\(x\) first \(of this"):
        net.backward(np.ones((2, 2), np.float32))
    with pytest.raises(IndexError, match=r"^layer index 5 is out of range for a Sequential of 2"):
        net[5]
    assert net[-1] is net.layers[-1]


# ---------------------------------------------------------------- no allocation


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_steady_state_training_allocates_nothing(rng, optimizer, dtype):
    """With reuse_buffers=True on the layers and the loss, after warm-up, 300 steps of
    forward, loss, backward and optimizer step allocate no array memory: tracemalloc (which
    sees NumPy's data allocations) shows a peak below half the smallest per-batch buffer
    (out of the last layer, 128 x 16 float32 = 8 KiB), and no growth at the end beyond a
    few live Python ints (the step counter). Small Python objects (tuples, floats) come
    and go in between, about 1.3 KiB at peak. bfloat16 layers fed float32 (x, and the
    loss's dZ) round them into buffers of their own (a review found 33 KB a step at
    256 x 64 before); the loss reads their output widened into a buffer of the loop's."""
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    net = siglayer.Sequential(
        siglayer.SigmoidLayer(64, 32, seed=0, reuse_buffers=True, dtype=dtype),
        siglayer.SigmoidLayer(32, 16, seed=1, reuse_buffers=True, dtype=dtype),
    )
    x = rng.random((128, 64), dtype=np.float32)
    y = (rng.random((128, 16)) > 0.5).astype(np.float32)
    loss_fn = BCELoss(reuse_buffers=True)
    opt = (
        siglayer.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        if optimizer == "sgd"
        else siglayer.optim.Adam(net.parameters(), lr=1e-3)
    )

    out32 = np.empty((128, 16), np.float32)

    def step():
        out = net(x)
        if out.dtype != np.float32:
            np.copyto(out32, out)
            out = out32
        loss_fn(out, y)
        net.backward_from_preactivation(loss_fn.backward())
        opt.step()

    for _ in range(5):
        step()
    smallest_buffer = 128 * 16 * 4
    gc.collect()
    tracemalloc.start()
    try:
        # Warm-up under tracing too: interpreter caches filled once are not per-step costs.
        for _ in range(20):
            step()
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(300):
            step()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - start < smallest_buffer // 2, f"peak grew by {peak - start} bytes"
    assert end - start < 512, f"{end - start} bytes more allocated after 300 steps"


# ---------------------------------------------------------------- save / load


def test_save_load_exact_round_trip(tmp_path, rng):
    net = make_net(np.float32)
    path = tmp_path / "model"  # no suffix: the file is written exactly there
    net.save(path)
    assert path.exists() and not (tmp_path / "model.npz").exists()
    saved = [p.value.copy() for p in net.parameters()]
    for p in net.parameters():
        p.value[...] = rng.standard_normal(p.value.shape)
    net.load(str(path))
    for p, want in zip(net.parameters(), saved, strict=True):
        assert p.value.tobytes() == want.tobytes()
    other = make_net(np.float32, seed=5)
    other.load(path)
    x = rng.random((3, 6), dtype=np.float32)
    np.testing.assert_array_equal(other(x), net(x).copy())
    layer = net[0]
    layer.save(tmp_path / "layer.npz")
    fresh = siglayer.SigmoidLayer(6, 5, seed=9)
    fresh.load(tmp_path / "layer.npz")
    np.testing.assert_array_equal(fresh.W, layer.W)
    with np.load(tmp_path / "model", allow_pickle=False) as data:
        assert sorted(data.files) == ["0.W", "0.b", "1.W", "1.b", "2.W", "2.b"]


def test_any_parameter_name_is_saved_and_loaded(tmp_path):
    """Names that are np.savez's own keyword arguments ("file", "allow_pickle") are saved
    like any other: they were taken for savez's arguments (a review found "allow_pickle"
    left out of the file with no error, and "file" a TypeError that named no parameter)."""
    names = ["file", "allow_pickle", "args", "kwds", "0.W", "couche cachée"]
    rng = np.random.default_rng(3)
    saved = [
        siglayer.Parameter(name, rng.standard_normal((2, 3)), np.zeros((2, 3))) for name in names
    ]
    siglayer.save_parameters(saved, tmp_path / "names.npz")
    with np.load(tmp_path / "names.npz", allow_pickle=False) as data:
        assert sorted(data.files) == sorted(names)
    fresh = [siglayer.Parameter(name, np.zeros((2, 3)), np.zeros((2, 3))) for name in names]
    siglayer.load_parameters(fresh, tmp_path / "names.npz")
    for got, want in zip(fresh, saved, strict=True):
        assert got.value.tobytes() == want.value.tobytes(), got.name


def test_load_errors_change_nothing(tmp_path):
    net = make_net(np.float32)
    before = [p.value.copy() for p in net.parameters()]
    wrong_sizes = make_net(np.float32, sizes=(6, 5, 4, 2))
    wrong_sizes.save(tmp_path / "sizes.npz")
    with pytest.raises(
        ValueError,
        match=r"2.W: the file holds shape \(4, 2\), the parameter has "
        r"\(4, 3\)",
    ):
        net.load(tmp_path / "sizes.npz")
    make_net(np.float64).save(tmp_path / "f64.npz")
    with pytest.raises(TypeError, match="the file holds dtype float64"):
        net.load(tmp_path / "f64.npz")
    if importlib.util.find_spec("ml_dtypes") is not None:  # a bfloat16 copy saved by hand
        import ml_dtypes

        bf16 = {p.name: p.value.astype(ml_dtypes.bfloat16) for p in net.parameters()}
        np.savez(tmp_path / "bf16.npz", **bf16)
        with pytest.raises(TypeError, match=r"dtype \|V2 \(2-byte records: how np.savez"):
            net.load(tmp_path / "bf16.npz")
    make_net(np.float32, sizes=(6, 5, 3)).save(tmp_path / "short.npz")
    with pytest.raises(ValueError, match=r"missing \['2.W', '2.b'\], unexpected \[\]"):
        net.load(tmp_path / "short.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match=r"text\.npz is not an \.npz file of parameters"):
        net.load(tmp_path / "text.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")  # not NumPy's guess at pickled data
    with pytest.raises(ValueError, match=r"junk\.npz .* \(it begins b'junk'; an \.npz file"):
        net.load(tmp_path / "junk.npz")
    good = (tmp_path / "f64.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz is not an \.npz file .*BadZipFile"):
        net.load(tmp_path / "cut.npz")
    objects = {p.name: p.value.astype(object) for p in net.parameters()}
    np.savez(tmp_path / "objects.npz", **objects)
    with pytest.raises(ValueError, match=r"\d\.[Wb]: .*objects\.npz holds it as Python objects"):
        net.load(tmp_path / "objects.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"one\.npy holds one array \(\.npy\)"):
        net.load(tmp_path / "one.npy")
    for p, want in zip(net.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.value, want)
    with pytest.raises(FileNotFoundError):
        net.load(tmp_path / "absent.npz")


# ---------------------------------------------------------------- loss gradient kinds


@pytest.mark.parametrize("target", ["sequential", "layer", "functional"])
def test_a_loss_gradient_is_refused_by_the_wrong_backward(rng, target):
    """BCELoss gives dL/dZ and MSELoss dL/dout; each fed to the other backward used to
    run, giving finite, wrong gradients (sigma' applied twice or not at all). Now a
    TypeError that names the right method, raised before any gradient changes."""
    net = make_net()
    x = rng.standard_normal((7, 6))
    out = net(x)
    y = (rng.random(out.shape) > 0.5).astype(out.dtype)
    bce, mse = BCELoss(), MSELoss()
    bce(out, y)
    mse(out, y)
    last = net[-1]
    before = [p.grad.copy() for p in net.parameters()]
    calls = {
        "sequential": (net.backward, net.backward_from_preactivation),
        "layer": (last.backward, last.backward_from_preactivation),
        "functional": (
            lambda g: siglayer.backward(g, last._x, last.W, out),
            lambda g: siglayer.backward_from_preactivation(g, last._x, last.W),
        ),
    }[target]
    backward, from_preactivation = calls
    for gradient in (bce.backward(), 0.5 * bce.backward(), np.clip(bce.backward(), -1, 1)):
        with pytest.raises(TypeError, match=r"dL/dZ.*backward_from_preactivation"):
            backward(gradient)
    for gradient in (mse.backward(), mse.backward() * 2):
        with pytest.raises(TypeError, match=r"dL/dout.*pass it to backward\("):
            from_preactivation(gradient)
    for b, p in zip(before, net.parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, b)  # nothing was written
    # The right pairings, and plain arrays in either, still work.
    backward(mse.backward())
    from_preactivation(bce.backward())
    backward(np.asarray(bce.backward()).copy())


def test_a_gradient_derived_with_other_arrays_is_the_users_own(rng):
    """A loss gradient keeps its kind through numbers (scaling, clipping, negation) and
    through sums with its own kind; arithmetic with another array or a reduction makes
    a plain ndarray, which both backwards take (a review found the user's correct dL/dZ
    = g * out * (1 - out) refused as dL/dout). Checked against the closed form."""
    layer = siglayer.SigmoidLayer(5, 3, dtype=np.float64, seed=4)
    x = rng.standard_normal((8, 5))
    y = (rng.random((8, 3)) > 0.5).astype(np.float64)
    out = layer(x)
    mse, bce = MSELoss(), BCELoss()
    mse(out, y)
    bce(out, y)
    g, p = mse.backward(), bce.backward()
    for kept in (0.5 * g, -g, np.clip(g, -1, 1), g + g, g[:4], g / np.float64(2)):
        assert type(kept) is OutputGradient
    for plain in (g * out * (1 - out), g * np.ones((8, 1)), g + p, g.sum(0), g.mean(axis=1)):
        assert type(plain) is np.ndarray
    assert type(g.sum()) is np.float64
    dZ = g * out * (1 - out)
    layer.backward_from_preactivation(dZ)
    np.testing.assert_allclose(layer.dW, x.T @ (2 * (out - y) / out.size * out * (1 - out)))
    in_place = g.copy()
    in_place *= out * (1 - out)  # the name now holds a plain view of the same memory
    assert type(in_place) is np.ndarray
    layer.backward_from_preactivation(in_place)
    np.testing.assert_allclose(layer.dW, x.T @ dZ, rtol=1e-15)
    with pytest.raises(TypeError, match=r"dL/dout.*np\.asarray\(dZ\)"):
        layer.backward_from_preactivation(g)


def test_right_pairing_matches_the_reference(rng):
    """BCELoss + backward_from_preactivation and MSELoss + backward give the reference's
    gradients of the losses (by finite differences in test_network_gradients_...; here
    against the closed forms, to tie the kinds to the math)."""
    layer = siglayer.SigmoidLayer(5, 3, dtype=np.float64, seed=3)
    x = rng.standard_normal((8, 5))
    y = (rng.random((8, 3)) > 0.5).astype(np.float64)
    out = layer(x)
    bce = BCELoss()
    bce(out, y)
    layer.backward_from_preactivation(bce.backward())
    np.testing.assert_allclose(layer.dW, x.T @ ((out - y) / out.size), rtol=1e-12)
    mse = MSELoss()
    mse(out, y)
    layer.backward(mse.backward())
    dZ = 2 * (out - y) / out.size * out * (1 - out)
    np.testing.assert_allclose(layer.dW, x.T @ dZ, rtol=1e-12)


def test_seed_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        siglayer.SigmoidLayer(2, 2, seed=-1)
    with pytest.raises(TypeError, match=r"seed must be an int, .* got bool"):
        siglayer.SigmoidLayer(2, 2, seed=True)


def test_a_layers_sizes_and_arrays_cannot_be_reassigned_or_deleted():
    """n_in and n_out are W's shape: assigning one was accepted silently and the next call
    failed on W; deleting W raised a bare AttributeError('__delete__')."""
    layer = siglayer.SigmoidLayer(3, 2, seed=0)
    with pytest.raises(AttributeError, match=r"n_in is W's first dimension \(3\)"):
        layer.n_in = 7
    with pytest.raises(AttributeError, match=r"n_out is W's second dimension \(2\)"):
        layer.n_out = 7
    for name in ("W", "b", "dW", "db"):
        with pytest.raises(AttributeError, match=f"layer.{name} cannot be deleted"):
            delattr(layer, name)
    assert (layer.n_in, layer.n_out) == (3, 2) == layer.W.shape
    assert layer(np.ones((4, 3), np.float32)).shape == (4, 2)


def _layer_dtypes() -> list[object]:
    """float32, float64 and, with ml-dtypes, bfloat16 (whose W is a float32 master)."""
    return [*DTYPES, *(["bfloat16"] if importlib.util.find_spec("ml_dtypes") else [])]


@pytest.mark.parametrize(
    "dtype", _layer_dtypes(), ids=lambda d: d if isinstance(d, str) else np.dtype(d).name
)
def test_given_buffers_never_overwrite_the_layers_parameters(dtype):
    """out= and dx= over the memory of the layer's own W or b are refused, nothing
    written: also where the core does not see that parameter (b in a backward; a
    bfloat16 layer's float32 W, of which the core sees the bfloat16 copy). A review found
    a bfloat16 layer's W overwritten by both."""

    def over(param: np.ndarray, like: np.ndarray) -> np.ndarray:
        """A C-contiguous array of like's shape and dtype on param's first bytes."""
        assert like.nbytes <= param.nbytes
        return param.reshape(-1).view(np.uint8)[: like.nbytes].view(like.dtype).reshape(like.shape)

    data = np.float32 if dtype == "bfloat16" else dtype  # x: rounded by a bfloat16 layer
    # W (4, 2) holds out (2, 2) and dx (2, 4); b (4,) holds dx (2, 1).
    for n_in, n_out, param in ((4, 2, "W"), (1, 4, "b")):
        layer = siglayer.SigmoidLayer(n_in, n_out, dtype=dtype, seed=0)
        layer.b[...] = np.linspace(-1, 1, n_out)
        saved = layer.W.copy(), layer.b.copy()
        x = np.ones((2, n_in), data)
        out = layer.forward(x)
        target = layer.W if param == "W" else layer.b
        if param == "W":
            with pytest.raises(siglayer.OverlapError, match="out overlaps W"):
                layer.forward(x, out=over(target, np.empty_like(out)))
            out = layer.forward(x)
        dout = np.ones_like(out)
        dx = over(target, np.empty((2, n_in), out.dtype))
        for method in (layer.backward, layer.backward_from_preactivation):
            with pytest.raises(siglayer.OverlapError, match=f"dx overlaps {param}"):
                method(dout, dx=dx)
        np.testing.assert_array_equal(layer.W, saved[0])
        np.testing.assert_array_equal(layer.b, saved[1])


def test_a_network_refuses_its_own_earlier_output_as_input():
    """net(net(x)) with reuse_buffers=True layers: the inner result is the last layer's
    buffer, which the outer forward overwrites while the first layer keeps it as x, so the
    first layer's dW came out silently wrong (7e-3 off; a review's find). Refused as a
    single layer refuses layer(layer(x)); a copy trains as the reference says, nested
    networks included."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 4))

    def layers() -> list[siglayer.SigmoidLayer]:
        return [
            siglayer.SigmoidLayer(4, 3, dtype=np.float64, seed=0, reuse_buffers=True),
            siglayer.SigmoidLayer(3, 4, dtype=np.float64, seed=1, reuse_buffers=True),
        ]

    first, second = layers()
    for net in (
        siglayer.Sequential(first, second),
        siglayer.Sequential(*layers()[:1], siglayer.Sequential(*layers()[1:])),
    ):
        h = net(x)
        with pytest.raises(ValueError, match=r"output buffer of layer 1 .* pass x\.copy\(\)"):
            net(h)
        h = h.copy()
        out = net(h)
        net.backward(np.ones_like(out))
        W0, b0, W1, b1 = (p.value for p in net.parameters())
        a0 = reference.forward(h, W0, b0)
        a1 = reference.forward(a0, W1, b1)
        _, dW1, _ = reference.backward(np.ones_like(a1), a0, W1, a1)
        dx1 = reference.backward(np.ones_like(a1), a0, W1, a1)[0]
        _, dW0, _ = reference.backward(dx1, h, W0, a0)
        np.testing.assert_allclose(net.parameters()[0].grad, dW0, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(net.parameters()[2].grad, dW1, rtol=1e-12, atol=1e-15)
    # A buffer of another shape is not written by this forward: accepted. wide[:5] is
    # read-only (a network's output), so the check runs on it and lets it through.
    net = siglayer.Sequential(first, second)
    wide = net(rng.standard_normal((7, 4)))
    assert not wide.flags.writeable
    assert net(wide[:5]).shape == (5, 4) and wide.shape == (7, 4)
