#include "optimizer.hpp"

#include <cmath>
#include <sstream>
#include <string>
#include <type_traits>

namespace e2e {

namespace {

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
      st.exp_avg().mul_(beta1).add_(grad, 1.0 - beta1);
      st.exp_avg_sq().mul_(beta2).addcmul_(grad, grad, 1.0 - beta2);
      const torch::Tensor denom = st.exp_avg_sq().sqrt().add_(o.eps());
      const double t = static_cast<double>(st.step());
      const double step_size = o.lr() * std::sqrt(1.0 - std::pow(beta2, t)) / (1.0 - std::pow(beta1, t));
      p.addcdiv_(st.exp_avg(), denom, -step_size);
      if (o.weight_decay() > 0.0) p.add_(p, -o.lr() * o.weight_decay());
    }
  }
  return loss;
}

}  // namespace e2e
