#pragma once
/// \file adapter_io.hpp
/// Adapter files that HuggingFace PEFT reads and writes (`adapter_model.safetensors` +
/// `adapter_config.json`, peft_config.hpp): one adapter (`save_adapter`, `load_adapter`, and
/// `hotswap_adapter` into an existing one in place) or every named adapter of a model
/// (`save_adapters`, `load_adapters`). The LibTorch-native archive is in archive.hpp.
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
#include <lora/peft_config.hpp>
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
  /// Modules trained in full with the adapter, saved whole beside it (PEFT's `modules_to_save`,
  /// e.g. {"classifier"} for a sequence-classification head): every parameter and buffer of each
  /// module whose file path equals a name or ends with "." + name.
  TORCH_ARG(std::vector<std::string>, modules_to_save) = {};
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
  /// Copy the file's `modules_to_save` tensors into the model's modules (strictly: every
  /// parameter, same shapes). false: skip them, e.g. to start a task with another number of
  /// labels from an adapter trained with its own head (the paper's MNLI start for RTE).
  TORCH_ARG(bool, load_modules_to_save) = true;
};

namespace detail {

constexpr const char* kPeftPrefix = "base_model.model.";

/// A module that modules_to_save names: its path in the model and in the file.
struct SavedModule {
  std::string path, file_path;
  std::shared_ptr<torch::nn::Module> module;
};

/// The modules of `model` that `names` select (outermost only); each name must select one.
inline std::vector<SavedModule> saved_modules(torch::nn::Module& model, const std::vector<std::string>& names,
                                              const NameMap& map, const std::string& where) {
  std::vector<SavedModule> out;
  if (names.empty()) return out;  // (a NameMap need not map modules other than LoRA layers)
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    const std::string fp = map.file_name(item.key());
    if (!PeftConfig::saves_module(names, fp)) continue;
    bool nested = false;
    for (const auto& s : out) nested = nested || item.key().compare(0, s.path.size() + 1, s.path + ".") == 0;
    if (nested) continue;
    for (const auto& p : item.value()->named_parameters(/*recurse=*/true))
      if (p.key().find("lora_") != std::string::npos)
        throw std::invalid_argument(where + ": module '" + item.key() + "' in modules_to_save holds LoRA parameters ('" +
                                    p.key() + "'): a module is either adapted or saved whole, not both");
    out.push_back({item.key(), fp, item.value()});
  }
  for (const auto& n : names) {
    bool found = false;
    for (const auto& s : out) found = found || PeftConfig::saves_module({n}, s.file_path);
    if (!found) {
      std::vector<std::string> children;
      for (const auto& c : model.named_children()) children.push_back(c.key());
      throw std::invalid_argument(where + ": modules_to_save names '" + n + "', which is no module of this model (its " +
                                  "top-level modules: " + list_names(children) + "): another task head or base model?");
    }
  }
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
    const auto fa = layer->whole_layer_form(name);
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

  for (const auto& m : detail::saved_modules(model, options.modules_to_save(), options.name_map(), "save_adapter")) {
    auto put = [&](const std::string& key, const torch::Tensor& value) {
      const std::string full = detail::kPeftPrefix + m.file_path + "." + key;
      if (!tensors.contains(full)) tensors.insert(full, value.detach());  // bias "all" may have saved it already
    };
    for (const auto& p : m.module->named_parameters(/*recurse=*/true)) put(p.key(), p.value());
    for (const auto& b : m.module->named_buffers(/*recurse=*/true)) put(b.key(), b.value());
  }

  // Global r / alpha from the first module; the others that differ go to the patterns.
  PeftConfig cfg;
  cfg.r = ranks[adapted.front()];
  cfg.alpha = alphas[adapted.front()];
  for (const auto& fp : adapted) {
    if (ranks[fp] != cfg.r) cfg.rank_pattern.emplace_back(fp, ranks[fp]);
    if (alphas[fp] != cfg.alpha) cfg.alpha_pattern.emplace_back(fp, alphas[fp]);
  }
  // target_modules: the last name components when they select exactly the adapted
  // layers, else the full paths.
  for (const auto& fp : adapted) {
    const std::string last = fp.substr(fp.find_last_of('.') + 1);
    if (std::find(cfg.target_modules.begin(), cfg.target_modules.end(), last) == cfg.target_modules.end())
      cfg.target_modules.push_back(last);
  }
  const TargetSelector rule(cfg.target_modules, "");
  for (const auto& fp : all_files)
    if (rule.selects(fp) != (std::find(adapted.begin(), adapted.end(), fp) != adapted.end())) {
      cfg.target_modules = adapted;
      break;
    }
  cfg.has_targets = true;
  cfg.dropout = first->dropout();
  cfg.use_rslora = first->use_rslora();
  cfg.use_dora = first->use_dora();
  cfg.bias = options.bias();
  cfg.base_model_name_or_path = options.base_model_name_or_path();
  cfg.task_type = options.task_type();
  cfg.fan_in_fan_out = options.fan_in_fan_out();
  cfg.init = first->init();
  cfg.modules_to_save = options.modules_to_save();

  std::filesystem::create_directories(dir);
  save_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
  write_text_file(dir + "/adapter_config.json", cfg.dump());
}


namespace detail {

/// A PEFT adapter folder read and checked against a model's layers, before anything changes.
struct AdapterPlan {
  struct Layer {
    std::string path, file_path;  ///< module path in the model and in the file
    LoRALayer* layer = nullptr;
    torch::Tensor A, B, magnitude;  ///< in the file's form; magnitude only for DoRA
    AdapterOptions options;         ///< r, alpha, dropout, rsLoRA, DoRA, dtype the config gives the layer
  };
  PeftConfig config;
  std::vector<Layer> layers;                                  ///< by model path
  std::vector<std::pair<std::string, torch::Tensor>> biases;  ///< model parameter name, value
  /// modules_to_save tensors: model parameter (or buffer) name, value.
  std::vector<std::pair<std::string, torch::Tensor>> saved;
};

/// Reads `dir` for `model` with every check that does not depend on the adapters the model
/// already has: a tensor that maps to no LoRA layer, a targeted layer without tensors, a layer
/// with only A or only B, a DoRA magnitude without use_dora (or the reverse), or a shape that
/// differs from the config's r and the base layer is an error naming the tensor and the likely cause.
inline AdapterPlan read_adapter(torch::nn::Module& model, const std::string& dir, const NameMap& names,
                                c10::optional<torch::Dtype> dtype_override, bool load_saved = true) {
  const std::string cfg_path = dir + "/adapter_config.json", st_path = dir + "/adapter_model.safetensors";
  if (!std::filesystem::exists(cfg_path))
    throw std::runtime_error("'" + cfg_path + "' not found: is '" + dir + "' a PEFT adapter folder?");
  if (!std::filesystem::exists(st_path))
    throw std::runtime_error("'" + st_path + "' not found" +
                             (std::filesystem::exists(dir + "/adapter_model.bin")
                                  ? std::string(": only the pickle adapter_model.bin is there, which is not read (it can "
                                                "run code); re-save it with safe_serialization=True")
                                  : std::string()));
  AdapterPlan plan;
  plan.config = PeftConfig::read(cfg_path);
  const PeftConfig& cfg = plan.config;
  const safetensors::File file(st_path);

  auto model_path = [&](const std::string& fp) { return names.model_name(fp); };
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
  std::vector<SavedModule> saved;
  try {
    saved = saved_modules(model, cfg.modules_to_save, names, "'" + cfg_path + "'");
  } catch (const std::invalid_argument& e) {  // the file does not fit the model
    throw std::runtime_error(e.what());
  }
  std::map<std::string, const safetensors::TensorView*> saved_views;  // model name -> tensor
  // The modules_to_save module a file tensor belongs to, with the tensor's name inside it (PEFT's
  // copy prefix "modules_to_save.<adapter>." dropped), or nullptr.
  auto saved_of = [&](const std::string& rest, std::string& inner) -> const SavedModule* {
    static const std::regex copy_prefix(R"(^modules_to_save\.[^.]+\.)");
    for (const auto& m : saved)
      if (rest.compare(0, m.file_path.size() + 1, m.file_path + ".") == 0) {
        inner = std::regex_replace(rest.substr(m.file_path.size() + 1), copy_prefix, "");
        return &m;
      }
    return nullptr;
  };
  static const std::regex linear_key(R"(^(.+)\.lora_([AB])(?:\.([^.]+))?\.weight$)");
  static const std::regex embedding_key(R"(^(.+)\.lora_embedding_([AB])(?:\.([^.]+))?$)");
  static const std::regex magnitude_key(R"(^(.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$)");
  const std::string prefix = kPeftPrefix;
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
      std::string inner;
      if (const SavedModule* sm = saved_of(rest, inner)) {
        if (!load_saved) continue;
        const auto params = sm->module->named_parameters(/*recurse=*/true);
        const auto buffers = sm->module->named_buffers(/*recurse=*/true);
        const torch::Tensor* target = params.find(inner);
        if (!target) target = buffers.find(inner);
        if (!target) {
          std::vector<std::string> known;
          for (const auto& p : params) known.push_back(p.key());
          throw std::runtime_error("'" + st_path + "': tensor '" + t.name + "' belongs to module '" + sm->file_path +
                                   "' of modules_to_save, which has no parameter or buffer '" + inner + "' (it has " +
                                   list_names(known) + "): another head architecture?");
        }
        if (target->sizes() != torch::IntArrayRef(t.shape))
          throw std::runtime_error("'" + st_path + "': tensor '" + t.name + "' has shape " + shape_str(t.shape) +
                                   ", the model's '" + sm->path + "." + inner + "' has shape " + shape_str(target->sizes()) +
                                   ": a head for another number of labels, or another base model? (to start from the "
                                   "adapter with a fresh head, load without its modules_to_save)");
        const auto [at, fresh] = saved_views.emplace(sm->path + "." + inner, &t);
        if (!fresh)
          throw std::runtime_error("'" + st_path + "': tensors '" + at->second->name + "' and '" + t.name + "' are both '" +
                                   sm->file_path + "." + inner + "' of modules_to_save");
        continue;
      }
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
                               "missing name mapping?). LoRA layers: " + list_names(layer_names));
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
    if (it->second->peft_key_form() != key_kind)
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
      if (cfg.selector().selects(names.file_name(path)) && !pending.count(path)) targeted_missing.push_back(path);
  if (!targeted_missing.empty())
    throw std::runtime_error("'" + st_path + "' has no tensors for " + list_names(targeted_missing) +
                             ", which adapter_config.json's target_modules selects: truncated file, or a different "
                             "base model?");

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
                               shape_str(p.magnitude->shape) + ", expected [" + std::to_string(p.layer->output_features()) +
                               "] (one per output feature of " + p.layer->describe() + "): different base model?");
    if (cfg.has_targets && !cfg.selector().selects(p.file_path))
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
      throw std::runtime_error("'" + st_path + "': tensor '" + view->name + "' has shape " + shape_str(view->shape) +
                               ", expected " + shape_str(want) + ": " + hint);
    }
    if (cfg.ensure_weight_tying && !p.layer->tied_to().empty())
      throw std::runtime_error(where + " is tied to '" + p.layer->tied_to() + "' and adapter_config.json sets "
                               "ensure_weight_tying, which gives '" + p.layer->tied_to() + "' the same adapter: this "
                               "loader does not implement tied adapters (train without ensure_weight_tying, or "
                               "without an adapter on the tied layer)");
    const auto dtype = dtype_override ? *dtype_override : to_torch(p.A->dtype);
    if (!torch::isFloatingType(dtype))
      throw std::runtime_error("'" + st_path + "': tensor '" + p.A->name + "' is not floating point");
    AdapterPlan::Layer l;
    l.path = path;
    l.file_path = p.file_path;
    l.layer = p.layer;
    l.A = to_tensor(*p.A);
    l.B = to_tensor(*p.B);
    if (p.magnitude) l.magnitude = to_tensor(*p.magnitude);
    l.options = AdapterOptions(r).alpha(cfg.alpha_for(p.file_path)).dropout(cfg.dropout).use_rslora(cfg.use_rslora)
                    .dtype(dtype).use_dora(cfg.use_dora);
    plan.layers.push_back(std::move(l));
  }
  if (pending.empty()) throw std::runtime_error("'" + st_path + "' holds no LoRA tensors");
  if (load_saved)
    for (const auto& m : saved)
      for (const auto& p : m.module->named_parameters(/*recurse=*/true))
        if (!saved_views.count(m.path + "." + p.key()))
          throw std::runtime_error("'" + st_path + "' has no tensor for '" + m.file_path + "." + p.key() + "' of module '" +
                                   m.file_path + "', which adapter_config.json's modules_to_save lists: truncated file?");
  auto params = model.named_parameters(/*recurse=*/true);
  for (const auto& [bias_path, view] : biases)
    if (!params.contains(bias_path) || params[bias_path].sizes() != torch::IntArrayRef(view->shape))
      throw std::runtime_error("'" + st_path + "': tensor '" + view->name + "' has no matching bias of shape " +
                               shape_str(view->shape) + " in the model (looked for '" + bias_path + "')");

  for (const auto& [bias_path, view] : biases) plan.biases.emplace_back(bias_path, to_tensor(*view));
  for (const auto& [key, view] : saved_views) plan.saved.emplace_back(key, to_tensor(*view));
  return plan;
}

/// Copies a plan's modules_to_save tensors into the model, in place; with `trainable` their
/// parameters get requires_grad.
inline void copy_saved(torch::nn::Module& model, const AdapterPlan& plan, bool trainable) {
  torch::NoGradGuard no_grad;
  auto params = model.named_parameters(/*recurse=*/true);
  auto buffers = model.named_buffers(/*recurse=*/true);
  for (const auto& [key, value] : plan.saved) {
    if (torch::Tensor* p = params.find(key)) {
      p->copy_(value);
      if (trainable) p->requires_grad_(true);
    } else {
      buffers[key].copy_(value);
    }
  }
}

}  // namespace detail

/// Loads a PEFT LoRA adapter from `dir` into the model's LoRA-capable layers, strictly (see
/// detail::read_adapter and docs/adapters.md); on any error nothing is changed. Reads
/// `adapter_config.json` (r, lora_alpha, use_rslora, use_dora, rank/alpha patterns give each
/// layer's options; the key policy is in peft_config.hpp) and `adapter_model.safetensors`.
/// The modules the config's `modules_to_save` names get the file's values (every parameter, same
/// shapes; trainable with the adapter when `trainable`), unless `load_modules_to_save(false)`.
///
/// Example:
/// \code
///   lora::load_adapter(*model, "out/adapter");                                  // frozen, active
///   lora::load_adapter(*model, "other", lora::LoadAdapterOptions().adapter_name("task2").activate(false));
/// \endcode
inline InjectReport load_adapter(torch::nn::Module& model, const std::string& dir,
                                 const LoadAdapterOptions& options = LoadAdapterOptions()) {
  const std::string& name = options.adapter_name();
  const auto plan = detail::read_adapter(model, dir, options.name_map(), options.dtype(), options.load_modules_to_save());
  for (const auto& l : plan.layers) {
    if (l.layer->merged())
      throw std::runtime_error("load_adapter: module '" + l.path + "' is merged; unmerge before loading an adapter");
    if (l.layer->has_adapter(name) && options.if_exists() == IfExists::Error)
      throw std::runtime_error("load_adapter: module '" + l.path + "' already has adapter '" + name +
                               "'; load it under another adapter_name, or pass if_exists(IfExists::Replace)");
  }
  // Everything checked: now change the model.
  InjectReport report;
  report.adapter_name = name;
  torch::NoGradGuard no_grad;
  for (const auto& l : plan.layers) {
    if (l.layer->has_adapter(name)) l.layer->delete_adapter(name);
    l.layer->add_adapter(name, l.options);
    l.layer->lora_A(name).copy_(l.A);
    l.layer->lora_B(name).copy_(l.B);
    if (l.magnitude.defined()) l.layer->variant(name)->load_file_tensor(DoRAImpl::kFileKey, l.magnitude);
    if (options.activate()) l.layer->set_active_adapters({name});
    report.adapted.push_back(l.path);
  }
  auto params = model.named_parameters(/*recurse=*/true);
  for (const auto& [bias_path, value] : plan.biases) params[bias_path].copy_(value);
  if (options.trainable())
    mark_only_lora_as_trainable(model, plan.config.bias, name);
  else
    for (auto& p : model.parameters(/*recurse=*/true)) p.requires_grad_(false);
  detail::copy_saved(model, plan, options.trainable());
  for (const auto& p : model.parameters(/*recurse=*/true)) {
    report.all_params += p.numel();
    if (p.requires_grad()) report.trainable_params += p.numel();
  }
  return report;
}

/// Loads the adapter in `dir` into the existing adapter `name` in place (PEFT's
/// `hotswap_adapter`): the A and B tensors keep their storage, so anything captured on them (a
/// CUDA graph, a compiled module) keeps working; nothing else of the model changes but the
/// biases and modules_to_save tensors the file carries (copied in place too). The file's rank may be smaller than the slot's:
/// A and B are zero-padded, and B is multiplied by s_file / s_slot so the slot's scaling gives the
/// file's update exactly. The file must adapt exactly the layers that have `name`, with
/// whole-layer adapters (a slot with a slice mask is refused: load such an adapter from its file,
/// which holds the whole-layer form); DoRA adapters, in the slot or the file, are refused (the
/// magnitude would be left behind). On any error the model is unchanged.
inline void hotswap_adapter(torch::nn::Module& model, const std::string& dir, const std::string& name) {
  const std::string where = "hotswap_adapter('" + dir + "' into '" + name + "')";
  const auto plan = detail::read_adapter(model, dir, NameMap(), c10::nullopt);
  std::map<LoRALayer*, const detail::AdapterPlan::Layer*> incoming;
  for (const auto& l : plan.layers) incoming[l.layer] = &l;
  for (const auto& [path, layer] : detail::lora_layers(model)) {
    const bool slot = layer->has_adapter(name), file = incoming.count(layer) > 0;
    if (slot != file)
      throw std::invalid_argument(where + ": module '" + path + "' " +
                                  (slot ? "has the slot but the file has no tensors for it"
                                        : "has tensors in the file but no adapter '" + name + "' to swap into") +
                                  ": the two adapters target different modules");
    if (!slot) continue;
    if (layer->merged()) throw std::logic_error(where + ": module '" + path + "' is merged; unmerge() first");
    if (const AdapterVariant* v = layer->variant(name))
      throw std::invalid_argument(where + ": module '" + path + "': the slot is a " + v->variant_name() + " adapter; " +
                                  "hot-swapping copies A and B into the slot in place, which would leave its magnitude " +
                                  "behind: load it with load_adapter(...if_exists(IfExists::Replace))");
    if (plan.config.use_dora)
      throw std::invalid_argument(where + ": module '" + path + "': the file is a DoRA adapter; hot-swapping copies A and "
                                  "B into the slot in place, which would leave its magnitude behind: load it with "
                                  "load_adapter(...if_exists(IfExists::Replace))");
    if (!layer->adapter_options(name).enable().empty())
      throw std::invalid_argument(where + ": module '" + path + "': adapter '" + name + "' has a slice mask; hot-swapping "
                                  "needs a whole-layer slot (load the first adapter from its file)");
    const int64_t R = layer->adapter_options(name).r(), r = incoming[layer]->options.r();
    if (r > R)
      throw std::invalid_argument(where + ": module '" + path + "': the file's rank " + std::to_string(r) +
                                  " exceeds the slot's rank " + std::to_string(R) + " (load it as a new adapter, or make the slot larger)");
  }
  torch::NoGradGuard no_grad;
  for (const auto& l : plan.layers) {
    const int64_t r = l.options.r();
    torch::Tensor& A = l.layer->lora_A(name);
    torch::Tensor& B = l.layer->lora_B(name);
    const double ratio = l.options.scaling() / l.layer->scaling(name);
    A.zero_();
    B.zero_();
    A.narrow(0, 0, r).copy_(l.A);
    B.narrow(1, 0, r).copy_(l.B.to(torch::kFloat64).mul(ratio));
  }
  auto params = model.named_parameters(/*recurse=*/true);
  for (const auto& [bias_path, value] : plan.biases) params[bias_path].copy_(value);
  detail::copy_saved(model, plan, /*trainable=*/false);
}

/// Saves every named adapter of the model in PEFT's layout: "default" (or, without one, the
/// first name) at the top of `dir`, each other adapter in `dir/<name>/`, as
/// `PeftModel.save_pretrained` does. Returns the folders written, the top one first, then by name.
inline std::vector<std::string> save_adapters(torch::nn::Module& model, const std::string& dir,
                                              SaveAdapterOptions options = SaveAdapterOptions()) {
  std::vector<std::string> names;
  for (const auto& [path, layer] : detail::lora_layers(model))
    for (const auto& n : layer->adapter_names())
      if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  if (names.empty()) throw std::invalid_argument("save_adapters: the model has no adapters");
  const std::string top = std::find(names.begin(), names.end(), "default") != names.end() ? "default" : names.front();
  std::sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) {
    return (a == top) != (b == top) ? a == top : a < b;  // the top adapter first, then by name
  });
  std::vector<std::string> written;
  for (const auto& n : names) {
    const std::string folder = n == top ? dir : dir + "/" + n;
    save_adapter(model, folder, options.adapter_name(n));
    written.push_back(folder);
  }
  return written;
}

/// Loads a folder written by save_adapters (or by PEFT with several adapters): the adapter at the
/// top as `top_name`, each subfolder holding adapter_config.json as the adapter of its name. The
/// top one is activated. Returns the names loaded.
inline std::vector<std::string> load_adapters(torch::nn::Module& model, const std::string& dir,
                                              const std::string& top_name = "default") {
  std::vector<std::string> loaded;
  if (std::filesystem::exists(dir + "/adapter_config.json")) {
    load_adapter(model, dir, LoadAdapterOptions().adapter_name(top_name));
    loaded.push_back(top_name);
  }
  std::vector<std::string> subs;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_directory() && std::filesystem::exists(e.path() / "adapter_config.json")) subs.push_back(e.path().filename().string());
  std::sort(subs.begin(), subs.end());
  for (const auto& n : subs) {
    load_adapter(model, dir + "/" + n, LoadAdapterOptions().adapter_name(n).activate(false));
    loaded.push_back(n);
  }
  if (loaded.empty()) throw std::runtime_error("load_adapters: '" + dir + "' holds no adapter_config.json, at the top or in a subfolder");
  return loaded;
}

}  // namespace lora
