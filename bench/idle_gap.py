"""The first step after an idle pause: one training step of one layer (forward, then
backward with dx), timed right after the calling thread slept for a gap, as a training
script waits for its next batch, against the same step back to back.

Each library runs in a process of its own (siglayer, and PyTorch when installed:
``sigmoid(addmm(b, x, W))`` and autograd), so that neither's idle threads are in the
other's way; within a process the gaps take turns, round after round, and each cell is
the median over all its steps. Every step's results are checked against
``siglayer.reference`` before anything is timed.

    python bench/idle_gap.py                      # M and N, float32, gaps 0,2,10,50 ms
    python bench/idle_gap.py --sizes M,L,N --gaps 0,1,5,20,100
    KMP_BLOCKTIME=100 python bench/idle_gap.py    # siglayer's workers spin for 100 ms

Prints one row per library and size: the median and 90th percentile step time (ms) after
each gap, and the ratio of the medians of the longest gap and of back to back. A pool
whose threads have gone to sleep must wake them; on a shared virtual machine a virtual
CPU that has been idle for tens of milliseconds can come back milliseconds late
(docs/reliability.md, "After an idle pause"), and a step shorter than that runs on the
threads that are awake.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from harness import SIZES, cpu_model


def steps_of(library: str, size: str) -> Callable[[], tuple[np.ndarray, ...]]:
    """The library's step at this size, float32, its results checked first."""
    import siglayer

    n, n_in, n_out = SIZES[size]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    W = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    dout = rng.standard_normal((n, n_out)).astype(np.float32)
    if library == "siglayer":

        def step() -> tuple[np.ndarray, ...]:
            out = siglayer.forward(x, W, b)
            return (out, *siglayer.backward(dout, x, W, out))

    else:
        import torch

        xt = torch.from_numpy(x).requires_grad_(True)
        Wt = torch.from_numpy(W.copy()).requires_grad_(True)
        bt = torch.from_numpy(b.copy()).requires_grad_(True)
        dt = torch.from_numpy(dout)

        def step() -> tuple[np.ndarray, ...]:
            xt.grad = Wt.grad = bt.grad = None
            out = torch.sigmoid(torch.addmm(bt, xt, Wt))
            out.backward(dt)
            grads = (xt.grad, Wt.grad, bt.grad)
            assert all(g is not None for g in grads)
            return (out.detach().numpy(), *(g.numpy() for g in grads if g is not None))

    out, dx, dW, db = step()
    ref_out = siglayer.reference.forward(x, W, b)
    ref_dx, ref_dW, ref_db = siglayer.reference.backward(dout, x, W, ref_out)
    for name, got, want in (
        ("out", out, ref_out),
        ("dx", dx, ref_dx),
        ("dW", dW, ref_dW),
        ("db", db, ref_db),
    ):
        scale = float(np.max(np.abs(want))) or 1.0
        error = float(np.max(np.abs(got - want))) / scale
        assert error < 1e-4, f"{library} {size}: {name} is off by {error:.1e} (relative to max)"
    return step


def child(library: str, sizes: list[str], gaps: list[float], rounds: int) -> None:
    """Runs in its own process; prints {size: {gap: (median, 90th percentile) in seconds}}
    as JSON."""
    if library == "torch":
        import torch

        import siglayer

        torch.set_num_threads(siglayer.get_num_threads())
    result: dict[str, dict[str, tuple[float, float]]] = {}
    for size in sizes:
        step = steps_of(library, size)
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
            str(g): (statistics.median(v), float(np.percentile(v, 90))) for g, v in samples.items()
        }
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n", 1)[0].split())  # the first paragraph
    )
    parser.add_argument("--sizes", default="M,N", help="comma-separated, from " + ",".join(SIZES))
    parser.add_argument("--gaps", default="0,2,10,50", help="idle gaps before a step, in ms")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all gaps")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; known: {', '.join(SIZES)}")
    gaps = [float(g) / 1e3 for g in args.gaps.split(",")]
    if args.child:
        child(args.child, sizes, gaps, args.rounds)
        return 0

    import siglayer

    libraries = ["siglayer"]
    if not args.no_torch:
        try:
            import torch  # noqa: F401

            libraries.append("torch")
        except ImportError:
            pass
    print(f"# {cpu_model()}, {siglayer.get_num_threads()} threads, float32, fwd+bwd step")
    header = " ".join(f"{'gap ' + format(g * 1e3, 'g') + ' ms':>17}" for g in gaps)
    print(f"{'library':<9} {'size':<4} {header} {'last/0':>7}   (median / 90th percentile)")
    for library in libraries:
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                library,
                "--sizes",
                args.sizes,
                "--gaps",
                args.gaps,
                "--rounds",
                str(args.rounds),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        for size in sizes:
            times = [result[size][str(g)] for g in gaps]
            cells = " ".join(f"{m * 1e3:>8.3f} /{p * 1e3:>7.3f}" for m, p in times)
            ratio = times[-1][0] / times[0][0]
            print(f"{library:<9} {size:<4} {cells} {ratio:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
