// Loss values and their gradients in one pass over the outputs. Plain C++17, no Python.
#pragma once

#include "views.hpp"

namespace siglayer::losses {

// torch.nn.BCELoss's convention: each log term is clamped to >= -100, so an output that
// has saturated to exactly 0 or 1 costs 100 instead of infinity.
constexpr double kLogClamp = -100.0;

// out, y and dZ are (count,), contiguous; dZ must not overlap out or y.
// Binary cross-entropy fused with the sigmoid that produced out:
//   dZ = (out - y) / divisor                         (the gradient w.r.t. the pre-activation)
//   returns -sum(y * log(out) + (1 - y) * log1p(-out)), each log clamped to >= kLogClamp,
//   summed in double in index order (so independent of threads and vector width).
// An out below 0 or above 1, or a y outside [0, 1] or NaN, throws InvalidArgument (naming
// the element) before dZ is written; a NaN out passes and gives NaN.
template <class T>
double bce_sigmoid(T* dZ, const T* out, const T* y, index_t count, double divisor);

// out, y and dout are (count,), contiguous; dout must not overlap out or y.
//   dout = 2 * (out - y) / divisor, returns sum((out - y)^2) summed in double.
template <class T>
double mse(T* dout, const T* out, const T* y, index_t count, double divisor);

}  // namespace siglayer::losses
