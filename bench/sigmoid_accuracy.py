"""Max ulp error of siglayer's sigmoid per instruction set and dtype (the README's figures).

    python bench/sigmoid_accuracy.py

Sweeps about 1.1 million inputs per dtype (uniform over the whole range where sigma is
neither 0 nor 1, a dense [-1, 1], and log-spaced magnitudes from 1e-30 up), computes the
exact value in np.longdouble (64-bit mantissa on x86-64) in the stable form, and prints
the largest error in ulps of the correctly rounded result, with the input where it
occurs. tests/test_sigmoid_accuracy.py asserts the budget (2 ulp float32, 4 ulp float64)
on the same kind of sweep.
"""

from __future__ import annotations

import numpy as np

from siglayer import _core

UNDERFLOW = {np.dtype(np.float32): 104.0, np.dtype(np.float64): 746.0}


def exact(z: np.ndarray) -> np.ndarray:
    zl = z.astype(np.longdouble)
    t = np.exp(-np.abs(zl))
    return np.where(zl >= 0, 1 / (1 + t), t / (1 + t))


def sweep(dtype: np.dtype, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    limit = UNDERFLOW[dtype]
    parts = [
        rng.uniform(-limit, limit, 400_000),
        rng.uniform(-20, 20, 400_000),
        np.linspace(-1, 1, 200_001),
        -np.logspace(-30, np.log10(limit), 50_000),
        np.logspace(-30, np.log10(limit), 50_000),
    ]
    return np.concatenate(parts).astype(dtype)


def main() -> None:
    available = _core.config()["simd_available"].split(",")
    print(f"{'isa':9} {'dtype':8} {'max ulp':>8}  at z")
    try:
        for isa in available:
            _core.select_isa(isa)
            for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
                z = sweep(dtype)
                truth = exact(z)
                ulp = np.spacing(np.abs(truth.astype(dtype))).astype(np.longdouble)
                errors = np.abs(_core.sigmoid(z).astype(np.longdouble) - truth) / ulp
                worst = int(np.argmax(errors))
                print(f"{isa:9} {dtype.name:8} {float(errors[worst]):8.3f}  {z[worst]!r}")
    finally:
        _core.select_isa(available[0])


if __name__ == "__main__":
    main()
