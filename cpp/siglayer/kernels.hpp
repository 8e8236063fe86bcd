// Run-time dispatch of the elementwise kernels to the best instruction set the CPU has.
#pragma once

#include <string>

#include "views.hpp"

namespace siglayer::kernels {

// One instruction set's compiled copy of the kernels in kernels_impl.hpp.
template <class T>
struct Table {
    void (*sigmoid)(T* y, const T* z, index_t count);
    void (*bias_sigmoid_rows)(T* out, index_t ld, const T* b, index_t rows, index_t cols);
    void (*dz_colsum)(T* dZ, index_t ld_dZ, T* db, const T* dout, index_t ld_dout, const T* out,
                      index_t ld_out, index_t rows, index_t cols);
};

// The table in use (chosen once, at first use, from the CPU's features).
template <class T>
const Table<T>& active();

// "avx512", "avx2" or "baseline".
std::string active_isa();
// Instruction sets this CPU can run, best first.
std::string available_isas();
// Force one (for tests and benchmarks); throws InvalidArgument if the CPU lacks it.
void select_isa(const std::string& name);

}  // namespace siglayer::kernels
