// How a matrix product is shared between the OpenMP threads of one parallel region:
// the output is cut into tiles, and each thread calls single-threaded BLAS on the tiles
// it takes.
// Used by the layer (layer.cpp) and by the bare product (gemm.cpp) that the
// benchmarks take as the GEMM floor, so both split the work the same way.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <initializer_list>
#include <mutex>
#include <stdexcept>
#include <string>

#include "blas.hpp"
#include "threads.hpp"
#include "views.hpp"

namespace siglayer {

// A matrix as BLAS takes it: op(stored) is the logical matrix, stored row-major with
// leading dimension ld.
template <class T>
struct BlasOperand {
    const T* data;
    blas::Op op;
    index_t ld;
};

inline blas::Op flip(blas::Op op) {
    return op == blas::Op::N ? blas::Op::T : blas::Op::N;
}

// What the threads of one parallel region share: the first exception thrown in it (a
// scratch allocation that failed: std::bad_alloc), kept for run_parallel to rethrow on
// the calling thread once the region has ended, and the counters of its worksharing
// loops (for_each_tile). An exception may leave neither a region (std::terminate: the
// process aborted) nor an iteration of a worksharing loop, so each thread's body and
// each tile run through run(); after a failure the team skips the tiles it has not
// started, but every thread still runs its whole body: a thread that skipped a
// worksharing loop would leave the loops' numbering (threads::next_loop) out of step, or
// a barrier short of a thread. No exception may be thrown outside a tile before a barrier
// or a loop: every allocation a region makes outside its tiles comes after its last one,
// so that a thread that stops early never leaves the others waiting.
class RegionError {
public:
    // The next unclaimed iteration of the region's loop number `loop` (threads::next_loop).
    std::atomic<index_t>& loop_counter(int loop) {
        if (loop < 0 || loop >= kLoops)
            throw std::logic_error("siglayer: more worksharing loops in a region than " +
                                   std::to_string(kLoops));
        return loops_[loop];
    }

    enum class After { skip, run };  // what run(f) does once the region has failed
    template <class F>
    void run(const F& f, After after_failure = After::skip) noexcept {
        if (after_failure == After::skip && failed_.load(std::memory_order_relaxed)) return;
        try {
            f();
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!first_) first_ = std::current_exception();
            failed_.store(true, std::memory_order_relaxed);
        }
    }
    void rethrow() const {
        if (first_) std::rethrow_exception(first_);
    }
    // The region this thread is running for run_parallel, or nullptr outside one (or on
    // its direct path, where exceptions simply propagate).
    static RegionError*& current() {
        static thread_local RegionError* region = nullptr;
        return region;
    }

private:
    std::mutex mutex_;
    std::exception_ptr first_;
    std::atomic<bool> failed_{false};
    static constexpr int kLoops = 4;  // the layer's regions have at most three
    std::atomic<index_t> loops_[kLoops]{};
};

// f() inside a region guarded as RegionError says, or plainly outside one.
template <class F>
void guarded(const F& f) {
    if (RegionError* region = RegionError::current())
        region->run(f);
    else
        f();
}

// Runs body() on `threads` threads, or directly when one is enough: even a one-thread
// parallel region costs a noticeable part of a small layer's time. The team is one of
// siglayer's own OpenMP runtime or, on the home thread of a process that has loaded
// PyTorch's libgomp, one of that pool (threads.hpp, "borrowed"); body() sees it only
// through threads::team_rank, team_threads and team_barrier, and for_each_tile. Called
// from inside a caller's own parallel region (a C++ frontend's, or a team of ours), body()
// runs on the calling thread as a team of one, whose loops and barriers are its own, not
// the caller's team's (whose other threads never reach them). Every thread of the team
// computes in the caller's floating-point mode (threads.hpp). An exception in a region
// (RegionError) is rethrown here, after it.
template <class Body>
void run_parallel(int threads, const Body& body) {
    blas::claim_single_threaded();
    if (threads::serial()) {  // a forked child whose pool could not be released (threads.hpp)
        body();
        return;
    }
    const bool nested = threads::team_threads() > 1 || threads::in_parallel();
    if (threads <= 1 && !nested) {
        body();
        return;
    }
    RegionError error;
    const unsigned mode = threads::fp_mode();  // the caller's, for every thread of the team
    const auto team_body = [&](threads::TeamKind kind) {
        const unsigned own_mode = threads::fp_mode();  // given back: pool threads are shared
        threads::set_fp_mode(mode);
        const threads::TeamScope team(kind);
        RegionError*& current = RegionError::current();
        RegionError* const outer = current;
        current = &error;
        error.run(body, RegionError::After::run);
        current = outer;
        threads::set_fp_mode(own_mode);
    };
    if (nested) {
        team_body(threads::TeamKind::solo);
    } else {
        const bool led = threads::lead([&] {
            if (threads::borrowing(threads)) {
                const int size = threads::team_size(threads, true);
                const auto borrowed_body = [&] { team_body(threads::TeamKind::borrowed); };
                using BorrowedBody = decltype(borrowed_body);
                threads::run_borrowed(
                    size, [](void* f) { (*static_cast<const BorrowedBody*>(f))(); },
                    const_cast<void*>(static_cast<const void*>(&borrowed_body)));
                return;
            }
            const int size = threads::team_size(threads);  // on the thread that leads
#pragma omp parallel num_threads(size)
            team_body(threads::TeamKind::own);
        });
        if (!led) {
            body();  // no leader thread to be had: all of the work on the caller's thread
            return;
        }
    }
    error.rethrow();
}

// Splits [0, count) into `parts` contiguous ranges whose starts are multiples of
// `align`; part p is [begin, end).
inline void split_range(index_t count, int parts, int p, index_t align, index_t& begin,
                        index_t& end) {
    const index_t blocks = (count + align - 1) / align;
    const index_t b0 = blocks * p / parts, b1 = blocks * (p + 1) / parts;
    begin = std::min(count, b0 * align);
    end = std::min(count, b1 * align);
}

// Threads for a product of m x n outputs with inner length k: one below about a
// million multiply-adds (waking a second thread costs more than it saves), and never
// more than there are 16-wide blocks to share.
inline int threads_for_gemm(index_t m, index_t n, index_t k) {
    const double work = static_cast<double>(m) * n * std::max<index_t>(k, 1);
    if (work < 1 << 20) return 1;
    const index_t blocks = (std::max(m, n) + 15) / 16;
    return static_cast<int>(
        std::min<index_t>(threads::max_threads(), std::max<index_t>(1, blocks)));
}

// A part of an m x n output: rows [i0, i1) x cols [j0, j1).
struct Block {
    index_t i0, i1, j0, j1;
    index_t rows() const { return i1 - i0; }
    index_t cols() const { return j1 - j0; }
    bool empty() const { return i1 <= i0 || j1 <= j0; }
};

// An m x n output cut along its longer side into `pieces` tiles of whole 16-wide blocks,
// threads::tiles_per_thread() per thread (one by default; threads.hpp says why). The
// tiles are handed out to the team one at a time (for_each_tile), so a thread that
// starts late finds its tile taken. The tiles depend on the sizes and the team size
// only, never on which thread runs which.
struct Tiling {
    index_t m = 0, n = 0, pieces = 0;
    index_t align = 16;    // tiles start at multiples of this many rows (or columns)
    bool by_rows = false;  // cut the rows whatever the shape (rows_of)

    Tiling() = default;
    Tiling(index_t m_, index_t n_, int threads) : m(m_), n(n_) {
        const index_t blocks = (std::max(m, n) + 15) / 16;
        if (m == 0 || n == 0)
            pieces = 0;
        else if (threads <= 1)
            pieces = 1;  // one BLAS call: on one thread, nobody could take a tile over
        else
            pieces = std::min<index_t>(blocks, index_t(threads) * threads::tiles_per_thread());
    }
    // The m rows (n columns each, never cut) in tiles of whole blocks of `align` rows,
    // threads::tiles_per_thread() per thread where there are blocks enough.
    static Tiling rows_of(index_t m, index_t n, int threads, index_t align) {
        Tiling t;
        t.m = m;
        t.n = n;
        t.align = align;
        t.by_rows = true;
        const index_t blocks = (m + align - 1) / align;
        t.pieces = m == 0 || n == 0 ? 0
                                    : std::min<index_t>(blocks, index_t(std::max(threads, 1)) *
                                                                    threads::tiles_per_thread());
        return t;
    }
    Block tile(index_t t) const {
        Block blk{0, m, 0, n};
        if (by_rows || m >= n)
            split_range(m, int(pieces), int(t), align, blk.i0, blk.i1);
        else
            split_range(n, int(pieces), int(t), align, blk.j0, blk.j1);
        return blk;
    }
};

// Inside a parallel region: body(tile) for every tile of the tilings, in order (the
// larger product first where the caller lists it first), each tile run by whichever
// thread asks next. No barrier at the end.
template <class Body>
void for_each_tile(std::initializer_list<const Tiling*> tilings, const Body& body) {
    index_t total = 0;
    for (const Tiling* t : tilings) total += t->pieces;
    const auto run = [&](index_t k) {
        for (const Tiling* t : tilings) {
            if (k < t->pieces) return body(*t, t->tile(k));
            k -= t->pieces;
        }
    };
    if (threads::team_threads() == 1) {  // a team of one: no worksharing needed
        for (index_t k = 0; k < total; ++k) guarded([&] { run(k); });
        return;
    }
    // One tile at a time to whichever thread asks (schedule(dynamic, 1)), counted in the
    // region's shared state: the same whichever runtime formed the team.
    std::atomic<index_t>& next = RegionError::current()->loop_counter(threads::next_loop());
    for (index_t k = next.fetch_add(1, std::memory_order_relaxed); k < total;
         k = next.fetch_add(1, std::memory_order_relaxed))
        guarded([&] { run(k); });
}

// op(A) restricted to rows from i0 on, and op(B) to columns from j0 on.
template <class T>
const T* row_offset(const BlasOperand<T>& a, index_t i0) {
    return a.op == blas::Op::N ? a.data + i0 * a.ld : a.data + i0;
}
template <class T>
const T* col_offset(const BlasOperand<T>& b, index_t j0) {
    return b.op == blas::Op::N ? b.data + j0 : b.data + j0 * b.ld;
}

}  // namespace siglayer
