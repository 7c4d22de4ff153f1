#pragma once
/// \file state.hpp
/// Model-level views of adapters: which parameters train, the adapter-only
/// state dict, and switching or deleting named adapters.

#include <lora/walk.hpp>

#include <set>
#include <stdexcept>

namespace lora {

namespace detail {

/// Full parameter names of the adapters in `layer` (all adapters when `adapter` is empty).
inline std::vector<std::string> adapter_param_names(const std::string& prefix, torch::nn::Module& layer,
                                                    const std::string& adapter) {
  std::vector<std::string> out;
  for (const auto& p : layer.named_parameters(/*recurse=*/true)) {
    const auto& key = p.key();
    if (key.rfind("lora_", 0) != 0) continue;  // weight, bias
    if (!adapter.empty()) {
      const auto dot = key.find('.');
      if (key.compare(dot + 1, adapter.size() + 1, adapter + ".") != 0) continue;
    }
    out.push_back(join_path(prefix, key));
  }
  return out;
}

/// Names of every adapter parameter (of one adapter, when named) in `model`, and of
/// the biases that `bias` makes trainable, in named_parameters() order.
inline std::set<std::string> trainable_names(torch::nn::Module& model, Bias bias, const std::string& adapter) {
  std::set<std::string> names;
  for_each_lora_layer(model, [&](const std::string& prefix, LoRALayer& layer) {
    auto& module = dynamic_cast<torch::nn::Module&>(layer);
    for (auto& n : adapter_param_names(prefix, module, adapter)) names.insert(n);
    if (bias == Bias::LoraOnly && layer.base_bias().defined() && !layer.adapter_names().empty())
      names.insert(join_path(prefix, "bias"));
  });
  if (bias == Bias::All)
    for (const auto& p : model.named_parameters(/*recurse=*/true)) {
      const auto& key = p.key();
      if (key == "bias" || (key.size() > 5 && key.compare(key.size() - 5, 5, ".bias") == 0)) names.insert(key);
    }
  return names;
}

}  // namespace detail

/// Freezes every parameter except the adapters' (only adapter `adapter`'s when
/// given) and the biases chosen by `bias`, as loralib's `mark_only_lora_as_trainable`.
inline void mark_only_lora_as_trainable(torch::nn::Module& model, Bias bias = Bias::None,
                                        const std::string& adapter = "") {
  const auto keep = detail::trainable_names(model, bias, adapter);
  for (auto& p : model.named_parameters(/*recurse=*/true)) p.value().requires_grad_(keep.count(p.key()) > 0);
}

/// The adapter parameters (A and B of every adapter, or of `adapter`), for an optimizer.
///
/// Example:
/// \code
///   torch::optim::AdamW opt(lora::lora_parameters(*model), torch::optim::AdamWOptions(2e-4));
/// \endcode
inline std::vector<torch::Tensor> lora_parameters(torch::nn::Module& model, const std::string& adapter = "") {
  const auto keep = detail::trainable_names(model, Bias::None, adapter);
  std::vector<torch::Tensor> out;
  for (const auto& p : model.named_parameters(/*recurse=*/true))
    if (keep.count(p.key())) out.push_back(p.value());
  return out;
}

/// The adapter-only state: name → tensor for every adapter parameter (of `adapter`
/// when given), plus the biases chosen by `bias`, named as in `model.named_parameters()`.
inline torch::OrderedDict<std::string, torch::Tensor> lora_state_dict(torch::nn::Module& model,
                                                                      Bias bias = Bias::None,
                                                                      const std::string& adapter = "") {
  const auto keep = detail::trainable_names(model, bias, adapter);
  torch::OrderedDict<std::string, torch::Tensor> out;
  for (const auto& p : model.named_parameters(/*recurse=*/true))
    if (keep.count(p.key())) out.insert(p.key(), p.value());
  return out;
}

/// Makes `names` the active adapters of the model: each LoRA layer activates those of `names` it
/// has, in the order given (a layer with none of them gets none active). Every layer is checked
/// first, so a refused switch (a merged layer, a DoRA adapter with others) changes nothing.
/// Task switching: unmerge, set, merge (or switch_merged_adapter).
inline void set_adapter(torch::nn::Module& model, const std::vector<std::string>& names) {
  std::vector<std::pair<LoRALayer*, std::vector<std::string>>> plan;
  bool found = false;
  // Every layer is checked before any is switched: a merged layer fails the call, not half of it.
  detail::for_each_lora_layer(model, [&](const std::string& prefix, LoRALayer& layer) {
    std::vector<std::string> here;
    for (const auto& n : names)
      if (layer.has_adapter(n)) here.push_back(n);
    found = found || !here.empty();
    detail::at_module(prefix, [&] { layer.check_active_adapters(here); });
    plan.emplace_back(&layer, std::move(here));
  });
  if (!found && !names.empty())
    throw std::invalid_argument("set_adapter: no LoRA layer of the model has adapter '" + names.front() +
                                "'; inject_lora(model, config, \"" + names.front() + "\") creates it");
  for (auto& [layer, here] : plan) layer->set_active_adapters(here);
}

/// Deletes adapter `name` from every layer that has it.
inline void delete_adapter(torch::nn::Module& model, const std::string& name) {
  bool found = false;
  detail::for_each_lora_layer(model, [&](const std::string& prefix, LoRALayer& layer) {
    if (!layer.has_adapter(name)) return;
    found = true;
    detail::at_module(prefix, [&] { layer.delete_adapter(name); });
  });
  if (!found) throw std::invalid_argument("delete_adapter: no LoRA layer of the model has adapter '" + name + "'");
}

}  // namespace lora
