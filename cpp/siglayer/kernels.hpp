// Run-time dispatch of the elementwise kernels to the best instruction set the CPU has.
#pragma once

#include <string>

#include "dtypes.hpp"
#include "views.hpp"

namespace siglayer::kernels {

// One instruction set's compiled copy of the kernels in kernels_impl.hpp, for storage
// type T computing in C = compute_t<T> (the same type for float and double).
template <class T>
struct Table {
    using C = compute_t<T>;
    // y[i] = sigma(z[i]) for i < count (y may be z).
    void (*sigmoid)(T* y, const T* z, index_t count);
    // out (rows x cols, row stride ld) = sigma(acc + b): acc is the product in the compute
    // type (row stride ld_acc), b has cols entries. acc is overwritten and may be out when
    // T is C; a bfloat16 out is rounded once, after sigma.
    void (*bias_sigmoid_rows)(T* out, index_t ld, C* acc, index_t ld_acc, const C* b, index_t rows,
                              index_t cols);
    // dZ = dout * out * (1 - out) in C, stored as T; db (cols, in C) = column sums of the
    // unrounded dZ in blocks of kSumRows rows, the block sums added in total (cols doubles,
    // scratch) (views.hpp).
    void (*dz_colsum)(T* dZ, index_t ld_dZ, C* db, double* total, const T* dout, index_t ld_dout,
                      const T* out, index_t ld_out, index_t rows, index_t cols);
    // The same with dZ stored in C, rounded to T's precision (bfloat16 values as floats,
    // for a float GEMM); dz_colsum itself where T is C.
    void (*dz_colsum_c)(C* dZ, index_t ld_dZ, C* db, double* total, const T* dout, index_t ld_dout,
                        const T* out, index_t ld_out, index_t rows, index_t cols);
    // dst[i] = src[i] exactly (T to C), and rounded to nearest even (C to T).
    void (*widen)(C* dst, const T* src, index_t count);
    void (*narrow)(T* dst, const C* src, index_t count);
    // The products of a layer with few outputs (layer_detail.hpp's kNarrowOutputs).
    // acc (rows x cols, row stride ld_acc) = x . Wt^T for a layer with few outputs: x is
    // rows x k with row stride ld_x and contiguous rows, Wt is cols x k, C-contiguous, in C.
    // Sums in C, in an order that does not depend on rows (nor on the thread count).
    // streamed: the caller's whole x is too large for the caches (a loop order for memory,
    // the same bits either way).
    void (*row_dots)(C* acc, index_t ld_acc, const T* x, index_t ld_x, const C* Wt, index_t rows,
                     index_t k, index_t cols, bool streamed);
    // dst (rows x cols, row stride ld_dst) = dZ . Wt rounded once to T, the product dx of a
    // layer with few outputs: dZ is rows x k (row stride ld_dZ, in C), Wt is k x cols (row
    // stride ld_Wt, in C). Sums over k in order, in C.
    void (*row_combos)(T* dst, index_t ld_dst, const C* dZ, index_t ld_dZ, const C* Wt,
                       index_t ld_Wt, index_t rows, index_t k, index_t cols);
    // dW (k x cols, row stride ld_dW, in C) = x^T . dZ, the product dW of a layer with few
    // outputs: x is rows x k (row stride ld_x, contiguous rows), dZ is rows x cols (row
    // stride ld_dZ, in C). Sums in C over blocks of rows, the blocks added in order: the same
    // for any split of dW's rows.
    void (*col_dots)(C* dW, index_t ld_dW, const T* x, index_t ld_x, const C* dZ, index_t ld_dZ,
                     index_t rows, index_t k, index_t cols);
    // The most outputs for which dx takes row_combos rather than a GEMM (layer_detail.hpp,
    // row_combos_path): 64 for the hand-vectorized copies, 11 for the portable loop, row by
    // row, which lost to OpenBLAS from 12 (1.0-1.5x the backward's time).
    index_t combo_outputs;
};

// The table in use (chosen once, at first use, from the CPU's features).
template <class T>
const Table<T>& active();

// "avx512bf16", "avx512", "avx2" or "baseline".
std::string active_isa();
// Instruction sets this CPU can run, best first.
std::string available_isas();
// Force one (for tests and benchmarks); throws InvalidArgument if the CPU lacks it.
void select_isa(const std::string& name);
// Whether the CPU runs the avx512bf16 copy (AVX-512 F/DQ/VL/BW and AVX512-BF16): also the
// condition for siglayer's own bfloat16 GEMM, compiled with the same flags (blas.cpp).
bool cpu_has_avx512bf16();

}  // namespace siglayer::kernels
