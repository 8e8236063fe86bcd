#include "optim.hpp"

#include <algorithm>
#include <cmath>

#include "checks.hpp"
#include "dtypes.hpp"
#include "partition.hpp"
#include "threads.hpp"

namespace siglayer::optim {

namespace {

// Below this many elements an update runs on the calling thread: it streams a few
// arrays once, and waking the team costs more than the second core saves.
constexpr index_t kParallelElements = 1 << 16;

// Calls update(begin, end) on [0, count), split into contiguous ranges between the
// OpenMP threads when the array is large. Each element is touched by one thread only.
template <class Update>
void for_ranges(index_t count, const Update& update) {
    const int team = count < kParallelElements ? 1 : threads::max_threads();
    run_parallel(team, [&] {
        // Ranges start on 16-element boundaries so no two threads share a cache line.
        index_t begin = 0, end = 0;
        split_range(count, threads::team_threads(), threads::team_rank(), 16, begin, end);
        if (end > begin) update(begin, end);
    });
}

}  // namespace

template <class T>
void sgd_step(T* param, const T* grad, T* velocity, index_t count, const SGDOptions& options,
              bool first_step) {
    SIGLAYER_REQUIRE(count >= 0, "count must be >= 0");
    SIGLAYER_REQUIRE(options.momentum == 0 || velocity != nullptr || count == 0,
                     "velocity: null pointer with momentum != 0");
    require_disjoint({{"param", extent(param, count)},
                      {"velocity", velocity ? extent(velocity, count) : Extent{}}},
                     {{"grad", extent(grad, count)}});
    const T lr = T(options.lr), momentum = T(options.momentum), damp = T(1) - T(options.dampening),
            decay = T(options.weight_decay);
    const bool use_decay = options.weight_decay != 0;
    if (options.momentum == 0) {
        for_ranges(count, [&](index_t begin, index_t end) {
#pragma omp simd
            for (index_t i = begin; i < end; ++i) {
                const T g = use_decay ? grad[i] + decay * param[i] : grad[i];
                param[i] -= lr * g;
            }
        });
        return;
    }
    const bool nesterov = options.nesterov;
    for_ranges(count, [&](index_t begin, index_t end) {
#pragma omp simd
        for (index_t i = begin; i < end; ++i) {
            const T g = use_decay ? grad[i] + decay * param[i] : grad[i];
            // PyTorch starts the buffer at g itself (no dampening on the first step).
            const T v = first_step ? g : momentum * velocity[i] + damp * g;
            velocity[i] = v;
            const T d = nesterov ? g + momentum * v : v;
            param[i] -= lr * d;
        }
    });
}

template <class T>
void adam_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, index_t count,
               const AdamOptions& options, index_t step) {
    SIGLAYER_REQUIRE(count >= 0, "count must be >= 0");
    SIGLAYER_REQUIRE(step >= 1, "step must be >= 1, got " + std::to_string(step));
    require_disjoint({{"param", extent(param, count)},
                      {"exp_avg", extent(exp_avg, count)},
                      {"exp_avg_sq", extent(exp_avg_sq, count)}},
                     {{"grad", extent(grad, count)}});
    // The scalars in double, rounded once to T, as PyTorch computes them in Python.
    const double bias_correction1 = 1 - std::pow(options.beta1, static_cast<double>(step));
    const double bias_correction2 = 1 - std::pow(options.beta2, static_cast<double>(step));
    const T step_size = T(options.lr / bias_correction1);
    const T bias_correction2_sqrt = T(std::sqrt(bias_correction2));
    const T beta1 = T(options.beta1), beta2 = T(options.beta2);
    const T one_minus_beta1 = T(1 - options.beta1), one_minus_beta2 = T(1 - options.beta2);
    const T eps = T(options.eps), decay = T(options.weight_decay);
    const T shrink = T(1 - options.lr * options.weight_decay);
    const bool l2 = options.weight_decay != 0 && !options.decoupled_weight_decay;
    const bool decoupled = options.weight_decay != 0 && options.decoupled_weight_decay;
    for_ranges(count, [&](index_t begin, index_t end) {
#pragma omp simd
        for (index_t i = begin; i < end; ++i) {
            T p = param[i];
            if (decoupled) p *= shrink;
            const T g = l2 ? grad[i] + decay * p : grad[i];
            const T m = beta1 * exp_avg[i] + one_minus_beta1 * g;
            const T v = beta2 * exp_avg_sq[i] + one_minus_beta2 * (g * g);
            exp_avg[i] = m;
            exp_avg_sq[i] = v;
            const T denom = std::sqrt(v) / bias_correction2_sqrt + eps;
            param[i] = p - step_size * (m / denom);
        }
    });
}

#define SIGLAYER_INSTANTIATE(T)                                                    \
    template void sgd_step<T>(T*, const T*, T*, index_t, const SGDOptions&, bool); \
    template void adam_step<T>(T*, const T*, T*, T*, index_t, const AdamOptions&, index_t);
SIGLAYER_FOR_EACH_COMPUTE_DTYPE(SIGLAYER_INSTANTIATE)
#undef SIGLAYER_INSTANTIATE

}  // namespace siglayer::optim
