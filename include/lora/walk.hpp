#pragma once
/// \file walk.hpp
/// Walking a model's modules and naming them in messages: the helpers every model-level function
/// (inject, merge, state, adapter I/O, scopes) shares. Internal (`lora::detail`).

#include <lora/layer.hpp>

#include <memory>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

namespace lora {
namespace detail {

/// Every module under `root` (root excluded) a user can name, in pre-order: a LoRA layer's own
/// internals (lora_A.default, ...) are left out. Works on a root not held by a shared_ptr.
inline std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> visible_modules(torch::nn::Module& root) {
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> out;
  std::string inside;  // prefix of the LoRA layer whose internals are being skipped
  for (const auto& item : root.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    if (!inside.empty() && item.key().compare(0, inside.size(), inside) == 0) continue;
    if (dynamic_cast<LoRALayer*>(item.value().get())) inside = item.key() + ".";
    out.emplace_back(item.key(), item.value());
  }
  return out;
}

/// Applies `fn(name, layer)` to every LoRA layer under `root` (root itself included,
/// with name ""), never descending into a LoRA layer's own internals.
template <class Fn>
inline void for_each_lora_layer(torch::nn::Module& root, Fn&& fn) {
  if (auto* layer = dynamic_cast<LoRALayer*>(&root)) {
    fn(std::string(), *layer);
    return;
  }
  for (const auto& [name, module] : visible_modules(root))
    if (auto* layer = dynamic_cast<LoRALayer*>(module.get())) fn(name, *layer);
}

/// LoRA layers of the model by path, in model order.
inline std::vector<std::pair<std::string, LoRALayer*>> lora_layers(torch::nn::Module& model) {
  std::vector<std::pair<std::string, LoRALayer*>> out;
  for_each_lora_layer(model, [&](const std::string& name, LoRALayer& l) { out.emplace_back(name, &l); });
  return out;
}

inline std::vector<std::pair<std::string, LoRALayer*>> unmerged_layers(torch::nn::Module& model, const char* what) {
  auto layers = lora_layers(model);
  for (const auto& [name, layer] : layers)
    if (layer->merged())
      throw std::logic_error(std::string(what) + ": module '" + name + "' is merged; a merged adapter is part of the weight: unmerge() first");
  return layers;
}

/// Runs `fn`, prefixing the message of a standard exception it throws with the module path
/// `name`; the exception keeps its exact type (an exception of any other type, c10::Error say,
/// passes through unchanged).
template <class Fn>
inline void at_module(const std::string& name, Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    const std::string msg = "module '" + (name.empty() ? std::string("<root>") : name) + "': " + e.what();
    const std::type_info& type = typeid(e);
    if (type == typeid(std::invalid_argument)) throw std::invalid_argument(msg);
    if (type == typeid(std::out_of_range)) throw std::out_of_range(msg);
    if (type == typeid(std::length_error)) throw std::length_error(msg);
    if (type == typeid(std::domain_error)) throw std::domain_error(msg);
    if (type == typeid(std::logic_error)) throw std::logic_error(msg);
    if (type == typeid(std::range_error)) throw std::range_error(msg);
    if (type == typeid(std::overflow_error)) throw std::overflow_error(msg);
    if (type == typeid(std::underflow_error)) throw std::underflow_error(msg);
    if (type == typeid(std::runtime_error)) throw std::runtime_error(msg);
    throw;
  }
}

inline std::string join_path(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

inline std::string list_names(const std::vector<std::string>& names, size_t most = 40) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < most; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > most) out += ", ... (" + std::to_string(names.size() - most) + " more)";
  return out.empty() ? "none" : out;
}

}  // namespace detail
}  // namespace lora
