#pragma once
/// \file combine.hpp
/// Combining adapters into a new one (PEFT's `add_weighted_adapter`).

#include <lora/inject.hpp>
#include <lora/state.hpp>

#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace lora {

/// How add_weighted_adapter combines adapters (PEFT's `combination_type`).
enum class Combination {
  Cat,     ///< exact: the ranks add up
  Linear,  ///< PEFT's weighted sum of the factors (equal ranks; not the sum of the updates)
  Svd,     ///< the best rank-k approximation of the weighted sum of the updates
};

/// What add_weighted_adapter built.
struct CombineReport {
  std::vector<std::string> layers;  ///< module paths that got the new adapter
  /// Combination::Svd: per layer, ‖ΔW − B·A‖_F / ‖ΔW‖_F of the truncation (0 when the rank suffices)
  std::map<std::string, double> svd_relative_error;
  double worst_svd_relative_error = 0;
};

/// Adds adapter `new_name` combining `adapters` with `weights`, on every layer that has at least
/// one of them, with PEFT's names and conventions (the new adapter has alpha = r, so scaling 1, is
/// frozen and not activated: set_adapter(model, {new_name}) uses it). Per layer, with ΔW_i =
/// s_i·B_i·A_i (slice masks expanded to their whole-layer form):
/// - Cat: A = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = [B_1 B_2 ...], rank Σ r_i: exactly Σ w_i ΔW_i.
/// - Linear: A = Σ √(w_i s_i) A_i, B = Σ √(w_i s_i) B_i (PEFT's rule; equal ranks required, w_i s_i ≥ 0);
///   B·A has cross terms, so it is not Σ w_i ΔW_i.
/// - Svd: the best rank-k approximation (k = svd_rank, default the largest r_i) of Σ w_i ΔW_i;
///   the report gives each layer's relative truncation error. (PEFT's svd multiplies each ΔW_i by
///   s_i once more; this one approximates the same sum that "cat" gives exactly.)
///
/// Example:
/// \code
///   lora::add_weighted_adapter(*model, {"formal", "short"}, {0.7, 0.3}, "mix", lora::Combination::Cat);
///   lora::set_adapter(*model, {"mix"});
/// \endcode
inline CombineReport add_weighted_adapter(torch::nn::Module& model, const std::vector<std::string>& adapters,
                                          const std::vector<double>& weights, const std::string& new_name,
                                          Combination combination = Combination::Svd, int64_t svd_rank = 0) {
  const std::string where = "add_weighted_adapter";
  if (adapters.empty() || adapters.size() != weights.size())
    throw std::invalid_argument(where + ": " + std::to_string(adapters.size()) + " adapters and " +
                                std::to_string(weights.size()) + " weights: give one weight per adapter");
  auto layers = detail::lora_layers(model);
  for (const auto& name : adapters) {
    bool known = false;
    for (const auto& l : layers) {
      known = known || l.second->has_adapter(name);
      if (const AdapterVariant* v = l.second->has_adapter(name) ? l.second->variant(name) : nullptr)
        throw std::invalid_argument(where + ": adapter '" + name + "' is a " + v->variant_name() + " adapter (module '" +
                                    l.first + "'): combining adapters adds their s·B·A, which does not combine " +
                                    v->variant_name() + "'s magnitudes; combine plain LoRA adapters");
    }
    if (!known) throw std::invalid_argument(where + ": no LoRA layer has adapter '" + name + "'");
  }
  struct Plan {
    std::string path;
    LoRALayer* layer;
    torch::Tensor A, B;
    int64_t r;
  };
  std::vector<Plan> plans;
  CombineReport report;
  torch::NoGradGuard no_grad;
  for (const auto& [path, layer] : layers) {
    if (layer->has_adapter(new_name))
      throw std::invalid_argument(where + ": module '" + path + "' already has an adapter named '" + new_name + "'");
    std::vector<LoRALayer::WholeLayerForm> forms;
    std::vector<double> w, s;
    for (size_t i = 0; i < adapters.size(); ++i)
      if (layer->has_adapter(adapters[i])) {
        forms.push_back(layer->whole_layer_form(adapters[i]));  // whole-layer form: A [r, in], B [out, r]
        w.push_back(weights[i]);
        s.push_back(layer->scaling(adapters[i]));
      }
    if (forms.empty()) continue;
    const auto dtype = torch::promote_types(torch::kFloat32, forms[0].A.scalar_type());
    Plan p{path, layer, {}, {}, 0};
    if (combination == Combination::Cat) {
      std::vector<torch::Tensor> As, Bs;
      for (size_t i = 0; i < forms.size(); ++i) {
        As.push_back(forms[i].A.to(dtype) * (w[i] * s[i]));
        Bs.push_back(forms[i].B.to(dtype));
      }
      p.A = torch::cat(As, 0);
      p.B = torch::cat(Bs, 1);
    } else if (combination == Combination::Linear) {
      for (size_t i = 0; i < forms.size(); ++i) {
        if (forms[i].r != forms[0].r)
          throw std::invalid_argument(where + ": module '" + path + "': combination linear needs equal ranks, got r=" +
                                      std::to_string(forms[0].r) + " and r=" + std::to_string(forms[i].r) + " (use cat or svd)");
        if (w[i] * s[i] < 0)
          throw std::invalid_argument(where + ": combination linear takes √(weight·scaling), which needs weight ≥ 0 (got " +
                                      std::to_string(w[i]) + ")");
        const double f = std::sqrt(w[i] * s[i]);
        p.A = p.A.defined() ? p.A + forms[i].A.to(dtype) * f : forms[i].A.to(dtype) * f;
        p.B = p.B.defined() ? p.B + forms[i].B.to(dtype) * f : forms[i].B.to(dtype) * f;
      }
    } else {
      torch::Tensor delta;
      int64_t k = svd_rank;
      for (size_t i = 0; i < forms.size(); ++i) {
        const torch::Tensor d = torch::mm(forms[i].B.to(torch::kFloat64), forms[i].A.to(torch::kFloat64)) * (w[i] * s[i]);
        delta = delta.defined() ? delta + d : d;
        if (svd_rank <= 0) k = std::max(k, forms[i].r);
      }
      auto [U, S, Vh] = torch::linalg_svd(delta, /*full_matrices=*/false);
      k = std::min<int64_t>(k, S.size(0));
      p.B = (U.narrow(1, 0, k) * S.narrow(0, 0, k)).to(dtype);
      p.A = Vh.narrow(0, 0, k).to(dtype);
      const double total = S.pow(2).sum().item<double>();
      const double err = total > 0 ? std::sqrt(S.narrow(0, k, S.size(0) - k).pow(2).sum().item<double>() / total) : 0.0;
      report.svd_relative_error[path] = err;
      report.worst_svd_relative_error = std::max(report.worst_svd_relative_error, err);
    }
    p.r = p.A.size(0);
    plans.push_back(std::move(p));
  }
  // Everything computed: now add the adapters.
  for (auto& p : plans) {
    p.layer->add_adapter(new_name, AdapterOptions(p.r).alpha(static_cast<double>(p.r)).dtype(p.A.scalar_type()));
    p.layer->lora_A(new_name).copy_(p.A);
    p.layer->lora_B(new_name).copy_(p.B);
    p.layer->lora_A(new_name).requires_grad_(false);
    p.layer->lora_B(new_name).requires_grad_(false);
    report.layers.push_back(p.path);
  }
  return report;
}

}  // namespace lora
