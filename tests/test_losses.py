"""Losses: values against hand formulas and torch.nn, gradients against finite differences
and torch autograd, finiteness where the sigmoid saturates to exactly 0 or 1."""

from __future__ import annotations

import math

import numpy as np
import pytest

import siglayer
from conftest import DTYPES, EPS
from siglayer import losses

DTYPE_IDS = [np.dtype(d).name for d in DTYPES]


def random_case(rng, dtype, shape=(6, 5)):
    out = rng.uniform(0.01, 0.99, shape).astype(dtype)
    y = (rng.random(shape) > 0.5).astype(dtype)
    return out, y


# ---------------------------------------------------------------- MSE


def test_mse_hand_values():
    out = np.array([[0.5, 1.0], [0.0, 0.25]])
    y = np.array([[0.0, 1.0], [1.0, 0.25]])
    assert losses.mse_loss(out, y) == (0.25 + 0 + 1 + 0) / 4
    assert losses.mse_loss(out, y, reduction="sum") == 1.25
    np.testing.assert_array_equal(losses.mse_grad(out, y), [[0.25, 0], [-0.5, 0]])
    fn = losses.MSELoss()
    assert fn(out, y) == 0.3125
    np.testing.assert_array_equal(fn.backward(), [[0.25, 0], [-0.5, 0]])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_grad_matches_finite_differences(rng, reduction):
    out, y = random_case(rng, np.float64)
    grad = losses.mse_grad(out, y, reduction=reduction)
    h = 1e-6
    numeric = np.empty(out.size)
    for k in range(out.size):
        e = np.zeros(out.size)
        e[k] = h
        e = e.reshape(out.shape)
        numeric[k] = (
            losses.mse_loss(out + e, y, reduction=reduction)
            - losses.mse_loss(out - e, y, reduction=reduction)
        ) / (2 * h)
    np.testing.assert_allclose(grad.reshape(-1), numeric, rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------- BCE values


def bce_by_hand(out: np.ndarray, y: np.ndarray) -> float:
    """The textbook formula in float64, for unsaturated outputs."""
    o, t = out.astype(np.float64), y.astype(np.float64)
    return float(-np.mean(t * np.log(o) + (1 - t) * np.log(1 - o)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bce_matches_textbook_formula(rng, dtype):
    out, y = random_case(rng, dtype)
    # Each term is a log of a value in [0.01, 0.99] rounded to dtype: relative error a
    # few eps of the term, |log| <= 4.6 so 1/out * eps <= 100 eps absolute per term.
    tol = 200 * EPS[np.dtype(dtype)]
    assert losses.bce_loss(out, y) == pytest.approx(bce_by_hand(out, y), abs=tol)
    assert losses.BCELoss()(out, y) == pytest.approx(bce_by_hand(out, y), abs=tol)
    assert losses.bce_loss(out, y, reduction="sum") == pytest.approx(
        bce_by_hand(out, y) * out.size, rel=tol
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bce_finite_when_saturated(dtype):
    out = np.array([0.0, 1.0, 1.0, 0.0, 0.5], dtype)
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0], dtype)
    # Wrong and saturated: each log clamped at -100 (torch.nn.BCELoss); right and
    # saturated: exactly 0; the last term is log 2.
    want = (100 + 100 + 0 + 0 + math.log(2)) / 5
    got = losses.bce_loss(out, y)
    assert math.isfinite(got)
    assert got == pytest.approx(want, rel=4 * EPS[np.dtype(dtype)])
    fn = losses.BCELoss()
    assert fn(out, y) == pytest.approx(want, rel=4 * EPS[np.dtype(dtype)])
    dZ = fn.backward()
    assert np.isfinite(dZ).all()
    np.testing.assert_array_equal(dZ, (out - y) / 5)


def test_bce_with_logits_exact_beyond_saturation():
    z = np.array([-1000.0, 1000.0, 40.0, -40.0, 0.0])
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    # softplus(-z) for y = 1, softplus(z) for y = 0: 1000, 1000, ~4e-18, 40 + ~4e-18, log 2.
    want = (1000 + 1000 + math.exp(-40) + 40 + math.exp(-40) + math.log(2)) / 5
    assert losses.bce_with_logits_loss(z, y) == pytest.approx(want, rel=1e-15)
    out = siglayer.reference.sigmoid(z)
    assert out[1] == 1.0 and out[0] == 0.0  # saturated: the probabilities lose it
    assert losses.BCELoss()(out, y, logits=z) == pytest.approx(want, rel=1e-15)


# ---------------------------------------------------------------- fused gradient


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_fused_gradient_is_out_minus_y_over_n(rng, dtype):
    out, y = random_case(rng, dtype)
    dZ = losses.bce_grad_preactivation(out, y)
    assert dZ.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(dZ, (out - y) / out.size)
    buf = np.empty_like(out)
    assert losses.bce_grad_preactivation(out, y, dZ=buf, reduction="sum") is buf
    np.testing.assert_array_equal(buf, out - y)


def test_fused_gradient_matches_finite_differences_in_logits(rng):
    """dZ is the derivative of the loss with respect to the logits z, out = sigmoid(z)."""
    z = rng.standard_normal((4, 3)) * 3
    y = (rng.random((4, 3)) > 0.5).astype(np.float64)
    dZ = losses.bce_grad_preactivation(siglayer.reference.sigmoid(z), y)
    h = 1e-6
    numeric = np.empty(z.size)
    for k in range(z.size):
        e = np.zeros(z.size)
        e[k] = h
        e = e.reshape(z.shape)
        numeric[k] = (
            losses.bce_with_logits_loss(z + e, y) - losses.bce_with_logits_loss(z - e, y)
        ) / (2 * h)
    np.testing.assert_allclose(dZ.reshape(-1), numeric, rtol=1e-7, atol=1e-11)


def test_saturated_network_still_learns():
    """A layer driven into saturation (out exactly 0 or 1, wrong): through the sigmoid's
    derivative the gradient would be 0 and nothing would move; the fused gradient is
    (out - y) / N, finite and large, and one step reduces the loss."""
    layer = siglayer.SigmoidLayer(2, 1, dtype=np.float64, seed=0)
    layer.W[...] = [[60.0], [-60.0]]
    net = siglayer.Sequential(layer)
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[0.0], [1.0]])
    out = net(x)
    assert out[0, 0] == 1.0 and out[1, 0] < 1e-20  # saturated and wrong
    fn = losses.BCELoss()
    before = fn(out, y, logits=layer.preactivation())
    assert before == pytest.approx(60.0)
    net.backward_from_preactivation(fn.backward())
    assert np.isfinite(layer.dW).all() and np.abs(layer.dW).max() == pytest.approx(0.5)
    through_sigmoid = siglayer.backward(np.ones_like(out), x, layer.W, out)[1]
    assert np.abs(through_sigmoid).max() < 1e-20  # the vanishing gradient the fusion avoids
    siglayer.optim.SGD(net.parameters(), lr=10.0).step()
    after = fn(net(x), y, logits=layer.preactivation())
    assert after < before - 1


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("out", "y", "error", "match"),
    [
        (np.zeros(3), np.zeros(4), ValueError, r"y has shape \(4,\) but out has shape \(3,\)"),
        (
            np.zeros(3, np.float32),
            np.zeros(3),
            TypeError,
            "y has dtype float64 but out has float32",
        ),
        (np.zeros(3), [0.0, 0.0, 0.0], TypeError, "y must be a numpy.ndarray, got list"),
        (np.zeros(3, np.int64), np.zeros(3, np.int64), TypeError, "out has dtype int64"),
        (np.zeros(0), np.zeros(0), ValueError, "empty batch"),
    ],
    ids=["shape", "dtype", "list", "int", "empty"],
)
@pytest.mark.parametrize(
    "fn", ["mse_loss", "bce_loss", "bce_grad_preactivation", "MSELoss", "BCELoss"]
)
def test_bad_input(fn, out, y, error, match):
    call = getattr(losses, fn)
    if fn[0].isupper():
        call = call()
    with pytest.raises(error, match=match):
        call(out, y)


@pytest.mark.parametrize("kind", ["masked", "matrix"])
@pytest.mark.parametrize(
    "fn",
    [
        "mse_loss",
        "mse_grad",
        "bce_loss",
        "bce_with_logits_loss",
        "bce_grad_preactivation",
        "MSELoss",
        "BCELoss",
    ],
)
def test_masked_and_matrix_arrays_are_refused(fn, kind):
    """Losses compute on out and y in Python or convert them before the core: a masked
    array (whose mask would be ignored, its entries counted in N) or an np.matrix is
    refused with the core's TypeError, as the layer functions refuse them."""
    wrap = {
        "masked": lambda a: np.ma.masked_array(a, mask=[[0, 0], [1, 1]]),
        "matrix": lambda a: a.view(np.matrix),
    }
    out, y = np.array([[0.5, 0.9], [0.2, 0.1]]), np.array([[0.0, 1.0], [1.0, 0.0]])
    # numpy.ma.core.MaskedArray on NumPy 1.x
    name = {"masked": r"numpy\.ma\.(core\.)?MaskedArray", "matrix": r"numpy\.matrix"}[kind]
    call = getattr(losses, fn)
    if fn[0].isupper():
        call = call()
    for args, which in (((wrap[kind](out), y), "out|z"), ((out, wrap[kind](y)), "y")):
        match = rf"^({which}) must be a plain numpy\.ndarray, got {name}"
        with pytest.raises(TypeError, match=match):
            call(*args)
    if fn in ("mse_grad", "bce_grad_preactivation"):
        buffer = "dout" if fn == "mse_grad" else "dZ"
        with pytest.raises(TypeError, match=rf"^{buffer} must be a plain numpy\.ndarray"):
            call(out, y, **{buffer: wrap[kind](np.empty_like(out))})


def test_other_errors():
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        losses.BCELoss(reduction="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction must be"):
        losses.mse_loss(np.zeros(2), np.zeros(2), reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="before the loss"):
        losses.BCELoss().backward()
    # A call that raises leaves no gradient behind: backward must not return the one of
    # the call before (a review found it did, for a loss fed an out past [0, 1]).
    for loss_fn, bad in ((losses.BCELoss(), np.array([1.5, 0.5])), (losses.MSELoss(), None)):
        loss_fn(np.array([0.25, 0.5]), np.zeros(2))
        with pytest.raises(ValueError):
            loss_fn(bad, np.zeros(2)) if bad is not None else loss_fn(np.zeros(2), np.zeros(3))
        with pytest.raises(RuntimeError, match="after a loss call that raised"):
            loss_fn.backward()
    with pytest.raises(ValueError, match="logits has shape"):
        losses.BCELoss()(np.zeros(2), np.zeros(2), logits=np.zeros(3))
    with pytest.raises(ValueError, match=r"dZ has shape \(3,\), expected \(2,\)"):
        losses.bce_grad_preactivation(np.zeros(2), np.zeros(2), dZ=np.zeros(3))
    assert losses.mse_loss(np.zeros(0), np.zeros(0), reduction="sum") == 0.0


@pytest.mark.parametrize("where", ["out", "y"])
@pytest.mark.parametrize("start", [0, 3], ids=["same", "partly"])
@pytest.mark.parametrize("step", [1, 2], ids=["contiguous", "strided"])
def test_gradient_buffers_overlapping_an_input_are_refused(where, start, step):
    """dZ (written by NumPy) and dout (written by the core) overlapping out or y: the
    core's OverlapError for both, and nothing changed. A strided input reaches the core
    as a copy, so its overlap is checked before (a strided out was overwritten)."""
    for fn, buffer in ((losses.bce_grad_preactivation, "dZ"), (losses.mse_grad, "dout")):
        backing = np.linspace(0.1, 0.9, 12)
        arrays = {"out": backing[: 6 * step : step], "y": np.full(6, 0.5)}
        if where == "y":
            arrays = {"out": np.full(6, 0.25), "y": backing[: 6 * step : step]}
        before = backing.copy()
        with pytest.raises(siglayer._core.OverlapError, match=rf"{buffer} overlaps {where}"):
            fn(arrays["out"], arrays["y"], **{buffer: backing[start : start + 6]})
        np.testing.assert_array_equal(backing, before)


# ---------------------------------------------------------------- torch


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bce_matches_torch(rng, dtype):
    torch = pytest.importorskip("torch")
    # Probabilities including exact 0 and 1 (clamped by both) and values near them.
    out = rng.uniform(0, 1, (8, 10)).astype(dtype)
    out.reshape(-1)[:6] = [0, 1, 1e-30, 1 - 1e-7, 0, 1]
    y = (rng.random((8, 10)) > 0.5).astype(dtype)
    want = torch.nn.BCELoss()(torch.from_numpy(out), torch.from_numpy(y)).item()
    # torch evaluates log(1 - out) where we use log1p(-out): near out = 0 these differ by
    # up to eps / (1 - out) relatively, i.e. a few eps per term on these values.
    tol = 64 * EPS[np.dtype(dtype)] * max(1.0, want)
    assert losses.bce_loss(out, y) == pytest.approx(want, abs=tol)
    assert losses.BCELoss()(out, y) == pytest.approx(want, abs=tol)
    want_sum = torch.nn.BCELoss(reduction="sum")(torch.from_numpy(out), torch.from_numpy(y))
    assert losses.bce_loss(out, y, reduction="sum") == pytest.approx(
        want_sum.item(), abs=tol * out.size
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bce_with_logits_and_fused_gradient_match_torch(rng, dtype):
    torch = pytest.importorskip("torch")
    z = (rng.standard_normal((8, 10)) * 10).astype(dtype)
    z.reshape(-1)[:4] = [200, -200, 50, -50]
    y = (rng.random((8, 10)) > 0.5).astype(dtype)
    zt = torch.from_numpy(z.copy()).requires_grad_()
    loss_t = torch.nn.BCEWithLogitsLoss()(zt, torch.from_numpy(y))
    loss_t.backward()
    eps = EPS[np.dtype(dtype)]
    assert losses.bce_with_logits_loss(z, y) == pytest.approx(loss_t.item(), rel=16 * eps)
    out = siglayer.reference.sigmoid(z)
    fn = losses.BCELoss()
    assert fn(out, y, logits=z) == pytest.approx(loss_t.item(), rel=16 * eps)
    # torch's gradient is (sigmoid(z) - y) / N with its own sigmoid: equal up to the
    # rounding of the two sigmoids (an ulp of values <= 1) and of the division.
    np.testing.assert_allclose(fn.backward(), zt.grad.numpy(), rtol=0, atol=4 * eps / z.size)
    # The value with logits= follows the loss's own reduction (a mutation that returned the
    # mean under reduction="sum" went unseen: helper-83); the gradient is then out - y.
    zs = torch.from_numpy(z.copy()).requires_grad_()
    sum_t = torch.nn.BCEWithLogitsLoss(reduction="sum")(zs, torch.from_numpy(y))
    sum_t.backward()
    fn_sum = losses.BCELoss(reduction="sum")
    assert fn_sum(out, y, logits=z) == pytest.approx(sum_t.item(), rel=16 * eps)
    np.testing.assert_allclose(fn_sum.backward(), zs.grad.numpy(), rtol=0, atol=4 * eps)


def test_nan_output_gives_nan_loss():
    out = np.array([0.5, np.nan])
    y = np.array([1.0, 0.0])
    assert math.isnan(losses.bce_loss(out, y)) and math.isnan(losses.mse_loss(out, y))
    assert math.isnan(losses.BCELoss()(out, y))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("bad", [-1e-7, 1.0000001, 2.7, -np.inf, np.inf])
def test_bce_refuses_outputs_that_are_not_probabilities(dtype, bad):
    """Logits (or an output changed in place) are a ValueError naming out and the value,
    where the formula would silently give NaN; the loss object's gradient buffer is not
    half-written, and backward() raises rather than return the previous call's gradient."""
    y = np.array([[0.0, 1.0, 1.0]], dtype)
    good = np.array([[0.25, 0.5, 0.75]], dtype)
    loss_fn = losses.BCELoss(reuse_buffers=True)  # one gradient buffer, written in place
    loss_fn(good, y)
    buffer = loss_fn.backward()
    kept = buffer.copy()
    out = good.copy()
    out[0, 1] = bad
    if out[0, 1] == 0 or out[0, 1] == 1:  # rounded into range in float32: not an error
        pytest.skip(f"{bad} rounds to {out[0, 1]} in {np.dtype(dtype).name}")
    for call in (lambda: losses.bce_loss(out, y), lambda: loss_fn(out, y)):
        with pytest.raises(ValueError, match=r"out has a value outside \[0, 1\] \(element 1"):
            call()
    np.testing.assert_array_equal(buffer, kept)
    with pytest.raises(RuntimeError, match="after a loss call that raised"):
        loss_fn.backward()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("bad", [3.0, -1.0, 1.5, np.inf, np.nan, -np.nan])
def test_bce_refuses_targets_outside_the_unit_interval(dtype, bad):
    """Class indices passed as targets (y = 3 for a digit) gave a finite, negative,
    meaningless loss (-0.013 in a review); every binary cross-entropy entry point now
    names y, the element and its value, and writes no gradient. So for a NaN target,
    which gave a NaN loss and NaN gradients (a review, helper-88: one NaN label turns
    every weight to NaN at the next step; torch.nn.BCELoss refuses it too); a NaN out
    still gives a NaN loss (test_nan_output_gives_nan_loss). A NaN with its sign bit set
    (0/0 gives one) is "nan" in the core's words too, as in NumPy's (helper-89 saw -nan)."""
    out = np.array([[0.25, 0.5, 0.75]], dtype)
    y = np.array([[0.0, 1.0, 0.5]], dtype)
    y[0, 2] = bad
    message = (
        rf"^y has a value outside \[0, 1\] \(element 2 of the flattened y is {bad:g}\): binary "
        r"cross-entropy takes targets in \[0, 1\] \(0/1 labels or probabilities\); one-hot "
        r"encode class indices first$"
    )
    loss_fn = losses.BCELoss(reuse_buffers=True)
    loss_fn(out, np.zeros_like(out))
    buffer = loss_fn.backward()
    kept = buffer.copy()
    dZ = np.full_like(out, 7.0)
    for call in (
        lambda: losses.bce_loss(out, y),
        lambda: loss_fn(out, y),
        lambda: losses.bce_with_logits_loss(out, y),
        lambda: losses.bce_grad_preactivation(out, y, dZ=dZ),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    np.testing.assert_array_equal(buffer, kept)
    assert (dZ == 7.0).all()
    # the pure-NumPy gradient checks out as the core's loss does
    with pytest.raises(ValueError, match=r"^out has a value outside \[0, 1\] \(element 0 "):
        losses.bce_grad_preactivation(out - 1, np.zeros_like(out), dZ=dZ)
    assert (dZ == 7.0).all()


def test_non_contiguous_inputs_give_the_same_values(rng):
    out, y = random_case(rng, np.float64, (6, 10))
    want = (losses.bce_loss(out, y), losses.mse_loss(out, y))
    out_f = np.asfortranarray(out)
    y_view = np.zeros((6, 20))[:, ::2]
    y_view[...] = y
    assert losses.bce_loss(out_f, y_view) == want[0]
    assert losses.mse_loss(out_f, y_view) == want[1]
    fn = losses.BCELoss()
    assert fn(out_f, y_view) == want[0]
    np.testing.assert_array_equal(fn.backward(), (out - y) / out.size)


@pytest.mark.parametrize("core", ["bce_sigmoid", "mse"])
def test_core_entry_points_check_their_arrays(core):
    fn = getattr(siglayer._core, core)
    out, y = np.full(4, 0.5), np.zeros(4)
    with pytest.raises(ValueError, match="overlaps out"):
        fn(out, y, out, 4.0)
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        fn(np.zeros(8)[::2], y, np.zeros(4), 4.0)
    with pytest.raises(ValueError, match="divisor must be > 0"):
        fn(out, y, np.zeros(4), 0.0)
    with pytest.raises(TypeError, match="share one dtype"):
        fn(out, y.astype(np.float32), np.zeros(4), 4.0)
    with pytest.raises(ValueError, match="has shape"):
        fn(out, y, np.zeros(5), 4.0)
    np.testing.assert_array_equal(out, 0.5)


@pytest.mark.parametrize("loss_class", [losses.MSELoss, losses.BCELoss])
def test_a_reused_gradient_fed_back_as_an_input_is_named(loss_class):
    """With reuse_buffers=True the call overwrites the gradient buffer that backward()
    returned; passing that gradient back as out or y said 'dout overlaps out', a buffer
    the user never passed. Now the input is named, and nothing is written."""
    loss = loss_class(reuse_buffers=True)
    out, y = np.full(4, 0.5), np.zeros(4)
    loss(out, y)
    grad = loss.backward()
    before = grad.copy()
    for name, args in (("out", (grad, y)), ("y", (out, grad))):
        with pytest.raises(siglayer._core.OverlapError, match=f"{name} shares memory with this"):
            loss(*args)
        np.testing.assert_array_equal(grad, before)
