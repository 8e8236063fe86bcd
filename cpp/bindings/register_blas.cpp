// gemm: the bare product through siglayer's BLAS, for the benchmarks' GEMM floor.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>

#include "../siglayer/checks.hpp"
#include "../siglayer/gemm.hpp"
#include "../siglayer/operands.hpp"
#include "arrays.hpp"

namespace siglayer::bindings {

namespace {

// A 2-D array as BLAS takes it without a copy (the core's unpacked_operand): op(data)
// with leading dimension ld is `trans` of the stored matrix; rows and cols are those of
// op(stored). Other layouts are refused: this is a benchmark primitive, it never copies.
template <class T>
struct Operand {
    BlasOperand<T> blas;
    index_t rows, cols;
};

template <class T>
Operand<T> operand(const py::array& a, const char* name, bool trans) {
    if (a.ndim() != 2)
        throw py::value_error(std::string(name) + " must be 2-D, got shape " + shape_of(a));
    const MatrixView<T> m = matrix_view<T>(a, name);
    BlasOperand<T> o{};
    if (!unpacked_operand(m, o)) {
        throw py::value_error(std::string(name) +
                              " must be C- or F-contiguous in its rows or columns (strides " +
                              std::string(py::str(py::tuple(a.attr("strides")))) +
                              "); pass np.ascontiguousarray(" + name + ")");
    }
    if (trans) o.op = flip(o.op);
    return {o, trans ? m.cols : m.rows, trans ? m.rows : m.cols};
}

GemmThreading parse_threading(const std::string& name) {
    if (name == "slabs") return GemmThreading::slabs;
    if (name == "blas") return GemmThreading::blas;
    throw py::value_error("threading must be 'slabs' or 'blas', got '" + name + "'");
}

// op(A) is (M, K), op(B) is (K, N); returns C = op(A) . op(B), (M, N), in out when given.
py::array gemm(py::handle A_h, py::handle B_h, bool trans_a, bool trans_b, py::handle out_h,
               const std::string& threading_name) {
    const GemmThreading threading = parse_threading(threading_name);
    const py::array A = as_array(A_h, "A"), B = as_array(B_h, "B");
    const int type_num = float_type_num(A, "A");
    float_type_num(B, "B");
    require_same_dtype({{"A", &A}, {"B", &B}});
    return dispatch_dtype(type_num, "A", [&](auto zero) {
        using T = decltype(zero);
        const Operand<T> a = operand<T>(A, "A", trans_a), b = operand<T>(B, "B", trans_b);
        if (a.cols != b.rows) {
            throw py::value_error("op(A) has shape " + shape_str(a.rows, a.cols) +
                                  " but op(B) has shape " + shape_str(b.rows, b.cols) +
                                  ": inner dimensions differ");
        }
        const index_t M = a.rows, N = b.cols, K = a.cols;
        for (auto [what, value] : {std::pair{"M", M}, std::pair{"N", N}, std::pair{"K", K}})
            require_blas_size(what, value);
        // The result is in the compute type: float32 for bfloat16 A and B.
        using Acc = compute_t<T>;
        py::array out = out_h.is_none()
                            ? py::array(numpy_dtype<Acc>(), std::vector<py::ssize_t>{M, N})
                            : as_array(out_h, "out");
        Acc* C = output_buffer<Acc>(out, "out", {M, N});
        require_disjoint(
            {{"out", extent(OutMatrix<Acc>{C, M, N})}},
            {{"A", extent(matrix_view<T>(A, "A"))}, {"B", extent(matrix_view<T>(B, "B"))}});
        {
            // Only raw pointers cross this line.
            ReleaseGil release;
            siglayer::gemm<T>(threading, a.blas.op, b.blas.op, M, N, K, a.blas.data, a.blas.ld,
                              b.blas.data, b.blas.ld, C, std::max<index_t>(1, N));
        }
        return out;
    });
}

}  // namespace

void register_blas(py::module_& m) {
    m.def("gemm", &gemm, py::arg("A"), py::arg("B"), py::arg("trans_a") = false,
          py::arg("trans_b") = false, py::arg("out") = py::none(), py::arg("threading") = "slabs",
          "C = op(A) @ op(B) through siglayer's BLAS (op transposes when trans_a/trans_b).\n\n"
          "threading='slabs' shares the product between the OpenMP threads exactly as the\n"
          "layer shares its products; 'blas' makes one call on the BLAS's own threads.\n"
          "A and B must be C- or F-ordered; out must be C-contiguous (M, N). The\n"
          "benchmarks' GEMM floor; not part of the public API.");
}

}  // namespace siglayer::bindings
