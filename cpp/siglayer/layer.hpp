// The dense + sigmoid layer: out = sigma(x . W + b) and its backward pass.
#pragma once

#include "views.hpp"

namespace siglayer {

// Shape checks alone, including the BLAS integer range (InvalidArgument naming the
// argument), for callers that want them before allocating outputs; forward and
// backward run them too.
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

// dZ is (n, n_out), the gradient with respect to the pre-activation x . W + b; x is
// (n, n_in), W is (n_in, n_out). The backward pass without the dZ sweep, for a loss whose
// gradient with respect to the pre-activation is known directly (binary cross-entropy
// fused with the sigmoid: dZ = (out - y) / N, no division by out * (1 - out)):
//   dW (n_in, n_out) = x^T . dZ,   db (n_out,) = sum over rows of dZ,   dx (n, n_in) = dZ . W^T.
// Same contract as backward: dx.data may be null, gradients are overwritten, no output
// may overlap an input or another output, db is bitwise independent of the thread count.
template <class T>
void check_backward_from_preactivation(MatrixView<T> dZ, MatrixView<T> x, MatrixView<T> W);
template <class T>
void backward_from_preactivation(OutMatrix<T> dx, OutMatrix<T> dW, T* db, MatrixView<T> dZ,
                                 MatrixView<T> x, MatrixView<T> W);

// Apply sigma elementwise: y[i] = sigma(z[i]) (y may equal z). Exposed for the accuracy
// tests and the sigmoid benchmark.
template <class T>
void sigmoid(T* y, const T* z, index_t count);

}  // namespace siglayer
