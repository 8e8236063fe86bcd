"""siglayer inside PyTorch: the operators ``torch.ops.siglayer.sigmoid_linear`` and
``torch.ops.siglayer.sigmoid_linear_backward``, the function ``sigmoid_linear`` and the
module ``SigmoidLinear``, all running siglayer's compiled kernels on CPU tensors.

Importable only when PyTorch is installed (the CPU build: ``pip install torch==2.13.0
--index-url https://download.pytorch.org/whl/cpu``, or ``pip install ".[torch]"`` from
a source checkout); it is not imported by ``import siglayer``.

**Operators.** Importing this module registers four ``torch.library`` custom operators
in the namespace ``siglayer``, with fake (meta) kernels, autograd kernels (reverse and
forward mode), batching rules and FLOP formulas, so that ``torch.compile(...,
fullgraph=True)``, ``torch.export``, ``torch.func`` and ``torch.library.opcheck`` see
them as ordinary PyTorch operators:

- ``siglayer::sigmoid_linear(Tensor x, Tensor W, Tensor b) -> Tensor``: out, shape
  (..., n_out), contiguous;
- ``siglayer::sigmoid_linear_backward(Tensor dout, Tensor x, Tensor W, Tensor out,
  bool need_dx, bool need_dW=True) -> (Tensor, Tensor, Tensor)``: (dx, dW, db),
  contiguous; dx has x's shape, or is empty (shape (0,)) with ``need_dx=False``; dW
  likewise with ``need_dW=False`` (autograd asks for neither when the input does not
  require grad: a frozen W costs no dW product);
- ``siglayer::sigmoid_linear_bce`` and ``siglayer::sigmoid_linear_backward_from_
  preactivation``: the layer fused with binary cross-entropy (see
  ``sigmoid_linear_bce_loss``) and its backward.

In plain eager mode ``sigmoid_linear`` runs the same kernels and autograd formula
through a private ``autograd.Function`` instead (see ``_Eager``: same results, bit for
bit, at a fraction of the dispatch cost); compile, export, torch.func transforms and
Python modes get the operators.

Their CPU kernels hand the tensors to the compiled core as NumPy views of the same memory
(no copy; the core stays free of torch and is not built against libtorch), and wrap the
arrays the core allocates as tensors. Any strides are accepted (non-contiguous tensors
are read as they are, or packed once by the core).

**Layout of W.** Here W is (n_in, n_out), as everywhere in siglayer, and the layer is
``sigmoid(x @ W + b)``. ``torch.nn.Linear`` stores its weight as (n_out, n_in) and computes
``x @ weight.T + bias``: ``SigmoidLinear.from_linear(linear)`` converts, and
``layer.W.T`` is the equivalent Linear weight.

Supported: float32 and float64 CPU tensors (strided layout), x of shape (..., n_in),
W (n_in, n_out), b (n_out,), any subset of them requiring grad. Everything else is an
error that says why: CUDA and other devices, other dtypes, mixed dtypes, sparse
tensors; and differentiating twice (``create_graph=True``: the backward is not itself
differentiable, and a silent zero second derivative would be wrong).

**bfloat16.** x and W may be torch.bfloat16, with b torch.bfloat16 or torch.float32 (a
float32 master bias); out is bfloat16. The core accumulates the products in float32 and
rounds out once. The backward operator returns what the core computes: dx bfloat16, dW
and db float32 (dZ rounded once to bfloat16 for the products, db summed from the
unrounded dZ). Autograd needs each gradient in its input's dtype, so the autograd
formula rounds dW to bfloat16 once (round to nearest even) and db to b's dtype (a
float32 b keeps a float32 db, unrounded); eager calls with a bfloat16 W and b have the
core round both as it writes them, the same bits. torch.float16 is refused (it is not bfloat16).
bfloat16 tensors reach the core as ``ml_dtypes.bfloat16`` NumPy views of the same
memory, so they need ml_dtypes (``pip install ml-dtypes``), imported on first use.

**torch.autocast** (CPU): with its bfloat16, x and W are cast to bfloat16 (a float32 b is
kept) and out is bfloat16, as nn.Linear computes there; the fused loss runs in float32;
a float16 autocast computes in float32. **torch.func**: grad, vjp, jacrev, jvp, jacfwd,
vmap and functional_call work (see _Transformed); second derivatives raise. Where the
operators themselves run (compiled or exported graphs, direct calls) forward mode works
too, and inside a torch.func transform they differentiate as PyTorch's own formula
around siglayer's value, second derivatives included (see _sigmoid_linear_autograd).

**Threads.** The kernels' work is shared by ``siglayer.set_num_threads`` threads;
``torch.set_num_threads`` sizes PyTorch's pool only. Called on the thread that imported
siglayer, the kernels run their threads on PyTorch's own OpenMP pool (libgomp), whose
workers are still awake after the operator before, rather than on siglayer's, which
would find a core taken by them; only where PyTorch's pool has at least as many threads
(``SIGLAYER_POOL``; docs/reliability.md, "Threads beside other libraries", also on
forking after such calls).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np

try:
    import torch
    from torch import Tensor
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "siglayer.torch needs PyTorch, which is not installed: pip install torch==2.13.0 "
        "--index-url https://download.pytorch.org/whl/cpu (the CPU build). The rest of "
        "siglayer works without it."
    ) from exc

import torch.utils.flop_counter as _flop_counter

from . import _api, _core
from ._dtypes import bfloat16, is_bfloat16
from .nn import _positive_int

__all__ = ["SigmoidLinear", "sigmoid_linear", "sigmoid_linear_bce_loss"]

_BFLOAT16 = torch.bfloat16
_DTYPES = (torch.float32, torch.float64, _BFLOAT16)
_STRIDED = torch.strided
_tracing = torch._C._is_tracing  # torch.jit.trace


def _check_quietly(check: Callable[..., None], *args: Any) -> None:
    """check(*args) under torch.jit.trace, whose warnings about shapes read as Python values
    are silenced: a check reads the traced shapes once, and the trace records the operator."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit._trace.TracerWarning)
        check(*args)


def _fx_call_or_raise(
    error: TypeError, compiling: bool, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """After a public function's checks refused its arguments: under
    torch.fx.symbolic_trace (a Proxy among args, outside torch.compile) the function
    recorded as one call, which a module that imported it by name needs too
    (torch.fx.wrap below only covers this module's own name); otherwise the error."""
    proxy = None if compiling else next((a for a in args if isinstance(a, torch.fx.Proxy)), None)
    if proxy is None:
        raise error
    return proxy.tracer.create_proxy("call_function", _PUBLIC[name], args, kwargs)


def _check(x: object, W: object, b: object) -> None:
    """Raise the TypeError or ValueError that ``sigmoid_linear(x, W, b)`` deserves, if any.

    Runs in front of the operator in eager mode and inside its fake kernels under
    torch.compile and torch.export, so both report the same errors.
    """
    # The common case in a few attribute reads; the branches below only find the culprit.
    if (
        isinstance(x, Tensor)
        and isinstance(W, Tensor)
        and isinstance(b, Tensor)
        and x.is_cpu
        and W.is_cpu
        and b.is_cpu
        and x.layout is _STRIDED
        and W.layout is _STRIDED
        and b.layout is _STRIDED
        and not (x.is_nested or W.is_nested or b.is_nested)
        and x.dtype in _DTYPES
        and x.dtype == W.dtype
        and (b.dtype == x.dtype or (b.dtype == torch.float32 and x.dtype == _BFLOAT16))
        and W.ndim == 2
        and b.ndim == 1
        and x.ndim >= 1
        and x.shape[-1] == W.shape[0]
        and b.shape[0] == W.shape[1]
    ):
        return
    half = [n for n, t in (("x", x), ("W", W), ("b", b)) if _is_float16(t)]
    if len(half) > 1 and all(isinstance(t, Tensor) for t in (x, W, b)):
        # A module after .half(), say: name them all, and the module's fix.
        names = ", ".join(half[:-1]) + " and " + half[-1]
        raise TypeError(
            f"{names} have dtype torch.float16; siglayer takes torch.float32, "
            f"torch.float64 or torch.bfloat16 and never converts silently: convert them "
            f"all (a SigmoidLinear: module.float(), and x.float(); the layer alone also "
            f"runs in torch.bfloat16)"
        )
    for name, t in (("x", x), ("W", W), ("b", b)):
        _check_tensor(t, name)
    assert isinstance(x, Tensor) and isinstance(W, Tensor) and isinstance(b, Tensor)
    _check_dtypes(x.dtype, W.dtype, b.dtype)
    _check_devices({"x": x, "W": W, "b": b})
    _check_x_and_W_shapes(x, W)
    if b.dim() != 1 or b.shape[0] != W.shape[1]:
        raise ValueError(
            f"b has shape {tuple(b.shape)}, expected ({W.shape[1]},) for W of "
            f"shape {tuple(W.shape)}"
        )


def _check_x_and_W_shapes(x: Tensor, W: Tensor) -> None:
    """W (n_in, n_out) and x (..., n_in), or the ValueError naming the one that is not."""
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D (n_in, n_out), got shape {tuple(W.shape)}")
    if x.dim() == 0 or x.shape[-1] != W.shape[0]:
        hint = (
            "; pass W.T if it is a torch.nn.Linear's weight, (out_features, in_features)"
            if x.dim() > 0 and x.shape[-1] == W.shape[1]
            else ""
        )
        raise ValueError(
            f"x has shape {tuple(x.shape)}, expected (..., {W.shape[0]}) for W "
            f"of shape {tuple(W.shape)} (n_in, n_out){hint}"
        )


def _check_backward(per_row: dict[str, object], x: object, W: object) -> None:
    """The backward operators' arguments: x (..., n_in) and W (n_in, n_out) as for the
    forward, and per_row (dout and out, or dZ) of shape (..., n_out) in x's dtype. Autograd
    always passes such; a direct call of torch.ops.siglayer.* (or a traced graph that
    calls one) gets the error naming the argument, in the CPU kernel and in the fake one
    alike (a review found the fake kernel checked nothing and the CPU kernel answered
    with NumPy's advice)."""
    if (
        isinstance(x, Tensor)
        and isinstance(W, Tensor)
        and x.dtype == W.dtype
        and x.dtype in _DTYPES
        and not (x.is_nested or W.is_nested)
        and W.ndim == 2
        and x.ndim >= 1
        and x.shape[-1] == W.shape[0]
        and x.device == W.device
        and x.layout is _STRIDED
        and W.layout is _STRIDED
        and all(
            isinstance(t, Tensor)
            and t.dtype == x.dtype
            and t.device == x.device
            and t.layout is _STRIDED
            and not t.is_nested
            and t.shape == (*x.shape[:-1], W.shape[1])
            for t in per_row.values()
        )
    ):
        return
    for name, t in (("x", x), ("W", W), *per_row.items()):
        _check_tensor(t, name)
    assert isinstance(x, Tensor) and isinstance(W, Tensor)
    tensors = {"x": x, "W": W, **{k: v for k, v in per_row.items() if isinstance(v, Tensor)}}
    _check_devices(tensors)
    if W.dtype != x.dtype:
        raise TypeError(f"x and W must share one dtype; got x {x.dtype}, W {W.dtype}")
    _check_x_and_W_shapes(x, W)
    want = (*x.shape[:-1], W.shape[1])
    for name, t in per_row.items():
        assert isinstance(t, Tensor)
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected x's, {x.dtype}")
        if tuple(t.shape) != want:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, expected {want} from x "
                f"{tuple(x.shape)} and W {tuple(W.shape)}"
            )


def _check_devices(tensors: dict[str, Tensor]) -> None:
    """All on the CPU, or all on the meta device (shape inference, no data)."""
    if len({t.device.type for t in tensors.values()}) > 1:
        devices = ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        raise ValueError(f"{devices}: all must be on the CPU, or all on the meta device")


def _is_float16(t: object) -> bool:
    return isinstance(t, Tensor) and t.dtype == torch.float16


def _check_tensor(t: object, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type not in ("cpu", "meta"):  # meta: shapes only, through the fake kernels
        raise ValueError(
            f"{name} is on {t.device}; siglayer.torch runs on CPU tensors only: "
            f"pass {name}.cpu(), or use torch.nn.Linear + torch.sigmoid on "
            f"{t.device.type}"
        )
    if t.layout != torch.strided:
        raise TypeError(f"{name} has layout {t.layout}; pass a dense tensor ({name}.to_dense())")
    if t.is_nested:  # strided layout, but no one shape
        raise TypeError(
            f"{name} is a nested tensor; siglayer takes dense tensors: pad it "
            f"({name}.to_padded_tensor(0.0)) or pass its components one by one"
        )
    if t.dtype == torch.float16:
        raise TypeError(
            f"{name} has dtype torch.float16, which is not bfloat16; siglayer takes "
            f"torch.float32, torch.float64 or torch.bfloat16 and never converts silently: "
            f"pass {name}.to(torch.bfloat16) or {name}.float()"
        )
    if t.dtype not in _DTYPES:
        raise TypeError(
            f"{name} has dtype {t.dtype}; siglayer computes in torch.float32 or "
            f"torch.float64 (or stores torch.bfloat16) and never converts silently: pass "
            f"{name}.float() or {name}.double()"
        )


def _check_dtypes(x: torch.dtype, W: torch.dtype, b: torch.dtype) -> None:
    """One dtype for x, W and b, except that bfloat16 x and W may have a float32 b."""
    if x == W and (b == x or (x == _BFLOAT16 and b == torch.float32)):
        return
    autocast = ""
    if torch.is_autocast_enabled("cpu") and torch.float64 in (x, W, b):
        autocast = (
            f"; inside torch.autocast, which casts float32 tensors to "
            f"{torch.get_autocast_dtype('cpu')} and leaves float64 ones as they are: pass "
            f"float32 tensors (x.float()), or call outside autocast"
        )
    raise TypeError(
        f"x, W and b must share one dtype; got x {x}, W {W}, b {b} (with torch.bfloat16 "
        f"x and W, b may also be torch.float32){autocast}"
    )


# The operators are defined with torch.library's lower-level calls (define, impl,
# register_fake, an Autograd kernel of their own) rather than the torch.library.custom_op
# decorator:
# custom_op wraps every kernel call in Python layers (a dynamo-disabling frame, an
# aliasing check, a redispatch), which cost more than the whole kernel call at small
# sizes (bench/bench_torch.py). Fake kernels, autograd and the opcheck-tested
# contract are the same.
_LIBRARY = torch.library.Library("siglayer", "DEF")  # type: ignore[no-untyped-call]
_TAGS = (torch.Tag.pt2_compliant_tag,)
torch.library.define(
    "siglayer::sigmoid_linear", "(Tensor x, Tensor W, Tensor b) -> Tensor", lib=_LIBRARY, tags=_TAGS
)
torch.library.define(
    "siglayer::sigmoid_linear_backward",
    "(Tensor dout, Tensor x, Tensor W, Tensor out, bool need_dx, bool need_dW=True) "
    "-> (Tensor, Tensor, Tensor)",
    lib=_LIBRARY,
    tags=_TAGS,
)
torch.library.define(
    "siglayer::sigmoid_linear_bce",
    "(Tensor x, Tensor W, Tensor b, Tensor target, str reduction) -> (Tensor, Tensor)",
    lib=_LIBRARY,
    tags=_TAGS,
)
torch.library.define(
    "siglayer::sigmoid_linear_backward_from_preactivation",
    "(Tensor dZ, Tensor x, Tensor W, bool need_dx, bool need_dW=True) -> (Tensor, Tensor, Tensor)",
    lib=_LIBRARY,
    tags=_TAGS,
)

# The CPU kernels. The dispatcher has already resolved lazy negation and conjugation,
# and numpy(force=True) detaches without a copy on the CPU (it would copy from another
# device, which _check rules out). The core checks dtypes, shapes and strides itself
# and allocates its results, which torch.from_numpy wraps without a copy.


# The kernels' calls into the core run on PyTorch's OpenMP pool (libgomp), whose workers
# are awake after the operator before, instead of siglayer's own, which would find a core
# taken by them (docs/reliability.md, "Threads beside other libraries"; SIGLAYER_POOL).
_F = TypeVar("_F", bound=Callable[..., Any])


def _on_torch_pool(kernel: _F) -> _F:
    @functools.wraps(kernel)
    def call(*args: Any) -> Any:
        before = _core.set_torch_caller(True)
        try:
            return kernel(*args)
        finally:
            _core.set_torch_caller(before)

    return cast(_F, call)


def _to_numpy(t: Tensor) -> np.ndarray[Any, Any]:
    """The tensor's memory as an ndarray, no copy, strides kept. NumPy has no bfloat16
    of its own: a bfloat16 tensor is read as int16 (same size, so any strides) and
    that array viewed as ml_dtypes.bfloat16, the same bits."""
    if t.dtype == _BFLOAT16:
        try:
            bits: np.ndarray[Any, Any] = t.view(torch.int16).numpy(force=True)
        except RuntimeError:  # a lazy negation, which no view may carry: resolved (a copy)
            bits = t.resolve_neg().view(torch.int16).numpy(force=True)
        return bits.view(bfloat16())  # ImportError naming ml-dtypes if it is missing
    try:
        # 0.7-1.1 us where numpy(force=True) takes 1.6 (T size: seven of these a step).
        array: np.ndarray[Any, Any] = (t.detach() if t.requires_grad else t).numpy()
    except RuntimeError:  # a lazy negation or conjugation: force=True resolves it
        array = t.numpy(force=True)
    return array


def _in_torch_words(exc: ValueError) -> ValueError:
    """The core's advice for a misaligned array (torch.frombuffer at an odd offset), NumPy's
    ``x.copy()``, as a torch user's ``x.clone()``; other errors unchanged. Called only
    on the error path (a try costs nothing until it catches)."""
    message = str(exc)
    if ".copy(), which is aligned" not in message:
        return exc
    return ValueError(message.replace(".copy(), which is aligned", ".clone(), which is aligned"))


def _from_numpy(a: np.ndarray[Any, Any]) -> Tensor:
    """A tensor over the array's memory, no copy (bfloat16 through its int16 bits)."""
    if is_bfloat16(a.dtype):
        return torch.from_numpy(a.view(np.int16)).view(_BFLOAT16)
    return torch.from_numpy(a)


@_on_torch_pool
def _sigmoid_linear(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    # x (..., n_in), W (n_in, n_out), b (n_out,) -> out (..., n_out), x's dtype
    try:
        out = _api.forward(_to_numpy(x), _to_numpy(W), _to_numpy(b))
    except ValueError as exc:
        raise _in_torch_words(exc) from None
    return _from_numpy(out)


def _sigmoid_linear_fake(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    _check(x, W, b)
    return x.new_empty((*x.shape[:-1], W.shape[1]))


def _sigmoid_linear_backward(
    dout: Tensor, x: Tensor, W: Tensor, out: Tensor, need_dx: bool, need_dW: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    _check_backward({"dout": dout, "out": out}, x, W)
    dx, dW, db = _eager_backward(dout, x, W, out, need_dx, need_dW)
    return _gradients_or_empty(dx, dW, db, x, W)


def _or_empty(t: Tensor | None, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return t if t is not None else like.new_empty(0, dtype=dtype)


@_on_torch_pool
def _eager_backward(
    dout: Tensor,
    x: Tensor,
    W: Tensor,
    out: Tensor,
    need_dx: bool,
    need_dW: bool = True,
    rounded: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor]:
    # dout, out (..., n_out), x (..., n_in), W (n_in, n_out) -> dx (x's shape, or None
    # without need_dx), dW (n_in, n_out, or None without need_dW), db (n_out,). dx has
    # x's dtype; dW and db the compute dtype (float32 for bfloat16: the core's unrounded
    # results), or with ``rounded`` (bfloat16 only) bfloat16, each rounded once by the
    # core (grad_dtype), as _gradients would round them (under vmap it still does).
    if _under_vmap(dout):
        # torch.autograd.grad(..., is_grads_batched=True) and the vectorized
        # torch.autograd.functional.jacobian run this under vmap: the operator has the
        # batching rule that NumPy arrays cannot have.
        dx_op, dW_op, db_op = _backward_op(dout, x, W, out, need_dx, need_dW)
        return dx_op if need_dx else None, dW_op if need_dW else None, db_op
    try:
        dx, dW, db = _api.backward(
            _to_numpy(dout),
            _to_numpy(x),
            _to_numpy(W),
            _to_numpy(out),
            need_dx=need_dx,
            need_dW=need_dW,
            grad_dtype="bfloat16" if rounded else None,
        )
    except ValueError as exc:
        raise _in_torch_words(exc) from None
    return (
        _from_numpy(dx) if dx is not None else None,
        _from_numpy(dW) if dW is not None else None,
        _from_numpy(db),
    )


def _under_vmap(t: Tensor) -> bool:
    """Whether t is batched by a vmap: torch.func's, or the older one behind
    torch.autograd.grad(is_grads_batched=True), which torch.func does not see."""
    return bool(_transforms_on() or torch._C._functorch.is_legacy_batchedtensor(t))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == _BFLOAT16 else dtype


def _sigmoid_linear_backward_fake(
    dout: Tensor, x: Tensor, W: Tensor, out: Tensor, need_dx: bool, need_dW: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    _check_backward({"dout": dout, "out": out}, x, W)
    return _fake_gradients(x, W, need_dx, need_dW)


def _fake_gradients(
    x: Tensor, W: Tensor, need_dx: bool, need_dW: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The backward operators' results as empty tensors: dx in x's dtype, dW and db in the
    compute dtype; a gradient not asked for has shape (0,)."""
    dx = x.new_empty(x.shape) if need_dx else None
    compute = _compute_dtype(W.dtype)
    dW = W.new_empty(W.shape, dtype=compute) if need_dW else None
    return _gradients_or_empty(dx, dW, W.new_empty(W.shape[1], dtype=compute), x, W)


def _gradients_or_empty(
    dx: Tensor | None, dW: Tensor | None, db: Tensor, x: Tensor, W: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The backward operators' results, real or fake: an operator cannot return None, so
    a gradient not computed is an empty tensor of its dtype (dx x's, dW the compute dtype:
    float32 for bfloat16, as when it is computed)."""
    return _or_empty(dx, x), _or_empty(dW, W, _compute_dtype(W.dtype)), db


def _setup_context(
    ctx: Any, inputs: Sequence[Any], output: Tensor, *, only_needed: bool = False
) -> None:
    x, W, b = inputs
    # Saving out lets backward skip recomputing the sigmoid; autograd's version
    # counters reject a backward after out, x or W was changed in place.
    ctx.save_for_backward(*_needed(ctx, x, W, only_needed), output)
    ctx.n_in = x.shape[-1]
    ctx.b_dtype = b.dtype


def _needed(ctx: Any, x: Tensor, W: Tensor, only_needed: bool) -> tuple[Tensor | None, ...]:
    """(x, W) to save for reverse mode: with ``only_needed`` (the eager path and the
    operators' own autograd kernels, whose jvp reads what save_for_forward kept, not
    these) x only when dW is computed, as nn.Linear saves it: a
    frozen W keeps no activation alive, and an in-place change of an x that no gradient
    reads is no error (a review found both stricter than PyTorch). W, a parameter that
    lives anyway, is always saved: a stand-in for it would cost every first layer (x not
    requiring grad) about 3 us a step."""
    if only_needed and not ctx.needs_input_grad[1]:
        return None, W
    return x, W


# The eager path's last stand-in (below) and its (dtype, shape), one tuple, replaced whole
# (threads may race; each reads a consistent pair): a training loop asks for the same
# one every step. Building it took 3-4 us a call (a T-size step with a frozen W measured
# 1.06-1.12x the step that saved x; 1.02 with this cache). Never written: the kernels
# read only the stand-in's shape.
_last_stand_in: tuple[tuple[torch.dtype, tuple[int, ...]], Tensor] | None = None


def _x_or_stand_in(ctx: Any, x: Tensor | None, rows: Tensor, *, eager: bool = False) -> Tensor:
    """x as saved, or where it was not (dW is not computed) a stand-in of its shape and
    dtype (rows has x's dtype) that holds one element (stride 0): the kernels read only
    its shape then. ``eager``: the last one again when it fits; a traced graph (compiled,
    exported) gets a fresh one, a constant no graph has to capture."""
    global _last_stand_in
    if x is not None:
        return x
    shape = (*rows.shape[:-1], ctx.n_in)
    if not eager:
        return rows.new_zeros(()).expand(shape)
    key = (rows.dtype, shape)
    last = _last_stand_in
    if last is not None and last[0] == key:
        return last[1]
    stand_in = rows.new_zeros(()).expand(shape)
    _last_stand_in = (key, stand_in)
    return stand_in


def _refuse_double_backward(name: str, instead: str) -> None:
    """Autograd runs backward with grad mode on only for create_graph=True. The kernels'
    gradients are not differentiable; returning them anyway would silently drop every
    second-order term (a gradient penalty would lose its dependence on W)."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"siglayer.torch.{name} has no double backward (create_graph=True); use "
            f"{instead} where second derivatives are needed"
        )


def _gradients(
    ctx: Any, dout: Tensor, backward: Any, *, transformed: bool = False
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The autograd formula, for the operator (backward = the backward operator), for the
    eager path (_Eager: the backward kernel itself) and inside torch.func transforms
    (_Transformed, ``transformed``: see there)."""
    if not transformed:
        _refuse_double_backward("sigmoid_linear", "torch.sigmoid(x @ W + b)")
    x, W, out = ctx.saved_tensors
    x = _x_or_stand_in(ctx, x, out, eager=backward is _eager_backward)
    need_x, need_W, need_b = ctx.needs_input_grad
    # db is always computed (a by-product of the dZ sweep); a W that does not require
    # grad (frozen) skips dW's product, an x that does not skips dx's.
    if backward is _eager_backward and W.dtype == _BFLOAT16 and ctx.b_dtype == _BFLOAT16:
        # A bfloat16 W and b (a module in bfloat16): the core rounds dW and db as it
        # writes them, the values .to() would give, without two more passes over them,
        # two float32 arrays and two PyTorch operators (whose pool would spin after them).
        dx, dW, db = _eager_backward(dout, x, W, out, need_x, need_W, True)
    else:
        dx, dW, db = backward(dout, x, W, out, need_x, need_W)
    # Autograd requires each gradient in its input's dtype. For bfloat16 the core's
    # float32 dW (and db, for a bfloat16 b) is rounded here, once, to nearest even; for
    # float32 and float64 (and a float32 b) the dtypes already match (and .to, which
    # would return the same tensor, is skipped: 3 us a call).
    if need_W and dW.dtype != W.dtype:
        dW = dW.to(W.dtype)
    if need_b and db.dtype != ctx.b_dtype:
        db = db.to(ctx.b_dtype)
    return dx if need_x else None, dW if need_W else None, db if need_b else None


def _sigmoid_linear_checked(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    # The operator's CPU kernel: the fake kernel's checks first, so that a direct call
    # refuses what a compiled one would (the NumPy API alone takes a (1, n_out) b, say).
    _check(x, W, b)
    return _sigmoid_linear(x, W, b)


torch.library.impl("siglayer::sigmoid_linear", "cpu", _sigmoid_linear_checked, lib=_LIBRARY)
torch.library.register_fake("siglayer::sigmoid_linear", _sigmoid_linear_fake, lib=_LIBRARY)
torch.library.impl(
    "siglayer::sigmoid_linear_backward", "cpu", _sigmoid_linear_backward, lib=_LIBRARY
)
torch.library.register_fake(
    "siglayer::sigmoid_linear_backward", _sigmoid_linear_backward_fake, lib=_LIBRARY
)

_forward_op = torch.ops.siglayer.sigmoid_linear.default
_backward_op = torch.ops.siglayer.sigmoid_linear_backward.default


# --- The fused loss: the layer and binary cross-entropy in one operator ----------------
# What torch.nn.BCEWithLogitsLoss is to nn.Linear: a classifier's last layer and its loss
# together. The forward computes out, the loss (torch.nn.BCELoss's value: each log
# clamped at -100) and dZ = (out - target) / N, the gradient at the pre-activation (N =
# out's size for the mean, 1 for the sum), in one pass over out; the backward starts from
# dZ (backward_from_preactivation). Apart, BCELoss's gradient divides by out * (1 - out),
# clamped to at least 1e-12, and the layer's multiplies by it again: two passes, and a
# gradient that shrinks once out * (1 - out) < 1e-12 (|z| beyond about 27.6) and is 0
# where out rounds to 1 (z beyond about 17 in float32, 37 in float64); the fused dZ is
# right there, within about one rounding of out.

_REDUCTIONS = ("mean", "sum")


def _known_empty(numel: int | torch.SymInt) -> bool:
    """Whether a size is known to be 0. One known only when the program runs (an unbacked
    size: x[mask] in an exported or fullgraph-compiled program) is not: the check lets it
    through, and the kernel refuses an empty mean when it runs (guarding on it failed
    export and fullgraph compile; found by review helper-77)."""
    empty = numel == 0
    # Under Dynamo a symbolic size looks like an int and the comparison like a bool:
    # is_compiling() tells them apart, or the plain test would guard on it.
    if isinstance(empty, bool) and not torch.compiler.is_compiling():
        return empty
    # Imported here: 0.2 s at the first import of siglayer.torch otherwise.
    from torch.fx.experimental.symbolic_shapes import guard_or_false

    return bool(guard_or_false(empty))


def _check_bce(x: object, W: object, b: object, target: object, reduction: object) -> None:
    """The errors of ``sigmoid_linear_bce_loss``: those of sigmoid_linear, then target's
    and reduction's. Runs in front of the operator and in its fake kernel."""
    _check(x, W, b)
    assert isinstance(x, Tensor) and isinstance(W, Tensor)
    # The common case in a few attribute reads (as in _check).
    if (
        isinstance(target, Tensor)
        and target.is_cpu
        and target.layout is _STRIDED
        and not target.is_nested
        and target.dtype == x.dtype
        and x.dtype != _BFLOAT16
        and type(reduction) is str
        and (reduction == "sum" or (reduction == "mean" and not _known_empty(target.numel())))
        and target.shape == (*x.shape[:-1], W.shape[1])
    ):
        return
    if x.dtype == _BFLOAT16:
        raise TypeError(
            "sigmoid_linear_bce_loss takes float32 or float64 x, W and b, got torch.bfloat16; "
            "for bfloat16 use torch.nn.functional.binary_cross_entropy(sigmoid_linear(x, W, "
            "b).float(), target)"
        )
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    _check_tensor(target, "target")
    assert isinstance(target, Tensor)
    _check_devices({"x": x, "target": target})
    shape = (*x.shape[:-1], W.shape[1])
    if target.dtype != x.dtype:
        raise TypeError(
            f"target has dtype {target.dtype} but x has {x.dtype}; pass "
            f"target.to({x.dtype}) (nothing is converted silently)"
        )
    if tuple(target.shape) != shape:
        raise ValueError(
            f"target has shape {tuple(target.shape)}, expected {shape}, the shape of the "
            f"layer's output for x of shape {tuple(x.shape)} and W of shape {tuple(W.shape)}"
        )
    if reduction == "mean" and _known_empty(math.prod(shape)):
        raise ValueError(
            f"the mean loss of an empty output (shape {shape}) is undefined; use "
            f"reduction='sum' or skip the batch"
        )


@_on_torch_pool
def _sigmoid_linear_bce(
    x: Tensor, W: Tensor, b: Tensor, target: Tensor, reduction: str
) -> tuple[Tensor, Tensor]:
    # x (..., n_in), W (n_in, n_out), b (n_out,), target (..., n_out) -> loss (), x's
    # dtype; dZ (..., n_out) = (out - target) / N, contiguous
    try:
        out = _api.forward(_to_numpy(x), _to_numpy(W), _to_numpy(b))
    except ValueError as exc:
        raise _in_torch_words(exc) from None
    dZ = np.empty_like(out)
    divisor = out.size if reduction == "mean" else 1
    try:
        total = _core.bce_sigmoid(out, _to_numpy(target.contiguous()), dZ, divisor)
    except ValueError as exc:  # a target outside [0, 1], or misaligned: the core calls it y
        message = str(exc)
        if message.startswith("y has a value outside"):
            message = "target" + message[1:].replace("flattened y ", "flattened target ")
        elif message.startswith("y is not aligned"):
            message = (
                "target is not aligned to its item size (it starts inside an element's "
                "bytes); pass target.clone(), which is aligned"
            )
        else:
            raise
        raise ValueError(message) from None
    # A 0-d tensor over a NumPy scalar array: 1.5 us where torch.tensor takes 2.5-4.6.
    return torch.from_numpy(np.array(total / divisor, out.dtype)), torch.from_numpy(dZ)


def _sigmoid_linear_bce_fake(
    x: Tensor, W: Tensor, b: Tensor, target: Tensor, reduction: str
) -> tuple[Tensor, Tensor]:
    _check_bce(x, W, b, target, reduction)
    return x.new_empty(()), x.new_empty((*x.shape[:-1], W.shape[1]))


@_on_torch_pool
def _eager_backward_from_preactivation(
    dZ: Tensor, x: Tensor, W: Tensor, need_dx: bool, need_dW: bool = True
) -> tuple[Tensor | None, Tensor | None, Tensor]:
    # dZ (..., n_out), x (..., n_in), W (n_in, n_out) -> dx (x's shape, or None without
    # need_dx), dW (n_in, n_out, or None without need_dW), db (n_out,)
    if _under_vmap(dZ):  # as _eager_backward
        dx_op, dW_op, db_op = _backward_from_preactivation_op(dZ, x, W, need_dx, need_dW)
        return dx_op if need_dx else None, dW_op if need_dW else None, db_op
    try:
        dx, dW, db = _api.backward_from_preactivation(
            _to_numpy(dZ), _to_numpy(x), _to_numpy(W), need_dx=need_dx, need_dW=need_dW
        )
    except ValueError as exc:
        raise _in_torch_words(exc) from None
    return (
        _from_numpy(dx) if dx is not None else None,
        torch.from_numpy(dW) if dW is not None else None,
        torch.from_numpy(db),
    )


def _backward_from_preactivation(
    dZ: Tensor, x: Tensor, W: Tensor, need_dx: bool, need_dW: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    _check_backward({"dZ": dZ}, x, W)
    dx, dW, db = _eager_backward_from_preactivation(dZ, x, W, need_dx, need_dW)
    return _gradients_or_empty(dx, dW, db, x, W)


def _backward_from_preactivation_fake(
    dZ: Tensor, x: Tensor, W: Tensor, need_dx: bool, need_dW: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    _check_backward({"dZ": dZ}, x, W)
    return _fake_gradients(x, W, need_dx, need_dW)


def _bce_setup_context(
    ctx: Any, inputs: Sequence[Any], output: tuple[Tensor, Tensor], *, only_needed: bool = False
) -> None:
    x, W = inputs[0], inputs[1]
    dZ = output[1]
    ctx.save_for_backward(*_needed(ctx, x, W, only_needed), dZ)
    ctx.n_in = x.shape[-1]
    ctx.mark_non_differentiable(dZ)  # an intermediate the operator hands out, not a result


def _bce_gradients(
    ctx: Any, dloss: Tensor, backward: Any, *, eager: bool, transformed: bool = False
) -> tuple[Tensor | None, ...]:
    """The fused loss's autograd formula: dZ scaled by the loss's gradient, then the layer's
    backward from the pre-activation. Gradients for (x, W, b, target, reduction)."""
    if not transformed:
        _refuse_double_backward(
            "sigmoid_linear_bce_loss",
            "torch.nn.functional.binary_cross_entropy_with_logits(x @ W + b, target)",
        )
    need_x, need_W, need_b, need_target = ctx.needs_input_grad[:4]
    if need_target:
        raise RuntimeError(
            "sigmoid_linear_bce_loss does not differentiate with respect to target; "
            "pass target.detach()"
        )
    x, W, dZ = ctx.saved_tensors
    x = _x_or_stand_in(ctx, x, dZ, eager=eager)
    # loss.backward() passes 1: the eager path skips that multiply (a traced graph cannot
    # read the value, so the operator always multiplies; nor can vmap, see _eager_backward).
    if not eager or _under_vmap(dloss) or float(dloss) != 1.0:
        dZ = dZ * dloss
    dx, dW, db = backward(dZ, x, W, need_x, need_W)
    return dx if need_x else None, dW if need_W else None, db if need_b else None, None, None


def _sigmoid_linear_bce_checked(
    x: Tensor, W: Tensor, b: Tensor, target: Tensor, reduction: str
) -> tuple[Tensor, Tensor]:
    _check_bce(x, W, b, target, reduction)  # as _sigmoid_linear_checked
    return _sigmoid_linear_bce(x, W, b, target, reduction)


torch.library.impl("siglayer::sigmoid_linear_bce", "cpu", _sigmoid_linear_bce_checked, lib=_LIBRARY)
torch.library.register_fake("siglayer::sigmoid_linear_bce", _sigmoid_linear_bce_fake, lib=_LIBRARY)
torch.library.impl(
    "siglayer::sigmoid_linear_backward_from_preactivation",
    "cpu",
    _backward_from_preactivation,
    lib=_LIBRARY,
)
torch.library.register_fake(
    "siglayer::sigmoid_linear_backward_from_preactivation",
    _backward_from_preactivation_fake,
    lib=_LIBRARY,
)

_bce_op = torch.ops.siglayer.sigmoid_linear_bce.default
_backward_from_preactivation_op = (
    torch.ops.siglayer.sigmoid_linear_backward_from_preactivation.default
)

# torch.autocast on the CPU for the forward operators themselves, not only in the Python
# functions: a program that calls an operator directly (torch.export's, TorchScript's, a
# user's torch.ops.siglayer call) then casts as the functions do (a review found those
# refusing autocast's bfloat16 x beside a float32 W). The same casts as the functions
# (_autocast_layer; float32 for the fused loss), then the operator again with the
# Autocast key excluded, as torch.library.register_autocast does (its casts would round a
# float32 b too). That key is in the dispatch set only while autocast is on: no cost off it.
_AUTOCAST_CPU = torch._C.DispatchKey.AutocastCPU


def _sigmoid_linear_autocast(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    x, W, b = _autocast_layer(x, W, b)
    with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_AUTOCAST_CPU)):
        out: Tensor = _forward_op(x, W, b)
    return out


def _sigmoid_linear_bce_autocast(
    x: Tensor, W: Tensor, b: Tensor, target: Tensor, reduction: str
) -> tuple[Tensor, Tensor]:
    # As PyTorch runs binary_cross_entropy_with_logits under autocast: in float32.
    x, W, b, target = _autocast_inputs((x, W, b, target), torch.float32, (False,) * 4)
    with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_AUTOCAST_CPU)):
        loss, dZ = _bce_op(x, W, b, target, reduction)
    return loss, dZ


for _op, _kernel in (
    (_forward_op, _sigmoid_linear_autocast),
    (_bce_op, _sigmoid_linear_bce_autocast),
):
    # The Python dispatcher's entry (tracing: torch.export, torch.compile) and the C++
    # dispatcher's (eager calls of the operator, TorchScript), one kernel for both.
    _op.py_impl(_AUTOCAST_CPU)(_kernel)
    _LIBRARY.impl(  # type: ignore[no-untyped-call]
        _op._schema.name.split("::")[1],
        lambda _keyset, *args, _kernel=_kernel: _kernel(*args),
        "AutocastCPU",
        with_keyset=True,
    )
del _op, _kernel


# The eager path. In plain eager mode the operator's Python machinery (the dispatcher
# calling back into Python twice, the autograd kernel's Function, the backward
# operator's dispatch) costs more than the kernels at small sizes: a (32, 64, 32)
# fwd+bwd took 197 us through the operator and 125 us through this path on AMD Zen 3,
# where nn.Linear + sigmoid took 141-145 (README, "Overhead against plain PyTorch").
# So when nothing but autograd is watching, the same kernels and the same autograd
# formula run through this Function instead. Under torch.compile and torch.export,
# inside torch.func transforms, under a TorchFunctionMode or TorchDispatchMode
# (FakeTensorMode, FlopCounterMode, ...) or with tensor subclasses, the operator runs,
# so those still see siglayer::sigmoid_linear. Results are the same bits either way
# (tests/test_torch_ops.py).
class _Eager(torch.autograd.Function):
    # Only save_for_backward keeps x, W and out (no NumPy views on ctx): saved-tensor
    # hooks (torch.utils.checkpoint, save_on_cpu) must be able to drop or move them.
    @staticmethod
    def forward(ctx: Any, x: Tensor, W: Tensor, b: Tensor) -> Tensor:
        out = _sigmoid_linear(x, W, b)
        _setup_context(ctx, (x, W, b), out, only_needed=True)
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return _gradients(ctx, dout, _eager_backward)


class _EagerBCE(torch.autograd.Function):
    """The fused loss's eager path (see _Eager)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, W: Tensor, b: Tensor, target: Tensor, reduction: str
    ) -> Tensor:
        loss, dZ = _sigmoid_linear_bce(x, W, b, target, reduction)
        ctx.save_for_backward(*_needed(ctx, x, W, True), dZ)
        ctx.n_in = x.shape[-1]
        return loss

    @staticmethod
    def backward(ctx: Any, dloss: Tensor) -> tuple[Tensor | None, ...]:
        return _bce_gradients(ctx, dloss, _eager_backward_from_preactivation, eager=True)


# --- torch.func ------------------------------------------------------------------------
# Inside a torch.func transform (grad, vjp, jacrev, vmap, and functional_call under them)
# the public functions run these Functions in eager mode: the same operators in forward
# and backward, the same formula, so the gradients are the backward kernels' bits.
# (The operators' own autograd kernels, which compiled and exported graphs reach, differ
# there: see "The operators' own autograd kernels".) Their vmap rule is generated (the
# body runs under vmap), so the operators need batching rules of their own (below).
#
# torch.func.grad runs every backward with grad mode on (it may be nested), so the
# refusal of create_graph=True cannot be used here. Instead the backward operators are
# called through _FirstOrderOnly, whose own backward raises: a second derivative (hessian,
# jacrev of grad) fails there. (Left to PyTorch, differentiating an operator without an
# autograd formula only warns and gives zeros.)


class _FirstOrderOnly(torch.autograd.Function):
    """op(*args), with a backward that refuses: the kernels' gradients are not
    differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(op: Any, name: str, *args: Any) -> Any:  # type: ignore[override]
        return op(*args)

    @staticmethod
    def setup_context(ctx: Any, inputs: Sequence[Any], output: Any) -> None:
        ctx.name = inputs[1]

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        _no_second_derivative(ctx.name)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:  # forward mode over a gradient (hessian)
        _no_second_derivative(ctx.name)


def _no_second_derivative(name: str) -> None:
    raise RuntimeError(
        f"siglayer.torch.{name} has no second derivative (its gradients come from "
        f"kernels that are not differentiable): torch.func.hessian, jacrev or grad of "
        f"a grad, jacfwd of a jacfwd cannot be taken through it"
    )


def _refuse_forward_over_forward(name: str) -> None:
    """A jvp rule run under two forward-mode transforms (jacfwd of jacfwd, jvp of jvp):
    PyTorch 2.13 hands the inner rule's result to the outer level with a zero tangent,
    so the second derivative would silently be 0. Refused like the others."""
    levels = _functorch_interpreters()
    if sum(1 for i in levels if i.key() == _JVP) > 1:
        _no_second_derivative(name)


def _first_order_only(op: Any, name: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return _FirstOrderOnly.apply(op, name, *args)  # type: ignore[no-untyped-call]

    return call


_functorch_interpreters = torch._functorch.pyfunctorch.retrieve_all_functorch_interpreters
_JVP = torch._C._functorch.TransformType.Jvp


_transformed_backward = _first_order_only(_backward_op, "sigmoid_linear")
_transformed_backward_from_preactivation = _first_order_only(
    _backward_from_preactivation_op, "sigmoid_linear_bce_loss"
)


class _Transformed(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, W: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        result: Tensor = _forward_op(x, W, b)
        return result

    @staticmethod
    def setup_context(ctx: Any, inputs: Sequence[Any], output: Tensor) -> None:
        _setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0], inputs[1], output)

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return _gradients(ctx, dout, _transformed_backward, transformed=True)

    @staticmethod
    def jvp(ctx: Any, tx: Tensor | None, tW: Tensor | None, tb: Tensor | None) -> Tensor:
        # Forward mode (torch.func.jvp, jacfwd): d out = out (1 - out) (dx W + x dW + db),
        # in PyTorch's own ops (in float32 for bfloat16), rounded to out's dtype.
        _refuse_forward_over_forward("sigmoid_linear")
        x, W, out = ctx.saved_tensors
        tangent: Tensor = _preactivation_tangent(x, W, tx, tW, tb) * out * (1 - out)
        return tangent.to(out.dtype)


def _preactivation_tangent(
    x: Tensor, W: Tensor, tx: Tensor | None, tW: Tensor | None, tb: Tensor | None
) -> Tensor:
    """d(x @ W + b) for tangents tx, tW, tb (None: zero), in float32 for bfloat16."""
    compute = _compute_dtype(x.dtype)
    dz = torch.zeros((*x.shape[:-1], W.shape[1]), dtype=compute)
    if tx is not None:
        dz = dz + tx.to(compute) @ W.to(compute)
    if tW is not None:
        dz = dz + x.to(compute) @ tW.to(compute)
    if tb is not None:
        dz = dz + tb.to(compute)
    return dz


class _TransformedBCE(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        x: Tensor, W: Tensor, b: Tensor, target: Tensor, reduction: str
    ) -> tuple[Tensor, Tensor]:
        loss, dZ = _bce_op(x, W, b, target, reduction)
        return loss, dZ

    @staticmethod
    def setup_context(ctx: Any, inputs: Sequence[Any], output: tuple[Tensor, Tensor]) -> None:
        _bce_setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:4], output[1])

    @staticmethod
    def backward(ctx: Any, dloss: Tensor, _ddZ: Tensor | None) -> tuple[Tensor | None, ...]:
        return _bce_gradients(
            ctx, dloss, _transformed_backward_from_preactivation, eager=False, transformed=True
        )

    @staticmethod
    def jvp(
        ctx: Any,
        tx: Tensor | None,
        tW: Tensor | None,
        tb: Tensor | None,
        ttarget: Tensor | None,
        _treduction: None,
    ) -> tuple[Tensor, None]:
        # d loss = sum(dZ * dz), dZ = dloss/dz saved by the forward; dZ has no tangent (it
        # is handed out as non-differentiable). torch.func passes a zero tangent
        # for a target that is a constant; any other is refused.
        _refuse_forward_over_forward("sigmoid_linear_bce_loss")
        if ttarget is not None and bool(ttarget.any()):
            raise RuntimeError(
                "sigmoid_linear_bce_loss does not differentiate with respect to target"
            )
        x, W, b, target, dZ = ctx.saved_tensors
        dloss = _bce_tangent(dZ, _preactivation_tangent(x, W, tx, tW, tb), x, W, b, target)
        return dloss.to(dZ.dtype), None


class _TimesDZ(torch.autograd.Function):
    """v -> sum(dZ * v) (``total``: the fused loss's tangent, v = dz = d(x @ W + b)) or
    v -> v * dZ (a scalar v: that tangent's gradient in dz), each the other's gradient
    in v. dZ, saved by the loss's forward, is a constant to reverse mode: so reverse mode
    over the tangent is right with respect to the tangents (its gradient in dz is dZ,
    the loss's own first derivative, as jacrev of t -> jvp(f, (W,), (t,)) asks) and
    refused with respect to x, W, b or target, through which it would miss d dZ (a
    second derivative: jacrev of jacfwd, backward from a forward_ad tangent). The
    gradient is again this Function of x, W, b and target, so that a reverse level
    further out that differentiates it through them is refused too (grad in x of grad
    in t gave numbers without d dZ), while derivatives in the tangents alone stay exact
    at any depth."""

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        dZ: Tensor, v: Tensor, x: Tensor, W: Tensor, b: Tensor, target: Tensor, total: bool
    ) -> Tensor:
        return (dZ * v).sum() if total else v * dZ

    @staticmethod
    def setup_context(ctx: Any, inputs: Sequence[Any], output: Tensor) -> None:
        ctx.save_for_backward(inputs[0], *inputs[2:6])
        ctx.total = inputs[6]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        if any(ctx.needs_input_grad[2:6]):  # through the primals: a second derivative
            _no_second_derivative("sigmoid_linear_bce_loss")
        dv = None
        if ctx.needs_input_grad[1]:
            dZ, *primals = ctx.saved_tensors
            dv = _TimesDZ.apply(dZ, grad, *primals, not ctx.total)  # type: ignore[no-untyped-call]
        return None, dv, None, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:  # forward mode over the tangent
        _no_second_derivative("sigmoid_linear_bce_loss")


def _bce_tangent(dZ: Tensor, dz: Tensor, x: Tensor, W: Tensor, b: Tensor, target: Tensor) -> Tensor:
    result: Tensor = _TimesDZ.apply(dZ, dz, x, W, b, target, True)  # type: ignore[no-untyped-call]
    return result


def _per_sample(op: Any, outputs: int) -> Callable[..., Any]:
    """A vmap rule that calls op once per sample (a batched W, say, or the backward's
    per-sample dW, which one call over the flattened batch would sum) and stacks."""

    def rule(info: Any, in_dims: Sequence[int | None], *args: Any) -> Any:
        if info.batch_size == 0:
            # No sample to call op on: one call on zeros of a sample's shape gives the
            # shapes and dtypes, and the results are empty batches of those.
            sample = (
                a if d is None else a.new_zeros(a.shape[:d] + a.shape[d + 1 :])
                for a, d in zip(args, in_dims, strict=True)
            )
            shaped = op(*sample)
            if outputs == 1:
                return shaped.new_empty((0, *shaped.shape)), 0
            return tuple(r.new_empty((0, *r.shape)) for r in shaped), (0,) * outputs
        results = [
            op(*(a if d is None else a.select(d, i) for a, d in zip(args, in_dims, strict=True)))
            for i in range(info.batch_size)
        ]
        if outputs == 1:
            return torch.stack(results), 0
        return tuple(torch.stack(r) for r in zip(*results, strict=True)), (0,) * outputs

    return rule


def _sigmoid_linear_vmap(
    info: Any, in_dims: Sequence[int | None], x: Tensor, W: Tensor, b: Tensor
) -> Any:
    # x batched alone: its batch dimension is one more leading dimension, one call.
    x_dim, W_dim, b_dim = in_dims
    if W_dim is None and b_dim is None:
        assert x_dim is not None
        return _forward_op(x.movedim(x_dim, 0), W, b), 0
    return _per_sample(_forward_op, 1)(info, in_dims, x, W, b)


torch.library.register_vmap("siglayer::sigmoid_linear", _sigmoid_linear_vmap, lib=_LIBRARY)


# --- The operators' own autograd kernels ------------------------------------------------
# torch.library.register_autograd would leave two holes where the operator itself runs (a
# compiled or exported graph, torch.jit.trace, a direct call): its kernel records only for
# reverse mode (a forward-mode tangent was silently dropped: jacfwd gave zeros), and its
# Function has no setup_context, so torch.func refused it. These kernels instead:
# - in plain autograd and forward mode, apply _OperatorFunction (C++ apply, below: the
#   same formulas as _Transformed; backward through the backward operator, jvp in
#   PyTorch's ops);
# - inside a torch.func transform, where no autograd.Function may run inside a kernel
#   (PyTorch asserts), return siglayer's value with the derivatives of the same formula
#   in PyTorch's ops at every order: out + (s - s'), s that formula, s' the same computed
#   below autograd (a constant at every level, equal to s bit for bit), so the value is
#   out's bits and the derivatives are s's, second derivatives included. (The public
#   functions in eager transforms use _Transformed instead: siglayer's backward kernels.)


def _composite(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """sigmoid(x @ W + b) in PyTorch's ops (float32 for bfloat16), in x's dtype."""
    compute = _compute_dtype(x.dtype)
    return torch.sigmoid(x.to(compute) @ W.to(compute) + b.to(compute)).to(x.dtype)


def _composite_bce(x: Tensor, W: Tensor, b: Tensor, target: Tensor, reduction: str) -> Tensor:
    """The fused loss's value in PyTorch's ops: its gradient in x @ W + b is the fused
    dZ = (sigmoid(z) - target) / N."""
    compute = _compute_dtype(x.dtype)
    z = x.to(compute) @ W.to(compute) + b.to(compute)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        z, target.to(compute), reduction=reduction
    )
    return loss.to(x.dtype)


def _tracked(*tensors: Tensor) -> bool:
    """Whether a kernel call at this autograd level must record: grad mode and an input
    that requires grad (reverse mode), or an input with a tangent (forward mode: a
    forward_ad dual level, or torch.func's jvp, whose wrappers carry level-0 tangents
    even where, in a compiled graph, no Python dual level was entered)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return True
    if _forward_ad._current_level < 0 and not _transforms_on():
        return False
    return any(_unpack_dual(t, 0)[1] is not None for t in tensors)


class _OperatorFunction(_Transformed):
    """_Transformed as the operator's autograd kernel applies it, outside transforms:
    compiled and exported graphs, direct calls. It saves for reverse mode what the eager
    path saves (x only when W trains), so a compiled graph with a frozen W keeps no
    activation alive either, as nn.Linear's does not; jvp reads save_for_forward's."""

    @staticmethod
    def forward(x: Tensor, W: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        with _below_autograd():
            result: Tensor = _forward_op(x, W, b)
        return result

    @staticmethod
    def setup_context(ctx: Any, inputs: Sequence[Any], output: Tensor) -> None:
        _setup_context(ctx, inputs, output, only_needed=True)
        ctx.save_for_forward(inputs[0], inputs[1], output)

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return _gradients(ctx, dout, _backward_op)


class _OperatorFunctionBCE(_TransformedBCE):
    """_TransformedBCE as the fused operator's autograd kernel applies it."""

    @staticmethod
    def forward(  # type: ignore[override]
        x: Tensor, W: Tensor, b: Tensor, target: Tensor, reduction: str
    ) -> tuple[Tensor, Tensor]:
        with _below_autograd():
            loss, dZ = _bce_op(x, W, b, target, reduction)
        return loss, dZ

    @staticmethod
    def setup_context(ctx: Any, inputs: Sequence[Any], output: tuple[Tensor, Tensor]) -> None:
        _bce_setup_context(ctx, inputs, output, only_needed=True)  # as _OperatorFunction
        ctx.save_for_forward(*inputs[:4], output[1])

    @staticmethod
    def backward(ctx: Any, dloss: Tensor, _ddZ: Tensor | None) -> tuple[Tensor | None, ...]:
        return _bce_gradients(ctx, dloss, _backward_from_preactivation_op, eager=False)


# The C++ apply: the Python one would hand the Function to torch.func, refused in a kernel.
_operator_apply: Callable[..., Tensor] = super(torch.autograd.Function, _OperatorFunction).apply
_operator_bce_apply: Callable[..., tuple[Tensor, Tensor]] = super(
    torch.autograd.Function, _OperatorFunctionBCE
).apply


def _sigmoid_linear_autograd(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    if not _tracked(x, W, b):
        with _below_autograd():
            plain: Tensor = _forward_op(x, W, b)
        return plain
    if not _transforms_on():
        return _operator_apply(x, W, b)
    s = _composite(x, W, b)
    with _below_autograd():
        out: Tensor = _forward_op(x, W, b)
        constant = _composite(x, W, b)
    return out + (s - constant)


def _sigmoid_linear_bce_autograd(
    x: Tensor, W: Tensor, b: Tensor, target: Tensor, reduction: str
) -> tuple[Tensor, Tensor]:
    if not _tracked(x, W, b, target):
        with _below_autograd():
            plain: tuple[Tensor, Tensor] = _bce_op(x, W, b, target, reduction)
        return plain
    if not _transforms_on():
        return _operator_bce_apply(x, W, b, target, reduction)
    s = _composite_bce(x, W, b, target, reduction)
    with _below_autograd():
        loss, dZ = _bce_op(x, W, b, target, reduction)
        constant = _composite_bce(x, W, b, target, reduction)
    return loss + (s - constant), dZ


_LIBRARY.impl("sigmoid_linear", _sigmoid_linear_autograd, "Autograd")  # type: ignore[no-untyped-call]
_LIBRARY.impl("sigmoid_linear_bce", _sigmoid_linear_bce_autograd, "Autograd")  # type: ignore[no-untyped-call]
torch.library.register_vmap(
    "siglayer::sigmoid_linear_backward", _per_sample(_backward_op, 3), lib=_LIBRARY
)
torch.library.register_vmap("siglayer::sigmoid_linear_bce", _per_sample(_bce_op, 2), lib=_LIBRARY)
torch.library.register_vmap(
    "siglayer::sigmoid_linear_backward_from_preactivation",
    _per_sample(_backward_from_preactivation_op, 3),
    lib=_LIBRARY,
)


# FLOP counts for torch.utils.flop_counter.FlopCounterMode (profilers, MFU estimates): the
# matrix products, 2 n n_in n_out each, as PyTorch counts its own mm and addmm (the
# elementwise work is not counted, as it is not for PyTorch's ops).
def _products(x_shape: Sequence[int], W_shape: Sequence[int], count: int) -> int:
    return 2 * count * math.prod(x_shape[:-1]) * W_shape[0] * W_shape[1]


def _forward_flops(x_shape: Any, W_shape: Any, *args: Any, **kwargs: Any) -> int:
    return _products(x_shape, W_shape, 1)


def _backward_flops(_grad_shape: Any, x_shape: Any, W_shape: Any, *args: Any, **kwargs: Any) -> int:
    # args: (out's shape,) need_dx[, need_dW]; need_dW may come as a keyword or not at all.
    flags = [a for a in args if isinstance(a, bool)]
    need_dx = flags[0] if flags else kwargs.get("need_dx", True)
    need_dW = flags[1] if len(flags) > 1 else kwargs.get("need_dW", True)
    return _products(x_shape, W_shape, int(need_dx) + int(need_dW))


_flop_counter.register_flop_formula([_forward_op.overloadpacket, _bce_op.overloadpacket])(
    _forward_flops
)
_flop_counter.register_flop_formula(
    [_backward_op.overloadpacket, _backward_from_preactivation_op.overloadpacket]
)(_backward_flops)


_PLAIN = (Tensor, torch.nn.Parameter)
_modes_on = torch._C._is_torch_function_mode_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_transforms_on = torch._C._are_functorch_transforms_active
_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


_forward_ad = torch.autograd.forward_ad
_below_autograd = torch._C._AutoDispatchBelowAutograd
_unpack_dual = torch._VF._unpack_dual


def _forward_ad_on() -> bool:
    """Whether a torch.autograd.forward_ad dual level is open: tangents may ride on the
    inputs, and only an autograd.Function with a jvp rule (_Transformed) carries them."""
    return bool(_forward_ad._current_level >= 0)


# autograd.Function.apply is a Python wrapper around the C++ apply of its base class; for
# a Function without setup_context, outside functorch transforms (which _plain_eager
# rules out), all it adds is unwrapping tensors left over from a finished transform
# ("dead wrappers"), which _eager_apply's callers check for themselves. Calling the C++
# apply directly saves 6 us a call (T size on Zen 4: 19.9 -> 13.9 us).
_eager_apply: Callable[..., Tensor] = super(torch.autograd.Function, _Eager).apply
_eager_bce_apply: Callable[..., Tensor] = super(torch.autograd.Function, _EagerBCE).apply


# False sends eager calls through the operator too (bench/bench_torch.py compares both).
_eager_path = True


def _plain_eager(x: Tensor, W: Tensor, b: Tensor) -> bool:
    """Whether only eager autograd can see this call (see _Eager)."""
    return (
        _eager_path
        and x.is_cpu  # meta tensors (shapes only) go to the operator's fake kernel
        and type(x) in _PLAIN
        and type(W) in _PLAIN
        and type(b) in _PLAIN
        and not _modes_on()
        and _dispatch_modes() == 0
        and not _transforms_on()
        and _forward_ad._current_level < 0  # _forward_ad_on(), inlined: the hot path
        and not _tracing()  # torch.jit.trace must record the operator, not its result
    )


def _autocast_inputs(
    tensors: tuple[Any, ...], dtype: torch.dtype, keep_float32: tuple[bool, ...]
) -> tuple[Any, ...]:
    """tensors cast to dtype as torch.autocast casts an op's inputs: floating tensors
    other than float64 (which autocast leaves alone), except those marked keep_float32
    that are float32. Anything else is left for the checks to refuse."""
    return tuple(
        t.to(dtype)
        if isinstance(t, Tensor)
        and t.is_floating_point()
        and t.dtype not in (dtype, torch.float64)
        and not (keep and t.dtype == torch.float32)
        else t
        for t, keep in zip(tensors, keep_float32, strict=True)
    )


def _autocast_layer(x: Tensor, W: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inside torch.autocast on the CPU the layer computes as nn.Linear does there. With
    autocast's bfloat16 (its CPU default): x and W cast to bfloat16 and out bfloat16, b
    cast too unless it is float32 (a float32 master bias, which bfloat16 x and W allow).
    With another autocast dtype (float16: siglayer has no float16 kernels) the inputs
    are computed in float32. float64 inputs are left as they are, as autocast leaves them."""
    dtype = torch.get_autocast_dtype("cpu")
    if dtype == _BFLOAT16:
        return _autocast_inputs((x, W, b), _BFLOAT16, (False, False, True))  # type: ignore[return-value]
    return _autocast_inputs((x, W, b), torch.float32, (False, False, False))  # type: ignore[return-value]


def sigmoid_linear(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """``torch.sigmoid(x @ W + b)`` computed by siglayer, differentiable by autograd.

    Calls the operator ``torch.ops.siglayer.sigmoid_linear`` after checking the
    arguments, so that torch.compile, torch.export and autograd see it as one op; in
    plain eager mode the same kernels run without the operator's dispatch (the same
    bits, at a fraction of the overhead).

    Parameters
    ----------
    x : Tensor, shape (..., n_in)
    W : Tensor, shape (n_in, n_out)
        Note the layout: torch.nn.Linear's weight is (n_out, n_in), so
        ``sigmoid_linear(x, linear.weight.T, linear.bias)`` equals
        ``torch.sigmoid(linear(x))``.
    b : Tensor, shape (n_out,)

    All three on the CPU, of one dtype (float32 or float64), any strides; or x and W
    bfloat16 with b bfloat16 or float32. Gradients are computed for those that require
    them, each in its input's dtype (a bfloat16 W's gradient is rounded from float32
    once; a float32 b's stays float32).

    Returns
    -------
    Tensor, shape (..., n_out), contiguous, of x's dtype.

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
    if torch.is_autocast_enabled("cpu"):
        x, W, b = _autocast_layer(x, W, b)
    compiling = torch.compiler.is_compiling()
    try:
        if compiling or not _tracing():  # Dynamo cannot trace _tracing
            _check(x, W, b)
        else:
            _check_quietly(_check, x, W, b)
    except TypeError as error:
        return _fx_call_or_raise(error, compiling, "sigmoid_linear", (x, W, b), {})  # type: ignore[no-any-return]
    if not compiling and _plain_eager(x, W, b):
        if torch.is_grad_enabled() and (x.requires_grad or W.requires_grad or b.requires_grad):
            if _functorch_wrapped(x) or _functorch_wrapped(W) or _functorch_wrapped(b):
                eager: Tensor = _Eager.apply(x, W, b)  # type: ignore[no-untyped-call]
            else:
                eager = _eager_apply(x, W, b)
            return eager
        return _sigmoid_linear(x, W, b)
    if (_transforms_on() or _forward_ad_on()) and not compiling:
        transformed: Tensor = _Transformed.apply(x, W, b)  # type: ignore[no-untyped-call]
        return transformed
    result: Tensor = _forward_op(x, W, b)
    return result


def sigmoid_linear_bce_loss(
    x: Tensor, W: Tensor, b: Tensor, target: Tensor, *, reduction: str = "mean"
) -> Tensor:
    """Binary cross-entropy of ``sigmoid_linear(x, W, b)`` against ``target``, fused with
    the layer: the last layer of a classifier and its loss in one operator, as
    ``torch.nn.BCEWithLogitsLoss`` is for ``torch.nn.Linear``.

    The value is ``torch.nn.functional.binary_cross_entropy(sigmoid_linear(x, W, b),
    target, reduction=reduction)``: each log clamped at -100, as torch.nn.BCELoss does
    (summed in float64, rounded once to x's dtype). The gradient is taken at the
    pre-activation, dZ = (out - target) / N (N = out's size for the mean, 1 for the sum),
    computed with the loss in one pass; the layer's backward starts from it. So a
    saturated output keeps its gradient, which BCELoss after the layer loses: its
    gradient divides by out * (1 - out), clamped to at least 1e-12, and the layer
    multiplies by it, which shrinks the result once |x @ W + b| passes about 27.6 and
    zeroes it where out rounds to 1 (beyond about 17 in float32). And the step is
    faster (one autograd node for the layer and the loss). Runs as the operator
    ``torch.ops.siglayer.sigmoid_linear_bce`` under torch.compile and torch.export, with
    ``torch.ops.siglayer.sigmoid_linear_backward_from_preactivation`` as its backward.

    Parameters
    ----------
    x : Tensor, shape (..., n_in)
    W : Tensor, shape (n_in, n_out)
    b : Tensor, shape (n_out,)
    target : Tensor, shape (..., n_out), x's dtype
        Probabilities in [0, 1] (0/1 labels, or soft targets). Not differentiated:
        a target that requires grad is refused.
    reduction : 'mean' (over all elements, the default) or 'sum'

    float32 or float64 CPU tensors (bfloat16 is refused: use
    ``binary_cross_entropy(sigmoid_linear(x, W, b).float(), target)``).

    Returns
    -------
    Tensor, 0-d, x's dtype

    Raises
    ------
    TypeError, ValueError
        As sigmoid_linear for x, W and b; for a target of another dtype or shape, or on
        another device; for a reduction other than 'mean' and 'sum'; for the mean over
        an empty output. ValueError for a target that requires grad, and for a target
        value outside [0, 1] or NaN (class indices, a missing label), named with its
        element.

    Examples
    --------
    >>> import torch
    >>> from siglayer.torch import sigmoid_linear, sigmoid_linear_bce_loss
    >>> x = torch.rand(4, 3); W = torch.randn(3, 2, requires_grad=True); b = torch.zeros(2)
    >>> y = torch.tensor([[1.0, 0.0]] * 4)
    >>> loss = sigmoid_linear_bce_loss(x, W, b, y)
    >>> bce = torch.nn.functional.binary_cross_entropy(sigmoid_linear(x, W, b), y)
    >>> torch.allclose(loss, bce)
    True
    >>> loss.backward()
    """
    if torch.is_autocast_enabled("cpu"):
        # As PyTorch runs binary_cross_entropy_with_logits under autocast: in float32.
        x, W, b, target = _autocast_inputs((x, W, b, target), torch.float32, (False,) * 4)
    compiling = torch.compiler.is_compiling()
    try:
        if compiling or not _tracing():
            _check_bce(x, W, b, target, reduction)
        else:
            _check_quietly(_check_bce, x, W, b, target, reduction)
    except TypeError as error:
        args, kwargs = (x, W, b, target), {"reduction": reduction}
        return _fx_call_or_raise(error, compiling, "sigmoid_linear_bce_loss", args, kwargs)  # type: ignore[no-any-return]
    if target.requires_grad:
        raise ValueError(
            "target requires grad; sigmoid_linear_bce_loss does not differentiate with "
            "respect to target: pass target.detach(), or use torch.nn.functional."
            "binary_cross_entropy(sigmoid_linear(x, W, b), target)"
        )
    if not compiling and _plain_eager(x, W, b) and type(target) in _PLAIN:
        if torch.is_grad_enabled() and (x.requires_grad or W.requires_grad or b.requires_grad):
            if any(_functorch_wrapped(t) for t in (x, W, b, target)):
                eager: Tensor = _EagerBCE.apply(x, W, b, target, reduction)  # type: ignore[no-untyped-call]
            else:
                eager = _eager_bce_apply(x, W, b, target, reduction)
            return eager
        return _sigmoid_linear_bce(x, W, b, target, reduction)[0]
    if (_transforms_on() or _forward_ad_on()) and not compiling:
        transformed: Tensor = _TransformedBCE.apply(x, W, b, target, reduction)[0]  # type: ignore[no-untyped-call]
        return transformed
    loss: Tensor = _bce_op(x, W, b, target, reduction)[0]
    return loss


# torch.fx.symbolic_trace records calls of these two as graph nodes instead of tracing into
# them (whose checks need real tensors, not proxies); the traced module calls them.
torch.fx.wrap("sigmoid_linear")
torch.fx.wrap("sigmoid_linear_bce_loss")
# The functions themselves, for _fx_call_or_raise: while a trace runs, the two names above are
# patched to fx's wrappers.
_PUBLIC: dict[str, Callable[..., Any]] = {
    "sigmoid_linear": sigmoid_linear,
    "sigmoid_linear_bce_loss": sigmoid_linear_bce_loss,
}


def _size_argument(value: int | None, name: str, alias: int | None, alias_name: str) -> int:
    """SigmoidLinear's n_in or n_out, given under siglayer's name or torch.nn.Linear's."""
    if value is not None and alias is not None:
        raise TypeError(
            f"SigmoidLinear got both {name}={value!r} and {alias_name}={alias!r} "
            f"(torch.nn.Linear's name for {name}): pass one"
        )
    if alias is not None:
        return _positive_int(alias, alias_name)
    if value is None:
        raise TypeError(f"SigmoidLinear needs {name} (or {alias_name}, torch.nn.Linear's name)")
    return _positive_int(value, name)


class SigmoidLinear(torch.nn.Module):
    """A dense layer followed by a sigmoid, ``sigmoid(x @ W + b)``, run by siglayer.

    The drop-in for ``torch.nn.Sequential(torch.nn.Linear(n_in, n_out), torch.nn.Sigmoid())``
    on the CPU, with the constructor's arguments of ``torch.nn.Linear`` (``bias``,
    ``device``, ``dtype``), except for two things:

    - the layout of the weight, ``W`` (n_in, n_out), where ``torch.nn.Linear.weight`` is
      (n_out, n_in) (``from_linear`` converts a Linear; ``load_state_dict`` takes a
      Linear's ``weight``/``bias`` keys and transposes the weight);
    - the initialisation: Glorot-uniform W and zero b, where torch.nn.Linear draws
      kaiming-uniform (a = sqrt(5)) weights and a U(+-1/sqrt(n_in)) bias, so a network
      swapped in under the same ``torch.manual_seed`` starts elsewhere (load the Linear's
      values to start where it does).

    Parameters
    ----------
    n_in, n_out : int
        Or as keywords ``in_features=``, ``out_features=``, torch.nn.Linear's names (one
        of the two names for each).
    bias : bool
        False: no b (``self.b`` is None, as torch.nn.Linear's ``bias``): the layer adds
        zero and has no bias gradient.
    device : None, "cpu" or "meta"
        None: the CPU, or the meta device inside ``with torch.device("meta"):`` (a layer
        without memory, nothing drawn; ``to_empty(device="cpu")`` then
        ``reset_parameters()`` initialises it as the constructor would have). siglayer
        computes on the CPU only: another device is refused (ValueError).
    dtype : torch.float32, torch.float64, torch.bfloat16 or None
        The dtype of W and b (bfloat16: both bfloat16, gradients rounded to bfloat16).
        None (the default) takes ``torch.get_default_dtype()``, as torch.nn.Linear does
        (float32 unless changed).
    seed : int or None
        With an int, W is exactly ``siglayer.SigmoidLayer(n_in, n_out, dtype=d,
        seed=seed).W`` with d the matching NumPy dtype (Glorot-uniform from NumPy's
        generator; for bfloat16, the float32 one rounded to nearest even); with None it
        is Glorot-uniform from torch's global generator (so ``torch.manual_seed`` makes
        it reproducible).

    Attributes
    ----------
    W : Parameter, shape (n_in, n_out)
        **Not** (n_out, n_in) as torch.nn.Linear's weight: ``W == linear.weight.T``.
    b : Parameter, shape (n_out,), or None (``bias=False``)
        Zero at initialisation.
    n_in, n_out : int
        Also as ``in_features`` and ``out_features``, torch.nn.Linear's names.

    Examples
    --------
    >>> import torch
    >>> from siglayer.torch import SigmoidLinear
    >>> layer = SigmoidLinear(64, 10, seed=0)
    >>> layer(torch.zeros(5, 64)).shape
    torch.Size([5, 10])
    >>> SigmoidLinear(64, 10, bias=False).b is None
    True
    """

    def __init__(
        self,
        n_in: int | None = None,
        n_out: int | None = None,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        seed: int | None = None,
        in_features: int | None = None,
        out_features: int | None = None,
    ) -> None:
        super().__init__()
        # numbers.Integral as SigmoidLayer takes (a NumPy integer, say), kept as int
        n_in = _size_argument(n_in, "n_in", in_features, "in_features")
        n_out = _size_argument(n_out, "n_out", out_features, "out_features")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be True or False, got {type(bias).__name__}")
        if dtype is None:
            dtype = torch.get_default_dtype()
            if dtype not in _DTYPES:
                raise TypeError(
                    f"dtype=None takes torch.get_default_dtype(), {dtype}, which siglayer "
                    f"does not compute in: pass dtype=torch.float32, torch.float64 or "
                    f"torch.bfloat16"
                )
        if dtype not in _DTYPES:
            raise TypeError(
                f"dtype must be torch.float32, torch.float64 or torch.bfloat16, got {dtype}"
            )
        self.n_in, self.n_out = n_in, n_out
        self._seed = seed
        where = _module_device(device)
        self.W = torch.nn.Parameter(torch.empty(n_in, n_out, dtype=dtype, device=where))
        self.b: torch.nn.Parameter | None
        if bias:
            self.b = torch.nn.Parameter(torch.empty(n_out, dtype=dtype, device=where))
        else:
            self.register_parameter("b", None)  # as torch.nn.Linear's bias
        self.reset_parameters()

    @property
    def in_features(self) -> int:
        """n_in, under torch.nn.Linear's name."""
        return self.n_in

    @property
    def out_features(self) -> int:
        """n_out, under torch.nn.Linear's name."""
        return self.n_out

    def reset_parameters(self) -> None:
        """W drawn as the constructor draws it (with a seed: the same values again), b zero."""
        with torch.no_grad():
            seed = getattr(self, "_seed", None)  # a layer pickled before seeds were kept
            if self.W.is_meta:
                pass  # no values to draw
            elif seed is None:
                limit = math.sqrt(6.0 / (self.n_in + self.n_out))
                self.W.uniform_(-limit, limit)
            else:
                from .nn import SigmoidLayer

                np_dtype = np.float64 if self.W.dtype == torch.float64 else np.float32
                layer = SigmoidLayer(self.n_in, self.n_out, dtype=np_dtype, seed=seed)
                # copy_ rounds float32 to bfloat16 to nearest even (a no-op cast otherwise).
                self.W.copy_(torch.from_numpy(layer.W))
            if self.b is not None:
                self.b.zero_()

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> SigmoidLinear:
        """The SigmoidLinear computing ``torch.sigmoid(linear(x))``: W = weight.T, b = bias,
        copied, each with its ``requires_grad`` (a frozen weight stays frozen, and costs no
        dW product). A Linear without bias gives a layer without b (``bias=False``); a
        Linear on the meta device a layer on the meta device (nothing to copy). torch's
        global random generator is left where it was."""
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        weight = linear.weight
        if weight.dtype not in _DTYPES:
            raise TypeError(
                f"linear has dtype {weight.dtype}, which siglayer does not compute in: "
                f"convert it first (linear.float(), linear.double() or linear.bfloat16())"
            )
        if weight.device.type not in ("cpu", "meta"):
            raise ValueError(
                f"linear is on {weight.device}; siglayer computes on the CPU: move it "
                f"first (linear.cpu())"
            )
        n_out, n_in = weight.shape
        bias = linear.bias is not None
        # The constructor's draw (overwritten below) is made on a forked generator, so
        # torch's global one is where it was: the layers created after a conversion start
        # as they would beside the Linear (an audit saw a converted network differ from its
        # nn.Linear twin by 0.47 through the next layer's draw). Not the meta device and
        # to_empty: that would also wipe what a subclass's __init__ sets up (a review).
        with torch.random.fork_rng(devices=[]):
            layer = cls(n_in, n_out, bias, device=weight.device, dtype=weight.dtype)
        if not weight.is_meta:
            with torch.no_grad():
                layer.W.copy_(weight.T)
                if layer.b is not None and linear.bias is not None:
                    layer.b.copy_(linear.bias)
        layer.W.requires_grad_(weight.requires_grad)
        if layer.b is not None and linear.bias is not None:
            layer.b.requires_grad_(linear.bias.requires_grad)
        return layer

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A torch.nn.Linear's state (weight (n_out, n_in), bias) loads as W = weight.T and
        # b = bias. torch.nn.Module.load_state_dict passes a copy of the caller's dict.
        weight, bias = prefix + "weight", prefix + "bias"
        # The Linear's tensors taken, by this layer's key: (the checkpoint's key, its value,
        # the shape this layer takes under that key).
        taken: dict[str, tuple[str, Any, str]] = {}
        if weight in state_dict and prefix + "W" not in state_dict:
            value = state_dict.pop(weight)
            taken[prefix + "W"] = (
                weight,
                value,
                f"({self.n_out}, {self.n_in}), (out_features, in_features)",
            )
            state_dict[prefix + "W"] = value.T if isinstance(value, Tensor) else value
            # (a bias-free layer leaves "bias" as it is: the error names the caller's key)
            if bias in state_dict and prefix + "b" not in state_dict and self.b is not None:
                value = state_dict[prefix + "b"] = state_dict.pop(bias)
                taken[prefix + "b"] = (bias, value, f"({self.n_out},)")
        errors_before = len(error_msgs)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # torch's size-mismatch message would name W (and its transposed shape) or b, which
        # are not in the caller's checkpoint: name its keys and shapes instead.
        for i in range(errors_before, len(error_msgs)):
            for key, (theirs, value, want) in taken.items():
                if error_msgs[i].startswith(f"size mismatch for {key}:"):
                    error_msgs[i] = (
                        f"size mismatch for {theirs}: a torch.nn.Linear {theirs[len(prefix) :]} "
                        f"of shape {tuple(value.shape)} in the checkpoint, but this layer is "
                        f"SigmoidLinear({self.n_in}, {self.n_out}), which takes {want}"
                    )

    def _bias(self) -> Tensor:
        """b, or for a layer without one the zero the operator adds in its place (of W's
        dtype and device; a new n_out-element tensor, nothing to keep in step with W)."""
        b = self.b
        if b is None:
            return torch.zeros(self.n_out, dtype=self.W.dtype, device=self.W.device)
        return b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self._bias()
        if torch.jit.is_scripting():  # type: ignore[attr-defined]
            # TorchScript compiles this branch alone: the operator, checks in its kernel.
            out: Tensor = torch.ops.siglayer.sigmoid_linear(x, self.W, b)
            return out
        return _layer_forward(self, x, b)

    def _check_width(self, x: object, error: ValueError) -> None:
        """The layer's own words for the function's error about x's width, which would
        have said to pass W.T (which the module's caller never passed). Any other error
        (a device, b's shape, a target) is left as it is."""
        n_in = self.W.shape[0]
        if (
            str(error).startswith("x has shape ")
            and isinstance(x, Tensor)
            and (x.dim() == 0 or x.shape[-1] != n_in)
        ):
            raise ValueError(
                f"x has shape {tuple(x.shape)}, expected (..., {n_in}) for a layer with n_in={n_in}"
            ) from None

    def bce_loss(self, x: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
        """Binary cross-entropy of this layer's output against target, fused with the layer
        (:func:`sigmoid_linear_bce_loss`): the value of ``torch.nn.BCELoss(reduction=
        reduction)(self(x), target)``, the gradient taken at the pre-activation. For the
        last layer of a classifier:

        >>> import torch
        >>> from siglayer.torch import SigmoidLinear
        >>> hidden, head = SigmoidLinear(64, 32, seed=0), SigmoidLinear(32, 10, seed=1)
        >>> x, y = torch.rand(8, 64), torch.eye(10)[torch.arange(8)]
        >>> loss = head.bce_loss(hidden(x), y)
        >>> loss.backward()

        Under DistributedDataParallel, call it from the wrapped module's ``forward`` (DDP
        synchronises the gradients of what runs through its forward).
        """
        b = self._bias()
        try:
            return sigmoid_linear_bce_loss(x, self.W, b, target, reduction=reduction)
        except ValueError as error:
            self._check_width(x, error)
            raise

    def extra_repr(self) -> str:
        bias = "" if self.b is not None else ", bias=False"
        return f"n_in={self.n_in}, n_out={self.n_out}{bias}, W: (n_in, n_out)"


def _module_device(device: torch.device | str | None) -> str:
    """Where SigmoidLinear makes its parameters: "cpu", or "meta" (asked for, or the
    default device inside ``with torch.device("meta")``; a default device of CUDA, say,
    is not followed: siglayer computes on the CPU)."""
    if device is None:
        return "meta" if torch.get_default_device().type == "meta" else "cpu"
    try:
        kind: str = torch.device(device).type
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'cpu' or 'meta', got {device!r} ({exc})") from None
    if kind not in ("cpu", "meta"):
        raise ValueError(
            f"device must be 'cpu' or 'meta', got {device!r}: siglayer computes on the CPU"
        )
    return kind


def _layer_forward(layer: SigmoidLinear, x: Tensor, b: Tensor) -> Tensor:
    """SigmoidLinear.forward outside TorchScript, which compiles forward's whole body and
    has no try blocks: an x of the wrong width gets the layer's words."""
    try:
        return sigmoid_linear(x, layer.W, b)
    except ValueError as error:
        layer._check_width(x, error)
        raise
