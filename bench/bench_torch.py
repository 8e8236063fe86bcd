"""siglayer.torch against plain PyTorch, in one process with interleaved rounds:

1. steps per second of the digits network of bench/bench_training.py (64 -> 32 -> 10,
   Adam, batch 32), nn.Linear + nn.Sigmoid + nn.BCEWithLogitsLoss against SigmoidLinear
   layers with the last one fused with its loss (SigmoidLinear.bce_loss), and against
   SigmoidLinear layers feeding nn.BCELoss;
2. forward + backward of one layer, ``torch.sigmoid(linear(x))`` with nn.Linear against
   ``SigmoidLinear``, at run.py's sizes T, S, M and L by default (``--sizes``), with the
   floor: the step's two matrix products alone through siglayer's BLAS (torch / floor is
   the most any speed-up can be where PyTorch's GEMM runs as fast as siglayer's).

Each siglayer.torch figure comes twice: as a user's eager script runs it (plain eager
calls take siglayer.torch's eager path, a private autograd.Function around the kernels)
and through the operators torch.ops.siglayer.sigmoid_linear and its backward (what
torch.compile and torch.export trace), the "operator" figures. ``--no-settle`` runs the
one-layer contenders back to back, with no pause for thread pools to fall asleep between
turns (the digits steps always run back to back, as in a training loop). ``--compiled``
adds both layers under ``torch.compile`` (inductor, the default backend): PyTorch's
``sigmoid(linear(x))``, which inductor may fuse, against ``SigmoidLinear``, whose
operators the compiled graphs call; each checked against eager first.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_torch.py

Both contenders start from the same weights. Before anything is timed, every one-layer
contender's output and gradients (the operator and compiled ones included) are checked
against siglayer.reference in float64 on the same inputs, and the floor's two products
against float64 products; in the digits part, every contender's loss and weights after
one step against PyTorch's.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import siglayer
import siglayer.torch
from siglayer import _core, reference
from siglayer._timing import interleaved_medians
from siglayer.torch import SigmoidLinear

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_training
from harness import build_summary, check_close, cpu_model, numpy_blas

SIZES = {
    "T": (32, 64, 32),
    "S": (64, 256, 128),
    "M": (256, 512, 512),
    "L": (1024, 1024, 1024),
}


def layer_contenders(size: tuple[int, int, int], dtype: torch.dtype, *, compiled: bool = False):
    n, n_in, n_out = size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, n_in, generator=g, dtype=dtype)
    dout = torch.rand(n, n_out, generator=g, dtype=dtype)
    ours = SigmoidLinear(n_in, n_out, dtype=dtype, seed=0)
    linear = torch.nn.Linear(n_in, n_out, dtype=dtype)
    with torch.no_grad():
        ours.b.uniform_(-1, 1, generator=g)
        linear.weight.copy_(ours.W.T)
        linear.bias.copy_(ours.b)

    def torch_step() -> torch.Tensor:
        linear.zero_grad(set_to_none=True)
        out = torch.sigmoid(linear(x))
        out.backward(dout)
        return out

    def siglayer_step() -> torch.Tensor:
        ours.zero_grad(set_to_none=True)
        out = ours(x)
        out.backward(dout)
        return out

    # The oracle: siglayer.reference in float64 on the same inputs (x does not require
    # grad: out, dW and db), each result within rtol of its largest magnitude.
    x64, W64, b64, d64 = (t.detach().double().numpy() for t in (x, ours.W, ours.b, dout))
    out64 = reference.forward(x64, W64, b64)
    _, dW64, db64 = reference.backward(d64, x64, W64, out64, need_dx=False)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12

    def check(name: str, out: torch.Tensor, W_grad: torch.Tensor, b_grad: torch.Tensor) -> None:
        for what, got, want in (("out", out, out64), ("dW", W_grad, dW64), ("db", b_grad, db64)):
            check_close(f"{name} {size} {dtype}: {what}", got.detach().double(), want, rtol)

    check("torch", torch_step(), linear.weight.grad.T, linear.bias.grad)
    check("siglayer.torch", siglayer_step(), ours.W.grad, ours.b.grad)
    operator = through_operator(siglayer_step)
    check("operator", operator(), ours.W.grad, ours.b.grad)
    # The floor: the two products this step needs (x does not require grad, so no dx),
    # z = x @ W and dW = x.T @ dZ, alone through siglayer's BLAS on siglayer's threads.
    # Neither library can run the step faster than its own GEMMs; where PyTorch's GEMM
    # is as fast as OpenBLAS's, torch / floor caps the speed-up.
    xn, Wn = x.numpy(), ours.W.detach().numpy()
    z, dW, dZ = np.empty((n, n_out), xn.dtype), np.empty_like(Wn), dout.numpy()

    def floor() -> None:
        _core.gemm(xn, Wn, out=z)
        _core.gemm(xn, dZ, trans_a=True, out=dW)

    floor()
    for what, got, want in (("z", z, x64 @ W64), ("dW", dW, x64.T @ d64)):
        check_close(f"floor {size} {dtype}: {what}", got, want, rtol)
    contenders = {
        "torch": torch_step,
        "siglayer.torch": siglayer_step,
        "operator": operator,
        "floor": floor,
    }
    if compiled:
        # A fresh compile per size and dtype (dynamic=False: shapes are fixed here, as in
        # a training loop), forward compiled, backward through AOTAutograd's graph.
        torch_fn = torch.compile(lambda x: torch.sigmoid(linear(x)), dynamic=False)
        ours_fn = torch.compile(lambda x: ours(x), dynamic=False)

        def compiled_step(fn, module):
            def step() -> torch.Tensor:
                module.zero_grad(set_to_none=True)
                out = fn(x)
                out.backward(dout)
                return out

            return step

        for name, fn, module, grads in (
            ("torch(compiled)", torch_fn, linear, lambda: (linear.weight.grad.T, linear.bias.grad)),
            ("siglayer(compiled)", ours_fn, ours, lambda: (ours.W.grad, ours.b.grad)),
        ):
            step = compiled_step(fn, module)
            check(name, step(), *grads())
            contenders[name] = step
    return contenders


def through_operator(step):
    """The step with plain eager calls sent through the operator too (as under
    torch.compile's tracing, or before the eager path existed)."""

    def run(*args):
        siglayer.torch._eager_path = False
        try:
            return step(*args)
        finally:
            siglayer.torch._eager_path = True

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="contenders back to back, no pause for thread pools to fall asleep",
    )
    parser.add_argument("--sizes", nargs="+", default=["T", "S", "M", "L"], choices=SIZES)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--threads", type=int, help="threads for both (default: their own)")
    parser.add_argument("--digits-threads", type=int, default=1, help="threads, digits part")
    parser.add_argument(
        "--compiled", action="store_true", help="add both layers under torch.compile (inductor)"
    )
    parser.add_argument("--no-digits", action="store_true", help="skip the digits network")
    args = parser.parse_args(argv)
    settle = 0.0 if args.no_settle else 0.1
    default_threads = (torch.get_num_threads(), siglayer.get_num_threads())

    def set_threads(n: int | None) -> None:
        torch_n, siglayer_n = default_threads if n is None else (n, n)
        torch.set_num_threads(torch_n)
        siglayer.set_num_threads(siglayer_n)

    print(
        f"siglayer {siglayer.__version__} ({build_summary()}), torch "
        f"{torch.__version__}, numpy {np.__version__} ({numpy_blas()}), Python "
        f"{platform.python_version()}\nCPU: {cpu_model()}"
    )
    if not args.no_digits:
        digits(args, set_threads)
    one_layer(args, settle, set_threads)


def digits(args: argparse.Namespace, set_threads: Callable[[int | None], None]) -> None:
    set_threads(args.digits_threads)
    batches = bench_training.digits_batches(32)
    weights = bench_training.initial_weights()
    trainers = {
        "torch": bench_training.TorchTrainer(batches, weights, siglayer_layers=False),
        "siglayer.torch": bench_training.TorchTrainer(batches, weights, siglayer_layers=True),
        "nn.BCELoss": bench_training.TorchTrainer(
            batches, weights, siglayer_layers=True, fused_loss=False
        ),
        "operator": bench_training.TorchTrainer(batches, weights, siglayer_layers=True),
    }
    trainers["operator"].train_on = through_operator(trainers["operator"].train_on)
    losses = {name: trainer.first_step() for name, trainer in trainers.items()}
    for name, trainer in trainers.items():  # same loss, same weights after one step
        assert math.isclose(losses[name], losses["torch"], rel_tol=1e-5), losses
        for got, want in zip(trainer.weights(), trainers["torch"].weights(), strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)
    steps = {n: t.step for n, t in trainers.items()}
    # Steps back to back, as a training loop runs them (one thread each: no pool to let
    # fall asleep), in rounds of 40 ms (about 100 steps). With a 0.1 s pause and 2 ms
    # rounds (four steps, just woken) the ratio moved between 0.88 and 1.18 from run to
    # run on a shared machine; back to back it stayed within 1.03-1.09 (measured with
    # 20 ms of untimed steps before each turn, which this no longer makes).
    seconds = interleaved_medians(
        steps,
        rounds=args.rounds,
        min_round_seconds=0.04,
        settle_seconds=0.0,
    )
    print(
        f"\ndigits network, batch 32, {args.digits_threads} thread(s), steps/s "
        f"(median of {args.rounds} interleaved rounds):"
    )
    print(
        f"  torch {1 / seconds['torch']:,.0f}   siglayer.torch "
        f"{1 / seconds['siglayer.torch']:,.0f}   speed-up "
        f"{seconds['torch'] / seconds['siglayer.torch']:.2f}x   (through the operators: "
        f"{1 / seconds['operator']:,.0f}, {seconds['torch'] / seconds['operator']:.2f}x; "
        f"the last layer into nn.BCELoss instead of fused: "
        f"{1 / seconds['nn.BCELoss']:,.0f}, {seconds['torch'] / seconds['nn.BCELoss']:.2f}x)"
    )


def one_layer(
    args: argparse.Namespace, settle: float, set_threads: Callable[[int | None], None]
) -> None:
    set_threads(args.threads)
    print(
        f"\none layer, forward + backward, torch {torch.get_num_threads()} / siglayer "
        f"{siglayer.get_num_threads()} threads, median of {args.rounds} interleaved rounds:"
    )
    print(
        f"  {'size':<18} {'dtype':<8} {'torch':>10} {'siglayer.torch':>15} {'speed-up':>9}"
        f" {'operator':>10} {'speed-up':>9} {'GEMM floor':>11} {'torch/floor':>11}"
        + (f" {'torch cmp':>10} {'sig cmp':>10} {'speed-up':>9}" if args.compiled else "")
    )
    for size_name in args.sizes:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            contenders = layer_contenders(SIZES[size_name], dtype, compiled=args.compiled)
            seconds = interleaved_medians(contenders, rounds=args.rounds, settle_seconds=settle)
            t, s, o = seconds["torch"], seconds["siglayer.torch"], seconds["operator"]
            f = seconds["floor"]
            label = f"{size_name} {SIZES[size_name]}"
            print(
                f"  {label:<18} {dtype_name:<8} {t * 1e6:>8.0f}us {s * 1e6:>13.0f}us {t / s:>8.2f}x"
                f" {o * 1e6:>8.0f}us {t / o:>8.2f}x {f * 1e6:>9.0f}us {t / f:>10.2f}x"
                + (
                    f" {seconds['torch(compiled)'] * 1e6:>8.0f}us"
                    f" {seconds['siglayer(compiled)'] * 1e6:>8.0f}us"
                    f" {seconds['torch(compiled)'] / seconds['siglayer(compiled)']:>8.2f}x"
                    if args.compiled
                    else ""
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
