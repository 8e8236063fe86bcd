// The element types the core takes, in one list, and what each computes in.
//
// A storage type is how an array's elements are held; its compute type is what the
// kernels accumulate and evaluate sigma in (the same for float and double; a 2-byte
// storage type would compute in float). An unlisted type has no DType<> and fails to
// compile wherever the core asks for one: nothing runs silently as another type.
#pragma once

namespace siglayer {

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

template <class Storage>
using compute_t = typename DType<Storage>::compute;

// Every supported storage type, for explicit instantiations: X(float) X(double).
// A new dtype is added here, to DType<> above, and to the bindings' dispatch.
#define SIGLAYER_FOR_EACH_DTYPE(X) X(float) X(double)

}  // namespace siglayer
