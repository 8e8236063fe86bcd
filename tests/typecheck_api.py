"""The types a user of siglayer sees, checked by mypy (not run by pytest).

CI runs ``mypy --strict tests/typecheck_api.py``: each assert_type below must hold, and
the lines marked ``type: ignore[...]`` must still be errors (warn_unused_ignores), so
the stubs cannot silently loosen.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import siglayer

x32: NDArray[np.float32] = np.zeros((4, 3), np.float32)
W32: NDArray[np.float32] = np.zeros((3, 2), np.float32)
b32: NDArray[np.float32] = np.zeros(2, np.float32)
x64: NDArray[np.float64] = np.zeros((4, 3))
W64: NDArray[np.float64] = np.zeros((3, 2))
b64: NDArray[np.float64] = np.zeros(2)

# The dtype of the inputs is the dtype of the results.
out32 = siglayer.forward(x32, W32, b32)
assert_type(out32, NDArray[np.float32])
out64 = siglayer.forward(x64, W64, b64, out=np.empty((4, 2)))
assert_type(out64, NDArray[np.float64])

# backward: dx is an array by default, None with need_dx=False, either with a bool.
assert_type(
    siglayer.backward(out32, x32, W32, out32),
    tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]],
)
assert_type(
    siglayer.backward(out64, x64, W64, out64, need_dx=False),
    tuple[None, NDArray[np.float64], NDArray[np.float64]],
)
need: bool = bool(x64.size)
assert_type(
    siglayer.backward(out64, x64, W64, out64, need_dx=need),
    tuple[NDArray[np.float64] | None, NDArray[np.float64], NDArray[np.float64]],
)
# need_dW likewise for dW: optional only when it is a bool known at run time.
assert_type(
    siglayer.backward(out64, x64, W64, out64, need_dx=False, need_dW=True),
    tuple[None, NDArray[np.float64], NDArray[np.float64]],
)
assert_type(
    siglayer.backward(out64, x64, W64, out64, need_dW=False),  # a frozen W
    tuple[NDArray[np.float64], None, NDArray[np.float64]],
)
assert_type(
    siglayer.backward(out64, x64, W64, out64, need_dx=False, need_dW=False),
    tuple[None, None, NDArray[np.float64]],
)
assert_type(
    siglayer.backward_from_preactivation(out32, x32, W32, need_dW=False),
    tuple[NDArray[np.float32], None, NDArray[np.float32]],
)
assert_type(
    siglayer.backward(out64, x64, W64, out64, need_dW=need),
    tuple[NDArray[np.float64] | None, NDArray[np.float64] | None, NDArray[np.float64]],
)
assert_type(siglayer.reference.forward(x32, W32, b32), NDArray[np.float32])

# Floating-point arrays only: an integer array is a type error (and a TypeError at run
# time). Mixing float32 and float64, or float16, is refused at run time only: the dtype
# variable is bound by np.floating, so arrays typed NDArray[np.floating] are accepted.
x_int: NDArray[np.int64] = np.zeros((4, 3), np.int64)
siglayer.forward(x_int, W64, b64)  # type: ignore[type-var]
assert_type(
    siglayer.backward_from_preactivation(out32, x32, W32, need_dx=False),
    tuple[None, NDArray[np.float32], NDArray[np.float32]],
)
x_any_float: NDArray[np.floating] = x64
assert_type(siglayer.forward(x_any_float, W64, b64), NDArray[np.floating])

assert_type(siglayer.compare(n=4)["out"], siglayer.ErrorStats)
assert_type(siglayer.compare(n=4)["dW"].max_rel, float)
assert_type(siglayer.get_num_threads(), int)
assert_type(siglayer.set_num_threads(2), None)
assert_type(siglayer.show_config(), None)
assert_type(siglayer.__version__, str)

# Layers carry their dtype: layer(x) of a float32 layer is a float32 array.
layer32 = siglayer.SigmoidLayer(3, 2)
assert_type(layer32, siglayer.SigmoidLayer[np.float32])
assert_type(layer32(x32), NDArray[np.float32])
assert_type(layer32.W, NDArray[np.float32])
layer64 = siglayer.SigmoidLayer(3, 2, dtype=np.float64)
assert_type(layer64(x64), NDArray[np.float64])
# backward: an array by default and with need_dx=True, None with need_dx=False.
assert_type(layer32.backward(out32), NDArray[np.float32])
assert_type(layer32.backward(out32, need_dx=False), None)
assert_type(layer32.backward(out32, need_dx=need), NDArray[np.float32] | None)
assert_type(layer32.backward_from_preactivation(out32, need_dx=False), None)
net = siglayer.Sequential(layer32)
# The README's idioms on a network's layers (its items are the layers as given).
net[0].W -= 0.1 * net[0].dW
z32 = net[-1].preactivation()
for item in net:
    item.b -= 0.1 * item.db
assert_type(net.backward(out32), None)
assert_type(net.backward(out32, need_dx=True), NDArray[np.float32])
# In-place updates type-check; the setters take arrays only.
layer32.W -= 0.1 * layer32.dW
layer32.W = 3.0  # type: ignore[assignment]
layer32.W = x_int  # type: ignore[assignment]
assert_type(siglayer.show_config(mode="dicts"), dict[str, object])
