"""siglayer: forward and backward of a dense layer followed by a sigmoid, on the CPU.

out = sigmoid(x @ W + b), with x (..., n_in), W (n_in, n_out), b (n_out,).
The compiled core runs the three matrix products through BLAS and the elementwise
work in vectorized OpenMP sweeps; ``siglayer.reference`` is the same math in NumPy.

For training loops: ``SigmoidLayer`` and ``Sequential`` (layer objects that own their
weights, gradients and buffers), ``siglayer.losses`` and ``siglayer.optim``; for
PyTorch, ``siglayer.torch`` (imported on its own, only when torch is installed).
"""

from __future__ import annotations

from . import losses, optim, reference
from ._api import backward, backward_from_preactivation, forward
from ._compare import ErrorStats, compare
from ._config import get_num_threads, set_num_threads, show_config
from ._core import __version__
from ._derivation import GradcheckErrors, gradcheck, jacobian
from .nn import Parameter, Sequential, SigmoidLayer, load_parameters, save_parameters

__all__ = [
    "__version__",
    "forward",
    "backward",
    "backward_from_preactivation",
    "SigmoidLayer",
    "Sequential",
    "Parameter",
    "save_parameters",
    "load_parameters",
    "losses",
    "optim",
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
