// The dense + sigmoid layer: out = sigma(x . W + b) and its backward pass.
#pragma once

#include "dtypes.hpp"
#include "views.hpp"

namespace siglayer {

// Shape checks alone, including the BLAS integer range (InvalidArgument naming the
// argument), for callers that want them before allocating outputs; forward and
// backward run them too.
// T is the storage type of the arrays (float, double, bfloat16); b and the gradients
// dW, db are in its compute type C = compute_t<T> (float for bfloat16: docs/bfloat16.md
// says where each rounding happens).
//
// x is (n, n_in), W is (n_in, n_out), b is (n_out,).
template <class T>
void check_forward(MatrixView<T> x, MatrixView<T> W, VectorView<compute_t<T>> b);
// dout and out are (n, n_out), x is (n, n_in), W is (n_in, n_out).
template <class T>
void check_backward(MatrixView<T> dout, MatrixView<T> x, MatrixView<T> W, MatrixView<T> out);

// x is (n, n_in), W is (n_in, n_out), b is (n_out,), out is (n, n_out).
// out = sigma(x . W + b). out must not overlap x, W or b.
// The products accumulate in C; bias and sigma are applied in C, rounded to T once.
template <class T>
void forward(OutMatrix<T> out, MatrixView<T> x, MatrixView<T> W, VectorView<compute_t<T>> b);

// dout and out are (n, n_out), x is (n, n_in), W is (n_in, n_out).
// dZ = dout * out * (1 - out) (elementwise), then
//   dW (n_in, n_out) = x^T . dZ,   db (n_out,) = sum over rows of dZ,   dx (n, n_in) = dZ . W^T.
// dx.data and dW.data may be null (the caller needs no dx, or no dW, as for a frozen W:
// one GEMM fewer each; db is always computed). The gradients are overwritten, never
// accumulated. No output may overlap any input or another output.
// For bfloat16, dZ is computed in float and rounded to bfloat16 once for the two products
// (db sums the unrounded dZ); dW accumulates in float; dx accumulates in float and is
// rounded once.
template <class T>
void backward(OutMatrix<T> dx, OutMatrix<compute_t<T>> dW, compute_t<T>* db, MatrixView<T> dout,
              MatrixView<T> x, MatrixView<T> W, MatrixView<T> out);

// dZ is (n, n_out), the gradient with respect to the pre-activation x . W + b; x is
// (n, n_in), W is (n_in, n_out). The backward pass without the dZ sweep, for a loss whose
// gradient with respect to the pre-activation is known directly (binary cross-entropy
// fused with the sigmoid: dZ = (out - y) / N, no division by out * (1 - out)):
//   dW (n_in, n_out) = x^T . dZ,   db (n_out,) = sum over rows of dZ,   dx (n, n_in) = dZ . W^T.
// Same contract as backward: dx.data and dW.data may be null, gradients are overwritten, no output
// may overlap an input or another output, db is bitwise independent of the thread count.
template <class T>
void check_backward_from_preactivation(MatrixView<T> dZ, MatrixView<T> x, MatrixView<T> W);
template <class T>
void backward_from_preactivation(OutMatrix<T> dx, OutMatrix<compute_t<T>> dW, compute_t<T>* db,
                                 MatrixView<T> dZ, MatrixView<T> x, MatrixView<T> W);

// bfloat16 has its own implementation (layer_bf16.cpp).
template <>
void forward<bfloat16>(OutMatrix<bfloat16> out, MatrixView<bfloat16> x, MatrixView<bfloat16> W,
                       VectorView<float> b);
template <>
void backward<bfloat16>(OutMatrix<bfloat16> dx, OutMatrix<float> dW, float* db,
                        MatrixView<bfloat16> dout, MatrixView<bfloat16> x, MatrixView<bfloat16> W,
                        MatrixView<bfloat16> out);
template <>
void backward_from_preactivation<bfloat16>(OutMatrix<bfloat16> dx, OutMatrix<float> dW, float* db,
                                           MatrixView<bfloat16> dZ, MatrixView<bfloat16> x,
                                           MatrixView<bfloat16> W);

// Apply sigma elementwise: y[i] = sigma(z[i]) (y may equal z). Exposed for the accuracy
// tests and the sigmoid benchmark.
template <class T>
void sigmoid(T* y, const T* z, index_t count);

// dst[i] = src[i] rounded to the nearest bfloat16 (ties to even; NaN stays NaN, +-inf
// stays +-inf, values past the largest bfloat16 become +-inf), and back (exact). For the
// master-weight copies of a bfloat16 layer and for callers who convert.
// Whether layers with fewer than 12 outputs (every dtype) take their own kernels
// (row_dots, row_combos, col_dots: layer_detail.hpp), the default, or the products every
// other layer takes (the BLAS's GEMM, or for bfloat16 the float32 GEMM on widened copies),
// and dx with up to 64 outputs (bfloat16's on its convert path) row_combos or the BLAS: a
// switch for the tests and benchmarks, which compare the two in one process.
bool few_output_kernels();
void set_few_output_kernels(bool on);

void to_bfloat16(bfloat16* dst, const float* src, index_t count);
void to_float32(float* dst, const bfloat16* src, index_t count);

}  // namespace siglayer
