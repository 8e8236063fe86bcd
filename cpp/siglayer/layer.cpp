#include "layer.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "blas.hpp"
#include "checks.hpp"
#include "dtypes.hpp"
#include "kernels.hpp"
#include "layer_detail.hpp"
#include "operands.hpp"
#include "partition.hpp"
#include "scratch.hpp"

namespace siglayer {

using namespace layer_detail;

namespace {

// Inside a parallel region: dW = x^T . dZ when dW.data is set and dx = dZ . W^T when
// dx.data is set, both cut into tiles that the team takes one at a time (partition.hpp).
// dZ is (n, n_out) and complete; x is (n, n_in), W is (n_in, n_out). The batch index i is
// what dW sums over: dW[k, l] = sum_i x[i, k] dZ[i, l], which is why x^T stands on the left.
// With Wt (W^T, n_out x n_in, row stride ld_Wt, for a layer with up to 64 outputs,
// row_combos_path, and a row-major dZ) dx is row_combos' instead of the BLAS's; with few
// outputs and x and dZ row-major, dW is col_dots'. small_gemm:
// blas::small_gemm_multiply_adds(), read once by the caller.
template <class T>
void gradient_products(OutMatrix<T> dx, OutMatrix<T> dW, const BlasOperand<T>& xo,
                       const BlasOperand<T>& Wo, const BlasOperand<T>& dZo, const T* Wt, index_t n,
                       index_t n_in, index_t n_out, double small_gemm, index_t ld_Wt) {
    if (n_in == 0 || n_out == 0 || n == 0) return;
    const BlasOperand<T> xT{xo.data, flip(xo.op), xo.ld};
    const BlasOperand<T> WT{Wo.data, flip(Wo.op), Wo.ld};
    const int team = threads::team_threads();
    const Tiling dW_tiles = dW.data ? Tiling(n_in, n_out, team) : Tiling();
    const Tiling dx_tiles = dx.data ? Tiling(n, n_in, team) : Tiling();
    // Few outputs, x and dZ row-major: dW by col_dots.
    const bool dW_col_dots =
        few_outputs_path(n_in, n_out) && xo.op == blas::Op::N && dZo.op == blas::Op::N;
    // dW's sum over the batch in panels of rows (gemm_panel_rows), added panel by panel,
    // when x and dZ are both row-major (for OpenBLAS, column-major, that is dZ^T . x with
    // B transposed, whose small-matrix kernels take up to the bound with no further
    // condition) and n_out <= kSmallGemmOutputs. The panel follows n_in x n_out, not the
    // tile, so the sums are grouped alike for any thread count. Measured as forward's
    // (layer_detail.hpp), backward without dx, one thread: 0.29-0.92 of the time with up
    // to 64 outputs (2048-16384 x 32-4096 x 12-64), but 0.84-1.70 with 128-1024 (above 1 in 8
    // of 14 samples; panels of 8-24 rows, each reading and writing all of dW), where the
    // packed kernels run well.
    const index_t dW_panel = xo.op == blas::Op::N && dZo.op == blas::Op::N
                                 ? dw_panel_rows(small_gemm, n, n_in, n_out)
                                 : n;
    for_each_tile({&dW_tiles, &dx_tiles}, [&](const Tiling& tiling, const Block& t) {
        if (&tiling == &dW_tiles && dW_col_dots)
            kernels::active<T>().col_dots(dW.data + t.i0 * n_out + t.j0, n_out, xo.data + t.i0,
                                          xo.ld, dZo.data + t.j0, dZo.ld, n, t.rows(), t.cols());
        else if (&tiling == &dW_tiles)
            for (index_t k0 = 0; k0 < n; k0 += dW_panel)  // added panel by panel into dW
                blas::gemm<T>(xT.op, dZo.op, t.rows(), t.cols(), std::min(dW_panel, n - k0), T(1),
                              row_offset(xT, t.i0) + k0 * xT.ld, xT.ld,
                              col_offset(dZo, t.j0) + k0 * dZo.ld, dZo.ld, k0 == 0 ? T(0) : T(1),
                              dW.data + t.i0 * n_out + t.j0, n_out);
        else if (Wt)
            kernels::active<T>().row_combos(dx.data + t.i0 * n_in + t.j0, n_in,
                                            dZo.data + t.i0 * dZo.ld, dZo.ld, Wt + t.j0, ld_Wt,
                                            t.rows(), n_out, t.cols());
        else
            blas::gemm<T>(dZo.op, WT.op, t.rows(), t.cols(), n_out, T(1), row_offset(dZo, t.i0),
                          dZo.ld, col_offset(WT, t.j0), WT.ld, T(0), dx.data + t.i0 * n_in + t.j0,
                          n_in);
    });
}

}  // namespace

template <class T>
void check_forward(MatrixView<T> x, MatrixView<T> W, VectorView<compute_t<T>> b) {
    check_x_and_W(x, W);
    SIGLAYER_REQUIRE(b.size == W.cols, "b has " + std::to_string(b.size) +
                                           " entries but W has shape " + shape_str(W.rows, W.cols));
}

template <class T>
void check_backward(MatrixView<T> dout, MatrixView<T> x, MatrixView<T> W, MatrixView<T> out) {
    check_x_and_W(x, W);
    check_output_shaped("out", out, x, W);
    check_output_shaped("dout", dout, x, W);
}

template <class T>
void forward(OutMatrix<T> out, MatrixView<T> x, MatrixView<T> W, VectorView<compute_t<T>> b) {
    using C = compute_t<T>;  // T itself here (bfloat16: layer_bf16.cpp)
    check_forward(x, W, b);
    const index_t n = x.rows, n_in = x.cols, n_out = W.cols;
    check_forward_output(out, x, W, b);
    if (n == 0 || n_out == 0) return;

    const C* bias = b.data;
    if (b.stride != 1) {
        C* packed = Scratch::for_this_thread().get<C>(Scratch::b_packed, n_out);
        for (index_t j = 0; j < n_out; ++j) packed[j] = b.data[j * b.stride];
        bias = packed;
    }
    if (row_dots_path(x, n_out)) {
        forward_row_dots(out, x, W, bias);
        return;
    }
    BlasOperand<T> xo{}, Wo{};
    if (n_in > 0) {
        xo = blas_operand(x, Scratch::x_packed);
        Wo = blas_operand(W, Scratch::W_packed);
    }
    const auto& kernel = kernels::active<T>();
    const double small_gemm = blas::small_gemm_multiply_adds();  // once: one rule per call
    // Each tile (or panel of it, gemm_panel_rows) of out = x . W gets bias + sigma while it
    // is still in cache; no thread waits on another until the region ends.
    run_parallel(threads_for_gemm(n, n_out, n_in), [&] {
        blas::SingleThreaded single;
        const Tiling tiles(n, n_out, threads::team_threads());
        for_each_tile({&tiles}, [&](const Tiling&, const Block& blk) {
            T* out_blk = out.data + blk.i0 * n_out + blk.j0;
            const index_t panel = n_in > 0 && xo.op == blas::Op::N && Wo.op == blas::Op::N
                                      ? gemm_panel_rows(small_gemm, blk.rows(), blk.cols(), n_in)
                                      : blk.rows();
            for (index_t r0 = 0; r0 < blk.rows(); r0 += panel) {
                const index_t m = std::min(panel, blk.rows() - r0);
                T* out_panel = out_blk + r0 * n_out;
                if (n_in == 0)  // no product: sigma(b) in every row
                    for (index_t i = 0; i < m; ++i)
                        std::fill(out_panel + i * n_out, out_panel + i * n_out + blk.cols(), T(0));
                else
                    blas::gemm<T>(xo.op, Wo.op, m, blk.cols(), n_in, T(1),
                                  row_offset(xo, blk.i0 + r0), xo.ld, col_offset(Wo, blk.j0), Wo.ld,
                                  T(0), out_panel, n_out);
                kernel.bias_sigmoid_rows(out_panel, n_out, out_panel, n_out, bias + blk.j0, m,
                                         blk.cols());
            }
        });
    });
}

template <class T>
void backward(OutMatrix<T> dx, OutMatrix<compute_t<T>> dW, compute_t<T>* db, MatrixView<T> dout,
              MatrixView<T> x, MatrixView<T> W, MatrixView<T> out) {
    check_backward(dout, x, W, out);
    const index_t n = x.rows, n_in = x.cols, n_out = W.cols;
    if (!check_gradient_outputs(
            dx, dW, db, n, n_in, n_out,
            {{"dout", extent(dout)}, {"x", extent(x)}, {"W", extent(W)}, {"out", extent(out)}}))
        return;

    Scratch& scratch = Scratch::for_this_thread();
    T* dZ = scratch.get<T>(Scratch::dZ, static_cast<std::size_t>(n * n_out));
    // db's float64 block totals for every column, taken here: in the region they would
    // be allocated before its barrier (see RegionError). The block sums go to scratch
    // too (db_parts), not to the caller's db: a tile's columns start at a multiple of 16,
    // so in these 64-byte-aligned arrays no two threads' columns share a cache line,
    // where in a db that NumPy aligned to 16 bytes they did, and each row's sums made the
    // line bounce between the cores (backward_from_preactivation's db alone at 8192 x
    // 64, bfloat16, two threads: 0.11 ms against 0.04 with db aligned to 64 bytes).
    double* totals = scratch.get<double>(Scratch::db_total, static_cast<std::size_t>(n_out));
    T* db_parts = scratch.get<T>(Scratch::db_part, static_cast<std::size_t>(n_out));
    index_t ld_dout = 0, ld_out = 0;
    const T* dout_rows = row_major(dout, Scratch::dout_packed, ld_dout);
    const T* out_rows = row_major(out, Scratch::out_packed, ld_out);
    // Each operand is packed (when its layout needs it) only for the product that reads it.
    BlasOperand<T> xo{}, Wo{};
    if (n_in > 0 && dW.data) xo = blas_operand(x, Scratch::x_packed);
    const T* Wt = nullptr;
    const index_t ld_Wt = row_combos_ld<T>(n_in, n_out);
    if (dx.data && row_combos_path<T>(n, n_in, n_out))
        Wt = transposed_for_combos(W, Scratch::W_widened, ld_Wt);
    else if (n_in > 0 && dx.data)
        Wo = blas_operand(W, Scratch::W_packed);
    const auto& kernel = kernels::active<T>();
    const int threads = threads_for_gemm(n, n_out, std::max<index_t>(n_in, 1));
    const double small_gemm = blas::small_gemm_multiply_adds();  // once: one rule per call
    const index_t blocks = (n + kSumRows - 1) / kSumRows;
    // Every row block's column sums, when phase 1 cuts rows: blocks x n_out, 1/kSumRows of dZ.
    T* block_sums =
        rows_for_threads(blocks, threads)
            ? scratch.get<T>(Scratch::db_blocks, static_cast<std::size_t>(blocks * n_out))
            : nullptr;
    run_parallel(threads, [&] {
        blas::SingleThreaded single;
        const int team = threads::team_threads();
        if (block_sums && rows_for_threads(blocks, team)) {
            backward_by_rows(
                db, block_sums, n, n_out, team,
                [&](index_t i0, index_t i1, T* sums, double* total) {
                    kernel.dz_colsum(dZ + i0 * n_out, n_out, sums, total, dout_rows + i0 * ld_dout,
                                     ld_dout, out_rows + i0 * ld_out, ld_out, i1 - i0, n_out);
                },
                [&](const Block& r) {  // dx = dZ . W^T for these rows
                    if (!dx.data || n_in == 0) return;
                    T* dx_rows = dx.data + r.i0 * n_in;
                    if (Wt)
                        kernel.row_combos(dx_rows, n_in, dZ + r.i0 * n_out, n_out, Wt, ld_Wt,
                                          r.rows(), n_out, n_in);
                    else
                        blas::gemm<T>(blas::Op::N, flip(Wo.op), r.rows(), n_in, n_out, T(1),
                                      dZ + r.i0 * n_out, n_out, Wo.data, Wo.ld, T(0), dx_rows,
                                      n_in);
                },
                [&] {
                    gradient_products(OutMatrix<T>{}, dW, xo, Wo,
                                      BlasOperand<T>{dZ, blas::Op::N, n_out}, Wt, n, n_in, n_out,
                                      small_gemm, ld_Wt);
                });
            return;
        }
        // Phase 1, tiles of whole columns: dZ and db. Each column of db is summed by one
        // thread in blocks of rows from row 0 (views.hpp), so db is bitwise the same for any
        // thread count.
        const Tiling columns(1, n_out, threads::team_threads());
        for_each_tile({&columns}, [&](const Tiling&, const Block& c) {
            kernel.dz_colsum(dZ + c.j0, n_out, db_parts + c.j0, totals + c.j0, dout_rows + c.j0,
                             ld_dout, out_rows + c.j0, ld_out, n, c.cols());
            std::copy(db_parts + c.j0, db_parts + c.j1, db + c.j0);
        });
        // Phase 2: the products need all of dZ.
        threads::team_barrier();
        gradient_products(dx, dW, xo, Wo, BlasOperand<T>{dZ, blas::Op::N, n_out}, Wt, n, n_in,
                          n_out, small_gemm, ld_Wt);
    });
}

template <class T>
void check_backward_from_preactivation(MatrixView<T> dZ, MatrixView<T> x, MatrixView<T> W) {
    check_x_and_W(x, W);
    check_output_shaped("dZ", dZ, x, W);
}

template <class T>
void backward_from_preactivation(OutMatrix<T> dx, OutMatrix<compute_t<T>> dW, compute_t<T>* db,
                                 MatrixView<T> dZ, MatrixView<T> x, MatrixView<T> W) {
    check_backward_from_preactivation(dZ, x, W);
    const index_t n = x.rows, n_in = x.cols, n_out = W.cols;
    if (!check_gradient_outputs(dx, dW, db, n, n_in, n_out,
                                {{"dZ", extent(dZ)}, {"x", extent(x)}, {"W", extent(W)}}))
        return;

    // C- or F-ordered dZ goes to BLAS and to the column sums as it is; other layouts are
    // packed once (the dZ slot is free: no sweep writes a dZ here). With few outputs, or
    // dx by row_combos, dZ is made row-major (packed from any other layout: n x n_out
    // values, a fraction of x), which row_combos and col_dots read, so that dx (and with
    // few outputs dW) are the same bits for any thread count whatever dZ's layout (a review
    // found an F-ordered dZ sent dW to the BLAS, whose tiles follow the thread count).
    const bool combos = dx.data && row_combos_path<T>(n, n_in, n_out);
    BlasOperand<T> dZo{};
    if (few_outputs_path(n_in, n_out) || combos) {
        index_t ld = 0;
        const T* rows = row_major(dZ, Scratch::dZ, ld);
        // BLAS may read it too (dW of an F-ordered x): a row stride beyond the BLAS
        // integer (a small view into a huge array) is packed, as blas_operand would.
        if (ld > blas::max_int()) {
            rows = pack(dZ, Scratch::dZ);
            ld = n_out;
        }
        dZo = {rows, blas::Op::N, std::max<index_t>(1, ld)};
    } else {
        dZo = blas_operand(dZ, Scratch::dZ);
    }
    BlasOperand<T> xo{}, Wo{};
    if (n_in > 0 && dW.data) xo = blas_operand(x, Scratch::x_packed);
    const T* Wt = nullptr;
    const index_t ld_Wt = row_combos_ld<T>(n_in, n_out);
    if (combos)  // dZo is row-major (above)
        Wt = transposed_for_combos(W, Scratch::W_widened, ld_Wt);
    else if (n_in > 0 && dx.data)
        Wo = blas_operand(W, Scratch::W_packed);
    const double small_gemm = blas::small_gemm_multiply_adds();  // once: one rule per call
    run_parallel(threads_for_gemm(n, n_out, std::max<index_t>(n_in, 1)), [&] {
        blas::SingleThreaded single;
        // db by columns (see backward); no barrier: dZ is an input, complete from the start.
        const Tiling columns(1, n_out, threads::team_threads());
        for_each_tile({&columns},
                      [&](const Tiling&, const Block& c) { column_sums(db, dZo, n, c.j0, c.j1); });
        gradient_products(dx, dW, xo, Wo, dZo, Wt, n, n_in, n_out, small_gemm, ld_Wt);
    });
}

template <class T>
void sigmoid(T* y, const T* z, index_t count) {
    const auto& kernel = kernels::active<T>();
    for_each_block(count, [&](index_t i0, index_t n) { kernel.sigmoid(y + i0, z + i0, n); });
}

namespace {
std::atomic<bool> few_outputs_on{true};
}

bool few_output_kernels() {
    return few_outputs_on.load(std::memory_order_relaxed);
}

void set_few_output_kernels(bool on) {
    few_outputs_on.store(on, std::memory_order_relaxed);
}

void to_bfloat16(bfloat16* dst, const float* src, index_t count) {
    const auto& kernel = kernels::active<bfloat16>();
    for_each_block(count, [&](index_t i0, index_t n) { kernel.narrow(dst + i0, src + i0, n); });
}

void to_float32(float* dst, const bfloat16* src, index_t count) {
    const auto& kernel = kernels::active<bfloat16>();
    for_each_block(count, [&](index_t i0, index_t n) { kernel.widen(dst + i0, src + i0, n); });
}

// Storage that is its own compute type; bfloat16's forward and backwards are in
// layer_bf16.cpp.
#define SIGLAYER_INSTANTIATE(T)                                                                    \
    template void forward<T>(OutMatrix<T>, MatrixView<T>, MatrixView<T>,                           \
                             VectorView<compute_t<T>>);                                            \
    template void backward<T>(OutMatrix<T>, OutMatrix<compute_t<T>>, compute_t<T>*, MatrixView<T>, \
                              MatrixView<T>, MatrixView<T>, MatrixView<T>);                        \
    template void backward_from_preactivation<T>(OutMatrix<T>, OutMatrix<compute_t<T>>,            \
                                                 compute_t<T>*, MatrixView<T>, MatrixView<T>,      \
                                                 MatrixView<T>);
SIGLAYER_FOR_EACH_COMPUTE_DTYPE(SIGLAYER_INSTANTIATE)
#undef SIGLAYER_INSTANTIATE

#define SIGLAYER_INSTANTIATE(T)                                                                  \
    template void check_forward<T>(MatrixView<T>, MatrixView<T>, VectorView<compute_t<T>>);      \
    template void check_backward<T>(MatrixView<T>, MatrixView<T>, MatrixView<T>, MatrixView<T>); \
    template void check_backward_from_preactivation<T>(MatrixView<T>, MatrixView<T>,             \
                                                       MatrixView<T>);                           \
    template void sigmoid<T>(T*, const T*, index_t);
SIGLAYER_FOR_EACH_DTYPE(SIGLAYER_INSTANTIATE)
#undef SIGLAYER_INSTANTIATE

}  // namespace siglayer
