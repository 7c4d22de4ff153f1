#pragma once
/// \file combine.hpp
/// Many adapters on one base model: combining adapters into a new one (PEFT's
/// `add_weighted_adapter`), switching a merged model from one adapter to another in place, and
/// saving or loading every named adapter at once in PEFT's folder layout.

#include <lora/adapter_io.hpp>
#include <lora/inject.hpp>
#include <lora/merge.hpp>
#include <lora/state.hpp>

#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace lora {

/// What add_weighted_adapter built.
struct CombineReport {
  std::vector<std::string> layers;  ///< module paths that got the new adapter
  /// combination "svd": per layer, ‖ΔW − B·A‖_F / ‖ΔW‖_F of the truncation (0 when the rank suffices)
  std::map<std::string, double> svd_relative_error;
  double worst_svd_relative_error = 0;
};

/// Adds adapter `new_name` combining `adapters` with `weights`, on every layer that has at least
/// one of them, with PEFT's names and conventions (the new adapter has alpha = r, so scaling 1, is
/// frozen and not activated: set_adapter(model, {new_name}) uses it). Per layer, with ΔW_i =
/// s_i·B_i·A_i (slice masks expanded to their whole-layer form):
/// - "cat": A = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = [B_1 B_2 ...], rank Σ r_i: exactly Σ w_i ΔW_i.
/// - "linear": A = Σ √(w_i s_i) A_i, B = Σ √(w_i s_i) B_i (PEFT's rule; equal ranks required, w_i s_i ≥ 0);
///   B·A has cross terms, so it is not Σ w_i ΔW_i.
/// - "svd": the best rank-k approximation (k = svd_rank, default the largest r_i) of Σ w_i ΔW_i;
///   the report gives each layer's relative truncation error. (PEFT's svd multiplies each ΔW_i by
///   s_i once more; this one approximates the same sum that "cat" gives exactly.)
///
/// Example:
/// \code
///   lora::add_weighted_adapter(*model, {"formal", "short"}, {0.7, 0.3}, "mix", "cat");
///   lora::set_adapter(*model, {"mix"});
/// \endcode
inline CombineReport add_weighted_adapter(torch::nn::Module& model, const std::vector<std::string>& adapters,
                                          const std::vector<double>& weights, const std::string& new_name,
                                          const std::string& combination = "svd", int64_t svd_rank = 0) {
  const std::string where = "add_weighted_adapter";
  if (adapters.empty() || adapters.size() != weights.size())
    throw std::invalid_argument(where + ": " + std::to_string(adapters.size()) + " adapters and " +
                                std::to_string(weights.size()) + " weights: give one weight per adapter");
  if (combination != "cat" && combination != "linear" && combination != "svd")
    throw std::invalid_argument(where + ": combination '" + combination + "' is not one of cat, linear, svd");
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
    std::vector<LoRALayer::FileForm> forms;
    std::vector<double> w, s;
    for (size_t i = 0; i < adapters.size(); ++i)
      if (layer->has_adapter(adapters[i])) {
        forms.push_back(layer->file_form(adapters[i]));  // whole-layer form: A [r, in], B [out, r]
        w.push_back(weights[i]);
        s.push_back(layer->scaling(adapters[i]));
      }
    if (forms.empty()) continue;
    const auto dtype = torch::promote_types(torch::kFloat32, forms[0].A.scalar_type());
    Plan p{path, layer, {}, {}, 0};
    if (combination == "cat") {
      std::vector<torch::Tensor> As, Bs;
      for (size_t i = 0; i < forms.size(); ++i) {
        As.push_back(forms[i].A.to(dtype) * (w[i] * s[i]));
        Bs.push_back(forms[i].B.to(dtype));
      }
      p.A = torch::cat(As, 0);
      p.B = torch::cat(Bs, 1);
    } else if (combination == "linear") {
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

/// Loads the adapter in `dir` into the existing adapter `name` in place (PEFT's
/// `hotswap_adapter`): the A and B tensors keep their storage, so anything captured on them (a
/// CUDA graph, a compiled module) keeps working. The file's rank may be smaller than the slot's:
/// A and B are zero-padded, and B is multiplied by s_file / s_slot so the slot's scaling gives the
/// file's update exactly. The file must adapt exactly the layers that have `name`, with
/// whole-layer adapters (a slot with a slice mask is refused: load such an adapter from its file,
/// which holds the whole-layer form); on any error the model is unchanged.
inline void hotswap_adapter(torch::nn::Module& model, const std::string& dir, const std::string& name) {
  const std::string where = "hotswap_adapter('" + dir + "' into '" + name + "')";
  const std::string temp = "hotswap_incoming";
  auto layers = detail::lora_layers(model);
  for (const auto& [path, layer] : layers)
    if (layer->has_adapter(temp)) throw std::logic_error(where + ": module '" + path + "' already has an adapter '" + temp + "'");
  std::vector<std::pair<torch::Tensor, bool>> flags;  // load_adapter freezes the model: restore after
  for (const auto& p : model.parameters(/*recurse=*/true)) flags.emplace_back(p, p.requires_grad());
  auto restore_flags = [&] {
    for (auto& [p, f] : flags) p.requires_grad_(f);
  };
  load_adapter(model, dir, LoadAdapterOptions().adapter_name(temp).activate(false));  // every check of a normal load
  // The new adapter is in place; from here on, errors must remove it again.
  auto drop = [&] {
    for (const auto& [path, layer] : layers)
      if (layer->has_adapter(temp)) layer->delete_adapter(temp);
  };
  try {
    for (const auto& [path, layer] : layers) {
      const bool slot = layer->has_adapter(name), incoming = layer->has_adapter(temp);
      if (slot != incoming)
        throw std::invalid_argument(where + ": module '" + path + "' " +
                                    (slot ? "has the slot but the file has no tensors for it"
                                          : "has tensors in the file but no adapter '" + name + "' to swap into") +
                                    ": the two adapters target different modules");
      if (!slot) continue;
      if (layer->merged()) throw std::logic_error(where + ": module '" + path + "' is merged; unmerge() first");
      for (const auto& n : {name, temp})
        if (const AdapterVariant* v = layer->variant(n))
          throw std::invalid_argument(where + ": module '" + path + "': " + (n == name ? "the slot" : "the file") + " is a " +
                                      v->variant_name() + " adapter; hot-swapping copies A and B into the slot in place, "
                                      "which would leave its magnitude behind: load it with load_adapter(...if_exists(IfExists::Replace))");
      if (!layer->adapter_options(name).enable().empty())
        throw std::invalid_argument(where + ": module '" + path + "': adapter '" + name + "' has a slice mask; hot-swapping "
                                    "needs a whole-layer slot (load the first adapter from its file)");
      const int64_t R = layer->adapter_options(name).r(), r = layer->adapter_options(temp).r();
      if (r > R)
        throw std::invalid_argument(where + ": module '" + path + "': the file's rank " + std::to_string(r) +
                                    " exceeds the slot's rank " + std::to_string(R) + " (load it as a new adapter, or make the slot larger)");
    }
  } catch (...) {
    drop();
    restore_flags();
    throw;
  }
  torch::NoGradGuard no_grad;
  for (const auto& [path, layer] : layers) {
    if (!layer->has_adapter(name)) continue;
    const int64_t r = layer->adapter_options(temp).r();
    torch::Tensor& A = layer->lora_A(name);
    torch::Tensor& B = layer->lora_B(name);
    const double ratio = layer->scaling(temp) / layer->scaling(name);
    A.zero_();
    B.zero_();
    A.narrow(0, 0, r).copy_(layer->lora_A(temp));
    B.narrow(1, 0, r).copy_(layer->lora_B(temp).to(torch::kFloat64).mul(ratio));
  }
  drop();
  restore_flags();
}

/// Switches a merged model from its merged adapter(s) to `names` in place, without reloading the
/// base weights: each merged layer restores W0 from the copy kept at merge time (exact, every
/// dtype), activates `names` and merges them. Layers that were not merged are merged too.
inline void switch_merged_adapter(torch::nn::Module& model, const std::vector<std::string>& names) {
  unmerge(model);
  set_adapter(model, names);
  merge(model);
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
