// The bare matrix product, C = op(A) . op(B), through the BLAS the core uses: the
// benchmarks' GEMM floor, the cost the layer's three products cannot go below.
#pragma once

#include "blas.hpp"
#include "dtypes.hpp"
#include "views.hpp"

namespace siglayer {

// How the threads share one product.
enum class GemmThreading {
    slabs,  // as the layer does it: each OpenMP thread runs single-threaded BLAS on its block
    blas,   // one BLAS call on the BLAS's own pool of omp_get_max_threads() threads
};

// op(A) is (M, K), op(B) is (K, N), C is (M, N); all row-major with leading dimensions
// lda, ldb, ldc. C = op(A) . op(B) (C is overwritten; zero when K == 0). C must not
// overlap A or B, and every size must fit the BLAS integer (blas::max_int()).
// For bfloat16 A and B, C is float (blas::gemm<bfloat16>).
template <class T>
void gemm(GemmThreading threading, blas::Op op_a, blas::Op op_b, index_t M, index_t N, index_t K,
          const T* A, index_t lda, const T* B, index_t ldb, compute_t<T>* C, index_t ldc);

}  // namespace siglayer
