#pragma once
// The optimizer the paper's numbers were trained with: microsoft/LoRA examples/NLG/src/optimizer.py's
// AdamW, run with --correct_bias (betas 0.9/0.999, eps 1e-6, weight decay 0.01), which is also the
// rule of transformers 4.4's AdamW that examples/NLU's Trainer uses (eps 1e-8, weight decay 0.1).

#include <torch/torch.h>

#include <vector>

namespace training {

/// AdamW as the reference code computes it, which differs from PyTorch's (and LibTorch's) AdamW:
///
///     m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²
///     p ← p − lr·√(1−β2ᵗ)/(1−β1ᵗ) · m / (√v + eps)     eps added before the bias correction
///     p ← p − lr·wd·p                                  decoupled decay after the update
///
/// PyTorch's rule decays first and adds eps to √v̂ = √v / √(1−β2ᵗ), an eps ~30× smaller in
/// early steps: coordinates with tiny gradients (rarely used embedding rows, fresh LoRA B
/// columns) then take very different steps. Options, parameter groups, state (step, exp_avg,
/// exp_avg_sq) and save/load are torch::optim::AdamW's, so trainer states stay interchangeable;
/// amsgrad is refused.
///
/// Example:
/// \code
///   training::ReferenceAdamW opt(params, torch::optim::AdamWOptions(2e-4).betas({0.9, 0.999}).eps(1e-6).weight_decay(0.01));
///   loss.backward();
///   opt.step();
/// \endcode
class ReferenceAdamW : public torch::optim::AdamW {
 public:
  ReferenceAdamW(std::vector<torch::Tensor> params, torch::optim::AdamWOptions options);
  /// Parameter groups with their own options (e.g. weight decay 0 for biases and LayerNorm weights).
  ReferenceAdamW(std::vector<torch::optim::OptimizerParamGroup> groups, torch::optim::AdamWOptions defaults);
  torch::Tensor step(LossClosure closure = nullptr) override;
};

}  // namespace training
