// gemm: the bare product through siglayer's BLAS, for the benchmarks' GEMM floor.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>

#include "../siglayer/gemm.hpp"
#include "arrays.hpp"

namespace siglayer::bindings {

namespace {

// A 2-D view BLAS takes as it is: op(data) with leading dimension ld is `trans` of the
// stored matrix. C order keeps the flag, F order flips it; other layouts are refused
// (this is a benchmark primitive: it never copies).
template <class T>
struct Operand {
    const T* data;
    blas::Op op;
    index_t ld;
    index_t rows, cols;  // of op(stored), the logical matrix
};

template <class T>
Operand<T> operand(const py::array& a, const char* name, bool trans) {
    if (a.ndim() != 2)
        throw py::value_error(std::string(name) + " must be 2-D, got shape " + shape_of(a));
    const MatrixView<T> m = matrix_view<T>(a, name);
    const blas::Op want = trans ? blas::Op::T : blas::Op::N;
    const index_t rows = trans ? m.cols : m.rows, cols = trans ? m.rows : m.cols;
    if ((m.col_stride == 1 || m.cols <= 1) && (m.rows <= 1 || m.row_stride >= m.cols))
        return {m.data, want, m.rows <= 1 ? std::max<index_t>(1, m.cols) : m.row_stride, rows,
                cols};
    if ((m.row_stride == 1 || m.rows <= 1) && (m.cols <= 1 || m.col_stride >= m.rows)) {
        const blas::Op flipped = trans ? blas::Op::N : blas::Op::T;
        return {m.data, flipped, m.cols <= 1 ? std::max<index_t>(1, m.rows) : m.col_stride, rows,
                cols};
    }
    throw py::value_error(std::string(name) +
                          " must be C- or F-contiguous in its rows or "
                          "columns (strides " +
                          std::string(py::str(py::tuple(a.attr("strides")))) +
                          "); pass np.ascontiguousarray(" + name + ")");
}

// [first, last) bytes of a 2-D array with non-negative strides.
std::pair<std::uintptr_t, std::uintptr_t> byte_range(const py::array& a) {
    const auto first = reinterpret_cast<std::uintptr_t>(a.data());
    if (a.size() == 0) return {first, first};
    std::uintptr_t last = first + static_cast<std::uintptr_t>(a.itemsize());
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
        last += static_cast<std::uintptr_t>((a.shape(d) - 1) * a.strides(d));
    return {first, last};
}

bool overlap(const py::array& a, const py::array& b) {
    const auto [a0, a1] = byte_range(a);
    const auto [b0, b1] = byte_range(b);
    return a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1;
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
    return dispatch_dtype(type_num, [&](auto zero) {
        using T = decltype(zero);
        const Operand<T> a = operand<T>(A, "A", trans_a), b = operand<T>(B, "B", trans_b);
        if (a.cols != b.rows) {
            throw py::value_error("op(A) has shape " + shape_str(a.rows, a.cols) +
                                  " but op(B) has shape " + shape_str(b.rows, b.cols) +
                                  ": inner dimensions differ");
        }
        const index_t M = a.rows, N = b.cols, K = a.cols;
        for (auto [what, value] :
             {std::pair{"M", M}, std::pair{"N", N}, std::pair{"K", K},
              std::pair{"A's leading dimension", a.ld}, std::pair{"B's leading dimension", b.ld}}) {
            if (value > blas::max_int())
                throw py::value_error(std::string(what) + " = " + std::to_string(value) +
                                      " exceeds the BLAS integer range");
        }
        py::array out =
            out_h.is_none() ? py::array(py::array_t<T>({M, N})) : as_array(out_h, "out");
        T* C = output_buffer<T>(out, "out", {M, N});
        if (overlap(out, A) || overlap(out, B))
            throw py::value_error("out overlaps A or B; pass a separate buffer");
        {
            // Only raw pointers cross this line.
            py::gil_scoped_release release;
            siglayer::gemm<T>(threading, a.op, b.op, M, N, K, a.data, a.ld, b.data, b.ld, C,
                              std::max<index_t>(1, N));
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
