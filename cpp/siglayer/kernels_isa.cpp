// Compiled once per instruction set; SIGLAYER_ISA names the copy (see CMakeLists.txt).
#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE__)
#include <xmmintrin.h>
#else
#include <cfenv>
#endif

#include "dtypes.hpp"
#include "kernels.hpp"
#include "kernels_impl.hpp"

#ifndef SIGLAYER_ISA
#error "SIGLAYER_ISA must name the instruction set this copy is compiled for"
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include "kernels_simd.hpp"
#define SIGLAYER_SIGMOID_KERNELS kernels_detail::SIGLAYER_ISA::simd
#else
#define SIGLAYER_SIGMOID_KERNELS kernels_detail::SIGLAYER_ISA
#endif

namespace siglayer::kernels::SIGLAYER_ISA {

namespace detail = kernels_detail::SIGLAYER_ISA;

// sigma runs in round-to-nearest whatever rounding mode the caller set (fesetround): its
// range reduction (k = x log2(e) rounded by adding and subtracting a shift) and its
// bounds assume it; under FE_UPWARD it gave sigma > 1 and errors of 1000 ulp. Only the
// rounding bits of the SSE control word change, for the kernel's duration; flush-to-zero
// and denormals-are-zero stay as the caller set them (threads.cpp), and the products
// around sigma keep the caller's mode.
struct NearestRounding {
#if defined(__SSE__)
    static constexpr unsigned kRoundingBits = 0x6000u;  // MXCSR.RC, 00 = to nearest
    unsigned saved = _mm_getcsr();
    NearestRounding() {
        if (saved & kRoundingBits) _mm_setcsr(saved & ~kRoundingBits);
    }
    ~NearestRounding() {  // the caller's rounding back; exception flags raised meanwhile stay
        if (saved & kRoundingBits) _mm_setcsr(_mm_getcsr() | (saved & kRoundingBits));
    }
#else
    int saved = std::fegetround();
    NearestRounding() {
        if (saved != FE_TONEAREST) std::fesetround(FE_TONEAREST);
    }
    ~NearestRounding() {
        if (saved != FE_TONEAREST) std::fesetround(saved);
    }
#endif
    NearestRounding(const NearestRounding&) = delete;
    NearestRounding& operator=(const NearestRounding&) = delete;
};

// bias + sigma over out (rows x cols, row stride ld) from acc (row stride ld_acc), by
// sweep(out, ld, acc, ld_acc, b, rows, cols), which runs one row at a time. Rows that lie
// end to end (ld == ld_acc == cols), two or more to kGroupSpan values, are swept in groups,
// each group as one long row with the bias repeated to match: a vector sweep per row of one
// or two elements (n_out = 1, a logistic-regression head) spent ~30 ns a row on loop
// overhead, and a row of 16 to 31 float values was one or two sigmoids with nothing to
// overlap them (the sweep pipelines two vectors from 32 values on). Each value's operations
// are the same either way, so the same bits. A/B on Zen 4 (forward, n_in 32-256, 8-128
// outputs, one and two threads, medians of 11 interleaved rounds), grouping from 16 columns
// up to 128 over rows of 16 and more one at a time: bfloat16 0.47-0.99 of the time (0.47-0.55
// at 24 outputs), float32 0.59-1.00, float64 0.92-1.01.
constexpr index_t kGroupSpan = 256;

template <class T, class C, class Sweep>
static void bias_sigmoid_grouped(T* out, index_t ld, C* acc, index_t ld_acc, const C* b,
                                 index_t rows, index_t cols, Sweep sweep) {
    if (2 * cols > kGroupSpan || ld != cols || ld_acc != cols || rows < 2) {
        sweep(out, ld, acc, ld_acc, b, rows, cols);
        return;
    }
    const index_t group = kGroupSpan / cols;  // rows per long row
    C bias[kGroupSpan];
    // b once, then the pattern doubled by copies (about log2(group) memcpy calls); the tile is
    // built per panel of rows. A division per entry (i % cols) had taken a tenth of the
    // forward's cycles at 2048 x 64 x 4 (perf, Zen 4), a memcpy call per row 1.2-1.3x that
    // (float64, one output), and a counter entry by entry (256 scalar steps a panel with one
    // output) a quarter of them at 8192 x 16 x 1. Doubled over counted (Zen 4, forward, two
    // builds in alternate processes, three each, medians of 15 rounds, bits equal): one
    // output at n_in 16-64 0.72-0.95 of the time (float32, float64, bfloat16; one and two
    // threads), two outputs 0.89-0.99, four and more 0.94-1.01 (float32 on two threads
    // aside: its times jumped between two levels in both builds).
    std::memcpy(bias, b, static_cast<std::size_t>(cols) * sizeof(C));
    for (index_t filled = cols; filled < group * cols; filled *= 2)
        std::memcpy(bias + filled, bias,
                    static_cast<std::size_t>(std::min(filled, group * cols - filled)) * sizeof(C));
    for (index_t r = 0; r < rows; r += group) {
        const index_t span = (rows - r < group ? rows - r : group) * cols;
        sweep(out + r * cols, span, acc + r * cols, span, bias, 1, span);
    }
}

// float and double: storage is compute.
template <class T>
static void sigmoid(T* y, const T* z, index_t count) {
    NearestRounding nearest;
    SIGLAYER_SIGMOID_KERNELS::sigmoid(y, z, count);
}

template <class T>
static void bias_sigmoid_rows(T* out, index_t ld, T* acc, index_t ld_acc, const T* b, index_t rows,
                              index_t cols) {
    NearestRounding nearest;
    bias_sigmoid_grouped(
        out, ld, acc, ld_acc, b, rows, cols,
        [](T* o, index_t ldo, T* a, index_t lda, const T* bb, index_t r, index_t c) {
            SIGLAYER_SIGMOID_KERNELS::bias_sigmoid_rows(o, ldo, a, lda, bb, r, c);
        });
}

template <class T>
static void dz_colsum(T* dZ, index_t ld_dZ, T* db, double* total, const T* dout, index_t ld_dout,
                      const T* out, index_t ld_out, index_t rows, index_t cols) {
    detail::dz_colsum(dZ, ld_dZ, db, total, dout, ld_dout, out, ld_out, rows, cols);
}

template <class T>
static void copy(T* dst, const T* src, index_t count) {
    for (index_t i = 0; i < count; ++i) dst[i] = src[i];
}

// bfloat16: float kernels between a widening and a rounding.
static const std::uint16_t* bits(const bfloat16* p) {
    return reinterpret_cast<const std::uint16_t*>(p);
}
static std::uint16_t* bits(bfloat16* p) {
    return reinterpret_cast<std::uint16_t*>(p);
}

static void widen_bf16(float* dst, const bfloat16* src, index_t count) {
    detail::widen_bf16(dst, bits(src), count);
}

static void narrow_bf16(bfloat16* dst, const float* src, index_t count) {
    detail::narrow_bf16(bits(dst), src, count);
}

static void sigmoid_bf16(bfloat16* y, const bfloat16* z, index_t count) {
    NearestRounding nearest;
    constexpr index_t chunk = 512;  // on the stack, in L1
    alignas(64) float buf[chunk];
    for (index_t i = 0; i < count; i += chunk) {
        const index_t n = count - i < chunk ? count - i : chunk;
        widen_bf16(buf, z + i, n);
        SIGLAYER_SIGMOID_KERNELS::sigmoid(buf, buf, n);
        narrow_bf16(y + i, buf, n);
    }
}

// Row by row, so that each row of acc is still in L1 when it is rounded.
static void bias_sigmoid_rows_bf16(bfloat16* out, index_t ld, float* acc, index_t ld_acc,
                                   const float* b, index_t rows, index_t cols) {
    NearestRounding nearest;
    bias_sigmoid_grouped(
        out, ld, acc, ld_acc, b, rows, cols,
        [](bfloat16* o, index_t ldo, float* a, index_t lda, const float* bb, index_t r, index_t c) {
            for (index_t row = 0; row < r; ++row) {
                float* a_row = a + row * lda;
                SIGLAYER_SIGMOID_KERNELS::bias_sigmoid_rows(a_row, lda, a_row, lda, bb, 1, c);
                narrow_bf16(o + row * ldo, a_row, c);
            }
        });
}

static void dz_colsum_bf16(bfloat16* dZ, index_t ld_dZ, float* db, double* total,
                           const bfloat16* dout, index_t ld_dout, const bfloat16* out,
                           index_t ld_out, index_t rows, index_t cols) {
    detail::dz_colsum_bf16(bits(dZ), ld_dZ, db, total, bits(dout), ld_dout, bits(out), ld_out, rows,
                           cols);
}

static void dz_colsum_bf16_as_float(float* dZ, index_t ld_dZ, float* db, double* total,
                                    const bfloat16* dout, index_t ld_dout, const bfloat16* out,
                                    index_t ld_out, index_t rows, index_t cols) {
    detail::dz_colsum_bf16(dZ, ld_dZ, db, total, bits(dout), ld_dout, bits(out), ld_out, rows,
                           cols);
}

// The products of a layer with few outputs, x read as stored (bfloat16 widened in
// registers).
static void row_dots_f32(float* acc, index_t ld_acc, const float* x, index_t ld_x, const float* Wt,
                         index_t rows, index_t k, index_t cols, bool streamed) {
    SIGLAYER_SIGMOID_KERNELS::row_dots_f(acc, ld_acc, x, ld_x, Wt, rows, k, cols, streamed);
}

static void row_dots_bf16(float* acc, index_t ld_acc, const bfloat16* x, index_t ld_x,
                          const float* Wt, index_t rows, index_t k, index_t cols, bool streamed) {
    SIGLAYER_SIGMOID_KERNELS::row_dots_f(acc, ld_acc, bits(x), ld_x, Wt, rows, k, cols, streamed);
}

static void row_combos_f32(float* dst, index_t ld_dst, const float* dZ, index_t ld_dZ,
                           const float* Wt, index_t ld_Wt, index_t rows, index_t k, index_t cols) {
    SIGLAYER_SIGMOID_KERNELS::row_combos_f(dst, ld_dst, dZ, ld_dZ, Wt, ld_Wt, rows, k, cols,
                                           &copy<float>);
}

static void row_combos_bf16(bfloat16* dst, index_t ld_dst, const float* dZ, index_t ld_dZ,
                            const float* Wt, index_t ld_Wt, index_t rows, index_t k, index_t cols) {
    SIGLAYER_SIGMOID_KERNELS::row_combos_f(dst, ld_dst, dZ, ld_dZ, Wt, ld_Wt, rows, k, cols,
                                           &narrow_bf16);
}

static void col_dots_f32(float* dW, index_t ld_dW, const float* x, index_t ld_x, const float* dZ,
                         index_t ld_dZ, index_t rows, index_t k, index_t cols) {
    SIGLAYER_SIGMOID_KERNELS::col_dots_f(dW, ld_dW, x, ld_x, dZ, ld_dZ, rows, k, cols);
}

static void row_dots_f64(double* acc, index_t ld_acc, const double* x, index_t ld_x,
                         const double* Wt, index_t rows, index_t k, index_t cols, bool streamed) {
    SIGLAYER_SIGMOID_KERNELS::row_dots_f(acc, ld_acc, x, ld_x, Wt, rows, k, cols, streamed);
}

static void row_combos_f64(double* dst, index_t ld_dst, const double* dZ, index_t ld_dZ,
                           const double* Wt, index_t ld_Wt, index_t rows, index_t k, index_t cols) {
    SIGLAYER_SIGMOID_KERNELS::row_combos_f(dst, ld_dst, dZ, ld_dZ, Wt, ld_Wt, rows, k, cols,
                                           &copy<double>);
}

static void col_dots_f64(double* dW, index_t ld_dW, const double* x, index_t ld_x, const double* dZ,
                         index_t ld_dZ, index_t rows, index_t k, index_t cols) {
    SIGLAYER_SIGMOID_KERNELS::col_dots_f(dW, ld_dW, x, ld_x, dZ, ld_dZ, rows, k, cols);
}

static void col_dots_bf16(float* dW, index_t ld_dW, const bfloat16* x, index_t ld_x,
                          const float* dZ, index_t ld_dZ, index_t rows, index_t k, index_t cols) {
    SIGLAYER_SIGMOID_KERNELS::col_dots_f(dW, ld_dW, bits(x), ld_x, dZ, ld_dZ, rows, k, cols);
}

// Table::combo_outputs: row_combos' dx up to 64 outputs by hand, the portable loop's up
// to 11 (layer_detail.hpp, row_combos_path).
#if defined(__AVX2__) && defined(__FMA__)
constexpr index_t kComboOutputs = 64;
#else
constexpr index_t kComboOutputs = 11;
#endif

// Constant-initialized: the loader fills in the addresses, no code of this instruction set
// runs to build a table (building one in code let the compiler use AVX-512 stores in the
// AVX-512 copy, on every CPU).
template <class T>
constexpr Table<T> make_table() {
    if constexpr (std::is_same_v<T, bfloat16>)
        return Table<T>{&sigmoid_bf16,   &bias_sigmoid_rows_bf16,
                        &dz_colsum_bf16, &dz_colsum_bf16_as_float,
                        &widen_bf16,     &narrow_bf16,
                        &row_dots_bf16,  &row_combos_bf16,
                        &col_dots_bf16,  kComboOutputs};
    else if constexpr (std::is_same_v<T, float>)
        return Table<T>{
            &sigmoid<T>, &bias_sigmoid_rows<T>, &dz_colsum<T>,   &dz_colsum<T>, &copy<T>,
            &copy<T>,    &row_dots_f32,         &row_combos_f32, &col_dots_f32, kComboOutputs};
    else
        return Table<T>{
            &sigmoid<T>, &bias_sigmoid_rows<T>, &dz_colsum<T>,   &dz_colsum<T>, &copy<T>,
            &copy<T>,    &row_dots_f64,         &row_combos_f64, &col_dots_f64, kComboOutputs};
}

template <class T>
constexpr Table<T> the_table = make_table<T>();

template <class T>
const Table<T>& table() {
    return the_table<T>;
}

#define SIGLAYER_INSTANTIATE(T) template const Table<T>& table<T>();
SIGLAYER_FOR_EACH_DTYPE(SIGLAYER_INSTANTIATE)
#undef SIGLAYER_INSTANTIATE

}  // namespace siglayer::kernels::SIGLAYER_ISA
