// sgd_step and adam_step: one call updates every parameter of an optimizer in place.
// Taking the whole list at once keeps the per-step cost to one Python call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../siglayer/checks.hpp"
#include "../siglayer/optim.hpp"
#include "arrays.hpp"

namespace siglayer::bindings {

namespace {

// "grads[2]": an argument's name for error messages, spelled out only when one is raised.
struct Name {
    const char* group;
    std::size_t index;
    std::string str() const { return std::string(group) + "[" + std::to_string(index) + "]"; }
};

std::vector<py::handle> as_list(py::handle seq, const char* name, std::size_t expected) {
    if (!py::isinstance<py::list>(seq) && !py::isinstance<py::tuple>(seq))
        throw py::type_error(std::string(name) + " must be a list of numpy.ndarray");
    const py::sequence s = py::reinterpret_borrow<py::sequence>(seq);
    if (expected != static_cast<std::size_t>(-1) && s.size() != expected) {
        throw py::value_error(std::string(name) + " has " + std::to_string(s.size()) +
                              " entries, expected " + std::to_string(expected) +
                              " (one per parameter)");
    }
    std::vector<py::handle> items;
    items.reserve(s.size());
    // Borrowed: the list (held by the caller for the whole call) keeps them alive.
    for (std::size_t i = 0; i < s.size(); ++i)
        items.push_back(PySequence_Fast_GET_ITEM(seq.ptr(), i));
    return items;
}

bool is_float_native(const py::array& a) {
    const py::dtype dt = a.dtype();
    const int num = dt.num();
    return (num == py::detail::npy_api::NPY_FLOAT_ || num == py::detail::npy_api::NPY_DOUBLE_) &&
           native_byte_order(dt);
}

bool same_shape(const py::array& a, const py::array& b) {
    if (a.ndim() != b.ndim()) return false;
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
        if (a.shape(d) != b.shape(d)) return false;
    return true;
}

// An array the update reads (a gradient) or writes (a parameter or state): float32 or
// float64, C-contiguous, aligned, writeable unless read-only use, and shaped and typed like its
// parameter `like` when given. The checks run first; names are built only for an error.
py::array array_arg(py::handle h, Name name, const py::array* like, bool writeable) {
    // Leaked on purpose: a type object outlives the module, and no destructor runs at exit.
    // Looked up under the GIL, not by a static initializer, whose guard held across an
    // import could deadlock with another thread's first call (see subclasses()).
    static PyObject* ndarray_type = nullptr;
    if (ndarray_type == nullptr)
        ndarray_type = py::object(py::module_::import("numpy").attr("ndarray")).release().ptr();
    const py::handle ndarray(ndarray_type);
    const py::array a = py::type::handle_of(h).is(ndarray) ? py::reinterpret_borrow<py::array>(h)
                                                           : as_array(h, name.str().c_str());
    const bool ok =
        is_float_native(a) &&
        (like == nullptr || (same_shape(a, *like) && a.dtype().num() == like->dtype().num())) &&
        (a.flags() & py::array::c_style) && (!writeable || a.writeable()) &&
        (a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_);
    if (ok) return a;
    const std::string n = name.str();
    float_type_num(a, n.c_str());  // TypeError for what siglayer never computes in
    if (!is_float_native(a))       // bfloat16: a layer's masters are float32
        throw py::type_error(n + " has dtype " + dtype_of(a) +
                             "; the optimizers update float32 or float64 arrays");
    if (like != nullptr && !same_shape(a, *like))
        throw py::value_error(n + " has shape " + shape_of(a) + ", expected " + shape_of(*like) +
                              " (the shape of its parameter)");
    if (like != nullptr && a.dtype().num() != like->dtype().num())
        throw py::type_error(n + " has dtype " + dtype_of(a) + ", expected " + dtype_of(*like) +
                             " (the dtype of its parameter)");
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(n + " must be C-contiguous (strides " +
                              std::string(py::str(py::tuple(a.attr("strides")))) + ")");
    if (writeable && !a.writeable()) throw py::value_error(n + " is read-only");
    require_aligned(a, n.c_str(),
                    "the update is made in place: pass an aligned array (np.zeros, np.empty)");
    throw std::logic_error("array_arg: no check failed");  // unreachable: one of them did
}

// The bytes of a C-contiguous array (checked by array_arg), for the core's overlap test.
Extent extent_of_array(const py::array& a) {
    return extent_of(a.data(), 1, a.size(), 0, 1, a.itemsize());
}

// One parameter's arrays as raw pointers, after every check passed.
struct Task {
    int type_num;
    void* param;
    const void* grad;
    void* state[2];
    index_t count;
};

// The tasks, and references that keep their arrays alive while the GIL is released
// (another thread could empty the caller's lists meanwhile).
struct Tasks {
    std::vector<Task> tasks;
    std::vector<py::array> arrays;
};

template <class Run>
void run_tasks(const Tasks& all, const Run& run) {
    // Only raw pointers cross this line: no Python object is touched without the GIL.
    ReleaseGil release;
    for (const Task& t : all.tasks) {
        dispatch_compute_dtype(t.type_num, "params", [&](auto zero) {
            using T = decltype(zero);
            run(static_cast<T*>(t.param), static_cast<const T*>(t.grad),
                static_cast<T*>(t.state[0]), static_cast<T*>(t.state[1]), t.count);
        });
    }
}

// Checks params[i], grads[i] and entry i of each state list (None where the update uses
// no such state), and returns them as raw pointers. The arrays of one parameter must not
// share memory: an update reads and writes each element once, so overlapping buffers
// would mix old and new values. (Distinct parameters are checked once, by the Python
// optimizer.)
template <std::size_t S>
Tasks gather(py::handle params_h, py::handle grads_h,
             const std::pair<const char*, py::handle> (&states)[S]) {
    static_assert(S <= 2, "Task holds two state arrays");
    const std::vector<py::handle> params = as_list(params_h, "params", -1);
    const std::vector<py::handle> grads = as_list(grads_h, "grads", params.size());
    std::vector<py::handle> state_items[S];
    for (std::size_t s = 0; s < S; ++s)
        state_items[s] = as_list(states[s].second, states[s].first, params.size());
    Tasks all;
    all.tasks.reserve(params.size());
    all.arrays.reserve(params.size() * (2 + S));
    for (std::size_t i = 0; i < params.size(); ++i) {
        py::array param = array_arg(params[i], {"params", i}, nullptr, true);
        const py::array grad = array_arg(grads[i], {"grads", i}, &param, false);
        Task task{param.dtype().num(),
                  param.mutable_data(),
                  grad.data(),
                  {nullptr, nullptr},
                  static_cast<index_t>(param.size())};
        // Checked here for every parameter before any is updated (the core checks each
        // call too, but an error on the third parameter must not leave two updated).
        std::pair<Name, Extent> spans[2 + S] = {{{"params", i}, extent_of_array(param)},
                                                {{"grads", i}, extent_of_array(grad)}};
        std::size_t used = 2;
        for (std::size_t s = 0; s < S; ++s) {
            const py::handle h = state_items[s][i];
            if (h.is_none()) continue;
            py::array state = array_arg(h, {states[s].first, i}, &param, true);
            task.state[s] = state.mutable_data();
            spans[used++] = {{states[s].first, i}, extent_of_array(state)};
            all.arrays.push_back(state);
        }
        for (std::size_t a = 0; a < used; ++a)
            for (std::size_t b = a + 1; b < used; ++b)
                if (overlaps(spans[a].second, spans[b].second))
                    throw py::value_error(spans[a].first.str() + " overlaps " +
                                          spans[b].first.str() + "; they must be separate arrays");
        all.tasks.push_back(task);
        all.arrays.push_back(param);
        all.arrays.push_back(grad);
    }
    return all;
}

void sgd_step(py::handle params, py::handle grads, py::handle velocities, double lr,
              double momentum, double dampening, double weight_decay, bool nesterov,
              bool first_step) {
    const std::pair<const char*, py::handle> states[] = {{"velocities", velocities}};
    const Tasks tasks = gather(params, grads, states);
    for (std::size_t i = 0; i < tasks.tasks.size(); ++i) {
        if (momentum != 0 && tasks.tasks[i].state[0] == nullptr)
            throw py::value_error(Name{"velocities", i}.str() +
                                  " is None but momentum != 0 needs a velocity buffer");
    }
    const optim::SGDOptions options{lr, momentum, dampening, weight_decay, nesterov};
    run_tasks(tasks, [&](auto* param, const auto* grad, auto* velocity, auto*, index_t count) {
        optim::sgd_step(param, grad, velocity, count, options, first_step);
    });
}

void adam_step(py::handle params, py::handle grads, py::handle exp_avgs, py::handle exp_avg_sqs,
               double lr, double beta1, double beta2, double eps, double weight_decay,
               bool decoupled_weight_decay, std::int64_t step) {
    if (step < 1) throw py::value_error("step must be >= 1, got " + std::to_string(step));
    const std::pair<const char*, py::handle> states[] = {{"exp_avgs", exp_avgs},
                                                         {"exp_avg_sqs", exp_avg_sqs}};
    const Tasks tasks = gather(params, grads, states);
    for (std::size_t i = 0; i < tasks.tasks.size(); ++i) {
        if (tasks.tasks[i].state[0] == nullptr || tasks.tasks[i].state[1] == nullptr)
            throw py::value_error("exp_avgs[" + std::to_string(i) + "] and exp_avg_sqs[" +
                                  std::to_string(i) + "] must be arrays, got None");
    }
    const optim::AdamOptions options{lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay};
    run_tasks(tasks,
              [&](auto* param, const auto* grad, auto* exp_avg, auto* exp_avg_sq, index_t count) {
                  optim::adam_step(param, grad, exp_avg, exp_avg_sq, count, options, step);
              });
}

}  // namespace

void register_optim(py::module_& m) {
    m.def("sgd_step", &sgd_step, py::arg("params"), py::arg("grads"), py::arg("velocities"),
          py::arg("lr"), py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"),
          py::arg("nesterov"), py::arg("first_step"),
          "One SGD update of every params[i] in place; see siglayer.optim.SGD.");
    m.def("adam_step", &adam_step, py::arg("params"), py::arg("grads"), py::arg("exp_avgs"),
          py::arg("exp_avg_sqs"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
          py::arg("weight_decay"), py::arg("decoupled_weight_decay"), py::arg("step"),
          "One Adam update of every params[i] in place; see siglayer.optim.Adam.");
}

}  // namespace siglayer::bindings
