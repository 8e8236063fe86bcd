"""siglayer inside PyTorch: ``sigmoid_linear`` (an autograd Function) and ``SigmoidLinear``
(an nn.Module), both running siglayer's compiled kernels on CPU tensors.

Importable only when PyTorch is installed (``pip install "siglayer[torch]"``); it is not
imported by ``import siglayer``.

Tensors cross into the kernels without a copy: a CPU tensor's ``.numpy()`` is a view of
the same memory, and outputs and gradients are allocated as tensors and written through
such views. Any strides are accepted (non-contiguous tensors are read as they are, or
packed once by the core).

**Layout of W.** Here W is (n_in, n_out), as everywhere in siglayer, and the layer is
``sigmoid(x @ W + b)``. ``torch.nn.Linear`` stores its weight as (n_out, n_in) and computes
``x @ weight.T + bias``: ``SigmoidLinear.from_linear(linear)`` converts, and
``layer.W.T`` is the equivalent Linear weight.

Supported: float32 and float64 CPU tensors (strided layout), x of shape (..., n_in),
W (n_in, n_out), b (n_out,), any subset of them requiring grad. Everything else is an
error that says why: CUDA and other devices, other dtypes, mixed dtypes, sparse
tensors; and differentiating twice (``create_graph=True``: the backward is not itself
differentiable, and a silent zero second derivative would be wrong).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:
    import torch
    from torch.autograd.function import FunctionCtx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "siglayer.torch needs PyTorch, which is not installed: pip install 'siglayer[torch]' "
        "(or pip install torch==2.13.0 for the CPU build). The rest of siglayer works "
        "without it."
    ) from exc

from . import _api

__all__ = ["SigmoidLinear", "SigmoidLinearFunction", "sigmoid_linear"]

_DTYPES = (torch.float32, torch.float64)


def _check_tensor(t: object, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(
            f"{name} is on {t.device}; siglayer.torch runs on CPU tensors only: "
            f"pass {name}.cpu(), or use torch.nn.Linear + torch.sigmoid on "
            f"{t.device.type}"
        )
    if t.layout != torch.strided:
        raise TypeError(f"{name} has layout {t.layout}; pass a dense tensor ({name}.to_dense())")
    if t.dtype not in _DTYPES:
        raise TypeError(
            f"{name} has dtype {t.dtype}; siglayer computes in torch.float32 or "
            f"torch.float64 and never converts silently: pass {name}.float() or "
            f"{name}.double()"
        )
    return t


def _numpy(t: torch.Tensor) -> np.ndarray[Any, np.dtype[np.floating]]:
    """A NumPy view of t's memory (resolving a lazy negation or conjugation first)."""
    return t.detach().resolve_neg().resolve_conj().numpy()


class SigmoidLinearFunction(torch.autograd.Function):
    """``sigmoid(x @ W + b)`` with siglayer's forward and backward kernels.

    Use it through :func:`sigmoid_linear`.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor
    ) -> torch.Tensor:
        out = torch.empty((*x.shape[:-1], W.shape[1]), dtype=x.dtype)
        _api.forward(_numpy(x), _numpy(W), _numpy(b), out=out.numpy())
        # Saving out lets backward skip recomputing the sigmoid; autograd's version
        # counters reject a backward after out, x or W was changed in place.
        ctx.save_for_backward(x, W, out)
        return out

    @staticmethod
    def backward(
        ctx: Any, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        # Autograd runs backward with grad mode on only for create_graph=True. The kernels'
        # gradients are not differentiable; returning them anyway would silently drop
        # every second-order term (a gradient penalty would lose its dependence on W).
        if torch.is_grad_enabled():
            raise RuntimeError(
                "siglayer.torch.sigmoid_linear has no double backward (create_graph=True); "
                "use torch.sigmoid(x @ W + b) where second derivatives are needed"
            )
        x, W, out = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad[:3]
        if not (need_x or need_W or need_b):
            return None, None, None
        dx = torch.empty(x.shape, dtype=x.dtype) if need_x else None
        # The core always computes dW and db together (db is a by-product of dW's sweep).
        dW = torch.empty(W.shape, dtype=W.dtype)
        db = torch.empty(W.shape[1], dtype=W.dtype)
        _api.backward(
            _numpy(grad_out),
            _numpy(x),
            _numpy(W),
            _numpy(out),
            need_dx=need_x,
            dx=None if dx is None else dx.numpy(),
            dW=dW.numpy(),
            db=db.numpy(),
        )
        return dx, dW if need_W else None, db if need_b else None


def sigmoid_linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.sigmoid(x @ W + b)`` computed by siglayer, differentiable by autograd.

    Parameters
    ----------
    x : Tensor, shape (..., n_in)
    W : Tensor, shape (n_in, n_out)
        Note the layout: torch.nn.Linear's weight is (n_out, n_in), so
        ``sigmoid_linear(x, linear.weight.T, linear.bias)`` equals
        ``torch.sigmoid(linear(x))``.
    b : Tensor, shape (n_out,)

    All three on the CPU, of one dtype (float32 or float64), any strides. Gradients are
    computed for those that require them.

    Returns
    -------
    Tensor, shape (..., n_out), contiguous, of the inputs' dtype.

    Raises
    ------
    TypeError
        A non-tensor, an unsupported or mixed dtype, a sparse tensor.
    ValueError
        A tensor on another device than the CPU; shapes that do not fit together.

    Examples
    --------
    >>> import torch
    >>> from siglayer.torch import sigmoid_linear
    >>> x = torch.zeros(2, 3); W = torch.ones(3, 4, requires_grad=True); b = torch.zeros(4)
    >>> out = sigmoid_linear(x, W, b)
    >>> out.sum().backward()
    >>> W.grad.shape
    torch.Size([3, 4])
    """
    for name, t in (("x", x), ("W", W), ("b", b)):
        _check_tensor(t, name)
    if not x.dtype == W.dtype == b.dtype:
        raise TypeError(
            f"x, W and b must share one dtype; got x {x.dtype}, W {W.dtype}, b {b.dtype}"
        )
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D (n_in, n_out), got shape {tuple(W.shape)}")
    if x.dim() == 0 or x.shape[-1] != W.shape[0]:
        raise ValueError(
            f"x has shape {tuple(x.shape)}, expected (..., {W.shape[0]}) for W "
            f"of shape {tuple(W.shape)} (n_in, n_out)"
        )
    if b.dim() != 1 or b.shape[0] != W.shape[1]:
        raise ValueError(
            f"b has shape {tuple(b.shape)}, expected ({W.shape[1]},) for W of "
            f"shape {tuple(W.shape)}"
        )
    result = SigmoidLinearFunction.apply(x, W, b)  # type: ignore[no-untyped-call]
    assert isinstance(result, torch.Tensor)
    return result


class SigmoidLinear(torch.nn.Module):
    """A dense layer followed by a sigmoid, ``sigmoid(x @ W + b)``, run by siglayer.

    The drop-in for ``torch.nn.Sequential(torch.nn.Linear(n_in, n_out), torch.nn.Sigmoid())``
    on the CPU, except for the layout of the weight:

    Parameters
    ----------
    n_in, n_out : int
    dtype : torch.float32 (default) or torch.float64
    seed : int or None
        With an int, W is exactly ``siglayer.SigmoidLayer(n_in, n_out, seed=seed).W``
        (Glorot-uniform from NumPy's generator); with None it is Glorot-uniform from
        torch's global generator (so ``torch.manual_seed`` makes it reproducible).

    Attributes
    ----------
    W : Parameter, shape (n_in, n_out)
        **Not** (n_out, n_in) as torch.nn.Linear's weight: ``W == linear.weight.T``.
    b : Parameter, shape (n_out,)
        Zero at initialisation.

    Examples
    --------
    >>> import torch
    >>> from siglayer.torch import SigmoidLinear
    >>> layer = SigmoidLinear(64, 10, seed=0)
    >>> layer(torch.zeros(5, 64)).shape
    torch.Size([5, 10])
    """

    def __init__(
        self, n_in: int, n_out: int, *, dtype: torch.dtype = torch.float32, seed: int | None = None
    ) -> None:
        super().__init__()
        for name, v in (("n_in", n_in), ("n_out", n_out)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if dtype not in _DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.n_in, self.n_out = n_in, n_out
        if seed is None:
            limit = math.sqrt(6.0 / (n_in + n_out))
            W = torch.empty(n_in, n_out, dtype=dtype).uniform_(-limit, limit)
        else:
            from .nn import SigmoidLayer

            np_dtype = np.float32 if dtype == torch.float32 else np.float64
            W = torch.from_numpy(SigmoidLayer(n_in, n_out, dtype=np_dtype, seed=seed).W.copy())
        self.W = torch.nn.Parameter(W)
        self.b = torch.nn.Parameter(torch.zeros(n_out, dtype=dtype))

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> SigmoidLinear:
        """The SigmoidLinear computing ``torch.sigmoid(linear(x))``: W = weight.T, b = bias
        (zero when the Linear has none), copied."""
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        n_out, n_in = linear.weight.shape
        layer = cls(n_in, n_out, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.W.copy_(linear.weight.T)
            if linear.bias is not None:
                layer.b.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sigmoid_linear(x, self.W, self.b)

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_out={self.n_out}, W: (n_in, n_out)"
