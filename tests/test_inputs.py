"""Bad input: a TypeError or ValueError that names the argument, inputs left unchanged,
nothing written into a caller's buffer."""

from __future__ import annotations

import numpy as np
import pytest

import siglayer

f32, f64 = np.float32, np.float64


def good(dtype=f64, n=4, n_in=3, n_out=2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n_in)).astype(dtype)
    W = rng.standard_normal((n_in, n_out)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    out = siglayer.forward(x, W, b)
    dout = rng.standard_normal((n, n_out)).astype(dtype)
    return {"x": x, "W": W, "b": b, "out": out, "dout": dout}


def fwd(**change):
    a = {k: v for k, v in good().items() if k in ("x", "W", "b")}
    a.update(change)
    return ("forward", a)


def bwd(**change):
    a = {k: v for k, v in good().items() if k in ("dout", "x", "W", "out")}
    a.update(change)
    return ("backward", a)


g = good()
g32 = good(f32)
# (call, exception, regex the message must match)
CASES = {
    "x-list": (fwd(x=[[1.0, 2.0, 3.0]]), TypeError, r"x must be a numpy\.ndarray, got list"),
    "x-None": (fwd(x=None), TypeError, r"x must be a numpy\.ndarray, got None"),
    "W-scalar": (fwd(W=2.0), TypeError, r"W must be a numpy\.ndarray, got float"),
    "b-tuple": (fwd(b=(1.0, 2.0)), TypeError, r"b must be a numpy\.ndarray"),
    "x-int": (fwd(x=g["x"].astype(np.int64)), TypeError, r"x has dtype int64"),
    "W-float16": (fwd(W=g["W"].astype(np.float16)), TypeError, r"W has dtype float16"),
    "x-complex": (fwd(x=g["x"].astype(complex)), TypeError, r"x has dtype complex128"),
    "b-bool": (fwd(b=g["b"] > 0), TypeError, r"b has dtype bool"),
    "x-object": (fwd(x=g["x"].astype(object)), TypeError, r"x has dtype object"),
    "x-str": (fwd(x=np.array([["a", "b", "c"]])), TypeError, r"x has dtype <U1"),
    "x-bigendian": (fwd(x=g["x"].astype(">f8")), TypeError, r"x has dtype >f8"),
    "mixed-fwd": (
        fwd(W=g32["W"]),
        TypeError,
        r"share one dtype; got x float64, W float32, b float64",
    ),
    "mixed-bwd": (
        bwd(dout=g32["dout"]),
        TypeError,
        r"share one dtype; got dout float32, x float64",
    ),
    "x-matrix": (
        fwd(x=g["x"].view(np.matrix)),
        TypeError,
        r"x must be a plain numpy\.ndarray, got numpy\.matrix",
    ),
    "W-masked": (
        fwd(W=np.ma.masked_array(g["W"])),
        TypeError,
        r"W must be a plain numpy\.ndarray.*MaskedArray",
    ),
    "x-0d": (fwd(x=np.array(1.0)), ValueError, r"x must have shape \(\.\.\., n_in\)"),
    "W-1d": (fwd(W=g["W"][:, 0]), ValueError, r"W must be 2-D \(n_in, n_out\), got shape \(3,\)"),
    "W-3d": (fwd(W=g["W"][None]), ValueError, r"W must be 2-D"),
    "b-2d": (
        fwd(b=np.ones((2, 2))),
        ValueError,
        r"b must have shape \(n_out,\) or \(1, n_out\), got shape \(2, 2\)",
    ),
    "inner-mismatch": (
        fwd(x=np.ones((2, 5))),
        ValueError,
        r"W has shape \(3, 2\) but x has 5 features \(shape \(2, 5\)\)",
    ),
    "inner-mismatch-batch": (
        fwd(x=np.ones((2, 2, 5))),
        ValueError,
        r"W has shape \(3, 2\) but x has 5 features \(shape \(2, 2, 5\)\)",
    ),
    "b-size": (fwd(b=np.ones(3)), ValueError, r"b has 3 entries but W has shape \(3, 2\)"),
    "dout-shape": (
        bwd(dout=np.ones((4, 3))),
        ValueError,
        r"dout has shape \(4, 3\), expected \(4, 2\)",
    ),
    "out-shape": (
        bwd(out=np.ones((5, 2))),
        ValueError,
        r"out has shape \(5, 2\), expected \(4, 2\)",
    ),
    "bwd-x-features": (
        bwd(x=np.ones((4, 5))),
        ValueError,
        r"W has shape \(3, 2\) but x has 5 features",
    ),
    "dout-list": (bwd(dout=[[1.0, 2.0]]), TypeError, r"dout must be a numpy\.ndarray"),
    "out-int": (bwd(out=g["out"].astype(np.int32)), TypeError, r"out has dtype int32"),
}

# Output buffers: every one of them must be left untouched when the call fails.
BUFFER_CASES = {
    "out-shape": (
        "forward",
        {"out": np.zeros((4, 3))},
        ValueError,
        r"out has shape \(4, 3\), expected \(4, 2\)",
    ),
    "out-dtype": (
        "forward",
        {"out": np.zeros((4, 2), f32)},
        TypeError,
        r"out has dtype float32, expected float64",
    ),
    "out-F-order": (
        "forward",
        {"out": np.zeros((4, 2), order="F")},
        ValueError,
        r"out must be C-contiguous",
    ),
    "out-strided": (
        "forward",
        {"out": np.zeros((4, 4))[:, ::2]},
        ValueError,
        r"out must be C-contiguous",
    ),
    "out-readonly": ("forward", {"out": np.zeros((4, 2))}, ValueError, r"out is read-only"),
    "out-list": ("forward", {"out": [[0.0] * 2] * 4}, TypeError, r"out must be a numpy\.ndarray"),
    "dW-shape": (
        "backward",
        {"dW": np.zeros((2, 3))},
        ValueError,
        r"dW has shape \(2, 3\), expected \(3, 2\)",
    ),
    "db-shape": (
        "backward",
        {"db": np.zeros((1, 2))},
        ValueError,
        r"db has shape \(1, 2\), expected \(2,\)",
    ),
    "dx-dtype": ("backward", {"dx": np.zeros((4, 3), f32)}, TypeError, r"dx has dtype float32"),
    "dx-without-need": (
        "backward",
        {"dx": np.zeros((4, 3)), "need_dx": False},
        ValueError,
        r"dx was given but need_dx=False",
    ),
    "dW-readonly": ("backward", {"dW": np.zeros((3, 2))}, ValueError, r"dW is read-only"),
}


def _snapshot(arrays):
    return {
        k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in arrays.items()
    }


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input(case):
    (func, kwargs), exc, match = CASES[case]
    before = _snapshot(kwargs)
    with pytest.raises(exc, match=match):
        getattr(siglayer, func)(**kwargs)
    for k, v in kwargs.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(
                np.asarray(v), np.asarray(before[k]), err_msg=f"{k} changed"
            )


@pytest.mark.parametrize("case", list(BUFFER_CASES), ids=list(BUFFER_CASES))
def test_bad_buffer_left_untouched(case):
    func, buffers, exc, match = BUFFER_CASES[case]
    args = {
        k: v
        for k, v in good().items()
        if k in (("x", "W", "b") if func == "forward" else ("dout", "x", "W", "out"))
    }
    for buf in buffers.values():
        if isinstance(buf, np.ndarray):
            buf[...] = 7.0
            if "readonly" in case:
                buf.flags.writeable = False
    before = _snapshot({**args, **buffers})
    with pytest.raises(exc, match=match):
        getattr(siglayer, func)(**args, **buffers)
    for k, v in {**args, **buffers}.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, before[k], err_msg=f"{k} changed")


@pytest.mark.parametrize("which", ["x", "W", "b"])
def test_out_overlapping_an_input(which):
    a = good()
    x, W, b = a["x"], a["W"], a["b"]
    if which == "x":
        x = np.zeros((4, 3))
        out = x[:, :2]
        out = np.ascontiguousarray(out)  # a separate array: must be accepted
        siglayer.forward(x, W, b, out=out)
        shared = np.zeros(8 + 12)
        x = shared[8:].reshape(4, 3)
        x[...] = a["x"]
        out = shared[:8].reshape(4, 2)
        # adjacent, not overlapping: fine
        siglayer.forward(x, W, b, out=out)
        out = shared[4:12].reshape(4, 2)  # overlaps x
    elif which == "W":
        shared = np.zeros(8)
        W = shared[:6].reshape(3, 2)
        W[...] = a["W"]
        out = shared[:8].reshape(4, 2)
    else:
        shared = np.zeros(8)
        b = shared[:2]
        b[...] = a["b"]
        out = shared.reshape(4, 2)
    before = shared.copy()
    with pytest.raises(ValueError, match=f"out overlaps {which}"):
        siglayer.forward(x, W, b, out=out)
    np.testing.assert_array_equal(shared, before)


def test_gradient_buffer_overlapping():
    a = good()
    dW = a["W"]  # writing dW into W would corrupt an input
    with pytest.raises(ValueError, match="dW overlaps W"):
        siglayer.backward(a["dout"], a["x"], a["W"], a["out"], dW=dW)
    shared = np.zeros(6 + 2)
    with pytest.raises(ValueError, match="dW overlaps db"):
        siglayer.backward(
            a["dout"], a["x"], a["W"], a["out"], dW=shared[:6].reshape(3, 2), db=shared[4:6]
        )


def test_set_num_threads_rejects_bad_values():
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        siglayer.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an int, got float"):
        siglayer.set_num_threads(1.5)  # type: ignore[arg-type]
