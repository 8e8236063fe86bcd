"""Long memory soak: millions of forward + backward calls, resident memory printed
every 10^5 calls, and the growth per 10^5 calls fitted over the run.

The mix is that of tests/test_memory.py: float32 and float64, fresh outputs and
caller buffers, a strided (packed) input, batch dimensions, need_dx=False, 1-D x, two
calls that fail, a call big enough for the OpenMP team, and a training step of a
two-layer network (loss, backward from the pre-activation, Adam); optionally every
1000th iteration runs in a new Python thread (its own scratch and OpenMP team). Linux
only (/proc/self/statm).

    python bench/memory_soak.py [--calls 1000000] [--thread-churn]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

import siglayer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_memory import make_workload, rss_bytes

# forward + backward pairs per iteration: 4 functional, 1 for a two-thread team, 2 layers
# of a training step (plus two failing calls and an optimizer step)
PAIRS_PER_ITERATION = 7
CHECKPOINT = 100_000  # pairs


def make_iteration():
    """The memory test's workload (tests/test_memory.py, one definition for both) plus a
    call just big enough for a two-thread OpenMP team."""
    workload, _ = make_workload()
    rng = np.random.default_rng(1)
    big_x = rng.standard_normal((128, 96)).astype(np.float32)
    big_W = rng.standard_normal((96, 96)).astype(np.float32)
    big_b = np.zeros(96, np.float32)

    def iteration() -> None:
        workload()
        bo = siglayer.forward(big_x, big_W, big_b)
        siglayer.backward(bo, big_x, big_W, bo, need_dx=False)

    return iteration


def main() -> None:
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n", 1)[0].split())  # the first paragraph
    )
    parser.add_argument("--calls", type=int, default=1_000_000, help="forward+backward pairs")
    parser.add_argument(
        "--thread-churn",
        action="store_true",
        help="run every 1000th iteration in a new Python thread",
    )
    args = parser.parse_args()
    iteration = make_iteration()
    for _ in range(2000):  # warm-up
        iteration()
    print(
        f"siglayer {siglayer.__version__}, {siglayer.get_num_threads()} OpenMP threads, "
        f"thread churn {'on' if args.thread_churn else 'off'}"
    )
    print(f"{'calls':>10} {'RSS MiB':>9} {'since start KiB':>16} {'s':>6}")
    start_rss, start_time = rss_bytes(), time.perf_counter()
    points: list[tuple[int, int]] = [(0, start_rss)]
    calls, next_checkpoint, i = 0, CHECKPOINT, 0
    while calls < args.calls:
        i += 1
        if args.thread_churn and i % 1000 == 0:
            t = threading.Thread(target=iteration)
            t.start()
            t.join()
        else:
            iteration()
        calls += PAIRS_PER_ITERATION
        if calls >= next_checkpoint:
            next_checkpoint += CHECKPOINT
            rss = rss_bytes()
            points.append((calls, rss))
            print(
                f"{calls:>10} {rss / 2**20:>9.1f} {(rss - start_rss) / 1024:>16.0f} "
                f"{time.perf_counter() - start_time:>6.1f}",
                flush=True,
            )
    # The first 10^5 calls still settle the allocator (with thread churn, glibc's
    # per-thread arenas fill up), so the slope is fitted from the first checkpoint on.
    settled = points[1:]
    if len(settled) >= 2:
        at, rss_at = (np.array(v, dtype=np.float64) for v in zip(*settled, strict=True))
        slope = np.polyfit(at, rss_at, 1)[0] * CHECKPOINT
        print(
            f"growth per 10^5 calls after the first 10^5 (least squares, {len(settled)} points): "
            f"{slope / 1024:.1f} KiB; total over the run {(rss_at[-1] - start_rss) / 1024:.0f} KiB"
        )


if __name__ == "__main__":
    main()
