// bce_sigmoid and mse: a loss value and its gradient in one pass, GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include "../siglayer/losses.hpp"
#include "arrays.hpp"

namespace siglayer::bindings {

namespace {

// out and y: C-contiguous arrays of one float dtype and one shape; grad: a writeable
// C-contiguous buffer of that shape and dtype (the core checks the divisor and that grad
// overlaps neither). Returns the sum the core computes (the caller divides for the mean).
template <class Core>
double run(py::handle out_h, py::handle y_h, py::handle grad_h, double divisor,
           const char* grad_name, const Core& core) {
    const py::array out = as_array(out_h, "out"), y = as_array(y_h, "y");
    const int type_num = float_type_num(out, "out");
    float_type_num(y, "y");
    require_same_dtype({{"out", &out}, {"y", &y}});
    if (shape_of(out) != shape_of(y))
        throw py::value_error("y has shape " + shape_of(y) + " but out has shape " + shape_of(out));
    for (const auto& [name, a] : {std::pair{"out", &out}, std::pair{"y", &y}}) {
        if (!(a->flags() & py::array::c_style))
            throw py::value_error(std::string(name) + " must be C-contiguous");
        require_aligned(*a, name);  // read through data() below
    }
    const py::array grad = as_array(grad_h, grad_name);
    const std::vector<py::ssize_t> shape(out.shape(), out.shape() + out.ndim());
    return dispatch_compute_dtype(type_num, "out", [&](auto zero) {
        using T = decltype(zero);
        T* g = output_buffer<T>(grad, grad_name, shape);
        const T* o = static_cast<const T*>(out.data());
        const T* t = static_cast<const T*>(y.data());
        const index_t count = out.size();
        ReleaseGil release;
        return core(g, o, t, count, divisor);
    });
}

}  // namespace

void register_losses(py::module_& m) {
    m.def(
        "bce_sigmoid",
        [](py::handle out, py::handle y, py::handle dZ, double divisor) {
            return run(out, y, dZ, divisor, "dZ",
                       [](auto* g, auto* o, auto* t, index_t n, double d) {
                           return losses::bce_sigmoid(g, o, t, n, d);
                       });
        },
        py::arg("out"), py::arg("y"), py::arg("dZ"), py::arg("divisor"),
        "Writes dZ = (out - y) / divisor and returns the summed binary cross-entropy (logs "
        "clamped at -100); see siglayer.losses.");
    m.def(
        "mse",
        [](py::handle out, py::handle y, py::handle dout, double divisor) {
            return run(out, y, dout, divisor, "dout",
                       [](auto* g, auto* o, auto* t, index_t n, double d) {
                           return losses::mse(g, o, t, n, d);
                       });
        },
        py::arg("out"), py::arg("y"), py::arg("dout"), py::arg("divisor"),
        "Writes dout = 2 (out - y) / divisor and returns the summed squared error; see "
        "siglayer.losses.");
}

}  // namespace siglayer::bindings
