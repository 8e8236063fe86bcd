"""Layers with few outputs: siglayer float32 and bfloat16 (or float64) against PyTorch
(and NumPy), sweeping n_out.

A layer with fewer than 12 outputs (a logistic-regression or multi-label head) takes
row_dots for forward, col_dots for dW and row_combos for dx (cpp/siglayer/layer_detail.hpp)
in every dtype, the BLAS from 12 on, but for dx, which row_combos makes up to 64 outputs
from 16 rows (bfloat16's on its convert path). This sweeps n_out across those cuts at
n x n_in (8192 x 256 by default), forward and forward + backward (with dx), one process,
contenders taking turns (siglayer._timing.interleaved_medians, medians of --rounds
rounds):

- ``f32``, ``bf16``: siglayer on float32, and on bfloat16 x, W and dout (float32 b);
- ``f32/g``, ``bf16/g``: the same through the GEMM path every other layer takes
  (``_core.select_few_outputs("gemm")`` before each call, ``"kernels"`` after): what
  the kernels replaced;
- ``torch``, ``torch16``: ``sigmoid(addmm(b, x, W))`` with autograd, float32 and bfloat16
  parameters (when PyTorch is installed);
- with ``--float64``, instead: ``f64``, ``f64/g``, ``numpy`` (the layer as NumPy users
  write it, siglayer._timing.numpy_layer; siglayer.reference, the oracle, until
  2026-12-06) and ``torch64``.

Before timing, every contender's result (out; dx, dW and db) is checked against the
float64 reference on its own (rounded) inputs: float32 to 1e-5 of the largest magnitude,
float64 to 1e-12, bfloat16 out to 2^-7 and its gradients to 2^-6 (roundings of out, dZ
and the result, float32 sums).

    python bench/narrow.py                        # n_out 1 2 4 8 11 12 16, 2 threads
    python bench/narrow.py --threads 1 --rounds 15
    python bench/narrow.py --isa avx2             # another instruction set's kernels
    python bench/narrow.py --n 65536 --n-in 256   # x far past the caches
    python bench/narrow.py --float64              # float64 against NumPy and PyTorch
    python bench/narrow.py --outputs 12,16,32,64,65 --n-in 1024   # dx's row_combos

Prints one row per n_out and pass: the medians and the ratios of the kernels over the
GEMM path, of bfloat16 over float32, and of siglayer over PyTorch (< 1: the first is
faster).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable

import numpy as np

import siglayer
from harness import cpu_model, import_torch, limit_threads
from siglayer import _core, reference
from siglayer._timing import interleaved_medians, numpy_layer

try:
    import ml_dtypes
except ImportError:  # the bfloat16 columns need ml-dtypes
    ml_dtypes = None


def contenders(
    n: int, n_in: int, n_out: int, torch, float64: bool = False
) -> dict[str, dict[str, Callable[[], object]]]:
    rng = np.random.default_rng(n_out)
    base = np.float64 if float64 else np.float32
    x = rng.standard_normal((n, n_in)).astype(base)
    W = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(base)
    b = rng.standard_normal(n_out).astype(base)
    dout = rng.standard_normal((n, n_out)).astype(base)
    arrays = {"f64" if float64 else "f32": (x, W, dout)}
    if ml_dtypes is not None and not float64:
        bf = ml_dtypes.bfloat16
        arrays["bf16"] = (x.astype(bf), W.astype(bf), dout.astype(bf))
    calls: dict[str, dict[str, Callable[[], object]]] = {"fwd": {}, "fwd+bwd": {}}
    # Each contender's inputs as it sees them (rounded to its dtype), for the check.
    inputs: dict[str, tuple[object, ...]] = {}
    for name, (xs, Ws, ds) in arrays.items():
        inputs[name] = inputs[name + "/g"] = (xs, Ws, b, ds)
        calls["fwd"][name] = lambda xs=xs, Ws=Ws: siglayer.forward(xs, Ws, b)

        def step(xs=xs, Ws=Ws, ds=ds):
            out = siglayer.forward(xs, Ws, b)
            return siglayer.backward(ds, xs, Ws, out)

        calls["fwd+bwd"][name] = step
        for pass_name in ("fwd", "fwd+bwd"):
            calls[pass_name][name + "/g"] = through_gemm(calls[pass_name][name])
    if float64:
        inputs["numpy"] = (x, W, b, dout)
        calls["fwd"]["numpy"] = lambda: numpy_layer(x, W, b)[0]

        def nstep():
            return numpy_layer(x, W, b, dout)[1:]  # dx, dW, db

        calls["fwd+bwd"]["numpy"] = nstep
    if torch is not None:
        kinds = [("torch64", torch.float64)] if float64 else []
        kinds = kinds or [("torch", torch.float32), ("torch16", torch.bfloat16)]
        for name, dtype in kinds:
            tx = torch.from_numpy(x).to(dtype)
            tW = torch.from_numpy(W).to(dtype).requires_grad_()
            tb = torch.from_numpy(b).to(dtype).requires_grad_()
            td = torch.from_numpy(dout).to(dtype)
            inputs[name] = tuple(t.detach().double().numpy() for t in (tx, tW, tb, td))
            calls["fwd"][name] = lambda tx=tx, tW=tW, tb=tb: torch.sigmoid(
                torch.addmm(tb.detach(), tx, tW.detach())
            )

            def tstep(tx=tx, tW=tW, tb=tb, td=td):
                tW.grad = tb.grad = None
                x_ = tx.detach().requires_grad_()
                torch.sigmoid(torch.addmm(tb, x_, tW)).backward(td)
                return x_.grad, tW.grad, tb.grad

            calls["fwd+bwd"][name] = tstep
    for pass_name, group in calls.items():
        for name, call in group.items():
            check(f"{name} {pass_name}", call(), *inputs[name])
    return calls


def through_gemm(call: Callable[[], object]) -> Callable[[], object]:
    def call_through_gemm() -> object:
        _core.select_few_outputs("gemm")
        try:
            return call()
        finally:
            _core.select_few_outputs("kernels")

    return call_through_gemm


def check(name: str, result, x, W, b, dout) -> None:
    """A contender's result against the float64 reference on its inputs: out for a
    forward (an array), (dx, dW, db) for a forward + backward (a tuple), as arrays or
    tensors. Tolerances, of the largest magnitude: float32 1e-5, float64 1e-12, bfloat16
    out 2^-7 and gradients 2^-6."""
    x, W, b, dout = (np.asarray(a, np.float64) for a in (x, W, b, dout))
    out = reference.forward(x, W, b)
    if isinstance(result, tuple):
        pairs = zip(("dx", "dW", "db"), result, reference.backward(dout, x, W, out), strict=True)
        bf16_tol = 2.0**-6
    else:
        pairs = iter([("out", result, out)])
        bf16_tol = 2.0**-7
    for what, got, want in pairs:
        got = np.asarray(got.double() if hasattr(got, "double") else got, np.float64)  # tensors
        dtype = getattr(result[0] if isinstance(result, tuple) else result, "dtype", None)
        tol = {"float32": 1e-5, "torch.float32": 1e-5, "float64": 1e-12}
        tol |= {"torch.float64": 1e-12}
        limit = tol.get(str(dtype), bf16_tol) * max(np.abs(want).max(initial=0.0), 1e-30)
        err = np.abs(got - want).max(initial=0.0)
        assert got.shape == want.shape, f"{name} {what}: shape {got.shape}, want {want.shape}"
        assert err <= limit, f"{name} {what}: error {err:.3e} over {limit:.3e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n", 1)[0].split()))
    parser.add_argument("--outputs", default="1,2,4,8,11,12,16", help="n_out values")
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--n-in", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--settle", type=float, default=0.0, help="pause before each turn (s)")
    parser.add_argument("--isa", help="siglayer's kernels for this instruction set")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--float64", action="store_true", help="float64 against NumPy, PyTorch")
    args = parser.parse_args(argv)
    torch = None if args.no_torch else import_torch()
    isa_before = _core.config()["simd"]
    if args.isa:
        _core.select_isa(args.isa)
    cfg = _core.config()
    with contextlib.ExitStack() as stack:
        stack.callback(_core.select_isa, isa_before)
        note = stack.enter_context(limit_threads(args.threads, torch))
        print(
            f"# {cpu_model()}; {args.threads} threads; ISA {cfg['simd']}; "
            f"BLAS {cfg['blas']}; torch {torch.__version__ if torch else 'absent'} {note}"
        )
        print(f"# {args.n} x {args.n_in} x n_out, medians of {args.rounds} interleaved rounds")
        if args.float64:
            names = ["f64", "f64/g", "numpy", "torch64"]
            ratios = {"f64:k/g": ("f64", "f64/g"), "f64/np": ("f64", "numpy")}
            ratios |= {"f64/g/np": ("f64/g", "numpy"), "f64/t64": ("f64", "torch64")}
        else:
            names = ["f32", "f32/g", "bf16", "bf16/g", "torch", "torch16"]
            ratios = {"f32:k/g": ("f32", "f32/g"), "bf16:k/g": ("bf16", "bf16/g")}
            ratios |= {"bf16/f32": ("bf16", "f32"), "f32/t": ("f32", "torch")}
            ratios |= {"bf16/t16": ("bf16", "torch16")}
        head = "".join(f"{c:>10}" for c in names)
        tail = "".join(f"{label:>10}" for label in ratios)
        print(f"{'n_out':>5} {'pass':<8}{head}{tail}")
        for n_out in (int(v) for v in args.outputs.split(",")):
            calls = contenders(args.n, args.n_in, n_out, torch, args.float64)
            for pass_name, group in calls.items():
                # No pause by default, but 20 ms of untimed calls before each turn, as
                # the tables of this script (docs/benchmarks.md) were measured.
                t = interleaved_medians(
                    group, rounds=args.rounds, settle_seconds=args.settle, warmup_seconds=0.02
                )
                cells = "".join(f"{t[c] * 1e3:>8.3f}ms" if c in t else f"{'-':>10}" for c in names)

                def ratio(a: str, b: str, t=t) -> str:
                    return f"{t[a] / t[b]:>10.2f}" if a in t and b in t else f"{'-':>10}"

                cols = "".join(ratio(a, b) for a, b in ratios.values())
                print(f"{n_out:>5} {pass_name:<8}{cells}{cols}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
