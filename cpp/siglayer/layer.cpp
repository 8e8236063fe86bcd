#include "layer.hpp"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>

#include "blas.hpp"
#include "checks.hpp"
#include "dtypes.hpp"
#include "kernels.hpp"
#include "operands.hpp"
#include "partition.hpp"
#include "scratch.hpp"

namespace siglayer {

namespace {

// Below this many elements an elementwise sweep runs on one thread: waking the
// team costs more than it saves.
constexpr index_t kParallelElements = 1 << 15;

// Part of the shape checks, so that it runs before the bindings allocate outputs and
// before anything is packed: sizes that do not fit are refused, never truncated.
void require_blas_sizes(index_t n, index_t n_in, index_t n_out) {
    for (auto [name, value] :
         {std::pair{"n", n}, std::pair{"n_in", n_in}, std::pair{"n_out", n_out}})
        require_blas_size(name, value);
}

int threads_for(index_t elements) {
    return elements >= kParallelElements ? omp_get_max_threads() : 1;
}

// The checks every backward entry point makes on its outputs dx (n, n_in; data may be
// null), dW (n_in, n_out) and db (n_out,): shapes, null pointers, no overlap with an
// input or another output (sizes were checked with the shapes). An empty batch or n_out == 0
// has zero gradients (sums over nothing), written here; returns false when nothing is
// left to compute.
template <class T, class C = compute_t<T>>
bool check_gradient_outputs(OutMatrix<T> dx, OutMatrix<C> dW, C* db, index_t n, index_t n_in,
                            index_t n_out, std::initializer_list<Named> inputs) {
    SIGLAYER_REQUIRE(
        dW.rows == n_in && dW.cols == n_out,
        "dW has shape " + shape_str(dW.rows, dW.cols) + ", expected " + shape_str(n_in, n_out));
    const bool need_dx = dx.data != nullptr;
    SIGLAYER_REQUIRE(
        !need_dx || (dx.rows == n && dx.cols == n_in),
        "dx has shape " + shape_str(dx.rows, dx.cols) + ", expected " + shape_str(n, n_in));
    SIGLAYER_REQUIRE(!(n_in > 0 && n_out > 0 && dW.data == nullptr), "dW: null pointer");
    SIGLAYER_REQUIRE(!(n_out > 0 && db == nullptr), "db: null pointer");
    require_disjoint(
        {{"dx", need_dx ? extent(dx) : Extent{}}, {"dW", extent(dW)}, {"db", extent(db, n_out)}},
        inputs);

    if (n == 0 || n_out == 0) {
        // Sums over an empty batch are zero; with no outputs there is no gradient to pass back.
        std::fill(dW.data, dW.data + n_in * n_out, C(0));
        std::fill(db, db + n_out, C(0));
        if (need_dx) std::fill(dx.data, dx.data + n * n_in, T{});
        return false;
    }
    return true;
}

// db[j] = sum over rows i of dZ[i, j] for the columns [j0, j1), each column summed in
// row order (so db does not depend on how the columns are split between threads).
// dZ is a BlasOperand: op N is row-major with leading dimension ld, op T column-major.
// db and the sums are in the compute type C.
template <class T, class C = compute_t<T>>
void column_sums(C* db, const BlasOperand<T>& dZ, index_t rows, index_t j0, index_t j1) {
    if (dZ.op == blas::Op::N) {
        std::fill(db + j0, db + j1, C(0));
        for (index_t i = 0; i < rows; ++i) {
            const T* row = dZ.data + i * dZ.ld;
#pragma omp simd
            for (index_t j = j0; j < j1; ++j) db[j] += to_compute(row[j]);
        }
    } else {
        for (index_t j = j0; j < j1; ++j) {
            const T* col = dZ.data + j * dZ.ld;
            C sum = C(0);
            for (index_t i = 0; i < rows; ++i) sum += to_compute(col[i]);
            db[j] = sum;
        }
    }
}

// Where a tile of a product lands before the elementwise pass: the output itself when
// the storage type is the compute type, else this thread's scratch (row stride = the
// tile's width), for the pass that rounds it into the output.
template <class T, class C = compute_t<T>>
C* accumulator(T* out_blk, index_t ld_out, const Block& blk, index_t& ld_acc) {
    if constexpr (std::is_same_v<T, C>) {
        ld_acc = ld_out;
        return out_blk;
    } else {
        ld_acc = std::max<index_t>(1, blk.cols());
        return Scratch::for_this_thread().get<C>(Scratch::acc,
                                                 static_cast<std::size_t>(blk.rows() * ld_acc));
    }
}

// Inside a parallel region: dW = x^T . dZ and, when dx.data is set, dx = dZ . W^T, both
// cut into tiles that the team takes one at a time (partition.hpp). dZ is (n, n_out)
// and complete; x is (n, n_in), W is (n_in, n_out). The batch index i is what dW sums
// over: dW[k, l] = sum_i x[i, k] dZ[i, l], which is why x^T stands on the left.
// For bfloat16, dW (float) is written directly and each tile of dx is rounded once.
template <class T, class C = compute_t<T>>
void gradient_products(OutMatrix<T> dx, OutMatrix<C> dW, const BlasOperand<T>& xo,
                       const BlasOperand<T>& Wo, const BlasOperand<T>& dZo, index_t n) {
    const index_t n_in = dW.rows, n_out = dW.cols;
    if (n_in == 0 || n_out == 0 || n == 0) return;
    const BlasOperand<T> xT{xo.data, flip(xo.op), xo.ld};
    const BlasOperand<T> WT{Wo.data, flip(Wo.op), Wo.ld};
    const int team = omp_get_num_threads();
    const Tiling dW_tiles(n_in, n_out, team);
    const Tiling dx_tiles = dx.data ? Tiling(n, n_in, team) : Tiling();
    for_each_tile({&dW_tiles, &dx_tiles}, [&](const Tiling& tiling, const Block& t) {
        if (&tiling == &dW_tiles) {
            blas::gemm<T>(xT.op, dZo.op, t.rows(), t.cols(), n, C(1), row_offset(xT, t.i0), xT.ld,
                          col_offset(dZo, t.j0), dZo.ld, C(0), dW.data + t.i0 * n_out + t.j0,
                          n_out);
        } else {
            T* dx_blk = dx.data + t.i0 * n_in + t.j0;
            index_t ld_acc = 0;
            C* acc = accumulator(dx_blk, n_in, t, ld_acc);
            blas::gemm<T>(dZo.op, WT.op, t.rows(), t.cols(), n_out, C(1), row_offset(dZo, t.i0),
                          dZo.ld, col_offset(WT, t.j0), WT.ld, C(0), acc, ld_acc);
            if constexpr (!std::is_same_v<T, C>) {
                const auto& kernel = kernels::active<T>();
                for (index_t i = 0; i < t.rows(); ++i)
                    kernel.narrow(dx_blk + i * n_in, acc + i * ld_acc, t.cols());
            }
        }
    });
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
    using C = compute_t<T>;
    check_forward(x, W, b);
    const index_t n = x.rows, n_in = x.cols, n_out = W.cols;
    SIGLAYER_REQUIRE(
        out.rows == n && out.cols == n_out,
        "out has shape " + shape_str(out.rows, out.cols) + ", expected " + shape_str(n, n_out));
    SIGLAYER_REQUIRE(!(n > 0 && n_out > 0 && out.data == nullptr), "out: null pointer");
    require_disjoint({{"out", extent(out)}},
                     {{"x", extent(x)}, {"W", extent(W)}, {"b", extent(b)}});
    if (n == 0 || n_out == 0) return;

    const C* bias = b.data;
    if (b.stride != 1) {
        C* packed = Scratch::for_this_thread().get<C>(Scratch::b_packed, n_out);
        for (index_t j = 0; j < n_out; ++j) packed[j] = b.data[j * b.stride];
        bias = packed;
    }
    BlasOperand<T> xo{}, Wo{};
    if (n_in > 0) {
        xo = blas_operand(x, Scratch::x_packed);
        Wo = blas_operand(W, Scratch::W_packed);
    }
    const auto& kernel = kernels::active<T>();
    // Each tile of out = x . W gets bias + sigma while it is still in cache; no thread
    // waits on another until the region ends.
    run_parallel(threads_for_gemm(n, n_out, n_in), [&] {
        blas::SingleThreaded single;
        const Tiling tiles(n, n_out, omp_get_num_threads());
        for_each_tile({&tiles}, [&](const Tiling&, const Block& blk) {
            T* out_blk = out.data + blk.i0 * n_out + blk.j0;
            index_t ld_acc = 0;
            C* acc = accumulator(out_blk, n_out, blk, ld_acc);
            if (n_in == 0) {
                for (index_t i = 0; i < blk.rows(); ++i)
                    std::fill(acc + i * ld_acc, acc + i * ld_acc + blk.cols(), C(0));
            } else {
                blas::gemm<T>(xo.op, Wo.op, blk.rows(), blk.cols(), n_in, C(1),
                              row_offset(xo, blk.i0), xo.ld, col_offset(Wo, blk.j0), Wo.ld, C(0),
                              acc, ld_acc);
            }
            kernel.bias_sigmoid_rows(out_blk, n_out, acc, ld_acc, bias + blk.j0, blk.rows(),
                                     blk.cols());
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
    index_t ld_dout = 0, ld_out = 0;
    const T* dout_rows = row_major(dout, Scratch::dout_packed, ld_dout);
    const T* out_rows = row_major(out, Scratch::out_packed, ld_out);
    BlasOperand<T> xo{}, Wo{};
    if (n_in > 0) {
        xo = blas_operand(x, Scratch::x_packed);
        Wo = blas_operand(W, Scratch::W_packed);
    }
    const auto& kernel = kernels::active<T>();
    const int threads = threads_for_gemm(n, n_out, std::max<index_t>(n_in, 1));
    run_parallel(threads, [&] {
        blas::SingleThreaded single;
        // Phase 1, tiles of whole columns: dZ and db. Each column of db is summed in row
        // order, so db is bitwise the same for any thread count.
        const Tiling columns(1, n_out, omp_get_num_threads());
        for_each_tile({&columns}, [&](const Tiling&, const Block& c) {
            kernel.dz_colsum(dZ + c.j0, n_out, db + c.j0, dout_rows + c.j0, ld_dout,
                             out_rows + c.j0, ld_out, n, c.cols());
        });
        // Phase 2: the products need all of dZ.
#pragma omp barrier
        gradient_products(dx, dW, xo, Wo, BlasOperand<T>{dZ, blas::Op::N, n_out}, n);
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
    // packed once (the dZ slot is free: no sweep writes a dZ here).
    const BlasOperand<T> dZo = blas_operand(dZ, Scratch::dZ);
    BlasOperand<T> xo{}, Wo{};
    if (n_in > 0) {
        xo = blas_operand(x, Scratch::x_packed);
        Wo = blas_operand(W, Scratch::W_packed);
    }
    run_parallel(threads_for_gemm(n, n_out, std::max<index_t>(n_in, 1)), [&] {
        blas::SingleThreaded single;
        // db by columns (see backward); no barrier: dZ is an input, complete from the start.
        const Tiling columns(1, n_out, omp_get_num_threads());
        for_each_tile({&columns},
                      [&](const Tiling&, const Block& c) { column_sums(db, dZo, n, c.j0, c.j1); });
        gradient_products(dx, dW, xo, Wo, dZo, n);
    });
}

template <class T>
void sigmoid(T* y, const T* z, index_t count) {
    const auto& kernel = kernels::active<T>();
    constexpr index_t block = 1 << 14;
    const index_t blocks = (count + block - 1) / block;
    run_parallel(threads_for(count), [&] {
        index_t first = 0, last = 0;
        split_range(blocks, omp_get_num_threads(), omp_get_thread_num(), 1, first, last);
        for (index_t blk = first; blk < last; ++blk) {
            const index_t i0 = blk * block;
            kernel.sigmoid(y + i0, z + i0, std::min(block, count - i0));
        }
    });
}

namespace {

// Elementwise over count values, in blocks shared between the threads (as sigmoid).
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

}  // namespace

void to_bfloat16(bfloat16* dst, const float* src, index_t count) {
    const auto& kernel = kernels::active<bfloat16>();
    for_each_block(count, [&](index_t i0, index_t n) { kernel.narrow(dst + i0, src + i0, n); });
}

void to_float32(float* dst, const bfloat16* src, index_t count) {
    const auto& kernel = kernels::active<bfloat16>();
    for_each_block(count, [&](index_t i0, index_t n) { kernel.widen(dst + i0, src + i0, n); });
}

#define SIGLAYER_INSTANTIATE(T)                                                                   \
    template void check_forward<T>(MatrixView<T>, MatrixView<T>, VectorView<compute_t<T>>);       \
    template void check_backward<T>(MatrixView<T>, MatrixView<T>, MatrixView<T>, MatrixView<T>);  \
    template void forward<T>(OutMatrix<T>, MatrixView<T>, MatrixView<T>, VectorView<compute_t<T>>); \
    template void backward<T>(OutMatrix<T>, OutMatrix<compute_t<T>>, compute_t<T>*, MatrixView<T>, \
                              MatrixView<T>, MatrixView<T>, MatrixView<T>);                       \
    template void check_backward_from_preactivation<T>(MatrixView<T>, MatrixView<T>,              \
                                                       MatrixView<T>);                            \
    template void backward_from_preactivation<T>(OutMatrix<T>, OutMatrix<compute_t<T>>,           \
                                                 compute_t<T>*, MatrixView<T>, MatrixView<T>,     \
                                                 MatrixView<T>);                                  \
    template void sigmoid<T>(T*, const T*, index_t);
SIGLAYER_FOR_EACH_DTYPE(SIGLAYER_INSTANTIATE)
#undef SIGLAYER_INSTANTIATE

}  // namespace siglayer
