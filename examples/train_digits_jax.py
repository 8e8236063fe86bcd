"""Train the digits network (64 -> 32 -> 10, sigmoid) with siglayer inside JAX.

The same network and data as train_digits.py (scikit-learn's 8x8 digits, split 75/25,
one sigmoid output per digit, binary cross-entropy, Adam, mini-batches of 32), written as
a JAX program: both layers are ``siglayer.jax.sigmoid_linear``, and one training step
(forward, loss, ``jax.value_and_grad`` through siglayer's backward, the Adam update) is
one ``jax.jit``-compiled function. ``--compare`` trains JAX's own layers
(``jax.nn.sigmoid(x @ W + b)``) from the same start on the same batches and prints both.

    pip install ".[examples,jax]"                        # from the source checkout
    python examples/train_digits_jax.py                  # a few seconds
    python examples/train_digits_jax.py --epochs 40 --seed 1 --compare
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

N_IN, N_HIDDEN, N_CLASSES = 64, 32, 10
BATCH = 32


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, labels_train, x_test, labels_test), pixels scaled to [0, 1], float32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, l_train, l_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    return x_train, l_train, x_test, l_test


def initial_params(seed: int) -> tuple[np.ndarray, ...]:
    """(W1, b1, W2, b2) as siglayer's layers start: Glorot-uniform W, zero b."""
    import siglayer

    rng = np.random.default_rng(seed)
    first = siglayer.SigmoidLayer(N_IN, N_HIDDEN, seed=rng)
    second = siglayer.SigmoidLayer(N_HIDDEN, N_CLASSES, seed=rng)
    return (first.W.copy(), first.b.copy(), second.W.copy(), second.b.copy())


def make_step(
    layer: Callable[..., Any], lr: float
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(step, predict): step(state, x, y) -> (state, loss), one jitted Adam step on the
    binary cross-entropy of the network built from ``layer(x, W, b)``; predict(params, x)
    the network's outputs."""
    import jax
    import jax.numpy as jnp

    def network(params: Any, x: Any) -> Any:
        W1, b1, W2, b2 = params
        return layer(layer(x, W1, b1), W2, b2)

    def clamped_log(p: Any, positive: Any) -> Any:
        # log(p), clamped at -100 as PyTorch's BCELoss and siglayer's; where p is 0 the
        # value is -100 and the gradient 0 (a clamp of the value alone leaves nan there).
        return jnp.where(
            positive, jnp.maximum(jnp.log(jnp.where(positive, p, 1.0)), -100.0), -100.0
        )

    def loss_of(params: Any, x: Any, y: Any) -> Any:
        out = network(params, x)
        log_p, log_q = clamped_log(out, out > 0), clamped_log(1 - out, out < 1)
        return -jnp.mean(y * log_p + (1 - y) * log_q)

    def step(state: Any, x: Any, y: Any, beta1: float = 0.9, beta2: float = 0.999) -> Any:
        params, m, v, t = state
        loss, grads = jax.value_and_grad(loss_of)(params, x, y)
        t = t + 1
        m = tuple(beta1 * a + (1 - beta1) * g for a, g in zip(m, grads, strict=True))
        v = tuple(beta2 * a + (1 - beta2) * g * g for a, g in zip(v, grads, strict=True))
        tf = t.astype(jnp.float32)
        c1, c2 = 1 - beta1**tf, jnp.sqrt(1 - beta2**tf)
        params = tuple(
            p - lr / c1 * a / (jnp.sqrt(b) / c2 + 1e-8)
            for p, a, b in zip(params, m, v, strict=True)
        )
        return (params, m, v, t), loss

    return jax.jit(step), jax.jit(network)


def train(
    epochs: int, seed: int, *, lr: float = 0.01, own_layers: bool = False, verbose: bool = True
) -> dict[str, float]:
    """Trains from seed's split and start; returns the final losses and accuracies."""
    import jax
    import jax.numpy as jnp

    if own_layers:

        def layer(x: Any, W: Any, b: Any) -> Any:
            return jax.nn.sigmoid(x @ W + b)
    else:
        from siglayer.jax import sigmoid_linear as layer

    x_train, l_train, x_test, l_test = load_split(seed)
    y_train = np.eye(N_CLASSES, dtype=np.float32)[l_train]
    params = tuple(jnp.asarray(p) for p in initial_params(seed))
    zeros = tuple(jnp.zeros_like(p) for p in params)
    state = (params, zeros, zeros, jnp.zeros((), jnp.int32))
    step, predict = make_step(layer, lr)
    order_rng = np.random.default_rng(seed)
    batches = len(x_train) // BATCH  # whole batches: one shape, one compile
    loss = math.nan
    for epoch in range(epochs):
        order = order_rng.permutation(len(x_train))
        total = 0.0
        for i in range(batches):
            rows = order[i * BATCH : (i + 1) * BATCH]
            state, loss = step(state, x_train[rows], y_train[rows])
            total += float(loss)
        if verbose and (epoch + 1) % 10 == 0:
            accuracy = float(np.mean(np.argmax(predict(state[0], x_test), axis=1) == l_test))
            mean_loss = total / batches
            print(f"epoch {epoch + 1:3d}: train loss {mean_loss:.4f}, test accuracy {accuracy:.3f}")
    test_out = np.asarray(predict(state[0], x_test))
    train_out = np.asarray(predict(state[0], x_train))
    return {
        "train_loss": total / batches,
        "train_accuracy": float(np.mean(np.argmax(train_out, axis=1) == l_train)),
        "test_accuracy": float(np.mean(np.argmax(test_out, axis=1) == l_test)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n", 1)[0].split())  # the first paragraph
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--compare", action="store_true", help="also train JAX's own layers")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a finite positive number, got {args.lr}")
    for module, extra in (("sklearn", "examples"), ("jax", "jax")):
        try:
            importlib.import_module(module)
        except ImportError:
            parser.error(f'this example needs {module}: pip install ".[{extra}]" from the checkout')
    from siglayer.jax import ffi_available

    path = "XLA FFI" if ffi_available() else "jax.pure_callback"
    print(f"siglayer.jax layers ({path}), {args.epochs} epochs, seed {args.seed}")
    ours = train(args.epochs, args.seed, lr=args.lr)
    print(f"siglayer.jax: test accuracy {ours['test_accuracy']:.3f}")
    if args.compare:
        theirs = train(args.epochs, args.seed, lr=args.lr, own_layers=True, verbose=False)
        print(f"jax.nn:       test accuracy {theirs['test_accuracy']:.3f}")


if __name__ == "__main__":
    main()
