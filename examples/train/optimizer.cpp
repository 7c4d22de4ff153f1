#include "optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <type_traits>

namespace training {

namespace {

constexpr int64_t kPiece = int64_t{1} << 20;  // elements updated at a time (4 MB of fp32)

/// The key of a parameter in Optimizer::state_: its TensorImpl's address, printed in LibTorch 1.x,
/// the pointer itself in 2.x.
template <class Key>
Key state_key(const torch::Tensor& p) {
  if constexpr (std::is_same<Key, std::string>::value) {
    std::ostringstream s;
    s << p.unsafeGetTensorImpl();
    return s.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

}  // namespace

ReferenceAdamW::ReferenceAdamW(std::vector<torch::Tensor> params, torch::optim::AdamWOptions options)
    : torch::optim::AdamW(std::move(params), options) {
  TORCH_CHECK(!options.amsgrad(), "ReferenceAdamW: the reference optimizer has no amsgrad");
}

ReferenceAdamW::ReferenceAdamW(std::vector<torch::optim::OptimizerParamGroup> groups, torch::optim::AdamWOptions defaults)
    : torch::optim::AdamW(std::move(groups), defaults) {
  TORCH_CHECK(!defaults.amsgrad(), "ReferenceAdamW: the reference optimizer has no amsgrad");
}

torch::Tensor ReferenceAdamW::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    torch::AutoGradMode enable_grad(true);
    loss = closure();
  }
  using Key = typename std::decay_t<decltype(state_)>::key_type;
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const torch::Tensor& grad = p.grad();
      const Key key = state_key<Key>(p);
      if (state_.find(key) == state_.end()) {
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        state_[key] = std::move(fresh);
      }
      auto& st = static_cast<torch::optim::AdamWParamState&>(*state_[key]);
      st.step(st.step() + 1);
      const double t = static_cast<double>(st.step());
      const double step_size = o.lr() * std::sqrt(1.0 - std::pow(beta2, t)) / (1.0 - std::pow(beta1, t));
      const double decay = -o.lr() * o.weight_decay();
      // Element-wise, so a large parameter (GPT-2's 154 MB wte) is updated in pieces: √v + eps is
      // then a piece-sized temporary instead of a parameter-sized one.
      const torch::Tensor g = grad.is_sparse() ? grad.to_dense() : grad;
      const auto update = [&](torch::Tensor w, const torch::Tensor& dw, torch::Tensor m1, torch::Tensor m2) {
        m1.mul_(beta1).add_(dw, 1.0 - beta1);
        m2.mul_(beta2).addcmul_(dw, dw, 1.0 - beta2);
        w.addcdiv_(m1, m2.sqrt().add_(o.eps()), -step_size);
        if (o.weight_decay() > 0.0) w.add_(w, decay);
      };
      const torch::Tensor& m = st.exp_avg();
      const torch::Tensor& v = st.exp_avg_sq();
      const int64_t n = p.numel();
      if (n <= kPiece || !(p.is_contiguous() && g.is_contiguous() && m.is_contiguous() && v.is_contiguous())) {
        update(p, g, m, v);
        continue;
      }
      const auto pf = p.view({-1}), gf = g.view({-1}), mf = m.view({-1}), vf = v.view({-1});
      for (int64_t at = 0; at < n; at += kPiece) {
        const int64_t len = std::min(kPiece, n - at);
        update(pf.narrow(0, at, len), gf.narrow(0, at, len), mf.narrow(0, at, len), vf.narrow(0, at, len));
      }
    }
  }
  return loss;
}

}  // namespace training
