#pragma once
/// \file adapter_io.hpp
/// Adapter files that HuggingFace PEFT reads and writes (`adapter_model.safetensors` +
/// `adapter_config.json`), and a LibTorch-native archive of the adapter state.
///
/// PEFT layout, for a module at path P (as named in the Python model):
///   `base_model.model.P.lora_A.weight` [r, in], `base_model.model.P.lora_B.weight` [out, r],
///   `base_model.model.P.lora_embedding_A` [r, num], `base_model.model.P.lora_embedding_B` [dim, r],
///   `base_model.model.P.bias` when the adapter trains biases (bias "all" / "lora_only"),
///   `base_model.model.P.lora_magnitude_vector` [out_features] for DoRA (`"use_dora": true`).
/// The adapter name is stripped, as PEFT strips "default"; files that keep it
/// (`...lora_A.default.weight`) load too. C++ module paths may differ from the Python
/// model's: a `NameMap` maps them in both directions, for saving and loading.
///
/// Per-slice adapters (a mask over a fused projection) have no PEFT form. They are
/// saved as the exactly equivalent whole-layer adapter of rank k·r for k enabled
/// slices: A is kept ([k·r, in]); B becomes [out, k·r], block i of its columns placed
/// on the rows of the i-th enabled slice, zero elsewhere; `lora_alpha` is multiplied
/// by k (by √k with rsLoRA) so the scaling of every slice stays alpha / r. Loading
/// such a file gives a whole-layer adapter with the same outputs.

#include <lora/inject.hpp>
#include <lora/embedding.hpp>
#include <lora/linear.hpp>
#include <lora/target.hpp>
#include <lora/tensor_file.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace lora {

using NameFn = std::function<std::string(const std::string&)>;

/// Maps module paths between the C++ model and adapter files (the Python model's names),
/// both ways; unset functions are the identity.
///
/// Example (a C++ model whose GPT-2 lives under "gpt." where HF has "transformer."):
/// \code
///   lora::NameMap names{[](const std::string& p) { return "transformer." + p.substr(4); },
///                       [](const std::string& f) { return "gpt." + f.substr(12); }};
/// \endcode
struct NameMap {
  NameFn to_file;    ///< model path → file path
  NameFn from_file;  ///< file path → model path
  std::string file_name(const std::string& path) const { return to_file ? to_file(path) : path; }
  std::string model_name(const std::string& path) const { return from_file ? from_file(path) : path; }
};

/// Options of `save_adapter`.
struct SaveAdapterOptions {
  /// Which adapter of the model to save.
  TORCH_ARG(std::string, adapter_name) = "default";
  /// Written to the config for PEFT, e.g. "gpt2-medium".
  TORCH_ARG(std::string, base_model_name_or_path) = "";
  /// PEFT's task type, e.g. "CAUSAL_LM"; empty writes null.
  TORCH_ARG(std::string, task_type) = "";
  /// File-format flag only (HF GPT-2 stores Conv1D weights as [in, out]): PEFT needs
  /// true for such models; our layers are always [out, in] and the tensors do not change.
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// Which biases to save with the adapter (PEFT's `bias`).
  TORCH_ARG(Bias, bias) = Bias::None;
  /// Module paths in the file (the Python model's names); identity by default.
  TORCH_ARG(NameMap, name_map) = {};
};

/// What `load_adapter` does when a layer already has an adapter of that name.
enum class IfExists {
  Error,    ///< throw, change nothing (default)
  Replace,  ///< delete the old adapter (it must not be merged) and load the new one
};

/// Options of `load_adapter`.
struct LoadAdapterOptions {
  /// The name the adapter gets in the model.
  TORCH_ARG(std::string, adapter_name) = "default";
  /// false (PEFT's default, `is_trainable=False`): the whole model is frozen, ready for
  /// inference. true: this adapter (and the biases its config trains) is the only
  /// trainable thing in the model, as after `inject_lora`.
  TORCH_ARG(bool, trainable) = false;
  /// dtype of the loaded A and B; unset keeps the file's dtype. They are placed on each
  /// layer's device.
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
  TORCH_ARG(IfExists, if_exists) = IfExists::Error;
  /// Make the loaded adapter the active one of its layers.
  TORCH_ARG(bool, activate) = true;
  /// Module paths in the file (the Python model's names); identity by default.
  TORCH_ARG(NameMap, name_map) = {};
};

namespace detail {

constexpr const char* kPeftPrefix = "base_model.model.";

inline std::string bias_name(Bias b) {
  return b == Bias::All ? "all" : b == Bias::LoraOnly ? "lora_only" : "none";
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read '" + path + "'");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_text(const std::string& path, const std::string& text) {
  safetensors::atomic_write(path, [&](std::FILE* f) { safetensors::write_bytes(f, text.data(), text.size(), path); });
}

/// LoRA layers of the model by path, in model order.
inline std::vector<std::pair<std::string, LoRALayer*>> lora_layers(torch::nn::Module& model) {
  std::vector<std::pair<std::string, LoRALayer*>> out;
  for_each_lora_layer(model, [&](const std::string& name, LoRALayer& l) { out.emplace_back(name, &l); });
  return out;
}

}  // namespace detail

/// Writes adapter `options.adapter_name()` of `model` to `dir` in PEFT's format:
/// `dir/adapter_model.safetensors` and `dir/adapter_config.json`, each written
/// atomically (the folder is created if needed).
///
/// Example:
/// \code
///   lora::save_adapter(*model, "out/adapter",
///                      lora::SaveAdapterOptions().base_model_name_or_path("gpt2").task_type("CAUSAL_LM"));
/// \endcode
inline void save_adapter(torch::nn::Module& model, const std::string& dir,
                         const SaveAdapterOptions& options = SaveAdapterOptions()) {
  const std::string& name = options.adapter_name();
  auto file_name = [&](const std::string& p) { return options.name_map().file_name(p); };
  auto layers = detail::lora_layers(model);
  NamedTensors tensors;
  std::vector<std::string> adapted, all_files;
  std::map<std::string, int64_t> ranks;
  std::map<std::string, double> alphas;
  const AdapterOptions* first = nullptr;
  for (const auto& [path, layer] : layers) {
    const std::string fp = file_name(path);
    all_files.push_back(fp);
    if (!layer->has_adapter(name)) continue;
    const auto& o = layer->adapter_options(name);
    if (!first) first = &o;
    if (o.use_rslora() != first->use_rslora() || o.dropout() != first->dropout() || o.use_dora() != first->use_dora())
      throw std::invalid_argument("save_adapter: module '" + path + "' differs from the others in use_rslora, "
                                  "dropout or use_dora, which PEFT's adapter_config.json cannot express per module");
    const auto fa = layer->file_form(name);
    tensors.insert(detail::kPeftPrefix + fp + "." + layer->peft_key("A"), fa.A);
    tensors.insert(detail::kPeftPrefix + fp + "." + layer->peft_key("B"), fa.B);
    for (const auto& [key, t] : fa.extra) tensors.insert(detail::kPeftPrefix + fp + "." + key, t);
    adapted.push_back(fp);
    ranks[fp] = fa.r;
    alphas[fp] = fa.alpha;
  }
  if (adapted.empty())
    throw std::invalid_argument("save_adapter: no layer of the model has adapter '" + name + "'");

  if (options.bias() != Bias::None) {
    const auto keep = detail::trainable_names(model, options.bias(), name);
    for (const auto& p : model.named_parameters(/*recurse=*/true))
      if (keep.count(p.key()) && p.key().size() >= 4 && p.key().compare(p.key().size() - 4, 4, "bias") == 0) {
        const std::string module = p.key().size() > 5 ? p.key().substr(0, p.key().size() - 5) : "";
        tensors.insert(detail::kPeftPrefix + (module.empty() ? "" : file_name(module) + ".") + "bias", p.value());
      }
  }

  // Global r / alpha from the first module; the others that differ go to the patterns.
  const int64_t r = ranks[adapted.front()];
  const double alpha = alphas[adapted.front()];
  nlohmann::ordered_json rank_pattern = nlohmann::ordered_json::object(), alpha_pattern = nlohmann::ordered_json::object();
  for (const auto& fp : adapted) {
    if (ranks[fp] != r) rank_pattern[fp] = ranks[fp];
    if (alphas[fp] != alpha) alpha_pattern[fp] = alphas[fp];
  }
  // target_modules: the last name components when they select exactly the adapted
  // layers, else the full paths.
  std::vector<std::string> targets;
  for (const auto& fp : adapted) {
    const std::string last = fp.substr(fp.find_last_of('.') + 1);
    if (std::find(targets.begin(), targets.end(), last) == targets.end()) targets.push_back(last);
  }
  const TargetSelector rule(targets, "");
  for (const auto& fp : all_files)
    if (rule.selects(fp) != (std::find(adapted.begin(), adapted.end(), fp) != adapted.end())) {
      targets = adapted;
      break;
    }

  nlohmann::ordered_json cfg;
  cfg["peft_type"] = "LORA";
  cfg["base_model_name_or_path"] = options.base_model_name_or_path().empty() ? nlohmann::ordered_json(nullptr)
                                                                             : nlohmann::ordered_json(options.base_model_name_or_path());
  cfg["task_type"] = options.task_type().empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(options.task_type());
  cfg["inference_mode"] = true;
  cfg["r"] = r;
  cfg["lora_alpha"] = alpha;
  cfg["lora_dropout"] = first->dropout();
  cfg["use_rslora"] = first->use_rslora();
  cfg["use_dora"] = first->use_dora();
  cfg["target_modules"] = targets;
  cfg["bias"] = detail::bias_name(options.bias());
  cfg["fan_in_fan_out"] = options.fan_in_fan_out();
  cfg["init_lora_weights"] = first->init() == Init::Gaussian ? nlohmann::ordered_json("gaussian")
                                                             : nlohmann::ordered_json(first->init() != Init::Random);
  cfg["rank_pattern"] = rank_pattern;
  cfg["alpha_pattern"] = alpha_pattern;
  cfg["modules_to_save"] = nullptr;
  cfg["layers_to_transform"] = nullptr;

  std::filesystem::create_directories(dir);
  save_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
  detail::write_text(dir + "/adapter_config.json", cfg.dump(2) + "\n");
}

namespace detail {

/// The arithmetic an adapter_config.json asks for, checked against the keys policy.
struct PeftConfig {
  int64_t r = 8;
  double alpha = 8;
  double dropout = 0;
  bool use_rslora = false;
  bool use_dora = false;  // DoRA: every adapted module has a lora_magnitude_vector tensor
  Bias bias = Bias::None;
  PatternMap<int64_t> rank_pattern;  // PEFT's per-module overrides, compiled, in the file's order
  PatternMap<double> alpha_pattern;
  bool has_targets = false;  // target_modules present (not null)
  TargetSelector targets;
  bool ensure_weight_tying = false;  // PEFT ties the adapters of tied layers (embedding + head): refused on a tied layer

  int64_t rank_for(const std::string& name) const { return rank_pattern.value_for(name, r); }
  double alpha_for(const std::string& name) const { return alpha_pattern.value_for(name, alpha); }
};

inline bool is_default_value(const nlohmann::ordered_json& v) {
  return v.is_null() || (v.is_boolean() && !v.get<bool>()) || (v.is_object() && v.empty()) || (v.is_array() && v.empty());
}

inline PeftConfig parse_peft_config(const std::string& path) {
  nlohmann::ordered_json j;  // keys in the file's order: rank_pattern / alpha_pattern precedence depends on it
  try {
    j = nlohmann::ordered_json::parse(read_text(path));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error("'" + path + "' is not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw std::runtime_error("'" + path + "' is not a JSON object");
  auto bad = [&](const std::string& key, const std::string& why) {
    return std::runtime_error("'" + path + "': key '" + key + "' " + why);
  };
  PeftConfig c;
  // Keys that do not change the arithmetic of a trained adapter: read or ignored knowingly.
  static const std::set<std::string> harmless = {
      "peft_type", "base_model_name_or_path", "task_type", "inference_mode", "revision", "peft_version",
      "auto_mapping", "r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora", "bias", "target_modules",
      "exclude_modules", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern",
      "fan_in_fan_out", "init_lora_weights", "megatron_config", "megatron_core", "eva_config", "corda_config",
      "qalora_group_size"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (harmless.count(it.key()) || is_default_value(it.value())) continue;
    if (it.key() == "ensure_weight_tying" && it.value().is_boolean()) {  // true: checked per layer by load_adapter
      c.ensure_weight_tying = true;
      continue;
    }
    if (it.key() == "modules_to_save")
      throw bad(it.key(), "is set: modules_to_save (fully trained extra modules) is not supported yet");
    throw bad(it.key(), "has a non-default value (" + it.value().dump() +
                            ") that changes the adapter's arithmetic, which this loader does not implement");
  }
  if (!j.contains("peft_type") || j["peft_type"] != "LORA")
    throw bad("peft_type", "must be \"LORA\": this is not a LoRA adapter");

  try {
    if (!j.contains("r") || !j["r"].is_number_integer() || j["r"].get<int64_t>() <= 0)
      throw bad("r", "must be a positive integer");
    c.r = j["r"].get<int64_t>();
    c.alpha = j.contains("lora_alpha") && !j["lora_alpha"].is_null() ? j["lora_alpha"].get<double>() : 8.0;
    c.dropout = j.contains("lora_dropout") && !j["lora_dropout"].is_null() ? j["lora_dropout"].get<double>() : 0.0;
    c.use_rslora = j.value("use_rslora", false);
    c.use_dora = j.contains("use_dora") && !j["use_dora"].is_null() && j["use_dora"].get<bool>();
    const std::string bias = j.contains("bias") && j["bias"].is_string() ? j["bias"].get<std::string>() : "none";
    if (bias == "all") c.bias = Bias::All;
    else if (bias == "lora_only") c.bias = Bias::LoraOnly;
    else if (bias != "none") throw bad("bias", "must be none, all or lora_only");
    for (const auto* key : {"rank_pattern", "alpha_pattern"})
      if (j.contains(key) && !j[key].is_null())
        for (auto it = j[key].begin(); it != j[key].end(); ++it) {
          if (std::string(key) == "rank_pattern") c.rank_pattern.add(it.key(), it.value().get<int64_t>(), key);
          else c.alpha_pattern.add(it.key(), it.value().get<double>(), key);
        }
    auto strings = [&](const char* key) {
      std::vector<std::string> out;
      if (j.contains(key) && j[key].is_array())
        for (const auto& s : j[key]) out.push_back(s.get<std::string>());
      return out;
    };
    std::vector<std::string> names;
    std::string regex;
    if (j.contains("target_modules") && !j["target_modules"].is_null()) {
      c.has_targets = true;
      if (j["target_modules"].is_string()) regex = j["target_modules"].get<std::string>();
      else names = strings("target_modules");
    }
    if (j.contains("exclude_modules") && j["exclude_modules"].is_string())
      throw bad("exclude_modules", "as a regex string is not supported; list the module names");
    std::vector<int64_t> layers;
    if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
      if (j["layers_to_transform"].is_number_integer()) layers.push_back(j["layers_to_transform"].get<int64_t>());
      else for (const auto& v : j["layers_to_transform"]) layers.push_back(v.get<int64_t>());
    }
    std::string layers_pattern;
    if (j.contains("layers_pattern") && j["layers_pattern"].is_string()) layers_pattern = j["layers_pattern"].get<std::string>();
    c.targets = TargetSelector(names, regex, strings("exclude_modules"), layers, layers_pattern);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error("'" + path + "': a value has the wrong type: " + e.what());
  } catch (const std::invalid_argument& e) {  // a bad regex in target_modules, a pattern key or layers_pattern
    throw std::runtime_error("'" + path + "': " + e.what());
  }
  return c;
}

}  // namespace detail

/// Loads a PEFT LoRA adapter from `dir` into the model's LoRA-capable layers, strictly:
/// a tensor that maps to no LoRA layer, a targeted layer without tensors, a layer with
/// only A or only B, or a shape that differs from the config's r and the base layer is
/// an error naming the tensor and the likely cause; nothing is changed then.
/// Reads `adapter_config.json` (r, lora_alpha, use_rslora, rank/alpha patterns give each
/// layer's scaling; see the key policy in docs/adapters.md) and `adapter_model.safetensors`.
///
/// Example:
/// \code
///   lora::load_adapter(*model, "out/adapter");                                  // frozen, active
///   lora::load_adapter(*model, "other", lora::LoadAdapterOptions().adapter_name("task2").activate(false));
/// \endcode
inline InjectReport load_adapter(torch::nn::Module& model, const std::string& dir,
                                 const LoadAdapterOptions& options = LoadAdapterOptions()) {
  const std::string& name = options.adapter_name();
  const std::string cfg_path = dir + "/adapter_config.json", st_path = dir + "/adapter_model.safetensors";
  if (!std::filesystem::exists(cfg_path))
    throw std::runtime_error("'" + cfg_path + "' not found: is '" + dir + "' a PEFT adapter folder?");
  if (!std::filesystem::exists(st_path))
    throw std::runtime_error("'" + st_path + "' not found" +
                             (std::filesystem::exists(dir + "/adapter_model.bin")
                                  ? std::string(": only the pickle adapter_model.bin is there, which is not read (it can "
                                                "run code); re-save it with safe_serialization=True")
                                  : std::string()));
  const auto cfg = detail::parse_peft_config(cfg_path);
  const safetensors::File file(st_path);

  auto model_path = [&](const std::string& fp) { return options.name_map().model_name(fp); };
  auto layers = detail::lora_layers(model);
  std::map<std::string, LoRALayer*> by_path(layers.begin(), layers.end());
  std::vector<std::string> layer_names;
  for (const auto& l : layers) layer_names.push_back(l.first);

  struct Pending {
    std::string file_path;
    LoRALayer* layer = nullptr;
    const safetensors::TensorView* A = nullptr;
    const safetensors::TensorView* B = nullptr;
    const safetensors::TensorView* magnitude = nullptr;  // DoRA
  };
  std::map<std::string, Pending> pending;  // by model path
  std::vector<std::pair<std::string, const safetensors::TensorView*>> biases;
  static const std::regex linear_key(R"(^(.+)\.lora_([AB])(?:\.([^.]+))?\.weight$)");
  static const std::regex embedding_key(R"(^(.+)\.lora_embedding_([AB])(?:\.([^.]+))?$)");
  static const std::regex magnitude_key(R"(^(.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$)");
  const std::string prefix = detail::kPeftPrefix;
  for (const auto& t : file.tensors()) {
    if (t.name.compare(0, prefix.size(), prefix) != 0)
      throw std::runtime_error("'" + st_path + "': tensor '" + t.name + "' does not start with '" + prefix +
                               "': not a PEFT adapter file?");
    const std::string rest = t.name.substr(prefix.size());
    std::smatch m;
    const bool is_linear = std::regex_match(rest, m, linear_key);
    const bool is_embedding = !is_linear && std::regex_match(rest, m, embedding_key);
    const bool is_magnitude = !is_linear && !is_embedding && std::regex_match(rest, m, magnitude_key);
    if (!is_linear && !is_embedding && !is_magnitude) {
      if (cfg.bias != Bias::None && rest.size() > 5 && rest.compare(rest.size() - 5, 5, ".bias") == 0) {
        biases.emplace_back(model_path(rest.substr(0, rest.size() - 5)) + ".bias", &t);
        continue;
      }
      throw std::runtime_error("'" + st_path + "': tensor '" + t.name + "' is not a LoRA A/B tensor (a modules_to_save "
                               "copy or a bias with bias=\"none\"?): this loader does not read it");
    }
    const std::string fp = m[1].str(), path = model_path(fp);
    auto it = by_path.find(path);
    if (it == by_path.end())
      throw std::runtime_error("'" + st_path + "': tensor '" + t.name + "' belongs to module '" + path +
                               "', which is not a LoRA-capable layer of this model (different base model, or a "
                               "missing name mapping?). LoRA layers: " + detail::list_names(layer_names));
    if (is_magnitude) {
      if (!cfg.use_dora)
        throw std::runtime_error("'" + st_path + "': tensor '" + t.name + "' is a DoRA magnitude, but adapter_config.json "
                                 "does not set \"use_dora\": true; a DoRA adapter needs the flag (a plain LoRA adapter "
                                 "has no such tensor)");
      auto& p = pending[path];
      if (p.magnitude)
        throw std::runtime_error("'" + st_path + "': tensors '" + p.magnitude->name + "' and '" + t.name +
                                 "' are both the DoRA magnitude of module '" + fp + "'");
      p.file_path = fp;
      p.layer = it->second;
      p.magnitude = &t;
      continue;
    }
    const std::string key_kind = is_linear ? "Linear" : "Embedding";  // PEFT's two key forms
    if (it->second->kind() != key_kind)
      throw std::runtime_error("'" + st_path + "': tensor '" + t.name + "' has the key form of " + (is_linear ? "a Linear" : "an Embedding") +
                               " adapter but module '" + path + "' is " + it->second->describe());
    auto& p = pending[path];
    p.file_path = fp;
    p.layer = it->second;
    auto& slot = m[2].str() == "A" ? p.A : p.B;
    if (slot)
      throw std::runtime_error("'" + st_path + "': tensors '" + slot->name + "' and '" + t.name +
                               "' are both lora_" + m[2].str() + " of module '" + fp + "'");
    slot = &t;
  }

  // Cross-check against the config's targets and the shapes before touching the model.
  std::vector<std::string> targeted_missing;
  if (cfg.has_targets)
    for (const auto& [path, layer] : layers)
      if (cfg.targets.selects(options.name_map().file_name(path)) && !pending.count(path)) targeted_missing.push_back(path);
  if (!targeted_missing.empty())
    throw std::runtime_error("'" + st_path + "' has no tensors for " + detail::list_names(targeted_missing) +
                             ", which adapter_config.json's target_modules selects: truncated file, or a different "
                             "base model?");

  std::vector<AdapterOptions> resolved;
  for (auto& [path, p] : pending) {
    const std::string where = "'" + st_path + "': module '" + p.file_path + "'";
    if (!p.A && !p.B)
      throw std::runtime_error(where + " has a DoRA magnitude but no lora_A / lora_B tensors: the file is incomplete");
    if (!p.A || !p.B)
      throw std::runtime_error(where + " has only its lora_" + std::string(p.A ? "A" : "B") +
                               " tensor: the file is incomplete");
    if (cfg.use_dora && !p.magnitude)
      throw std::runtime_error(where + " has no lora_magnitude_vector tensor, which adapter_config.json's \"use_dora\": true "
                               "needs: a truncated file, or a plain LoRA adapter whose config says use_dora?");
    if (p.magnitude && p.magnitude->shape != std::vector<int64_t>{p.layer->output_features()})
      throw std::runtime_error("'" + st_path + "': tensor '" + p.magnitude->name + "' has shape " +
                               detail::shape_str(p.magnitude->shape) + ", expected [" + std::to_string(p.layer->output_features()) +
                               "] (one per output feature of " + p.layer->describe() + "): different base model?");
    if (cfg.has_targets && !cfg.targets.selects(p.file_path))
      throw std::runtime_error(where + " has tensors but adapter_config.json's target_modules does not select it");
    const int64_t r = cfg.rank_for(p.file_path);
    const std::vector<int64_t> want_A = p.layer->file_shape("A", r), want_B = p.layer->file_shape("B", r);
    for (const auto& [view, want] : {std::make_pair(p.A, want_A), std::make_pair(p.B, want_B)}) {
      if (view->shape == want) continue;
      std::string hint = "different base model?";
      if (view->shape.size() == 2) {
        const int64_t got_r = view == p.A ? view->shape[0] : view->shape[1];
        const auto other = view == p.A ? view->shape[1] : view->shape[0];
        const auto want_other = view == p.A ? want[1] : want[0];
        if (got_r != r && other == want_other)
          hint = "was this adapter trained with r=" + std::to_string(got_r) + "? adapter_config.json says r=" + std::to_string(r);
      }
      throw std::runtime_error("'" + st_path + "': tensor '" + view->name + "' has shape " + detail::shape_str(view->shape) +
                               ", expected " + detail::shape_str(want) + ": " + hint);
    }
    if (cfg.ensure_weight_tying && !p.layer->tied_to().empty())
      throw std::runtime_error(where + " is tied to '" + p.layer->tied_to() + "' and adapter_config.json sets "
                               "ensure_weight_tying, which gives '" + p.layer->tied_to() + "' the same adapter: this "
                               "loader does not implement tied adapters (train without ensure_weight_tying, or "
                               "without an adapter on the tied layer)");
    if (p.layer->merged())
      throw std::runtime_error("load_adapter: module '" + path + "' is merged; unmerge before loading an adapter");
    if (p.layer->has_adapter(name) && options.if_exists() == IfExists::Error)
      throw std::runtime_error("load_adapter: module '" + path + "' already has adapter '" + name +
                               "'; load it under another adapter_name, or pass if_exists(IfExists::Replace)");
    const auto dtype = options.dtype() ? *options.dtype() : detail::to_torch(p.A->dtype);
    if (!torch::isFloatingType(dtype))
      throw std::runtime_error("'" + st_path + "': tensor '" + p.A->name + "' is not floating point");
    resolved.push_back(AdapterOptions(r).alpha(cfg.alpha_for(p.file_path)).dropout(cfg.dropout).use_rslora(cfg.use_rslora).dtype(dtype).use_dora(cfg.use_dora));
  }
  if (pending.empty()) throw std::runtime_error("'" + st_path + "' holds no LoRA tensors");
  auto params = model.named_parameters(/*recurse=*/true);
  for (const auto& [bias_path, view] : biases)
    if (!params.contains(bias_path) || params[bias_path].sizes() != torch::IntArrayRef(view->shape))
      throw std::runtime_error("'" + st_path + "': tensor '" + view->name + "' has no matching bias of shape " +
                               detail::shape_str(view->shape) + " in the model (looked for '" + bias_path + "')");

  // Everything checked: now change the model.
  InjectReport report;
  report.adapter_name = name;
  size_t i = 0;
  torch::NoGradGuard no_grad;
  for (auto& [path, p] : pending) {
    if (p.layer->has_adapter(name)) p.layer->delete_adapter(name);
    p.layer->add_adapter(name, resolved[i++]);
    for (const auto* view : {p.A, p.B}) {
      torch::Tensor& dst = view == p.A ? p.layer->lora_A(name) : p.layer->lora_B(name);
      dst.copy_(to_tensor(*view));
    }
    if (p.magnitude) p.layer->variant(name)->load_file_tensor(DoRAImpl::kFileKey, to_tensor(*p.magnitude));
    if (options.activate()) p.layer->set_active_adapters({name});
    report.adapted.push_back(path);
  }
  for (const auto& [bias_path, view] : biases) params[bias_path].copy_(to_tensor(*view));
  if (options.trainable())
    mark_only_lora_as_trainable(model, cfg.bias, name);
  else
    for (auto& p : model.parameters(/*recurse=*/true)) p.requires_grad_(false);
  for (const auto& p : model.parameters(/*recurse=*/true)) {
    report.all_params += p.numel();
    if (p.requires_grad()) report.trainable_params += p.numel();
  }
  return report;
}

/// Saves `lora_state_dict(model, bias, adapter)` as a LibTorch archive (names kept), atomically.
/// Reload it with `load_lora_state` into a model injected with the same config.
inline void save_lora_state(torch::nn::Module& model, const std::string& path, const std::string& adapter = "",
                            Bias bias = Bias::None) {
  const auto state = lora_state_dict(model, bias, adapter);
  if (state.is_empty()) throw std::invalid_argument("save_lora_state: the model has no adapter parameters to save");
  torch::serialize::OutputArchive archive;
  for (const auto& item : state) archive.write(item.key(), item.value().detach());
  safetensors::atomic_write(path, [&](std::FILE* f) {
    archive.save_to([&](const void* data, size_t n) {
      safetensors::write_bytes(f, data, n, path);
      return n;
    });
  });
}

/// Loads an archive written by `save_lora_state` as strictly as `load_adapter`: the
/// archive's names must be exactly `lora_state_dict(model, bias, adapter)`'s and every
/// shape must match; otherwise nothing is changed and the error names the tensors.
inline void load_lora_state(torch::nn::Module& model, const std::string& path, const std::string& adapter = "",
                            Bias bias = Bias::None) {
  if (!std::filesystem::exists(path)) throw std::runtime_error("'" + path + "' not found");
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw std::runtime_error("'" + path + "' is not a LibTorch archive (truncated?): " + e.what_without_backtrace());
  }
  auto state = lora_state_dict(model, bias, adapter);
  std::vector<std::string> unexpected, missing;
  for (const auto& key : archive.keys())
    if (!state.contains(key)) unexpected.push_back(key);
  std::map<std::string, torch::Tensor> loaded;
  for (const auto& item : state) {
    torch::Tensor t;
    if (!archive.try_read(item.key(), t)) {
      missing.push_back(item.key());
      continue;
    }
    if (t.sizes() != item.value().sizes())
      throw std::runtime_error("'" + path + "': tensor '" + item.key() + "' has shape " + detail::shape_str(t.sizes()) +
                               ", the model expects " + detail::shape_str(item.value().sizes()) +
                               ": saved from a model injected with another r or base model?");
    loaded[item.key()] = t;
  }
  if (!unexpected.empty() || !missing.empty()) {
    auto dora = [](const std::vector<std::string>& names) {
      for (const auto& n : names)
        if (n.find(std::string(DoRAImpl::kFileKey) + ".") != std::string::npos) return true;
      return false;
    };
    const std::string hint = dora(unexpected) ? ": the archive holds DoRA magnitudes, the model's adapter is plain LoRA (inject with use_dora(true))"
                             : dora(missing) ? ": the model's adapter is DoRA, the archive's is plain LoRA (inject without use_dora)"
                                             : " (inject the model with the config it was saved from)";
    throw std::runtime_error("'" + path + "' does not match the model's adapters: unexpected " +
                             detail::list_names(unexpected) + "; missing " + detail::list_names(missing) + hint);
  }
  torch::NoGradGuard no_grad;
  for (auto& item : state) item.value().copy_(loaded[item.key()]);
}

}  // namespace lora
