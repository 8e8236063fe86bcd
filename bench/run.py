"""The benchmark: siglayer against NumPy, the GEMM floor and PyTorch, from the source tree.

    python bench/run.py                         # T,S,M,L,N in float32 and float64
    python bench/run.py --sizes all --plot speedup.png
    python bench/run.py --mixed                 # then each library right after the others
    python bench/run.py --bfloat16 [--sizes ...]  # bfloat16 against float32 (bfloat16.py)

Time siglayer's forward and forward + backward against NumPy (siglayer.reference), the
matrix products alone through siglayer's BLAS (the floor: one BLAS call per tile, which
the layer can beat where it cuts forward's tiles and dW's batch into panels for
OpenBLAS's small-matrix kernels) and
PyTorch (if installed), at sizes T to XL. Every result is checked against the NumPy
reference before it is timed; the contenders take turns, and the table shows medians and
ratios from one run. Rows are printed as they are measured: about 2 minutes for the
default sizes, 2 to 3 more with XL, about 4 with --mixed. Exit status 1 if a result
disagrees with the reference, 2 if --mixed misses a target. The harness is harness.py
(contenders, checks, table, plot) and mixed.py (the matrix of --mixed).
"""

from __future__ import annotations

import argparse
import sys

import harness


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--bfloat16" in args:  # its own table and options: bench/bfloat16.py
        import bfloat16

        return bfloat16.main([a for a in args if a != "--bfloat16"])
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    harness.add_arguments(parser)
    # Listed for --help only: main() hands --bfloat16 and the other options to bfloat16.py.
    parser.add_argument(
        "--bfloat16",
        action="store_true",
        help="bfloat16 against float32 instead (bench/bfloat16.py): its own table and "
        "options, the others passed on to it (python bench/run.py --bfloat16 --help)",
    )
    return harness.main(parser.parse_args(args))


if __name__ == "__main__":
    sys.exit(main())
