#pragma once
/// \file inject.hpp
/// `lora::inject_lora`: switches adapters on, by name, in a model whose layers
/// were declared LoRA-capable.
///
/// Why layers are declared and not swapped: LibTorch's `forward` is not virtual
/// and `replace_module` does not change the member a parent's forward calls, so a
/// `torch::nn::Linear` cannot become a LoRA layer after construction (as PEFT does
/// in Python). Models declare `lora::LoRALinear` / `lora::LoRAEmbedding` where they
/// would declare the plain layers (same constructors, same parameter names, so
/// checkpoints load unchanged) and `inject_lora` attaches adapters to the ones the
/// config names.

#include <lora/state.hpp>
#include <lora/target.hpp>

#include <functional>
#include <iomanip>
#include <optional>
#include <regex>

namespace lora {

/// What `inject_lora` did, printed like PEFT's `print_trainable_parameters()`:
/// `trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364`.
struct InjectReport {
  std::string adapter_name;
  std::vector<std::string> adapted;  ///< module paths that received the adapter
  int64_t trainable_params = 0;
  int64_t all_params = 0;
  double trainable_percent() const { return all_params ? 100.0 * trainable_params / all_params : 0.0; }
};

/// "124,734,720": a count as the report prints it (PEFT's print_trainable_parameters style).
inline std::string with_commas(int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

namespace detail {

using lora::with_commas;

inline std::string plain_layer_error(const std::string& name, const std::string& type, const std::string& lora_type) {
  return "inject_lora: module '" + name + "' matches the targets but is a plain " + type +
         ". LibTorch cannot swap it for a LoRA layer after construction (forward() is not virtual and "
         "replace_module() does not change the member the parent calls). Fix: declare it as " + lora_type +
         " in the model (same constructor, same weight/bias names, so checkpoints still load).";
}

}  // namespace detail

inline std::ostream& operator<<(std::ostream& os, const InjectReport& r) {
  std::ostringstream pct;
  pct << std::fixed << std::setprecision(4) << r.trainable_percent();
  return os << "trainable params: " << detail::with_commas(r.trainable_params)
            << " || all params: " << detail::with_commas(r.all_params) << " || trainable%: " << pct.str();
}

/// Attaches adapter `adapter_name` to every LoRA-capable layer the config selects,
/// makes it the active adapter of those layers, and freezes every other parameter
/// (biases as `config.bias()` says). Nothing is changed when an error is thrown.
///
/// Selection: `lora::TargetSelector::from_config(config)` (target.hpp): the whole path or a
/// dotted suffix of it equals a `target_modules` entry, or the path fully matches
/// `target_regex` (one or the other); `exclude_modules` removes modules again; with
/// `layers_to_transform` only modules whose layer index is listed stay. Errors
/// (`std::invalid_argument`): a target entry (or `enable_lora` / pattern key) that matches no
/// module, a target that is a plain `torch::nn::Linear` / `Embedding` or another module type,
/// an invalid config.
///
/// Calling it again: with a new adapter name it adds that adapter beside the
/// existing ones and makes it the only active one (the others stay, frozen:
/// `lora::set_adapter` switches back); with a name the model already has, it
/// throws and leaves the model unchanged.
///
/// Example:
/// \code
///   auto report = lora::inject_lora(*model, lora::LoRAConfig().r(4).alpha(32).target_modules({"c_attn"}));
///   std::cout << report << "\n";  // trainable params: ... || all params: ... || trainable%: ...
/// \endcode
inline InjectReport inject_lora(torch::nn::Module& model, const LoRAConfig& config,
                                const std::string& adapter_name = "default") {
  if (config.r() <= 0) throw std::invalid_argument("LoRAConfig: r must be > 0, got " + std::to_string(config.r()));
  if (config.target_modules().empty() && config.target_regex().empty())
    throw std::invalid_argument("LoRAConfig: no targets; set target_modules({...}) or target_regex(\"...\")");
  if (adapter_name.empty() || adapter_name.find('.') != std::string::npos)
    throw std::invalid_argument("inject_lora: adapter name '" + adapter_name + "' must be non-empty and contain no '.'");
  TargetSelector selector;
  try {
    selector = TargetSelector::from_config(config);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("LoRAConfig: ") + e.what());
  }

  const auto modules = detail::visible_modules(model);
  std::vector<std::string> capable, all_names;
  for (const auto& m : modules) {
    all_names.push_back(m.first);
    if (dynamic_cast<LoRALayer*>(m.second.get())) capable.push_back(m.first);
  }
  auto candidates = [&] {
    return "LoRA-capable modules: " + detail::list_names(capable) + "; all modules: " + detail::list_names(all_names);
  };

  std::set<std::string> used_targets;
  std::vector<std::pair<std::string, LoRALayer*>> chosen;
  for (const auto& m : modules) {
    const std::string& name = m.first;
    std::vector<std::string> entries;
    if (!selector.matches_targets(name, &entries)) continue;
    used_targets.insert(entries.begin(), entries.end());
    if (selector.excluded(name) || !selector.in_layers(name)) continue;
    auto* module = m.second.get();
    if (auto* layer = dynamic_cast<LoRALayer*>(module)) {
      if (layer->has_adapter(adapter_name))
        throw std::invalid_argument("inject_lora: module '" + name + "' already has adapter '" + adapter_name +
                                    "'; inject under another name, or lora::delete_adapter(model, \"" +
                                    adapter_name + "\") first");
      chosen.emplace_back(name, layer);
    } else if (dynamic_cast<torch::nn::LinearImpl*>(module)) {
      throw std::invalid_argument(detail::plain_layer_error(name, "torch::nn::Linear", "lora::LoRALinear"));
    } else if (dynamic_cast<torch::nn::EmbeddingImpl*>(module)) {
      throw std::invalid_argument(detail::plain_layer_error(name, "torch::nn::Embedding", "lora::LoRAEmbedding"));
    } else {
      std::ostringstream type;
      module->pretty_print(type);
      throw std::invalid_argument("inject_lora: module '" + name + "' (" + type.str() +
                                  ") matches the targets but is not a LoRA-capable layer; target the "
                                  "lora::LoRALinear / lora::LoRAEmbedding layers inside it. " + candidates());
    }
  }
  if (!selector.is_regex())
    for (const auto& t : config.target_modules())
      if (!used_targets.count(t))
        throw std::invalid_argument("inject_lora: target '" + t + "' matches no module. " + candidates());
  if (chosen.empty())
    throw std::invalid_argument("inject_lora: the config selects no module (after exclude_modules / "
                                "layers_to_transform). " + candidates());

  // Pattern keys compiled once (PEFT's `(.*\.)?key` rule, first matching key wins).
  auto compile = [](const auto& keys, const char* what) {
    try {
      return PatternMap<typename std::decay_t<decltype(keys)>::value_type::second_type>(keys, what);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("LoRAConfig: ") + e.what());
    }
  };
  const auto rank_keys = compile(config.rank_pattern(), "rank_pattern");
  const auto alpha_keys = compile(config.alpha_pattern(), "alpha_pattern");
  auto options_for = [&](const std::string& name) {
    AdapterOptions o(rank_keys.value_for(name, config.r()));
    o.alpha(alpha_keys.value_for(name, config.alpha())).dropout(config.dropout()).use_rslora(config.use_rslora())
        .init(config.init()).dtype(config.dtype()).use_dora(config.use_dora());
    for (const auto& kv : config.enable_lora())
      if (detail::name_matches(name, kv.first)) o.enable(kv.second);
    return o;
  };
  // Keys of the per-module maps must each select something, or they are typos.
  auto check_key = [&](const char* field, const std::string& key, const std::function<bool(const std::string&)>& matches) {
    for (const auto& c : chosen)
      if (matches(c.first)) return;
    std::vector<std::string> n;
    for (const auto& c : chosen) n.push_back(c.first);
    throw std::invalid_argument(std::string("LoRAConfig: ") + field + " key '" + key +
                                "' matches none of the adapted modules: " + detail::list_names(n));
  };
  for (const auto& kv : rank_keys.entries())
    check_key("rank_pattern", kv.first.key(), [&](const std::string& n) { return kv.first.matches(n); });
  for (const auto& kv : alpha_keys.entries())
    check_key("alpha_pattern", kv.first.key(), [&](const std::string& n) { return kv.first.matches(n); });
  for (const auto& kv : config.enable_lora())
    check_key("enable_lora", kv.first, [&](const std::string& n) { return detail::name_matches(n, kv.first); });

  // Validate every layer's options before touching any layer, so a failure changes nothing.
  std::vector<AdapterOptions> resolved;
  for (const auto& c : chosen) {
    resolved.push_back(options_for(c.first));
    detail::at_module(c.first, [&] { c.second->check_adapter(adapter_name, resolved.back()); });
  }
  for (size_t i = 0; i < chosen.size(); ++i)
    detail::at_module(chosen[i].first, [&] {
      chosen[i].second->add_adapter(adapter_name, resolved[i]);
      chosen[i].second->set_active_adapters({adapter_name});
    });
  mark_only_lora_as_trainable(model, config.bias(), adapter_name);

  InjectReport report;
  report.adapter_name = adapter_name;
  for (const auto& c : chosen) report.adapted.push_back(c.first);
  for (const auto& p : model.parameters(/*recurse=*/true)) {
    report.all_params += p.numel();
    if (p.requires_grad()) report.trainable_params += p.numel();
  }
  return report;
}

}  // namespace lora
