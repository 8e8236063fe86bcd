#include "arrays.hpp"

#include <chrono>
#include <thread>

namespace siglayer::bindings {

void ReleaseGil::block_until_exit() {
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

namespace {

// numpy.matrix and numpy.ma.MaskedArray, looked up once and kept for the life of the
// process (leaked: no destructor runs after the interpreter is gone).
struct Subclasses {
    py::object ndarray, matrix, masked;
};

const Subclasses& subclasses() {
    // Not a function-local static initializer: its guard would be held across the import
    // of numpy.ma, which lets other Python threads run, and another thread's first call
    // then waited on the guard holding the GIL, which the importer needs: a deadlock
    // (tests/test_concurrency.py). The GIL orders this test; two threads may both import,
    // and the first to finish is kept.
    static Subclasses* kept = nullptr;
    if (kept == nullptr) {
        py::module_ np = py::module_::import("numpy");
        auto* found = new Subclasses{np.attr("ndarray"), np.attr("matrix"),
                                     py::module_::import("numpy.ma").attr("MaskedArray")};
        if (kept == nullptr)
            kept = found;
        else
            delete found;
    }
    return *kept;
}

std::string type_name(py::handle h) {
    py::handle type = py::type::handle_of(h);
    std::string module = py::str(type.attr("__module__"));
    std::string name = py::str(type.attr("__qualname__"));
    return module == "builtins" ? name : module + "." + name;
}

// What to pass instead of `h`, which is no ndarray, where that is known: the frontend that
// takes a framework's arrays as they are, a conversion for pandas objects and Python
// sequences; else nothing. python/siglayer/_buffers.py's not_an_ndarray says the same
// words (tests/test_layer.py compares the two).
std::string instead(py::handle h, const std::string& name) {
    const std::string module = py::str(py::type::handle_of(h).attr("__module__"));
    const std::string top = module.substr(0, module.find('.'));
    if (top == "torch")
        return "; for PyTorch tensors use siglayer.torch (sigmoid_linear, SigmoidLinear)";
    if (top == "jax" || top == "jaxlib") return "; for JAX arrays use siglayer.jax.sigmoid_linear";
    if (top == "dask") return "; for Dask arrays use siglayer.dask (forward, backward)";
    if (top == "pandas") return "; pass " + name + ".to_numpy(np.float32) (or np.float64)";
    if (PyList_Check(h.ptr()) || PyTuple_Check(h.ptr()))
        return "; pass np.asarray(" + name + ", np.float32) (or np.float64)";
    return "";
}

}  // namespace

bool native_byte_order(const py::dtype& dt) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return dt.byteorder() != '>';
#else
    return dt.byteorder() != '<';
#endif
}

std::string shape_of(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        if (d > 0) s += ", ";
        s += std::to_string(a.shape(d));
    }
    return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_of(const py::array& a) {
    return py::str(a.dtype());
}

py::array as_array(py::handle h, const char* name) {
    const Subclasses& s = subclasses();
    if (py::type::handle_of(h).is(s.ndarray)) return py::reinterpret_borrow<py::array>(h);
    if (!py::isinstance(h, s.ndarray)) {
        throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                             (h.is_none() ? std::string("None") : type_name(h)) + instead(h, name));
    }
    if (py::isinstance(h, s.matrix)) {
        throw py::type_error(std::string(name) + " must be a plain numpy.ndarray, got " +
                             type_name(h) + "; convert it with np.asarray(" + name + ")");
    }
    if (py::isinstance(h, s.masked)) {
        throw py::type_error(std::string(name) + " must be a plain numpy.ndarray, got " +
                             type_name(h) +
                             "; masks are not supported: fill the masked "
                             "entries first (" +
                             name + ".filled(value))");
    }
    return py::reinterpret_borrow<py::array>(h);
}

bool as_bool(py::handle h, const char* name) {
    if (h.ptr() == Py_True) return true;
    if (h.ptr() == Py_False) return false;
    if (py::isinstance(h, py::module_::import("numpy").attr("bool_"))) return h.cast<bool>();
    throw py::type_error(std::string(name) + " must be a bool, got " +
                         (h.is_none() ? std::string("None") : type_name(h)));
}

namespace {

// ml_dtypes.bfloat16's dtype once ml_dtypes has been imported (by anyone), else null.
// Looked up until found, then kept for the life of the process (as NumPy keeps it).
PyObject* bfloat16_dtype() {
    static PyObject* dtype = nullptr;  // the GIL is held: no race
    if (dtype == nullptr) {
        const py::dict modules = py::module_::import("sys").attr("modules");
        // None is how a test or a sandbox blocks an import: as good as absent.
        if (modules.contains("ml_dtypes") && !modules["ml_dtypes"].is_none())
            dtype = py::dtype::from_args(modules["ml_dtypes"].attr("bfloat16")).release().ptr();
    }
    return dtype;
}

}  // namespace

int bfloat16_type_num() {
    PyObject* dtype = bfloat16_dtype();
    return dtype ? py::reinterpret_borrow<py::dtype>(dtype).num() : -1;
}

template <>
py::dtype numpy_dtype<float>() {
    return py::dtype::of<float>();
}
template <>
py::dtype numpy_dtype<double>() {
    return py::dtype::of<double>();
}
template <>
py::dtype numpy_dtype<bfloat16>() {
    // Asked for once a bfloat16 array has been seen (ml_dtypes is loaded then), or by a
    // call that makes bfloat16 from nothing but floats (to_bfloat16): it imports ml_dtypes.
    if (bfloat16_dtype() == nullptr) {
        const char* need =
            "bfloat16 arrays need ml-dtypes, which cannot be imported: pip install ml-dtypes "
            "(siglayer's bfloat16 extra)";
        try {
            py::module_::import("ml_dtypes");
        } catch (py::error_already_set& e) {
            py::raise_from(e, PyExc_ImportError, need);  // the import's own error as cause
            throw py::error_already_set();
        }
        if (bfloat16_dtype() == nullptr) throw py::import_error(need);
    }
    return py::reinterpret_borrow<py::dtype>(bfloat16_dtype());
}

int float_type_num(const py::array& a, const char* name) {
    const py::dtype dt = a.dtype();
    const int num = dt.num();
    if ((num == py::detail::npy_api::NPY_FLOAT_ || num == py::detail::npy_api::NPY_DOUBLE_ ||
         (num >= 0 && num == bfloat16_type_num())) &&
        native_byte_order(dt)) {
        return num;
    }
    const std::string hint = num == 23 /* NPY_HALF */
                                 ? " (float16 is not bfloat16: pass " + std::string(name) +
                                       ".astype(ml_dtypes.bfloat16) for bfloat16)"
                                 : "";
    throw py::type_error(std::string(name) + " has dtype " + dtype_of(a) +
                         "; siglayer computes in float32, float64 or bfloat16 (ml_dtypes), in "
                         "native byte order, and never converts silently: pass " +
                         name + ".astype(np.float32) or " + name + ".astype(np.float64)" + hint);
}

void require_same_dtype(std::initializer_list<std::pair<const char*, const py::array*>> arrays) {
    const int first = arrays.begin()->second->dtype().num();
    bool same = true;
    for (const auto& [name, a] : arrays) same = same && a->dtype().num() == first;
    if (same) return;
    std::string msg = "all arrays of one call must share one dtype; got";
    bool comma = false;
    for (const auto& [name, a] : arrays) {
        msg += std::string(comma ? ", " : " ") + name + " " + dtype_of(*a);
        comma = true;
    }
    throw py::type_error(msg);
}

void require_aligned(const py::array& a, const char* name, const char* hint) {
    if (a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) return;
    throw py::value_error(
        std::string(name) +
        " is not aligned to its item size (it starts inside an element's "
        "bytes); " +
        (hint ? std::string(hint) : "pass " + std::string(name) + ".copy(), which is aligned"));
}

// The array's data as a T*: for an array of no elements, which NumPy calls aligned at any
// address (a distributed worker unpickles empty chunks at odd offsets) and which nothing
// reads or writes, an aligned stand-in address instead of its own.
template <class T>
T* element_data(const py::array& a) {
    alignas(T) static T none{};
    if (a.size() == 0) return &none;
    return static_cast<T*>(const_cast<void*>(a.data()));
}

template <class T>
MatrixView<T> matrix_view(const py::array& a, const char* name) {
    const auto item = static_cast<py::ssize_t>(sizeof(T));
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        if (a.strides(d) % item != 0) {
            throw py::value_error(std::string(name) +
                                  " has strides that are not a whole number "
                                  "of elements; pass np.ascontiguousarray(" +
                                  name + ")");
        }
    }
    require_aligned(a, name);
    MatrixView<T> m;
    m.data = element_data<T>(a);
    if (a.ndim() == 1) {
        m.rows = 1;
        m.cols = a.shape(0);
        m.row_stride = 0;
        m.col_stride = a.strides(0) / item;
    } else {
        m.rows = a.shape(0);
        m.cols = a.shape(1);
        m.row_stride = a.strides(0) / item;
        m.col_stride = a.strides(1) / item;
    }
    return m;
}

template <class T>
VectorView<T> vector_view(const py::array& a, const char* name) {
    const MatrixView<T> m = matrix_view<T>(a, name);
    return {m.data, m.cols, m.col_stride};
}

template <class T>
T* output_buffer(const py::array& a, const char* name, const std::vector<py::ssize_t>& shape) {
    bool shape_ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
    for (std::size_t d = 0; shape_ok && d < shape.size(); ++d) shape_ok = a.shape(d) == shape[d];
    if (!shape_ok) {
        std::string expected = "(";
        for (std::size_t d = 0; d < shape.size(); ++d)
            expected += (d ? ", " : "") + std::to_string(shape[d]);
        expected += shape.size() == 1 ? ",)" : ")";
        throw py::value_error(std::string(name) + " has shape " + shape_of(a) + ", expected " +
                              expected);
    }
    if (!holds<T>(a)) {
        throw py::type_error(std::string(name) + " has dtype " + dtype_of(a) + ", expected " +
                             DType<T>::name);
    }
    if (!(a.flags() & py::array::c_style)) {
        throw py::value_error(std::string(name) + " must be C-contiguous (strides " +
                              std::string(py::str(py::tuple(a.attr("strides")))) + ")");
    }
    if (!a.writeable()) throw py::value_error(std::string(name) + " is read-only");
    // NumPy calls a buffer at an odd address C-contiguous too; the kernels need T-aligned
    // stores (a misaligned T* is undefined behaviour even where the CPU tolerates it).
    require_aligned(a, name, "pass an array from np.empty");
    return element_data<T>(a);
}

#define SIGLAYER_INSTANTIATE(T)                                           \
    template MatrixView<T> matrix_view<T>(const py::array&, const char*); \
    template VectorView<T> vector_view<T>(const py::array&, const char*); \
    template T* output_buffer<T>(const py::array&, const char*, const std::vector<py::ssize_t>&);
SIGLAYER_FOR_EACH_DTYPE(SIGLAYER_INSTANTIATE)
#undef SIGLAYER_INSTANTIATE

}  // namespace siglayer::bindings
