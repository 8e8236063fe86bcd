// Hand-vectorized sigmoid for AVX-512 and AVX2 (+FMA), included by the avx512 and avx2
// copies of kernels_isa.cpp. The portable loops in kernels_impl.hpp are the reference.
// Ops<V> wraps one vector type's instructions; the sigmoid is written once over them, in two
// halves, and Ops<V>::has_scalef picks how e^x = 2^k e^r is put together.
// AVX-512 brings two instructions the compiler would not emit from portable code:
// vscalefps/pd (p * 2^k with one rounding, subnormal results included) and vrcp14.
// AVX2 has neither; emulating vscalef cost it more than the rest of the sigmoid, so its
// 2^k comes out of the bits of the rounded k instead (see sigmoid_first_half).
#pragma once

#if !defined(__AVX2__) || !defined(__FMA__)
#error "kernels_simd.hpp needs at least -mavx2 -mfma"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels_impl.hpp"

// Inside the ISA's namespace, as kernels_impl.hpp (whose Consts this uses): the AVX2 and
// AVX-512 copies of sigmoid<float> and the rest never share a mangled name.
namespace siglayer::kernels_detail::SIGLAYER_ISA::simd {

template <class V>
struct Ops;

#if defined(__AVX512F__) && defined(__AVX512DQ__)
template <>
struct Ops<__m512> {
    using T = float;
    static constexpr int lanes = 16;
    static constexpr bool has_scalef = true;
    static constexpr bool has_table8 = false;
    using Mask = __mmask16;
    static __m512 set1(float v) { return _mm512_set1_ps(v); }
    static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
    static __m512 load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
    static void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
    static void store(float* p, __m512 v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
    static Mask tail(index_t n) { return static_cast<Mask>((1u << n) - 1u); }
    static __m512 max(__m512 a, __m512 b) { return _mm512_max_ps(a, b); }
    static __m512 negative_abs(__m512 v) { return _mm512_or_ps(v, _mm512_set1_ps(-0.0f)); }
    static __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
    static __m512 sub(__m512 a, __m512 b) { return _mm512_sub_ps(a, b); }
    static __m512 mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
    static __m512 div(__m512 a, __m512 b) { return _mm512_div_ps(a, b); }
    static __m512 fmadd(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
    static __m512 fnmadd(__m512 a, __m512 b, __m512 c) { return _mm512_fnmadd_ps(a, b, c); }
    static __m512 round(__m512 v) {
        return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    static __m512 scalef(__m512 a, __m512 k) { return _mm512_scalef_ps(a, k); }
    static __m512 maskz_scalef(Mask m, __m512 a, __m512 k) {
        return _mm512_maskz_scalef_ps(m, a, k);
    }
    static __m512 rcp(__m512 v) { return _mm512_rcp14_ps(v); }
    static Mask less(__m512 a, __m512 b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
    static __m512 blend(Mask m, __m512 if_false, __m512 if_true) {
        return _mm512_mask_blend_ps(m, if_false, if_true);
    }
};

template <>
struct Ops<__m512d> {
    using T = double;
    static constexpr int lanes = 8;
    static constexpr bool has_scalef = true;
    static constexpr bool has_table8 = false;
    using Mask = __mmask8;
    static __m512d set1(double v) { return _mm512_set1_pd(v); }
    static __m512d load(const double* p) { return _mm512_loadu_pd(p); }
    static __m512d load(const double* p, Mask m) { return _mm512_maskz_loadu_pd(m, p); }
    static void store(double* p, __m512d v) { _mm512_storeu_pd(p, v); }
    static void store(double* p, __m512d v, Mask m) { _mm512_mask_storeu_pd(p, m, v); }
    static Mask tail(index_t n) { return static_cast<Mask>((1u << n) - 1u); }
    static __m512d max(__m512d a, __m512d b) { return _mm512_max_pd(a, b); }
    static __m512d negative_abs(__m512d v) { return _mm512_or_pd(v, _mm512_set1_pd(-0.0)); }
    static __m512d add(__m512d a, __m512d b) { return _mm512_add_pd(a, b); }
    static __m512d sub(__m512d a, __m512d b) { return _mm512_sub_pd(a, b); }
    static __m512d mul(__m512d a, __m512d b) { return _mm512_mul_pd(a, b); }
    static __m512d div(__m512d a, __m512d b) { return _mm512_div_pd(a, b); }
    static __m512d fmadd(__m512d a, __m512d b, __m512d c) { return _mm512_fmadd_pd(a, b, c); }
    static __m512d fnmadd(__m512d a, __m512d b, __m512d c) { return _mm512_fnmadd_pd(a, b, c); }
    static __m512d round(__m512d v) {
        return _mm512_roundscale_pd(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    static __m512d scalef(__m512d a, __m512d k) { return _mm512_scalef_pd(a, k); }
    static __m512d maskz_scalef(Mask m, __m512d a, __m512d k) {
        return _mm512_maskz_scalef_pd(m, a, k);
    }
    static __m512d rcp(__m512d v) { return _mm512_rcp14_pd(v); }
    static Mask less(__m512d a, __m512d b) { return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ); }
    static __m512d blend(Mask m, __m512d if_false, __m512d if_true) {
        return _mm512_mask_blend_pd(m, if_false, if_true);
    }
};

// The vector of each element type, picked by type: a type without a specialization (a
// 2-byte storage type, say) does not compile here instead of getting another's vector.
template <class T>
struct VecOf;
template <>
struct VecOf<float> {
    using type = __m512;
};
template <>
struct VecOf<double> {
    using type = __m512d;
};
#else
template <>
struct Ops<__m256> {
    using T = float;
    static constexpr int lanes = 8;
    static constexpr bool has_scalef = false;
    // Lanes whose sign bit is set: all that vblendvps and vmaskmovps read, so any vector is a mask.
    using Mask = __m256;
    static __m256 set1(float v) { return _mm256_set1_ps(v); }
    static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
    static __m256 load(const float* p, Mask m) {
        return _mm256_maskload_ps(p, _mm256_castps_si256(m));
    }
    static void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
    static void store(float* p, __m256 v, Mask m) {
        _mm256_maskstore_ps(p, _mm256_castps_si256(m), v);
    }
    static Mask tail(index_t n) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), lane));
    }
    static __m256 max(__m256 a, __m256 b) { return _mm256_max_ps(a, b); }
    static __m256 negative_abs(__m256 v) { return _mm256_or_ps(v, _mm256_set1_ps(-0.0f)); }
    static __m256 add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
    static __m256 sub(__m256 a, __m256 b) { return _mm256_sub_ps(a, b); }
    static __m256 mul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
    static __m256 div(__m256 a, __m256 b) { return _mm256_div_ps(a, b); }
    static __m256 fmadd(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
    static __m256 fnmadd(__m256 a, __m256 b, __m256 c) { return _mm256_fnmadd_ps(a, b, c); }
    // The low 9 bits of v's bit pattern moved into the exponent field (sign bit 0).
    static __m256 low_bits_to_exponent(__m256 v) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(v), 23));
    }
    static __m256 rcp(__m256 v) { return _mm256_rcp_ps(v); }  // 1.5 * 2^-12 relative
    static __m256 blend(Mask m, __m256 if_false, __m256 if_true) {
        return _mm256_blendv_ps(if_false, if_true, m);
    }
    // float32 on AVX2 takes e^x as 2^(n/8) e^r (see sigmoid_first_half).
    static constexpr bool has_table8 = true;
    // table[j] in each lane, j the low 3 bits of that lane of idx (vpermps, vpermd).
    static __m256 lookup(const float* table, __m256 idx) {
        return _mm256_permutevar8x32_ps(_mm256_load_ps(table), _mm256_castps_si256(idx));
    }
    static __m256 lookup(const std::uint32_t* table, __m256 idx) {
        const __m256i t = _mm256_load_si256(reinterpret_cast<const __m256i*>(table));
        return _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(t, _mm256_castps_si256(idx)));
    }
    // The bit patterns of a and b added as 32-bit integers; a's shifted left by 20 first.
    static __m256 add_bits_shifted20(__m256 a, __m256 b) {
        const __m256i a20 = _mm256_slli_epi32(_mm256_castps_si256(a), 20);
        return _mm256_castsi256_ps(_mm256_add_epi32(a20, _mm256_castps_si256(b)));
    }
};

template <>
struct Ops<__m256d> {
    using T = double;
    static constexpr int lanes = 4;
    static constexpr bool has_scalef = false;
    using Mask = __m256d;  // as for __m256
    static __m256d set1(double v) { return _mm256_set1_pd(v); }
    static __m256d load(const double* p) { return _mm256_loadu_pd(p); }
    static __m256d load(const double* p, Mask m) {
        return _mm256_maskload_pd(p, _mm256_castpd_si256(m));
    }
    static void store(double* p, __m256d v) { _mm256_storeu_pd(p, v); }
    static void store(double* p, __m256d v, Mask m) {
        _mm256_maskstore_pd(p, _mm256_castpd_si256(m), v);
    }
    static Mask tail(index_t n) {
        const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
        return _mm256_castsi256_pd(_mm256_cmpgt_epi64(_mm256_set1_epi64x(n), lane));
    }
    static __m256d max(__m256d a, __m256d b) { return _mm256_max_pd(a, b); }
    static __m256d negative_abs(__m256d v) { return _mm256_or_pd(v, _mm256_set1_pd(-0.0)); }
    static __m256d add(__m256d a, __m256d b) { return _mm256_add_pd(a, b); }
    static __m256d sub(__m256d a, __m256d b) { return _mm256_sub_pd(a, b); }
    static __m256d mul(__m256d a, __m256d b) { return _mm256_mul_pd(a, b); }
    static __m256d div(__m256d a, __m256d b) { return _mm256_div_pd(a, b); }
    static __m256d fmadd(__m256d a, __m256d b, __m256d c) { return _mm256_fmadd_pd(a, b, c); }
    static __m256d fnmadd(__m256d a, __m256d b, __m256d c) { return _mm256_fnmadd_pd(a, b, c); }
    // The low 12 bits of v's bit pattern moved into the exponent field and the sign bit.
    static __m256d low_bits_to_exponent(__m256d v) {
        return _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(v), 52));
    }
    static __m256d blend(Mask m, __m256d if_false, __m256d if_true) {
        return _mm256_blendv_pd(if_false, if_true, m);
    }
    static constexpr bool has_table8 = false;
};

template <class T>
struct VecOf;
template <>
struct VecOf<float> {
    using type = __m256;
};
template <>
struct VecOf<double> {
    using type = __m256d;
};
#endif

template <class T>
using Vec = typename VecOf<T>::type;

// e^x = 2^(n/8) e^r for float32 on AVX2: n = round(8 x log2e) = 8k + j (0 <= j < 8),
// r = x - n ln2/8, |r| <= ln2/16, where a degree-4 polynomial is good to 1.9e-10 relative
// (0.003 ulp; fitted as Consts<float>::poly was, coefficients rounded to float). 2^(j/8)
// rounded to float is off by up to 0.54 ulp, so the rest of it, d[j] = 2^(j/8) /
// float(2^(j/8)) - 1, is added to e^r - 1 (the product d (e^r - 1) left out is below 0.03 ulp).
// Only the AVX2 copy uses it (AVX-512 has vscalef).
struct Exp2Eighths {
    static constexpr float shift = 0x1.8p23f + 8 * 64;  // rounds to n, leaves n + 512 in the low bits
    static constexpr float log2e_8 = 0x1.715476p+3f;     // 8 log2(e)
    static constexpr float ln2_8_hi = 0x1.63p-4f;        // 9 significant bits: n ln2_8_hi exact
    static constexpr float ln2_8_lo = -0x1.bd0106p-16f;
    static constexpr float poly[3] = {0x1p-1f, 0x1.555c76p-3f, 0x1.554842p-5f};  // c2, c3, c4
    // The bit patterns of float(2^(j/8)) less j << 20: added to (n + 512) << 20, whose bits
    // 20..22 hold j, they give 2^(k + 64) float(2^(j/8)).
    alignas(32) static constexpr std::uint32_t bits[8] = {
        0x3f800000u, 0x3f7b95c2u, 0x3f7837f0u, 0x3f75fed7u,
        0x3f7504f3u, 0x3f75672au, 0x3f7744fdu, 0x3f7ac0c7u};
    alignas(32) static constexpr float d[8] = {0.0f,           -0x1.9c0c22p-27f, 0x1.125002p-25f,
                                               -0x1.0a3550p-25f, 0x1.26055cp-26f, 0x1.67a1cap-28f,
                                               -0x1.f9c304p-27f, -0x1.a5217cp-28f};
};

// e^r - 1 for r = x - kf ln2, |r| <= ln2/2 (kf integral): ln2 in two parts, then
// r + r^2 Q(r) with Q(r) = (c2 + c3 r) + r^2 (c4 + c5 r) + ...: Horner in r^2 over pairs of
// coefficients, which halves the chain of dependent FMAs of plain Horner for one more multiply
// (r^2) and one fewer at the end; the sigmoid is bound by its latency (see sigmoid_span).
template <class V>
inline V expm1_reduced(V x, V kf) {
    using O = Ops<V>;
    using C = Consts<typename O::T>;
    static_assert(C::poly[1] == 1, "the linear term is added as r itself");
    V r = O::fnmadd(kf, O::set1(C::ln2_hi), x);
    r = O::fnmadd(kf, O::set1(C::ln2_lo), r);
    const V r2 = O::mul(r, r);
    constexpr int top = C::degree;
    V q = top % 2 == 0 ? O::set1(C::poly[top])
                       : O::fmadd(O::set1(C::poly[top]), r, O::set1(C::poly[top - 1]));
    for (int i = top % 2 == 0 ? top - 2 : top - 3; i >= 2; i -= 2)
        q = O::fmadd(q, r2, O::fmadd(O::set1(C::poly[i + 1]), r, O::set1(C::poly[i])));
    return O::fmadd(q, r2, r);
}

// sigma(z) from t = e^-|z| (see sigmoid_in in kernels_impl.hpp), in two halves so that a loop
// can overlap them (sigmoid_span): the first reduces |z| and evaluates the polynomial, the
// second divides. NaN propagates through max (NaN in its second operand is returned) to the
// result; +-inf and +-0 come out exact; subnormal results are rounded once.

// AVX-512: e^-|z| = 2^kf (1 + q), as vscalef takes it.
template <class V>
struct ScalefHalf {
    V z, q, kf;
};

// AVX2: 2^64 e^-|z| (see below; two registers to carry: AVX2 has 16).
template <class V>
struct ExpHalf {
    V z, t;
};

// AVX2 rounds x log2e to k with fma(x, log2e, shift), shift = 1.5 * 2^mantissa_bits + bias + 64:
// the sum is an integer, so k + bias + 64 (> 0) sits in the low bits of its bit pattern, and
// moved into the exponent field they make 2^(k + 64), normal for every k down to the clamp, with
// no rounding or conversion instruction. ExpHalf::t = 2^64 e^-|z| = 2^(k + 64) (1 + q) is
// rounded once, by the fma, and is never scaled back: the second half works in units of 2^-64
// (num / (1 + t) = 2^64 num / (2^64 + 2^64 t)), so a subnormal sigma is rounded once, by the
// division. float32 (Ops::has_table8) does the same with n = 8k + j in place of k (Exp2Eighths).

// float32, AVX2: x = -|z| reduced, r = x - n ln2/8, and x 8 log2e + Exp2Eighths::shift, whose
// low bits hold n + 512. Split from the rest of e^x so that the loop can pipeline it (sigmoid_span).
template <class V>
struct Reduced {
    V z, r, shifted;
};

template <class V>
inline Reduced<V> sigmoid_reduce(V z) {
    using O = Ops<V>;
    using E = Exp2Eighths;
    const V x = O::max(O::set1(-Consts<float>::clamp), O::negative_abs(z));  // -|z|, NaN kept
    const V shift = O::set1(E::shift);
    const V shifted = O::fmadd(x, O::set1(E::log2e_8), shift);
    const V nf = O::sub(shifted, shift);
    V r = O::fnmadd(nf, O::set1(E::ln2_8_hi), x);
    r = O::fnmadd(nf, O::set1(E::ln2_8_lo), r);
    return Reduced<V>{z, r, shifted};
}

// 2^64 e^x = 2^(k + 64) 2^(j/8) e^r: the table entry with the exponent added in its bits, and
// e^r - 1 + d[j] = r + d[j] + r^2 (c2 + c3 r + c4 r^2).
template <class V>
inline ExpHalf<V> sigmoid_exp(const Reduced<V>& a) {
    using O = Ops<V>;
    using E = Exp2Eighths;
    const V scale = O::add_bits_shifted20(a.shifted, O::lookup(E::bits, a.shifted));
    const V r2 = O::mul(a.r, a.r);
    V u = O::fmadd(O::set1(E::poly[1]), a.r, O::set1(E::poly[0]));
    u = O::fmadd(O::set1(E::poly[2]), r2, u);
    const V q = O::fmadd(u, r2, O::add(a.r, O::lookup(E::d, a.shifted)));
    return ExpHalf<V>{a.z, O::fmadd(q, scale, scale)};
}

template <class V>
inline auto sigmoid_first_half(V z) {
    using O = Ops<V>;
    using T = typename O::T;
    using C = Consts<T>;
    if constexpr (O::has_table8) {
        return sigmoid_exp(sigmoid_reduce(z));
    } else {
        const V x = O::max(O::set1(-C::clamp), O::negative_abs(z));  // -|z|, NaN kept
        if constexpr (O::has_scalef) {
            const V kf = O::round(O::mul(x, O::set1(C::log2e)));  // e^x = 2^kf * e^r
            return ScalefHalf<V>{z, expm1_reduced(x, kf), kf};
        } else {
            const V shift = O::set1(C::shift + T(C::exponent_bias + 64));
            const V shifted = O::fmadd(x, O::set1(C::log2e), shift);
            const V q = expm1_reduced(x, O::sub(shifted, shift));
            const V scale = O::low_bits_to_exponent(shifted);
            return ExpHalf<V>{z, O::fmadd(q, scale, scale)};
        }
    }
}

// Carries the rounding errors that dominate a plain float evaluation (2.3 ulp) as low parts:
//   e^r = p + p_lo with p = 1 + q rounded (Fast2Sum, exact as |q| < 1),
//   t = 2^k p + 2^k p_lo = t + t_lo,    1 + t ~ s + s_lo (Fast2Sum, |t| <= 1),
//   sigma = (num + num_lo) / (s + s_lo) ~ y + (num_lo - y s_lo) / s,  y = num / s,
// with num = 1 (z >= 0) or t (z < 0). t_lo matters where sigma ~ t (z < 0); for z >= 0 its
// weight in 1 / (1 + t) is <= 1/4 of half an ulp of t, so it is left out of s_lo. The correction
// is below an ulp, so the 2^-14 accuracy of vrcp14 for 1 / s is plenty. Measured on an AVX-512
// CPU (tests/, bench/) before the refit of Consts<float>::poly: 1.6 ulp at ~4 G values/s per
// core; also correcting the division's own rounding (residual num - y s) gave 1.2 ulp but 10%
// fewer values/s, and no correction 2.4 ulp.
// float64 has a 4-ulp budget and is bound by its longer polynomial, so it divides num / (1 + t)
// directly (under 2.5 ulp measured).
template <class V, bool Compensated = std::is_same_v<typename Ops<V>::T, float>>
inline V sigmoid_second_half(const ScalefHalf<V>& h) {
    using O = Ops<V>;
    const V one = O::set1(1);
    const auto negative = O::less(h.z, O::set1(0));
    const V p = O::add(one, h.q);
    const V t = O::scalef(p, h.kf);
    if constexpr (!Compensated) {
        return O::div(O::blend(negative, one, t), O::add(one, t));
    } else {
        const V p_lo = O::add(O::sub(one, p), h.q);
        const V s = O::add(one, t);
        const V s_lo = O::add(O::sub(one, s), t);
        const V num = O::blend(negative, one, t);
        const V num_lo = O::maskz_scalef(negative, p_lo, h.kf);
        const V y = O::div(num, s);
        return O::fmadd(O::fnmadd(y, s_lo, num_lo), O::rcp(s), y);
    }
}

// AVX2 (Zen 3) is bound by the latency of its chain and by its FMA ports rather than by the
// division, and every instruction counts. With t rounded once (see sigmoid_first_half), s_lo is
// the one correction float32 needs to stay within 2 ulp: sigma ~ y - y s_lo / s, 1 / s from the
// 12-bit vrcpps. Measured on Zen 3 over every float32: 1.97 ulp; carrying t_lo as well gave
// 1.4 ulp but 25% fewer values/s (a third register per vector to carry between the halves).
// float64 divides num / (1 + t) directly, as above.
template <class V, bool Compensated = std::is_same_v<typename Ops<V>::T, float>>
inline V sigmoid_second_half(const ExpHalf<V>& h) {
    using O = Ops<V>;
    using T = typename O::T;
    const V one = O::set1(T(0x1p64));  // 1 in the scale of h.t
    const V s = O::add(one, h.t);
    // The sign bit of z picks num (see Ops::Mask): -0 takes t = 1, for 1/2 all the same.
    const V y = O::div(O::blend(h.z, one, h.t), s);
    if constexpr (!Compensated) {
        return y;
    } else {
        const V s_lo = O::add(O::sub(one, s), h.t);
        return O::fnmadd(y, O::mul(s_lo, O::rcp(s)), y);
    }
}

template <class V>
inline V sigmoid_vec(V z) {
    return sigmoid_second_half(sigmoid_first_half(z));
}

// y[i] = sigma(z[i] + b[i]) for i < count, or sigma(z[i]) without Bias (b unused). y may be z.
// Software-pipelined: each step starts e^-|z| of two vectors, then finishes the two before, so
// the core has four independent chains of half the length in flight instead of one whole one
// (Zen 3, AVX2: 1.1-1.2x values/s; three or four vectors a step were slower); float32 on AVX2
// goes through three stages instead. All loads of a step come before its stores.
template <class V, bool Bias>
inline void sigmoid_span(typename Ops<V>::T* y, const typename Ops<V>::T* z,
                         const typename Ops<V>::T* b, index_t count) {
    using O = Ops<V>;
    constexpr index_t lanes = O::lanes;
    const auto load = [&](index_t i) {
        if constexpr (Bias)
            return O::add(O::load(z + i), O::load(b + i));
        else
            return O::load(z + i);
    };
    index_t i = 0;
    if constexpr (O::has_table8) {
        // Three stages, one vector a step: reduce vector i, finish e^x of vector i - 1 and
        // divide for vector i - 2 (Zen 3: 1.06x values/s over two stages on two vectors a step).
        if (count >= 2 * lanes) {
            auto a = sigmoid_reduce(load(0));
            auto h = sigmoid_exp(a);
            a = sigmoid_reduce(load(lanes));
            for (i = 2 * lanes; i + lanes <= count; i += lanes) {
                const auto next_a = sigmoid_reduce(load(i));
                const auto next_h = sigmoid_exp(a);
                O::store(y + i - 2 * lanes, sigmoid_second_half(h));
                a = next_a;
                h = next_h;
            }
            O::store(y + i - 2 * lanes, sigmoid_second_half(h));
            O::store(y + i - lanes, sigmoid_second_half(sigmoid_exp(a)));
        }
    } else if (count >= 2 * lanes) {
        auto h0 = sigmoid_first_half(load(0));
        auto h1 = sigmoid_first_half(load(lanes));
        for (i = 2 * lanes; i + 2 * lanes <= count; i += 2 * lanes) {
            const auto next0 = sigmoid_first_half(load(i));
            const auto next1 = sigmoid_first_half(load(i + lanes));
            O::store(y + i - 2 * lanes, sigmoid_second_half(h0));
            O::store(y + i - lanes, sigmoid_second_half(h1));
            h0 = next0;
            h1 = next1;
        }
        O::store(y + i - 2 * lanes, sigmoid_second_half(h0));
        O::store(y + i - lanes, sigmoid_second_half(h1));
    }
    for (; i + lanes <= count; i += lanes) O::store(y + i, sigmoid_vec(load(i)));
    if (i < count) {
        const auto m = O::tail(count - i);
        V v = O::load(z + i, m);
        if constexpr (Bias) v = O::add(v, O::load(b + i, m));
        O::store(y + i, sigmoid_vec(v), m);
    }
}

// y[i] = sigma(z[i]) for i < count. y may be z.
template <class T>
inline void sigmoid(T* y, const T* z, index_t count) {
    sigmoid_span<Vec<T>, false>(y, z, nullptr, count);
}

// out is rows x cols with row stride ld, acc likewise with ld_acc; b has cols entries.
// out[i, j] = sigma(acc[i, j] + b[j]). out may be acc.
template <class T>
inline void bias_sigmoid_rows(T* out, index_t ld, const T* acc, index_t ld_acc, const T* b,
                              index_t rows, index_t cols) {
    for (index_t row = 0; row < rows; ++row)
        sigmoid_span<Vec<T>, true>(out + row * ld, acc + row * ld_acc, b, cols);
}

// row_dots (kernels_impl.hpp) for float, double and bfloat16 x, by hand: the portable
// loop's omp simd reduction ended each dot product with one scalar add per lane, in
// series, which cost more than the loop itself at k = 256. Here R rows times J outputs
// keep R * J vector sums (chains of FMAs, enough to hide their latency), reduced by a tree
// of shuffles at the end, four sums per tree (a lone sum in the same order). The order
// depends on k and the vector width only.
// The sums of the eight lanes of a, b, c and d, in that order: pairs added by vhaddps
// twice, then the two 128-bit halves.
inline __m128 sum4_256(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// The same for the four lanes of doubles: pairs added by vhaddpd, then the two halves.
inline __m256d sum4_256d(__m256d a, __m256d b, __m256d c, __m256d d) {
    const __m256d ab = _mm256_hadd_pd(a, b), cd = _mm256_hadd_pd(c, d);  // a01 b01 a23 b23
    return _mm256_add_pd(_mm256_permute2f128_pd(ab, cd, 0x20),
                         _mm256_permute2f128_pd(ab, cd, 0x31));
}

// The vector operations of the few-output kernels below, for float (bfloat16 x widened to
// float) and double sums.
template <class C>
struct DotOps;

// What the few-output kernels take from the sigmoid's Ops: loads and stores (the first n
// lanes by a count), set1, add, mul, fmadd; each DotOps adds its reductions.
template <class C>
struct DotOpsOf : Ops<Vec<C>> {
    using Base = Ops<Vec<C>>;
    using V = Vec<C>;
    static constexpr index_t lanes = Base::lanes;
    using Base::load;
    using Base::store;
    static V zero() { return Base::set1(C(0)); }
    static V load(const C* p, index_t n) { return Base::load(p, Base::tail(n)); }
    static void store(C* p, V v, index_t n) { Base::store(p, v, Base::tail(n)); }
};

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
template <>
struct DotOps<float> {
    static constexpr index_t lanes = 16;
    using V = __m512;
    static V zero() { return _mm512_setzero_ps(); }
    // lanes values (the first n of them, the rest 0) as floats: bfloat16 bit patterns
    // widened exactly, or floats.
    static V load(const std::uint16_t* p) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    static V load(const std::uint16_t* p, index_t n) {
        const __m256i h = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1u), p);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    static V load(const float* p) { return _mm512_loadu_ps(p); }
    static V load(const float* p, index_t n) {
        return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
    }
    static V set1(float v) { return _mm512_set1_ps(v); }
    static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static void store(float* p, V v, index_t n) {
        _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v);
    }
    static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    // The sums of a, b, c and d, in that order (one tree of shuffles for the four).
    static __m128 sum4(V a, V b, V c, V d) {
        return sum4_256(half(a), half(b), half(c), half(d));
    }
    static __m256 half(V v) {
        return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    }
    static void sum4(float* out, V a, V b, V c, V d) { _mm_storeu_ps(out, sum4(a, b, c, d)); }
};

template <>
struct DotOps<double> : DotOpsOf<double> {
    static __m256d half(V v) {
        return _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
    }
    static void sum4(double* out, V a, V b, V c, V d) {
        _mm256_storeu_pd(out, sum4_256d(half(a), half(b), half(c), half(d)));
    }
};
#else
template <>
struct DotOps<float> {
    static constexpr index_t lanes = 8;
    using V = __m256;
    static V zero() { return _mm256_setzero_ps(); }
    static V load(const std::uint16_t* p) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    static V load(const std::uint16_t* p, index_t n) {  // no 16-bit masked load on AVX2
        alignas(16) std::uint16_t h[8] = {};
        for (index_t i = 0; i < n; ++i) h[i] = p[i];
        return load(h);
    }
    static V load(const float* p) { return _mm256_loadu_ps(p); }
    static V load(const float* p, index_t n) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), lane));
    }
    static V set1(float v) { return _mm256_set1_ps(v); }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static void store(float* p, V v, index_t n) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), lane), v);
    }
    static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static void sum4(float* out, V a, V b, V c, V d) { _mm_storeu_ps(out, sum4_256(a, b, c, d)); }
};

template <>
struct DotOps<double> : DotOpsOf<double> {
    static void sum4(double* out, V a, V b, V c, V d) {
        _mm256_storeu_pd(out, sum4_256d(a, b, c, d));
    }
};
#endif

// v stays in a register: GCC otherwise folds a chunk's load into each FMA that reads it
// (a memory operand), so dots<2, 4> loaded 10 chunks per 8 FMAs instead of 6 and was bound
// by loads, not FMAs. An empty asm statement that may change v makes the compiler load v
// once and keep it. The same sums in the same order: the same bits.
template <class V>
inline void keep_in_register(V& v) {
    __asm__("" : "+v"(v));
}

template <class C>
using DotVec = typename DotOps<C>::V;

// s[r][j] += the products of row r of x (R rows, row stride ld_x; float, double or
// bfloat16 bits) and row j of w (J rows of k values of C) over p in [p0, p1): whole
// vectors, then (p1 = k only, a multiple of the lanes otherwise) the last partial one.
// Lane by lane in order of p, so [0, k) in one call or in several gives the same sums.
// Row j of w at p is w[j * w_row + (p - p0) * w_step]: w_row = k and w_step = 1 for W^T's
// rows as stored, w_row = lanes and w_step = J for dots_chunked's packing. With PF > 0
// each chunk of x is also fetched into L2 PF rows on. Each chunk of x is loaded (and
// widened) once for all J rows of w, each chunk of w once for all R rows of x.
template <int R, int J, int PF = 0, class C, class S>
inline void dots_span(DotVec<C> (&s)[R][J], const S* x, index_t ld_x, const C* w,
                      index_t w_row, index_t w_step, index_t p0, index_t p1) {
    using D = DotOps<C>;
    constexpr index_t L = D::lanes;
    index_t p = p0;
    for (; p + L <= p1; p += L) {
        typename D::V xv[R];
        for (int r = 0; r < R; ++r) {
            xv[r] = D::load(x + r * ld_x + p);
            // (With one output each chunk of x is read once: left to the compiler, which
            // folds it into the FMA. Pinned, the 8 rows' chunks beside 8 sums and w
            // spilled a sum to the stack on AVX2's 16 registers.)
            if constexpr (J > 1) keep_in_register(xv[r]);
            if constexpr (PF > 0) {  // the same columns PF rows on, into L2 (x streamed)
                // (An address, not a pointer into x: it may lie past x's end, where a prefetch
                // does not fault but pointer arithmetic would be undefined.)
                const std::uintptr_t ahead = reinterpret_cast<std::uintptr_t>(x + r * ld_x + p) +
                                             static_cast<std::uintptr_t>(PF * ld_x) * sizeof(S);
                _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T1);
            }
        }
        for (int j = 0; j < J; ++j) {
            auto wv = D::load(w + j * w_row + (p - p0) * w_step);
            keep_in_register(wv);
            for (int r = 0; r < R; ++r) s[r][j] = D::fmadd(xv[r], wv, s[r][j]);
        }
    }
    if (p < p1) {
        typename D::V xv[R];
        for (int r = 0; r < R; ++r) xv[r] = D::load(x + r * ld_x + p, p1 - p);
        for (int j = 0; j < J; ++j) {
            const auto wv = D::load(w + j * w_row + (p - p0) * w_step, p1 - p);
            for (int r = 0; r < R; ++r) s[r][j] = D::fmadd(xv[r], wv, s[r][j]);
        }
    }
}

// acc[r, j] (row stride ld_acc) = the lanes of s[r][j] summed.
// The R * J sums four to a tree, in (r, j) order, the last tree filled up with the last
// sum. Each sum is added in its own fixed order whichever three share its tree (sum4),
// so a row's result never depends on its batch or on how rows are grouped (a review had
// found rows left over from groups of four summed in another order). Trees of one
// output's rows only had left R = 2 (J = 3 or 4: n_out 3 to 11) a whole tree per sum:
// one-off A/B (a toggle, since removed; Zen 4, forward, one thread, medians of 5 x 20-60
// calls, bits equal), new over old: float32 0.85-0.95 at n_in 64 and 2 to 11 outputs,
// bfloat16 0.79-0.85 at 3-4 outputs (5 and up take the bfloat16 GEMM), 0.97-1.00 at
// n_in 256 and 1024, float64 level.
template <int R, int J, class C>
inline void dots_reduce(C* acc, index_t ld_acc, const DotVec<C> (&s)[R][J]) {
    constexpr int N = R * J;
    for (int q = 0; q < N; q += 4) {
        const auto sum_at = [&](int t) {
            const int i = q + t < N ? q + t : N - 1;
            return s[i / J][i % J];
        };
        C four[4];
        DotOps<C>::sum4(four, sum_at(0), sum_at(1), sum_at(2), sum_at(3));
        for (int t = 0; t < 4 && q + t < N; ++t)
            acc[((q + t) / J) * ld_acc + (q + t) % J] = four[t];
    }
}

// acc[r, j] (row stride ld_acc) = the dot product of row r of x (R rows) with row j of w
// (J rows of k values): one vector sum per (r, j), R * J chains of FMAs in flight, reduced
// by a tree of shuffles at the end. The order depends on k and the vector width only.
template <int R, int J, int PF = 0, class C, class S>
inline void dots(C* acc, index_t ld_acc, const S* x, index_t ld_x, const C* w, index_t k) {
    DotVec<C> s[R][J];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < J; ++j) s[r][j] = DotOps<C>::zero();
    dots_span<R, J, PF>(s, x, ld_x, w, k, 1, 0, k);
    dots_reduce<R, J>(acc, ld_acc, s);
}

// Rows in groups of R, outputs in groups of J (R * J = 8 chains, 4 outputs at most so that
// the sums, R chunks of x and a chunk of w fit AVX2's 16 registers; with one output, 8
// rows, x's chunks are not kept in registers, see dots), then the rows left.
template <int R, int J, int PF = 0, class C, class S>
inline void dots_in_groups(C* acc, index_t ld_acc, const S* x, index_t ld_x, const C* w,
                           index_t rows, index_t k) {
    index_t i = 0;
    for (; i + R <= rows; i += R)
        dots<R, J, PF>(acc + i * ld_acc, ld_acc, x + i * ld_x, ld_x, w, k);
    for (; i < rows; ++i) dots<1, J, PF>(acc + i * ld_acc, ld_acc, x + i * ld_x, ld_x, w, k);
}

// With 3 or 4 outputs in a group, rows of x of 4 KB or more and AVX-512's 32 registers,
// four rows per group (12 or 16 chains): four streams of x in flight where x comes from
// memory (one-off A/B, Zen 4, one thread, 8192 x 1024: float32 0.76-0.87 of the time of
// two rows per group at 3 and 4 outputs, float64 0.76-0.79 at 3-11, measured before 5-11
// outputs of an x that large went to dots_chunked; at n_in 64 the same change took 1.1x).
// A sum's order does not depend on R: the same bits.
constexpr index_t kFourRowsBytes = 4096;

template <int J, int PF = 0, class C, class S>
inline void dots_of(C* acc, index_t ld_acc, const S* x, index_t ld_x, const C* w, index_t rows,
                    index_t k) {
    constexpr bool wide = DotOps<C>::lanes * sizeof(C) == 64;
    if constexpr (J == 1)
        dots_in_groups<8, 1, PF>(acc, ld_acc, x, ld_x, w, rows, k);
    else if constexpr (J == 2)
        dots_in_groups<4, 2, PF>(acc, ld_acc, x, ld_x, w, rows, k);
    else if (!wide || k * static_cast<index_t>(sizeof(S)) < kFourRowsBytes)
        dots_in_groups<2, J, PF>(acc, ld_acc, x, ld_x, w, rows, k);
    else if constexpr (wide)  // (no four-row groups compiled for AVX2's 16 registers)
        dots_in_groups<4, J, PF>(acc, ld_acc, x, ld_x, w, rows, k);
}

// dots_of for cols = 1 to 4 outputs (4 for more).
template <int PF = 0, class C, class S>
inline void dots_of_cols(index_t cols, C* acc, index_t ld_acc, const S* x, index_t ld_x,
                         const C* w, index_t rows, index_t k) {
    switch (cols) {
        case 1: return dots_of<1, PF>(acc, ld_acc, x, ld_x, w, rows, k);
        case 2: return dots_of<2, PF>(acc, ld_acc, x, ld_x, w, rows, k);
        case 3: return dots_of<3, PF>(acc, ld_acc, x, ld_x, w, rows, k);
        default: return dots_of<4, PF>(acc, ld_acc, x, ld_x, w, rows, k);
    }
}

// Where x streams from memory (the caller says so: its whole x is larger than the caches
// hold) and its rows are kStreamedRowBytes or more, row_dots goes over x once, and fetches
// the rows kAheadRows on into L2 as it goes (dots_span's PF): the hardware's prefetcher
// alone left one core reading x at 12-15 GB/s where OpenBLAS's GEMM (8 outputs) read 20.
// Up to 4 outputs that is dots_of as ever, plus the fetch. More outputs went a group of 4
// at a time, x read from memory once and again from L2 per further group (from memory
// again where rows are short and go unblocked); dots_chunked takes them all in one pass
// instead: each pair of rows takes every group of outputs (up to 8 on AVX-512, 16 sums; 4
// on AVX2) while its chunk of x is in L1. W^T goes in chunks of kChunkBytes along k,
// packed group by group so that a step's vectors of w lie side by side (W^T's rows as
// stored are k apart: with k a multiple of 512 doubles, 4 KB, a step's eight loads of w
// and two of x fell in one set of L1's 8 ways), and x's rows in blocks of kAheadRows,
// whose vector sums wait in `stash` between chunks; the fetch ahead brings the next block.
// Lane by lane the same FMAs in the same order as dots<R, J> over a whole row: the same
// bits.
// One-off tuning (Zen 4, one thread, float64, 8192 x 1024 and 8192 x 1000, 8 outputs, over
// the GEMM path): without the packing 1.43-1.77, without the fetch 1.47-1.93, fetched 4
// rows ahead into L1 1.24-1.49, 16-48 rows ahead into L2 1.02-1.20; chunks of 8 KB
// 1.10-1.16, 16 KB 0.94-1.15, 32 KB 1.52-1.80; three rows per group 1.10-1.14. Shorter
// rows than kStreamedRowBytes stay as they were: a pair of rows' work is short beside the
// calls and the reductions (in-process A/B, Zen 4, one thread, 5-11 outputs, group by
// group -> one pass: rows of 512 bytes, float32 n_in 128 or float64 64, 0.73-1.05 ->
// 0.37-0.68 on AVX-512 and AVX2; of 256 bytes 0.75-1.27 -> 0.75-1.39; of 64-128 bytes
// 0.81-2.13 -> 1.19-2.82). With 1-4 outputs the fetch alone (32768 x 256, 8192 x 1024,
// 200000 x 128, one and two threads): AVX-512 0.70-1.79 -> 0.27-1.14, AVX2 0.40-0.94 ->
// 0.24-0.74.
constexpr index_t kAheadRows = 32;
constexpr index_t kStreamedRowBytes = 512;
constexpr index_t kChunkBytes = 16 * 1024;
constexpr index_t kChunkMaxCols = 11;  // (layer_detail.hpp's kNarrowOutputs - 1)

// Not inlined: inlined into dots_chunked beside the other groups' copies, GCC 12 kept a
// group of 4's sums and x's chunks in memory and stored them every step (9 outputs, 4 + 5:
// 1.40-1.91x the GEMM path's time where 8 took 0.48-1.25; 0.58-1.08 as a function of its own).
template <int R, int J, class C, class S>
[[gnu::noinline]] void dots_chunk(C* acc, index_t ld_acc, const S* x, index_t ld_x,
                                  const C* wpack, index_t k, index_t p0, index_t p1,
                                  DotVec<C>* stash, index_t ld_stash) {
    DotVec<C> s[R][J];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < J; ++j)
            s[r][j] = p0 == 0 ? DotOps<C>::zero() : stash[r * ld_stash + j];
    dots_span<R, J, kAheadRows>(s, x, ld_x, wpack, DotOps<C>::lanes, J, p0, p1);
    if (p1 == k) {
        dots_reduce<R, J>(acc, ld_acc, s);
    } else {
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < J; ++j) stash[r * ld_stash + j] = s[r][j];
    }
}

// R rows (1 or 2) of a block, J outputs of a group: 5-11 outputs make groups of 4-8 on
// AVX-512 (9: 4 and 5) and 2-4 on AVX2 (AVX2's 16 registers: 4 at most).
template <int R, class C, class S>
inline void dots_chunk_group(index_t J, C* acc, index_t ld_acc, const S* x, index_t ld_x,
                             const C* wpack, index_t k, index_t p0, index_t p1,
                             DotVec<C>* stash, index_t ld_stash) {
    const auto run = [&](auto j_const) {
        constexpr int Jc = decltype(j_const)::value;
        dots_chunk<R, Jc>(acc, ld_acc, x, ld_x, wpack, k, p0, p1, stash, ld_stash);
    };
    if constexpr (DotOps<C>::lanes * sizeof(C) == 64) {
        switch (J) {
            case 4: return run(std::integral_constant<int, 4>{});
            case 5: return run(std::integral_constant<int, 5>{});
            case 6: return run(std::integral_constant<int, 6>{});
            case 7: return run(std::integral_constant<int, 7>{});
            case 8: return run(std::integral_constant<int, 8>{});
            default: break;
        }
    } else {
        switch (J) {
            case 2: return run(std::integral_constant<int, 2>{});
            case 3: return run(std::integral_constant<int, 3>{});
            case 4: return run(std::integral_constant<int, 4>{});
            default: break;
        }
    }
    __builtin_unreachable();  // (dots_chunked's groups of 5 to 11 outputs)
}

template <class C, class S>
inline void dots_chunked(C* acc, index_t ld_acc, const S* x, index_t ld_x, const C* Wt,
                         index_t rows, index_t k, index_t cols) {
    using D = DotOps<C>;
    constexpr index_t L = D::lanes;
    static_assert(kChunkBytes / (kChunkMaxCols * sizeof(C)) >= L);  // a chunk of a vector or more
    // Groups of at most 8 outputs (AVX2: 4), as even as they go (11: 5 and 6; AVX2 3, 4, 4).
    constexpr index_t most = L * sizeof(C) == 64 ? 8 : 4;
    const index_t groups = (cols + most - 1) / most;
    const auto group_start = [&](index_t g) { return g * cols / groups; };
    const index_t chunk = kChunkBytes / (cols * static_cast<index_t>(sizeof(C))) / L * L;
    alignas(64) DotVec<C> stash[kAheadRows * kChunkMaxCols];
    alignas(64) C wpack[kChunkBytes / sizeof(C)];
    for (index_t i0 = 0; i0 < rows; i0 += kAheadRows) {
        const index_t m = std::min(kAheadRows, rows - i0);
        for (index_t p0 = 0; p0 < k; p0 += chunk) {
            const index_t p1 = std::min(k, p0 + chunk);
            // Group g's chunk of W^T at wpack + j0 * chunk: step q's J vectors side by side
            // (once, where all of k is one chunk).
            for (index_t g = 0; g < groups && (i0 == 0 || k > chunk); ++g) {
                const index_t j0 = group_start(g), J = group_start(g + 1) - j0;
                for (index_t p = p0; p < p1; p += L)
                    for (index_t j = 0; j < J; ++j) {
                        const C* src = Wt + (j0 + j) * k + p;
                        D::store(wpack + j0 * chunk + (p - p0) * J + j * L,
                                 p + L <= p1 ? D::load(src) : D::load(src, p1 - p));
                    }
            }
            for (index_t i = 0; i < m; i += 2) {
                const S* xi = x + (i0 + i) * ld_x;
                C* ai = acc + (i0 + i) * ld_acc;
                for (index_t g = 0; g < groups; ++g) {
                    const index_t j0 = group_start(g), J = group_start(g + 1) - j0;
                    DotVec<C>* st = stash + i * cols + j0;
                    const C* wg = wpack + j0 * chunk;
                    if (i + 2 <= m)
                        dots_chunk_group<2>(J, ai + j0, ld_acc, xi, ld_x, wg, k, p0, p1, st, cols);
                    else
                        dots_chunk_group<1>(J, ai + j0, ld_acc, xi, ld_x, wg, k, p0, p1, st, cols);
                }
            }
        }
    }
}

// Rows of 4 KB and more with more than 4 outputs (two or three passes over x, a group of
// outputs each), where x is not streamed (dots_chunked takes those), go in blocks of about
// 256 KB, so that the second pass reads the block from L2: a panel of 256 such rows (1-2
// MB) came back from L3 or memory. Blocks are whole groups of 8 rows (dots_of's largest
// group), so that no block ends in rows taken one at a time. One-off A/B, Zen 4, one
// thread, 8192 x 1024 (streamed since), 5, 8 and 11 outputs: float32 0.83-0.88 of the
// time without blocks, float64 0.88-0.92; with rows of 2 KB (n_in 256, float64) blocks of
// 128 rows were level or slower (1.01-1.06), so shorter rows go unblocked. The same bits.
constexpr index_t kPassBlockBytes = 256 * 1024;

template <class C, class S>
inline void row_dots_f(C* __restrict acc, index_t ld_acc, const S* __restrict x, index_t ld_x,
                       const C* __restrict Wt, index_t rows, index_t k, index_t cols,
                       bool streamed) {
    const index_t row_bytes = k * static_cast<index_t>(sizeof(S));
    if (streamed && row_bytes >= kStreamedRowBytes) {  // one pass, rows fetched ahead
        if (cols <= 4) return dots_of_cols<kAheadRows>(cols, acc, ld_acc, x, ld_x, Wt, rows, k);
        // (The caller's cols are under 12; more would overrun the stash.)
        if (cols <= kChunkMaxCols) return dots_chunked(acc, ld_acc, x, ld_x, Wt, rows, k, cols);
    }
    const index_t block = cols > 4 && row_bytes >= kFourRowsBytes
                              ? std::max<index_t>(8, kPassBlockBytes / row_bytes / 8 * 8)
                              : rows;
    for (index_t i0 = 0; i0 < rows; i0 += block) {
        const index_t m = std::min(block, rows - i0);
        const S* xb = x + i0 * ld_x;
        for (index_t j = 0; j < cols; j += 4)
            dots_of_cols(cols - j, acc + i0 * ld_acc + j, ld_acc, xb, ld_x, Wt + j * k, m, k);
    }
}

// row_combos (kernels_impl.hpp) by hand: R rows of dst at a time, each vector of columns
// summed over j in registers (Wt's chunk loaded once for the R rows), in order of j from
// j = 0 as the portable loop sums; then rounded by round(dst, sums, count) from the stack.
constexpr index_t kComboChunk = 256;  // columns of dst per pass: R x 1 KB on the stack

// One vector of columns of R rows: the sums over j, stored at out + r * ld_out (width of
// them: L, or fewer when Partial). K > 0 is k known at compile time (one or two outputs):
// with a run-time trip count and one row, GCC kept a pointer of the loop over vectors on
// the stack and added to it there every vector, a store-to-load chain that held dx with
// one output to about half OpenBLAS's store rate. With K (A/B on Zen 3, AVX2, backward
// without dW, float32 and float64): one output 0.73-0.85 of the former time on one thread,
// 0.41-0.54 on two; two outputs 0.68-0.93.
template <int R, bool Partial, int K, class C>
inline void combo(C* out, index_t ld_out, const C* dZ, index_t ld_dZ, const C* w, index_t ld_Wt,
                  index_t k_runtime, index_t width) {
    using D = DotOps<C>;
    const index_t k = K > 0 ? K : k_runtime;
    typename D::V s[R];
    // The first term is a plain product (a sum started from +0 would turn a -0 into +0,
    // where the portable loop and the BLAS keep it), the others fused multiply-adds.
    const auto w0 = Partial ? D::load(w, width) : D::load(w);
    for (int r = 0; r < R; ++r) s[r] = D::mul(D::set1(dZ[r * ld_dZ]), w0);
    for (index_t j = 1; j < k; ++j) {
        const auto wv = Partial ? D::load(w + j * ld_Wt, width) : D::load(w + j * ld_Wt);
        for (int r = 0; r < R; ++r) s[r] = D::fmadd(D::set1(dZ[r * ld_dZ + j]), wv, s[r]);
    }
    for (int r = 0; r < R; ++r) {
        if (Partial)
            D::store(out + r * ld_out, s[r], width);
        else
            D::store(out + r * ld_out, s[r]);
    }
}

// Two whole vectors of columns of R rows: as combo, each row's broadcast of dZ used twice
// and 2 R sums in registers (2 loads of Wt and R broadcasts per 2 R multiply-adds, where
// one vector takes 1 and R per R). The same sums in the same order: the same bits. For
// 32-byte vectors (AVX2), so that a step takes a cache line of each row of Wt, as one
// AVX-512 vector does. A/B of two builds (alternate processes, three each, dx alone, one
// thread, 3-64 outputs, 1024-8192 rows, n_in 256-1024; Zen 4, AVX2 forced): AVX2 (OpenBLAS
// on its Haswell kernels) 0.62-0.82 of the time with one vector; AVX-512 (Zen 4, whose 512-bit
// instructions run as two 256-bit halves) 1.00-1.07, and 1.07-2.0 where GCC did not
// inline this function (its sums went through the stack at every call).
template <int R, int K, class C>
[[gnu::always_inline]] inline void combo2(C* out, index_t ld_out, const C* dZ, index_t ld_dZ,
                                          const C* w, index_t ld_Wt, index_t k_runtime) {
    using D = DotOps<C>;
    constexpr index_t L = D::lanes;
    const index_t k = K > 0 ? K : k_runtime;
    typename D::V s[R], t[R];
    const auto w0 = D::load(w), u0 = D::load(w + L);
    for (int r = 0; r < R; ++r) {
        const auto d = D::set1(dZ[r * ld_dZ]);
        s[r] = D::mul(d, w0);
        t[r] = D::mul(d, u0);
    }
    for (index_t j = 1; j < k; ++j) {
        const auto wv = D::load(w + j * ld_Wt), uv = D::load(w + j * ld_Wt + L);
        for (int r = 0; r < R; ++r) {
            const auto d = D::set1(dZ[r * ld_dZ + j]);
            s[r] = D::fmadd(d, wv, s[r]);
            t[r] = D::fmadd(d, uv, t[r]);
        }
    }
    for (int r = 0; r < R; ++r) {
        D::store(out + r * ld_out, s[r]);
        D::store(out + r * ld_out + L, t[r]);
    }
}

// dst in C (float or double): the sums stored in place; bfloat16 (T the bit patterns):
// summed into buf on the stack, then rounded once by round(dst, buf, count) from L1.
template <int R, int K, class T, class C, class Round>
inline void combos(T* dst, index_t ld_dst, const C* dZ, index_t ld_dZ, const C* Wt,
                   index_t ld_Wt, index_t k, index_t cols, Round round) {
    constexpr index_t L = DotOps<C>::lanes, kChunk = kComboChunk;
    constexpr bool direct = std::is_same_v<T, C>;
    alignas(64) C buf[direct ? 1 : R][direct ? 1 : kChunk];
    for (index_t c0 = 0; c0 < cols; c0 += kChunk) {
        const index_t m = cols - c0 < kChunk ? cols - c0 : kChunk;
        C* out = nullptr;
        index_t ld_out = 0;
        if constexpr (direct) {
            out = dst + c0;
            ld_out = ld_dst;
        } else {
            out = buf[0];
            ld_out = kChunk;
        }
        index_t c = 0;
        if constexpr (R > 1 && L * sizeof(C) < 64)
            for (; c + 2 * L <= m; c += 2 * L)
                combo2<R, K>(out + c, ld_out, dZ, ld_dZ, Wt + c0 + c, ld_Wt, k);
        for (; c + L <= m; c += L)
            combo<R, false, K>(out + c, ld_out, dZ, ld_dZ, Wt + c0 + c, ld_Wt, k, L);
        if (c < m) combo<R, true, K>(out + c, ld_out, dZ, ld_dZ, Wt + c0 + c, ld_Wt, k, m - c);
        if constexpr (!direct)
            for (int r = 0; r < R; ++r) round(dst + r * ld_dst + c0, buf[r], m);
    }
}

template <class T, class C, class Round>
inline void row_combos_f(T* __restrict dst, index_t ld_dst, const C* __restrict dZ, index_t ld_dZ,
                         const C* __restrict Wt, index_t ld_Wt, index_t rows, index_t k,
                         index_t cols, Round round) {
    index_t i = 0;
    if (k > 2)  // rows in fours share each load of Wt; with one or two terms, row by row
        for (; i + 4 <= rows; i += 4)
            combos<4, 0>(dst + i * ld_dst, ld_dst, dZ + i * ld_dZ, ld_dZ, Wt, ld_Wt, k, cols,
                         round);
    for (; i < rows; ++i) {
        T* d = dst + i * ld_dst;
        const C* z = dZ + i * ld_dZ;
        if (k == 1)
            combos<1, 1>(d, ld_dst, z, ld_dZ, Wt, ld_Wt, k, cols, round);
        else if (k == 2)
            combos<1, 2>(d, ld_dst, z, ld_dZ, Wt, ld_Wt, k, cols, round);
        else
            combos<1, 0>(d, ld_dst, z, ld_dZ, Wt, ld_Wt, k, cols, round);
    }
}

// col_dots (kernels_impl.hpp) by hand: a strip of V vectors of x's columns times J columns
// of dZ, V * J sums in registers over a block of rows, each row's chunk of x loaded (and
// widened) once for the J columns and each broadcast of dZ used for V vectors; block by
// block into dW.
// How a strip's last vector is read: whole (all V vectors hold L columns); masked (it holds
// `last` = 1 to L columns, the lanes past them read as zero); or shifted (the same `last`
// columns, the vector loaded whole so as to end at column `width`, x having L columns
// before that end: it overlaps the one before, and its first L - last sums, the same bits
// as those of the columns it overlaps, are not stored).
enum class Tail { whole, masked, shifted };

template <int V, int J, Tail T, class C, class S>
inline void col_dots_strip(C* dW, index_t ld_dW, const S* x, index_t ld_x, const C* dZ,
                           index_t ld_dZ, index_t rows, index_t width, bool first) {
    using D = DotOps<C>;
    constexpr index_t L = D::lanes;
    const index_t last = T == Tail::whole ? L : width - (V - 1) * L;
    const index_t shift = T == Tail::shifted ? L - last : 0;
    typename D::V s[V][J];
    for (int v = 0; v < V; ++v)
        for (int j = 0; j < J; ++j) s[v][j] = D::zero();
    for (index_t r = 0; r < rows; ++r) {
        typename D::V d[J];
        for (int j = 0; j < J; ++j) d[j] = D::set1(dZ[r * ld_dZ + j]);
        const S* xr = x + r * ld_x;
        for (int v = 0; v < V; ++v) {
            auto xv = T == Tail::whole || v < V - 1 ? D::load(xr + v * L)
                      : T == Tail::shifted          ? D::load(xr + v * L - shift)
                                                    : D::load(xr + v * L, last);
            keep_in_register(xv);
            for (int j = 0; j < J; ++j) s[v][j] = D::fmadd(xv, d[j], s[v][j]);
        }
    }
    alignas(64) C lanes[L];
    for (int v = 0; v < V; ++v)
        for (int j = 0; j < J; ++j) {
            D::store(lanes, s[v][j]);
            const index_t from = v == V - 1 ? shift : 0, to = v == V - 1 ? shift + last : L;
            for (index_t l = from; l < to; ++l) {
                C& out = dW[(v * L + l - from) * ld_dW + j];
                out = first ? lanes[l] : out + lanes[l];
            }
        }
}

// The columns left after the whole strips (fewer than V vectors' worth) as one strip of
// Q = q vectors: Q * J sums in flight. One vector at a time had left J chains of FMAs over
// all the rows, bound by their latency (1 or 2 outputs: 1 or 2 chains). A last partial
// vector goes in the strip shifted back to end at the last column where x has a whole
// vector of columns before it (Tail::shifted), masked where it has not (k < L).
template <int Q, int J, Tail T, class C, class S>
inline void col_dots_rest(C* dW, index_t ld_dW, const S* x, index_t ld_x, const C* dZ,
                          index_t ld_dZ, index_t rows, index_t width, index_t q, bool first) {
    if constexpr (Q > 1) {
        if (q < Q)
            return col_dots_rest<Q - 1, J, T>(dW, ld_dW, x, ld_x, dZ, ld_dZ, rows, width, q,
                                              first);
    }
    col_dots_strip<Q, J, T>(dW, ld_dW, x, ld_x, dZ, ld_dZ, rows, width, first);
}

// Strips of V vectors, then the columns left as one narrower strip. One-off A/B (Zen 4,
// dW alone, one thread, batch 1024-8192, n_in 64-300, 1-11 outputs), against the vectors
// left one at a time and with x's chunks folded into the FMAs (keep_in_register in
// col_dots_strip and rows_pass, the same change as in dots): docs/benchmarks.md. A
// column's sum is the same in any strip (from +0, one FMA per row in row order): the
// same bits.
template <int V, int J, class C, class S>
inline void col_dots_block(C* dW, index_t ld_dW, const S* x, index_t ld_x, const C* dZ,
                           index_t ld_dZ, index_t rows, index_t k, bool first) {
    constexpr index_t L = DotOps<C>::lanes, strip = V * L;
    index_t i0 = 0;
    for (; i0 + strip <= k; i0 += strip)
        col_dots_strip<V, J, Tail::whole>(dW + i0 * ld_dW, ld_dW, x + i0, ld_x, dZ, ld_dZ, rows,
                                          strip, first);
    const index_t rest = k - i0, q = (rest + L - 1) / L;
    C* w = dW + i0 * ld_dW;
    const S* xs = x + i0;
    if (rest == 0)
        return;
    else if (rest % L == 0)
        col_dots_rest<V, J, Tail::whole>(w, ld_dW, xs, ld_x, dZ, ld_dZ, rows, rest, q, first);
    else if (k >= L)
        col_dots_rest<V, J, Tail::shifted>(w, ld_dW, xs, ld_x, dZ, ld_dZ, rows, rest, q, first);
    else
        col_dots_rest<V, J, Tail::masked>(w, ld_dW, xs, ld_x, dZ, ld_dZ, rows, rest, q, first);
}

// The same sums with x read along its rows (rows of 4 KB or more, wider than a strip; on
// AVX-512 one output only, col_dots_f):
// a strip reads only V * L values of a row before it moves to the next row, a new page
// each time when a row spans one, which the prefetchers do not follow. Here the J x
// kRowsChunk sums of a chunk of columns stay on the stack (L1), loaded and stored once per G
// rows, and G rows' chunks are read in order: per entry the same operations in the same
// order as col_dots_strip (from +0, one fused multiply-add per row in row order, then
// stored into dW for the first block of rows and added to it for the others), so the same
// bits (tests/test_layer.py, test_few_outputs_dw_along_the_rows_same_bits_as_the_strips).
// A/B on Zen 3 (backward without dx, one and two threads, 512 and 4096 rows, 1-11
// outputs, medians of 7 interleaved rounds): float32 0.36-1.07 of the strips' time at n_in
// 1024-4096, float64 0.33-0.91 at 512-1024, bfloat16 0.40-1.08 at 2048-4096; with shorter
// rows the strips were as fast or faster (0.9-1.3 by rows).
constexpr index_t kRowsChunk = 512;  // columns per chunk: J x 2 KB (float) on the stack

// G rows of x per pass over a chunk's sums, so that each sum is loaded and stored once
// per G rows.
template <int J, int G, bool Partial, class C, class S>
inline void rows_pass(C (*acc)[kRowsChunk], const S* const* xr, const typename DotOps<C>::V (*d)[J],
                      index_t c, index_t count) {
    using D = DotOps<C>;
    typename D::V a[J];
    for (int j = 0; j < J; ++j) a[j] = D::load(acc[j] + c);
    for (int g = 0; g < G; ++g) {
        auto xv = Partial ? D::load(xr[g] + c, count) : D::load(xr[g] + c);
        keep_in_register(xv);
        for (int j = 0; j < J; ++j) a[j] = D::fmadd(xv, d[g][j], a[j]);
    }
    for (int j = 0; j < J; ++j) D::store(acc[j] + c, a[j]);
}

template <int J, int G, class C, class S>
inline void rows_group(C (*acc)[kRowsChunk], const S* x, index_t ld_x, const C* dZ,
                       index_t ld_dZ, index_t width) {
    using D = DotOps<C>;
    constexpr index_t L = D::lanes;
    typename D::V d[G][J];
    const S* xr[G];
    for (int g = 0; g < G; ++g) {
        xr[g] = x + g * ld_x;
        for (int j = 0; j < J; ++j) d[g][j] = D::set1(dZ[g * ld_dZ + j]);
    }
    index_t c = 0;
    for (; c + L <= width; c += L) rows_pass<J, G, false>(acc, xr, d, c, L);
    if (c < width) rows_pass<J, G, true>(acc, xr, d, c, width - c);
}

template <int J, class C, class S>
inline void col_dots_rows(C* dW, index_t ld_dW, const S* x, index_t ld_x, const C* dZ,
                          index_t ld_dZ, index_t rows, index_t k, bool first) {
    using D = DotOps<C>;
    constexpr index_t L = D::lanes;
    constexpr int G = J == 1 ? 4 : 2;
    alignas(64) C acc[J][kRowsChunk];
    for (index_t c0 = 0; c0 < k; c0 += kRowsChunk) {
        const index_t width = k - c0 < kRowsChunk ? k - c0 : kRowsChunk;
        for (int j = 0; j < J; ++j)
            for (index_t c = 0; c < width; c += L) D::store(acc[j] + c, D::zero());
        index_t r = 0;
        for (; r + G <= rows; r += G)
            rows_group<J, G>(acc, x + r * ld_x + c0, ld_x, dZ + r * ld_dZ, ld_dZ, width);
        for (; r < rows; ++r)
            rows_group<J, 1>(acc, x + r * ld_x + c0, ld_x, dZ + r * ld_dZ, ld_dZ, width);
        for (index_t c = 0; c < width; ++c)
            for (int j = 0; j < J; ++j) {
                C& out = dW[(c0 + c) * ld_dW + j];
                out = first ? acc[j][c] : out + acc[j][c];
            }
    }
}

// One group of J (1 to 4) outputs over a chunk of kc columns of m rows: along the rows
// (AVX-512: one output only, col_dots_f) or in strips.
template <int A, class C, class S>
inline void col_dots_group(bool along_rows, index_t J, C* w, index_t ld_dW, const S* xc,
                           index_t ld_x, const C* d, index_t ld_dZ, index_t m, index_t kc,
                           bool first) {
    if (along_rows) {
        if constexpr (A == 8) {
            switch (J) {
                case 1: return col_dots_rows<1>(w, ld_dW, xc, ld_x, d, ld_dZ, m, kc, first);
                case 2: return col_dots_rows<2>(w, ld_dW, xc, ld_x, d, ld_dZ, m, kc, first);
                case 3: return col_dots_rows<3>(w, ld_dW, xc, ld_x, d, ld_dZ, m, kc, first);
                default: return col_dots_rows<4>(w, ld_dW, xc, ld_x, d, ld_dZ, m, kc, first);
            }
        } else {
            return col_dots_rows<1>(w, ld_dW, xc, ld_x, d, ld_dZ, m, kc, first);
        }
    }
    switch (J) {
        case 1: return col_dots_block<8, 1>(w, ld_dW, xc, ld_x, d, ld_dZ, m, kc, first);
        case 2: return col_dots_block<A / 2, 2>(w, ld_dW, xc, ld_x, d, ld_dZ, m, kc, first);
        case 3: return col_dots_block<A / 4, 3>(w, ld_dW, xc, ld_x, d, ld_dZ, m, kc, first);
        default: return col_dots_block<A / 4, 4>(w, ld_dW, xc, ld_x, d, ld_dZ, m, kc, first);
    }
}

// dW = x^T . dZ for few outputs: per block of kColDotsRows rows, x's columns in chunks,
// and within a chunk the groups of up to 4 outputs, so that a chunk read from memory for
// the first group is read from L2 by the others (512 bytes of each row along the strips:
// 256 KB of a 512-row block; kRowsChunk columns along the rows). Each entry's sum is the
// same however the columns are chunked and grouped, so the same bits. A/B on Zen 4
// (backward without dx, 512 and 4096 rows, n_in 256-4096, 3-11 outputs, medians of 9-15
// interleaved rounds), chunked over the whole block per group: AVX-512 0.64-1.03 (a first
// run of 7 rounds: 1.09 and 1.14 at 4096 x 512 on one thread, 1.00-1.03 in the second),
// AVX2 (forced) 0.67-1.11, the gains at 4096 rows with rows of 4 KB or more (x beyond L2).
template <class C, class S>
inline void col_dots_f(C* __restrict dW, index_t ld_dW, const S* __restrict x, index_t ld_x,
                       const C* __restrict dZ, index_t ld_dZ, index_t rows, index_t k,
                       index_t cols) {
    // Sums in registers: 16 of AVX-512's 32, 8 of AVX2's 16 (beside the chunks of x and
    // the broadcast columns of dZ).
    constexpr int A = sizeof(typename DotOps<C>::V) == 64 ? 16 : 8;
    // Rows of a page or more go along the rows (col_dots_rows) where a strip is narrower
    // than the chunk: on AVX2 whatever the outputs, on AVX-512 with one output. A/B on Zen
    // 4, AVX-512, by rows over the strips: one output 0.53-1.08 (float32, float64 and
    // bfloat16; 0.53-0.84 at 4096 rows of 8-32 KB), but 2-11 outputs 0.68-1.56 (1.3-1.56 at
    // n_in 1024), where the strips, twice as wide as AVX2's, keep up.
    const bool by_rows = ld_x * index_t(sizeof(S)) >= 4096 && (A == 8 || cols == 1);
    const index_t chunk = by_rows ? kRowsChunk : 512 / index_t(sizeof(S));
    for (index_t r0 = 0; r0 < rows; r0 += kColDotsRows) {
        const index_t m = rows - r0 < kColDotsRows ? rows - r0 : kColDotsRows;
        const bool first = r0 == 0;
        for (index_t c0 = 0; c0 < k; c0 += chunk) {
            const index_t kc = k - c0 < chunk ? k - c0 : chunk;
            const S* xc = x + r0 * ld_x + c0;
            for (index_t j = 0; j < cols; j += 4) {
                C* w = dW + c0 * ld_dW + j;
                const C* d = dZ + r0 * ld_dZ + j;
                const index_t J = cols - j < 4 ? cols - j : 4;
                // A strip's width: V vectors (V as in col_dots_group) of L columns.
                const index_t strip = (J == 1 ? 8 : J == 2 ? A / 2 : A / 4) * DotOps<C>::lanes;
                col_dots_group<A>(by_rows && kc > strip, J, w, ld_dW, xc, ld_x, d, ld_dZ, m, kc,
                                  first);
            }
        }
    }
}

}  // namespace siglayer::kernels_detail::SIGLAYER_ISA::simd
