// Per-thread scratch memory that grows to the largest size seen and is then reused,
// so a training loop with fixed shapes allocates nothing after its first step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>

namespace siglayer {

// A std::bad_alloc that says how much memory was wanted: the bindings turn any
// std::bad_alloc into Python's MemoryError with its what(), which was "std::bad_alloc"
// alone (a review, helper-88). The message is built in place: no allocation.
class ScratchAllocError : public std::bad_alloc {
public:
    explicit ScratchAllocError(std::size_t bytes) {
        const double b = static_cast<double>(bytes);
        if (bytes == SIZE_MAX)  // a count whose bytes would not fit in std::size_t
            std::snprintf(message_, sizeof message_,
                          "siglayer's scratch memory for this call would exceed the address "
                          "space");
        else
            std::snprintf(message_, sizeof message_,
                          "siglayer could not allocate %.*f %s of scratch memory for this call",
                          b >= 1e9 ? 3 : 1, b >= 1e9 ? b / 1e9 : b / 1e6, b >= 1e9 ? "GB" : "MB");
    }
    const char* what() const noexcept override { return message_; }

private:
    char message_[96] = {};
};

class Scratch {
public:
    enum Slot {
        dZ,
        x_packed,
        W_packed,
        b_packed,
        dout_packed,
        out_packed,
        acc,     // a bfloat16 product's float result, before sigma and rounding
        gemm_a,  // the operands of a bfloat16 product, widened to float (blas.cpp)
        gemm_b,
        x_widened,  // bfloat16 operands widened to float by the layer (layer_bf16.cpp)
        W_widened,
        dZ_widened,
        b_packed16,  // B of a bfloat16 product packed once for several panels (layer_bf16.cpp)
        db_total,    // the float64 sums of db's row blocks (views.hpp): a tile's columns, or all
        db_part,     // the block sums themselves, in the compute type, before they reach db
        db_blocks,   // every row block's sums (blocks x n_out), when threads split dZ's rows
        slot_count
    };

    // A 64-byte-aligned buffer of at least count elements of T in the given slot.
    template <class T>
    T* get(Slot slot, std::size_t count) {
        Buffer& buf = buffers_[slot];
        // A count whose bytes wrap std::size_t (no array can hold it) would get a small
        // buffer: refused as memory that cannot be had (a review's reading).
        if (count > (SIZE_MAX - 4096) / sizeof(T)) throw ScratchAllocError(SIZE_MAX);
        const std::size_t bytes = count * sizeof(T) + 64;
        if (buf.bytes < bytes) {
            std::free(buf.data);
            buf.data = nullptr;
            buf.bytes = 0;
            buf.data = std::aligned_alloc(64, round_up(bytes));
            if (buf.data == nullptr) throw ScratchAllocError(round_up(bytes));
            buf.bytes = round_up(bytes);
        }
        return static_cast<T*>(buf.data);
    }

    static Scratch& for_this_thread() {
        thread_local Scratch scratch;
        return scratch;
    }

    ~Scratch() {
        for (Buffer& buf : buffers_) std::free(buf.data);
    }

private:
    struct Buffer {
        void* data = nullptr;
        std::size_t bytes = 0;
    };
    static std::size_t round_up(std::size_t bytes) { return (bytes + 63) / 64 * 64; }
    Buffer buffers_[slot_count];
};

}  // namespace siglayer
