"""Type names shared by the Python API (no run-time role)."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

__all__ = ["Float"]

# The dtype of a call's arrays, carried to its results: float32 in, float32 out. Bound
# rather than constrained to (float32, float64), so that code holding arrays typed as
# NDArray[np.floating] type-checks too; the core refuses other dtypes at run time.
Float = TypeVar("Float", bound=np.floating)
