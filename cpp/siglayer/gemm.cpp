#include "gemm.hpp"

#include <algorithm>

#include "dtypes.hpp"
#include "partition.hpp"
#include "threads.hpp"

namespace siglayer {

template <class T>
void gemm(GemmThreading threading, blas::Op op_a, blas::Op op_b, index_t M, index_t N, index_t K,
          const T* A, index_t lda, const T* B, index_t ldb, compute_t<T>* C, index_t ldc) {
    using Acc = compute_t<T>;
    if (M == 0 || N == 0) return;
    if (K == 0) {
        for (index_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, Acc(0));
        return;
    }
    if (threading == GemmThreading::blas) {
        blas::OwnThreads own_threads(threads::max_threads());
        blas::gemm<T>(op_a, op_b, M, N, K, Acc(1), A, lda, B, ldb, Acc(0), C, ldc);
        return;
    }
    const BlasOperand<T> a{A, op_a, lda}, b{B, op_b, ldb};
    // The layer's split (partition.hpp): the same thread count and tiles, one BLAS call
    // each (the layer may cut forward's tiles and dW's batch into panels of rows:
    // layer_detail.hpp, gemm_panel_rows).
    run_parallel(threads_for_gemm(M, N, K), [&] {
        blas::SingleThreaded single;
        const Tiling tiles(M, N, threads::team_threads());
        for_each_tile({&tiles}, [&](const Tiling&, const Block& blk) {
            blas::gemm<T>(op_a, op_b, blk.rows(), blk.cols(), K, Acc(1), row_offset(a, blk.i0), lda,
                          col_offset(b, blk.j0), ldb, Acc(0), C + blk.i0 * ldc + blk.j0, ldc);
        });
    });
}

#define SIGLAYER_INSTANTIATE(T)                                                                   \
    template void gemm<T>(GemmThreading, blas::Op, blas::Op, index_t, index_t, index_t, const T*, \
                          index_t, const T*, index_t, compute_t<T>*, index_t);
SIGLAYER_FOR_EACH_DTYPE(SIGLAYER_INSTANTIATE)
#undef SIGLAYER_INSTANTIATE

}  // namespace siglayer
