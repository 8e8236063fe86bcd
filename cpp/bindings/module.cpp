// The extension module siglayer._core: assembles the register_* pieces.
#include <pybind11/pybind11.h>

#include "../siglayer/blas.hpp"
#include "../siglayer/checks.hpp"
#include "../siglayer/threads.hpp"
#include "arrays.hpp"

#ifndef SIGLAYER_VERSION
#define SIGLAYER_VERSION "0+unknown"
#endif

PYBIND11_MODULE(_core, m) {
    m.doc() = "siglayer's compiled core; use the siglayer package instead.";
    siglayer::blas::init();
    siglayer::threads::init();
    // The core's argument errors are std::invalid_argument, which pybind11 raises as
    // ValueError; an overlap gets its own subclass, so that callers tell it apart by
    // type, never by message.
    pybind11::register_exception<siglayer::Overlap>(m, "OverlapError", PyExc_ValueError);
    siglayer::bindings::register_layer(m);
    siglayer::bindings::register_info(m);
    siglayer::bindings::register_optim(m);
    siglayer::bindings::register_losses(m);
    siglayer::bindings::register_blas(m);
    m.attr("__version__") = SIGLAYER_VERSION;
}
