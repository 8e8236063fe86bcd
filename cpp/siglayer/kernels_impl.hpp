// Elementwise kernels, written as plain loops that the compiler vectorizes.
// kernels_isa.cpp includes this once per instruction set (baseline, AVX2, AVX-512), and
// everything here lies in a namespace named by that instruction set (SIGLAYER_ISA), so the
// copies have different mangled names and the linker can never pick one ISA's copy of an
// inline function for another's caller (as it could if they shared one name, e.g. in a build
// that does not inline them).
// Keep this file free of standard-library templates: an AVX-512 instantiation of
// an inline library function could be picked by the linker for baseline code.
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "views.hpp"

#ifndef SIGLAYER_ISA
#error "kernels_impl.hpp is compiled once per instruction set; SIGLAYER_ISA names the copy"
#endif

namespace siglayer::kernels_detail::SIGLAYER_ISA {

template <class T>
struct Consts;

// exp(x) for x <= 0 is computed as 2^k * p(r) with x = k*ln2 + r, |r| <= ln2/2, and p a
// polynomial whose error is well below an ulp on that range.
template <>
struct Consts<float> {
    using Bits = std::uint32_t;
    static constexpr float shift = 0x1.8p23f;  // adding it rounds |v| < 2^22 to an integer
    static constexpr float log2e = 0x1.715476p+0f;
    static constexpr float ln2_hi = 0x1.63p-1f;  // 9 significant bits: k * ln2_hi is exact
    static constexpr float ln2_lo = -0x1.bd0106p-13f;
    // Past this, exp(-a) < 2^-150 and sigma(-a) rounds to 0 (sigma(a) to 1).
    static constexpr float clamp = 104.0f;
    static constexpr int mantissa_bits = 23;
    static constexpr Bits exponent_bias = 127;
    // The AVX-512 kernel evaluates this in float; the portable one goes through double and
    // the AVX2 one uses a table instead (Exp2Eighths in kernels_simd.hpp):
    // a degree-6 fit of e^r with constant and linear terms pinned to 1, relative error 3.8e-9
    // (0.064 ulp) on |r| <= ln2/2 with the coefficients rounded to float (fitted by iteratively
    // reweighted least squares on the relative error, checked in 40-digit arithmetic).
    static constexpr int degree = 6;
    static constexpr float poly[7] = {1.0f,           1.0f,           0x1.fffffcp-2f,
                                      0x1.555492p-3f, 0x1.5558f2p-5f, 0x1.1239e2p-7f,
                                      0x1.6a2434p-10f};
};

template <>
struct Consts<double> {
    using Bits = std::uint64_t;
    static constexpr double shift = 0x1.8p52;
    static constexpr double log2e = 0x1.71547652b82fep+0;
    static constexpr double ln2_hi = 0x1.62e42fee00000p-1;  // trailing zeros: k * ln2_hi exact
    static constexpr double ln2_lo = 0x1.a39ef35793c76p-33;
    static constexpr double clamp = 746.0;  // exp(-746) < 2^-1075
    static constexpr int mantissa_bits = 52;
    static constexpr Bits exponent_bias = 1023;
    static constexpr int degree = 13;  // Taylor: remainder < 1e-17 relative
    static constexpr double poly[14] = {1.0,
                                        1.0,
                                        1.0 / 2,
                                        1.0 / 6,
                                        1.0 / 24,
                                        1.0 / 120,
                                        1.0 / 720,
                                        1.0 / 5040,
                                        1.0 / 40320,
                                        1.0 / 362880,
                                        1.0 / 3628800,
                                        1.0 / 39916800,
                                        1.0 / 479001600,
                                        1.0 / 6227020800};
};

template <class T>
inline T fused_mul_add(T a, T b, T c) {
#if defined(__FMA__) || defined(__aarch64__)
    if constexpr (std::is_same_v<T, float>) {
        return __builtin_fmaf(a, b, c);
    } else {
        static_assert(std::is_same_v<T, double>, "fused_mul_add: float or double only");
        return __builtin_fma(a, b, c);
    }
#else
    return a * b + c;
#endif
}

template <class T>
inline typename Consts<T>::Bits to_bits(T v) {
    return __builtin_bit_cast(typename Consts<T>::Bits, v);
}

template <class T>
inline T from_bits(typename Consts<T>::Bits v) {
    return __builtin_bit_cast(T, v);
}

// 2^k for an integral value kf with -(bias - 1) <= k <= 0, read back out of kf + shift.
template <class T>
inline T pow2_of_integral(T kf) {
    using C = Consts<T>;
    using Bits = typename C::Bits;
    const Bits k_plus_bias = to_bits<T>(kf + C::shift) - to_bits<T>(C::shift) + C::exponent_bias;
    return from_bits<T>(k_plus_bias << C::mantissa_bits);
}

// sigma(z) = 1 / (1 + e^-z), evaluated from t = e^-|z| <= 1 so that nothing overflows:
// sigma(z) = 1 / (1 + t) for z >= 0 and t / (1 + t) for z < 0.
// Exact at +-0 (0.5), +-inf (1 and 0) and NaN (NaN, sign set); subnormal results for very negative
// z. `Degree` terms of the exp polynomial suffice for the precision the result is rounded to.
template <class T, int Degree = Consts<T>::degree>
inline T sigmoid_in(T z) {
    using C = Consts<T>;
    const T a_raw = z < T(0) ? -z : z;
    const T a = a_raw < C::clamp ? a_raw : C::clamp;  // NaN compares false and becomes clamp
    const T x = -a;
    const T kf = (x * C::log2e + C::shift) - C::shift;  // round(x / ln2), in [-bias-24, 0]
    T r = fused_mul_add(kf, -C::ln2_hi, x);
    r = fused_mul_add(kf, -C::ln2_lo, r);
    T p = C::poly[Degree];
#pragma GCC unroll 16
    for (int i = Degree - 1; i >= 0; --i) p = fused_mul_add(p, r, C::poly[i]);
    // 2^k in two halves so that a subnormal result is rounded only once, at the end.
    const T k_half = (kf * T(0.5) + C::shift) - C::shift;
    const T t = (p * pow2_of_integral(k_half)) * pow2_of_integral(kf - k_half);
    const T numerator = z < T(0) ? t : T(1);
    const T result = numerator / (T(1) + t);
    // NaN: z made quiet with its sign bit set, the NaN the SIMD kernels return (they carry
    // -|z|), so that every instruction set gives the same bits.
    using Bits = typename C::Bits;
    constexpr Bits sign = Bits(1) << (8 * sizeof(T) - 1), quiet = Bits(1) << (C::mantissa_bits - 1);
    return z != z ? from_bits<T>(to_bits<T>(z) | sign | quiet) : result;
}

// float64: computed in double, max error measured by tests/test_sigmoid_accuracy.py.
inline double sigmoid_one(double z) {
    return sigmoid_in<double>(z);
}

// float32: computed in double and rounded once, so the error stays near half an ulp
// (a float-only evaluation reached 2.3 ulp, over the 2-ulp budget). Exact 2^k, e^-|z|
// and 1 + t in double make float subnormal results come out correctly rounded too.
inline float sigmoid_one(float z) {
    constexpr int degree = 7;  // Taylor remainder < 1e-8 relative on |r| <= ln2/2
    return static_cast<float>(sigmoid_in<double, degree>(static_cast<double>(z)));
}

// y[i] = sigma(z[i]) for i < count. y may be z.
template <class T>
inline void sigmoid(T* y, const T* z, index_t count) {
#pragma omp simd
    for (index_t i = 0; i < count; ++i) y[i] = sigmoid_one(z[i]);
}

// out is rows x cols with row stride ld, acc likewise with ld_acc; b has cols entries.
// out[i, j] = sigma(acc[i, j] + b[j]). out may be acc.
template <class T>
inline void bias_sigmoid_rows(T* out, index_t ld, const T* acc, index_t ld_acc, const T* b,
                              index_t rows, index_t cols) {
    for (index_t i = 0; i < rows; ++i) {
        T* row = out + i * ld;
        const T* in = acc + i * ld_acc;
#pragma omp simd
        for (index_t j = 0; j < cols; ++j) row[j] = sigmoid_one(T(in[j] + b[j]));
    }
}

// Rows of fewer than kNarrowDz values lying end to end in dZ, dout and out (a layer with
// few outputs) go up to kDzChunk values at a time (whole rows, within one block of
// kSumRows) through one elementwise loop, which vectorizes, where a loop over one row of a
// few values ran scalar (the bfloat16 rounding too); db's sums then add the run's values
// row by row, in the order of the row-by-row loop, so the same bits (tests:
// ..._dz_of_narrow_rows_end_to_end_same_bits_as_row_by_row), NaN payloads aside: where two
// NaNs of other signs meet in one column's sum, the two loops' adds may take their operands
// in other orders, and x86 keeps the first one's NaN. A/B on Zen 4 (AVX-512; backward,
// batch 256-8192, n_in 64-1024, 1-24 outputs, one and two threads, medians of 15
// interleaved rounds, bits equal): bfloat16 0.61-0.97 of the time (but 1.06-1.08 at 16
// outputs on one thread, a whole vector a row), float32 0.73-1.02, float64 0.81-1.02.
constexpr index_t kNarrowDz = 32, kDzChunk = 512;

inline bool end_to_end(index_t cols, index_t ld_dZ, index_t ld_dout, index_t ld_out) {
    return cols > 0 && cols < kNarrowDz && ld_dZ == cols && ld_dout == cols && ld_out == cols;
}

// db[j] += dz[t + j] for the rows t = 0, ld, ... < count (j < C), in that order, with the
// sums in registers (through db in memory, each row's add waited for the last one's store).
template <int C, class T>
inline void add_rows_of(T* __restrict db, const T* __restrict dz, index_t count, index_t ld) {
    T s[C];
    for (int j = 0; j < C; ++j) s[j] = db[j];
    for (index_t t = 0; t < count; t += ld)
        for (int j = 0; j < C; ++j) s[j] += dz[t + j];
    for (int j = 0; j < C; ++j) db[j] = s[j];
}

// db[j] += dz[t + j] for the rows t = 0, cols, ... < count (j < cols), each column's sum
// in row order. Up to 8 columns the sums stay in registers; 9-16 in two stripes, columns
// 0-7 and the rest, each read down the rows with its sums in registers (a pass is at most
// kDzChunk values, in L1). A/B on Zen 4, batch 8192, one thread, 21 interleaved rounds,
// bits equal, against db in memory: dZ and db alone 0.65-0.84 (AVX-512) and 0.65-0.96
// (AVX2) of the time at 9-16 columns in float32, float64 and bfloat16, the whole backward
// at n_in 64 0.90-0.98 (one thread) and 0.91-0.99 (two); stripes of 8 over wider rows
// were slower (up to 1.25 at 24 columns), so from 17 columns db stays in memory.
template <class T>
inline void add_rows(T* __restrict db, const T* __restrict dz, index_t count, index_t cols) {
    index_t j0 = 0;
    if (cols > 8 && cols <= 16) {
        add_rows_of<8>(db, dz, count, cols);
        j0 = 8;
    }
    T* d = db + j0;
    const T* z = dz + j0;
    switch (cols - j0) {
        case 1:
            return add_rows_of<1>(d, z, count, cols);
        case 2:
            return add_rows_of<2>(d, z, count, cols);
        case 3:
            return add_rows_of<3>(d, z, count, cols);
        case 4:
            return add_rows_of<4>(d, z, count, cols);
        case 5:
            return add_rows_of<5>(d, z, count, cols);
        case 6:
            return add_rows_of<6>(d, z, count, cols);
        case 7:
            return add_rows_of<7>(d, z, count, cols);
        case 8:
            return add_rows_of<8>(d, z, count, cols);
        default:
            for (index_t t = 0; t < count; t += cols)
#pragma omp simd
                for (index_t j = 0; j < cols; ++j) db[j] += dz[t + j];
    }
}

// The loop of dz_colsum and dz_colsum_bf16. dout and out (storage type S) are rows x cols
// with row strides ld_dout and ld_out; dZ (D) has row stride ld_dZ; db (cols, C) and total
// (cols doubles, scratch).
// dz = dz_of(dout[i, j], out[i, j]), in C;  dZ[i, j] = store(dz);  db[j] = the sum over i
// of dz, in blocks of kSumRows rows, each block summed in C (in db) and added into total
// (views.hpp). Whole rows at a time, so dout, out and dZ stream in order. Exact says that
// store(dz) is dz itself (D is C): rows lying end to end then sum dZ as stored, where a
// rounding store sums a copy of the unrounded values.
template <bool Exact, class D, class C, class S, class DzOf, class Store>
inline void dz_colsum_with(D* __restrict dZ, index_t ld_dZ, C* __restrict db,
                           double* __restrict total, const S* __restrict dout, index_t ld_dout,
                           const S* __restrict out, index_t ld_out, index_t rows, index_t cols,
                           DzOf dz_of, Store store) {
    static_assert(!Exact || std::is_same_v<D, C>, "an exact store keeps dz's type");
    const bool runs = end_to_end(cols, ld_dZ, ld_dout, ld_out);
#pragma omp simd
    for (index_t j = 0; j < cols; ++j) total[j] = 0.0;
    for (index_t i0 = 0; i0 < rows; i0 += kSumRows) {
        const index_t i1 = rows - i0 < kSumRows ? rows : i0 + kSumRows;
#pragma omp simd
        for (index_t j = 0; j < cols; ++j) db[j] = C(0);
        if (runs) {
            const index_t per = kDzChunk / cols;  // rows per pass
            for (index_t r = i0; r < i1; r += per) {
                const index_t count = (i1 - r < per ? i1 - r : per) * cols;
                const S* d = dout + r * cols;
                const S* o = out + r * cols;
                D* z = dZ + r * cols;
                if constexpr (Exact) {
#pragma omp simd
                    for (index_t t = 0; t < count; ++t) z[t] = dz_of(d[t], o[t]);
                    add_rows(db, z, count, cols);
                } else {
                    alignas(64) C buf[kDzChunk];  // the unrounded dz, for db
#pragma omp simd
                    for (index_t t = 0; t < count; ++t) {
                        const C dz = dz_of(d[t], o[t]);
                        z[t] = store(dz);
                        buf[t] = dz;
                    }
                    add_rows(db, buf, count, cols);
                }
            }
        } else {
            for (index_t i = i0; i < i1; ++i) {
                const S* dout_row = dout + i * ld_dout;
                const S* out_row = out + i * ld_out;
                D* dZ_row = dZ + i * ld_dZ;
#pragma omp simd
                for (index_t j = 0; j < cols; ++j) {
                    const C dz = dz_of(dout_row[j], out_row[j]);
                    dZ_row[j] = store(dz);
                    db[j] += dz;
                }
            }
        }
#pragma omp simd
        for (index_t j = 0; j < cols; ++j) total[j] += static_cast<double>(db[j]);
    }
#pragma omp simd
    for (index_t j = 0; j < cols; ++j) db[j] = static_cast<C>(total[j]);
}

// dout, out and dZ are rows x cols with row strides ld_dout, ld_out, ld_dZ; db (cols, T)
// and total (cols, double, scratch).
// dZ[i, j] = dout[i, j] * out[i, j] * (1 - out[i, j]);  db[j] = sum over i of dZ[i, j] in
// blocks of kSumRows rows (dz_colsum_with).
template <class T>
inline void dz_colsum(T* __restrict dZ, index_t ld_dZ, T* __restrict db, double* __restrict total,
                      const T* __restrict dout, index_t ld_dout, const T* __restrict out,
                      index_t ld_out, index_t rows, index_t cols) {
    dz_colsum_with<true>(
        dZ, ld_dZ, db, total, dout, ld_dout, out, ld_out, rows, cols,
        [](T d, T o) { return (d * o) * (T(1) - o); }, [](T dz) { return dz; });
}

// bfloat16 <-> float, as bits so that the loops vectorize, in this instruction set's
// namespace (see the top of this file). widen is exact; narrow rounds to nearest, ties to
// even (the rounding of vcvtneps2bf16 and of torch/ml_dtypes), keeps NaN a NaN (made quiet,
// sign kept) and +-inf, rounds values past the largest bfloat16 to +-inf, and rounds
// subnormals like any other value (no flush to zero).
inline float bf16_bits_to_float(std::uint16_t h) {
    return __builtin_bit_cast(float, static_cast<std::uint32_t>(h) << 16);
}

inline std::uint16_t float_to_bf16_bits(float f) {
    const std::uint32_t u = __builtin_bit_cast(std::uint32_t, f);
    const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const std::uint32_t quiet_nan = (u >> 16) | 0x0040u;
    return static_cast<std::uint16_t>(f != f ? quiet_nan : rounded);
}

inline void widen_bf16(float* __restrict dst, const std::uint16_t* __restrict src, index_t count) {
#pragma omp simd
    for (index_t i = 0; i < count; ++i) dst[i] = bf16_bits_to_float(src[i]);
}

inline void narrow_bf16_portable(std::uint16_t* __restrict dst, const float* __restrict src,
                                 index_t count) {
#pragma omp simd
    for (index_t i = 0; i < count; ++i) dst[i] = float_to_bf16_bits(src[i]);
}

#if defined(__AVX512BF16__)
// The lanes of v that are subnormal (exponent bits 0, fraction not 0), of either sign.
inline __mmask16 subnormal_lanes(__m512 v) {
    const __m512i magnitude =
        _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff));
    // |v| - 1 as unsigned is <= 0x007ffffe exactly for the 2^23 - 1 subnormal magnitudes.
    return _mm512_cmple_epu32_mask(_mm512_sub_epi32(magnitude, _mm512_set1_epi32(1)),
                                   _mm512_set1_epi32(0x007ffffe));
}

// 32 values (fewer where mask says so) with vcvtne2ps2bf16: round to nearest even, NaN a quiet
// NaN, +-inf kept: the same bits as float_to_bf16_bits except that the instruction treats
// subnormal inputs as zero and flushes subnormal results, whatever MXCSR says (Intel SDM,
// VCVTNE2PS2BF16). A block holding a subnormal is redone by the portable rounding, so the
// results are the same bits on every CPU (tests/test_bfloat16.py::test_narrowing_*).
inline void narrow_bf16_32(std::uint16_t* __restrict dst, const float* __restrict src,
                           __mmask32 mask) {
    const __m512 lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>(mask), src);
    const __m512 hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>(mask >> 16), src + 16);
    if (__builtin_expect((subnormal_lanes(lo) | subnormal_lanes(hi)) != 0, 0)) {
        for (int i = 0; i < 32; ++i)
            if ((mask >> i) & 1u) dst[i] = float_to_bf16_bits(src[i]);
        return;
    }
    const __m512i packed = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
    _mm512_mask_storeu_epi16(dst, mask, packed);
}

inline void narrow_bf16(std::uint16_t* __restrict dst, const float* __restrict src, index_t count) {
    index_t i = 0;
    for (; i + 32 <= count; i += 32) narrow_bf16_32(dst + i, src + i, ~__mmask32{0});
    if (i < count) narrow_bf16_32(dst + i, src + i, (__mmask32{1} << (count - i)) - 1);
}
#else
inline void narrow_bf16(std::uint16_t* __restrict dst, const float* __restrict src, index_t count) {
    narrow_bf16_portable(dst, src, count);
}
#endif

// acc (rows x cols, row stride ld_acc) = x . Wt^T, the products of a layer with few
// outputs: x is rows x k (row stride ld_x, each row contiguous, T read through load),
// Wt is cols x k (C-contiguous, in C). Each entry is a dot product summed in C, in an order
// that depends only on k and the vector width, never on how the rows are split. Four rows
// at a time share each load of Wt and keep four sums in flight.
template <class T, class C, class Load>
inline void row_dots(C* __restrict acc, index_t ld_acc, const T* __restrict x, index_t ld_x,
                     const C* __restrict Wt, index_t rows, index_t k, index_t cols, Load load) {
    index_t i = 0;
    for (; i + 4 <= rows; i += 4) {
        const T* x0 = x + i * ld_x;
        const T* x1 = x0 + ld_x;
        const T* x2 = x1 + ld_x;
        const T* x3 = x2 + ld_x;
        for (index_t j = 0; j < cols; ++j) {
            const C* w = Wt + j * k;
            C s0 = C(0), s1 = C(0), s2 = C(0), s3 = C(0);
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (index_t p = 0; p < k; ++p) {
                const C wp = w[p];
                s0 = fused_mul_add(load(x0[p]), wp, s0);
                s1 = fused_mul_add(load(x1[p]), wp, s1);
                s2 = fused_mul_add(load(x2[p]), wp, s2);
                s3 = fused_mul_add(load(x3[p]), wp, s3);
            }
            C* a = acc + i * ld_acc + j;
            a[0] = s0;
            a[ld_acc] = s1;
            a[2 * ld_acc] = s2;
            a[3 * ld_acc] = s3;
        }
    }
    for (; i < rows; ++i) {
        const T* xr = x + i * ld_x;
        for (index_t j = 0; j < cols; ++j) {
            const C* w = Wt + j * k;
            C s = C(0);
#pragma omp simd reduction(+ : s)
            for (index_t p = 0; p < k; ++p) s = fused_mul_add(load(xr[p]), w[p], s);
            acc[i * ld_acc + j] = s;
        }
    }
}

// row_dots with float results, x float or bfloat16 bits, or double throughout (the
// hand-vectorized copy in kernels_simd.hpp has the same signatures; streamed picks its loop
// order there, and nothing here).
inline void row_dots_f(float* __restrict acc, index_t ld_acc, const std::uint16_t* __restrict x,
                       index_t ld_x, const float* __restrict Wt, index_t rows, index_t k,
                       index_t cols, bool /*streamed*/) {
    row_dots(acc, ld_acc, x, ld_x, Wt, rows, k, cols,
             [](std::uint16_t h) { return bf16_bits_to_float(h); });
}

inline void row_dots_f(float* __restrict acc, index_t ld_acc, const float* __restrict x,
                       index_t ld_x, const float* __restrict Wt, index_t rows, index_t k,
                       index_t cols, bool /*streamed*/) {
    row_dots(acc, ld_acc, x, ld_x, Wt, rows, k, cols, [](float v) { return v; });
}

inline void row_dots_f(double* __restrict acc, index_t ld_acc, const double* __restrict x,
                       index_t ld_x, const double* __restrict Wt, index_t rows, index_t k,
                       index_t cols, bool /*streamed*/) {
    row_dots(acc, ld_acc, x, ld_x, Wt, rows, k, cols, [](double v) { return v; });
}

// dst (rows x cols, row stride ld_dst, in T) = dZ . Wt rounded to T, the product dx of a
// layer with few outputs: dZ is rows x k (row stride ld_dZ, in C), Wt is k x cols (row
// stride ld_Wt, in C). Each entry is summed over k in order, one fused multiply-add at a
// time, in C, and rounded once by round(dst, buf, count) (T's narrow). A chunk of a row is
// summed in buf, on the stack, and rounded from L1.
template <class T, class C, class Round>
inline void row_combos(T* __restrict dst, index_t ld_dst, const C* __restrict dZ, index_t ld_dZ,
                       const C* __restrict Wt, index_t ld_Wt, index_t rows, index_t k, index_t cols,
                       Round round) {
    constexpr index_t kChunk = 512;
    alignas(64) C buf[kChunk];
    for (index_t i = 0; i < rows; ++i) {
        const C* d = dZ + i * ld_dZ;
        for (index_t c0 = 0; c0 < cols; c0 += kChunk) {
            const index_t m = cols - c0 < kChunk ? cols - c0 : kChunk;
            const C d0 = d[0];
            const C* w0 = Wt + c0;
#pragma omp simd
            for (index_t c = 0; c < m; ++c) buf[c] = d0 * w0[c];
            for (index_t j = 1; j < k; ++j) {
                const C dj = d[j];
                const C* w = Wt + j * ld_Wt + c0;
#pragma omp simd
                for (index_t c = 0; c < m; ++c) buf[c] = fused_mul_add(dj, w[c], buf[c]);
            }
            round(dst + i * ld_dst + c0, buf, m);
        }
    }
}

// Rows per block of the hand-vectorized col_dots (kernels_simd.hpp): each block's sums are
// added into dW.
constexpr index_t kColDotsRows = 512;

// dW (k x cols, row stride ld_dW, in C) = x^T . dZ, the product dW of a layer with few
// outputs: x is rows x k (row stride ld_x, contiguous rows, T read through load), dZ is
// rows x cols (row stride ld_dZ, in C). Each entry summed over the rows in order (the
// hand-vectorized copy sums blocks of kColDotsRows and adds them in order): the same for
// any split of dW's rows between threads. Row by row, so that x streams in order and dW
// (a few times k values) stays in cache.
template <class T, class C, class Load>
inline void col_dots(C* __restrict dW, index_t ld_dW, const T* __restrict x, index_t ld_x,
                     const C* __restrict dZ, index_t ld_dZ, index_t rows, index_t k, index_t cols,
                     Load load) {
    for (index_t i = 0; i < k; ++i)
        for (index_t j = 0; j < cols; ++j) dW[i * ld_dW + j] = C(0);
    for (index_t r = 0; r < rows; ++r) {
        const T* xr = x + r * ld_x;
        const C* d = dZ + r * ld_dZ;
        for (index_t i = 0; i < k; ++i) {
            const C xi = load(xr[i]);
            C* w = dW + i * ld_dW;
            for (index_t j = 0; j < cols; ++j) w[j] = fused_mul_add(xi, d[j], w[j]);
        }
    }
}

// The float, double and bfloat16 entry points of row_combos and col_dots (the
// hand-vectorized copies in kernels_simd.hpp have the same signatures).
template <class T, class C, class Round>
inline void row_combos_f(T* __restrict dst, index_t ld_dst, const C* __restrict dZ, index_t ld_dZ,
                         const C* __restrict Wt, index_t ld_Wt, index_t rows, index_t k,
                         index_t cols, Round round) {
    row_combos(dst, ld_dst, dZ, ld_dZ, Wt, ld_Wt, rows, k, cols, round);
}

inline void col_dots_f(float* __restrict dW, index_t ld_dW, const std::uint16_t* __restrict x,
                       index_t ld_x, const float* __restrict dZ, index_t ld_dZ, index_t rows,
                       index_t k, index_t cols) {
    col_dots(dW, ld_dW, x, ld_x, dZ, ld_dZ, rows, k, cols,
             [](std::uint16_t h) { return bf16_bits_to_float(h); });
}

inline void col_dots_f(float* __restrict dW, index_t ld_dW, const float* __restrict x, index_t ld_x,
                       const float* __restrict dZ, index_t ld_dZ, index_t rows, index_t k,
                       index_t cols) {
    col_dots(dW, ld_dW, x, ld_x, dZ, ld_dZ, rows, k, cols, [](float v) { return v; });
}

inline void col_dots_f(double* __restrict dW, index_t ld_dW, const double* __restrict x,
                       index_t ld_x, const double* __restrict dZ, index_t ld_dZ, index_t rows,
                       index_t k, index_t cols) {
    col_dots(dW, ld_dW, x, ld_x, dZ, ld_dZ, rows, k, cols, [](double v) { return v; });
}

// One dZ value in float from bfloat16 dout and out, and what dZ stores of it: bfloat16 bits
// (D = uint16_t) or the float of that bfloat16 (D = float).
inline float dz_bf16(std::uint16_t dout, std::uint16_t out) {
    const float o = bf16_bits_to_float(out);
    return (bf16_bits_to_float(dout) * o) * (1.0f - o);
}

template <class D>
inline D stored_dz(float dz) {
    if constexpr (std::is_same_v<D, float>)
        return bf16_bits_to_float(float_to_bf16_bits(dz));
    else
        return float_to_bf16_bits(dz);
}

// dz_colsum for bfloat16 dout and out (rows x cols, row strides ld_dout, ld_out): dZ in
// float, stored rounded to bfloat16 (row stride ld_dZ): as bfloat16 bits (D = uint16_t)
// or as the float of that bfloat16 (D = float, for a float GEMM); db[j] = the sum of the
// unrounded float dZ[i, j], in blocks of kSumRows rows as dz_colsum (total: cols doubles).
template <class D>
inline void dz_colsum_bf16(D* __restrict dZ, index_t ld_dZ, float* __restrict db,
                           double* __restrict total, const std::uint16_t* __restrict dout,
                           index_t ld_dout, const std::uint16_t* __restrict out, index_t ld_out,
                           index_t rows, index_t cols) {
    dz_colsum_with<false>(
        dZ, ld_dZ, db, total, dout, ld_dout, out, ld_out, rows, cols,
        [](std::uint16_t d, std::uint16_t o) { return dz_bf16(d, o); },
        [](float dz) { return stored_dz<D>(dz); });
}

}  // namespace siglayer::kernels_detail::SIGLAYER_ISA
