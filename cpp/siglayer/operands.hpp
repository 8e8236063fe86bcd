// How a strided view reaches BLAS or a row sweep: as it is when its layout allows, else
// packed once into this thread's scratch memory. Plain C++17, no Python.
#pragma once

#include <algorithm>

#include "blas.hpp"
#include "dtypes.hpp"
#include "kernels.hpp"
#include "partition.hpp"
#include "scratch.hpp"
#include "views.hpp"

namespace siglayer {

// A C-contiguous copy of m in this thread's scratch slot.
template <class T>
const T* pack(const MatrixView<T>& m, Scratch::Slot slot) {
    T* packed = Scratch::for_this_thread().get<T>(slot, static_cast<std::size_t>(m.rows * m.cols));
    for (index_t i = 0; i < m.rows; ++i)
        for (index_t j = 0; j < m.cols; ++j)
            packed[i * m.cols + j] = m.data[i * m.row_stride + j * m.col_stride];
    return packed;
}

// m as BLAS takes it without a copy, into `operand`: a C-ordered (unit column stride) view
// as it is, an F-ordered (unit row stride) one through the transpose flag. False for
// any other layout (other strides, zero or negative strides, a leading dimension beyond
// the BLAS integer). The caller has checked that rows and cols fit the BLAS integer.
template <class T>
bool unpacked_operand(const MatrixView<T>& m, BlasOperand<T>& operand) {
    const index_t rows = m.rows, cols = m.cols;
    if (rows == 0 || cols == 0) {  // nothing is read: any leading dimension BLAS accepts
        operand = {m.data, blas::Op::N, std::max<index_t>(1, cols)};
        return true;
    }
    const auto fits = [](index_t ld, index_t min_ld) {
        return ld >= min_ld && ld <= blas::max_int();
    };
    const index_t ld_n = rows <= 1 ? std::max<index_t>(1, cols) : m.row_stride;
    if ((m.col_stride == 1 || cols <= 1) && fits(ld_n, std::max<index_t>(1, cols))) {
        operand = {m.data, blas::Op::N, ld_n};
        return true;
    }
    const index_t ld_t = cols <= 1 ? std::max<index_t>(1, rows) : m.col_stride;
    if ((m.row_stride == 1 || rows <= 1) && fits(ld_t, std::max<index_t>(1, rows))) {
        operand = {m.data, blas::Op::T, ld_t};
        return true;
    }
    return false;
}

// m as BLAS takes it: without a copy where unpacked_operand can, else packed once into
// this thread's scratch slot.
template <class T>
BlasOperand<T> blas_operand(const MatrixView<T>& m, Scratch::Slot slot) {
    BlasOperand<T> operand{};
    if (unpacked_operand(m, operand)) return operand;
    return {pack(m, slot), blas::Op::N, std::max<index_t>(1, m.cols)};
}

// A view with unit column stride (row stride >= cols) as a pointer and row stride ld,
// packing anything else: the elementwise sweeps read rows contiguously.
template <class T>
const T* row_major(const MatrixView<T>& m, Scratch::Slot slot, index_t& ld) {
    if ((m.col_stride == 1 || m.cols <= 1) && (m.rows <= 1 || m.row_stride >= m.cols)) {
        ld = m.rows <= 1 ? m.cols : m.row_stride;
        return m.data;
    }
    ld = m.cols;
    return pack(m, slot);
}

// dst (rows x cols, C-contiguous) = m[r0 : r0 + rows, c0 : c0 + cols] widened to float.
inline void widen_block(float* dst, const MatrixView<bfloat16>& m, index_t r0, index_t rows,
                        index_t c0, index_t cols) {
    const auto& kernel = kernels::active<bfloat16>();
    const bfloat16* first = m.data + r0 * m.row_stride + c0 * m.col_stride;
    if (m.col_stride == 1 && (rows == 1 || m.row_stride == cols)) {  // one contiguous run
        kernel.widen(dst, first, rows * cols);
        return;
    }
    for (index_t i = 0; i < rows; ++i) {
        const bfloat16* src = m.data + (r0 + i) * m.row_stride + c0 * m.col_stride;
        float* row = dst + i * cols;
        if (m.col_stride == 1)
            kernel.widen(row, src, cols);
        else
            for (index_t j = 0; j < cols; ++j) row[j] = to_float(src[j * m.col_stride]);
    }
}

}  // namespace siglayer
