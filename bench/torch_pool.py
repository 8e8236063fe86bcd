"""Whose thread pool siglayer's regions run on, beside PyTorch (SIGLAYER_POOL, threads.hpp).

Two views, each in one process with the settings switched between interleaved blocks
(``_core.select_pool``), medians over the rounds:

1. ``step``: a PyTorch training step around siglayer's operator, as a script writes it:
   ``h = relu(nn.Linear(x))``, ``out = siglayer.torch.sigmoid_linear(h, W, b)``, a mean
   squared error, ``backward``, ``SGD.step``; with siglayer's regions on its own pool
   (``own``) and on PyTorch's (``auto``, the default), against the same step with
   ``torch.sigmoid(torch.addmm(b, h, W))`` (``torch``). Blocks of 0.1 s of steps back to
   back before each block's timed steps, as in a training loop.
2. ``mixed``: bench/mixed.py's matrix (each library's step right after another's: NumPy's
   and PyTorch's three products, siglayer's forward + backward through the NumPy API)
   with ``own`` and ``shared`` (every call on PyTorch's pool): what borrowing costs
   beside NumPy, and why ``auto`` borrows for siglayer.torch's calls only.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/torch_pool.py

Before anything is timed, the step's loss and gradients under each setting are checked
against the ``torch`` step's (float32: 1e-5 relative; bfloat16: 2e-2), and mixed.py
checks its steps against siglayer.reference.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import siglayer
import siglayer.torch as st
from siglayer import _core

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import mixed

SIZES = {size: harness.SIZES[size] for size in ("S", "M", "L", "N")}
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}


def make_steps(size: str, dtype: str) -> dict[str, Callable[[], list[torch.Tensor]]]:
    """The training step with siglayer's operator and with PyTorch's, from the same weights;
    each returns the loss and the gradients of W, b and the first layer's weight."""
    n, n_in, n_out = SIZES[size]
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, n_in, generator=gen).to(dt)
    y = torch.rand(n, n_out, generator=gen).to(dt)

    def layers() -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor, torch.optim.SGD]:
        torch.manual_seed(1)
        first = torch.nn.Linear(n_in, n_in).to(dt)
        W = (torch.randn(n_in, n_out) / n_in**0.5).to(dt).requires_grad_()
        b = torch.zeros(n_out, dtype=dt, requires_grad=True)
        opt = torch.optim.SGD([*first.parameters(), W, b], lr=0.0)  # lr 0: same inputs
        return first, W, b, opt

    def step_with(layer: Callable[..., torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
        first, W, b, opt = layers()

        def step() -> list[torch.Tensor]:
            out = layer(torch.relu(first(x)), W, b)
            loss = ((out - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return [loss.detach(), W.grad, b.grad, first.weight.grad]  # type: ignore[list-item]

        return step

    return {
        "siglayer": step_with(st.sigmoid_linear),
        "torch": step_with(lambda h, W, b: torch.sigmoid(torch.addmm(b, h, W))),
    }


def check(size: str, dtype: str, steps: dict[str, Callable[[], list[torch.Tensor]]]) -> None:
    """The siglayer step's loss and gradients under each setting against the torch step's;
    SystemExit on a mismatch. The setting in force before is put back."""
    want = [t.double() for t in steps["torch"]()]
    before = _core.select_pool("own")
    try:
        for setting in ("own", "auto"):
            _core.select_pool(setting)
            got_all = steps["siglayer"]()
            for name, got, ref in zip(("loss", "dW", "db", "dW1"), got_all, want, strict=True):
                err = float((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                if not err <= TOLERANCE[dtype]:
                    raise SystemExit(f"{size} {dtype} {setting}: {name} off by {err:.2e} relative")
    finally:
        _core.select_pool(before)


def step_view(sizes: list[str], dtypes: list[str], rounds: int) -> None:
    print("step: a PyTorch training step around siglayer.torch.sigmoid_linear (median ms)")
    print(
        f"{'size':5} {'dtype':9} {'own':>9} {'auto':>9} {'torch':>9} {'auto/own':>9} "
        f"{'own/torch':>10} {'auto/torch':>11}"
    )
    for dtype in dtypes:
        for size in sizes:
            steps = make_steps(size, dtype)
            check(size, dtype, steps)
            configs = [
                ("own", steps["siglayer"]),
                ("auto", steps["siglayer"]),
                ("torch", steps["torch"]),
            ]
            samples: dict[str, list[float]] = {c: [] for c, _ in configs}
            order = random.Random(0)
            for _ in range(rounds):
                order.shuffle(configs)
                for setting, step in configs:
                    _core.select_pool("own" if setting == "own" else "auto")
                    until = time.perf_counter() + 0.1
                    while time.perf_counter() < until:
                        step()
                    for _ in range(5):
                        t0 = time.perf_counter()
                        step()
                        samples[setting].append(time.perf_counter() - t0)
            m = {c: float(np.median(v)) for c, v in samples.items()}
            print(
                f"{size:5} {dtype:9} {m['own'] * 1e3:9.3f} {m['auto'] * 1e3:9.3f} "
                f"{m['torch'] * 1e3:9.3f} {m['auto'] / m['own']:9.2f} "
                f"{m['own'] / m['torch']:10.2f} {m['auto'] / m['torch']:11.2f}",
                flush=True,
            )


def mixed_view(sizes: list[str], rounds: int) -> None:
    print(
        "\nmixed: each step right after another's, over siglayer's step alone on its own "
        "pool (float32); own -> shared"
    )
    for size in sizes:
        p = harness.make_problem(size, "float32")
        ref = harness.reference_results(p)
        steps = mixed.make_steps(p, ref, torch)
        for name, s in steps.items():
            harness.check(f"{name} step {size}", s(), ref)
        medians = {}
        for _ in range(rounds):  # the settings alternate, round by round
            for setting in ("own", "shared"):
                _core.select_pool(setting)
                for pair, seconds in mixed.matrix(steps, rounds=1).items():
                    medians.setdefault((setting, *pair), []).append(seconds)
        m = {k: float(np.median(v)) for k, v in medians.items()}
        for step in steps:
            alone = m["own", step, step]
            cells = " ".join(
                f"after {before} {m['own', step, before] / alone:.2f} -> "
                f"{m['shared', step, before] / alone:.2f};"
                for before in steps
            )
            print(f"  {size} {step:9} alone {alone * 1e3:8.3f} ms: {cells}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["S", "M", "N", "L"], choices=SIZES)
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(TOLERANCE)
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mixed-sizes", nargs="*", default=["M", "N", "L"], choices=SIZES)
    args = parser.parse_args(argv)
    torch.set_num_threads(siglayer.get_num_threads())
    print(
        f"{harness.cpu_model()}; {siglayer.get_num_threads()} threads for siglayer and "
        f"PyTorch {torch.__version__}; Python {platform.python_version()}"
    )
    print(f"thread_pool: {siglayer.show_config(mode='dicts')['thread_pool']}\n")
    before = _core.select_pool("auto")  # each view selects its settings
    try:
        step_view(args.sizes, args.dtypes, args.rounds)
        if args.mixed_sizes:
            mixed_view(args.mixed_sizes, args.rounds)
    finally:
        _core.select_pool(before)


if __name__ == "__main__":
    main()
