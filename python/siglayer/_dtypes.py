"""The dtypes siglayer computes in: the one list on the Python side.

The compiled core has its own (cpp/siglayer/dtypes.hpp, and the bindings' dispatch);
docs/architecture.md lists every place a new dtype touches. Tolerances and other
per-dtype tables are keyed by these dtypes.

bfloat16 (``ml_dtypes.bfloat16``, an optional dependency) is a storage type only: the
layer takes it and computes in float32; optimizers and losses work on float32
(docs/bfloat16.md). ``import siglayer`` never imports ml_dtypes.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["FLOAT_DTYPES", "NAMES", "as_dtype", "bfloat16", "is_bfloat16", "layer_dtype"]

FLOAT_DTYPES: tuple[np.dtype[np.floating], ...] = (np.dtype(np.float32), np.dtype(np.float64))
NAMES = " or ".join(dt.name for dt in FLOAT_DTYPES)  # "float32 or float64", for messages


def bfloat16() -> np.dtype[np.generic]:
    """``numpy.dtype(ml_dtypes.bfloat16)``, importing ml_dtypes (ImportError that says
    how to install it when it is missing)."""
    try:
        import ml_dtypes
    except ImportError as exc:
        raise ImportError(
            "bfloat16 needs the ml-dtypes package (NumPy's bfloat16 dtype, the one JAX "
            "uses): pip install ml-dtypes (siglayer's bfloat16 extra)"
        ) from exc
    dtype: np.dtype[np.generic] = np.dtype(ml_dtypes.bfloat16)
    return dtype


def as_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    """``numpy.dtype(dtype)``, where the name ``"bfloat16"`` means ml_dtypes' bfloat16 (NumPy
    does not know it by name): the one reading of a ``dtype=`` / ``grad_dtype=`` argument.
    NumPy's TypeError for a name it does not know; the caller says which argument."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return bfloat16()
    return np.dtype(dtype)


def layer_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    """A ``dtype=`` argument a layer can take: float32, float64 or bfloat16, in native byte
    order; TypeError naming ``dtype`` otherwise (float16 is said not to be bfloat16)."""
    try:
        dt = as_dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32, float64 or bfloat16, got {dtype!r}") from exc
    if is_bfloat16(dt):
        return dt
    if dt not in FLOAT_DTYPES or not dt.isnative:
        hint = " (float16 is not bfloat16)" if dt == np.float16 else ""
        raise TypeError(f"dtype must be float32, float64 or bfloat16, got {dt}{hint}")
    return dt


def is_bfloat16(dtype: object) -> bool:
    """Whether dtype is ml_dtypes' bfloat16, without importing ml_dtypes (an array of it
    can only exist once ml_dtypes is imported)."""
    module = sys.modules.get("ml_dtypes")
    return module is not None and dtype == np.dtype(module.bfloat16)
