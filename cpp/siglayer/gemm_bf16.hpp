// siglayer's own bfloat16 GEMM, for CPUs with AVX512-BF16 (Zen 4, Cooper Lake, Sapphire
// Rapids and later): products of bfloat16 pairs accumulated in float by vdpbf16ps, on the
// calling thread alone. The BLAS wheels on PyPI have no bfloat16 GEMM and MKL's runs a
// generic path on AMD (docs/bfloat16.md has the measurements).
//
// Compiled with AVX-512 flags (gemm_bf16.cpp): call only on a CPU with AVX512-BF16 (the
// caller, blas.cpp, checks). Nothing here is a template or an inline function, so no AVX-512 code
// can stand in for another translation unit's.
#pragma once

#include <cstdint>

namespace siglayer {
using index_t = std::int64_t;  // as in views.hpp, whose inline code stays out of this file
}

namespace siglayer::gemm_bf16 {

// The packing buffers gemm() needs, in uint16 elements, whatever the sizes: a block of
// op(A) (kMC x kKC) and a block of op(B) (kKC x kNC), in pairs of k.
// Measured on Zen 4 (1 MB L2, 32 KB L1d; vdpbf16ps peak 228 GF/s a core), one thread:
// kKC = 512 gave 180-200 GF/s where 256 gave 155-180; 14-row tiles, kKC 768 or 1024, other
// kMC and kNC no better; a sliver of A kept in L1 across the slivers of B (which stream
// from L2) beat the other way round by 4-10 %.
constexpr index_t kMR = 12, kNR = 32;  // the register tile of C: 24 zmm accumulators
constexpr index_t kKC = 512;           // k per block: a kMR x kKC sliver of A is 12 KB (L1)
constexpr index_t kMC = 12 * kMR;      // rows of A per block (144 KB)
constexpr index_t kNC = 512;           // columns of B per block (512 KB, L2)
constexpr index_t kPackA = kMC * kKC;
constexpr index_t kPackB = kNC * kKC;

// C (M x N, row stride ldc) = alpha * op(A) . op(B) + beta * C, op(A) M x K and op(B)
// K x N, A and B bfloat16 (as bits) with row strides lda, ldb, stored transposed when
// trans_a / trans_b. beta == 0 never reads C (BLAS semantics). buf_a and buf_b hold at
// least kPackA and kPackB elements, 64-byte aligned.
// B is read in place, not packed into buf_b, when A has few rows and B's rows are close
// together (kInPlaceBRows, kInPlaceBStride in gemm_bf16.cpp): the same bits either way
// (but for which NaN comes out where alpha or beta is NaN: the compiler's operand order).
// Like every bfloat16 dot-product instruction (AMX's too), vdpbf16ps treats subnormal
// bfloat16 inputs as zero and flushes subnormal float results: products below 2^-126 in
// magnitude are lost (docs/bfloat16.md).
void gemm(bool trans_a, bool trans_b, index_t M, index_t N, index_t K, float alpha,
          const std::uint16_t* A, index_t lda, const std::uint16_t* B, index_t ldb, float beta,
          float* C, index_t ldc, std::uint16_t* buf_a, std::uint16_t* buf_b);

// The same product with op(B) packed once, for callers that multiply many blocks of rows
// of A by one B: packed_b_size(K, N) elements (a little over K x N) filled by pack_b_all,
// then gemm_packed_b as gemm without B (buf_a as for gemm). Same bits as gemm.
index_t packed_b_size(index_t K, index_t N);
void pack_b_all(bool trans_b, index_t K, index_t N, const std::uint16_t* B, index_t ldb,
                std::uint16_t* packed);
void gemm_packed_b(bool trans_a, index_t M, index_t N, index_t K, float alpha,
                   const std::uint16_t* A, index_t lda, const std::uint16_t* packed, float beta,
                   float* C, index_t ldc, std::uint16_t* buf_a);
// C (bfloat16 bits) = op(A) . op(B) with each float sum rounded once to nearest even, for
// K <= kKC only (one block of k, so that no partial sum is rounded): dx of a layer with up
// to kKC outputs, written without a float copy. The bits of gemm_packed_b's C (alpha 1,
// beta 0) rounded. Returns false, C untouched, when K > kKC.
bool gemm_packed_b_rounded(bool trans_a, index_t M, index_t N, index_t K, const std::uint16_t* A,
                           index_t lda, const std::uint16_t* packed, std::uint16_t* C, index_t ldc,
                           std::uint16_t* buf_a);

}  // namespace siglayer::gemm_bf16
