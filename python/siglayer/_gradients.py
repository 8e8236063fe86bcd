"""Loss gradients that know what they are the gradient of.

A loss object's ``backward()`` returns either dL/dout (mean squared error: the gradient
with respect to the network's output, for ``backward``) or dL/dZ (binary cross-entropy
fused with the sigmoid: the gradient with respect to the last pre-activation, for
``backward_from_preactivation``). Both are plain float arrays; fed to the wrong backward,
either gives finite, wrong gradients without a word (the sigmoid's derivative applied
twice, or not at all).

So each is an ndarray subclass that carries its kind, and the backward passes refuse the
other kind. A subclass, not a wrapper: the gradient still goes to the core without a
copy; scaling or clipping it by numbers (``0.5 * g``, ``np.clip(g, -1, 1)``) or adding
gradients of the same kind keeps the tag, and a plain ndarray the user computed is
accepted by both backwards as before. Arithmetic with another array (``g * out * (1 -
out)``: the user's own dL/dZ; ``g *= ...`` too) or a reduction (``g.sum(0)``) makes a
plain ndarray: the user has taken over, and the result is no longer this gradient (a
review found a correct dZ derived that way refused as dL/dout).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["OutputGradient", "PreactivationGradient", "refuse_kind"]

_NUMPY_1 = np.lib.NumpyVersion(np.__version__) < "2.0.0"


class _LossGradient(np.ndarray[Any, Any]):
    """The common base: reductions to one value give a plain NumPy scalar, not a 0-d
    gradient (``g.sum()`` is a number, as for an ndarray)."""

    __slots__ = ()

    def __array_wrap__(self, array: Any, context: Any = None, return_scalar: bool = False) -> Any:
        if _NUMPY_1:  # its __array_wrap__ takes no return_scalar
            wrapped = super().__array_wrap__(array, context)
        else:
            wrapped = super().__array_wrap__(array, context, return_scalar)
        if isinstance(wrapped, np.ndarray) and wrapped.ndim == 0:
            return wrapped[()]
        if isinstance(wrapped, _LossGradient) and not self._keeps_kind(wrapped, context):
            return wrapped.view(np.ndarray)
        return wrapped

    def _keeps_kind(self, result: np.ndarray, context: Any) -> bool:
        """Whether a ufunc's result is still this kind of gradient: its shape, from
        operands that are numbers or gradients of the same kind (see the module's
        docstring). A reduction passes no context; its shape differs anyway."""
        if result.shape != self.shape or context is None:
            return result.shape == self.shape and context is not None
        _, args, _ = context
        return all(
            type(a) is type(self) or not isinstance(a, np.ndarray) or a.ndim == 0 for a in args
        )


class OutputGradient(_LossGradient):
    """dL/dout, the gradient with respect to a sigmoid layer's *output* (what
    :meth:`siglayer.losses.MSELoss.backward` returns), for ``backward``.

    An ndarray in every other respect; the backward passes read it without a copy.
    ``backward_from_preactivation`` refuses it (TypeError), since it would skip the
    sigmoid's derivative that this gradient still needs.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> loss_fn = siglayer.losses.MSELoss()
    >>> loss = loss_fn(np.array([[0.5]]), np.array([[0.0]]))
    >>> g = loss_fn.backward()
    >>> isinstance(g, siglayer.losses.OutputGradient), isinstance(g, np.ndarray)
    (True, True)
    """

    __slots__ = ()


class PreactivationGradient(_LossGradient):
    """dL/dZ, the gradient with respect to the last layer's *pre-activation*
    Z = x @ W + b (what :meth:`siglayer.losses.BCELoss.backward` returns), for
    ``backward_from_preactivation``.

    An ndarray in every other respect; the backward passes read it without a copy.
    ``backward`` refuses it (TypeError), since it would apply the sigmoid's derivative a
    second time.

    Examples
    --------
    >>> import numpy as np, siglayer
    >>> loss_fn = siglayer.losses.BCELoss()
    >>> loss = loss_fn(np.array([[0.5]]), np.array([[0.0]]))
    >>> isinstance(loss_fn.backward(), siglayer.losses.PreactivationGradient)
    True
    """

    __slots__ = ()


def refuse_kind(grad: object, name: str, method: str) -> None:
    """Raise TypeError when ``grad`` is a loss gradient of the kind ``method`` must not get.

    ``method`` is "backward" (refuses dL/dZ) or "backward_from_preactivation" (refuses
    dL/dout). Anything else passes: untagged arrays are the caller's responsibility.
    """
    if method == "backward" and isinstance(grad, PreactivationGradient):
        raise TypeError(
            f"{name} is dL/dZ, the gradient with respect to the pre-activation (from "
            f"BCELoss.backward()); pass it to backward_from_preactivation(...): backward "
            f"would apply the sigmoid's derivative a second time (an array you derived "
            f"from it in place, your own dL/dout: pass np.asarray({name}))"
        )
    if method == "backward_from_preactivation" and isinstance(grad, OutputGradient):
        raise TypeError(
            f"{name} is dL/dout, the gradient with respect to the output (from "
            f"MSELoss.backward()); pass it to backward(...): backward_from_preactivation "
            f"would skip the sigmoid's derivative (an array you derived from it in "
            f"place, your own dL/dZ: pass np.asarray({name}))"
        )
