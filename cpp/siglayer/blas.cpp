// BLAS adapter. Exactly one of SIGLAYER_BLAS_SCIPY_OPENBLAS, SIGLAYER_BLAS_MKL or
// SIGLAYER_BLAS_SYSTEM is defined by CMakeLists.txt.
#include "blas.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <string>

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "gemm_bf16.hpp"
#include "kernels.hpp"
#include "operands.hpp"
#include "scratch.hpp"
#include "threads.hpp"

#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
#include <cblas.h>  // from scipy-openblas32: every symbol carries a scipy_ prefix
#define SIGLAYER_CBLAS(name) scipy_cblas_##name
#elif defined(SIGLAYER_BLAS_MKL)
#include <mkl.h>
#define SIGLAYER_CBLAS(name) cblas_##name
#else
#include <cblas.h>
#define SIGLAYER_CBLAS(name) cblas_##name
// A system CBLAS may be OpenBLAS, BLIS, FlexiBLAS, ...: thread control is looked
// up as weak symbols so that whichever one is there gets used.
extern "C" {
void openblas_set_num_threads(int) __attribute__((weak));
int openblas_set_num_threads_local(int) __attribute__((weak));
int openblas_get_num_threads(void) __attribute__((weak));
char* openblas_get_config(void) __attribute__((weak));
}
#endif

namespace siglayer::blas {

namespace {

CBLAS_TRANSPOSE to_cblas(Op op) {
    return op == Op::N ? CblasNoTrans : CblasTrans;
}

#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
// OpenBLAS's default handler prints and carries on; ours stays silent because
// every size was validated before the call (see max_int()).
void quiet_xerbla(const char*, const blasint*, size_t) {}
#endif

// C = alpha op(A) op(B) + beta C with one output column (N == 1) or row (M == 1) as the
// matrix-vector product it is: OpenBLAS's GEMM took 3-4x its GEMV's time there (a
// logistic-regression head, n_out = 1: forward 8192 x 256 x 1 float32 took 4x NumPy's
// x @ W, which NumPy runs as a GEMV). Returns false for every other shape. With beta == 0
// the output is zeroed first: GEMM never reads C then, and a GEMV's scaling of y by 0
// must not turn the garbage of a fresh buffer into NaN.
template <class T, class Gemv>
bool as_gemv(Gemv gemv, Op op_a, Op op_b, index_t M, index_t N, index_t K, T alpha, const T* A,
             index_t lda, const T* B, index_t ldb, T beta, T* C, index_t ldc) {
    if ((M != 1 && N != 1) || K == 0) return false;
    const index_t length = N == 1 ? M : N, inc_y = N == 1 ? ldc : 1;
    if (beta == T(0))
        for (index_t i = 0; i < length; ++i) C[i * inc_y] = T(0);
    if (N == 1) {
        // y = C's column (M) = op(A) (M x K, stored K x M for op T) . op(B)'s column (K
        // values, ldb apart when B is stored K x 1, adjacent when stored 1 x K).
        gemv(CblasRowMajor, to_cblas(op_a), op_a == Op::N ? M : K, op_a == Op::N ? K : M, alpha, A,
             lda, B, op_b == Op::N ? ldb : 1, beta, C, inc_y);
    } else {
        // y = C's row (N) = op(B)^T (N x K; B stored K x N for op N, N x K for op T) .
        // op(A)'s row (K values, adjacent when A is stored 1 x K, lda apart when K x 1).
        gemv(CblasRowMajor, op_b == Op::N ? CblasTrans : CblasNoTrans, op_b == Op::N ? K : N,
             op_b == Op::N ? N : K, alpha, B, ldb, A, op_a == Op::N ? 1 : lda, beta, C, inc_y);
    }
    return true;
}

// C = op(A) op(B) with an inner dimension of one (K == 1, alpha 1, beta 0) as the outer
// product it is, each C[i, j] = a[i] b[j] written once: OpenBLAS's GEMM took longer
// there than PyTorch's whole backward (dx of a layer with n_out = 1, 8192 x 256 x 1).
// Exact: one product each, as in any GEMM. Returns false for every other case.
template <class T>
bool as_outer_product(Op op_a, Op op_b, index_t M, index_t N, index_t K, T alpha, const T* A,
                      index_t lda, const T* B, index_t ldb, T beta, T* C, index_t ldc) {
    if (K != 1 || alpha != T(1) || beta != T(0)) return false;
    const index_t inc_a = op_a == Op::N ? lda : 1, inc_b = op_b == Op::N ? 1 : ldb;
    for (index_t i = 0; i < M; ++i) {
        const T a = A[i * inc_a];
        T* row = C + i * ldc;
        if (inc_b == 1) {
            for (index_t j = 0; j < N; ++j) row[j] = a * B[j];
        } else {
            for (index_t j = 0; j < N; ++j) row[j] = a * B[j * inc_b];
        }
    }
    return true;
}

}  // namespace

template <>
void gemm<float>(Op op_a, Op op_b, index_t M, index_t N, index_t K, float alpha, const float* A,
                 index_t lda, const float* B, index_t ldb, float beta, float* C, index_t ldc) {
    if (as_gemv(SIGLAYER_CBLAS(sgemv), op_a, op_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) ||
        as_outer_product(op_a, op_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
        return;
    SIGLAYER_CBLAS(sgemm)
    (CblasRowMajor, to_cblas(op_a), to_cblas(op_b), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm<double>(Op op_a, Op op_b, index_t M, index_t N, index_t K, double alpha, const double* A,
                  index_t lda, const double* B, index_t ldb, double beta, double* C, index_t ldc) {
    if (as_gemv(SIGLAYER_CBLAS(dgemv), op_a, op_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) ||
        as_outer_product(op_a, op_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
        return;
    SIGLAYER_CBLAS(dgemm)
    (CblasRowMajor, to_cblas(op_a), to_cblas(op_b), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

namespace {

// The stored block of an operand (op N: rows x cols; op T: cols x rows), widened to float
// in this thread's scratch slot with leading dimension = its stored row length.
const float* widened(const bfloat16* A, index_t lda, Op op, index_t rows, index_t cols,
                     Scratch::Slot slot, index_t& ld) {
    const index_t stored_rows = op == Op::N ? rows : cols;
    ld = op == Op::N ? cols : rows;
    float* out =
        Scratch::for_this_thread().get<float>(slot, static_cast<std::size_t>(stored_rows * ld));
    widen_block(out, MatrixView<bfloat16>{A, stored_rows, ld, lda, 1}, 0, stored_rows, 0, ld);
    return out;
}

// 1 until the AMX permission was requested, then 0 (granted) or -errno.
std::atomic<int> amx_request{1};

// consult_isa: with the elementwise kernels forced below avx512bf16 (SIGLAYER_ISA=avx2,
// say, to measure an AVX2 machine's path), choose as on a CPU without bfloat16
// instructions: convert. Not during static initialization (bf16_path below), when the
// kernels' own state may not be initialized yet and nothing has been forced.
Bf16Gemm auto_bf16_path(bool consult_isa) {
    if (consult_isa && kernels::active_isa() != "avx512bf16") return Bf16Gemm::convert;
    if (bf16_gemm_in_blas() && cpu_has_amx_bf16()) {
        request_amx_permission();
        return Bf16Gemm::blas;
    }
    if (own_bf16_gemm_available()) return Bf16Gemm::avx512bf16;
    if (bf16_gemm_in_blas() && cpu_has_bf16()) return Bf16Gemm::blas;
    return Bf16Gemm::convert;
}

std::atomic<Bf16Gemm> bf16_path{auto_bf16_path(false)};

}  // namespace

template <>
void gemm<bfloat16>(Op op_a, Op op_b, index_t M, index_t N, index_t K, float alpha,
                    const bfloat16* A, index_t lda, const bfloat16* B, index_t ldb, float beta,
                    float* C, index_t ldc) {
#if defined(SIGLAYER_BLAS_MKL)
    if (bf16_path.load(std::memory_order_relaxed) == Bf16Gemm::blas) {
        static_assert(sizeof(MKL_BF16) == sizeof(bfloat16));
        cblas_gemm_bf16bf16f32(CblasRowMajor, to_cblas(op_a), to_cblas(op_b), M, N, K, alpha,
                               reinterpret_cast<const MKL_BF16*>(A), lda,
                               reinterpret_cast<const MKL_BF16*>(B), ldb, beta, C, ldc);
        return;
    }
#else
    if (bf16_path.load(std::memory_order_relaxed) == Bf16Gemm::blas) {
        mkl_gemm_bf16(op_a, op_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#endif
#if defined(SIGLAYER_HAVE_GEMM_BF16)
    if (bf16_path.load(std::memory_order_relaxed) == Bf16Gemm::avx512bf16) {
        Scratch& scratch = Scratch::for_this_thread();
        auto* pack_a = scratch.get<std::uint16_t>(Scratch::gemm_a, gemm_bf16::kPackA);
        auto* pack_b = scratch.get<std::uint16_t>(Scratch::gemm_b, gemm_bf16::kPackB);
        gemm_bf16::gemm(
            op_a == Op::T, op_b == Op::T, M, N, K, alpha, reinterpret_cast<const std::uint16_t*>(A),
            lda, reinterpret_cast<const std::uint16_t*>(B), ldb, beta, C, ldc, pack_a, pack_b);
        return;
    }
#endif
    // B once; op(A) in panels of rows small enough to stay in cache while the GEMM reads
    // them (at least 256 rows, so that the BLAS's packing of B is amortized).
    index_t ldb_f = 0;
    const float* b = widened(B, ldb, op_b, K, N, Scratch::gemm_b, ldb_f);
    const index_t panel = std::max<index_t>(256, 65536 / std::max<index_t>(K, 1) / 16 * 16);
    for (index_t i0 = 0; i0 < M; i0 += panel) {
        const index_t m = std::min(panel, M - i0);
        index_t lda_f = 0;
        const bfloat16* Ai = op_a == Op::N ? A + i0 * lda : A + i0;
        const float* a = widened(Ai, lda, op_a, m, K, Scratch::gemm_a, lda_f);
        gemm<float>(op_a, op_b, m, N, K, alpha, a, std::max<index_t>(1, lda_f), b,
                    std::max<index_t>(1, ldb_f), beta, C + i0 * ldc, ldc);
    }
}

#if defined(SIGLAYER_HAVE_GEMM_BF16)
index_t own_bf16_packed_size(index_t K, index_t N) {
    return gemm_bf16::packed_b_size(K, N);
}

void own_bf16_pack_b(Op op_b, index_t K, index_t N, const bfloat16* B, index_t ldb,
                     std::uint16_t* packed) {
    gemm_bf16::pack_b_all(op_b == Op::T, K, N, reinterpret_cast<const std::uint16_t*>(B), ldb,
                          packed);
}

void own_bf16_gemm_packed_b(Op op_a, index_t M, index_t N, index_t K, const bfloat16* A,
                            index_t lda, const std::uint16_t* packed, float* C, index_t ldc) {
    auto* pack_a =
        Scratch::for_this_thread().get<std::uint16_t>(Scratch::gemm_a, gemm_bf16::kPackA);
    gemm_bf16::gemm_packed_b(op_a == Op::T, M, N, K, 1.0f,
                             reinterpret_cast<const std::uint16_t*>(A), lda, packed, 0.0f, C, ldc,
                             pack_a);
}

index_t own_bf16_rounded_max_k() {
    return gemm_bf16::kKC;
}

void own_bf16_gemm_packed_b(Op op_a, index_t M, index_t N, index_t K, const bfloat16* A,
                            index_t lda, const std::uint16_t* packed, bfloat16* C, index_t ldc) {
    auto* pack_a =
        Scratch::for_this_thread().get<std::uint16_t>(Scratch::gemm_a, gemm_bf16::kPackA);
    if (!gemm_bf16::gemm_packed_b_rounded(op_a == Op::T, M, N, K,
                                          reinterpret_cast<const std::uint16_t*>(A), lda, packed,
                                          reinterpret_cast<std::uint16_t*>(C), ldc, pack_a))
        throw InvalidArgument("bf16_gemm: the rounded product takes K <= " +
                              std::to_string(gemm_bf16::kKC) + ", got " + std::to_string(K));
}
#else
index_t own_bf16_rounded_max_k() {
    return 0;
}
void own_bf16_gemm_packed_b(Op, index_t, index_t, index_t, const bfloat16*, index_t,
                            const std::uint16_t*, bfloat16*, index_t) {
    throw InvalidArgument("bf16_gemm: this build has no avx512bf16 GEMM");
}
index_t own_bf16_packed_size(index_t, index_t) {
    throw InvalidArgument("bf16_gemm: this build has no avx512bf16 GEMM");
}
void own_bf16_pack_b(Op, index_t, index_t, const bfloat16*, index_t, std::uint16_t*) {
    throw InvalidArgument("bf16_gemm: this build has no avx512bf16 GEMM");
}
void own_bf16_gemm_packed_b(Op, index_t, index_t, index_t, const bfloat16*, index_t,
                            const std::uint16_t*, float*, index_t) {
    throw InvalidArgument("bf16_gemm: this build has no avx512bf16 GEMM");
}
#endif

Bf16Gemm bf16_gemm_path() {
    return bf16_path.load();
}

const char* bf16_gemm_name(Bf16Gemm path) {
    switch (path) {
        case Bf16Gemm::blas:
            return "blas";
        case Bf16Gemm::avx512bf16:
            return "avx512bf16";
        case Bf16Gemm::convert:
            return "convert";
    }
    return "?";
}

bool bf16_gemm_in_blas() {
#if defined(SIGLAYER_BLAS_MKL)
    return true;
#else
    return mkl_bf16_loaded();
#endif
}

bool cpu_has_bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#else
    return false;
#endif
}

bool cpu_has_amx_bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("amx-bf16");
#else
    return false;
#endif
}

std::string request_amx_permission() {
    static std::once_flag once;
    std::call_once(once, [] {
#if defined(__linux__) && defined(__x86_64__)
        constexpr long kReqXcompPerm = 0x1023;   // ARCH_REQ_XCOMP_PERM, asm/prctl.h
        constexpr long kXfeatureXtiledata = 18;  // the XSAVE component of the tile data
        const long rc = syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata);
        amx_request.store(rc == 0 ? 0 : -errno);
#else
        amx_request.store(-ENOSYS);
#endif
    });
    return amx_permission();
}

std::string amx_permission() {
    const int state = amx_request.load();
    if (state == 1) return "not requested";
    if (state == 0) return "granted";
    return std::string("refused: ") + std::strerror(-state);
}

bool own_bf16_gemm_available() {
#if defined(SIGLAYER_HAVE_GEMM_BF16)
    return kernels::cpu_has_avx512bf16();  // the flags gemm_bf16.cpp is compiled with
#else
    return false;
#endif
}

void select_bf16_gemm(const std::string& name) {
    if (name == "auto") {
        bf16_path.store(auto_bf16_path(true));
    } else if (name == "convert") {
        bf16_path.store(Bf16Gemm::convert);
    } else if (name == "blas") {
        if (!bf16_gemm_in_blas())
            throw InvalidArgument(
                "bf16_gemm: this build's BLAS (" + backend_name() +
                ") has no bfloat16 GEMM and MKL's is not loaded: pip install mkl (siglayer's "
                "mkl extra; or build with SIGLAYER_BLAS=mkl); import siglayer loads it when "
                "SIGLAYER_BF16_GEMM=blas or the CPU has AMX-BF16, and at run time "
                "siglayer._core.load_mkl_bf16(path to libmkl_rt) loads it");
        if (cpu_has_amx_bf16()) request_amx_permission();
        bf16_path.store(Bf16Gemm::blas);
    } else if (name == "avx512bf16") {
        if (!own_bf16_gemm_available())
            throw InvalidArgument(
                "bf16_gemm: siglayer's bfloat16 GEMM needs a CPU with AVX512-BF16 (Zen 4, "
                "Cooper Lake, Sapphire Rapids or later) and an x86-64 build; this one cannot "
                "run it");
        bf16_path.store(Bf16Gemm::avx512bf16);
    } else {
        throw InvalidArgument("bf16_gemm: expected one of auto, blas, avx512bf16, convert, got '" +
                              name + "'");
    }
}

index_t max_int() {
#if defined(SIGLAYER_BLAS_MKL)
    return sizeof(MKL_INT) == 8 ? LLONG_MAX : INT_MAX;
#else
    return sizeof(blasint) == 8 ? LLONG_MAX : INT_MAX;
#endif
}

// The scipy-openblas copy is private to siglayer and set to one thread once, in init().
void claim_single_threaded() {
#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
    if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
#endif
}

SingleThreaded::SingleThreaded() {
#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
    previous_ = 1;
#elif defined(SIGLAYER_BLAS_MKL)
    previous_ = mkl_set_num_threads_local(1);
#else
    previous_ = openblas_set_num_threads_local ? openblas_set_num_threads_local(1) : 0;
#endif
}

SingleThreaded::~SingleThreaded() {
#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
#elif defined(SIGLAYER_BLAS_MKL)
    mkl_set_num_threads_local(previous_);
#else
    if (openblas_set_num_threads_local) openblas_set_num_threads_local(previous_);
#endif
}

OwnThreads::OwnThreads(int n) {
#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
    // Process-wide, unlike the others: back to one thread when done (see init()).
    previous_ = 1;
    scipy_openblas_set_num_threads(n);
#elif defined(SIGLAYER_BLAS_MKL)
    previous_ = mkl_set_num_threads_local(n);
#else
    previous_ = openblas_set_num_threads_local ? openblas_set_num_threads_local(n) : 0;
#endif
}

OwnThreads::~OwnThreads() {
#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
    scipy_openblas_set_num_threads(previous_);
#elif defined(SIGLAYER_BLAS_MKL)
    mkl_set_num_threads_local(previous_);
#else
    if (openblas_set_num_threads_local) openblas_set_num_threads_local(previous_);
#endif
}

void set_num_threads(int n) {
#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
    (void)n;  // stays at one thread: the parallelism is siglayer's own (see SingleThreaded)
#elif defined(SIGLAYER_BLAS_MKL)
    mkl_set_num_threads(n);
#else
    if (openblas_set_num_threads) openblas_set_num_threads(n);
#endif
}

int get_num_threads() {
#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
    return scipy_openblas_get_num_threads();
#elif defined(SIGLAYER_BLAS_MKL)
    return mkl_get_max_threads();
#else
    return openblas_get_num_threads ? openblas_get_num_threads() : threads::max_threads();
#endif
}

std::string backend_name() {
#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
    return "scipy-openblas32";
#elif defined(SIGLAYER_BLAS_MKL)
    return "mkl";
#else
    return openblas_get_config ? "system (OpenBLAS)" : "system";
#endif
}

std::string backend_details() {
#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
    return std::string(scipy_openblas_get_config()) + " core=" + scipy_openblas_get_corename();
#elif defined(SIGLAYER_BLAS_MKL)
    MKLVersion v;
    mkl_get_version(&v);
    return "MKL " + std::to_string(v.MajorVersion) + "." + std::to_string(v.UpdateVersion) + " (" +
           v.Processor + ")";
#else
    return openblas_get_config ? std::string(openblas_get_config()) : std::string("CBLAS");
#endif
}

namespace {

// This BLAS's own bound, decided once (the core OpenBLAS picked does not change).
double small_gemm_auto() {
    static const double own = [] {
#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
        const std::string core = scipy_openblas_get_corename();
        return core == "SkylakeX" || core == "Cooperlake" || core == "SapphireRapids" ? 1e6 : 0.0;
#else
        return 0.0;
#endif
    }();
    return own;
}

std::atomic<double> small_gemm_set{-1.0};  // negative: not set, this BLAS's own

}  // namespace

double small_gemm_multiply_adds() {
    const double set = small_gemm_set.load(std::memory_order_relaxed);
    return set < 0.0 ? small_gemm_auto() : set;
}

double set_small_gemm_multiply_adds(double bound) {
    if (std::isnan(bound)) throw InvalidArgument("small_gemm: bound must be a number, got nan");
    const double previous = small_gemm_multiply_adds();
    small_gemm_set.store(bound < 0.0 ? -1.0 : bound, std::memory_order_relaxed);
    return previous;
}

void init() {
#if defined(SIGLAYER_BLAS_SCIPY_OPENBLAS)
    scipy_openblas_set_num_threads(1);
    scipy_openblas_set_xerbla(quiet_xerbla);
#endif
}

}  // namespace siglayer::blas
