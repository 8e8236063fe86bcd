"""siglayer: forward and backward of a dense layer followed by a sigmoid, on the CPU.

out = sigmoid(x @ W + b), with x (..., n_in), W (n_in, n_out), b (n_out,), in float32
or float64, or in bfloat16 with float32 arithmetic (``ml_dtypes.bfloat16``; b may be
float32). The compiled core runs the three matrix products through BLAS and the
elementwise work in vectorized OpenMP sweeps; ``siglayer.reference`` is the same math
in plain NumPy, and ``siglayer.compare`` measures the one against the other.

Functions
---------
forward(x, W, b, *, out=None)
    ``sigmoid(x @ W + b)``.
backward(dout, x, W, out, *, need_dx=True, need_dW=True, dx=None, dW=None, db=None,
         grad_dtype=None)
    ``(dx, dW, db)`` from the upstream gradient ``dout``.
backward_from_preactivation(dZ, x, W, *, need_dx=True, need_dW=True, dx=None, dW=None,
                            db=None, grad_dtype=None)
    The same from ``dZ``, the gradient with respect to ``x @ W + b``.
compare(...)
    Max errors of siglayer against ``siglayer.reference`` (``ErrorStats``).
set_num_threads(n), get_num_threads()
    The size of siglayer's thread pool.
show_config()
    Version, BLAS backend, threads and SIMD level.
jacobian(x, W, b), gradcheck(x, W, b, ...)
    The full Jacobians of out, and ``backward`` against finite differences
    (``GradcheckErrors``): the derivation, checkable.

Bad arguments raise TypeError or ValueError naming the argument; an ``out=`` (``dx=``,
``dW=``, ...) buffer that overlaps an input or another buffer raises ``OverlapError``, a
ValueError.

For training loops: ``SigmoidLayer`` and ``Sequential`` (layer objects that own their
weights, gradients and buffers; ``Parameter``, ``save_parameters``,
``load_parameters``), ``siglayer.losses`` and ``siglayer.optim``; for PyTorch,
``siglayer.torch`` (imported on its own, only when torch is installed); for JAX and for
arrays larger than memory, ``siglayer.jax`` and ``siglayer.dask`` (the same).

The user guide (guide.md), the derivation of the gradients (derivation.md), the
reliability notes (reliability.md) are installed with the package, in the ``docs``
folder next to this file, and the README beside this file: ``python -m siglayer docs``
prints where. ``python -m
siglayer`` checks the installation against the NumPy reference and times both.

Examples
--------
>>> import numpy as np, siglayer
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((64, 32), dtype=np.float32)
>>> W = rng.standard_normal((32, 16), dtype=np.float32)
>>> b = np.zeros(16, np.float32)
>>> out = siglayer.forward(x, W, b)
>>> dx, dW, db = siglayer.backward(np.ones_like(out), x, W, out)
>>> out.shape, dx.shape, dW.shape, db.shape, dW.dtype
((64, 16), (64, 32), (32, 16), (16,), dtype('float32'))
"""

from . import _config  # noqa: F401  (first: it loads the compiled core, see _config._load_core)

# isort: split
from . import losses, optim, reference
from ._api import backward, backward_from_preactivation, forward
from ._compare import ErrorStats, compare
from ._config import get_num_threads, set_num_threads, show_config
from ._core import OverlapError, __version__
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
    "OverlapError",
]
