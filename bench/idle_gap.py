"""The first step after an idle pause: one training step of one layer (forward, then
backward with dx), timed right after the calling thread slept for a gap, as a training
script waits for its next batch, against the same step back to back.

Each library runs in a process of its own (siglayer's ``forward`` and ``backward``, and
PyTorch's ``sigmoid(addmm(b, x, W))`` with autograd when it is installed: bench/run.py's
contenders), so that neither's idle threads are in the other's way; within a process the
gaps take turns, round after round, and each cell is the median over all its steps. Each
library's first step is checked against ``siglayer.reference`` (bench/harness.py's
check) before anything is timed.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/idle_gap.py   # M,N; 0,2,10,50 ms
    ... python bench/idle_gap.py --sizes M,L,N --gaps 0,1,5,20,100
    KMP_BLOCKTIME=100 ... python bench/idle_gap.py    # siglayer's workers spin for 100 ms

Prints one row per library and size: the median and 90th percentile step time (ms) after
each gap, and the ratio of the medians of the longest gap and of back to back (gap 0,
which --gaps must start with). A pool whose threads have gone to sleep must wake them;
on a shared virtual machine the first step after a pause can take longer than back to
back (docs/reliability.md, "After an idle pause").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time

import numpy as np

import harness

CHILD_TIMEOUT = 1800  # seconds for one library's whole run


def child(library: str, sizes: list[str], gaps: list[float], rounds: int) -> None:
    """Runs in its own process; prints {size: {gap: [median, 90th percentile]}} (seconds)
    as JSON on its last line."""
    import siglayer

    torch = None
    if library == "torch":
        torch = harness.import_torch()
        assert torch is not None, "torch is not installed"
        torch.set_num_threads(siglayer.get_num_threads())
    result: dict[str, dict[str, list[float]]] = {}
    for size in sizes:
        p = harness.make_problem(size, "float32")
        calls = harness._torch(p, torch) if torch else harness._siglayer(p, buffers=False)
        step = calls["forward_backward"]
        got = step()
        harness.check(f"{library} {size}", got, harness.reference_results(p))
        time.sleep(0.3)  # the check's NumPy products leave NumPy's OpenBLAS spinning ~0.1 s
        for _ in range(3):
            step()  # warm-up
        samples: dict[float, list[float]] = {g: [] for g in gaps}
        for _ in range(rounds):
            for gap in gaps:
                for _ in range(4 if gap else 12):
                    if gap:
                        time.sleep(gap)
                    start = time.perf_counter()
                    step()
                    samples[gap].append(time.perf_counter() - start)
        result[size] = {
            str(g): [statistics.median(v), float(np.percentile(v, 90))] for g, v in samples.items()
        }
    print(json.dumps(result))


def parse_gaps(text: str, parser: argparse.ArgumentParser) -> list[float]:
    try:
        gaps = [float(g) / 1e3 for g in text.split(",")]
    except ValueError:
        parser.error(f"--gaps takes milliseconds separated by commas, not {text!r}")
    if gaps[0] != 0 or any(g < 0 for g in gaps) or gaps != sorted(gaps):
        parser.error(f"--gaps must start with 0 and increase, got {text!r}")
    return gaps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n", 1)[0].split())  # the first paragraph
    )
    parser.add_argument(
        "--sizes", default="M,N", help="comma-separated, from " + ",".join(harness.SIZES)
    )
    parser.add_argument("--gaps", default="0,2,10,50", help="idle gaps in ms, from 0 up")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all gaps")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in harness.SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; known: {', '.join(harness.SIZES)}")
    gaps = parse_gaps(args.gaps, parser)
    if args.child:
        child(args.child, sizes, gaps, args.rounds)
        return 0

    import siglayer

    libraries = ["siglayer"]
    if not args.no_torch and importlib.util.find_spec("torch") is not None:
        libraries.append("torch")
    config = siglayer._config.config()
    print(
        f"# {harness.cpu_model()}, siglayer {siglayer.__version__} ({siglayer.get_num_threads()} "
        f"threads; {config['openmp_runtime']}; {config['blas_details']}), float32, fwd+bwd"
    )
    header = " ".join(f"{'gap ' + format(g * 1e3, 'g') + ' ms':>19}" for g in gaps)
    print(f"{'library':<9} {'size':<4} {header} {'last/0':>7}   (median / 90th percentile)")
    for library in libraries:
        command = [sys.executable, __file__, "--child", library, "--sizes", args.sizes]
        command += ["--gaps", args.gaps, "--rounds", str(args.rounds)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"{library}: no result within {CHILD_TIMEOUT} s", file=sys.stderr)
            return 1
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            print(f"{library} failed:\n{done.stderr}", file=sys.stderr)
            return 1
        result = json.loads(lines[-1])
        for size in sizes:
            times = [result[size][str(g)] for g in gaps]
            cells = " ".join(f"{m * 1e3:>9.3f} / {p * 1e3:>7.3f}" for m, p in times)
            ratio = times[-1][0] / times[0][0]
            print(f"{library:<9} {size:<4} {cells} {ratio:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
