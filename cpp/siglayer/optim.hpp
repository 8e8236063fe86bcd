// In-place optimizer updates: one parameter array and its gradient and state, each
// `count` contiguous elements. Plain C++17, no Python; the formulas are PyTorch's
// (torch.optim.SGD and torch.optim.Adam), evaluated in the parameter's precision T.
#pragma once

#include "views.hpp"

namespace siglayer::optim {

// Hyperparameters are validated by the caller (lr >= 0, momentum >= 0, ...); the core
// only computes.
struct SGDOptions {
    double lr = 0;
    double momentum = 0;
    double dampening = 0;
    double weight_decay = 0;
    bool nesterov = false;
};

// param, grad and velocity are (count,). velocity may be null when momentum == 0.
// On each element, with g = grad + weight_decay * param:
//   velocity = g                                                  on the first step,
//   velocity = momentum * velocity + (1 - dampening) * g          after it;
//   d = g + momentum * velocity (nesterov) or velocity (momentum != 0) or g;
//   param -= lr * d.
// grad is read, never written. No two of the arrays may overlap.
template <class T>
void sgd_step(T* param, const T* grad, T* velocity, index_t count, const SGDOptions& options,
              bool first_step);

struct AdamOptions {
    double lr = 0;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0;
    bool decoupled_weight_decay = false;  // AdamW
};

// param, grad, exp_avg and exp_avg_sq are (count,); step is the 1-based number of this
// update (for the bias corrections). On each element:
//   param *= 1 - lr * weight_decay               (decoupled weight decay only)
//   g = grad + weight_decay * param              (L2 weight decay only)
//   exp_avg    = beta1 * exp_avg    + (1 - beta1) * g
//   exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
//   param -= lr / (1 - beta1^step) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps)
// No two of the arrays may overlap.
template <class T>
void adam_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, index_t count,
               const AdamOptions& options, index_t step);

}  // namespace siglayer::optim
