// forward, backward, backward_from_preactivation and sigmoid: arrays in, GIL released,
// core computes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <type_traits>
#include <vector>

#include "../siglayer/checks.hpp"
#include "../siglayer/layer.hpp"
#include "arrays.hpp"

namespace siglayer::bindings {

namespace {

void require_ndim(const py::array& a, const char* name, py::ssize_t ndim, const char* meaning) {
    if (a.ndim() != ndim) {
        throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D " +
                              meaning + ", got shape " + shape_of(a));
    }
}

// b may be (n_out,) or (1, n_out).
void require_bias_shape(const py::array& b) {
    if (b.ndim() == 1 || (b.ndim() == 2 && b.shape(0) == 1)) return;
    throw py::value_error("b must have shape (n_out,) or (1, n_out), got shape " + shape_of(b));
}

template <class T>
VectorView<T> bias_view(const py::array& b) {
    if (b.ndim() == 1) return vector_view<T>(b, "b");
    const MatrixView<T> m = matrix_view<T>(b, "b");
    return {m.data, m.cols, m.col_stride};
}

// The dtype rule of forward: x, W and b share one dtype, except that with bfloat16 x
// and W, b may also be float32 (a float32 master bias: bias and sigma are computed in
// float32 anyway, so nothing is rounded that need not be).
void require_forward_dtypes(int type_num, const py::array& x, const py::array& W,
                            const py::array& b) {
    const bool bf16 = type_num != py::detail::npy_api::NPY_FLOAT_ &&
                      type_num != py::detail::npy_api::NPY_DOUBLE_ &&
                      type_num == bfloat16_type_num();
    if (!bf16 || b.dtype().num() != py::detail::npy_api::NPY_FLOAT_) {
        if (bf16 && W.dtype().num() == type_num && b.dtype().num() != type_num)
            throw py::type_error("b has dtype " + dtype_of(b) +
                                 "; beside bfloat16 x and W, b is bfloat16 or float32");
        require_same_dtype({{"x", &x}, {"W", &W}, {"b", &b}});
        return;
    }
    if (W.dtype().num() != type_num) {
        throw py::type_error(
            "x and W must share one dtype (b may be float32 beside bfloat16 "
            "x and W); got x " +
            dtype_of(x) + ", W " + dtype_of(W) + ", b " + dtype_of(b));
    }
}

// b in the compute type C (require_forward_dtypes has run): a bfloat16 b is widened
// (exactly) into `widened`.
template <class T, class C = compute_t<T>>
VectorView<C> compute_bias(const py::array& b, std::vector<C>& widened) {
    if constexpr (std::is_same_v<T, C>) {
        return bias_view<T>(b);
    } else {
        if (b.dtype().num() == numpy_dtype<C>().num()) return bias_view<C>(b);
        const VectorView<T> bv = bias_view<T>(b);
        widened.resize(static_cast<std::size_t>(bv.size));
        for (index_t j = 0; j < bv.size; ++j) widened[j] = to_compute(bv.data[j * bv.stride]);
        return {widened.data(), bv.size, 1};
    }
}

template <class T>
py::array make_or_check(py::handle given, const char* name, std::vector<py::ssize_t> shape,
                        T*& data) {
    py::array a = given.is_none() ? py::array(numpy_dtype<T>(), shape) : as_array(given, name);
    data = output_buffer<T>(a, name, shape);
    return a;
}

// make_or_check for dW or db (G: the dtype they are returned in) of a call on storage type
// T. In a bfloat16 call their dtype follows grad_dtype, so a buffer of the other one's
// dtype gets the TypeError with the grad_dtype it would fit (a review, helper-88: "dW has
// dtype bfloat16, expected float32" gave no hint).
template <class T, class G>
py::array gradient_or_check(py::handle given, const char* name, std::vector<py::ssize_t> shape,
                            G*& data) {
    try {
        return make_or_check<G>(given, name, std::move(shape), data);
    } catch (const py::type_error& e) {
        if constexpr (!std::is_same_v<T, compute_t<T>>) {
            if (py::isinstance<py::array>(given)) {
                const auto a = py::reinterpret_borrow<py::array>(given);
                const bool rounded = std::is_same_v<G, T>;
                if (rounded ? holds<compute_t<T>>(a) : holds<T>(a))
                    throw py::type_error(
                        std::string(e.what()) +
                        (rounded ? ": grad_dtype='bfloat16' rounds dW and db into bfloat16 "
                                   "buffers; drop it for float32 ones"
                                 : ": a bfloat16 call returns dW and db in float32; pass "
                                   "grad_dtype='bfloat16' for bfloat16 ones"));
            }
        }
        throw;
    }
}

// x is (n, n_in), W is (n_in, n_out), b is (n_out,) or (1, n_out); returns out (n, n_out).
py::array forward(py::handle x_h, py::handle W_h, py::handle b_h, py::handle out_h) {
    const py::array x = as_array(x_h, "x"), W = as_array(W_h, "W"), b = as_array(b_h, "b");
    const int type_num = float_type_num(x, "x");
    float_type_num(W, "W");
    float_type_num(b, "b");
    require_forward_dtypes(type_num, x, W, b);
    require_ndim(x, "x", 2, "(n, n_in)");
    require_ndim(W, "W", 2, "(n_in, n_out)");
    require_bias_shape(b);
    return dispatch_dtype(type_num, "x", [&](auto zero) {
        using T = decltype(zero);
        const MatrixView<T> xv = matrix_view<T>(x, "x"), Wv = matrix_view<T>(W, "W");
        std::vector<compute_t<T>> widened_b;
        const VectorView<compute_t<T>> bv = compute_bias<T>(b, widened_b);
        check_forward(xv, Wv, bv);
        T* out_data = nullptr;
        py::array out = make_or_check<T>(out_h, "out", {x.shape(0), W.shape(1)}, out_data);
        // The core sees a widened b's copy: out against the caller's b is checked here.
        if (!widened_b.empty())
            require_disjoint({{"out", extent(OutMatrix<T>{out_data, xv.rows, Wv.cols})}},
                             {{"b", extent(bias_view<T>(b))}});
        {
            // Only raw pointers cross this line: no Python object is touched without the GIL.
            ReleaseGil release;
            siglayer::forward<T>({out_data, xv.rows, Wv.cols}, xv, Wv, bv);
        }
        return out;
    });
}

// dx (or None), dW (or None) and db of a backward call: the caller's buffers, checked, or
// new arrays. dx is (n, n_in) in the storage type T, dW (n_in, n_out) and db (n_out,) in the
// compute type C (float32 for bfloat16), or, with round_grads (bfloat16 calls only), in
// T: the core then writes float32 scratch, rounded once into them by finish(). Every
// buffer is checked before the core runs, so a failed call writes nothing.
template <class T, class C = compute_t<T>>
struct GradientBuffers {
    // py::object, not py::array: a default-constructed py::array allocates an empty array.
    py::object dx = py::none(), dW = py::none(), db;
    T* dx_data = nullptr;
    C *dW_data = nullptr, *db_data = nullptr;
    T *dW_rounded = nullptr, *db_rounded = nullptr;  // round_grads: the returned arrays
    std::unique_ptr<C[]> scratch;                    // round_grads: float32 dW, then db
    py::ssize_t n, n_in, n_out;

    GradientBuffers(bool need_dx, bool need_dW, py::handle dx_h, py::handle dW_h, py::handle db_h,
                    py::ssize_t n_, py::ssize_t n_in_, py::ssize_t n_out_, bool round_grads,
                    std::initializer_list<Named> inputs)
        : n(n_), n_in(n_in_), n_out(n_out_) {
        if (!need_dx && !dx_h.is_none())
            throw py::value_error("dx was given but need_dx=False; drop one of them");
        if (!need_dW && !dW_h.is_none())
            throw py::value_error("dW was given but need_dW=False; drop one of them");
        if (need_dx) dx = make_or_check<T>(dx_h, "dx", {n, n_in}, dx_data);
        if constexpr (!std::is_same_v<T, C>) {
            if (round_grads) {
                if (need_dW) dW = gradient_or_check<T>(dW_h, "dW", {n_in, n_out}, dW_rounded);
                db = gradient_or_check<T>(db_h, "db", {n_out}, db_rounded);
                // The core sees the scratch, not these: their overlaps are checked here.
                require_disjoint({{"dx", need_dx ? extent(dx_out()) : Extent{}},
                                  {"dW", need_dW ? extent(dW_rounded, n_in * n_out) : Extent{}},
                                  {"db", extent(db_rounded, n_out)}},
                                 inputs);
                const py::ssize_t dW_size = need_dW ? n_in * n_out : 0;
                scratch.reset(new C[static_cast<std::size_t>(dW_size + n_out)]);
                if (need_dW) dW_data = scratch.get();
                db_data = scratch.get() + dW_size;
                return;
            }
        }
        if (round_grads)
            throw py::type_error(std::string("grad_dtype='bfloat16' rounds the gradients of "
                                             "bfloat16 inputs; these are ") +
                                 DType<T>::name);
        if (need_dW) dW = gradient_or_check<T>(dW_h, "dW", {n_in, n_out}, dW_data);
        db = gradient_or_check<T>(db_h, "db", {n_out}, db_data);
    }
    OutMatrix<T> dx_out() const { return {dx_data, n, n_in}; }
    OutMatrix<C> dW_out() const { return {dW_data, n_in, n_out}; }
    // After the core (GIL released): the float32 gradients rounded into the bfloat16 ones.
    void finish() const {
        if constexpr (!std::is_same_v<T, C>) {
            if (db_rounded == nullptr) return;
            if (dW_rounded) siglayer::to_bfloat16(dW_rounded, dW_data, n_in * n_out);
            siglayer::to_bfloat16(db_rounded, db_data, n_out);
        }
    }
    py::tuple result() const { return py::make_tuple(dx, dW, db); }
};

// dout and out are (n, n_out), x is (n, n_in), W is (n_in, n_out).
// Returns (dx or None, dW or None, db).
py::tuple backward(py::handle dout_h, py::handle x_h, py::handle W_h, py::handle out_h,
                   py::handle need_dx_h, py::handle need_dW_h, py::handle dx_h, py::handle dW_h,
                   py::handle db_h, bool round_grads) {
    // Taken as objects: pybind11's bool conversion would read None as False and
    // report any other type with a dump of every argument.
    const bool need_dx = as_bool(need_dx_h, "need_dx");
    const bool need_dW = as_bool(need_dW_h, "need_dW");
    const py::array dout = as_array(dout_h, "dout"), x = as_array(x_h, "x"), W = as_array(W_h, "W"),
                    out = as_array(out_h, "out");
    const int type_num = float_type_num(dout, "dout");
    float_type_num(x, "x");
    float_type_num(W, "W");
    float_type_num(out, "out");
    require_same_dtype({{"dout", &dout}, {"x", &x}, {"W", &W}, {"out", &out}});
    require_ndim(dout, "dout", 2, "(n, n_out)");
    require_ndim(x, "x", 2, "(n, n_in)");
    require_ndim(W, "W", 2, "(n_in, n_out)");
    require_ndim(out, "out", 2, "(n, n_out)");
    return dispatch_dtype(type_num, "dout", [&](auto zero) {
        using T = decltype(zero);
        const MatrixView<T> doutv = matrix_view<T>(dout, "dout"), xv = matrix_view<T>(x, "x"),
                            Wv = matrix_view<T>(W, "W"), outv = matrix_view<T>(out, "out");
        check_backward(doutv, xv, Wv, outv);
        GradientBuffers<T> g(
            need_dx, need_dW, dx_h, dW_h, db_h, x.shape(0), x.shape(1), W.shape(1), round_grads,
            {{"dout", extent(doutv)}, {"x", extent(xv)}, {"W", extent(Wv)}, {"out", extent(outv)}});
        {
            ReleaseGil release;
            siglayer::backward<T>(g.dx_out(), g.dW_out(), g.db_data, doutv, xv, Wv, outv);
            g.finish();
        }
        return g.result();
    });
}

// dZ is (n, n_out), x is (n, n_in), W is (n_in, n_out). Returns (dx or None, dW or None,
// db).
py::tuple backward_from_preactivation(py::handle dZ_h, py::handle x_h, py::handle W_h,
                                      py::handle need_dx_h, py::handle need_dW_h, py::handle dx_h,
                                      py::handle dW_h, py::handle db_h, bool round_grads) {
    const bool need_dx = as_bool(need_dx_h, "need_dx");  // see backward
    const bool need_dW = as_bool(need_dW_h, "need_dW");
    const py::array dZ = as_array(dZ_h, "dZ"), x = as_array(x_h, "x"), W = as_array(W_h, "W");
    const int type_num = float_type_num(dZ, "dZ");
    float_type_num(x, "x");
    float_type_num(W, "W");
    require_same_dtype({{"dZ", &dZ}, {"x", &x}, {"W", &W}});
    require_ndim(dZ, "dZ", 2, "(n, n_out)");
    require_ndim(x, "x", 2, "(n, n_in)");
    require_ndim(W, "W", 2, "(n_in, n_out)");
    return dispatch_dtype(type_num, "dZ", [&](auto zero) {
        using T = decltype(zero);
        const MatrixView<T> dZv = matrix_view<T>(dZ, "dZ"), xv = matrix_view<T>(x, "x"),
                            Wv = matrix_view<T>(W, "W");
        check_backward_from_preactivation(dZv, xv, Wv);
        GradientBuffers<T> g(need_dx, need_dW, dx_h, dW_h, db_h, x.shape(0), x.shape(1), W.shape(1),
                             round_grads,
                             {{"dZ", extent(dZv)}, {"x", extent(xv)}, {"W", extent(Wv)}});
        {
            ReleaseGil release;
            siglayer::backward_from_preactivation<T>(g.dx_out(), g.dW_out(), g.db_data, dZv, xv,
                                                     Wv);
            g.finish();
        }
        return g.result();
    });
}

// Elementwise sigma of a C-contiguous array, into a fresh array or out=.
py::array sigmoid(py::handle z_h, py::handle out_h) {
    const py::array z = as_array(z_h, "z");
    const int type_num = float_type_num(z, "z");
    if (!(z.flags() & py::array::c_style))
        throw py::value_error("z must be C-contiguous, got strides " +
                              std::string(py::str(py::tuple(z.attr("strides")))));
    require_aligned(z, "z");
    return dispatch_dtype(type_num, "z", [&](auto zero) {
        using T = decltype(zero);
        std::vector<py::ssize_t> shape(z.shape(), z.shape() + z.ndim());
        T* y = nullptr;
        py::array result = make_or_check<T>(out_h, "out", shape, y);
        const T* zp = static_cast<const T*>(z.data());
        const index_t count = z.size();
        // In place (out is z) is elementwise and fine; any other overlap is not.
        if (y != zp) require_disjoint({{"out", extent(y, count)}}, {{"z", extent(zp, count)}});
        {
            ReleaseGil release;
            siglayer::sigmoid<T>(y, zp, count);
        }
        return result;
    });
}

// float32 <-> bfloat16 of a C-contiguous array, into a fresh array or out=.
template <class From, class To>
py::array convert(py::handle a_h, py::handle out_h, const char* to_name) {
    const py::array a = as_array(a_h, "a");
    if (!holds<From>(a))  // a big-endian float32 would be read as native bytes
        throw py::type_error(std::string("a has dtype ") + dtype_of(a) + ", expected " +
                             DType<From>::name + " (" + to_name + " converts from " +
                             DType<From>::name + ")");
    if (!(a.flags() & py::array::c_style))
        throw py::value_error("a must be C-contiguous, got strides " +
                              std::string(py::str(py::tuple(a.attr("strides")))));
    require_aligned(a, "a");
    std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
    To* dst = nullptr;
    py::array result = make_or_check<To>(out_h, "out", shape, dst);
    const From* src = static_cast<const From*>(a.data());
    require_disjoint({{"out", extent(dst, a.size())}}, {{"a", extent(src, a.size())}});
    const index_t count = a.size();
    {
        ReleaseGil release;
        if constexpr (std::is_same_v<To, bfloat16>)
            siglayer::to_bfloat16(dst, src, count);
        else
            siglayer::to_float32(dst, src, count);
    }
    return result;
}

}  // namespace

void register_layer(py::module_& m) {
    m.def("forward", &forward, py::arg("x"), py::arg("W"), py::arg("b"),
          py::arg("out") = py::none(),
          "out = sigmoid(x @ W + b) for 2-D x; see siglayer.forward for the full API.");
    m.def("backward", &backward, py::arg("dout"), py::arg("x"), py::arg("W"), py::arg("out"),
          py::arg("need_dx") = true, py::arg("need_dW") = true, py::arg("dx") = py::none(),
          py::arg("dW") = py::none(), py::arg("db") = py::none(), py::arg("round_grads") = false,
          "(dx, dW, db) for 2-D arrays; see siglayer.backward for the full API. round_grads: "
          "a bfloat16 call's dW and db rounded once to bfloat16 (grad_dtype='bfloat16').");
    m.def("backward_from_preactivation", &backward_from_preactivation, py::arg("dZ"), py::arg("x"),
          py::arg("W"), py::arg("need_dx") = true, py::arg("need_dW") = true,
          py::arg("dx") = py::none(), py::arg("dW") = py::none(), py::arg("db") = py::none(),
          py::arg("round_grads") = false,
          "(dx, dW, db) from dZ, the gradient w.r.t. x @ W + b, for 2-D arrays; see "
          "siglayer.backward_from_preactivation.");
    m.def(
        "to_bfloat16",
        [](py::handle a, py::handle out) {
            return convert<float, bfloat16>(a, out, "to_bfloat16");
        },
        py::arg("a"), py::arg("out") = py::none(),
        "float32 -> ml_dtypes.bfloat16, rounded to nearest even (NaN and +-inf kept).");
    m.def(
        "to_float32",
        [](py::handle a, py::handle out) { return convert<bfloat16, float>(a, out, "to_float32"); },
        py::arg("a"), py::arg("out") = py::none(), "ml_dtypes.bfloat16 -> float32, exact.");
    m.def("sigmoid", &sigmoid, py::arg("z"), py::arg("out") = py::none(),
          "Elementwise 1 / (1 + exp(-z)) with the vectorized kernel in use.");
}

}  // namespace siglayer::bindings
