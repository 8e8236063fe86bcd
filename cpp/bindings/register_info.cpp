// Threads, BLAS backend and instruction-set information.
#include <omp.h>
#include <pybind11/pybind11.h>

#include "../siglayer/blas.hpp"
#include "../siglayer/kernels.hpp"
#include "../siglayer/layer.hpp"
#include "../siglayer/threads.hpp"
#include "arrays.hpp"

namespace siglayer::bindings {

void register_info(py::module_& m) {
    m.def(
        "set_num_threads",
        [](int n) {
            if (n < 1) throw py::value_error("n must be >= 1, got " + std::to_string(n));
            threads::set_max_threads(n);
            blas::set_num_threads(n);
        },
        py::arg("n"), "Threads for both the OpenMP sweeps and the BLAS.");
    m.def("get_num_threads", [] { return threads::max_threads(); });
    m.def("blas_num_threads", [] { return blas::get_num_threads(); });
    m.def("config", [] {
        py::dict d;
        d["blas"] = blas::backend_name();
        d["blas_details"] = blas::backend_details();
        d["blas_int_bits"] = blas::max_int() > 2147483647LL ? 64 : 32;
        d["bf16_gemm"] = blas::bf16_gemm_name(blas::bf16_gemm_path());
        d["few_outputs"] = few_output_kernels() ? "kernels" : "gemm";
        d["small_gemm"] = blas::small_gemm_multiply_adds();
        d["bf16_gemm_in_blas"] = blas::bf16_gemm_in_blas();
        d["cpu_bf16"] = blas::cpu_has_bf16();
        d["cpu_amx_bf16"] = blas::cpu_has_amx_bf16();
        d["bf16_gemm_own"] = blas::own_bf16_gemm_available();
        d["db_sum_rows"] = kSumRows;  // db's blocks of rows (views.hpp): the tests' bound
        d["bf16_gemm_mkl_runtime"] = blas::mkl_bf16_description();
        d["amx_permission"] = blas::amx_permission();
        d["simd"] = kernels::active_isa();
        d["simd_available"] = kernels::available_isas();
        d["openmp"] = _OPENMP;
        d["openmp_runtime"] = threads::runtime_description();
        d["thread_pool"] = threads::pool_description();
        d["compiler"] = __VERSION__;
        return d;
    });
    // Registered by the package with os.register_at_fork (threads.hpp says why). The GIL
    // stays held: before_fork waits only for regions running without it.
    m.def("before_fork", &threads::before_fork);
    m.def("after_fork_in_parent", &threads::after_fork_in_parent);
    m.def("after_fork_in_child", &threads::after_fork_in_child);
    m.def("forget_registration", &threads::forget_registration,
          "Makes this process remove libiomp5's registration file of it (a worker's).");
    m.def(
        "set_tiles_per_thread", [](int n) { threads::set_tiles_per_thread(n); }, py::arg("n"),
        "Tiles of each product per thread (1: a fixed split); for benchmarks.");
    m.def("tiles_per_thread", [] { return threads::tiles_per_thread(); });
    m.def("select_pool", &threads::select_pool, py::arg("pool"),
          "Whose OpenMP pool siglayer's regions run on: 'auto' (the default), PyTorch's\n"
          "libgomp pool for siglayer.torch's calls; 'shared', for every call; 'own', never\n"
          "(threads.hpp; only on the importing thread, never in a forked child). Returns\n"
          "the setting it replaced.");
    m.def("take_last_region", &threads::take_last_region,
          "For the tests: 'own 2', 'borrowed 2', 'solo 1' (the team of the last parallel\n"
          "region) or 'none', then forgets it.");
    m.def("set_torch_caller", &threads::set_torch_caller, py::arg("on"),
          "Marks this thread's calls as siglayer.torch's (for select_pool's 'auto');\n"
          "returns the previous mark.");
    m.def(
        "dispatch_probe",
        [](py::handle a_h) {
            const py::array a = as_array(a_h, "a");
            return dispatch_dtype(a.dtype().num(), "a", [](auto zero) {
                return std::string(DType<decltype(zero)>::name);
            });
        },
        py::arg("a"),
        "The storage type the dtype dispatch picks for a's dtype, with no other check in\n"
        "front of it (tests: an unknown dtype must raise TypeError).");
    m.def(
        "select_bf16_gemm", [](const std::string& name) { blas::select_bf16_gemm(name); },
        py::arg("name"),
        "How bfloat16 products run: 'blas' (the BLAS's bfloat16 GEMM), 'avx512bf16'\n"
        "(siglayer's own, on AVX512-BF16), 'convert' (widen to float32, float32 GEMM) or\n"
        "'auto' (blas on AMX with MKL, else avx512bf16 where it runs, else convert).");
    m.def(
        "request_amx_permission", [] { return blas::request_amx_permission(); },
        "Ask Linux for AMX tile data (once per process; what the blas path does on an AMX\n"
        "CPU) and return the answer: 'granted' or 'refused: <reason>'.");
    m.def(
        "load_mkl_bf16", [](const std::string& path) { return blas::load_mkl_bf16(path); },
        py::arg("path"),
        "Open libmkl_rt at path for MKL's bfloat16 GEMM (builds whose BLAS has none), once\n"
        "per process; returns its description. ValueError naming the path if it fails.\n"
        "Call select_bf16_gemm afterwards: loading does not change the path.");
    m.def(
        "select_few_outputs",
        [](const std::string& name) {
            if (name != "kernels" && name != "gemm")
                throw py::value_error("select_few_outputs: 'kernels' or 'gemm', got '" + name +
                                      "'");
            set_few_output_kernels(name == "kernels");
        },
        py::arg("name"),
        "Layers with fewer than 12 outputs (every dtype), and dx with up to 64 outputs "
        "(bfloat16's on its convert path): their own kernels ('kernels', the default) or "
        "the GEMM path of every other layer ('gemm'); for tests and benchmarks.");
    m.def(
        "set_small_gemm", [](double bound) { return blas::set_small_gemm_multiply_adds(bound); },
        py::arg("bound"),
        "The most multiply-adds per BLAS call that forward's and dW's panels of rows aim\n"
        "at (the BLAS's small-matrix kernels; layer_detail.hpp, gemm_panel_rows): 0 turns\n"
        "the panels off, a negative value restores this BLAS's own bound (1e6 on OpenBLAS's\n"
        "SkylakeX cores, else 0). Returns the previous bound; for tests and benchmarks.");
    m.def(
        "select_isa", [](const std::string& name) { kernels::select_isa(name); }, py::arg("name"),
        "Force 'avx512bf16', 'avx512', 'avx2' or 'baseline' kernels (tests, benchmarks).");
}

}  // namespace siglayer::bindings
