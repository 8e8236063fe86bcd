"""Max ulp error of siglayer's sigmoid per instruction set and dtype (the README's figures).

    python bench/sigmoid_accuracy.py [--seed 1]

Sweeps about 1.1 million inputs per dtype (uniform over the whole range where sigma is
neither 0 nor 1, a dense [-1, 1], and log-spaced magnitudes from 1e-30 up), computes the
exact value in np.longdouble (64-bit mantissa on x86-64) in the stable form, and prints
the largest error in ulps of the correctly rounded result, with the input where it
occurs. tests/test_sigmoid_accuracy.py asserts the budget (2 ulp float32, 4 ulp float64)
on the same kind of sweep.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from siglayer import _core

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# The test's sweep, reference and error measure (one definition); another seed here, so
# that the figures printed come from other points than the test's.
from test_sigmoid_accuracy import reference, sweep, ulp_error


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python bench/sigmoid_accuracy.py",
        description=" ".join(__doc__.split("\n\n", 1)[0].split()),  # the first paragraph
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the sweep's random inputs (default 1; tests/test_sigmoid_accuracy.py "
        "asserts on seed 7)",
    )
    args = parser.parse_args(argv)
    available = _core.config()["simd_available"].split(",")
    print(f"{'isa':9} {'dtype':8} {'max ulp':>8}  at z")
    try:
        for isa in available:
            _core.select_isa(isa)
            for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
                z = sweep(dtype, seed=args.seed)
                errors = ulp_error(_core.sigmoid(z), reference(z))
                worst = int(np.argmax(errors))
                print(f"{isa:9} {dtype.name:8} {float(errors[worst]):8.3f}  {z[worst]!r}")
    finally:
        _core.select_isa(available[0])


if __name__ == "__main__":
    main()
