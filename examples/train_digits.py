"""Train a 64 -> 32 -> 10 sigmoid network on scikit-learn's digits with siglayer.

The 8x8 images of handwritten digits that ship with scikit-learn (1797 of them, no
download) are split 75/25 into a training and a test set, stratified by class. Each of
the 10 outputs is a one-vs-rest classifier (is this digit a 3?) trained with binary
cross-entropy fused with the last sigmoid; the predicted digit is the most confident
output. Adam, mini-batches of 32.

    pip install ".[examples]"                            # from the source checkout
    python examples/train_digits.py                      # about a second
    python examples/train_digits.py --epochs 40 --seed 1 --plot curves.png
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

import siglayer
from siglayer.losses import BCELoss, bce_loss

N_CLASSES = 10


@dataclass
class History:
    """Per-epoch curves and the totals of one training run."""

    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def load_digits_split(
    seed: int, dtype: type = np.float32
) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """(x_train, labels_train, x_test, labels_test): pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(dtype)  # (1797, 64); pixel values are 0..16
    labels = digits.target.astype(np.int64)
    x_train, x_test, l_train, l_test = train_test_split(
        x, labels, test_size=0.25, random_state=seed, stratify=labels
    )
    return np.ascontiguousarray(x_train), l_train, np.ascontiguousarray(x_test), l_test


def one_hot(labels: NDArray, dtype: type = np.float32) -> NDArray:
    """(n,) class indices -> (n, 10) targets, 1 for the class and 0 elsewhere."""
    targets = np.zeros((labels.size, N_CLASSES), dtype)
    targets[np.arange(labels.size), labels] = 1
    return targets


def build_network(
    seed: int, hidden: int = 32, dtype: type | str = np.float32
) -> siglayer.Sequential:
    rng = np.random.default_rng(seed)
    return siglayer.Sequential(
        siglayer.SigmoidLayer(64, hidden, dtype=dtype, seed=rng),
        siglayer.SigmoidLayer(hidden, N_CLASSES, dtype=dtype, seed=rng),
    )


def evaluate(net: siglayer.Sequential, x: NDArray, labels: NDArray) -> tuple[float, float]:
    """(mean binary cross-entropy, accuracy) of the network on x."""
    out = net(x).astype(x.dtype)  # a bfloat16 network's output, widened for the loss
    accuracy = float(np.mean(out.argmax(axis=1) == labels))
    return bce_loss(out, one_hot(labels, x.dtype.type)), accuracy


def train(
    epochs: int,
    seed: int,
    *,
    batch_size: int = 32,
    lr: float = 0.01,
    dtype: str = "float32",
    verbose: bool = True,
) -> History:
    """Adam on binary cross-entropy. dtype="bfloat16" trains in mixed precision: the layers
    compute in bfloat16 on float32 master weights, the loss is computed in float32."""
    x_train, l_train, x_test, l_test = load_digits_split(seed)
    y_train = one_hot(l_train)
    net = build_network(seed, dtype=dtype)
    loss_fn = BCELoss()
    optimizer = siglayer.optim.Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed + 1)
    history = History()
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        # One shuffled copy per epoch; the batches are then contiguous views of it.
        order = rng.permutation(len(x_train))
        x_epoch, y_epoch = x_train[order], y_train[order]
        for i in range(0, len(x_epoch), batch_size):
            out = net(x_epoch[i : i + batch_size])  # bfloat16 for a bfloat16 network
            loss_fn(out.astype(np.float32), y_epoch[i : i + batch_size])
            # A float32 dL/dZ; a bfloat16 network rounds it to bfloat16 once.
            net.backward_from_preactivation(loss_fn.backward())
            optimizer.step()
        history.steps += -(-len(x_epoch) // batch_size)
        train_loss, train_acc = evaluate(net, x_train, l_train)
        test_loss, test_acc = evaluate(net, x_test, l_test)
        history.train_loss.append(train_loss)
        history.test_loss.append(test_loss)
        history.train_accuracy.append(train_acc)
        history.test_accuracy.append(test_acc)
        if verbose:
            print(
                f"epoch {epoch:3d}/{epochs}  train loss {train_loss:.4f}  acc {train_acc:6.1%}"
                f"  |  test loss {test_loss:.4f}  acc {test_acc:6.1%}"
                f"  |  {time.perf_counter() - start:5.2f} s",
                flush=True,
            )
    history.seconds = time.perf_counter() - start
    return history


def plot(history: History, path: str) -> None:
    """Loss and accuracy per epoch, train and test, side by side, saved to path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history.train_loss) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_loss.plot(epochs, history.train_loss, label="train")
    ax_loss.plot(epochs, history.test_loss, label="test")
    ax_loss.set(xlabel="epoch", ylabel="binary cross-entropy", yscale="log", title="Loss")
    ax_acc.plot(epochs, 100 * np.asarray(history.train_accuracy), label="train")
    ax_acc.plot(epochs, 100 * np.asarray(history.test_accuracy), label="test")
    ax_acc.axhline(95, color="gray", linestyle=":", linewidth=1, label="95%")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy", ylim=(50, 100.5))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("siglayer: 64 → 32 → 10 sigmoid network on scikit-learn digits")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> History:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="passes over the training set")
    parser.add_argument("--seed", type=int, default=0, help="split, initialisation and shuffling")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="bfloat16: mixed precision on float32 master weights (needs ml-dtypes)",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="save the loss and accuracy curves")
    args = parser.parse_args(argv)
    # Checked here, before any work: a batch size of 0 was a ValueError from range() deep
    # in the loop, a negative one an empty epoch, a negative seed an error of NumPy's.
    for option, value, low in (
        ("--epochs", args.epochs, 1),
        ("--batch-size", args.batch_size, 1),
        ("--seed", args.seed, 0),
    ):
        if value < low:
            parser.error(f"{option} must be >= {low}, got {value}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a finite number > 0, got {args.lr}")
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        parser.error(f"--plot {args.plot}: its folder does not exist (checked before training)")
    # The examples extra, checked before any work rather than met as a traceback.
    for module, package in (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")):
        if module == "matplotlib" and not args.plot:
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            parser.exit(
                1, f'train_digits.py needs {package}: pip install ".[examples]" from the checkout\n'
            )
    history = train(
        args.epochs, args.seed, batch_size=args.batch_size, lr=args.lr, dtype=args.dtype
    )
    print(
        f"test accuracy {history.test_accuracy[-1]:.1%} after {args.epochs} epochs, "
        f"{history.steps} steps in {history.seconds:.2f} s "
        f"({history.steps / history.seconds:,.0f} steps/s including evaluation)"
    )
    if args.plot:
        plot(history, args.plot)
        print(f"curves saved to {args.plot}")
    return history


if __name__ == "__main__":
    main()
