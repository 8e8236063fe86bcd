"""Do out, dx, dW and db change with the thread count? A measurement, not a test.

For each shape and dtype: the same inputs (and, for backward, the same out) at 1 and
at N threads; prints whether each result is bitwise equal and the largest difference
in units of the dtype's epsilon relative to the result's magnitude. A second table shows
the cause: with one thread, the rows of a product computed alone versus inside a
taller product.

    python bench/determinism.py [--threads 2]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

import siglayer

SHAPES = [
    (256, 256, 256),
    (1000, 300, 70),
    (70, 300, 1000),
    (4096, 64, 64),
    (64, 4096, 64),
    (64, 64, 4096),
    (513, 257, 129),
    (2048, 1024, 16),
    (333, 129, 77),
    (100, 100, 100),
]


def problem(rng: np.random.Generator, n: int, n_in: int, n_out: int, dtype: type):
    x = rng.standard_normal((n, n_in)).astype(dtype)
    W = (rng.standard_normal((n_in, n_out)) / math.sqrt(n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    dout = rng.standard_normal((n, n_out)).astype(dtype)
    return x, W, b, dout


def at_threads(threads: int, x, W, b, dout, out_for_backward):
    siglayer.set_num_threads(threads)
    out = siglayer.forward(x, W, b)
    return (out, *siglayer.backward(dout, x, W, out_for_backward))


def eps_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / (eps * max |b|): 0 when bitwise equal."""
    if a.size == 0:
        return 0.0
    scale = float(np.abs(b).max()) or 1.0
    return float(np.abs(a.astype(np.float64) - b).max()) / (np.finfo(a.dtype).eps * scale)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n", 1)[0].split())  # the first paragraph
    )
    parser.add_argument("--threads", type=int, default=2, help="compared with 1 thread")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{siglayer._config.config()['blas_details']}; 1 vs {args.threads} threads")
    print(
        f"{'dtype':8} {'n, n_in, n_out':18} "
        + " ".join(f"{k:>14}" for k in ("out", "dx", "dW", "db"))
    )
    for dtype in (np.float32, np.float64):
        for n, n_in, n_out in SHAPES:
            x, W, b, dout = problem(rng, n, n_in, n_out, dtype)
            siglayer.set_num_threads(1)
            out1 = siglayer.forward(x, W, b)
            one = at_threads(1, x, W, b, dout, out1)
            many = at_threads(args.threads, x, W, b, dout, out1)
            cells = []
            for a, c in zip(many, one, strict=True):
                cells.append(
                    "equal" if a.tobytes() == c.tobytes() else f"{eps_difference(a, c):.2g} eps"
                )
            print(
                f"{np.dtype(dtype).name:8} {f'{n}, {n_in}, {n_out}':18} "
                + " ".join(f"{c:>14}" for c in cells)
            )

    print("\nOne thread: rows r of forward(x[:r]) equal to the same rows of forward(x)?")
    siglayer.set_num_threads(1)
    for dtype in (np.float32, np.float64):
        x, W, b, _ = problem(rng, 256, 256, 256, dtype)
        full = siglayer.forward(x, W, b)
        differ = [
            r
            for r in (1, 2, 3, 4, 8, 15, 16, 17, 32, 64, 128)
            if siglayer.forward(x[:r], W, b).tobytes() != full[:r].tobytes()
        ]
        print(f"{np.dtype(dtype).name}: differ for r in {differ}")


if __name__ == "__main__":
    main()
