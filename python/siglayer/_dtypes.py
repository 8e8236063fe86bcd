"""The dtypes siglayer computes in: the one list on the Python side.

The compiled core has its own (cpp/siglayer/dtypes.hpp, and the bindings' dispatch);
docs/architecture.md lists every place a new dtype touches. Tolerances and other
per-dtype tables are keyed by these dtypes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FLOAT_DTYPES", "NAMES"]

FLOAT_DTYPES: tuple[np.dtype[np.floating], ...] = (np.dtype(np.float32), np.dtype(np.float64))
NAMES = " or ".join(dt.name for dt in FLOAT_DTYPES)  # "float32 or float64", for messages
