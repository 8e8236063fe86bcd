// The element types the core takes, in one list, and what each computes in.
//
// A storage type is how an array's elements are held; its compute type is what the
// kernels accumulate and evaluate sigma in: the same for float and double, float for
// bfloat16. An unlisted type has no DType<> and fails to compile wherever the core asks
// for one: nothing runs silently as another type.
#pragma once

#include <cstdint>

namespace siglayer {

// bfloat16 storage: the upper 16 bits of an IEEE float32 (8 exponent bits, 7 mantissa
// bits), the layout of ml_dtypes.bfloat16, torch.bfloat16 and JAX's bfloat16.
struct bfloat16 {
    std::uint16_t bits;
};

template <class Storage>
struct DType;  // deliberately undefined: only the specializations below exist

template <>
struct DType<float> {
    using compute = float;
    static constexpr const char* name = "float32";
};

template <>
struct DType<double> {
    using compute = double;
    static constexpr const char* name = "float64";
};

template <>
struct DType<bfloat16> {
    using compute = float;
    static constexpr const char* name = "bfloat16";
};

template <class Storage>
using compute_t = typename DType<Storage>::compute;

// Exact: every bfloat16 is a float.
inline float to_float(bfloat16 v) {
    return __builtin_bit_cast(float, static_cast<std::uint32_t>(v.bits) << 16);
}

// The rounding float -> bfloat16 lives with the kernels (kernels_impl.hpp,
// float_to_bf16_bits; layer.hpp's to_bfloat16 for arrays): one rounding, vectorized.

// A stored value in its compute type (exact).
inline float to_compute(bfloat16 v) {
    return to_float(v);
}
inline float to_compute(float v) {
    return v;
}
inline double to_compute(double v) {
    return v;
}

// Every storage type, for the layer's explicit instantiations: X(float) X(double)
// X(bfloat16). A new dtype is added here, to DType<> above, and to the bindings' dispatch.
#define SIGLAYER_FOR_EACH_DTYPE(X) X(float) X(double) X(bfloat16)

// The types that are their own compute type: what the optimizers and losses update and
// evaluate (a bfloat16 model keeps float32 master weights: docs/bfloat16.md).
#define SIGLAYER_FOR_EACH_COMPUTE_DTYPE(X) X(float) X(double)

}  // namespace siglayer
