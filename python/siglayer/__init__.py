"""siglayer: forward and backward of a dense layer followed by a sigmoid, on the CPU.

out = sigmoid(x @ W + b), with x (..., n_in), W (n_in, n_out), b (n_out,).
The compiled core runs the three matrix products through BLAS and the elementwise
work in vectorized OpenMP sweeps; ``siglayer.reference`` is the same math in NumPy.
"""

from __future__ import annotations

from . import reference
from ._api import backward, forward
from ._compare import ErrorStats, compare
from ._config import get_num_threads, set_num_threads, show_config
from ._core import __version__
from ._derivation import GradcheckErrors, gradcheck, jacobian

__all__ = [
    "__version__",
    "forward",
    "backward",
    "reference",
    "compare",
    "ErrorStats",
    "set_num_threads",
    "get_num_threads",
    "show_config",
    "jacobian",
    "gradcheck",
    "GradcheckErrors",
]
