"""Training steps per second of the digits network (64 -> 32 -> 10, sigmoid, binary
cross-entropy, Adam), with siglayer against the same network in plain NumPy and in
PyTorch, measured in one process with interleaved rounds.

    pip install ".[examples,torch,bench]"
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_training.py --threads 1
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_training.py   # defaults

``--threads N`` runs every library on N threads (siglayer, PyTorch, NumPy's BLAS through
threadpoolctl; not XLA's pool, which --jax's steps run on as JAX sets it up). Layers this
small run on one thread in siglayer whatever the setting; PyTorch uses its whole pool,
whose barriers stall badly when other processes compete for the cores, so on a shared
machine ``--threads 1`` gives the stable comparison.

One step is what a training loop does per mini-batch: forward through both layers, the
loss value and its gradient, backward, and the optimizer's update. Every contender
starts from the same weights; before timing, the script asserts that all of them compute
the same loss on the first batch and the same weights after each of the first three steps
(within 1e-5), and after timing that no contender's weights went to inf or nan.

Contenders:
  siglayer          siglayer.Sequential + losses.BCELoss (fused) + optim.Adam
  numpy             the same network in NumPy as its users write it: 1 / (1 + np.exp(-z)),
                    np.log of np.clip(out, 1e-7, 1 - 1e-7) for the loss, x.T @ dZ,
                    dZ.sum(axis=0), Adam's textbook lines
                    (until 2026-12-06 this contender used siglayer.reference's oracle
                    layer and Adam, whose stable sigmoid and float64 db sums are slower)
  torch             nn.Linear -> nn.Sigmoid -> nn.Linear, nn.BCEWithLogitsLoss (the usual
                    fused form), torch.optim.Adam, autograd
  torch+siglayer    the torch loop with siglayer.torch.SigmoidLinear layers, the last one
                    fused with its loss (SigmoidLinear.bce_loss, the counterpart of
                    BCEWithLogitsLoss; bench/bench_torch.py also times nn.BCELoss on
                    its sigmoid outputs)
  jax, jax+siglayer (--jax) one jitted JAX step (value_and_grad, Adam in jax.numpy):
                    jax.nn layers with BCE on logits, or siglayer.jax.sigmoid_linear for
                    both layers with BCE on their sigmoid outputs
"""

from __future__ import annotations

import argparse
import math
import platform
import warnings
from collections.abc import Callable

import numpy as np

import siglayer
from harness import build_summary, cpu_model, numpy_blas  # bench/harness.py, beside this file
from siglayer._timing import interleaved_medians
from siglayer.losses import BCELoss

N_IN, N_HIDDEN, N_OUT = 64, 32, 10
LR = 0.01


def digits_batches(
    batch_size: int, dtype: type = np.float32
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The digits images scaled to [0, 1] with one-hot targets, as contiguous batches."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(dtype)
    y = np.zeros((len(x), N_OUT), dtype)
    y[np.arange(len(x)), digits.target] = 1
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    count = len(x) // batch_size  # whole batches only: every step has the same shape
    return [
        (
            np.ascontiguousarray(x[i * batch_size : (i + 1) * batch_size]),
            np.ascontiguousarray(y[i * batch_size : (i + 1) * batch_size]),
        )
        for i in range(count)
    ]


def initial_weights(seed: int = 0) -> list[np.ndarray]:
    """[W1, b1, W2, b2] as siglayer initialises them (Glorot-uniform W, zero b)."""
    rng = np.random.default_rng(seed)
    layers = [
        siglayer.SigmoidLayer(N_IN, N_HIDDEN, seed=rng),
        siglayer.SigmoidLayer(N_HIDDEN, N_OUT, seed=rng),
    ]
    return [a.copy() for layer in layers for a in (layer.W, layer.b)]


class Trainer:
    """One contender: ``step()`` trains on the next batch and returns nothing;
    ``first_step()`` runs one step on batch 0 and returns its loss."""

    def __init__(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.batches = batches
        self.next = 0

    def step(self) -> None:
        x, y = self.batches[self.next]
        self.next = (self.next + 1) % len(self.batches)
        self.train_on(x, y)

    def first_step(self) -> float:
        return self.train_on(*self.batches[0])

    def train_on(self, x: np.ndarray, y: np.ndarray) -> float:
        raise NotImplementedError

    def weights(self) -> list[np.ndarray]:
        raise NotImplementedError


class SiglayerTrainer(Trainer):
    def __init__(self, batches, weights):
        super().__init__(batches)
        self.net = siglayer.Sequential(
            siglayer.SigmoidLayer(N_IN, N_HIDDEN), siglayer.SigmoidLayer(N_HIDDEN, N_OUT)
        )
        for p, w in zip(self.net.parameters(), weights, strict=True):
            p.value[...] = w
        self.loss_fn = BCELoss()
        self.optimizer = siglayer.optim.Adam(self.net.parameters(), lr=LR)

    def train_on(self, x, y):
        loss = self.loss_fn(self.net(x), y)
        self.net.backward_from_preactivation(self.loss_fn.backward())
        self.optimizer.step()
        return loss

    def weights(self):
        return [p.value for p in self.net.parameters()]


class NumpyTrainer(Trainer):
    """The network in NumPy as its users write it (not siglayer.reference, the oracle)."""

    def __init__(self, batches, weights):
        super().__init__(batches)
        self.params = [w.copy() for w in weights]
        self.m = [np.zeros_like(w) for w in weights]
        self.v = [np.zeros_like(w) for w in weights]
        self.t = 0

    def train_on(self, x, y):
        # np.exp overflows to inf (sigmoid 0, as wanted) once a z passes -88; main()
        # silences that warning once rather than pay for np.errstate every step.
        W1, b1, W2, b2 = self.params
        h = 1 / (1 + np.exp(-(x @ W1 + b1)))
        out = 1 / (1 + np.exp(-(h @ W2 + b2)))
        q = np.clip(out, 1e-7, 1 - 1e-7)  # out saturates at 0 or 1 as training goes on
        loss = -float(np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
        dZ2 = (out - y) / out.size  # the loss's gradient through the last sigmoid
        dh = dZ2 @ W2.T
        dZ1 = dh * h * (1 - h)
        grads = (x.T @ dZ1, dZ1.sum(axis=0), h.T @ dZ2, dZ2.sum(axis=0))
        self.t += 1
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            m_hat = m / (1 - beta1**self.t)
            v_hat = v / (1 - beta2**self.t)
            p -= LR * m_hat / (np.sqrt(v_hat) + eps)
        return loss

    def weights(self):
        return self.params


class TorchTrainer(Trainer):
    def __init__(self, batches, weights, *, siglayer_layers: bool, fused_loss: bool = True):
        import torch

        super().__init__([(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches])
        W1, b1, W2, b2 = (torch.from_numpy(w.copy()) for w in weights)
        if siglayer_layers:
            from siglayer.torch import SigmoidLinear

            layers = [SigmoidLinear(N_IN, N_HIDDEN), SigmoidLinear(N_HIDDEN, N_OUT)]
            with torch.no_grad():
                for layer, W, b in zip(layers, (W1, W2), (b1, b2), strict=True):
                    layer.W.copy_(W)
                    layer.b.copy_(b)
            self.model = torch.nn.Sequential(*layers)
            # fused: the last layer and the loss in one operator (head.bce_loss); else
            # the sigmoid outputs into nn.BCELoss
            self.head = layers[1] if fused_loss else None
            self.loss_fn = torch.nn.BCELoss()
        else:
            first, second = torch.nn.Linear(N_IN, N_HIDDEN), torch.nn.Linear(N_HIDDEN, N_OUT)
            with torch.no_grad():  # nn.Linear stores W transposed: (n_out, n_in)
                for layer, W, b in zip((first, second), (W1, W2), (b1, b2), strict=True):
                    layer.weight.copy_(W.T)
                    layer.bias.copy_(b)
            # The last sigmoid lives in the loss: BCEWithLogitsLoss, the fused form.
            self.model = torch.nn.Sequential(first, torch.nn.Sigmoid(), second)
            self.head = None
            self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.siglayer_layers = siglayer_layers
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)

    def train_on(self, x, y):
        import torch

        if isinstance(x, np.ndarray):
            x, y = torch.from_numpy(x), torch.from_numpy(y)
        self.optimizer.zero_grad()
        if self.head is not None:
            loss = self.head.bce_loss(self.model[0](x), y)
        else:
            loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def weights(self):
        params = [p.detach().numpy() for p in self.model.parameters()]
        if not self.siglayer_layers:
            params[0], params[2] = params[0].T, params[2].T
        return params


class JaxTrainer(Trainer):
    """The network as one jitted JAX step (value_and_grad, Adam as torch.optim.Adam in
    jax.numpy), with JAX's own layers (``jax.nn.sigmoid(x @ W + b)``, the last sigmoid
    inside a binary cross-entropy on logits, the fused form) or with
    ``siglayer.jax.sigmoid_linear`` for both (binary cross-entropy on its sigmoid
    outputs, each log clamped at -100 as siglayer's and PyTorch's BCELoss). Each step
    waits for its result (block_until_ready), as a loop that reads the loss would."""

    def __init__(self, batches, weights, *, siglayer_layers: bool):
        import jax
        import jax.numpy as jnp

        super().__init__([(jnp.asarray(x), jnp.asarray(y)) for x, y in batches])
        params = tuple(jnp.asarray(w) for w in weights)
        zeros = tuple(jnp.zeros_like(w) for w in params)
        self.state = (params, zeros, zeros, jnp.zeros((), jnp.int32))
        if siglayer_layers:
            from siglayer.jax import sigmoid_linear

            def clamped_log(p, positive):
                # log(p) clamped at -100, with a finite gradient where p is 0: the clamp
                # of the value alone left 0 * inf = nan in the gradient once an output
                # rounded to 0 or 1 (the weights were nan after ~7,500 steps).
                safe = jnp.where(positive, p, 1.0)
                return jnp.where(positive, jnp.maximum(jnp.log(safe), -100.0), -100.0)

            def loss_of(params, x, y):
                W1, b1, W2, b2 = params
                out = sigmoid_linear(sigmoid_linear(x, W1, b1), W2, b2)
                log_p = clamped_log(out, out > 0)
                log_q = clamped_log(1 - out, out < 1)
                return -jnp.mean(y * log_p + (1 - y) * log_q)

        else:

            def loss_of(params, x, y):
                W1, b1, W2, b2 = params
                z = jax.nn.sigmoid(x @ W1 + b1) @ W2 + b2
                # mean of softplus(z) - y z, the stable form of BCE on sigmoid(z)
                return jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))

        def step(state, x, y, beta1=0.9, beta2=0.999, eps=1e-8):
            params, m, v, t = state
            loss, grads = jax.value_and_grad(loss_of)(params, x, y)
            t = t + 1
            m = tuple(beta1 * a + (1 - beta1) * g for a, g in zip(m, grads, strict=True))
            v = tuple(beta2 * a + (1 - beta2) * g * g for a, g in zip(v, grads, strict=True))
            tf = t.astype(params[0].dtype)  # not float64 under jax_enable_x64
            c1, c2 = 1 - beta1**tf, jnp.sqrt(1 - beta2**tf)
            params = tuple(
                p - LR / c1 * a / (jnp.sqrt(b) / c2 + eps)
                for p, a, b in zip(params, m, v, strict=True)
            )
            return (params, m, v, t), loss

        self.jitted = jax.jit(step)

    def train_on(self, x, y):
        if isinstance(x, np.ndarray):
            import jax.numpy as jnp

            x, y = jnp.asarray(x), jnp.asarray(y)
        self.state, loss = self.jitted(self.state, x, y)
        return float(loss.block_until_ready())

    def weights(self):
        return [np.asarray(w) for w in self.state[0]]


def check_agreement(trainers: dict[str, Trainer], steps: int = 3) -> float:
    """Same loss on the first batch, and the same weights after each of the first
    ``steps`` steps (batches 0, 1, ...), for all. One Adam step moves each weight by about
    lr * sign(g) whatever the moments' betas; the later steps see them."""
    losses = {name: t.first_step() for name, t in trainers.items()}
    first = losses["siglayer"]
    for loss in losses.values():
        # float32 sums of 320 terms in different orders: a few float32 ulps apart.
        assert math.isclose(loss, first, rel_tol=1e-5), f"first-step loss: {losses}"
    for step in range(1, steps + 1):
        if step > 1:
            for t in trainers.values():
                t.train_on(*t.batches[step - 1])
        expected = trainers["siglayer"].weights()
        for name, trainer in trainers.items():
            for got, want in zip(trainer.weights(), expected, strict=True):
                np.testing.assert_allclose(
                    got, want, rtol=0, atol=1e-5, err_msg=f"{name}, after step {step}"
                )
    return first


def check_finite(trainers: dict[str, Trainer]) -> None:
    """After timing: no contender's weights went to inf or nan (which would have been
    timed as arithmetic on nan)."""
    for name, trainer in trainers.items():
        assert all(np.isfinite(w).all() for w in trainer.weights()), f"{name}: weights not finite"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n", 1)[0].split())  # the first paragraph
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument(
        "--jax", action="store_true", help="add the network as a jitted JAX step, both ways"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="threads for every library (default: each library's own default)",
    )
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="steps back to back, with no pause or warm-up before each turn (a script's view)",
    )
    args = parser.parse_args(argv)

    if args.jax:
        try:
            import jax
        except ImportError:
            parser.error("--jax needs jax (pip install jax)")
    have_torch = False
    if not args.no_torch:
        try:
            import torch

            have_torch = True
        except ImportError:
            print("torch is not installed: timing siglayer and NumPy only")
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        siglayer.set_num_threads(args.threads)
        if have_torch:
            torch.set_num_threads(args.threads)
        threadpool_limits(args.threads, user_api="blas")
    weights = initial_weights()
    warnings.filterwarnings("ignore", "overflow encountered in exp", RuntimeWarning)
    print(
        f"digits network {N_IN} -> {N_HIDDEN} -> {N_OUT}, sigmoid, binary cross-entropy, "
        f"Adam (lr {LR}), float32; one step = forward, loss, backward, update"
    )
    print(
        f"siglayer {siglayer.__version__} ({build_summary()}, "
        f"{siglayer.get_num_threads()} threads), numpy {np.__version__} ({numpy_blas()})"
        + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if have_torch else "")
        + (f", jax {jax.__version__} (XLA's own threads)" if args.jax else "")
        + f", Python {platform.python_version()}\nCPU: {cpu_model()}"
    )
    rows = []
    for batch_size in args.batch_sizes:
        batches = digits_batches(batch_size)
        trainers: dict[str, Trainer] = {
            "siglayer": SiglayerTrainer(batches, weights),
            "numpy": NumpyTrainer(batches, weights),
        }
        if have_torch:
            trainers["torch"] = TorchTrainer(batches, weights, siglayer_layers=False)
            trainers["torch+siglayer"] = TorchTrainer(batches, weights, siglayer_layers=True)
        if args.jax:
            trainers["jax"] = JaxTrainer(batches, weights, siglayer_layers=False)
            trainers["jax+siglayer"] = JaxTrainer(batches, weights, siglayer_layers=True)
        loss = check_agreement(trainers)
        contenders: dict[str, Callable[[], object]] = {n: t.step for n, t in trainers.items()}
        pause = {"settle_seconds": 0.0} if args.no_settle else {}
        seconds = interleaved_medians(contenders, rounds=args.rounds, **pause)
        check_finite(trainers)
        rows.append((batch_size, loss, seconds))

    names = list(rows[0][2])
    how = "back to back" if args.no_settle else "a settle pause and warm-up before each turn"
    print(
        f"\nsteps per second (median of {args.rounds} interleaved rounds, {how}; higher is better)"
    )
    header = f"{'batch':>5}  {'first loss':>10}  " + "  ".join(f"{n:>14}" for n in names)
    header += "  " + "  ".join(f"{'vs ' + n:>10}" for n in names[1:])
    print(header)
    for batch_size, loss, seconds in rows:
        line = f"{batch_size:>5}  {loss:>10.6f}  "
        line += "  ".join(f"{1 / seconds[n]:>14,.0f}" for n in names)
        line += "  " + "  ".join(f"{seconds[n] / seconds['siglayer']:>9.2f}x" for n in names[1:])
        print(line)
    print("('vs X': siglayer's steps per second over X's)")


if __name__ == "__main__":
    main()
