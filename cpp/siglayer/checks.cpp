#include "checks.hpp"

#include "blas.hpp"

namespace siglayer {

bool overlaps(const Extent& a, const Extent& b) {
    return a.first < a.last && b.first < b.last && a.first < b.last && b.first < a.last;
}

Extent extent_of(const void* data, index_t rows, index_t cols, index_t row_stride,
                 index_t col_stride, index_t bytes) {
    if (rows == 0 || cols == 0) return {};
    std::int64_t lo = 0, hi = 0;
    for (std::int64_t step : {(rows - 1) * row_stride, (cols - 1) * col_stride}) {
        if (step < 0)
            lo += step;
        else
            hi += step;
    }
    const auto base = reinterpret_cast<std::uintptr_t>(data);
    return {base + lo * bytes, base + (hi + 1) * bytes};
}

void require_disjoint(std::initializer_list<Named> outputs, std::initializer_list<Named> inputs) {
    for (const auto& [oname, o] : outputs) {
        for (const auto& [iname, i] : inputs)
            if (overlaps(o, i))
                throw Overlap(std::string(oname) + " overlaps " + iname +
                              "; pass a separate buffer");
        for (const auto& [other, e] : outputs)
            if (oname != other && overlaps(o, e))
                throw Overlap(std::string(oname) + " overlaps " + other +
                              "; pass separate buffers");
    }
}

void require_blas_size(const char* name, index_t value) {
    SIGLAYER_REQUIRE(value <= blas::max_int(), std::string(name) + " = " + std::to_string(value) +
                                                   " exceeds the BLAS integer range (" +
                                                   std::to_string(blas::max_int()) +
                                                   "); split the problem");
}

}  // namespace siglayer
