// The layer on bfloat16 storage, computing in float (docs/bfloat16.md says where each
// rounding happens). The same tiles, phases and checks as the float layer (layer.cpp);
// what differs is how the products get their operands. Two ways (blas::Bf16Gemm):
//   blas, avx512bf16: a bfloat16 GEMM (MKL's on AMX, or siglayer's own on AVX512-BF16)
//            takes the bfloat16 arrays;
//   convert: the float GEMM takes float copies made here. An operand every tile reads in
//            full is widened once per call, shared; the other tile by tile, x in panels of
//            rows, so that the copy is still in cache when the GEMM reads it; dZ is produced
//            as floats (of bfloat16 values) by the elementwise pass and needs no copy.
// Either way a product's float result goes to a panel of this thread's scratch, and the
// elementwise pass that follows (bias + sigma, or the rounding of dx) reads it from cache.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "blas.hpp"
#include "checks.hpp"
#include "dtypes.hpp"
#include "kernels.hpp"
#include "layer.hpp"
#include "layer_detail.hpp"
#include "operands.hpp"
#include "partition.hpp"
#include "scratch.hpp"

namespace siglayer {

using namespace layer_detail;

namespace {

using bf16 = bfloat16;

// Below this many elements an operand that every tile reads is widened by each tile rather
// than once for the team (see forward).
constexpr index_t kShareWidening = 1 << 18;

// Outputs from which siglayer's own GEMM takes a layer's products (kNarrowOutputs for the
// BLAS's). Its narrow tiles (8 lanes at a time), A read in place, dW as (dZ^T . x)^T and
// dx rounded as stored beat the few-output kernels from 5 outputs: a one-off A/B build (an
// environment toggle, since removed; Zen 4, 8192 x 256 x n_out, 11 interleaved rounds of
// min-of-5, backward from dout) gave GEMM / kernels, forward and fwd+bwd, 1.87 and 1.33 at
// 2 outputs, 1.07 and 0.99 at 4, 0.87 and 0.87 at 5, 0.72 and 0.83 at 6, 0.61 and 0.67 at
// 8 on one thread; 1.05 and 0.94 at 4, 0.87 and 0.88 at 5 on two. At 4 the forward alone
// would lose, so the kernels keep it.
constexpr index_t kOwnGemmOutputs = 5;

// Whether the products of a layer with n_out outputs take bfloat16 operands (a bfloat16
// GEMM) rather than float copies: not below kOwnGemmOutputs on siglayer's own GEMM nor
// below kNarrowOutputs (layer_detail.hpp) on the BLAS's, where forward, dx and dW take
// row_dots, row_combos and col_dots (the float GEMM on panels of x widened where x's rows
// are not contiguous), as a bfloat16 GEMM's tiles stay mostly empty (before the half
// tiles: own GEMM over convert at 8192 x 256 x n_out on Zen 4: n_out 1: forward 3.5x,
// backward 1.45x; 8: 1.69x and 1.01x; 16: 0.88x and 0.80x).
bool blas_path(index_t n_out) {
    const blas::Bf16Gemm path = blas::bf16_gemm_path();
    const index_t from = path == blas::Bf16Gemm::avx512bf16 ? kOwnGemmOutputs : kNarrowOutputs;
    return n_out >= from && path != blas::Bf16Gemm::convert;
}

// Up to kTransposedDW outputs, and from a batch of kTransposedDWBatch rows, siglayer's own
// GEMM computes dW^T = dZ^T . x and transposes it (gradient_products), in chunks of at least
// kTransposedDWColumns columns of x and at most kTransposedDWFloats floats of scratch beyond
// that (1 MiB). The transposition costs n_in x n_out moves whatever the batch, the product
// it speeds up n x n_in x n_out multiply-adds: an A/B build (an environment toggle, since
// removed; Zen 4, backward without dx, n_in 256 and 1024, n_out 16-128, batch 32-4096,
// medians of 5 x 30+ calls, same bits both ways), transposed over direct: on one thread
// 1.1-3.5 (n_in 256) and 1.4-8.9 (1024) below 512 rows, where this path had run up to 128
// outputs (a backward at 64 x 256 x 128 took 1.64x its two bare products); from 512 rows
// 0.57-0.62 at 16 outputs, 0.84-0.94 at 32-48, 0.89-0.97 at 64 (n_in 1024: 0.80-0.92,
// 0.89-0.99, 0.97-1.06), but 0.99-1.07 at 128 (n_in 1024: 1.06-1.12). Two threads alike.
constexpr index_t kTransposedDW = 64;
constexpr index_t kTransposedDWBatch = 512;
constexpr index_t kTransposedDWColumns = 2048;
constexpr index_t kTransposedDWFloats = index_t{1} << 18;

// siglayer's own GEMM: a tile that multiplies several panels of rows by one B packs B once
// for all of them (in this thread's scratch) instead of once per panel (3-7 % of the time
// at L and XL on Zen 4).
bool own_gemm() {
    return blas::bf16_gemm_path() == blas::Bf16Gemm::avx512bf16;
}

// B (K x N, as op_b, ld) packed for own_bf16_gemm_packed_b, in this thread's scratch.
const std::uint16_t* packed_b(blas::Op op_b, index_t K, index_t N, const bf16* B, index_t ld) {
    auto* packed = Scratch::for_this_thread().get<std::uint16_t>(
        Scratch::b_packed16, static_cast<std::size_t>(blas::own_bf16_packed_size(K, N)));
    blas::own_bf16_pack_b(op_b, K, N, B, ld, packed);
    return packed;
}

// packed_b when the tile has more than one panel of rows on the own GEMM; nullptr
// otherwise (each panel calls gemm<bf16>).
const std::uint16_t* packed_once(bool own, index_t rows, index_t panel, blas::Op op_b, index_t K,
                                 index_t N, const bf16* B, index_t ld) {
    if (!own || rows <= panel || K == 0) return nullptr;
    return packed_b(op_b, K, N, B, ld);
}

// Rows per panel for products whose other operand is `width` wide: at least 256, so that
// the BLAS's packing of the other operand (once per call) costs under half a percent of the
// multiply-adds, and more for narrow operands, up to 64 K floats (256 KB) per panel.
index_t panel_rows(index_t width) {
    const index_t rows = 65536 / std::max<index_t>(width, 1);
    return std::max<index_t>(256, rows / 16 * 16);
}

// Inside a parallel region: this thread's share of the rows of m widened into dst
// (C-contiguous). The caller puts a barrier before anyone reads dst.
void widen_shared(float* dst, const MatrixView<bf16>& m) {
    index_t r0 = 0, r1 = 0;
    split_range(m.rows, threads::team_threads(), threads::team_rank(), 1, r0, r1);
    widen_block(dst + r0 * m.cols, m, r0, r1 - r0, 0, m.cols);
}

// The operands of the two gradient products, dW = x^T . dZ and dx = dZ . W^T, one way or
// the other (see the top of this file).
struct GradientOperands {
    bool native = false;
    // blas: x, W and dZ as the BLAS takes them.
    BlasOperand<bf16> x16{}, W16{}, dZ16{};
    // convert: x as given (widened per panel), W and dZ as C-contiguous floats, filled
    // inside the parallel region.
    MatrixView<bf16> x{};
    float* W32 = nullptr;
    float* dZ32 = nullptr;
    // convert with up to 64 outputs (row_combos_path, layer_detail.hpp): W^T widened
    // (n_out x n_in, row stride ld_Wt), for row_combos, in place of W32.
    const float* Wt = nullptr;
    index_t ld_Wt = 0;
    // convert: blas::small_gemm_multiply_adds(), read once per call (dW's float panels).
    double small_gemm = 0.0;
};

// The operands of one backward call, the memory of the float copies taken from the calling
// thread's scratch (the caller sets dZ16 on the blas path). Only the operands of the
// products asked for (dW reads x, dx reads W) are packed or widened.
GradientOperands gradient_operands(const MatrixView<bf16>& x, const MatrixView<bf16>& W,
                                   bool need_dW, bool need_dx) {
    GradientOperands g;
    g.native = blas_path(W.cols);
    const index_t n = x.rows, n_in = x.cols, n_out = W.cols;
    if (g.native) {
        if (n_in > 0 && need_dW) g.x16 = blas_operand(x, Scratch::x_packed);
        if (n_in > 0 && need_dx) g.W16 = blas_operand(W, Scratch::W_packed);
        return g;
    }
    Scratch& scratch = Scratch::for_this_thread();
    g.x = x;
    g.small_gemm = blas::small_gemm_multiply_adds();
    g.dZ32 = scratch.get<float>(Scratch::dZ_widened, static_cast<std::size_t>(n * n_out));
    if (need_dx && row_combos_path<bf16>(x.rows, n_in, n_out)) {
        g.ld_Wt = row_combos_ld<float>(n_in, n_out);
        g.Wt = transposed_for_combos(W, Scratch::W_widened, g.ld_Wt);
    } else if (n_in > 0 && need_dx) {
        g.W32 = scratch.get<float>(Scratch::W_widened, static_cast<std::size_t>(n_in * n_out));
    }
    return g;
}

// dx[r0:r1, j0:j1] = dZ[r0:r1, :] . W[j0:j1, :]^T for the tile t = rows [r0, r1) x columns
// [j0, j1) of dx (n x n_in), rounded once; the rows of dZ it reads are ready.
void dx_tile(OutMatrix<bf16> dx, const GradientOperands& g, const Block& t, index_t n_in,
             index_t n_out) {
    const bool native = g.native;
    const auto& kernel = kernels::active<bf16>();
    Scratch& scratch = Scratch::for_this_thread();
    if (g.Wt) {  // up to 64 outputs: summed and rounded chunk by chunk, in L1
        kernel.row_combos(dx.data + t.i0 * n_in + t.j0, n_in, g.dZ32 + t.i0 * n_out, n_out,
                          g.Wt + t.j0, g.ld_Wt, t.rows(), n_out, t.cols());
        return;
    }
    const BlasOperand<bf16> WT{g.W16.data, flip(g.W16.op), g.W16.ld};
    if (native && own_gemm() && n_out <= blas::own_bf16_rounded_max_k()) {
        // siglayer's own GEMM rounds each sum as it stores it: dx written once, no float
        // panel to round in a second pass (the same bits). With dW^T above, measured on
        // Zen 4 (8192 x 256 x n_out, backward_from_preactivation, one thread): 0.61x the
        // time at 12 outputs, 0.73-0.90 at 16-48, 0.97-1.02 at 64-128.
        const std::uint16_t* packed = packed_b(WT.op, n_out, t.cols(), col_offset(WT, t.j0), WT.ld);
        blas::own_bf16_gemm_packed_b(g.dZ16.op, t.rows(), t.cols(), n_out, row_offset(g.dZ16, t.i0),
                                     g.dZ16.ld, packed, dx.data + t.i0 * n_in + t.j0, n_in);
        return;
    }
    // A panel of rows at a time.
    const index_t ph = std::min(t.rows(), panel_rows(std::max(n_out, t.cols())));
    float* acc = scratch.get<float>(Scratch::acc, static_cast<std::size_t>(ph * t.cols()));
    const std::uint16_t* WT_packed = native ? packed_once(own_gemm(), t.rows(), ph, WT.op, n_out,
                                                          t.cols(), col_offset(WT, t.j0), WT.ld)
                                            : nullptr;
    for (index_t r0 = t.i0; r0 < t.i1; r0 += ph) {
        const index_t m = std::min(ph, t.i1 - r0);
        if (WT_packed) {
            blas::own_bf16_gemm_packed_b(g.dZ16.op, m, t.cols(), n_out, row_offset(g.dZ16, r0),
                                         g.dZ16.ld, WT_packed, acc, t.cols());
        } else if (native) {
            blas::gemm<bf16>(g.dZ16.op, WT.op, m, t.cols(), n_out, 1.0f, row_offset(g.dZ16, r0),
                             g.dZ16.ld, col_offset(WT, t.j0), WT.ld, 0.0f, acc, t.cols());
        } else {
            blas::gemm<float>(blas::Op::N, blas::Op::T, m, t.cols(), n_out, 1.0f,
                              g.dZ32 + r0 * n_out, n_out, g.W32 + t.j0 * n_out, n_out, 0.0f, acc,
                              t.cols());
        }
        if (t.cols() == n_in)  // whole rows of dx: one contiguous run
            kernel.narrow(dx.data + r0 * n_in, acc, m * n_in);
        else
            for (index_t i = 0; i < m; ++i)
                kernel.narrow(dx.data + (r0 + i) * n_in + t.j0, acc + i * t.cols(), t.cols());
    }
}

// dst[i * ld_dst + j] = src[j * ld_src + i] for i < rows, j < cols: src (cols x rows) transposed
// into dst (rows x cols), in 8 x 8 blocks, so that each block reads 8 lines of src and writes
// 8 of dst. Element by element down src's columns, a line of src per element, with
// ld_src * 4 bytes a multiple of 4 KB (n_in = 1024) every line fell into the same L1 set:
// in the A/B above, transposed over direct at 1024 x 1024 x 64 on one thread went from 1.15
// to 0.97, at 32 rows (then still transposed) from 8.2 to 2.7.
void transpose_into(float* dst, index_t ld_dst, const float* src, index_t ld_src, index_t cols,
                    index_t rows) {
    constexpr index_t kB = 8;
    for (index_t i0 = 0; i0 < rows; i0 += kB) {
        const index_t i1 = std::min(rows, i0 + kB);
        for (index_t j0 = 0; j0 < cols; j0 += kB) {
            const index_t j1 = std::min(cols, j0 + kB);
            for (index_t i = i0; i < i1; ++i)
                for (index_t j = j0; j < j1; ++j) dst[i * ld_dst + j] = src[j * ld_src + i];
        }
    }
}

// Inside a parallel region, all of dZ ready: when dW.data is set, dW (float, written
// directly) and, when dx.data is set, dx (rounded once, panel by panel), tiled as the float
// layer tiles them. x is (n, n_in), W is (n_in, n_out).
void gradient_products(OutMatrix<bf16> dx, OutMatrix<float> dW, const GradientOperands& g,
                       index_t n, index_t n_in, index_t n_out) {
    if (n_in == 0 || n_out == 0 || n == 0) return;
    const bool native = g.native;
    const auto& kernel = kernels::active<bf16>();
    const int team = threads::team_threads();
    const Tiling dW_tiles = dW.data ? Tiling(n_in, n_out, team) : Tiling();
    const Tiling dx_tiles = dx.data ? Tiling(n, n_in, team) : Tiling();
    for_each_tile({&dW_tiles, &dx_tiles}, [&](const Tiling& tiling, const Block& t) {
        Scratch& scratch = Scratch::for_this_thread();
        if (&tiling == &dW_tiles) {
            // dW[i0:i1, j0:j1] = x[:, i0:i1]^T . dZ[:, j0:j1], summed over the batch.
            float* dW_blk = dW.data + t.i0 * n_out + t.j0;
            if (native && own_gemm() && n_out <= kTransposedDW && n >= kTransposedDWBatch) {
                // dW^T[j0:j1, i0:i1] = dZ[:, j0:j1]^T . x[:, i0:i1] into scratch, then
                // transposed into dW: x becomes op(B), packed by interleaving its rows in
                // order (or, with up to 24 outputs and n_in up to 512, read in place and
                // paired in the microkernel: gemm_bf16.cpp, kInPlaceBRows), where as op(A) =
                // x^T it would be gathered 12 columns at a time.
                // The same sums in the same order: the same bits, except which NaN a sum
                // carries when x[k, i] and dZ[k, j] are both NaN (vdpbf16ps keeps its first
                // operand's, now dZ's; dW is NaN either way). Measured on Zen 4, one thread,
                // the bare product 8192 x 256 x n_out: 0.54-0.61x the time at 12-20 outputs,
                // 0.78-0.89 at 32-64; at 256-1024 outputs no gain (0.93-1.04); so only where
                // kTransposedDW and kTransposedDWBatch say (above). Chunks of at least 2048 columns
                // of x keep the scratch within 1 MiB whatever n_in (each repacks dZ^T: a 1/2048
                // share of the work).
                const index_t chunk = std::min(
                    t.rows(), std::max(kTransposedDWColumns, kTransposedDWFloats / t.cols()));
                float* dWt =
                    scratch.get<float>(Scratch::acc, static_cast<std::size_t>(chunk * t.cols()));
                const BlasOperand<bf16> dZT{g.dZ16.data, flip(g.dZ16.op), g.dZ16.ld};
                for (index_t c0 = 0; c0 < t.rows(); c0 += chunk) {
                    const index_t c = std::min(chunk, t.rows() - c0);
                    blas::gemm<bf16>(dZT.op, g.x16.op, t.cols(), c, n, 1.0f, row_offset(dZT, t.j0),
                                     dZT.ld, col_offset(g.x16, t.i0 + c0), g.x16.ld, 0.0f, dWt, c);
                    transpose_into(dW_blk + c0 * n_out, n_out, dWt, c, t.cols(), c);
                }
                return;
            }
            if (native) {
                const BlasOperand<bf16> xT{g.x16.data, flip(g.x16.op), g.x16.ld};
                blas::gemm<bf16>(xT.op, g.dZ16.op, t.rows(), t.cols(), n, 1.0f,
                                 row_offset(xT, t.i0), xT.ld, col_offset(g.dZ16, t.j0), g.dZ16.ld,
                                 0.0f, dW_blk, n_out);
                return;
            }
            if (few_outputs_path(n_in, n_out) && g.x.col_stride == 1) {  // col_dots
                kernel.col_dots(dW_blk, n_out, g.x.data + t.i0, g.x.row_stride, g.dZ32 + t.j0,
                                n_out, n, t.rows(), t.cols());
                return;
            }
            // The batch in panels: x[k0:k1, i0:i1] widened, then accumulated into dW. Panels
            // for OpenBLAS's small-matrix kernels where they run (dw_panel_rows, the float
            // layer's rule), at most panel_rows(n_in), so that the widened panel stays
            // cache-sized (a review, helper-89: 4 MB with few outputs of an F-ordered x,
            // where the rule alone sets the height).
            const index_t small = dw_panel_rows(g.small_gemm, n, n_in, n_out);
            const index_t kp =
                small < n ? std::min(small, panel_rows(n_in)) : std::min(n, panel_rows(t.rows()));
            float* xw =
                scratch.get<float>(Scratch::x_widened, static_cast<std::size_t>(kp * t.rows()));
            for (index_t k0 = 0; k0 < n; k0 += kp) {
                const index_t k = std::min(kp, n - k0);
                widen_block(xw, g.x, k0, k, t.i0, t.rows());
                blas::gemm<float>(blas::Op::T, blas::Op::N, t.rows(), t.cols(), k, 1.0f, xw,
                                  t.rows(), g.dZ32 + k0 * n_out + t.j0, n_out,
                                  k0 == 0 ? 0.0f : 1.0f, dW_blk, n_out);
            }
            return;
        }
        dx_tile(dx, g, t, n_in, n_out);
    });
}

}  // namespace

template <>
void forward<bf16>(OutMatrix<bf16> out, MatrixView<bf16> x, MatrixView<bf16> W,
                   VectorView<float> b) {
    check_forward(x, W, b);
    check_forward_output(out, x, W, b);
    const index_t n = x.rows, n_in = x.cols, n_out = W.cols;
    if (n == 0 || n_out == 0) return;

    Scratch& scratch = Scratch::for_this_thread();
    const float* bias = b.data;
    if (b.stride != 1) {
        float* packed = scratch.get<float>(Scratch::b_packed, n_out);
        for (index_t j = 0; j < n_out; ++j) packed[j] = b.data[j * b.stride];
        bias = packed;
    }
    const bool native = blas_path(n_out);
    if (!native && row_dots_path(x, n_out)) {
        forward_row_dots(out, x, W, bias);
        return;
    }
    const bool own = native && own_gemm();
    // convert: the operand every tile reads in full (W when the tiles are bands of rows, x
    // when they are bands of columns, as Tiling cuts the longer side) is widened once,
    // shared, when it is large; a small one is widened by each tile for itself, which costs
    // less than the barrier (the team's wake-up) that sharing needs. The rest tile by tile,
    // x in panels of rows.
    const bool row_bands = n >= n_out;
    const index_t full = row_bands ? n_in * n_out : n * n_in;
    BlasOperand<bf16> xo{}, Wo{};
    float* shared32 = nullptr;
    if (n_in > 0 && native) {
        xo = blas_operand(x, Scratch::x_packed);
        Wo = blas_operand(W, Scratch::W_packed);
    } else if (n_in > 0 && full >= kShareWidening) {
        shared32 =
            row_bands
                ? scratch.get<float>(Scratch::W_widened, static_cast<std::size_t>(n_in * n_out))
                : scratch.get<float>(Scratch::x_widened, static_cast<std::size_t>(n * n_in));
    }
    // convert: the float products in panels for OpenBLAS's small-matrix kernels where they
    // run (gemm_panel_rows, as the float layer's forward), read once per call.
    const double small_gemm = native ? 0.0 : blas::small_gemm_multiply_adds();
    const auto& kernel = kernels::active<bf16>();
    run_parallel(threads_for_gemm(n, n_out, n_in), [&] {
        blas::SingleThreaded single;
        if (shared32) {
            widen_shared(shared32, row_bands ? W : x);
            threads::team_barrier();
        }
        const Tiling tiles(n, n_out, threads::team_threads());
        for_each_tile({&tiles}, [&](const Tiling&, const Block& blk) {
            // A panel of rows at a time: its product lands in acc, in cache, for bias + sigma
            // and the one rounding to bfloat16.
            Scratch& mine = Scratch::for_this_thread();
            const index_t cols = blk.cols();
            const index_t ph = std::min({blk.rows(), panel_rows(std::max(n_in, cols)),
                                         gemm_panel_rows(small_gemm, blk.rows(), cols, n_in)});
            float* acc = mine.get<float>(Scratch::acc, static_cast<std::size_t>(ph * cols));
            const std::uint16_t* W_packed = native && n_in > 0
                                                ? packed_once(own, blk.rows(), ph, Wo.op, n_in,
                                                              cols, col_offset(Wo, blk.j0), Wo.ld)
                                                : nullptr;
            // convert: this tile's columns of W, shared or its own, and x, shared or in
            // panels of its own.
            const float* W_tile = nullptr;
            index_t ld_W = n_out;
            float* xw = nullptr;
            if (!native && n_in > 0) {
                if (shared32 && row_bands) {
                    W_tile = shared32 + blk.j0;
                } else {
                    float* w =
                        mine.get<float>(Scratch::gemm_b, static_cast<std::size_t>(n_in * cols));
                    widen_block(w, W, 0, n_in, blk.j0, cols);
                    W_tile = w;
                    ld_W = cols;
                }
                if (!shared32 || row_bands)
                    xw = mine.get<float>(Scratch::gemm_a, static_cast<std::size_t>(ph * n_in));
            }
            for (index_t r0 = blk.i0; r0 < blk.i1; r0 += ph) {
                const index_t m = std::min(ph, blk.i1 - r0);
                if (n_in == 0) {
                    std::fill(acc, acc + m * cols, 0.0f);
                } else if (W_packed) {
                    blas::own_bf16_gemm_packed_b(xo.op, m, cols, n_in, row_offset(xo, r0), xo.ld,
                                                 W_packed, acc, cols);
                } else if (native) {
                    blas::gemm<bf16>(xo.op, Wo.op, m, cols, n_in, 1.0f, row_offset(xo, r0), xo.ld,
                                     col_offset(Wo, blk.j0), Wo.ld, 0.0f, acc, cols);
                } else {
                    const float* x_panel = xw;
                    if (xw)
                        widen_block(xw, x, r0, m, 0, n_in);
                    else
                        x_panel = shared32 + r0 * n_in;  // column bands, x shared
                    blas::gemm<float>(blas::Op::N, blas::Op::N, m, cols, n_in, 1.0f, x_panel, n_in,
                                      W_tile, ld_W, 0.0f, acc, cols);
                }
                kernel.bias_sigmoid_rows(out.data + r0 * n_out + blk.j0, n_out, acc, cols,
                                         bias + blk.j0, m, cols);
            }
        });
    });
}

template <>
void backward<bf16>(OutMatrix<bf16> dx, OutMatrix<float> dW, float* db, MatrixView<bf16> dout,
                    MatrixView<bf16> x, MatrixView<bf16> W, MatrixView<bf16> out) {
    check_backward(dout, x, W, out);
    const index_t n = x.rows, n_in = x.cols, n_out = W.cols;
    if (!check_gradient_outputs(
            dx, dW, db, n, n_in, n_out,
            {{"dout", extent(dout)}, {"x", extent(x)}, {"W", extent(W)}, {"out", extent(out)}}))
        return;

    index_t ld_dout = 0, ld_out = 0;
    const bf16* dout_rows = row_major(dout, Scratch::dout_packed, ld_dout);
    const bf16* out_rows = row_major(out, Scratch::out_packed, ld_out);
    GradientOperands g = gradient_operands(x, W, dW.data != nullptr, dx.data != nullptr);
    const bool native = g.native;
    bf16* dZ16 = nullptr;
    if (native) {
        dZ16 =
            Scratch::for_this_thread().get<bf16>(Scratch::dZ, static_cast<std::size_t>(n * n_out));
        g.dZ16 = {dZ16, blas::Op::N, n_out};
    }
    float* dZ32 = g.dZ32;
    float* W32 = g.W32;
    // db's float64 block totals and its block sums for every column, taken here: in the
    // region they would be allocated before its barrier (see RegionError). The block sums
    // in scratch, not in the caller's db, as layer.cpp's backward says why.
    Scratch& scratch = Scratch::for_this_thread();
    double* totals = scratch.get<double>(Scratch::db_total, static_cast<std::size_t>(n_out));
    float* db_parts = scratch.get<float>(Scratch::db_part, static_cast<std::size_t>(n_out));
    const auto& kernel = kernels::active<bf16>();
    const int threads = threads_for_gemm(n, n_out, std::max<index_t>(n_in, 1));
    // Rows cut between the threads as layer.cpp's backward cuts them (rows_for_threads),
    // but where dx needs W widened for the team first (convert past 64 outputs), and
    // where x is wider than the batch: dx's tiles would be whole rows where the column split
    // cuts their columns, and each thread's scratch for them (W packed, the float panel)
    // twice the size (a review, helper-84: 254 MiB kept against 133 with MKL at 512 x
    // 100000 x 64 on two threads). Not at 256 x 512 x 512 then, where the A/B found the
    // row split level (rows_for_threads).
    const index_t blocks = (n + kSumRows - 1) / kSumRows;
    float* block_sums =
        W32 == nullptr && n >= n_in && rows_for_threads(blocks, threads)
            ? scratch.get<float>(Scratch::db_blocks, static_cast<std::size_t>(blocks * n_out))
            : nullptr;
    run_parallel(threads, [&] {
        blas::SingleThreaded single;
        const int team = threads::team_threads();
        if (block_sums && rows_for_threads(blocks, team)) {
            backward_by_rows(  // the column sums of the unrounded dZ
                db, block_sums, n, n_out, team,
                [&](index_t i0, index_t i1, float* sums, double* total) {
                    if (native)
                        kernel.dz_colsum(dZ16 + i0 * n_out, n_out, sums, total,
                                         dout_rows + i0 * ld_dout, ld_dout, out_rows + i0 * ld_out,
                                         ld_out, i1 - i0, n_out);
                    else
                        kernel.dz_colsum_c(dZ32 + i0 * n_out, n_out, sums, total,
                                           dout_rows + i0 * ld_dout, ld_dout,
                                           out_rows + i0 * ld_out, ld_out, i1 - i0, n_out);
                },
                [&](const Block& r) {
                    if (dx.data && n_in > 0)
                        dx_tile(dx, g, Block{r.i0, r.i1, 0, n_in}, n_in, n_out);
                },
                [&] { gradient_products(OutMatrix<bf16>{}, dW, g, n, n_in, n_out); });
            return;
        }
        // Phase 1, tiles of whole columns: dZ (rounded to bfloat16 once) and db (the
        // unrounded dZ summed in blocks of rows, views.hpp: the same for any thread count);
        // W widened.
        const Tiling columns(1, n_out, threads::team_threads());
        for_each_tile({&columns}, [&](const Tiling&, const Block& c) {
            double* total = totals + c.j0;
            float* part = db_parts + c.j0;
            if (native)
                kernel.dz_colsum(dZ16 + c.j0, n_out, part, total, dout_rows + c.j0, ld_dout,
                                 out_rows + c.j0, ld_out, n, c.cols());
            else
                kernel.dz_colsum_c(dZ32 + c.j0, n_out, part, total, dout_rows + c.j0, ld_dout,
                                   out_rows + c.j0, ld_out, n, c.cols());
            std::copy(part, part + c.cols(), db + c.j0);
        });
        if (W32) widen_shared(W32, W);
        // Phase 2: the products need all of dZ (and W).
        threads::team_barrier();
        gradient_products(dx, dW, g, n, n_in, n_out);
    });
}

template <>
void backward_from_preactivation<bf16>(OutMatrix<bf16> dx, OutMatrix<float> dW, float* db,
                                       MatrixView<bf16> dZ, MatrixView<bf16> x,
                                       MatrixView<bf16> W) {
    check_backward_from_preactivation(dZ, x, W);
    const index_t n = x.rows, n_in = x.cols, n_out = W.cols;
    if (!check_gradient_outputs(dx, dW, db, n, n_in, n_out,
                                {{"dZ", extent(dZ)}, {"x", extent(x)}, {"W", extent(W)}}))
        return;

    GradientOperands g = gradient_operands(x, W, dW.data != nullptr, dx.data != nullptr);
    const bool native = g.native;
    if (native) g.dZ16 = blas_operand(dZ, Scratch::dZ);
    float* dZ32 = g.dZ32;
    float* W32 = g.W32;
    run_parallel(threads_for_gemm(n, n_out, std::max<index_t>(n_in, 1)), [&] {
        blas::SingleThreaded single;
        if (!native) {
            widen_shared(dZ32, dZ);
            if (W32) widen_shared(W32, W);
            threads::team_barrier();
        }
        // db by columns, each summed in blocks of rows as in backward (the same values
        // either way: dZ is an input, exact in float).
        const Tiling columns(1, n_out, threads::team_threads());
        for_each_tile({&columns}, [&](const Tiling&, const Block& c) {
            if (native)
                column_sums(db, g.dZ16, n, c.j0, c.j1);
            else
                column_sums(db, BlasOperand<float>{dZ32, blas::Op::N, n_out}, n, c.j0, c.j1);
        });
        gradient_products(dx, dW, g, n, n_in, n_out);
    });
}

}  // namespace siglayer
