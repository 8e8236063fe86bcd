// NumPy arrays -> the core's views, with every check naming the argument.
// Nothing here copies or casts: an array the core cannot take is an error.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <utility>

#include "../siglayer/dtypes.hpp"
#include "../siglayer/views.hpp"

namespace siglayer::bindings {

namespace py = pybind11;

// py::gil_scoped_release for a thread that may come back after the interpreter began to
// finalize. A daemon thread that asks for the GIL then is ended by pthread_exit (every
// Python before 3.14), whose forced unwind ran through pybind11's noexcept destructor
// (std::terminate: the whole process aborted at exit) and, once let through, through
// pybind11's frames above this one, which drop references to Python objects with no
// interpreter left (Python 3.12 and 3.13 crash in _PyObject_Free: SIGSEGV at exit). So
// the unwind stops here and the thread blocks until the process exits, as Python 3.14
// itself blocks such threads. It holds nothing by then: the GIL was dropped before the
// exit, the core's locks were released when its call returned. catch (...), not
// abi::__forced_unwind: the forced unwind has no C++ object to bind a reference to
// (UBSan flags the binding). Nothing inside the released region may touch Python.
class ReleaseGil {
public:
    ReleaseGil() : state_(PyEval_SaveThread()) {}
    ~ReleaseGil() noexcept(false) {
        try {
            PyEval_RestoreThread(state_);
        } catch (...) {  // only a forced unwind: the C function throws nothing else
            block_until_exit();
        }
    }
    ReleaseGil(const ReleaseGil&) = delete;
    ReleaseGil& operator=(const ReleaseGil&) = delete;

private:
    [[noreturn]] static void block_until_exit();
    PyThreadState* state_;
};

std::string shape_of(const py::array& a);
std::string dtype_of(const py::array& a);

// The argument as an ndarray. TypeError for anything else, and for np.matrix and
// masked arrays (whose semantics the core would silently ignore).
py::array as_array(py::handle h, const char* name);

// True or False (a Python or NumPy bool); TypeError naming the argument for anything
// else, None included.
bool as_bool(py::handle h, const char* name);

// The type number of ml_dtypes.bfloat16 (a dtype NumPy registers at run time), or -1
// while ml_dtypes is not imported: a bfloat16 array cannot exist before it is, so
// siglayer never imports it itself.
int bfloat16_type_num();

// The NumPy dtype of storage type T (float32, float64, ml_dtypes.bfloat16).
template <class T>
py::dtype numpy_dtype();

// Whether a dtype's bytes are in this machine's order ('=', '|' or the native letter).
bool native_byte_order(const py::dtype& dt);

// Whether a holds storage type T in native byte order (T's type number alone would take a
// big-endian float32 and read its bytes as native ones).
template <class T>
bool holds(const py::array& a) {
    return a.dtype().num() == numpy_dtype<T>().num() && native_byte_order(a.dtype());
}

// The type number of a native-byte-order float32, float64 or bfloat16 array;
// TypeError naming the argument otherwise (float16 included: it is not bfloat16).
int float_type_num(const py::array& a, const char* name);

// ValueError naming the argument unless a's data is aligned to its item size (NumPy's
// ALIGNED flag, which an array of no elements has at any address: nothing reads it). For
// matrix_view, output_buffer and the bindings that read an array's data() directly. hint
// ends the message (default: pass NAME.copy(), which is aligned).
void require_aligned(const py::array& a, const char* name, const char* hint = nullptr);

// TypeError unless every array has the same dtype as the first.
void require_same_dtype(std::initializer_list<std::pair<const char*, const py::array*>> arrays);

// The one place where a dtype picks the template: f(float{}) for float32, f(double{}) for
// float64, f(bfloat16{}) for ml_dtypes.bfloat16 (the list of cpp/siglayer/dtypes.hpp),
// and a TypeError naming the argument for any other dtype, so that no dtype ever runs
// as another. Storage types only (the layer, the GEMM floor, sigma) take bfloat16;
// dispatch_compute_dtype is for what updates or evaluates in the compute type itself
// (optimizers, losses) and refuses bfloat16 with a TypeError saying what to pass instead.
template <class F>
decltype(auto) dispatch_compute_dtype(int type_num, const char* name, F&& f) {
    if (type_num == py::detail::npy_api::NPY_FLOAT_) return f(float{});
    if (type_num == py::detail::npy_api::NPY_DOUBLE_) return f(double{});
    if (type_num >= 0 && type_num == bfloat16_type_num())
        throw py::type_error(std::string(name) +
                             " is bfloat16, which siglayer keeps for the layer's storage only: "
                             "optimizers update float32 master weights and losses compute in "
                             "float32 (pass " +
                             name + ".astype(np.float32); docs/bfloat16.md)");
    throw py::type_error(std::string(name) + ": no kernel for NumPy type number " +
                         std::to_string(type_num) + "; siglayer computes in " + DType<float>::name +
                         " and " + DType<double>::name);
}

template <class F>
decltype(auto) dispatch_dtype(int type_num, const char* name, F&& f) {
    if (type_num == py::detail::npy_api::NPY_FLOAT_ || type_num == py::detail::npy_api::NPY_DOUBLE_)
        return dispatch_compute_dtype(type_num, name, std::forward<F>(f));
    if (type_num >= 0 && type_num == bfloat16_type_num()) return f(bfloat16{});
    throw py::type_error(std::string(name) + ": no kernel for NumPy type number " +
                         std::to_string(type_num) + "; siglayer computes in " + DType<float>::name +
                         ", " + DType<double>::name + " and " + DType<bfloat16>::name);
}

// Element strides of a 2-D (or 1-D) array; ValueError if a stride is not a whole
// number of elements or the data is misaligned.
template <class T>
MatrixView<T> matrix_view(const py::array& a, const char* name);

template <class T>
VectorView<T> vector_view(const py::array& a, const char* name);

// A caller-supplied output buffer: ndarray, dtype T, C-contiguous, writeable, and of
// the expected shape; ValueError/TypeError naming the argument otherwise.
template <class T>
T* output_buffer(const py::array& a, const char* name, const std::vector<py::ssize_t>& shape);

void register_layer(py::module_& m);
void register_info(py::module_& m);
void register_optim(py::module_& m);
void register_losses(py::module_& m);
void register_blas(py::module_& m);

}  // namespace siglayer::bindings
