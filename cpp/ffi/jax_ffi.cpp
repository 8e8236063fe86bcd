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

#include "siglayer/layer.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace siglayer {
namespace {

std::string dtype_name(ffi::DataType type) {
    switch (type) {
        case ffi::F32: return "float32";
        case ffi::F64: return "float64";
        default: return "XLA type " + std::to_string(static_cast<int>(type));
    }
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

// The one dtype dispatch point: every buffer must have the first one's dtype, which picks
// the instantiation. Other dtypes are refused by name, never run as another.
template <class Body>
ffi::Error dispatch(std::initializer_list<std::pair<const char*, ffi::DataType>> buffers,
                    Body&& body) {
    try {
        const auto& [first_name, type] = *buffers.begin();
        for (const auto& [name, other] : buffers) {
            if (other != type) {
                throw InvalidArgument(std::string(name) + " has dtype " + dtype_name(other) +
                                      ", but " + first_name + " has " + dtype_name(type) +
                                      "; all arrays of one call share one dtype");
            }
        }
        switch (type) {
            case ffi::F32: body(float{}); break;
            case ffi::F64: body(double{}); break;
            default:
                throw InvalidArgument(std::string(first_name) + " has dtype " + dtype_name(type) +
                                      "; siglayer computes in float32 or float64");
        }
    } catch (const std::invalid_argument& error) {
        return ffi::Error::InvalidArgument(error.what());
    } catch (const std::bad_alloc&) {
        return ffi::Error(ffi::ErrorCode::kResourceExhausted, "siglayer: out of memory");
    } catch (const std::exception& error) {
        return ffi::Error::Internal(error.what());
    }
    return ffi::Error::Success();
}

// x (..., n_in), W (n_in, n_out), b (n_out,) -> out (..., n_out).
ffi::Error forward_handler(ffi::AnyBuffer x, ffi::AnyBuffer W, ffi::AnyBuffer b,
                           ffi::Result<ffi::AnyBuffer> out) {
    return dispatch({{"x", x.element_type()},
                     {"W", W.element_type()},
                     {"b", b.element_type()},
                     {"out", out->element_type()}},
                    [&](auto zero) {
                        using T = decltype(zero);
                        const MatrixView<T> bm = matrix<T>("b", b, 1);
                        forward<T>(out_matrix<T>("out", *out), matrix<T>("x", x),
                                   matrix<T>("W", W, 2), VectorView<T>{bm.data, bm.cols, 1});
                    });
}

// dout, out (..., n_out), x (..., n_in), W (n_in, n_out) -> dx (..., n_in),
// dW (n_in, n_out), db (n_out,).
ffi::Error backward_handler(ffi::AnyBuffer dout, ffi::AnyBuffer x, ffi::AnyBuffer W,
                            ffi::AnyBuffer out, ffi::Result<ffi::AnyBuffer> dx,
                            ffi::Result<ffi::AnyBuffer> dW, ffi::Result<ffi::AnyBuffer> db) {
    return dispatch({{"dout", dout.element_type()},
                     {"x", x.element_type()},
                     {"W", W.element_type()},
                     {"out", out.element_type()},
                     {"dx", dx->element_type()},
                     {"dW", dW->element_type()},
                     {"db", db->element_type()}},
                    [&](auto zero) {
                        using T = decltype(zero);
                        const OutMatrix<T> dbm = out_matrix<T>("db", *db, 1);
                        backward<T>(out_matrix<T>("dx", *dx), out_matrix<T>("dW", *dW, 2),
                                    dbm.data, matrix<T>("dout", dout), matrix<T>("x", x),
                                    matrix<T>("W", W, 2), matrix<T>("out", out));
                    });
}

}  // namespace
}  // namespace siglayer

// The two entry points siglayer.jax finds in this shared object (ctypes) and registers
// with jax.ffi.register_ffi_target. Exported although the module hides its symbols.
#pragma GCC visibility push(default)
XLA_FFI_DEFINE_HANDLER_SYMBOL(siglayer_jax_forward, siglayer::forward_handler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()   // x
                                  .Arg<ffi::AnyBuffer>()   // W
                                  .Arg<ffi::AnyBuffer>()   // b
                                  .Ret<ffi::AnyBuffer>()); // out

XLA_FFI_DEFINE_HANDLER_SYMBOL(siglayer_jax_backward, siglayer::backward_handler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()   // dout
                                  .Arg<ffi::AnyBuffer>()   // x
                                  .Arg<ffi::AnyBuffer>()   // W
                                  .Arg<ffi::AnyBuffer>()   // out
                                  .Ret<ffi::AnyBuffer>()   // dx
                                  .Ret<ffi::AnyBuffer>()   // dW
                                  .Ret<ffi::AnyBuffer>()); // db
#pragma GCC visibility pop
