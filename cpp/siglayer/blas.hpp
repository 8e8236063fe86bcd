// The one adapter between the core and whichever BLAS the build chose
// (scipy-openblas32, a system CBLAS found by FindBLAS, or MKL).
#pragma once

#include <cstdint>
#include <string>

#include "dtypes.hpp"
#include "views.hpp"

namespace siglayer::blas {

enum class Op { N, T };

// C (M x N, row-major, leading dimension ldc) = alpha * op(A) * op(B) + beta * C,
// where op(A) is M x K and op(B) is K x N, both row-major with leading dims lda, ldb.
// A and B hold the storage type T, C the compute type: for bfloat16 the products of
// bfloat16 values accumulate in float (bf16_gemm_path() says how).
// Every size must already be checked to fit the BLAS integer (see max_int()).
template <class T>
void gemm(Op op_a, Op op_b, index_t M, index_t N, index_t K, compute_t<T> alpha, const T* A,
          index_t lda, const T* B, index_t ldb, compute_t<T> beta, compute_t<T>* C, index_t ldc);

// How a bfloat16 product runs:
//   blas:    the BLAS's own bfloat16 GEMM with float accumulation (MKL's
//            cblas_gemm_bf16bf16f32: AMX on Sapphire Rapids and later, AVX512-BF16 on
//            Zen 4 and Cooper Lake);
//   avx512bf16: siglayer's own bfloat16 GEMM (gemm_bf16.hpp: vdpbf16ps, 12 x 32 tiles),
//            on any CPU with AVX512-BF16 whatever the BLAS;
//   convert: each operand block widened to float (exactly) in this thread's scratch
//            memory, then the float GEMM. Any BLAS, any CPU.
// All multiply the same bfloat16 values and accumulate in float; they differ in the order
// of the additions, and the first two flush subnormal products to zero (as the bfloat16
// instructions do).
enum class Bf16Gemm { blas, convert, avx512bf16 };
Bf16Gemm bf16_gemm_path();
const char* bf16_gemm_name(Bf16Gemm path);
// Whether this build's BLAS has a bfloat16 GEMM, whether the CPU has bfloat16 dot
// product instructions (AVX512-BF16 or AMX-BF16) for it to run on, whether it has AMX-BF16,
// and whether siglayer's own GEMM can run (this build has it and the CPU has AVX512-BF16).
bool bf16_gemm_in_blas();
bool cpu_has_bf16();
bool cpu_has_amx_bf16();
bool own_bf16_gemm_available();
// siglayer's own bfloat16 GEMM with op(B) packed once (gemm_bf16.hpp), for the layer's
// products that multiply several panels of rows by one B; only on the avx512bf16 path.
// own_bf16_packed_size(K, N) uint16 elements hold what own_bf16_pack_b writes.
index_t own_bf16_packed_size(index_t K, index_t N);
void own_bf16_pack_b(Op op_b, index_t K, index_t N, const bfloat16* B, index_t ldb,
                     std::uint16_t* packed);
void own_bf16_gemm_packed_b(Op op_a, index_t M, index_t N, index_t K, const bfloat16* A,
                            index_t lda, const std::uint16_t* packed, float* C, index_t ldc);
// The same product rounded once to bfloat16 as it is stored (no float copy), for K up to
// own_bf16_rounded_max_k() (InvalidArgument past it).
index_t own_bf16_rounded_max_k();
void own_bf16_gemm_packed_b(Op op_a, index_t M, index_t N, index_t K, const bfloat16* A,
                            index_t lda, const std::uint16_t* packed, bfloat16* C, index_t ldc);
// "auto", "blas", "avx512bf16" or "convert"; InvalidArgument for another name, for "blas"
// in a build without it, or for "avx512bf16" where it cannot run. auto: blas on a CPU with
// AMX-BF16 when the BLAS has a bfloat16 GEMM (MKL's AMX code); else avx512bf16 where it
// runs (MKL runs a generic path on AMD's AVX512-BF16: slower than convert on Zen 4); else
// blas where the BLAS has one and the CPU has bfloat16 instructions; else convert. The
// SIGLAYER_BF16_GEMM variable goes through this at import.
void select_bf16_gemm(const std::string& name);

// Linux (5.16 and later) lets a process use AMX's tile registers only after it has asked
// for them, arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); an AMX instruction
// before that raises SIGILL, and a library that checks the permission falls back to a
// slower path. Whenever the blas path is chosen on a CPU with AMX-BF16 (MKL's AMX code)
// siglayer asks, once per process, whether or not MKL would ask itself (asking again is
// harmless). request_amx_permission makes the request (once; later calls return the first
// answer) and returns amx_permission(): "granted", "refused: <strerror>" (as on a CPU or
// kernel without AMX tile data) or, before any request, "not requested".
std::string request_amx_permission();
std::string amx_permission();

// MKL's bfloat16 GEMM loaded at run time (blas_mkl_runtime.cpp), for builds whose BLAS
// has none: load_mkl_bf16 opens libmkl_rt at `path` (once per process; later calls
// return the first description) and returns "MKL <version> (loaded at run time from
// <path>)"; InvalidArgument naming the path if it cannot. From then on
// bf16_gemm_in_blas() is true, and the blas path calls mkl_gemm_bf16 (same contract as
// gemm<bfloat16>, on the calling thread alone).
std::string load_mkl_bf16(const std::string& path);
bool mkl_bf16_loaded();
std::string mkl_bf16_description();  // "" until loaded
void mkl_gemm_bf16(Op op_a, Op op_b, index_t M, index_t N, index_t K, float alpha,
                   const bfloat16* A, index_t lda, const bfloat16* B, index_t ldb, float beta,
                   float* C, index_t ldc);

// Largest dimension or leading dimension the BLAS integer can hold.
index_t max_int();

// While alive, BLAS calls from this thread run on this thread alone. The core splits
// the products between its own OpenMP threads, each calling BLAS on its slab, so no
// thread ever waits on another inside a product (a busy-wait there stalls for a whole
// scheduler tick when another library's idle pool spins on one of the two cores).
// Call on the calling thread before a parallel region that uses SingleThreaded: undoes a
// change of the private scipy-openblas copy's thread count made from outside (e.g. by
// threadpoolctl's threadpool_limits(2)), which would make every slab spawn BLAS threads.
void claim_single_threaded();

class SingleThreaded {
public:
    SingleThreaded();
    ~SingleThreaded();
    SingleThreaded(const SingleThreaded&) = delete;
    SingleThreaded& operator=(const SingleThreaded&) = delete;

private:
    int previous_;
};

// While alive, BLAS calls from this thread run on n threads of the BLAS's own pool,
// the way a program that just calls the BLAS would run them. Only the bare product
// (gemm.hpp, the benchmarks' GEMM floor) uses this, to compare with the core's split.
class OwnThreads {
public:
    explicit OwnThreads(int n);
    ~OwnThreads();
    OwnThreads(const OwnThreads&) = delete;
    OwnThreads& operator=(const OwnThreads&) = delete;

private:
    int previous_;
};

void set_num_threads(int n);
int get_num_threads();

// "scipy-openblas 0.3.34 (OpenBLAS ... Haswell)", "MKL 2026.2", ...
std::string backend_name();
std::string backend_details();

// The most multiply-adds (M * N * K) for which this BLAS runs a float or double product
// with small-matrix kernels of its own, no packing; 0 where it has none. OpenBLAS on its
// SkylakeX, Cooperlake and SapphireRapids cores: 10^6 (kernel/x86_64/
// sgemm_small_kernel_permit_skylakex.c, neither operand transposed, or B alone; with A
// transposed it asks more of the shape; layer_detail.hpp's gemm_panel_rows uses it).
double small_gemm_multiply_adds();
// Sets that bound (0: none; negative: this BLAS's own, as above; NaN: InvalidArgument);
// returns the previous one. For tests and benchmarks, which force the panels on any BLAS.
double set_small_gemm_multiply_adds(double bound);

// One-time setup: route the BLAS's own threads through our OpenMP pool where the
// backend allows it, and replace its error handler so it never prints or exits.
void init();

}  // namespace siglayer::blas
