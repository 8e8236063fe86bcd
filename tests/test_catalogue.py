"""The catalogue of bad calls: every one raises a TypeError or ValueError whose message
names the offending argument, never crashes, and leaves every input and every
caller-supplied buffer exactly as it was.

The calls go to forward, backward and backward_from_preactivation with their
out=/dx=/dW=/db= buffers, and to the layer objects (SigmoidLayer, its forward and
backward, Sequential). Each case builds its arguments afresh from a small valid
problem (x (4, 3), W (3, 2), b (2,), float64) and changes one thing. The cases are
grouped by what they break: argument types, dtypes, array subclasses, shapes, output
buffers, overlaps, strides and alignment, and sizes beyond the BLAS integer range
(zero-stride views: no memory needed). The layouts that are *accepted* (zero and
negative strides on inputs, huge row strides) are checked against the reference at the
end; see docs/reliability.md.
"""

from __future__ import annotations

import math
import mmap
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import siglayer
from conftest import assert_within, backward_bounds, forward_bound, gradient_bounds
from siglayer import reference

f32, f64 = np.float32, np.float64
INT_MAX = 2**31 - 1  # the BLAS integer of scipy-openblas32

Args = dict[str, Any]
# A case: builder(problem) -> (function name in siglayer or a callable, keyword arguments,
# extra arrays to watch), the exception type, the argument the message must name, and a
# regex for the message.
Builder = Callable[[Args], tuple[str | Callable[..., Any], Args, list[np.ndarray]]]


def problem(dtype: type = f64, n: int = 4, n_in: int = 3, n_out: int = 2) -> Args:
    """A valid small problem; out is siglayer's own forward result."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n_in)).astype(dtype)
    W = rng.standard_normal((n_in, n_out)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    return {
        "x": x,
        "W": W,
        "b": b,
        "out": siglayer.forward(x, W, b),
        "dout": rng.standard_normal((n, n_out)).astype(dtype),
    }


def fwd(p: Args, watch: list[np.ndarray] | None = None, **change: Any):
    args = {"x": p["x"], "W": p["W"], "b": p["b"], **change}
    return "forward", args, watch or []


def bwd(p: Args, watch: list[np.ndarray] | None = None, **change: Any):
    args = {"dout": p["dout"], "x": p["x"], "W": p["W"], "out": p["out"], **change}
    return "backward", args, watch or []


def batched(p: Args) -> Args:
    """The same problem with its 4 rows as a (2, 2) batch."""
    return {k: v.reshape(2, 2, -1) if v.ndim == 2 and k != "W" else v for k, v in p.items()}


def filled(shape: tuple[int, ...], dtype: type = f64) -> np.ndarray:
    """A caller's buffer holding a sentinel, so any write into it shows."""
    return np.full(shape, 7.0, dtype)


def readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def zero_stride(shape: tuple[int, ...], source: np.ndarray) -> np.ndarray:
    """A read-only view of shape `shape` in which every element is source[0]."""
    return as_strided(source, shape=shape, strides=(0,) * len(shape), writeable=False)


def misaligned(shape: tuple[int, ...], dtype: type = f64) -> np.ndarray:
    """A C-contiguous, writeable array whose data pointer is one byte off alignment."""
    count = int(np.prod(shape))
    raw = np.zeros(count * np.dtype(dtype).itemsize + 1, np.uint8)
    a = raw[1:].view(dtype).reshape(shape)
    a[...] = 7.0
    return a


INPUTS = {
    "forward": ("x", "W", "b"),
    "backward": ("dout", "x", "W", "out"),
    "backward_from_preactivation": ("dZ", "x", "W"),
}


def shared(func: str, **placements: tuple[int, tuple[int, ...]]) -> Builder:
    """Arguments as views of one 32-element array: name=(first element, shape). Inputs
    get the problem's values (or the arbitrary ones below them, for shapes of their own),
    buffers keep the sentinel."""

    def build(p: Args):
        backing = filled((32,))
        change = {}
        for name, (start, shape) in placements.items():
            view = backing[start : start + math.prod(shape)].reshape(shape)
            source = p["dout" if name == "dZ" else name] if name in INPUTS[func] else None
            if source is not None and source.shape == shape:
                view[...] = source
            change[name] = view
        build_call = {"forward": fwd, "backward": bwd, "backward_from_preactivation": bfp}[func]
        return build_call(p, watch=[backing], **change)

    return build


def negative_x_under_out(p: Args):
    """x read backwards from element 11 down to 0; out covers elements 0 to 7."""
    backing = np.arange(32.0)
    return fwd(p, x=backing[11::-1].reshape(4, 3), out=backing[:8].reshape(4, 2), watch=[backing])


def copied_x_under_out(p: Args):
    """A batched x whose flattening to rows copies it (a transposed 3-D view), under out:
    the core sees the copy, so the check must be made on the caller's x."""
    backing = np.arange(32.0)
    x = backing[:12].reshape(2, 2, 3).transpose(1, 0, 2)
    return fwd(p, x=x, out=backing[4:12].reshape(2, 2, 2), watch=[backing])


def copied_dout_under_dW(p: Args):
    """The same in backward: a batched dout that flattening copies, overlapped by dW."""
    backing = np.arange(32.0)
    dout = backing[:8].reshape(2, 2, 2).transpose(1, 0, 2)
    x, out = p["x"].reshape(2, 2, 3), p["out"].reshape(2, 2, 2)
    return bwd(p, dout=dout, x=x, out=out, dW=backing[2:8].reshape(3, 2), watch=[backing])


def broadcast_batch(source: np.ndarray, rows: int = 8192) -> np.ndarray:
    """source (64, 1, k) seen as (64, rows, k): a batch whose flattening to rows must copy
    it (12 MB for k = 3 in float64), where the 1 MiB bound of test_bad_call shows a copy
    made before the check."""
    return np.broadcast_to(source, (source.shape[0], rows, source.shape[2]))


def copied_batch(func: str, bad: str) -> Builder:
    """A batched call of `func` on broadcast views, float64 but `bad`: int64 (x) or
    float32 (dout, dZ). Its dtype error must come before the views are flattened, which
    copied them at full size first (a review found 489 MiB for a 256 KB int64 view)."""

    def build(p: Args):
        sources = {
            name: np.full((64, 1, k), 0.25, np.int64 if bad == name == "x" else f64)
            for name, k in {"x": 3, "dout": 2, "out": 2}.items()
        }
        if bad != "x":
            sources["dout"] = sources["dout"].astype(f32)
        views = {name: broadcast_batch(a) for name, a in sources.items()}
        watch = list(sources.values())
        if func == "forward":
            return fwd(p, watch=watch, x=views["x"])
        if func == "backward":
            return bwd(p, watch=watch, dout=views["dout"], x=views["x"], out=views["out"])
        return bfp(p, watch=watch, dZ=views["dout"], x=views["x"])

    return build


def zero_stride_out(p: Args):
    source = filled((1,))
    return fwd(p, out=as_strided(source, (4, 2), (0, 0)), watch=[source])


def _huge(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    source = np.array([0.5], f32)
    return source, zero_stride(shape, source)


def huge_forward(n: int, n_in: int, n_out: int, with_out: bool = False) -> Builder:
    """forward on zero-stride float32 views; any allocation or packing copy of a size
    proportional to them would be impossible (MemoryError) instead of the ValueError."""

    def build(p: Args):
        sx, x = _huge((n, n_in))
        sW, W = _huge((n_in, n_out))
        sb, b = _huge((n_out,))
        extra = {"out": np.zeros((2, 2), f32)} if with_out else {}
        return "forward", {"x": x, "W": W, "b": b, **extra}, [sx, sW, sb]

    return build


def huge_batched_forward(p: Args):
    """x (2^20, 2^20, 3): 2^40 rows once the batch dimensions are flattened."""
    source, x = _huge((2**20, 2**20, 3))
    return "forward", {"x": x, "W": np.ones((3, 2), f32), "b": np.ones(2, f32)}, [source]


def huge_backward(n: int, n_in: int, n_out: int) -> Builder:
    def build(p: Args):
        shapes = {"dout": (n, n_out), "x": (n, n_in), "W": (n_in, n_out), "out": (n, n_out)}
        pairs = {name: _huge(shape) for name, shape in shapes.items()}
        args = {name: view for name, (_, view) in pairs.items()}
        sources = [source for source, _ in pairs.values()]
        return "backward", args, sources

    return build


BIG = 2**40  # a companion dimension that makes any proportional allocation impossible


class Case(NamedTuple):
    """One bad call: how to make it, the exception it must raise, the argument its
    message must name first, and a regex the message must match."""

    build: Builder
    error: type[Exception]
    argument: str
    match: str


# -- The functional API: forward and backward ---------------------------------------------

FUNCTIONAL_CASES: dict[str, Case] = {
    # -- Not an array at all ------------------------------------------------------------
    "x-list": Case(
        lambda p: fwd(p, x=p["x"].tolist()),
        TypeError,
        "x",
        r"x must be a numpy\.ndarray, got list",
    ),
    "x-ragged-list": Case(
        lambda p: fwd(p, x=[[1.0, 2.0, 3.0], [4.0]]), TypeError, "x", r"got list"
    ),
    "x-None": Case(
        lambda p: fwd(p, x=None), TypeError, "x", r"x must be a numpy\.ndarray, got None"
    ),
    "x-memoryview": Case(lambda p: fwd(p, x=memoryview(p["x"])), TypeError, "x", r"got memoryview"),
    "W-python-float": Case(
        lambda p: fwd(p, W=2.0),
        TypeError,
        "W",
        r"W must be a numpy\.ndarray, got float",
    ),
    "b-tuple": Case(lambda p: fwd(p, b=(1.0, 2.0)), TypeError, "b", r"got tuple"),
    "b-python-int": Case(lambda p: fwd(p, b=0), TypeError, "b", r"got int"),
    "dout-None": Case(
        lambda p: bwd(p, dout=None),
        TypeError,
        "dout",
        r"dout must be a numpy\.ndarray, got None",
    ),
    "dout-python-float": Case(lambda p: bwd(p, dout=1.0), TypeError, "dout", r"got float"),
    "bwd-out-list": Case(
        lambda p: bwd(p, out=p["out"].tolist()),
        TypeError,
        "out",
        r"out must be a numpy\.ndarray",
    ),
    "bwd-W-None-batched": Case(
        lambda p: bwd(p, x=p["x"][None], dout=p["dout"][None], out=p["out"][None], W=None),
        TypeError,
        "W",
        r"W must be a numpy\.ndarray, got None",
    ),
    # W is checked before out= is sized from it (it used to read "expected (1, 4, -1)").
    "W-None-batched-with-out": Case(
        lambda p: fwd(p, x=p["x"][None], W=None, out=filled((1, 4, 2))),
        TypeError,
        "W",
        r"W must be a numpy\.ndarray, got None",
    ),
    "W-1d-batched-with-out": Case(
        lambda p: fwd(p, x=p["x"][None], W=p["W"][:, 0], out=filled((1, 4, 2))),
        ValueError,
        "W",
        r"W must be 2-D",
    ),
    # -- Unsupported dtypes: never converted ---------------------------------------------
    "x-int64": Case(
        lambda p: fwd(p, x=p["x"].astype(np.int64)), TypeError, "x", r"x has dtype int64"
    ),
    "W-float16": Case(
        lambda p: fwd(p, W=p["W"].astype(np.float16)),
        TypeError,
        "W",
        r"W has dtype float16",
    ),
    "x-longdouble": Case(
        lambda p: fwd(p, x=p["x"].astype(np.longdouble)),
        TypeError,
        "x",
        r"x has dtype float(128|96|64)",
    ),
    "x-complex128": Case(
        lambda p: fwd(p, x=p["x"].astype(complex)),
        TypeError,
        "x",
        r"x has dtype complex128",
    ),
    "b-bool": Case(lambda p: fwd(p, b=p["b"] > 0), TypeError, "b", r"b has dtype bool"),
    "x-object": Case(
        lambda p: fwd(p, x=p["x"].astype(object)), TypeError, "x", r"x has dtype object"
    ),
    "dout-object": Case(
        lambda p: bwd(p, dout=p["dout"].astype(object)),
        TypeError,
        "dout",
        r"dout has dtype object",
    ),
    "x-str": Case(lambda p: fwd(p, x=np.full((4, 3), "a")), TypeError, "x", r"x has dtype <U1"),
    "x-big-endian": Case(
        lambda p: fwd(p, x=p["x"].astype(">f8")), TypeError, "x", r"x has dtype >f8"
    ),
    "bwd-out-int32": Case(
        lambda p: bwd(p, out=p["out"].astype(np.int32)),
        TypeError,
        "out",
        r"out has dtype int32",
    ),
    # -- Mixed dtypes ---------------------------------------------------------------------
    "mixed-W-float32": Case(
        lambda p: fwd(p, W=p["W"].astype(f32)),
        TypeError,
        "W",
        r"share one dtype; got x float64, W float32, b float64",
    ),
    "mixed-b-float32": Case(lambda p: fwd(p, b=p["b"].astype(f32)), TypeError, "b", r"b float32"),
    "mixed-dout-float32": Case(
        lambda p: bwd(p, dout=p["dout"].astype(f32)),
        TypeError,
        "dout",
        r"share one dtype; got dout float32, x float64",
    ),
    "mixed-bwd-out-float32": Case(
        lambda p: bwd(p, out=p["out"].astype(f32)),
        TypeError,
        "out",
        r"out float32",
    ),
    "x-int64-batched-copied": Case(
        copied_batch("forward", "x"), TypeError, "x", r"x has dtype int64"
    ),
    "dout-float32-batched-copied": Case(
        copied_batch("backward", "dout"), TypeError, "dout", r"dout float32, x float64"
    ),
    "mixed-batched-x-float32": Case(
        lambda p: fwd(p, x=p["x"][None].astype(f32)),
        TypeError,
        "x",
        r"x float32, W float64",
    ),
    # -- Array subclasses whose meaning the core would ignore ----------------------------
    "x-matrix": Case(
        lambda p: fwd(p, x=p["x"].view(np.matrix)),
        TypeError,
        "x",
        r"x must be a plain numpy\.ndarray, got numpy\.matrix; convert it with np\.asarray\(x\)$",
    ),
    "W-masked": Case(
        lambda p: fwd(p, W=np.ma.masked_array(p["W"])),
        TypeError,
        "W",
        r"W must be a plain .*MaskedArray; masks are not supported: fill the masked entries "
        r"first \(W\.filled\(value\)\)$",
    ),
    "b-masked": Case(
        lambda p: fwd(p, b=np.ma.masked_array(p["b"], mask=[True, False])),
        TypeError,
        "b",
        r"MaskedArray",
    ),
    "x-masked-batched": Case(
        lambda p: fwd(p, x=np.ma.masked_array(p["x"][None])),
        TypeError,
        "x",
        r"MaskedArray",
    ),
    "dout-matrix": Case(
        lambda p: bwd(p, dout=p["dout"].view(np.matrix)),
        TypeError,
        "dout",
        r"numpy\.matrix",
    ),
    "out-buffer-matrix": Case(
        lambda p: fwd(p, out=filled((4, 2)).view(np.matrix)),
        TypeError,
        "out",
        r"numpy\.matrix",
    ),
    "dW-buffer-masked": Case(
        lambda p: bwd(p, dW=np.ma.masked_array(filled((3, 2)))),
        TypeError,
        "dW",
        r"MaskedArray",
    ),
    # -- Shapes ---------------------------------------------------------------------------
    "x-0d": Case(
        lambda p: fwd(p, x=np.array(1.0)),
        ValueError,
        "x",
        r"x must have shape \(\.\.\., n_in\), got a 0-d",
    ),
    "W-1d": Case(
        lambda p: fwd(p, W=p["W"][:, 0]),
        ValueError,
        "W",
        r"W must be 2-D \(n_in, n_out\), got shape \(3,\)",
    ),
    "W-3d": Case(lambda p: fwd(p, W=p["W"][None]), ValueError, "W", r"W must be 2-D .*\(1, 3, 2\)"),
    "b-2d": Case(
        lambda p: fwd(p, b=np.ones((2, 2))),
        ValueError,
        "b",
        r"b must have shape \(n_out,\) or \(1, n_out\), got shape \(2, 2\)",
    ),
    "b-0d": Case(lambda p: fwd(p, b=np.array(0.0)), ValueError, "b", r"got shape \(\)"),
    "b-3d": Case(lambda p: fwd(p, b=np.ones((1, 1, 2))), ValueError, "b", r"got shape \(1, 1, 2\)"),
    "b-size": Case(
        lambda p: fwd(p, b=np.ones(3)),
        ValueError,
        "b",
        r"b has 3 entries but W has shape \(3, 2\)",
    ),
    "x-features": Case(
        lambda p: fwd(p, x=np.ones((2, 5))),
        ValueError,
        "x",
        r"W has shape \(3, 2\) but x has 5 features \(shape \(2, 5\)\)$",
    ),
    "x-features-batched": Case(
        lambda p: fwd(p, x=np.ones((2, 2, 5))),
        ValueError,
        "x",
        r"x has 5 features \(shape \(2, 2, 5\)\)$",
    ),
    # torch.nn.Linear's weight is (n_out, n_in): a W that fits transposed gets the hint.
    "W-transposed": Case(
        lambda p: fwd(p, W=p["W"].T.copy()),
        ValueError,
        "W",
        r"^W has shape \(2, 3\) but x has 3 features \(shape \(4, 3\)\); W is \(n_in, "
        r"n_out\): pass W\.T if it is laid out as torch\.nn\.Linear's weight, \(n_out, n_in\)$",
    ),
    "W-transposed-batched": Case(
        lambda p: fwd(p, x=p["x"][None], W=p["W"].T.copy()),
        ValueError,
        "W",
        r"^W has shape \(2, 3\) but x has 3 features \(shape \(1, 4, 3\)\); W is \(n_in, "
        r"n_out\): pass W\.T",
    ),
    "bwd-x-0d": Case(
        lambda p: bwd(p, x=np.array(1.0), dout=p["dout"][None]),
        ValueError,
        "x",
        r"x must have shape",
    ),
    "bwd-x-features": Case(
        lambda p: bwd(p, x=np.ones((4, 5))),
        ValueError,
        "x",
        r"W has shape \(3, 2\) but x has 5 features",
    ),
    "bwd-W-1d-batched": Case(
        lambda p: bwd(p, x=p["x"][None], dout=p["dout"][None], out=p["out"][None], W=p["W"][:, 0]),
        ValueError,
        "W",
        r"W must be 2-D",
    ),
    "dout-shape": Case(
        lambda p: bwd(p, dout=np.ones((4, 3))),
        ValueError,
        "dout",
        r"dout has shape \(4, 3\), expected \(4, 2\)",
    ),
    "dout-0d": Case(
        lambda p: bwd(p, dout=np.array(1.0)),
        ValueError,
        "dout",
        r"dout has shape \(\), expected \(4, 2\)",
    ),
    "dout-batch-mismatch": Case(
        lambda p: bwd(
            p,
            x=p["x"].reshape(2, 2, 3),
            out=p["out"].reshape(2, 2, 2),
            dout=p["dout"].reshape(1, 4, 2),
        ),
        ValueError,
        "dout",
        r"dout has shape \(1, 4, 2\)",
    ),
    "bwd-out-shape": Case(
        lambda p: bwd(p, out=np.ones((5, 2))),
        ValueError,
        "out",
        r"out has shape \(5, 2\), expected \(4, 2\)",
    ),
    # -- need_dx --------------------------------------------------------------------------
    "need_dx-None": Case(
        lambda p: bwd(p, need_dx=None),
        TypeError,
        "need_dx",
        r"need_dx must be a bool, got None",
    ),
    "need_dx-str": Case(
        lambda p: bwd(p, need_dx="no"),
        TypeError,
        "need_dx",
        r"need_dx must be a bool, got str",
    ),
    "need_dx-array": Case(
        lambda p: bwd(p, need_dx=np.array([True, False])),
        TypeError,
        "need_dx",
        r"got numpy\.ndarray",
    ),
    "need_dW-None": Case(
        lambda p: bwd(p, need_dW=None),
        TypeError,
        "need_dW",
        r"need_dW must be a bool, got None",
    ),
    "need_dW-str": Case(
        lambda p: bwd(p, need_dW="no"),
        TypeError,
        "need_dW",
        r"need_dW must be a bool, got str",
    ),
    # -- Output buffers (each holds a sentinel that must survive) -------------------------
    "out-shape": Case(
        lambda p: fwd(p, out=filled((4, 3))),
        ValueError,
        "out",
        r"out has shape \(4, 3\), expected \(4, 2\)",
    ),
    "out-too-small": Case(
        lambda p: fwd(p, out=filled((3, 2))),
        ValueError,
        "out",
        r"out has shape \(3, 2\), expected \(4, 2\)",
    ),
    "out-flat": Case(
        lambda p: fwd(p, out=filled((8,))), ValueError, "out", r"out has shape \(8,\)"
    ),
    "out-flattened-batch": Case(
        lambda p: fwd(p, x=p["x"].reshape(2, 2, 3), out=filled((4, 2))),
        ValueError,
        "out",
        r"out has shape \(4, 2\), expected \(2, 2, 2\)",
    ),
    "out-0d": Case(lambda p: fwd(p, out=np.array(7.0)), ValueError, "out", r"out has shape \(\)"),
    "out-list": Case(
        lambda p: fwd(p, out=[[0.0, 0.0]] * 4),
        TypeError,
        "out",
        r"out must be a numpy\.ndarray, got list",
    ),
    "out-float32": Case(
        lambda p: fwd(p, out=filled((4, 2), f32)),
        TypeError,
        "out",
        r"out has dtype float32, expected float64",
    ),
    "out-big-endian": Case(
        lambda p: fwd(p, out=filled((4, 2)).astype(">f8")),
        TypeError,
        "out",
        r"out has dtype >f8",
    ),
    "out-F-order": Case(
        lambda p: fwd(p, out=np.asfortranarray(filled((4, 2)))),
        ValueError,
        "out",
        r"out must be C-contiguous",
    ),
    "out-strided": Case(
        lambda p: fwd(p, out=filled((4, 4))[:, ::2]),
        ValueError,
        "out",
        r"out must be C-contiguous",
    ),
    "out-negative-strides": Case(
        lambda p: fwd(p, out=filled((4, 2))[::-1]),
        ValueError,
        "out",
        r"out must be C-contiguous",
    ),
    "out-zero-strides": Case(
        zero_stride_out,
        ValueError,
        "out",
        r"out must be C-contiguous",
    ),
    "out-read-only": Case(
        lambda p: fwd(p, out=readonly(filled((4, 2)))),
        ValueError,
        "out",
        r"out is read-only",
    ),
    "out-misaligned": Case(
        lambda p: fwd(p, out=misaligned((4, 2))),
        ValueError,
        "out",
        r"out is not aligned",
    ),
    "dx-misaligned": Case(
        lambda p: bwd(p, dx=misaligned((4, 3))),
        ValueError,
        "dx",
        r"dx is not aligned",
    ),
    "dW-shape": Case(
        lambda p: bwd(p, dW=filled((2, 3))),
        ValueError,
        "dW",
        r"dW has shape \(2, 3\), expected \(3, 2\)",
    ),
    "db-shape": Case(
        lambda p: bwd(p, db=filled((1, 2))),
        ValueError,
        "db",
        r"db has shape \(1, 2\), expected \(2,\)",
    ),
    "dx-shape-batched": Case(
        lambda p: bwd(
            p, x=p["x"][None], dout=p["dout"][None], out=p["out"][None], dx=filled((4, 3))
        ),
        ValueError,
        "dx",
        r"dx has shape \(4, 3\), expected \(1, 4, 3\)",
    ),
    "dx-float32": Case(
        lambda p: bwd(p, dx=filled((4, 3), f32)),
        TypeError,
        "dx",
        r"dx has dtype float32",
    ),
    "dW-list": Case(
        lambda p: bwd(p, dW=[[0.0] * 2] * 3),
        TypeError,
        "dW",
        r"dW must be a numpy\.ndarray, got list",
    ),
    "dx-without-need_dx": Case(
        lambda p: bwd(p, dx=filled((4, 3)), need_dx=False),
        ValueError,
        "dx",
        r"dx was given but need_dx=False",
    ),
    # With leading batch dimensions the shape of dx was read first and the message was
    # about that (a review's find): the refusal is the same as in 2-D now.
    "dx-without-need_dx-batched": Case(
        lambda p: bwd(batched(p), dx=filled((5, 5)), need_dx=False),
        ValueError,
        "dx",
        r"dx was given but need_dx=False",
    ),
    "need_dx-not-bool-batched": Case(
        lambda p: bwd(batched(p), dx=filled((5, 5)), need_dx="no"),
        TypeError,
        "need_dx",
        r"need_dx must be a bool, got str",
    ),
    "dW-without-need_dW": Case(
        lambda p: bwd(p, dW=filled((3, 2)), need_dW=False),
        ValueError,
        "dW",
        r"dW was given but need_dW=False",
    ),
    "dW-read-only": Case(
        lambda p: bwd(p, dW=readonly(filled((3, 2)))),
        ValueError,
        "dW",
        r"dW is read-only",
    ),
    "db-read-only": Case(
        lambda p: bwd(p, db=readonly(filled((2,)))),
        ValueError,
        "db",
        r"db is read-only",
    ),
    "dx-F-order": Case(
        lambda p: bwd(p, dx=np.asfortranarray(filled((4, 3)))),
        ValueError,
        "dx",
        r"dx must be C-contiguous",
    ),
    # Batched: out and dx are reshaped to 2-D views, which an F-order buffer is not (the
    # result went into a copy and the caller's buffer kept its sentinel; a mutation that
    # removed the check went unseen: helper-81).
    "out-F-order-batched": Case(
        lambda p: fwd(batched(p), out=np.asfortranarray(filled((2, 2, 2)))),
        ValueError,
        "out",
        r"out must be C-contiguous",
    ),
    "dx-F-order-batched": Case(
        lambda p: bwd(batched(p), dx=filled((3, 2, 2)).transpose(2, 1, 0)),
        ValueError,
        "dx",
        r"dx must be C-contiguous",
    ),
    "db-strided": Case(
        lambda p: bwd(p, db=filled((4,))[::2]),
        ValueError,
        "db",
        r"db must be C-contiguous",
    ),
    # -- A buffer that overlaps an input or another buffer -------------------------------
    # shared(func, name=(start, shape)): arguments placed at element offsets of one array.
    "out-is-x": Case(
        shared("forward", x=(0, (4, 2)), W=(8, (2, 2)), b=(12, (2,)), out=(0, (4, 2))),
        ValueError,
        "out",
        r"out overlaps x",
    ),
    "out-partly-overlaps-x": Case(
        shared("forward", x=(0, (4, 3)), out=(10, (4, 2))),
        ValueError,
        "out",
        r"out overlaps x",
    ),
    "out-overlaps-last-element-of-x": Case(
        shared("forward", x=(0, (4, 3)), out=(11, (4, 2))),
        ValueError,
        "out",
        r"out overlaps x",
    ),
    "out-overlaps-negative-strided-x": Case(
        negative_x_under_out,
        ValueError,
        "out",
        r"out overlaps x",
    ),
    "out-contains-W": Case(
        shared("forward", W=(1, (3, 2)), out=(0, (4, 2))),
        ValueError,
        "out",
        r"out overlaps W",
    ),
    "out-overlaps-b": Case(
        shared("forward", b=(0, (2,)), out=(1, (4, 2))),
        ValueError,
        "out",
        r"out overlaps b",
    ),
    "out-overlaps-x-batched": Case(
        shared("forward", x=(0, (2, 2, 3)), W=(12, (3, 3)), b=(21, (3,)), out=(0, (2, 2, 3))),
        ValueError,
        "out",
        r"out overlaps x",
    ),
    "out-overlaps-x-batched-copied": Case(copied_x_under_out, ValueError, "out", r"out overlaps x"),
    "dW-overlaps-dout-batched-copied": Case(
        copied_dout_under_dW, ValueError, "dW", r"dW overlaps dout"
    ),
    "dW-is-W": Case(lambda p: bwd(p, dW=p["W"]), ValueError, "dW", r"dW overlaps W"),
    "dx-partly-overlaps-x": Case(
        shared("backward", x=(0, (4, 3)), dx=(9, (4, 3))),
        ValueError,
        "dx",
        r"dx overlaps x",
    ),
    "dx-overlaps-bwd-out": Case(
        shared("backward", out=(0, (4, 2)), dx=(6, (4, 3))),
        ValueError,
        "dx",
        r"dx overlaps out",
    ),
    "db-overlaps-dout": Case(
        shared("backward", dout=(0, (4, 2)), db=(7, (2,))),
        ValueError,
        "db",
        r"db overlaps dout",
    ),
    "dW-overlaps-db": Case(
        shared("backward", dW=(0, (3, 2)), db=(5, (2,))),
        ValueError,
        "dW",
        r"dW overlaps db",
    ),
    "dx-overlaps-dW": Case(
        shared("backward", dx=(0, (4, 3)), dW=(11, (3, 2))),
        ValueError,
        "dx",
        r"dx overlaps dW",
    ),
    # -- Strides and alignment the core cannot take ---------------------------------------
    "x-misaligned": Case(
        lambda p: fwd(p, x=misaligned((4, 3))),
        ValueError,
        "x",
        r"x is not aligned .* pass x\.copy\(\)",
    ),
    "W-misaligned": Case(
        lambda p: fwd(p, W=misaligned((3, 2))), ValueError, "W", r"W is not aligned"
    ),
    "x-stride-not-whole-elements": Case(
        lambda p: fwd(p, x=np.zeros((4, 3), dtype=[("a", f64), ("c", f32)])["a"]),
        ValueError,
        "x",
        r"x has strides that are not a whole number of elements",
    ),
    "dout-stride-not-whole-elements": Case(
        lambda p: bwd(p, dout=np.zeros((4, 2), dtype=[("a", f64), ("c", f32)])["a"]),
        ValueError,
        "dout",
        r"dout has strides that are not a whole number",
    ),
    # -- Beyond the BLAS integer range: refused before any allocation or packing copy -----
    "fwd-n_in-over-int32": Case(
        huge_forward(2**20, INT_MAX + 1, 2),
        ValueError,
        "n_in",
        r"n_in = 2147483648 exceeds the BLAS integer range",
    ),
    "fwd-n-over-int32": Case(
        huge_forward(BIG, 3, 2**20),
        ValueError,
        "n",
        r"\bn = 1099511627776 exceeds",
    ),
    "fwd-n_out-over-int32": Case(
        huge_forward(2**20, 3, INT_MAX + 1),
        ValueError,
        "n_out",
        r"n_out = 2147483648 exceeds",
    ),
    "fwd-n_in-over-int32-with-out": Case(
        huge_forward(2, BIG, 2, with_out=True),
        ValueError,
        "n_in",
        r"n_in = 1099511627776 exceeds",
    ),
    "fwd-batch-rows-over-int32": Case(
        huge_batched_forward,
        ValueError,
        "n",
        r"\bn = 1099511627776 exceeds",
    ),
    "bwd-n_in-over-int32": Case(
        huge_backward(2**20, INT_MAX + 1, 2**20),
        ValueError,
        "n_in",
        r"n_in = 2147483648 exceeds",
    ),
    "bwd-n-over-int32": Case(
        huge_backward(BIG, 2**20, 3),
        ValueError,
        "n",
        r"\bn = 1099511627776 exceeds",
    ),
    "bwd-n_out-over-int32": Case(
        huge_backward(2**20, 3, INT_MAX + 1),
        ValueError,
        "n_out",
        r"n_out = 2147483648 exceeds",
    ),
}


# -- backward_from_preactivation: dZ in place of dout and out ------------------------------


def bfp(p: Args, watch: list[np.ndarray] | None = None, **change: Any):
    args = {"dZ": p["dout"], "x": p["x"], "W": p["W"], **change}
    return "backward_from_preactivation", args, watch or []


def huge_bfp(n: int, n_in: int, n_out: int) -> Builder:
    def build(p: Args):
        shapes = {"dZ": (n, n_out), "x": (n, n_in), "W": (n_in, n_out)}
        pairs = {name: _huge(shape) for name, shape in shapes.items()}
        args = {name: view for name, (_, view) in pairs.items()}
        return "backward_from_preactivation", args, [source for source, _ in pairs.values()]

    return build


PREACTIVATION_CASES: dict[str, Case] = dict(
    {
        "bfp-dZ-None": Case(
            lambda p: bfp(p, dZ=None),
            TypeError,
            "dZ",
            r"dZ must be a numpy\.ndarray, got None",
        ),
        "bfp-dZ-int64": Case(
            lambda p: bfp(p, dZ=p["dout"].astype(np.int64)),
            TypeError,
            "dZ",
            r"dZ has dtype int64",
        ),
        "bfp-dZ-float32-batched-copied": Case(
            copied_batch("backward_from_preactivation", "dZ"),
            TypeError,
            "dZ",
            r"dZ float32, x float64",
        ),
        "bfp-mixed-x-float32": Case(
            lambda p: bfp(p, x=p["x"].astype(f32)),
            TypeError,
            "x",
            r"x float32",
        ),
        "bfp-dZ-shape": Case(
            lambda p: bfp(p, dZ=np.ones((4, 3))),
            ValueError,
            "dZ",
            r"dZ has shape \(4, 3\), expected \(4, 2\)",
        ),
        "bfp-dZ-batch-mismatch": Case(
            lambda p: bfp(p, x=p["x"].reshape(2, 2, 3), dZ=p["dout"].reshape(1, 4, 2)),
            ValueError,
            "dZ",
            r"dZ has shape \(1, 4, 2\)",
        ),
        "bfp-need_dx-None": Case(
            lambda p: bfp(p, need_dx=None),
            TypeError,
            "need_dx",
            r"need_dx must be a bool, got None",
        ),
        "bfp-need_dW-str": Case(
            lambda p: bfp(p, need_dW="no"),
            TypeError,
            "need_dW",
            r"need_dW must be a bool, got str",
        ),
        "bfp-dx-read-only": Case(
            lambda p: bfp(p, dx=readonly(filled((4, 3)))),
            ValueError,
            "dx",
            r"dx is read-only",
        ),
        "bfp-dW-overlaps-x": Case(
            shared("backward_from_preactivation", x=(0, (4, 3)), dW=(10, (3, 2))),
            ValueError,
            "dW",
            r"dW overlaps x",
        ),
        "bfp-n_in-over-int32": Case(
            huge_bfp(2**20, INT_MAX + 1, 2**20),
            ValueError,
            "n_in",
            r"n_in = 2147483648 exceeds",
        ),
    }
)


# -- Layer objects: SigmoidLayer and Sequential ----------------------------------------------


def layer_after_forward(p: Args, n_in: int = 3, n_out: int = 2, reuse_buffers: bool = False):
    """A float64 layer that has run one forward on the problem's x (so backward is valid),
    and the arrays a failing call must leave alone: parameters, gradients, last output."""
    layer = siglayer.SigmoidLayer(n_in, n_out, dtype=f64, seed=0, reuse_buffers=reuse_buffers)
    out = layer.forward(p["x"] if n_in == 3 else np.ones((4, n_in)))
    layer.backward(np.ones_like(out))
    return layer, [layer.W, layer.b, layer.dW, layer.db, out]


def on_layer(method: str, n_in: int = 3, n_out: int = 2, **args: Any) -> Builder:
    """layer.<method>(**args), where an arg given as a callable is built from the problem."""

    def build(p: Args):
        layer, watch = layer_after_forward(p, n_in, n_out)
        built = {k: (v(p) if callable(v) else v) for k, v in args.items()}
        return getattr(layer, method), built, watch

    return build


def bce_gradient(p: Args):
    """BCELoss().backward() for the layer's (4, 2) output: a dL/dZ."""
    loss_fn = siglayer.losses.BCELoss()
    loss_fn(np.full((4, 2), 0.5), np.ones((4, 2)))
    return loss_fn.backward()


def mse_gradient(p: Args):
    """MSELoss().backward() for the layer's (4, 2) output: a dL/dout."""
    loss_fn = siglayer.losses.MSELoss()
    loss_fn(np.full((4, 2), 0.5), np.ones((4, 2)))
    return loss_fn.backward()


def forward_own_output(p: Args):
    """A square layer (reuse_buffers=True) fed its own output buffer: the result would
    overwrite its input."""
    layer, watch = layer_after_forward(p, 3, 3, reuse_buffers=True)
    return layer.forward, {"x": watch[-1]}, watch


def sequential(*layer_specs: tuple[int, int, type] | str) -> Builder:
    """Sequential(*layers) from (n_in, n_out, dtype) specs; "same" repeats the last layer."""

    def build(p: Args):
        layers: list[Any] = []
        for spec in layer_specs:
            if spec == "same":
                layers.append(layers[-1])
            elif isinstance(spec, tuple):
                layers.append(siglayer.SigmoidLayer(spec[0], spec[1], dtype=spec[2], seed=0))
            else:
                layers.append(spec)
        return (lambda layers: siglayer.Sequential(*layers)), {"layers": layers}, []

    return build


def sequential_forward(p: Args):
    net = siglayer.Sequential(
        siglayer.SigmoidLayer(3, 4, dtype=f64, seed=0),
        siglayer.SigmoidLayer(4, 2, dtype=f64, seed=1),
    )
    watch = [a for q in net.parameters() for a in (q.value, q.grad)]
    return net.forward, {"x": np.ones((4, 5))}, watch


LAYER_CASES: dict[str, Case] = dict(
    {
        "layer-n_in-zero": Case(
            lambda p: (siglayer.SigmoidLayer, {"n_in": 0, "n_out": 2}, []),
            ValueError,
            "n_in",
            r"n_in must be >= 1, got 0",
        ),
        "layer-n_out-float": Case(
            lambda p: (siglayer.SigmoidLayer, {"n_in": 3, "n_out": 2.0}, []),
            TypeError,
            "n_out",
            r"n_out must be an int, got float",
        ),
        "layer-dtype-int32": Case(
            lambda p: (siglayer.SigmoidLayer, {"n_in": 3, "n_out": 2, "dtype": np.int32}, []),
            TypeError,
            "dtype",
            r"dtype must be float32, float64 or bfloat16, got int32",
        ),
        "layer-seed-str": Case(
            lambda p: (siglayer.SigmoidLayer, {"n_in": 3, "n_out": 2, "seed": "0"}, []),
            TypeError,
            "seed",
            r"seed must be an int",
        ),
        "layer-forward-x-list": Case(
            on_layer("forward", x=lambda p: p["x"].tolist()),
            TypeError,
            "x",
            r"x must be a numpy\.ndarray, got list",
        ),
        "layer-forward-x-float32": Case(
            on_layer("forward", x=lambda p: p["x"].astype(f32)),
            TypeError,
            "x",
            r"x has dtype float32 but this layer computes in float64",
        ),
        "layer-forward-x-features": Case(
            on_layer("forward", x=np.ones((4, 5))),
            ValueError,
            "x",
            r"x has shape \(4, 5\), expected \(\.\.\., 3\)",
        ),
        "layer-forward-x-0d": Case(
            on_layer("forward", x=np.array(1.0)),
            ValueError,
            "x",
            r"x has shape \(\)",
        ),
        "layer-forward-x-matrix": Case(
            on_layer("forward", x=lambda p: p["x"].view(np.matrix)),
            TypeError,
            "x",
            r"numpy\.matrix",
        ),
        "layer-forward-own-output": Case(
            forward_own_output,
            ValueError,
            "x",
            r"x shares memory with this layer's output buffer",
        ),
        "layer-backward-bce-gradient": Case(
            on_layer("backward", dout=bce_gradient),
            TypeError,
            "dout",
            r"dout is dL/dZ.*backward_from_preactivation",
        ),
        "layer-backward_from_preactivation-mse-gradient": Case(
            on_layer("backward_from_preactivation", dZ=mse_gradient),
            TypeError,
            "dZ",
            r"dZ is dL/dout.*pass it to backward\(",
        ),
        "layer-backward-dout-list": Case(
            on_layer("backward", dout=[[1.0, 1.0]] * 4),
            TypeError,
            "dout",
            r"dout must be a numpy\.ndarray, got list",
        ),
        "layer-backward-dout-shape": Case(
            on_layer("backward", dout=np.ones((4, 3))),
            ValueError,
            "dout",
            r"dout has shape \(4, 3\) but the last forward produced \(4, 2\)",
        ),
        "layer-backward-dout-float32": Case(
            on_layer("backward", dout=np.ones((4, 2), f32)),
            TypeError,
            "dout",
            # Names only what the user passed (not the layer's saved x and out).
            r"^dout has dtype float32 but this layer computes in float64; pass "
            r"dout\.astype\(np\.float64\)",
        ),
        "layer-backward-need_dx-None": Case(
            on_layer("backward", dout=np.ones((4, 2)), need_dx=None),
            TypeError,
            "need_dx",
            r"need_dx must be a bool",
        ),
        "layer-bfp-dZ-shape": Case(
            on_layer("backward_from_preactivation", dZ=np.ones((2, 2))),
            ValueError,
            "dZ",
            r"dZ has shape \(2, 2\) but the last forward produced \(4, 2\)",
        ),
        "sequential-empty": Case(
            sequential(),
            ValueError,
            "layer",
            r"Sequential needs at least one layer",
        ),
        "sequential-not-a-layer": Case(
            sequential((3, 2, f64), "dense"),
            TypeError,
            "layer",
            r"layer 1 is a str, not a layer",
        ),
        "sequential-sizes": Case(
            sequential((3, 2, f64), (4, 2, f64)),
            ValueError,
            "layer",
            r"layer 1 takes 4 inputs but layer 0 gives 2 outputs",
        ),
        "sequential-mixed-dtypes": Case(
            sequential((3, 2, f32), (2, 2, f64)),
            TypeError,
            "layer",
            r"layer 0 computes in float32 but layer 1 in float64",
        ),
        "sequential-same-layer-twice": Case(
            sequential((2, 2, f64), "same"),
            ValueError,
            "layer",
            r"the same layer object appears twice",
        ),
        "sequential-forward-x-features": Case(
            sequential_forward,
            ValueError,
            "x",
            r"x has shape \(4, 5\)",
        ),
    }
)


CASES: dict[str, Case] = {**FUNCTIONAL_CASES, **PREACTIVATION_CASES, **LAYER_CASES}
assert len(CASES) == len(FUNCTIONAL_CASES) + len(PREACTIVATION_CASES) + len(LAYER_CASES)


def _snapshot(a: np.ndarray) -> tuple[bytes, bool]:
    return np.array(a, copy=True, subok=False).tobytes(), bool(a.flags.writeable)


def _watched(args: Args, watch: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every array whose memory the call could touch: the arguments (unless they are
    huge zero-stride views, watched through their source instead) and the extras."""
    arrays = {k: v for k, v in args.items() if isinstance(v, np.ndarray) and v.size <= 10**6}
    arrays.update({f"watch{i}": w for i, w in enumerate(watch)})
    return arrays


@pytest.mark.parametrize("case", list(CASES))
def test_bad_call(case: str) -> None:
    build, error, argument, match = CASES[case]
    func, args, watch = build(problem())
    arrays = _watched(args, watch)
    before = {k: _snapshot(v) for k, v in arrays.items()}
    tracemalloc.start()
    try:
        with pytest.raises(error) as raised:
            (getattr(siglayer, func) if isinstance(func, str) else func)(**args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(raised.value)
    assert re.search(match, message), f"message {message!r} does not match {match!r}"
    assert re.search(rf"(?<![\w.]){re.escape(argument)}\b", message), (
        f"{argument!r} not named in {message!r}"
    )
    for name, array in arrays.items():
        assert _snapshot(array) == before[name], f"{name} changed by a failing call"
    # Python-side allocations (NumPy's included) stay small: nothing was sized by the
    # bad argument.
    assert peak < 1 << 20, f"{peak} bytes allocated before refusing"


def test_catalogue_size() -> None:
    """The issue asks for at least 40 distinct bad calls (dict keys are distinct); and
    docs/reliability.md gives the counts of this file (a review found them stale)."""
    assert len(CASES) >= 40
    doc = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
    if not doc.exists():  # tests run from an sdist or a copy without the docs
        pytest.skip("docs/reliability.md is not beside the tests")
    text = " ".join(doc.read_text(encoding="utf-8").split())
    counts = (len(CASES), len(FUNCTIONAL_CASES), len(PREACTIVATION_CASES), len(LAYER_CASES))
    assert "**{} distinct bad calls**: {} across".format(*counts[:2]) in text
    assert (
        "{} on `backward_from_preactivation`, {} on the layer objects".format(*counts[2:]) in text
    )


def test_set_num_threads_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"n must be between 1 and 2\*\*31 - 1, got 0"):
        siglayer.set_num_threads(0)
    with pytest.raises(ValueError, match=r"n must be between 1 and 2\*\*31 - 1, got -3"):
        siglayer.set_num_threads(-3)
    with pytest.raises(ValueError, match=r"n must be between 1 and 2\*\*31 - 1, got 10{12}"):
        siglayer.set_num_threads(10**12)
    with pytest.raises(TypeError, match="n must be an int, got float"):
        siglayer.set_num_threads(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="n must be an int, got NoneType"):
        siglayer.set_num_threads(None)  # type: ignore[arg-type]


# -- Accepted layouts: computed, and equal to the reference -------------------------------


def _reference_check(x, W, b, dout, got_out, got_grads) -> None:
    x, W, b, dout = (np.asarray(a) for a in (x, W, b, dout))
    want_out = reference.forward(x, W, b)
    assert_within(got_out, want_out, forward_bound(x, W, b, want_out), "out")
    want = reference.backward(dout, x, W, got_out)
    bounds = backward_bounds(dout, x, W, got_out)
    for name, got, ref, bound in zip(("dx", "dW", "db"), got_grads, want, bounds, strict=True):
        assert_within(got, ref, bound, name)


ACCEPTED_LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # Broadcast (zero-stride) inputs are read-only views; they are packed, not refused.
    "zero-stride-rows": lambda a: np.broadcast_to(a[:1], a.shape),
    "zero-stride-all": lambda a: np.broadcast_to(a[:1, :1], a.shape),
    "negative-rows": lambda a: np.ascontiguousarray(a[::-1])[::-1],
    "negative-both": lambda a: np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1],
    "negative-F": lambda a: np.asfortranarray(a[::-1])[::-1],
    "read-only": lambda a: readonly(a.copy()),
}


@pytest.mark.parametrize("dtype", [f32, f64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", list(ACCEPTED_LAYOUTS))
def test_accepted_input_layouts(layout: str, dtype: type) -> None:
    """Zero and negative strides on inputs are accepted and give the reference result
    (outputs, by contrast, must be C-contiguous: see the catalogue above)."""
    p = problem(dtype, n=9, n_in=7, n_out=5)
    make = ACCEPTED_LAYOUTS[layout]
    x, W, dout = make(p["x"]), make(p["W"]), make(p["dout"])
    b = make(p["b"][None])[0]  # the bias with the same kind of stride
    out = siglayer.forward(x, W, b)
    grads = siglayer.backward(dout, x, W, make(out))
    _reference_check(x, W, b, dout, out, grads)


def _sparse_zeros(nbytes: int) -> np.ndarray:
    """nbytes of zeros backed by untouched private pages (MAP_NORESERVE): no memory is
    committed until written. Skips where the kernel refuses the mapping."""
    no_reserve = getattr(mmap, "MAP_NORESERVE", 0x4000)
    try:
        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | no_reserve)
    except (OSError, OverflowError) as e:
        pytest.skip(f"cannot map {nbytes} bytes: {e}")
    return np.frombuffer(buffer, np.uint8)


def test_row_stride_beyond_blas_range_is_packed() -> None:
    """Small views into a huge array: their row (or column) strides do not fit the BLAS
    integer, so they are packed, not refused (x, W, b and both inputs of backward)."""
    row = INT_MAX + 65  # elements per row of the huge parent, 3 rows: 25.8 GB of address space
    parent = _sparse_zeros(3 * row * 4).view(f32).reshape(3, row)
    rng = np.random.default_rng(1)
    parent[:, :32] = rng.standard_normal((3, 32))  # touches three pages
    x = parent[:2, :8]  # C-like, row stride 2^31 + 64
    W = parent[:, 8:16].T  # (8, 3), F-like, column stride 2^31 + 64
    b = parent[0, 16:19]
    dout = parent[:2, 19:22]
    out = siglayer.forward(x, W, b)
    parent[:2, 22:25] = out
    grads = siglayer.backward(dout, x, W, parent[:2, 22:25])
    _reference_check(x, W, b, dout, out, grads)
    # backward_from_preactivation reads a dZ of few outputs in rows, and the BLAS reads it
    # too for dW of an F-ordered x: a row stride truncated to 32 bits gave a wrong dW
    # with no error (a review's find).
    dZ = parent[:2, 25:28]
    for x_order in (x, np.asfortranarray(x)):
        got = siglayer.backward_from_preactivation(dZ, x_order, W)
        want = reference.backward_from_preactivation(np.array(dZ), np.array(x_order), W)
        for name, g, r, bound in zip(
            ("dx", "dW", "db"), got, want, gradient_bounds(np.array(dZ), x_order, W), strict=True
        ):
            assert_within(g, r, bound, name)


def test_adjacent_buffers_are_accepted() -> None:
    """Overlap is judged on the bytes each array can touch: neighbours in one buffer are fine."""
    p = problem()
    shared = np.zeros(12 + 8 + 6 + 2 + 12)
    x = shared[:12].reshape(4, 3)
    x[...] = p["x"]
    out = shared[12:20].reshape(4, 2)
    assert siglayer.forward(x, p["W"], p["b"], out=out) is out
    np.testing.assert_array_equal(out, p["out"])
    dW, db, dx = shared[20:26].reshape(3, 2), shared[26:28], shared[28:].reshape(4, 3)
    got = siglayer.backward(p["dout"], x, p["W"], out, dx=dx, dW=dW, db=db)
    for g, r in zip(got, siglayer.backward(p["dout"], p["x"], p["W"], p["out"]), strict=True):
        np.testing.assert_array_equal(g, r)


def test_the_misalignment_hint_works() -> None:
    """What the message says to do (x.copy()) is accepted and gives the aligned result;
    np.ascontiguousarray would hand back the same misaligned array."""
    x = misaligned((4, 3))
    W, b = np.full((3, 2), 0.5), np.zeros(2)
    assert np.ascontiguousarray(x) is x
    with pytest.raises(ValueError, match=r"pass x\.copy\(\)"):
        siglayer.forward(x, W, b)
    np.testing.assert_array_equal(
        siglayer.forward(x.copy(), W, b), siglayer.forward(7.0 + np.zeros((4, 3)), W, b)
    )


@pytest.mark.parametrize("dtype", [f32, f64])
def test_empty_arrays_at_odd_addresses_are_accepted(dtype: type) -> None:
    """An array of no elements has nothing to misalign (NumPy calls it aligned at any
    address); a distributed Dask worker unpickles empty row chunks at odd offsets, and
    the core refused them, intermittently failing whole computations (a review's find)."""

    def empty_at_odd_address(shape: tuple[int, ...]) -> np.ndarray:
        # (an empty slice of misaligned() may be given an aligned address by NumPy)
        return np.frombuffer(bytearray(64), dtype, count=0, offset=1).reshape(shape)

    W, b = np.full((3, 2), 0.5, dtype), np.zeros(2, dtype)
    x, rows = empty_at_odd_address((0, 3)), empty_at_odd_address((0, 2))
    assert x.flags.aligned and x.ctypes.data % np.dtype(dtype).itemsize != 0
    assert siglayer.forward(x, W, b).shape == (0, 2)
    dx, dW, db = siglayer.backward(rows, x, W, rows)
    assert dx.shape == (0, 3) and (dW == 0).all() and (db == 0).all()
    dx, dW, db = siglayer.backward_from_preactivation(rows, x, W)
    assert dx.shape == (0, 3) and (dW == 0).all() and (db == 0).all()
    out = np.frombuffer(bytearray(64), dtype, count=0, offset=1).reshape(0, 2)
    assert siglayer.forward(x, W, b, out=out) is out
    assert siglayer.losses.bce_loss(rows, rows, reduction="sum") == 0.0
    assert siglayer.losses.mse_loss(rows, rows, reduction="sum") == 0.0
    # One element is enough to be refused.
    with pytest.raises(ValueError, match="x is not aligned"):
        siglayer.forward(misaligned((1, 3), dtype), W, b)


def _has_bfloat16() -> bool:
    """ml-dtypes importable (the test extra has it; a bare pytest run may not)."""
    try:
        siglayer._dtypes.bfloat16()
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("dtype", [f32, f64])
def test_misaligned_arrays_are_refused_beyond_the_layer(dtype: type) -> None:
    """The losses, sigmoid, the bfloat16 conversion and the optimizers read arrays through
    their data pointers too: a view starting inside an element is refused there as by the
    layer (it was read unchecked, undefined behaviour; a review's find), naming the array,
    and the hint works. Nothing is written on a refusal."""
    good = np.array([0.25, 0.75, 0.5, 1.0], dtype)
    bad = misaligned((4,), dtype)
    bad[...] = good
    with pytest.raises(ValueError, match=r"out is not aligned .* pass out\.copy\(\)"):
        siglayer.losses.bce_loss(bad, good)
    with pytest.raises(ValueError, match="y is not aligned"):
        siglayer.losses.mse_loss(good, bad)
    assert siglayer.losses.bce_loss(bad.copy(), good) == siglayer.losses.bce_loss(good, good)
    with pytest.raises(ValueError, match="z is not aligned"):
        siglayer._core.sigmoid(bad)
    if dtype is f32 and _has_bfloat16():
        with pytest.raises(ValueError, match="a is not aligned"):
            siglayer._core.to_bfloat16(bad)
    value = misaligned((3,), dtype)
    before = value.copy()
    with pytest.raises(ValueError, match=r"w: value is not aligned .* Parameter with aligned"):
        siglayer.optim.SGD([siglayer.Parameter("w", value, np.ones(3, dtype))], lr=0.1)
    np.testing.assert_array_equal(value, before)
    # A bfloat16 layer rounds a float32 x into a new array anyway: a misaligned one is
    # copied, not refused (the conversion's own refusal named it "a").
    if _has_bfloat16():
        layer = siglayer.SigmoidLayer(4, 2, dtype="bfloat16", seed=0)
        x = misaligned((3, 4), f32)
        x[...] = np.linspace(-1, 1, 12, dtype=f32).reshape(3, 4)
        np.testing.assert_array_equal(layer(x).astype(f32), layer(x.copy()).astype(f32))


def test_layer_need_dx_takes_numpy_bools() -> None:
    """As the functional API does: need_dx=np.bool_(False) is False, not a TypeError."""
    layer = siglayer.SigmoidLayer(3, 2, dtype=f64, seed=0)
    layer(np.ones((4, 3)))
    assert layer.backward(np.ones((4, 2)), need_dx=np.bool_(False)) is None
    assert layer.backward(np.ones((4, 2)), need_dx=np.bool_(True)).shape == (4, 3)
