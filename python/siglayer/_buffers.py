"""Output buffers reused across calls with the same shapes, for layers and losses built
with ``reuse_buffers=True``: a training loop with a fixed batch size then allocates
nothing after its first step."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _core

__all__ = ["BufferCache", "not_an_ndarray", "refuse_overlap", "refuse_matrix_or_masked"]

# A loop alternates between few shapes (the batch size, the last short batch of an
# epoch, an evaluation batch); a handful covers them without holding on to many.
_MAX_SHAPES = 4


class BufferCache:
    """Zero-initialised C-contiguous arrays of one dtype, one per requested shape.

    ``get(shape)`` returns the same array for the same shape until more than a few
    distinct shapes have been requested, when the oldest is dropped (dropped arrays stay
    valid for whoever still holds them; they are just no longer reused).
    """

    __slots__ = ("_arrays", "_dtype", "_kind")

    def __init__(
        self, dtype: np.dtype[np.floating], *, kind: type[NDArray[np.floating]] = np.ndarray
    ) -> None:
        self._dtype = dtype
        self._kind = kind
        self._arrays: dict[tuple[int, ...], NDArray[np.floating]] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Every pickle protocol (0 and 1 refuse __slots__ without this); the arrays go
        # along, so a copied layer's outputs stay in its own buffers.
        return (_rebuilt_cache, (self._dtype, self._kind, self._arrays))

    def get(self, shape: tuple[int, ...]) -> NDArray[np.floating]:
        array = self._arrays.get(shape)
        if array is None:
            if len(self._arrays) >= _MAX_SHAPES:
                del self._arrays[next(iter(self._arrays))]
            array = np.zeros(shape, self._dtype)
            if self._kind is not np.ndarray:
                array = array.view(self._kind)
            self._arrays[shape] = array
        return array

    def peek(self, shape: tuple[int, ...]) -> NDArray[np.floating] | None:
        """The array ``get(shape)`` would return now, or None where it would make one."""
        return self._arrays.get(shape)

    def clear(self) -> None:
        self._arrays.clear()


def _rebuilt_cache(
    dtype: np.dtype[np.floating],
    kind: type[NDArray[np.floating]],
    arrays: dict[tuple[int, ...], NDArray[np.floating]],
) -> BufferCache:
    cache = BufferCache(dtype, kind=kind)
    cache._arrays = dict(arrays)
    return cache


def refuse_overlap(
    buffer_name: str, buffer: object, inputs: tuple[tuple[str, object], ...]
) -> None:
    """The core's overlap rule (byte ranges that meet) and error, for a buffer written
    outside the core or checked against arrays the core does not see."""
    for name, a in inputs:
        if np.may_share_memory(buffer, a):
            raise _core.OverlapError(f"{buffer_name} overlaps {name}; pass a separate buffer")


def refuse_matrix_or_masked(a: object, name: str) -> None:
    """The bindings' refusal of np.matrix and masked arrays (their semantics would be
    ignored: a mask dropped, matrix products), for arrays that Python converts or computes
    on before the core sees them."""
    if isinstance(a, (np.matrix, np.ma.MaskedArray)):
        kind = type(a)
        fix = (
            f"convert it with np.asarray({name})"
            if isinstance(a, np.matrix)
            else f"masks are not supported: fill the masked entries first ({name}.filled(value))"
        )
        raise TypeError(
            f"{name} must be a plain numpy.ndarray, got {kind.__module__}.{kind.__qualname__}; "
            f"{fix}"
        )


def not_an_ndarray(given: object, name: str, *, or_none: bool = False) -> TypeError:
    """The TypeError for argument ``name``, ``given``, which is no ndarray, in the bindings'
    words (cpp/bindings/arrays.cpp, ``as_array`` and ``instead``): the type's full name,
    and what to pass instead where that is known (the frontend that takes a framework's
    arrays as they are, a conversion for pandas objects and Python sequences)."""
    kind = type(given)
    module = kind.__module__
    got = (
        "None"
        if given is None
        else (kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}")
    )
    top = module.partition(".")[0]
    if top == "torch":
        hint = "; for PyTorch tensors use siglayer.torch (sigmoid_linear, SigmoidLinear)"
    elif top in ("jax", "jaxlib"):
        hint = "; for JAX arrays use siglayer.jax.sigmoid_linear"
    elif top == "dask":
        hint = "; for Dask arrays use siglayer.dask (forward, backward)"
    elif top == "pandas":
        hint = f"; pass {name}.to_numpy(np.float32) (or np.float64)"
    elif isinstance(given, (list, tuple)):
        hint = f"; pass np.asarray({name}, np.float32) (or np.float64)"
    else:
        hint = ""
    what = "a numpy.ndarray or None" if or_none else "a numpy.ndarray"
    return TypeError(f"{name} must be {what}, got {got}{hint}")
