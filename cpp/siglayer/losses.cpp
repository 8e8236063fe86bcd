#include "losses.hpp"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "checks.hpp"
#include "dtypes.hpp"

namespace siglayer::losses {

namespace {

// The checks of both losses: grad (named dZ or dout) is written, out and y are read.
template <class T>
void check_loss(const char* grad_name, const T* grad, const T* out, const T* y, index_t count,
                double divisor) {
    SIGLAYER_REQUIRE(count >= 0, "count must be >= 0");
    SIGLAYER_REQUIRE(divisor > 0, "divisor must be > 0");
    require_disjoint({{grad_name, extent(grad, count)}},
                     {{"out", extent(out, count)}, {"y", extent(y, count)}});
}

// out must hold probabilities: a value below 0 or above 1 (logits passed by mistake, or an
// output changed in place) would give a NaN loss silently; so must the targets y: class
// indices (0..9) passed as targets would give a finite, negative, meaningless loss. Checked
// before dZ is written. A NaN in out passes (it propagates, as for any computed value); a
// NaN in y, a label that is data, not a result, is refused too (nan_refused), as
// torch.nn.BCELoss refuses it: one would turn every weight to NaN at the next step.
constexpr const char* kTargets =
    "targets in [0, 1] (0/1 labels or probabilities); one-hot encode class indices first";

template <class T>
void check_probabilities(const char* name, const T* a, index_t count, const char* what,
                         bool nan_refused) {
    // A branch-free sweep first (it vectorizes); the culprit is looked for only on failure.
    auto bad = [nan_refused](T v) {
        return nan_refused ? !(v >= T(0) && v <= T(1)) : (v < T(0) || v > T(1));
    };
    int outside = 0;
#pragma omp simd reduction(| : outside)
    for (index_t i = 0; i < count; ++i) outside |= int(bad(a[i]));
    if (outside == 0) return;
    for (index_t i = 0; i < count; ++i) {
        if (bad(a[i])) {
            std::ostringstream message;
            message << std::setprecision(9) << name << " has a value outside [0, 1] (element " << i
                    << " of the flattened " << name << " is ";
            if (std::isnan(a[i]))
                message << "nan";  // whatever its sign bit (0/0 sets it): Python's words
            else
                message << static_cast<double>(a[i]);
            message << "): binary cross-entropy takes " << what;
            throw InvalidArgument(message.str());
        }
    }
}

}  // namespace

template <class T>
double bce_sigmoid(T* dZ, const T* out, const T* y, index_t count, double divisor) {
    check_loss("dZ", dZ, out, y, count, divisor);
    check_probabilities("out", out, count, "probabilities, such as a sigmoid's output, not logits",
                        false);
    check_probabilities("y", y, count, kTargets, true);
    const T n = T(divisor);
    const T clamp = T(kLogClamp);
    double sum = 0;
    for (index_t i = 0; i < count; ++i) {
        const T o = out[i], t = y[i];
        dZ[i] = (o - t) / n;
        // A log whose weight is exactly 0 is skipped (0 * log(0) would be NaN; the
        // clamped value times 0 is 0 anyway): one log per element for 0/1 targets.
        // std::max(NaN, clamp) keeps the NaN of a NaN output.
        const T log_p = t != T(0) ? std::max(std::log(o), clamp) : T(0);
        const T log_q = t != T(1) ? std::max(std::log1p(-o), clamp) : T(0);
        sum += static_cast<double>(t * log_p + (T(1) - t) * log_q);
    }
    return 0.0 - sum;  // +0 for an empty sum, where -sum would give -0
}

template <class T>
double mse(T* dout, const T* out, const T* y, index_t count, double divisor) {
    check_loss("dout", dout, out, y, count, divisor);
    const T scale = T(2);
    const T n = T(divisor);
    double sum = 0;
    for (index_t i = 0; i < count; ++i) {
        const T d = out[i] - y[i];
        dout[i] = scale * d / n;
        sum += static_cast<double>(d) * static_cast<double>(d);
    }
    return sum;
}

#define SIGLAYER_INSTANTIATE(T)                                              \
    template double bce_sigmoid<T>(T*, const T*, const T*, index_t, double); \
    template double mse<T>(T*, const T*, const T*, index_t, double);
SIGLAYER_FOR_EACH_COMPUTE_DTYPE(SIGLAYER_INSTANTIATE)
#undef SIGLAYER_INSTANTIATE

}  // namespace siglayer::losses
