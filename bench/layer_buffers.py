"""What fresh results cost: SigmoidLayer's default (a new array per forward and per
backward) against ``reuse_buffers=True`` (the layer's own buffers, no allocation).

One training step of one layer: ``out = layer(x); dx = layer.backward(dout)``, timed
with both layers taking turns (siglayer._timing.interleaved_medians, the median of 31
rounds), for each size of the main benchmark and each dtype. Before timing, the fresh
layer's out, dx, dW and db are checked against siglayer.reference in float64 (float32 to
1e-5 of each result's largest magnitude, float64 to 1e-12), and the reusing layer's to be
bitwise equal to the fresh one's (the same kernels run; only where the result is written
differs).

    python bench/layer_buffers.py                 # T,S,M,L,N, float32 and float64
    python bench/layer_buffers.py --sizes all     # with XL and H
    python bench/layer_buffers.py --settle 0      # no pause between turns

Prints one row per size and dtype: the two medians and fresh/reuse (> 1: the fresh
arrays cost that much more).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import siglayer
from harness import SIZES, check_close, cpu_model
from siglayer import reference
from siglayer._timing import interleaved_medians


def step_of(layer: siglayer.SigmoidLayer, x: np.ndarray, dout: np.ndarray):
    def step():
        out = layer(x)
        dx = layer.backward(dout)
        return out, dx

    return step


def measure(size: str, dtype: type, settle: float) -> tuple[float, float]:
    n, n_in, n_out = SIZES[size]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n_in)).astype(dtype)
    dout = rng.standard_normal((n, n_out)).astype(dtype)
    fresh = siglayer.SigmoidLayer(n_in, n_out, dtype=dtype, seed=1)
    reuse = siglayer.SigmoidLayer(n_in, n_out, dtype=dtype, seed=1, reuse_buffers=True)
    steps = {"fresh": step_of(fresh, x, dout), "reuse": step_of(reuse, x, dout)}
    W64, b64 = fresh.W.astype(np.float64), fresh.b.astype(np.float64)
    (out_f, dx_f), (out_r, dx_r) = steps["fresh"](), steps["reuse"]()
    x64, d64 = x.astype(np.float64), dout.astype(np.float64)
    out64 = reference.forward(x64, W64, b64)
    dx64, dW64, db64 = reference.backward(d64, x64, W64, out64)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for what, got, want in (
        ("out", out_f, out64),
        ("dx", dx_f, dx64),
        ("dW", fresh.dW, dW64),
        ("db", fresh.db, db64),
    ):
        check_close(f"{size} {np.dtype(dtype)}: {what}", got, want, rtol)
    assert out_f is not out_r and np.array_equal(out_f, out_r), "out differs"
    assert np.array_equal(dx_f, dx_r), "dx differs"
    assert np.array_equal(fresh.dW, reuse.dW) and np.array_equal(fresh.db, reuse.db), "dW/db differ"
    assert steps["reuse"]()[0] is out_r, "reuse_buffers=True did not reuse"
    times = interleaved_medians(steps, settle_seconds=settle)
    return times["fresh"], times["reuse"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n", 1)[0].split())  # the first paragraph
    )
    parser.add_argument("--sizes", default="T,S,M,L,N", help="comma-separated, or 'all'")
    parser.add_argument("--settle", type=float, default=0.1, help="pause before each turn (s)")
    args = parser.parse_args()
    sizes = list(SIZES) if args.sizes == "all" else args.sizes.split(",")
    print(f"# {cpu_model()}, {siglayer.get_num_threads()} threads, settle {args.settle} s")
    print(f"{'size':<4} {'(n, n_in, n_out)':<20} {'dtype':<8} {'fresh':>10} {'reuse':>10} ratio")
    for size in sizes:
        for dtype in (np.float32, np.float64):
            t_fresh, t_reuse = measure(size, dtype, args.settle)
            print(
                f"{size:<4} {SIZES[size]!s:<20} {np.dtype(dtype).name:<8} "
                f"{t_fresh * 1e3:>8.3f}ms {t_reuse * 1e3:>8.3f}ms {t_fresh / t_reuse:5.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
