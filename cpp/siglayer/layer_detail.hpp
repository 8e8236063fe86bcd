// Helpers shared by the layer's entry points (layer.cpp for float and double,
// layer_bf16.cpp for bfloat16): the checks, the column sums of db and the elementwise
// split. Internal to the core.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>

#include "blas.hpp"
#include "checks.hpp"
#include "dtypes.hpp"
#include "kernels.hpp"
#include "layer.hpp"
#include "partition.hpp"
#include "scratch.hpp"
#include "views.hpp"

namespace siglayer::layer_detail {

// Below this many elements an elementwise sweep runs on one thread: waking the
// team costs more than it saves.
constexpr index_t kParallelElements = 1 << 15;

// Part of the shape checks, so that it runs before the bindings allocate outputs and
// before anything is packed: sizes that do not fit are refused, never truncated.
inline void require_blas_sizes(index_t n, index_t n_in, index_t n_out) {
    for (auto [name, value] :
         {std::pair{"n", n}, std::pair{"n_in", n_in}, std::pair{"n_out", n_out}})
        require_blas_size(name, value);
}

// Rows per BLAS call for forward's product, rows x k by k x n with x and W row-major (the
// small kernels' NN case; for a transposed W OpenBLAS asks more of the shape), cut into
// panels of rows (bias + sigma follow each panel): all of them, unless the whole is past
// bound (blas::small_gemm_multiply_adds(), read once per call by the caller) and panels of
// at least kSmallGemmRows rows fit under it; those run on OpenBLAS's small-matrix kernels,
// which pack nothing, where its packed kernels copy all of x first (about as much work as
// the multiply-adds with few outputs). Panels are a multiple of 8 rows (multiples of 16,
// tried first, gave the same where both apply) and at least 8: the smallest measured,
// still a gain.
// Zen 4 (OpenBLAS 0.3.34's SkylakeX kernels), forward, float32 and float64, medians of 9-11
// interleaved rounds (an environment toggle, then _core.set_small_gemm): one thread, batch
// 1024-16384, n_in 16-4096, 12-64 outputs, 0.38-0.92 of the time where panels run (the most
// at n_in 512-4096 and 12-16 outputs: 0.38-0.63; panels of 8 rows 0.54-0.81), two threads
// 0.39-0.87, 0.98-1.01 where the tile stays whole. Panels just past the bound ran at
// 0.96-1.06, and with OPENBLAS_CORETYPE=Haswell (no small kernels, the rule is off) at
// 0.97-1.03. dx in panels gained nothing (0.97-1.07): for OpenBLAS it is A transposed,
// whose small kernels also ask M * N <= 1200. dW's batch goes in panels too (layer.cpp,
// gradient_products). docs/benchmarks.md has the tables.
constexpr index_t kSmallGemmRows = 8;
// dW's batch goes in such panels only up to this many outputs (layer.cpp says why).
constexpr index_t kSmallGemmOutputs = 64;

inline index_t gemm_panel_rows(double bound, index_t rows, index_t n, index_t k) {
    const double per_row = double(n) * double(k);
    if (!(bound > 0.0) || per_row == 0.0 || double(rows) * per_row <= bound) return rows;
    const index_t panel = static_cast<index_t>(bound / per_row) / 8 * 8;
    return panel >= kSmallGemmRows ? panel : rows;
}

// Rows of the batch per BLAS call for dW = x^T . dZ (n x n_in and n x n_out, both
// row-major), the panels added one after the other into dW: gemm_panel_rows over
// n_in x n_out, not the tile, so that the sums are grouped alike for any thread count,
// and only up to kSmallGemmOutputs outputs; n (one call) otherwise. The float layer's
// gradient_products (layer.cpp) and bfloat16's convert path (layer_bf16.cpp) use it.
inline index_t dw_panel_rows(double bound, index_t n, index_t n_in, index_t n_out) {
    return n_out <= kSmallGemmOutputs ? gemm_panel_rows(bound, n, n_in, n_out) : n;
}

inline int threads_for(index_t elements) {
    return elements >= kParallelElements ? threads::max_threads() : 1;
}

// The checks every backward entry point makes on its outputs dx (n, n_in) and dW (n_in,
// n_out), whose data may be null (the caller needs no such gradient), and db (n_out,):
// shapes, null pointers, no overlap with an input or another output (sizes were checked
// with the shapes). An empty batch or n_out == 0 has zero gradients (sums over nothing),
// written here; returns false when nothing is left to compute.
template <class T, class C = compute_t<T>>
bool check_gradient_outputs(OutMatrix<T> dx, OutMatrix<C> dW, C* db, index_t n, index_t n_in,
                            index_t n_out, std::initializer_list<Named> inputs) {
    const bool need_dW = dW.data != nullptr;
    SIGLAYER_REQUIRE(
        !need_dW || (dW.rows == n_in && dW.cols == n_out),
        "dW has shape " + shape_str(dW.rows, dW.cols) + ", expected " + shape_str(n_in, n_out));
    const bool need_dx = dx.data != nullptr;
    SIGLAYER_REQUIRE(
        !need_dx || (dx.rows == n && dx.cols == n_in),
        "dx has shape " + shape_str(dx.rows, dx.cols) + ", expected " + shape_str(n, n_in));
    SIGLAYER_REQUIRE(!(n_out > 0 && db == nullptr), "db: null pointer");
    require_disjoint({{"dx", need_dx ? extent(dx) : Extent{}},
                      {"dW", need_dW ? extent(dW) : Extent{}},
                      {"db", extent(db, n_out)}},
                     inputs);

    if (n == 0 || n_out == 0) {
        // Sums over an empty batch are zero; with no outputs there is no gradient to pass back.
        if (need_dW) std::fill(dW.data, dW.data + n_in * n_out, C(0));
        std::fill(db, db + n_out, C(0));
        if (need_dx) std::fill(dx.data, dx.data + n * n_in, T{});
        return false;
    }
    return true;
}

// Whether backward's phase 1 cuts dZ's rows (in whole blocks of kSumRows, views.hpp)
// between the team's threads, each computing dx for its rows right after their dZ, or
// its columns (every thread's dx then read dZ rows half written by another core): rows
// where the blocks go evenly to the threads, or so many that one block more is little.
// A/B builds on Zen 5, 2 threads, backward alone (interleaved medians of 15-31 rounds, the
// same bits both ways), row split over column split: float32 0.90-0.95 at 8192 x 256 x 64,
// 0.88-1.01 at 8192 x 256 x 8, 0.95-1.02 at 256 x 512 x 512, 0.99-1.00 at 1024^3 and
// 4096 x 2048^2; float64 0.98 at 8192 x 256 x 64, 0.92-0.99 at 256 x 512 x 512, 1.03 at
// 8192 x 256 x 8 (one run); bfloat16 0.98-0.99 at 8192 x 256 x 64, 0.83-0.84 at
// 8192 x 256 x 8, 0.99-1.02 at 256 x 512 x 512, 1024^3 and 4096 x 2048^2.
inline bool rows_for_threads(index_t blocks, int team) {
    return team > 1 && blocks >= team && (blocks % team == 0 || blocks >= 16 * index_t(team));
}

// db (cols) = the sum of the blocks' sums (blocks x ld, a block's row of sums in the
// compute type) for the columns [j0, j1), added in block order into doubles: the bits of
// dz_colsum over all the rows at once.
template <class C>
void add_block_sums(C* db, const C* block_sums, index_t blocks, index_t ld, index_t j0,
                    index_t j1) {
    double* total = Scratch::for_this_thread().get<double>(Scratch::db_total,
                                                           static_cast<std::size_t>(j1 - j0));
    std::fill(total, total + (j1 - j0), 0.0);
    for (index_t k = 0; k < blocks; ++k) {
        const C* row = block_sums + k * ld + j0;
#pragma omp simd
        for (index_t j = 0; j < j1 - j0; ++j) total[j] += static_cast<double>(row[j]);
    }
    for (index_t j = 0; j < j1 - j0; ++j) db[j0 + j] = static_cast<C>(total[j]);
}

// Inside a parallel region of `team` threads, backward with dZ's rows split between them
// (rows_for_threads holds). Tiles of whole blocks of kSumRows rows, each running
// dz_block(i0, i1, sums, total) for each of its blocks (dZ's rows [i0, i1) and their
// column sums into sums, that block's row of block_sums, blocks x n_out; total: n_out
// doubles of this thread's scratch) and then dx_rows(tile) (dx for the same rows, while
// their dZ is in this core's cache); one barrier; db (n_out) = the block sums added in
// order, in tiles of columns; then products(), which need all of dZ.
template <class C, class DzBlock, class DxRows, class Products>
void backward_by_rows(C* db, C* block_sums, index_t n, index_t n_out, int team,
                      const DzBlock& dz_block, const DxRows& dx_rows, const Products& products) {
    const Tiling rows = Tiling::rows_of(n, n_out, team, kSumRows);
    for_each_tile({&rows}, [&](const Tiling&, const Block& r) {
        double* total = Scratch::for_this_thread().get<double>(Scratch::db_total,
                                                               static_cast<std::size_t>(n_out));
        for (index_t i0 = r.i0; i0 < r.i1; i0 += kSumRows)
            dz_block(i0, std::min(r.i1, i0 + kSumRows), block_sums + i0 / kSumRows * n_out, total);
        dx_rows(r);
    });
    threads::team_barrier();
    const Tiling columns(1, n_out, team);
    for_each_tile({&columns}, [&](const Tiling&, const Block& c) {
        add_block_sums(db, block_sums, (n + kSumRows - 1) / kSumRows, n_out, c.j0, c.j1);
    });
    products();
}

// db[j] = sum over rows i of dZ[i, j] for the columns [j0, j1), in blocks of kSumRows rows
// each summed in the compute type C and added into a double (views.hpp): the same bits as
// the kernels' dz_colsum, for either layout and any split of the columns between threads.
// dZ is a BlasOperand: op N is row-major with leading dimension ld (whole rows at a time,
// the block sums and their totals in this thread's scratch, db written once at the end: a
// db shared by the threads' tiles took each row's sums, and where NumPy had aligned it to
// 16 bytes two threads' columns shared a cache line, 2-3x the time of an aligned one),
// op T column-major.
template <class T, class C = compute_t<T>>
void column_sums(C* db, const BlasOperand<T>& dZ, index_t rows, index_t j0, index_t j1) {
    if (dZ.op == blas::Op::N) {
        const index_t cols = j1 - j0;
        Scratch& scratch = Scratch::for_this_thread();
        double* total = scratch.get<double>(Scratch::db_total, static_cast<std::size_t>(cols));
        C* part = scratch.get<C>(Scratch::db_part, static_cast<std::size_t>(cols));
        std::fill(total, total + cols, 0.0);
        for (index_t i0 = 0; i0 < rows; i0 += kSumRows) {
            const index_t i1 = std::min(rows, i0 + kSumRows);
            std::fill(part, part + cols, C(0));
            for (index_t i = i0; i < i1; ++i) {
                const T* row = dZ.data + i * dZ.ld + j0;
#pragma omp simd
                for (index_t j = 0; j < cols; ++j) part[j] += to_compute(row[j]);
            }
#pragma omp simd
            for (index_t j = 0; j < cols; ++j) total[j] += static_cast<double>(part[j]);
        }
        for (index_t j = 0; j < cols; ++j) db[j0 + j] = static_cast<C>(total[j]);
    } else {
        for (index_t j = j0; j < j1; ++j) {
            const T* col = dZ.data + j * dZ.ld;
            double total = 0.0;
            for (index_t i0 = 0; i0 < rows; i0 += kSumRows) {
                const index_t i1 = std::min(rows, i0 + kSumRows);
                C part = C(0);
                for (index_t i = i0; i < i1; ++i) part += to_compute(col[i]);
                total += static_cast<double>(part);
            }
            db[j] = static_cast<C>(total);
        }
    }
}

// W must take x's features; then the three sizes must fit the BLAS integer. A W that
// would fit transposed is likely torch.nn.Linear's weight, (n_out, n_in): the message says.
template <class T>
void check_x_and_W(const MatrixView<T>& x, const MatrixView<T>& W) {
    SIGLAYER_REQUIRE(W.rows == x.cols,
                     "W has shape " + shape_str(W.rows, W.cols) + " but x has " +
                         std::to_string(x.cols) + " features (shape " + shape_str(x.rows, x.cols) +
                         ")" +
                         (W.cols == x.cols ? "; W is (n_in, n_out): pass W.T if it is laid out "
                                             "as torch.nn.Linear's weight, (n_out, n_in)"
                                           : ""));
    require_blas_sizes(x.rows, x.cols, W.cols);
}

// An (n, n_out) argument of backward: out, dout or dZ.
template <class T>
void check_output_shaped(const char* name, const MatrixView<T>& m, const MatrixView<T>& x,
                         const MatrixView<T>& W) {
    SIGLAYER_REQUIRE(m.rows == x.rows && m.cols == W.cols,
                     std::string(name) + " has shape " + shape_str(m.rows, m.cols) + ", expected " +
                         shape_str(x.rows, W.cols) + " from x " + shape_str(x.rows, x.cols) +
                         " and W " + shape_str(W.rows, W.cols));
}

// out (n, n_out) of a forward with x (n, n_in) and W (n_in, n_out): shape, null pointer
// and no overlap with an input (check_forward has run).
template <class T>
void check_forward_output(const OutMatrix<T>& out, const MatrixView<T>& x, const MatrixView<T>& W,
                          const VectorView<compute_t<T>>& b) {
    const index_t n = x.rows, n_out = W.cols;
    SIGLAYER_REQUIRE(
        out.rows == n && out.cols == n_out,
        "out has shape " + shape_str(out.rows, out.cols) + ", expected " + shape_str(n, n_out));
    SIGLAYER_REQUIRE(!(n > 0 && n_out > 0 && out.data == nullptr), "out: null pointer");
    require_disjoint({{"out", extent(out)}},
                     {{"x", extent(x)}, {"W", extent(W)}, {"b", extent(b)}});
}

// Elementwise over count values, in blocks shared between the threads.
template <class Body>
void for_each_block(index_t count, const Body& body) {
    constexpr index_t block = 1 << 14;
    const index_t blocks = (count + block - 1) / block;
    run_parallel(threads_for(count), [&] {
        index_t first = 0, last = 0;
        split_range(blocks, threads::team_threads(), threads::team_rank(), 1, first, last);
        for (index_t blk = first; blk < last; ++blk) {
            const index_t i0 = blk * block;
            body(i0, std::min(block, count - i0));
        }
    });
}

// Layers with few outputs (n_out < kNarrowOutputs), every dtype: forward, dx and dW come
// from row_dots, row_combos and col_dots (kernels.hpp), which read x (or write dx) once, as
// stored, with W^T or dZ in the compute type beside them. A GEMM's
// tiles stayed mostly empty there (OpenBLAS's float32 dW at n_out = 8: 0.86 ms against
// col_dots' 0.35, one thread, best of 300) and the bfloat16 convert path wrote and reread
// a float copy of x; measured on Zen 4 at 8192 x 256 x n_out (docs/bfloat16.md,
// bench/narrow.py).
constexpr index_t kNarrowOutputs = 12;

// Whether forward takes row_dots: few outputs, rows of x contiguous.
template <class T>
bool row_dots_path(const MatrixView<T>& x, index_t n_out) {
    return n_out < kNarrowOutputs && x.cols > 0 && (x.col_stride == 1 || x.cols == 1) &&
           few_output_kernels();
}

// Whether dW takes col_dots (and dZ goes row-major for it): few outputs.
inline bool few_outputs_path(index_t n_in, index_t n_out) {
    return n_out < kNarrowOutputs && n_in > 0 && few_output_kernels();
}

// dx = dZ . W^T by row_combos (dZ and W^T in the compute type, dx written row by row, each
// sum over the outputs in order) up to 64 outputs (kernels::Table::combo_outputs, for the
// AVX2 and AVX-512 copies), past the few outputs of the other products: with a few dozen
// terms per sum OpenBLAS's packed kernels copy dZ and W^T for about as many multiply-adds
// (for it, column-major, dx is A transposed, which its small-matrix kernels take only with
// M * N <= 1200), from kComboRows rows (below that W^T's copy, n_in x n_out moves,
// outweighs what it saves). A/B on Zen 4 (OpenBLAS 0.3.34 on its SkylakeX kernels,
// _core.select_few_outputs in one process, backward, medians of 9 interleaved rounds;
// W^T's stride by row_combos_ld): 12-64 outputs, 64-8192 rows, n_in 64-2048, 0.69-1.02
// of the GEMM path's time on one and two
// threads (N = 8192 x 256 x 64: float32 1.00, float64 0.79-0.87; 2048 x 1024 x 16
// float32 0.69-0.77), the same bits as OpenBLAS's there; AVX2 (forced, OpenBLAS on its
// Haswell kernels) 0.74-1.06 (kernels_simd.hpp, combo2); at 96-128 outputs still 0.88-1.00
// with n_in 256-1024, but 64 x 256 x 128 1.08-1.15 (W^T's copy) and 256 x 512 x 512, 1024^3
// 1.10-1.23. bfloat16's convert path takes it too (the float GEMM on W widened, then a
// rounding pass, before: 0.73-0.99 of that backward's time on AVX-512 and 0.91-1.05 on
// AVX2 at 12-64 outputs on one thread, 0.63-0.93 and 0.87-1.01 on two); its bfloat16
// GEMMs keep dx from 12 outputs, or 5 on siglayer's own (layer_bf16.cpp). The portable
// loop (no AVX2) leaves dx from 12 outputs to the BLAS (forced on Zen 4, with OpenBLAS on
// its Nehalem kernels, it took 0.99-1.48x the GEMM path's backward at 12-64 outputs).
// Fewer rows (Zen 4, AVX-512, SkylakeX kernels, one thread, float32 and float64, the
// copy reading W's rows in order; backward over the GEMM path's): 1 row 2.3-3.0x, 4-8 rows
// 1.03-1.14 (n_in 512-4096, 24-64 outputs). From 16 rows: with a W of 4096 x 64 1.01-1.14
// up to 64 rows, 16 x 2048 x 32 0.93-1.02, 32 x 1024 x 16 0.84-0.90, 128 x 2048 x 64
// 0.92-0.98. bfloat16's convert path follows the same rule (not measured at such batches).
constexpr index_t kComboRows = 16;

template <class T>
bool row_combos_path(index_t n, index_t n_in, index_t n_out) {
    const bool few = n_out < kNarrowOutputs;  // row_combos at any batch
    return n_out <= kernels::active<T>().combo_outputs && (few || n >= kComboRows) && n_in > 0 &&
           few_output_kernels();
}

// The row stride of row_combos' W^T (n_out x n_in): n_in, or more where rows n_in apart
// would fall into so few sets of L1 (64 sets of 64-byte lines, 8 ways on Zen 3 and 4,
// 12 on Sapphire Rapids) that one vector's n_out loads, one per row, evict each other:
// with rows a multiple of 4 KB apart all of them share one set; 2 KB, two; 1 KB, four.
// Then rows go an odd number of cache lines apart (all sets). Measured (in-process A/B,
// Zen 4, backward without dW, 25 rounds): float32 1024 x 1024 x 11 0.44-0.45 of the time
// with rows 4 KB apart, float64 4096 x 1024 x 8 and 8192 x 512 x 11 0.69-0.98; at 64
// outputs, over the GEMM path, 1024 x 1024 x 64 and 4096 x 512 x 64 went from 1.31-1.44 to
// 0.83-1.02. Only past 6 rows per set (3/4 of Zen's ways): padded always, 8192 x 512 x 11
// float32 (rows 2 KB apart, two sets) took 1.10-1.14.
template <class C>
index_t row_combos_ld(index_t n_in, index_t n_out) {
    const index_t bytes = n_in * static_cast<index_t>(sizeof(C));
    const index_t low = bytes & -bytes;  // the largest power of two that divides it
    const index_t sets = low >= 4096 ? 1 : 4096 / std::max<index_t>(low, 1);
    if (low < 64 || n_out <= 6 * sets) return n_in;
    constexpr index_t line = 64 / static_cast<index_t>(sizeof(C));
    const index_t lines = (n_in + line - 1) / line;
    return (lines % 2 == 0 ? lines + 1 : lines) * line;
}

// W^T (n_out x n_in) in the compute type, C-contiguous, in this thread's scratch slot: the
// operand of row_dots (a few times n_in values).
template <class T, class C = compute_t<T>>
C* transposed(const MatrixView<T>& W, Scratch::Slot slot) {
    const index_t n_in = W.rows, n_out = W.cols;
    C* Wt = Scratch::for_this_thread().get<C>(slot, static_cast<std::size_t>(n_in * n_out));
    for (index_t j = 0; j < n_out; ++j)
        for (index_t p = 0; p < n_in; ++p)
            Wt[j * n_in + p] = to_compute(W.data[p * W.row_stride + j * W.col_stride]);
    return Wt;
}

// W^T (n_out x n_in, row stride ld: row_combos_ld(n_in, n_out), which the caller passes
// to row_combos too) in the compute type, in this thread's scratch slot: the operand of
// row_combos. A W with rows of unit stride is read in order, each
// value written to its row of Wt (n_out lines filled at once, which that stride keeps in
// distinct sets of L1): row by row of Wt it was read a line per value, and with 12-64
// outputs the copy outweighed row_combos' gain up to 64-128 rows (a backward at 32 x 4096
// x 64 took 1.24x the GEMM path's, then 1.01; at 1 x 4096 x 64 4.6x, then 3.0x: kComboRows).
template <class T, class C = compute_t<T>>
C* transposed_for_combos(const MatrixView<T>& W, Scratch::Slot slot, index_t ld) {
    const index_t n_in = W.rows, n_out = W.cols;
    ld = std::max(ld, n_in);
    C* Wt = Scratch::for_this_thread().get<C>(slot, static_cast<std::size_t>(ld * n_out));
    if (std::abs(W.col_stride) <= std::abs(W.row_stride)) {  // W[::-1] and -1 strides too
        for (index_t p = 0; p < n_in; ++p)
            for (index_t j = 0; j < n_out; ++j)
                Wt[j * ld + p] = to_compute(W.data[p * W.row_stride + j * W.col_stride]);
    } else {  // W's columns read in order
        for (index_t j = 0; j < n_out; ++j)
            for (index_t p = 0; p < n_in; ++p)
                Wt[j * ld + p] = to_compute(W.data[p * W.row_stride + j * W.col_stride]);
    }
    return Wt;
}

// An x of this many bytes or more streams from memory: row_dots then goes over x once,
// fetching rows ahead, 5 to 11 outputs in one pass (dots_chunked) instead of one per group
// of 4 (kernels_simd.hpp's AVX-512 and AVX2 copies; rows of 512 bytes and more), the same
// bits either way. The threshold was set on 5-11 outputs (in-process A/B on Zen 4, 32 MB
// L3, forward over the GEMM path, group by group -> one pass): 32 MB (float32 8192 x 1024,
// 32768 x 256; float64 4096 x 1024) 0.82-1.55 -> 0.36-1.36 on one and two threads; 24 MB
// (float64 12288 x 256) 0.98-1.34 -> 0.58-1.27 on two; 16 MB and less mixed or slower
// (float32 4096 x 1024 on two threads 0.73-1.09 -> 0.84-1.20; float64 1024 x 1024
// 0.88-1.34 -> 0.89-1.38). With AVX2 forced (OpenBLAS on Haswell kernels) 32 MB 0.54-0.97
// -> 0.32-0.68, but 1024 x 64 0.51-1.02 -> 0.79-1.22.
constexpr index_t kStreamedBytes = index_t(24) << 20;

// forward on row_dots (row_dots_path holds; n > 0, n_out > 0): out (n, n_out) = sigma(x . W +
// bias), a panel of rows at a time, each panel's sums in L1 for bias + sigma (and the one
// rounding of a bfloat16 out). Rows are independent: any split gives the same bits.
template <class T, class C = compute_t<T>>
void forward_row_dots(OutMatrix<T> out, const MatrixView<T>& x, const MatrixView<T>& W,
                      const C* bias) {
    const index_t n = x.rows, n_in = x.cols, n_out = W.cols;
    const C* Wt = transposed(W, Scratch::W_widened);
    const auto& kernel = kernels::active<T>();
    const bool streamed = n * n_in * static_cast<index_t>(sizeof(T)) >= kStreamedBytes;
    run_parallel(threads_for_gemm(n, n_out, n_in), [&] {
        const Tiling tiles(n, n_out, threads::team_threads());
        for_each_tile({&tiles}, [&](const Tiling&, const Block& blk) {
            constexpr index_t kPanel = 256;  // rows
            C acc[kPanel * kNarrowOutputs];
            const index_t cols = blk.cols();
            for (index_t r0 = blk.i0; r0 < blk.i1; r0 += kPanel) {
                const index_t m = std::min(kPanel, blk.i1 - r0);
                kernel.row_dots(acc, cols, x.data + r0 * x.row_stride, x.row_stride,
                                Wt + blk.j0 * n_in, m, n_in, cols, streamed);
                kernel.bias_sigmoid_rows(out.data + r0 * n_out + blk.j0, n_out, acc, cols,
                                         bias + blk.j0, m, cols);
            }
        });
    });
}

}  // namespace siglayer::layer_detail
