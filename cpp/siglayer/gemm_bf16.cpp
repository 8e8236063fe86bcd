// siglayer's bfloat16 GEMM on AVX512-BF16 (gemm_bf16.hpp). Compiled with AVX-512 flags
// (CMakeLists.txt): called only on a CPU that has them. No standard-library templates
// and nothing with external linkage but the functions of gemm_bf16.hpp (the rest is in
// an anonymous namespace), so that no instruction of this file can be picked by the
// linker for code that runs elsewhere.
//
// The usual blocking (Goto and van de Geijn): for each block of kNC columns of op(B) and
// kKC of k, op(B) is packed into slivers of kNR columns; for each block of kMC rows of
// op(A), op(A) is packed into slivers of kMR rows; the microkernel multiplies a sliver of
// A (kept in L1) by each sliver of B in turn (streamed from L2) into a kMR x kNR tile of C
// held in 24 zmm registers. Three departures for narrow products: a sliver of B with fewer
// columns multiplies only the next multiple of 8 of them (16 in zmm, a last 8 in ymm: the
// padding not multiplied; micro); where a sliver of A would meet few slivers of B (or
// k is short) the microkernel reads A's pairs from its rows in place instead of packing
// them (multiply_block); and where A has few rows and B's rows lie close together, it
// reads B's rows in place too, pairing them as it goes (RowsB, gemm).
//
// Packed layouts, in pairs of k (vdpbf16ps multiplies pairs: acc[j] += a[2p] b[2p][j] +
// a[2p+1] b[2p+1][j], each bfloat16 pair a 32-bit lane):
//   A sliver (kMR rows x kc):  pa[p][r] = (A(r, 2p), A(r, 2p+1)),       kp x kMR pairs;
//   B sliver (kc x kNR cols):  pb[p][j] = (B(2p, j), B(2p+1, j)),       kp x kNR pairs;
// with kp = ceil(kc / 2); rows, columns and the odd k past the end are zero.
#include "gemm_bf16.hpp"

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace siglayer::gemm_bf16 {

namespace {

using u16 = std::uint16_t;
using u32 = std::uint32_t;

index_t min_of(index_t a, index_t b) {
    return a < b ? a : b;
}

u32 pair(u16 lo, u16 hi) {
    return static_cast<u32>(lo) | (static_cast<u32>(hi) << 16);
}

u32 load_pair(const u16* p) {  // p[0], p[1], any alignment
    u32 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

__mmask32 first_lanes32(index_t n) {
    return n >= 32 ? ~__mmask32{0} : (__mmask32{1} << n) - 1;
}

__mmask16 first_lanes16(index_t n) {
    return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// Two rows of 32 bfloat16 (the second may be absent) interleaved into 32 pairs, stored as
// 64 u16 at dst. n <= 32 values are read from each row; the rest are zero.
void interleave_rows(u16* dst, const u16* row0, const u16* row1, index_t n) {
    const __mmask32 mask = first_lanes32(n);
    const __m512i r0 = _mm512_maskz_loadu_epi16(mask, row0);
    const __m512i r1 = row1 ? _mm512_maskz_loadu_epi16(mask, row1) : _mm512_setzero_si512();
    // Lane t of the result: row0[t/2] for even t, row1[t/2] for odd t (and +16 for hi).
    alignas(64) static constexpr u16 lo_idx[32] = {0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,
                                                   37, 6,  38, 7,  39, 8,  40, 9,  41, 10, 42,
                                                   11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    alignas(64) static constexpr u16 hi_idx[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21,
                                                   53, 22, 54, 23, 55, 24, 56, 25, 57, 26, 58,
                                                   27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
    const __m512i lo = _mm512_permutex2var_epi16(r0, _mm512_load_si512(lo_idx), r1);
    const __m512i hi = _mm512_permutex2var_epi16(r0, _mm512_load_si512(hi_idx), r1);
    _mm512_storeu_si512(dst, lo);
    _mm512_storeu_si512(dst + 32, hi);
}

// Transposes the 16 x 16 matrix of 32-bit lanes in r: afterwards r[c] holds lane c of
// each r[i] before, in order i = 0..15. Four rounds of shuffles within 128-bit lanes, then
// across them.
void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {  // per 128-bit lane L: rows i, i+1 of lanes 4L..4L+3
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);      // (i,4L) (i+1,4L) (i,4L+1) (i+1,4L+1)
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);  // the same for 4L+2, 4L+3
    }
    __m512i u[16];  // u[4g + e], lane L: rows 4g..4g+3 of column 4L + e
    for (int g = 0; g < 4; ++g) {
        const __m512i* a = t + 4 * g;
        u[4 * g + 0] = _mm512_unpacklo_epi64(a[0], a[2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(a[0], a[2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(a[1], a[3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(a[1], a[3]);
    }
    for (int e = 0; e < 4; ++e) {  // column 4L + e = lane L of u[e], u[4+e], u[8+e], u[12+e]
        const __m512i lo01 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x44);
        const __m512i hi01 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x44);
        const __m512i lo23 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xEE);
        const __m512i hi23 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xEE);
        r[e] = _mm512_shuffle_i32x4(lo01, hi01, 0x88);
        r[4 + e] = _mm512_shuffle_i32x4(lo01, hi01, 0xDD);
        r[8 + e] = _mm512_shuffle_i32x4(lo23, hi23, 0x88);
        r[12 + e] = _mm512_shuffle_i32x4(lo23, hi23, 0xDD);
    }
}

// out[p * width + t] = (src_t[2p], src_t[2p + 1]) for t < count, where src_t = src +
// t * stride holds kc contiguous values (the pair past an odd kc is (src_t[kc - 1], 0)),
// and 0 for count <= t < width: a sliver from rows (or columns) whose k are contiguous.
// width is kMR or kNR (a multiple of 4). Sixteen pairs of sixteen lines at a time: one load
// per line, a transpose, a store per pair; the pairs past the last multiple of 16 one by
// one.
void gather_pairs(u32* out, index_t width, index_t count, const u16* src, index_t stride,
                  index_t kc) {
    const index_t kp = (kc + 1) / 2, full = kc / 2;
    index_t p0 = 0;
    for (; p0 + 16 <= full; p0 += 16) {
        for (index_t t0 = 0; t0 < width; t0 += 16) {
            __m512i r[16];
            for (int i = 0; i < 16; ++i) {
                const index_t t = t0 + i;
                r[i] = t < count ? _mm512_loadu_si512(src + t * stride + 2 * p0)
                                 : _mm512_setzero_si512();
            }
            transpose16(r);
            const __mmask16 lanes = first_lanes16(width - t0);
            for (int q = 0; q < 16; ++q)
                _mm512_mask_storeu_epi32(out + (p0 + q) * width + t0, lanes, r[q]);
        }
    }
    for (index_t t = 0; t < width; ++t) {
        if (t >= count) {
            for (index_t p = p0; p < kp; ++p) out[p * width + t] = 0;
            continue;
        }
        const u16* line = src + t * stride;
        for (index_t p = p0; p < full; ++p) out[p * width + t] = load_pair(line + 2 * p);
        if (kc % 2) out[full * width + t] = pair(line[kc - 1], 0);
    }
}

// op(B)[k0 : k0 + kc, j0 : j0 + nc] into slivers of kNR columns (layout at the top).
void pack_b(u16* dst, bool trans, const u16* B, index_t ldb, index_t k0, index_t kc, index_t j0,
            index_t nc) {
    const index_t kp = (kc + 1) / 2;
    if (!trans) {
        // B(k, j) = B[k * ldb + j]: rows k and k + 1 interleaved, a vector at a time, along
        // the rows (reading them in order; the slivers are written side by side).
        for (index_t p = 0; p < kp; ++p) {
            const u16* row0 = B + (k0 + 2 * p) * ldb + j0;
            const u16* row1 = 2 * p + 1 < kc ? row0 + ldb : nullptr;
            for (index_t js = 0; js < nc; js += kNR)
                interleave_rows(dst + js * 2 * kp + p * 2 * kNR, row0 + js,
                                row1 ? row1 + js : nullptr, min_of(kNR, nc - js));
        }
        return;
    }
    // B(k, j) = B[j * ldb + k]: each column's k are contiguous, a pair is one load.
    for (index_t js = 0; js < nc; js += kNR)
        gather_pairs(reinterpret_cast<u32*>(dst + js * 2 * kp), kNR, min_of(kNR, nc - js),
                     B + (j0 + js) * ldb + k0, ldb, kc);
}

// How far ahead pack_a fetches the rows of a transposed A, in pairs of rows (below).
constexpr index_t kPrefetchPairs = 4;

// Asks for the cache lines that hold p[0, count) (each line from its start, so that the
// last one is fetched however p is aligned).
void prefetch_lines(const u16* p, index_t count) {
    const auto first = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t end = first + static_cast<std::uintptr_t>(count) * sizeof(u16);
    for (std::uintptr_t line = first & ~std::uintptr_t{63}; line < end; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
}

// op(A)[i0 : i0 + mc, k0 : k0 + kc] into slivers of kMR rows (layout at the top).
void pack_a(u16* dst, bool trans, const u16* A, index_t lda, index_t i0, index_t mc, index_t k0,
            index_t kc) {
    const index_t kp = (kc + 1) / 2;
    if (trans) {
        // A(i, k) = A[k * lda + i]: rows k and k + 1 of the stored matrix paired, each pair
        // a 32-bit lane (row k's value low, k + 1's high), kMR lanes into each sliver. Pair
        // by pair along the block's mc columns, so that each stored row is read once, in
        // order (sliver by sliver, each pass read 24 bytes of kc rows: 1.02-1.13x the time
        // of the whole product x^T . dZ, one and two threads, Zen 5, 256 x 512 x 512 to
        // 4096 x 2048 x 2048 and 8192 x 256 x 64; the same bits). The rows are lda apart,
        // a page or more in a wide layer, where the hardware prefetchers do not follow, so
        // the rows of a pair kPrefetchPairs on are fetched ahead (x^T . dZ, one-off A/B on
        // the same machine, 1 and 2 threads, 11 interleaved rounds, two runs: 0.85-0.97x the
        // time for x of 4096 x 2048 and 8192 x 1024, 0.98-1.02 for 256 x 512 and 1024 x
        // 1024; 2, 8 and 16 pairs ahead no better than 4).
        for (index_t p = 0; p < kp; ++p) {
            const u16* row0 = A + (k0 + 2 * p) * lda + i0;
            if (2 * (p + kPrefetchPairs) + 1 < kc) {  // the two rows kPrefetchPairs pairs on
                const u16* ahead = row0 + 2 * kPrefetchPairs * lda;
                prefetch_lines(ahead, mc);
                prefetch_lines(ahead + lda, mc);
            }
            const bool odd_tail = 2 * p + 1 == kc;  // the last pair of an odd kc: (v, 0)
            for (index_t is = 0; is < mc; is += kMR) {
                const __mmask16 lanes = first_lanes16(min_of(kMR, mc - is));  // rest zero
                const __m512i lo =
                    _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, row0 + is));
                const __m512i hi =
                    odd_tail
                        ? _mm512_setzero_si512()
                        : _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, row0 + lda + is));
                u32* out = reinterpret_cast<u32*>(dst + is * 2 * kp);  // kp x kMR pairs
                _mm512_mask_storeu_epi32(out + p * kMR, first_lanes16(kMR),
                                         _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        }
        return;
    }
    for (index_t is = 0; is < mc; is += kMR) {
        // A(i, k) = A[i * lda + k]: a pair is one load from row i.
        gather_pairs(reinterpret_cast<u32*>(dst + is * 2 * kp), kMR, min_of(kMR, mc - is),
                     A + (i0 + is) * lda + k0, lda, kc);
    }
}

// Where the microkernel reads A's pairs from: a packed sliver (kp x kMR pairs), or, where
// multiply_block reads A in place (a sliver used against four slivers of B or fewer, or a
// short block of k), the kMR rows of A as stored (k contiguous; pairs loaded in place, so
// no pass over A to pack it; the last pair of an odd kc is (A(r, kc - 1), 0)).
struct PackedA {
    const u32* pa;
    index_t kp;
    index_t full() const { return kp; }
    u32 pair(index_t p, int r) const { return pa[p * kMR + r]; }
    u32 tail(int r) const { return pair(kp - 1, r); }
};
struct RowsA {
    const u16* a;  // A(0, 0) of the sliver
    index_t lda, kc;
    index_t full() const { return kc / 2; }
    u32 pair(index_t p, int r) const { return load_pair(a + r * lda + 2 * p); }
    u32 tail(int r) const { return a[r * lda + kc - 1]; }
};

// Where the microkernel reads B's pairs from: a packed sliver (kp x kNR pairs), or, where
// gemm() reads B in place (few rows of A, for which packing B would be a pass over all of
// B for a few slivers of A: dW^T = dZ^T . x), up to kNR columns of B's rows as stored
// (RowsB). load<Lanes>(p, z) puts pair p of columns 0-15 in z[0], of 16-31 in z[1] (in
// column order for PackedB; RowsB's lanes are shuffled, below).
struct PackedB {
    static constexpr bool kShuffled = false;
    const u32* pb;
    index_t kp;
    index_t full() const { return kp; }
    template <int Lanes>
    void load(index_t p, __m512i z[2]) const {  // only the lanes the microkernel reads
        const u32* row = pb + p * kNR;
        for (int h = 0; h < Lanes / 16; ++h) z[h] = _mm512_loadu_si512(row + 16 * h);
        if constexpr (Lanes % 16 != 0)
            z[Lanes / 16] = _mm512_castsi256_si512(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 16 * (Lanes / 16))));
    }
    template <int Lanes>
    void tail(__m512i z[2]) const {
        load<Lanes>(kp - 1, z);
    }
};
// Rows 2p and 2p + 1 of B (columns past the sliver's n read as zero) interleaved at each
// step by vpunpck{l,h}wd, which pair them within 128-bit lanes, for as many columns as the
// microkernel multiplies (Lanes, as for a packed sliver). The pairs land in the order of
// the unpacks (kShuffled): with 32 lanes z[0] holds the pairs of columns 0-3, 8-11, 16-19,
// 24-27 and z[1] those of 4-7, 12-15, 20-23, 28-31; with 16 (and the first 16 of 24),
// z[0] holds 0-3, 8-11, 4-7, 12-15; a last 8 (ymm) are in order. The microkernel puts its
// sums back in column order before storing them (unshuffle). The same pairs as pack_b's
// in other lanes: the same sums, the same bits. Measured on Zen 4 (dW^T = dZ^T . x, K
// 8192, 256 columns, 8-64 rows, one thread), against a build that skipped the interleave
// (wrong sums, same traffic): the unpacks cost 2-4 % of the time, vpermt2w (pairs in
// column order) 10-13 %.
struct RowsB {
    static constexpr bool kShuffled = true;
    const u16* b;  // B(0, 0) of the sliver
    index_t ldb, kc;
    __mmask32 mask;  // the sliver's columns
    index_t full() const { return kc / 2; }
    // Pairs of rows r0 and r1 (r1 == nullptr: zeros, the last pair of an odd kc).
    template <int Lanes>
    void pairs(const u16* r0, const u16* r1, __m512i z[2]) const {
        constexpr int kZ = Lanes / 16;
        if constexpr (kZ == 2) {
            const __m512i v0 = _mm512_maskz_loadu_epi16(mask, r0);
            const __m512i v1 = r1 ? _mm512_maskz_loadu_epi16(mask, r1) : _mm512_setzero_si512();
            z[0] = _mm512_unpacklo_epi16(v0, v1);
            z[1] = _mm512_unpackhi_epi16(v0, v1);
        } else if constexpr (kZ == 1) {
            const auto m = static_cast<__mmask16>(mask);
            const __m256i v0 = _mm256_maskz_loadu_epi16(m, r0);
            const __m256i v1 = r1 ? _mm256_maskz_loadu_epi16(m, r1) : _mm256_setzero_si256();
            z[0] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_unpacklo_epi16(v0, v1)),
                                      _mm256_unpackhi_epi16(v0, v1), 1);
        }
        if constexpr (Lanes % 16 != 0) {  // a last 8 columns, in order
            const auto m = static_cast<__mmask8>(mask >> (16 * kZ));
            const __m128i v0 = _mm_maskz_loadu_epi16(m, r0 + 16 * kZ);
            const __m128i v1 = r1 ? _mm_maskz_loadu_epi16(m, r1 + 16 * kZ) : _mm_setzero_si128();
            z[kZ] = _mm512_castsi256_si512(
                _mm256_set_m128i(_mm_unpackhi_epi16(v0, v1), _mm_unpacklo_epi16(v0, v1)));
        }
    }
    template <int Lanes>
    void load(index_t p, __m512i z[2]) const {
        const u16* row0 = b + 2 * p * ldb;
        pairs<Lanes>(row0, row0 + ldb, z);
    }
    template <int Lanes>
    void tail(__m512i z[2]) const {  // the last pair of an odd kc: (B(kc - 1, j), 0)
        pairs<Lanes>(b + (kc - 1) * ldb, nullptr, z);
    }
};

// The sums of a row of a kShuffled tile put back in column order: with two zmm registers
// (c0: columns 0-3, 8-11, 16-19, 24-27; c1: 4-7, 12-15, 20-23, 28-31), 0-15 in c0 and
// 16-31 in c1; with one (0-3, 8-11, 4-7, 12-15), 0-15.
void unshuffle(__m512& c0, __m512& c1) {
    const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i hi =
        _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    const __m512 a = _mm512_permutex2var_ps(c0, lo, c1);
    c1 = _mm512_permutex2var_ps(c0, hi, c1);
    c0 = a;
}
void unshuffle(__m512& c0) {
    const __m512i order = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
    c0 = _mm512_permutexvar_ps(order, c0);
}

// C[0:m, 0:n] (m <= Rows <= kMR, n <= Lanes <= kNR) = alpha * A . B + (first ? beta * C :
// C), where A (PackedA or RowsA) and B (PackedB or RowsB) are slivers of kp pairs. beta ==
// 0 on the first block never reads C. Lanes (8, 16, 24 or 32): only the first Lanes columns of the
// sliver are multiplied (the rest is zero padding), 16 in a zmm register and a last 8 in a ymm one,
// so that a layer with 12 to 16 outputs (or 17 to 24, or the last sliver of a wider one)
// does not pay for a whole 12 x 32 tile: where 512-bit instructions run as two 256-bit
// halves (Zen 4), a ymm vdpbf16ps costs half a zmm one. One-off A/B (an environment
// toggle, since removed; Zen 4, 8192 x 256 x n_out, 11 interleaved rounds of min-of-5,
// 536 products and layer calls bitwise equal) of the 8-lane step against 16-lane ones:
// the bare product 0.75-0.81x the time at 6-8 and 20-24 columns, 0.88-0.98 at 40-56;
// forward 0.79-0.84 and 0.90-0.94 (1 and 2 threads); backward unchanged (its products
// are wide: dW^T and dx have n_in columns). Rows (4, 8 or 12): only the first
// Rows rows of the sliver are multiplied, so that a product with few rows (dW^T = dZ^T . x
// with 16 outputs: a sliver of 12 and one of 4) does not multiply the padding either. Each
// lane's sum is the same whatever the widths: the same bits (a review compared 1.3M calls
// bit for bit with the 16-lane version), except which NaN comes out of alpha * sum or
// beta * C where both are NaN: x86 keeps the first operand's, and the compiler picks the
// order (the layers pass alpha 1 and beta 0).
static_assert(kNR == 32, "micro: two zmm registers of 16 float lanes");

template <int Lanes, int Rows, class ASliver, class BSliver, class Out>
void micro(index_t kp, const ASliver& A, const BSliver& B, Out* C, index_t ldc, float alpha,
           float beta, bool first, index_t m, index_t n) {
    static_assert(Rows % 4 == 0 && Rows <= kMR);
    static_assert(Lanes % 8 == 0 && Lanes >= 8 && Lanes <= kNR);
    constexpr int kZ = Lanes / 16;        // zmm accumulators per row
    constexpr bool kY = Lanes % 16 != 0;  // and a ymm one
    constexpr int kZs = kZ > 0 ? kZ : 1;  // (array sizes)
    __m512 c[kZs][Rows];
    __m256 cy[kY ? Rows : 1];
#pragma GCC unroll 12
    for (int r = 0; r < Rows; ++r) {
        for (int h = 0; h < kZ; ++h) c[h][r] = _mm512_setzero_ps();
        if constexpr (kY) cy[r] = _mm256_setzero_ps();
    }
    const auto step = [&](const __m512i z[2], auto pair_of) {
        __m512bh b[kZs];
        for (int h = 0; h < kZ; ++h) b[h] = reinterpret_cast<__m512bh>(z[h]);
        __m256bh by{};
        if constexpr (kY) by = reinterpret_cast<__m256bh>(_mm512_castsi512_si256(z[kZ]));
#pragma GCC unroll 12
        for (int r = 0; r < Rows; ++r) {
            const __m512i a = _mm512_set1_epi32(static_cast<int>(pair_of(r)));
            for (int h = 0; h < kZ; ++h)
                c[h][r] = _mm512_dpbf16_ps(c[h][r], reinterpret_cast<__m512bh>(a), b[h]);
            if constexpr (kY)
                cy[r] = _mm256_dpbf16_ps(cy[r],
                                         reinterpret_cast<__m256bh>(_mm512_castsi512_si256(a)), by);
        }
    };
    // Both slivers' whole pairs, then the last pair of an odd kc where either is read in
    // place (a packed sliver's last pair is already (v, 0)).
    const index_t full = A.full() < B.full() ? A.full() : B.full();
    for (index_t p = 0; p < full; ++p) {
        __m512i z[2];
        B.template load<Lanes>(p, z);
        step(z, [&](int r) { return A.pair(p, r); });
    }
    if (full < kp) {
        __m512i z[2];
        B.template tail<Lanes>(z);
        step(z, [&](int r) { return A.tail(r); });
    }
    if constexpr (BSliver::kShuffled && kZ == 2) {
#pragma GCC unroll 12
        for (int r = 0; r < Rows; ++r) unshuffle(c[0][r], c[1][r]);
    } else if constexpr (BSliver::kShuffled && kZ == 1) {
#pragma GCC unroll 12
        for (int r = 0; r < Rows; ++r) unshuffle(c[0][r]);
    }
    __mmask16 mask[kZs];
    for (int h = 0; h < kZ; ++h) mask[h] = first_lanes16(n - 16 * h);
    const __mmask8 mask_y = static_cast<__mmask8>(first_lanes16(n - 16 * kZ));
    if constexpr (sizeof(Out) == sizeof(u16)) {
        // bfloat16 C (alpha 1, beta 0, one block of k: gemm_packed_b's rounded form): each
        // sum rounded once, to nearest even. vcvtne(2)ps2bf16 would flush a subnormal float,
        // but vdpbf16ps never leaves one (it flushes its own subnormal results).
        const __mmask32 mask32 = first_lanes32(n);
#pragma GCC unroll 12
        for (int r = 0; r < Rows; ++r) {
            if (r >= m) break;
            u16* row = C + r * ldc;
            if constexpr (kZ == 2) {
                const __m512bh v = _mm512_cvtne2ps_pbh(c[1][r], c[0][r]);  // c[0] low lanes
                _mm512_mask_storeu_epi16(row, mask32, reinterpret_cast<__m512i>(v));
            } else if constexpr (kZ == 1) {
                const __m256bh v = _mm512_cvtneps_pbh(c[0][r]);
                _mm256_mask_storeu_epi16(row, mask[0], reinterpret_cast<__m256i>(v));
            }
            if constexpr (kY) {
                const __m128bh v = _mm256_cvtneps_pbh(cy[r]);
                _mm_mask_storeu_epi16(row + 16 * kZ, mask_y, reinterpret_cast<__m128i>(v));
            }
        }
    } else {
        const bool scaled = alpha != 1.0f;  // 1 * c is c: skip the multiply
        const __m512 va = _mm512_set1_ps(alpha);
        const __m512 vb = _mm512_set1_ps(first ? beta : 1.0f);
        const bool read_c = !first || beta != 0.0f;
#pragma GCC unroll 12
        for (int r = 0; r < Rows; ++r) {
            if (r >= m) break;
            float* row = C + r * ldc;
            for (int h = 0; h < kZ; ++h) {
                __m512 v = scaled ? _mm512_mul_ps(va, c[h][r]) : c[h][r];
                if (read_c)
                    v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mask[h], row + 16 * h), v);
                _mm512_mask_storeu_ps(row + 16 * h, mask[h], v);
            }
            if constexpr (kY) {
                float* tail = row + 16 * kZ;
                __m256 v = scaled ? _mm256_mul_ps(_mm512_castps512_ps256(va), cy[r]) : cy[r];
                if (read_c)
                    v = _mm256_fmadd_ps(_mm512_castps512_ps256(vb),
                                        _mm256_maskz_loadu_ps(mask_y, tail), v);
                _mm256_mask_storeu_ps(tail, mask_y, v);
            }
        }
    }
}

template <int Lanes, class ASliver, class BSliver, class Out>
void micro_rows(index_t kp, const ASliver& A, const BSliver& B, Out* C, index_t ldc, float alpha,
                float beta, bool first, index_t m, index_t n) {
    if (m <= 4)
        micro<Lanes, 4>(kp, A, B, C, ldc, alpha, beta, first, m, n);
    else if (m <= 8)
        micro<Lanes, 8>(kp, A, B, C, ldc, alpha, beta, first, m, n);
    else
        micro<Lanes, kMR>(kp, A, B, C, ldc, alpha, beta, first, m, n);
}

template <class ASliver, class BSliver, class Out>
void micro_any(index_t kp, const ASliver& A, const BSliver& B, Out* C, index_t ldc, float alpha,
               float beta, bool first, index_t m, index_t n) {
    if (n <= 8)
        micro_rows<8>(kp, A, B, C, ldc, alpha, beta, first, m, n);
    else if (n <= 16)
        micro_rows<16>(kp, A, B, C, ldc, alpha, beta, first, m, n);
    else if (n <= 24)
        micro_rows<24>(kp, A, B, C, ldc, alpha, beta, first, m, n);
    else
        micro_rows<32>(kp, A, B, C, ldc, alpha, beta, first, m, n);
}

}  // namespace

namespace {

// Elements of the packed block of op(B) that gemm() visits at (jc, pc): whole slivers.
index_t block_size(index_t nc, index_t kc) {
    return (nc + kNR - 1) / kNR * kNR * 2 * ((kc + 1) / 2);
}

// A block of op(B), kc x nc: packed (pack_b's slivers side by side), or B's rows as stored
// from B(pc, jc) (RowsB). sliver(jr, kp, n): the sliver of columns jr to jr + n.
struct PackedBlock {
    const u16* pb;
    PackedB sliver(index_t jr, index_t kp, index_t) const {
        return {reinterpret_cast<const u32*>(pb + jr * 2 * kp), kp};
    }
};
struct RowsBlock {
    const u16* b;  // B(pc, jc)
    index_t ldb, kc;
    RowsB sliver(index_t jr, index_t, index_t n) const {
        return {b + jr, ldb, kc, first_lanes32(n)};
    }
};

// C[:, jc : jc + nc] (+)= alpha * op(A)[:, pc : pc + kc] . (the block of op(B) b_block),
// the first k block scaling C by beta (nothing read when beta == 0), later ones adding.
template <class Out, class BBlock>
void multiply_block(bool trans_a, index_t M, const u16* A, index_t lda, index_t jc, index_t nc,
                    index_t pc, index_t kc, const BBlock& b_block, float alpha, float beta, Out* C,
                    index_t ldc, u16* buf_a) {
    const index_t kp = (kc + 1) / 2;
    // A's rows as stored, not packed, where a packed sliver would be used against four
    // slivers of B or fewer (a layer with up to 128 outputs) or where a block of k is short
    // (k <= 64: the rows and the sliver of B share L1 whatever the width). Measured on
    // Zen 4, one thread, bfloat16 layer 8192 x 256 x n_out: forward 0.41-0.48x the packed
    // time at 12-16 outputs (with the half tiles), 0.76 at 24-32, 0.86 at 64, 0.91-0.93 at
    // 96-128; no gain past that (0.97-1.02 at 256 x 512 x 512 and 1024^3).
    const bool in_place = !trans_a && (nc <= 4 * kNR || kc <= 64);
    for (index_t ic = 0; ic < M; ic += kMC) {
        const index_t mc = min_of(kMC, M - ic);
        const index_t packed_from = in_place ? mc / kMR * kMR : 0;  // the rest is packed
        if (packed_from < mc)
            pack_a(buf_a, trans_a, A, lda, ic + packed_from, mc - packed_from, pc, kc);
        for (index_t ir = 0; ir < mc; ir += kMR) {
            const index_t m = min_of(kMR, mc - ir);
            for (index_t jr = 0; jr < nc; jr += kNR) {
                const index_t n = min_of(kNR, nc - jr);
                const auto pb = b_block.sliver(jr, kp, n);
                Out* c = C + (ic + ir) * ldc + jc + jr;
                if (ir < packed_from) {
                    const RowsA rows{A + (ic + ir) * lda + pc, lda, kc};
                    micro_any(kp, rows, pb, c, ldc, alpha, beta, pc == 0, m, n);
                } else {
                    const auto* pa =
                        reinterpret_cast<const u32*>(buf_a + (ir - packed_from) * 2 * kp);
                    micro_any(kp, PackedA{pa, kp}, pb, c, ldc, alpha, beta, pc == 0, m, n);
                }
            }
        }
    }
}

// C = beta * C for K == 0 (nothing read when beta == 0).
void scale(index_t M, index_t N, float beta, float* C, index_t ldc) {
    for (index_t i = 0; i < M; ++i)
        for (index_t j = 0; j < N; ++j)
            C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
}

}  // namespace

namespace {

// f(jc, nc, pc, kc) for each block of op(B), kNC columns by kKC k, in the order the
// products visit them (and pack_b_all stores them).
template <class F>
void for_each_block(index_t K, index_t N, F&& f) {
    for (index_t jc = 0; jc < N; jc += kNC)
        for (index_t pc = 0; pc < K; pc += kKC) f(jc, min_of(kNC, N - jc), pc, min_of(kKC, K - pc));
}

}  // namespace

namespace {

// gemm() reads op(B) in place (RowsB) rather than packing it when A has at most
// kInPlaceBRows rows and B's rows, k after k, are at most kInPlaceBStride elements apart.
// Packing B is a pass over all of it, written to L2 and read back, that a few slivers of A
// (dW^T = dZ^T . x of a layer with few outputs) do not amortize; reading B's rows in
// place streams them down the block, which the caches follow while a block of kKC rows
// spans little memory. Measured on Zen 4, one thread, dW^T = dZ^T . x with K = 8192, in
// one process (the two ways toggled between 15 interleaved rounds of min-of-5; the same
// bits): in place / packed 0.56-0.66x the time at M = 8, 0.74-0.82 at 16, 0.75-0.86 at
// 24, 0.86-0.89 at 32, 0.94-0.96 at 64, for row strides of 256, 384 and 512 elements
// (0.60-0.92 at 640-768); at 896 and more it lost (1.1-1.5x; 2.1x at 2048). Backward of a
// bfloat16 layer 8192 x n_in x n_out, same way: 0.82x at 5-8 outputs, 0.88-0.94 at
// 12-32, 0.98 at 64 (n_in 256); 0.82-0.96 and 1.0 (n_in 512). A first version ran all 32
// lanes of a narrow sliver and lost 1.1-2x where B has few columns or a narrow last
// sliver (8-24, 40-48, 72, 100 columns); with the narrow tiles of packed B (8, 16, 24
// lanes) in place too: 0.82-0.85 at M = 16, 0.94-0.97 at M = 64 (K 8192), 0.90-1.00 for
// forward-like products (M 32-64, K 64-512), 8 to 100 columns. On two threads the layer's
// tiles of dW^T are 32 columns of x each, a sliver that packed stays in L1 for every
// sliver of A while rows read in place (512 bytes apart: 8 of L1's 64 sets) do not: the
// backward (n_in 256 and 512, 21 rounds of min-of-3) gained at 5-12 outputs (0.85-0.93),
// was level at 16-32 (0.90-1.05) and lost at 40-64 (1.01-1.13). So at most two slivers
// of A, 24 rows.
constexpr index_t kInPlaceBRows = 24;
constexpr index_t kInPlaceBStride = 512;

}  // namespace

void gemm(bool trans_a, bool trans_b, index_t M, index_t N, index_t K, float alpha, const u16* A,
          index_t lda, const u16* B, index_t ldb, float beta, float* C, index_t ldc, u16* buf_a,
          u16* buf_b) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) return scale(M, N, beta, C, ldc);
    const bool in_place_b = !trans_b && M <= kInPlaceBRows && ldb <= kInPlaceBStride;
    for_each_block(K, N, [&](index_t jc, index_t nc, index_t pc, index_t kc) {
        if (in_place_b) {
            multiply_block(trans_a, M, A, lda, jc, nc, pc, kc,
                           RowsBlock{B + pc * ldb + jc, ldb, kc}, alpha, beta, C, ldc, buf_a);
            return;
        }
        pack_b(buf_b, trans_b, B, ldb, pc, kc, jc, nc);
        multiply_block(trans_a, M, A, lda, jc, nc, pc, kc, PackedBlock{buf_b}, alpha, beta, C, ldc,
                       buf_a);
    });
}

index_t packed_b_size(index_t K, index_t N) {
    index_t total = 0;
    for_each_block(K, N,
                   [&](index_t, index_t nc, index_t, index_t kc) { total += block_size(nc, kc); });
    return total;
}

void pack_b_all(bool trans_b, index_t K, index_t N, const u16* B, index_t ldb, u16* packed) {
    for_each_block(K, N, [&](index_t jc, index_t nc, index_t pc, index_t kc) {
        pack_b(packed, trans_b, B, ldb, pc, kc, jc, nc);
        packed += block_size(nc, kc);
    });
}

void gemm_packed_b(bool trans_a, index_t M, index_t N, index_t K, float alpha, const u16* A,
                   index_t lda, const u16* packed, float beta, float* C, index_t ldc, u16* buf_a) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) return scale(M, N, beta, C, ldc);
    for_each_block(K, N, [&](index_t jc, index_t nc, index_t pc, index_t kc) {
        multiply_block(trans_a, M, A, lda, jc, nc, pc, kc, PackedBlock{packed}, alpha, beta, C, ldc,
                       buf_a);
        packed += block_size(nc, kc);
    });
}

bool gemm_packed_b_rounded(bool trans_a, index_t M, index_t N, index_t K, const u16* A, index_t lda,
                           const u16* packed, u16* C, index_t ldc, u16* buf_a) {
    if (K > kKC) return false;  // partial sums would be rounded: refused, C untouched
    if (M <= 0 || N <= 0) return true;
    if (K <= 0) {
        for (index_t i = 0; i < M; ++i)
            for (index_t j = 0; j < N; ++j) C[i * ldc + j] = 0;
        return true;
    }
    // K <= kKC: one block of k per block of columns, so each sum is complete when stored.
    for_each_block(K, N, [&](index_t jc, index_t nc, index_t pc, index_t kc) {
        multiply_block(trans_a, M, A, lda, jc, nc, pc, kc, PackedBlock{packed}, 1.0f, 0.0f, C, ldc,
                       buf_a);
        packed += block_size(nc, kc);
    });
    return true;
}

}  // namespace siglayer::gemm_bf16
