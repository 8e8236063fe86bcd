// NumPy arrays -> the core's views, with every check naming the argument.
// Nothing here copies or casts: an array the core cannot take is an error.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "../siglayer/dtypes.hpp"
#include "../siglayer/views.hpp"

namespace siglayer::bindings {

namespace py = pybind11;

std::string shape_of(const py::array& a);
std::string dtype_of(const py::array& a);

// The argument as an ndarray. TypeError for anything else, and for np.matrix and
// masked arrays (whose semantics the core would silently ignore).
py::array as_array(py::handle h, const char* name);

// True or False (a Python or NumPy bool); TypeError naming the argument for anything
// else, None included.
bool as_bool(py::handle h, const char* name);

// NPY_FLOAT or NPY_DOUBLE for a native-byte-order float32/float64 array;
// TypeError naming the argument otherwise.
int float_type_num(const py::array& a, const char* name);

// TypeError unless every array has the same dtype as the first.
void require_same_dtype(std::initializer_list<std::pair<const char*, const py::array*>> arrays);

// The one place where a dtype picks the template: f(float{}) for float32, f(double{}) for
// float64 (the list of cpp/siglayer/dtypes.hpp), and a TypeError naming the argument
// for any other dtype, so that no dtype ever runs as another.
template <class F>
decltype(auto) dispatch_dtype(int type_num, const char* name, F&& f) {
    switch (type_num) {
        case py::detail::npy_api::NPY_FLOAT_:
            return f(float{});
        case py::detail::npy_api::NPY_DOUBLE_:
            return f(double{});
        default:
            throw py::type_error(std::string(name) + ": no kernel for NumPy type number " +
                                 std::to_string(type_num) + "; siglayer computes in " +
                                 DType<float>::name + " and " + DType<double>::name);
    }
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
