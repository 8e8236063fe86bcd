// Helpers shared by the layer's entry points (layer.cpp for float and double,
// layer_bf16.cpp for bfloat16): the checks, the column sums of db and the elementwise
// split. Internal to the core.
#pragma once

#include <omp.h>

#include <algorithm>
#include <initializer_list>
#include <string>
#include <utility>

#include "checks.hpp"
#include "dtypes.hpp"
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

inline int threads_for(index_t elements) {
    return elements >= kParallelElements ? omp_get_max_threads() : 1;
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

// db[j] = sum over rows i of dZ[i, j] for the columns [j0, j1), in blocks of kSumRows rows
// each summed in the compute type C and added into a double (views.hpp): the same bits as
// the kernels' dz_colsum, for either layout and any split of the columns between threads.
// dZ is a BlasOperand: op N is row-major with leading dimension ld (whole rows at a time,
// the block sums in db, their totals in this thread's scratch), op T column-major.
template <class T, class C = compute_t<T>>
void column_sums(C* db, const BlasOperand<T>& dZ, index_t rows, index_t j0, index_t j1) {
    if (dZ.op == blas::Op::N) {
        const index_t cols = j1 - j0;
        double* total = Scratch::for_this_thread().get<double>(Scratch::db_total,
                                                               static_cast<std::size_t>(cols));
        C* part = db + j0;
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
        for (index_t j = 0; j < cols; ++j) part[j] = static_cast<C>(total[j]);
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

// W must take x's features; then the three sizes must fit the BLAS integer.
template <class T>
void check_x_and_W(const MatrixView<T>& x, const MatrixView<T>& W) {
    SIGLAYER_REQUIRE(W.rows == x.cols, "W has shape " + shape_str(W.rows, W.cols) + " but x has " +
                                           std::to_string(x.cols) + " features (shape " +
                                           shape_str(x.rows, x.cols) + ")");
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
        split_range(blocks, omp_get_num_threads(), omp_get_thread_num(), 1, first, last);
        for (index_t blk = first; blk < last; ++blk) {
            const index_t i0 = blk * block;
            body(i0, std::min(block, count - i0));
        }
    });
}

}  // namespace siglayer::layer_detail
