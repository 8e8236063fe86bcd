"""siglayer.jax against the pure-JAX layer, both under jax.jit: forward, and forward +
backward (out and the vjp's dx, dW, db), at the sizes of ``bench/run.py``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/jax_layer.py [--sizes T,S,M,L,N,XL]

Contenders: "ffi" (siglayer's XLA FFI handler), "callback" (jax.pure_callback into
siglayer.forward / backward) and "jax" (jax.nn.sigmoid(x @ W + b), gradients by JAX's
autodiff, compiled by XLA). Before timing, every contender's results (out; dx, dW and db
from a random dout) are checked against siglayer.reference in float64 on the same inputs,
each to 1e-5 (float32) or 1e-12 (float64) of the result's largest magnitude. The
contenders take turns in interleaved rounds, each call followed by block_until_ready; the
table shows medians and the ratios ffi/jax and callback/jax (< 1: siglayer is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import siglayer
import siglayer.jax as sj
from harness import SIZES, build_summary, check_close, cpu_model  # beside this file
from siglayer import reference

jax.config.update("jax_enable_x64", True)

RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def layers():
    found = {"jax": lambda x, W, b: jax.nn.sigmoid(x @ W + b)}
    if sj.ffi_available():
        found["ffi"] = lambda x, W, b: sj.sigmoid_linear(x, W, b, implementation="ffi")
    found["callback"] = lambda x, W, b: sj.sigmoid_linear(x, W, b, implementation="callback")
    return found


def compiled(f, passes):
    if passes == "fwd":
        return jax.jit(f)

    def step(x, W, b, dout):
        out, vjp = jax.vjp(f, x, W, b)
        return (out, *vjp(dout))

    return jax.jit(step)


def check(results, expected, dtype, label):
    assert len(results) == len(expected), f"{label}: {len(results)} results"
    for what, got, want in zip(("out", "dx", "dW", "db"), results, expected, strict=False):
        check_close(f"{label}: {what}", got, want, RTOL[dtype])


def measure(size, dtype, passes, budget):
    n, n_in, n_out = SIZES[size]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, n_in)).astype(dtype))
    W = jnp.asarray((rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype))
    b = jnp.asarray(rng.standard_normal(n_out).astype(dtype))
    dout = jnp.asarray(rng.standard_normal((n, n_out)).astype(dtype))
    args = (x, W, b) if passes == "fwd" else (x, W, b, dout)
    calls = {name: compiled(f, passes) for name, f in layers().items()}
    x64, W64, b64, d64 = (np.asarray(a, dtype=np.float64) for a in (x, W, b, dout))
    out64 = reference.forward(x64, W64, b64)
    expected = (out64,) if passes == "fwd" else (out64, *reference.backward(d64, x64, W64, out64))
    for name, call in calls.items():  # compile, warm up, check
        got = jax.block_until_ready(call(*args))
        check(got if isinstance(got, tuple) else (got,), expected, dtype, f"{size} {name}")
    times = {name: [] for name in calls}
    start = time.perf_counter()
    rounds = 0
    while rounds < 5 or (time.perf_counter() - start < budget and rounds < 200):
        for name, call in calls.items():
            # Several calls per sample for the short sizes, so the timer's resolution and
            # the loop do not dominate.
            repeat = max(1, int(2e-3 / max(times[name][-1], 1e-7))) if times[name] else 1
            t0 = time.perf_counter()
            for _ in range(repeat):
                jax.block_until_ready(call(*args))
            times[name].append((time.perf_counter() - t0) / repeat)
        rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}


def show(seconds):
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def main():
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n", 1)[0].split())  # the first paragraph
    )
    parser.add_argument("--sizes", default="T,S,M,L,N,XL")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per cell (>= 5 rounds)")
    args = parser.parse_args()
    names = list(layers())
    print(
        f"jax {jax.__version__}, siglayer {siglayer.__version__} ({siglayer.get_num_threads()} "
        f"threads, {build_summary()}), FFI "
        f"{'built' if sj.ffi_available() else 'not built'}, {jax.devices()[0].platform}\n"
        f"CPU: {cpu_model()}"
    )
    others = [n for n in names if n != "jax"]
    header = ["size", "dtype", "pass", *names, *(f"{n}/jax" for n in others)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for size in args.sizes.split(","):
        for dtype in (np.float32, np.float64):
            for passes in ("fwd", "fwd+bwd"):
                t = measure(size, dtype, passes, args.budget)
                row = [size, np.dtype(dtype).name, passes, *(show(t[n]) for n in names)]
                row += [f"{t[n] / t['jax']:.2f}" for n in others]
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
