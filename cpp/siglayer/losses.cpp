#include "losses.hpp"

#include <algorithm>
#include <cmath>

namespace siglayer::losses {

template <class T>
double bce_sigmoid(T* dZ, const T* out, const T* y, index_t count, double divisor) {
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
    return -sum;
}

template <class T>
double mse(T* dout, const T* out, const T* y, index_t count, double divisor) {
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

template double bce_sigmoid<float>(float*, const float*, const float*, index_t, double);
template double bce_sigmoid<double>(double*, const double*, const double*, index_t, double);
template double mse<float>(float*, const float*, const float*, index_t, double);
template double mse<double>(double*, const double*, const double*, index_t, double);

}  // namespace siglayer::losses
