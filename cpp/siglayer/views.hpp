// Plain descriptions of the arrays the core works on. No ownership, no Python.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace siglayer {

using index_t = std::int64_t;

// db, a sum over the rows of dZ, adds kSumRows rows at a time in the compute type (db itself
// holds the block's sums) and each block's sums into a double (a per-thread scratch row):
// the error stays within about kSumRows roundings of the compute type (plus rows / kSumRows
// of float64); a running float32 sum was off by ~1e-4 relative at 2^20 rows. The blocks
// start at row 0, so db does not depend on how the columns are split between threads,
// nor on the layout of dZ (kernels_impl.hpp's dz_colsum and layer_detail.hpp's
// column_sums give the same bits).
constexpr index_t kSumRows = 128;

// A rows x cols matrix: element (i, j) is data[i * row_stride + j * col_stride].
// Strides are in elements and may be anything (zero, negative, huge); the core
// decides whether BLAS can take the layout as it is or a packed copy is needed.
template <class T>
struct MatrixView {
    const T* data = nullptr;
    index_t rows = 0;
    index_t cols = 0;
    index_t row_stride = 0;
    index_t col_stride = 1;
};

// A writable C-contiguous rows x cols matrix (row stride == cols).
template <class T>
struct OutMatrix {
    T* data = nullptr;
    index_t rows = 0;
    index_t cols = 0;
};

// A vector of n elements: element j is data[j * stride].
template <class T>
struct VectorView {
    const T* data = nullptr;
    index_t size = 0;
    index_t stride = 1;
};

// Thrown for a violated precondition; the bindings turn it into ValueError.
struct InvalidArgument : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

inline std::string shape_str(index_t rows, index_t cols) {
    return "(" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
}

}  // namespace siglayer
