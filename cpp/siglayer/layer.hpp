// The dense + sigmoid layer: out = sigma(x . W + b) and its backward pass.
#pragma once

#include "views.hpp"

namespace siglayer {

// Shape checks alone (InvalidArgument naming the argument), for callers that want
// them before allocating outputs; forward and backward run them too.
// x is (n, n_in), W is (n_in, n_out), b is (n_out,).
template <class T>
void check_forward(MatrixView<T> x, MatrixView<T> W, VectorView<T> b);
// dout and out are (n, n_out), x is (n, n_in), W is (n_in, n_out).
template <class T>
void check_backward(MatrixView<T> dout, MatrixView<T> x, MatrixView<T> W, MatrixView<T> out);

// x is (n, n_in), W is (n_in, n_out), b is (n_out,), out is (n, n_out).
// out = sigma(x . W + b). out must not overlap x, W or b.
template <class T>
void forward(OutMatrix<T> out, MatrixView<T> x, MatrixView<T> W, VectorView<T> b);

// dout and out are (n, n_out), x is (n, n_in), W is (n_in, n_out).
// dZ = dout * out * (1 - out) (elementwise), then
//   dW (n_in, n_out) = x^T . dZ,   db (n_out,) = sum over rows of dZ,   dx (n, n_in) = dZ . W^T.
// dx.data may be null (the caller needs no dx: one GEMM fewer). The gradients are
// overwritten, never accumulated. No output may overlap any input or another output.
template <class T>
void backward(OutMatrix<T> dx, OutMatrix<T> dW, T* db, MatrixView<T> dout, MatrixView<T> x,
              MatrixView<T> W, MatrixView<T> out);

// Apply sigma elementwise: y[i] = sigma(z[i]) (y may equal z). Exposed for the accuracy
// tests and the sigmoid benchmark.
template <class T>
void sigmoid(T* y, const T* z, index_t count);

}  // namespace siglayer
