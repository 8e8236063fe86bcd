// Compiled once per instruction set; SIGLAYER_ISA names the copy (see CMakeLists.txt).
#include "dtypes.hpp"
#include "kernels.hpp"
#include "kernels_impl.hpp"

#ifndef SIGLAYER_ISA
#error "SIGLAYER_ISA must name the instruction set this copy is compiled for"
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include "kernels_simd.hpp"
#define SIGLAYER_SIGMOID_KERNELS kernels_detail::SIGLAYER_ISA::simd
#else
#define SIGLAYER_SIGMOID_KERNELS kernels_detail::SIGLAYER_ISA
#endif

namespace siglayer::kernels::SIGLAYER_ISA {

template <class T>
static void sigmoid(T* y, const T* z, index_t count) {
    SIGLAYER_SIGMOID_KERNELS::sigmoid(y, z, count);
}

template <class T>
static void bias_sigmoid_rows(T* out, index_t ld, const T* b, index_t rows, index_t cols) {
    SIGLAYER_SIGMOID_KERNELS::bias_sigmoid_rows(out, ld, b, rows, cols);
}

template <class T>
static void dz_colsum(T* dZ, index_t ld_dZ, T* db, const T* dout, index_t ld_dout, const T* out,
                      index_t ld_out, index_t rows, index_t cols) {
    kernels_detail::SIGLAYER_ISA::dz_colsum(dZ, ld_dZ, db, dout, ld_dout, out, ld_out, rows, cols);
}

template <class T>
Table<T> table() {
    return Table<T>{&sigmoid<T>, &bias_sigmoid_rows<T>, &dz_colsum<T>};
}

#define SIGLAYER_INSTANTIATE(T) template Table<T> table<T>();
SIGLAYER_FOR_EACH_DTYPE(SIGLAYER_INSTANTIATE)
#undef SIGLAYER_INSTANTIATE

}  // namespace siglayer::kernels::SIGLAYER_ISA
