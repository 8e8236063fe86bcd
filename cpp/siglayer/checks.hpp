// The checks every entry point of the core makes, in one place: shapes against the BLAS
// integer, and memory overlap between outputs and inputs. Any frontend (pybind11, a torch
// operator, an XLA FFI handler) gets them by calling the core.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "views.hpp"

namespace siglayer {

// Thrown when an output shares memory with an input or another output; a frontend can
// tell it from other InvalidArguments by type (pybind11 raises it as a ValueError
// subclass, siglayer._core.OverlapError).
struct Overlap : InvalidArgument {
    using InvalidArgument::InvalidArgument;
};

// The message is built only when the check fails: these checks run on every call.
#define SIGLAYER_REQUIRE(ok, message)              \
    do {                                           \
        if (!(ok)) throw InvalidArgument(message); \
    } while (false)

// [first, last) byte addresses a view can touch; an empty view touches nothing.
struct Extent {
    std::uintptr_t first = 0, last = 0;
};

bool overlaps(const Extent& a, const Extent& b);

// rows x cols elements of `bytes` each at data, element (i, j) at i * row_stride +
// j * col_stride (in elements; any sign).
Extent extent_of(const void* data, index_t rows, index_t cols, index_t row_stride,
                 index_t col_stride, index_t bytes);

template <class T>
Extent extent(const MatrixView<T>& m) {
    return extent_of(m.data, m.rows, m.cols, m.row_stride, m.col_stride, sizeof(T));
}
template <class T>
Extent extent(const OutMatrix<T>& m) {
    return extent_of(m.data, m.rows, m.cols, m.cols, 1, sizeof(T));
}
template <class T>
Extent extent(const VectorView<T>& v) {
    return extent_of(v.data, 1, v.size, 0, v.stride, sizeof(T));
}
// count contiguous elements.
template <class T>
Extent extent(const T* data, index_t count) {
    return extent_of(data, 1, count, 0, 1, sizeof(T));
}

using Named = std::pair<const char*, Extent>;

// Overlap naming the pair unless no output overlaps an input or another output.
void require_disjoint(std::initializer_list<Named> outputs, std::initializer_list<Named> inputs);

// InvalidArgument unless value fits the BLAS integer ("n = ... exceeds ...").
void require_blas_size(const char* name, index_t value);

}  // namespace siglayer
