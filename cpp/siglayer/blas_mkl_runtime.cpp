// MKL's bfloat16 GEMM found at run time, for builds whose BLAS has none (the default,
// scipy-openblas32). The `mkl` package on PyPI puts libmkl_rt in the environment's lib/;
// siglayer/_config.py finds it and calls load_mkl_bf16 with its path. Only the bfloat16
// products use it: float32 and float64 stay on the build's BLAS.
//
// libmkl_rt is opened RTLD_LOCAL, so none of its symbols (cblas_sgemm, ...) can take the
// place of another library's. Its interface layer must be LP64 (32-bit MKL_INT, as the
// sizes checked against blas::max_int() are); its threading layer sequential: MKL's
// Intel layer would open a second libiomp5 (the one beside libmkl_rt, not the one
// siglayer ships), which aborts the process ("OMP: Error #15"), and every product in
// the core runs on its calling thread anyway (MKL_Set_Num_Threads_Local(1) too, in case
// another user of this libmkl_rt chose the GNU or TBB layer first).
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "blas.hpp"

#if defined(__linux__)
#include <dlfcn.h>
#endif

namespace siglayer::blas {

namespace {

// The CBLAS constants of cblas.h / mkl_cblas.h (fixed by the CBLAS standard).
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
// mkl_service.h: MKL_INTERFACE_LP64, MKL_THREADING_INTEL, MKL_THREADING_SEQUENTIAL.
constexpr int kInterfaceLp64 = 0, kThreadingIntel = 0, kThreadingSequential = 1;

using GemmBf16 = void (*)(int layout, int op_a, int op_b, int m, int n, int k, float alpha,
                          const std::uint16_t* A, int lda, const std::uint16_t* B, int ldb,
                          float beta, float* C, int ldc);
using SetLocal = int (*)(int);
using SetLayer = int (*)(int);
using VersionString = void (*)(char*, int);

struct Runtime {
    // Stored last (release), after set_local and description: a thread whose load
    // (acquire) sees it also sees them.
    std::atomic<GemmBf16> gemm{nullptr};
    SetLocal set_local = nullptr;
    std::string description;  // "MKL 2026.2 (loaded at run time from /path/libmkl_rt.so.3)"
};

Runtime& runtime() {
    static Runtime r;
    return r;
}

}  // namespace

std::string load_mkl_bf16(const std::string& path) {
#if defined(__linux__)
    static std::mutex mutex;
    const std::lock_guard<std::mutex> lock(mutex);
    Runtime& r = runtime();
    if (r.gemm.load() != nullptr) return r.description;  // once per process
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
        const char* why = dlerror();
        throw InvalidArgument("mkl: cannot load '" + path + "': " + (why ? why : "unknown error"));
    }
    const auto find = [&](const char* name) {
        void* f = dlsym(lib, name);
        if (f == nullptr) {
            dlclose(lib);
            throw InvalidArgument("mkl: '" + path + "' has no " + name +
                                  " (MKL 2020 or newer has it)");
        }
        return f;
    };
    auto gemm = reinterpret_cast<GemmBf16>(find("cblas_gemm_bf16bf16f32"));
    auto set_local = reinterpret_cast<SetLocal>(find("MKL_Set_Num_Threads_Local"));
    auto set_interface = reinterpret_cast<SetLayer>(find("MKL_Set_Interface_Layer"));
    auto set_threading = reinterpret_cast<SetLayer>(find("MKL_Set_Threading_Layer"));
    auto version = reinterpret_cast<VersionString>(find("MKL_Get_Version_String"));
    // Returns the layer in force: LP64 unless MKL_INTERFACE_LAYER or another user of
    // this libmkl_rt chose ILP64 first, and then 32-bit sizes would be misread.
    if (set_interface(kInterfaceLp64) != kInterfaceLp64) {
        dlclose(lib);
        throw InvalidArgument("mkl: '" + path +
                              "' is set to 64-bit integers (MKL_INTERFACE_LAYER=ILP64?); "
                              "siglayer passes 32-bit ones");
    }
    // Also returns the layer in force, which another user may have chosen first.
    if (set_threading(kThreadingSequential) == kThreadingIntel) {
        dlclose(lib);
        throw InvalidArgument("mkl: '" + path +
                              "' is set to Intel threading (MKL_THREADING_LAYER=INTEL?), "
                              "which would load a second OpenMP runtime");
    }
    char text[256] = {};
    version(text, static_cast<int>(sizeof text) - 1);
    // "Intel(R) oneAPI Math Kernel Library Version 2026.2-Product Build ..." -> "2026.2"
    std::string v(text);
    const std::size_t at = v.find("Version ");
    v = at == std::string::npos ? std::string("(version unknown)")
                                : v.substr(at + 8, v.find_first_of(" -", at + 8) - (at + 8));
    r.set_local = set_local;
    r.description = "MKL " + v + " (loaded at run time from " + path + ")";
    r.gemm.store(gemm);
    return r.description;
#else
    throw InvalidArgument("mkl: loading MKL at run time is supported on Linux only ('" + path +
                          "')");
#endif
}

bool mkl_bf16_loaded() {
    return runtime().gemm.load(std::memory_order_acquire) != nullptr;
}

std::string mkl_bf16_description() {
    return mkl_bf16_loaded() ? runtime().description : std::string();
}

void mkl_gemm_bf16(Op op_a, Op op_b, index_t M, index_t N, index_t K, float alpha,
                   const bfloat16* A, index_t lda, const bfloat16* B, index_t ldb, float beta,
                   float* C, index_t ldc) {
    static_assert(sizeof(bfloat16) == sizeof(std::uint16_t));
    Runtime& r = runtime();
    const GemmBf16 gemm = r.gemm.load(std::memory_order_acquire);  // before set_local
    const int previous = r.set_local(1);
    gemm(kRowMajor, op_a == Op::N ? kNoTrans : kTrans, op_b == Op::N ? kNoTrans : kTrans,
         static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha,
         reinterpret_cast<const std::uint16_t*>(A), static_cast<int>(lda),
         reinterpret_cast<const std::uint16_t*>(B), static_cast<int>(ldb), beta, C,
         static_cast<int>(ldc));
    r.set_local(previous);
}

}  // namespace siglayer::blas
