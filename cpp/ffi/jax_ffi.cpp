// siglayer's forward and backward as XLA FFI handlers, the custom calls siglayer.jax
// makes inside jax.jit. Compiled into siglayer._core when CMake finds the FFI headers that
// jaxlib ships (option SIGLAYER_JAX_FFI), so that JAX runs the same core, with the same
// instruction-set choice, thread pool and fork hooks, as siglayer.forward. Headers only:
// the FFI's C API arrives with every call frame, nothing links against jaxlib.
//
// XLA hands over its own buffers, row-major (ffi_call's default layout), and the handlers
// pass their pointers to the core: no copy. The core checks shapes, sizes and overlaps and
// names the argument; its InvalidArgument becomes the call's INVALID_ARGUMENT error.
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "siglayer/checks.hpp"
#include "siglayer/layer.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace siglayer {
namespace {

std::string dtype_name(ffi::DataType type) {
    switch (type) {
        case ffi::F32:
            return "float32";
        case ffi::F64:
            return "float64";
        case ffi::BF16:
            return "bfloat16";
        case ffi::F16:
            return "float16";
        default:
            return "XLA type " + std::to_string(static_cast<int>(type));
    }
}

// The XLA type of each storage and compute type of dtypes.hpp.
template <class T>
constexpr ffi::DataType data_type();
template <>
constexpr ffi::DataType data_type<float>() {
    return ffi::F32;
}
template <>
constexpr ffi::DataType data_type<double>() {
    return ffi::F64;
}
template <>
constexpr ffi::DataType data_type<bfloat16>() {
    return ffi::BF16;
}

// A buffer of rank >= 1 as a matrix whose rows are all its leading axes: x (..., n_in) is
// (n, n_in), out (..., n_out) is (n, n_out). C-contiguous, as XLA lays it out.
struct Shape2 {
    index_t rows, cols;
};

Shape2 as_rows(const char* name, const ffi::AnyBuffer::Dimensions& dims, std::size_t rank) {
    if (rank == 0 ? dims.size() == 0 : dims.size() != rank) {
        throw InvalidArgument(std::string(name) + " has " + std::to_string(dims.size()) +
                              " dimensions, expected " +
                              (rank == 0 ? std::string("at least 1") : std::to_string(rank)));
    }
    index_t rows = 1;
    for (std::size_t k = 0; k + 1 < dims.size(); ++k) rows *= dims[k];
    return {rows, dims.back()};
}

template <class T>
MatrixView<T> matrix(const char* name, const ffi::AnyBuffer& buffer, std::size_t rank = 0) {
    const Shape2 s = as_rows(name, buffer.dimensions(), rank);
    return {static_cast<const T*>(buffer.untyped_data()), s.rows, s.cols, s.cols, 1};
}

template <class T>
OutMatrix<T> out_matrix(const char* name, ffi::AnyBuffer buffer, std::size_t rank = 0) {
    const Shape2 s = as_rows(name, buffer.dimensions(), rank);
    return {static_cast<T*>(buffer.untyped_data()), s.rows, s.cols};
}

// What a buffer holds, given the call's storage type T (the first buffer's dtype):
// arrays and dx are T; dW and db are its compute type (float32 for bfloat16, as the core
// computes them); b is either (a bfloat16 layer may keep a float32 master bias).
enum class Role { storage, compute, storage_or_compute };

struct Buffer {
    const char* name;
    ffi::DataType type;
    Role role;
};

template <class T>
void require_dtypes(std::initializer_list<Buffer> buffers) {
    const Buffer& first = *buffers.begin();
    constexpr ffi::DataType storage = data_type<T>(), compute = data_type<compute_t<T>>();
    for (const Buffer& b : buffers) {
        const bool is_storage = b.type == storage, is_compute = b.type == compute;
        if (b.role == Role::storage   ? is_storage
            : b.role == Role::compute ? is_compute
                                      : is_storage || is_compute)
            continue;
        std::string expected = dtype_name(b.role == Role::compute ? compute : storage);
        if (b.role == Role::storage_or_compute && compute != storage)
            expected += " or " + dtype_name(compute);
        throw InvalidArgument(std::string(b.name) + " has dtype " + dtype_name(b.type) +
                              ", expected " + expected + " since " + first.name + " has " +
                              dtype_name(storage) + " (nothing is converted)");
    }
}

// The one dtype dispatch point: the first buffer's dtype picks the instantiation, and
// every other buffer must have the dtype its role asks for. Other dtypes are refused by
// name, never run as another.
template <class Body>
ffi::Error dispatch(std::initializer_list<Buffer> buffers, Body&& body) {
    try {
        const Buffer& first = *buffers.begin();
        switch (first.type) {
            case ffi::F32:
                require_dtypes<float>(buffers);
                body(float{});
                break;
            case ffi::F64:
                require_dtypes<double>(buffers);
                body(double{});
                break;
            case ffi::BF16:
                require_dtypes<bfloat16>(buffers);
                body(bfloat16{});
                break;
            default:
                throw InvalidArgument(std::string(first.name) + " has dtype " +
                                      dtype_name(first.type) +
                                      "; siglayer computes in float32 or float64, or stores "
                                      "bfloat16 (float16 is not bfloat16)");
        }
    } catch (const std::invalid_argument& error) {
        return ffi::Error::InvalidArgument(error.what());
    } catch (const std::bad_alloc& error) {  // ScratchAllocError says how much
        return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                          std::string("siglayer: out of memory: ") + error.what());
    } catch (const std::exception& error) {
        return ffi::Error::Internal(error.what());
    }
    return ffi::Error::Success();
}

// b (n_out,) in the compute type C (require_dtypes has run): a view of b, or a
// bfloat16 b widened (exactly) into `widened`.
template <class T, class C = compute_t<T>>
VectorView<C> compute_bias(const ffi::AnyBuffer& b, std::vector<C>& widened) {
    if constexpr (!std::is_same_v<T, C>) {
        if (b.element_type() == data_type<T>()) {
            const MatrixView<T> bm = matrix<T>("b", b, 1);
            widened.resize(static_cast<std::size_t>(bm.cols));
            for (index_t j = 0; j < bm.cols; ++j) widened[j] = to_compute(bm.data[j]);
            return {widened.data(), bm.cols, 1};
        }
    }
    const MatrixView<C> bm = matrix<C>("b", b, 1);
    return {bm.data, bm.cols, 1};
}

// x (..., n_in), W (n_in, n_out), b (n_out,) -> out (..., n_out).
// b is x's dtype, or float32 with bfloat16 x.
ffi::Error forward_handler(ffi::AnyBuffer x, ffi::AnyBuffer W, ffi::AnyBuffer b,
                           ffi::Result<ffi::AnyBuffer> out) {
    return dispatch({{"x", x.element_type(), Role::storage},
                     {"W", W.element_type(), Role::storage},
                     {"b", b.element_type(), Role::storage_or_compute},
                     {"out", out->element_type(), Role::storage}},
                    [&](auto zero) {
                        using T = decltype(zero);
                        std::vector<compute_t<T>> widened_b;
                        forward<T>(out_matrix<T>("out", *out), matrix<T>("x", x),
                                   matrix<T>("W", W, 2), compute_bias<T>(b, widened_b));
                    });
}

// dout, out (..., n_out), x (..., n_in), W (n_in, n_out) -> dx (..., n_in),
// dW (n_in, n_out), db (n_out,). dW and db are in the compute type (float32 for a
// bfloat16 layer: siglayer.jax rounds them to the primals' dtypes, as JAX requires).
// need_dx / need_dW false (an input JAX does not differentiate): that result is an
// empty buffer, shape (0,), and its product is skipped.
ffi::Error backward_handler(ffi::AnyBuffer dout, ffi::AnyBuffer x, ffi::AnyBuffer W,
                            ffi::AnyBuffer out, ffi::Result<ffi::AnyBuffer> dx,
                            ffi::Result<ffi::AnyBuffer> dW, ffi::Result<ffi::AnyBuffer> db,
                            bool need_dx, bool need_dW) {
    return dispatch({{"dout", dout.element_type(), Role::storage},
                     {"x", x.element_type(), Role::storage},
                     {"W", W.element_type(), Role::storage},
                     {"out", out.element_type(), Role::storage},
                     {"dx", dx->element_type(), Role::storage},
                     {"dW", dW->element_type(), Role::compute},
                     {"db", db->element_type(), Role::compute}},
                    [&](auto zero) {
                        using T = decltype(zero);
                        using C = compute_t<T>;
                        const OutMatrix<C> dbm = out_matrix<C>("db", *db, 1);
                        const MatrixView<T> Wm = matrix<T>("W", W, 2);
                        // The core takes db as a bare pointer: its length is checked here.
                        SIGLAYER_REQUIRE(dbm.cols == Wm.cols, "db has " + std::to_string(dbm.cols) +
                                                                  " entries but W has shape " +
                                                                  shape_str(Wm.rows, Wm.cols));
                        backward<T>(need_dx ? out_matrix<T>("dx", *dx) : OutMatrix<T>{},
                                    need_dW ? out_matrix<C>("dW", *dW, 2) : OutMatrix<C>{},
                                    dbm.data, matrix<T>("dout", dout), matrix<T>("x", x), Wm,
                                    matrix<T>("out", out));
                    });
}

}  // namespace
}  // namespace siglayer

// The two entry points siglayer.jax finds in this shared object (ctypes) and registers
// with jax.ffi.register_ffi_target. Exported although the module hides its symbols.
#pragma GCC visibility push(default)
XLA_FFI_DEFINE_HANDLER_SYMBOL(siglayer_jax_forward, siglayer::forward_handler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()    // x
                                  .Arg<ffi::AnyBuffer>()    // W
                                  .Arg<ffi::AnyBuffer>()    // b
                                  .Ret<ffi::AnyBuffer>());  // out

XLA_FFI_DEFINE_HANDLER_SYMBOL(siglayer_jax_backward, siglayer::backward_handler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // dout
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // W
                                  .Arg<ffi::AnyBuffer>()  // out
                                  .Ret<ffi::AnyBuffer>()  // dx
                                  .Ret<ffi::AnyBuffer>()  // dW
                                  .Ret<ffi::AnyBuffer>()  // db
                                  .Attr<bool>("need_dx")
                                  .Attr<bool>("need_dW"));
#pragma GCC visibility pop
