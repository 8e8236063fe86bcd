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
    auto overlap =
        pybind11::register_exception<siglayer::Overlap>(m, "OverlapError", PyExc_ValueError);
    overlap.attr("__doc__") =
        "A buffer (out=, dx=, dW=, db=, dZ=, ...) that overlaps an input or another buffer.\n\n"
        "A ValueError, raised before anything is written; siglayer.OverlapError tells it\n"
        "apart from the other bad arguments.\n\n"
        ">>> import numpy as np, siglayer\n"
        ">>> x = np.ones((2, 2))\n"
        ">>> try:\n"
        "...     siglayer.forward(x, np.eye(2), np.zeros(2), out=x)\n"
        "... except siglayer.OverlapError as error:\n"
        "...     print(error)\n"
        "out overlaps x; pass a separate buffer\n";
    siglayer::bindings::register_layer(m);
    siglayer::bindings::register_info(m);
    siglayer::bindings::register_optim(m);
    siglayer::bindings::register_losses(m);
    siglayer::bindings::register_blas(m);
    m.attr("__version__") = SIGLAYER_VERSION;
}
