#pragma once
/// \file config.hpp
/// `lora::LoRAConfig`: which layers get an adapter and how it is shaped.
/// `lora::AdapterOptions`: the per-layer options a config resolves to.

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lora {

/// How a new adapter is initialised. B starts at zero for `KaimingUniform`
/// and `Gaussian`, so an injected model starts exactly equal to its base.
enum class Init {
  KaimingUniform,  ///< A ~ kaiming_uniform(a = sqrt(5)) as loralib and PEFT (default)
  Gaussian,        ///< A ~ N(0, std = 1/r) as PEFT's `init_lora_weights="gaussian"`
  Random,          ///< A kaiming, B kaiming too: non-zero from the start (PEFT's `False`, for tests)
};

/// Which biases are trainable, as loralib's `mark_only_lora_as_trainable`.
enum class Bias {
  None,      ///< no bias is trained (default)
  All,       ///< every parameter named `bias` in the model is trained
  LoraOnly,  ///< only the biases of layers that carry an adapter are trained
};

/// Per-module rank / alpha overrides, in order: as PEFT does (`get_pattern_key`), a module takes
/// the first key, in this order, that matches it, so the order is part of the value (a
/// `std::map` would sort it away). Written like a map: `{{"c_attn", 2}, {"h.0.attn.c_attn", 3}}`.
using RankPattern = std::vector<std::pair<std::string, int64_t>>;
using AlphaPattern = std::vector<std::pair<std::string, double>>;
/// Per-target slice masks for fused projections, keyed like `target_modules`.
using SliceMasks = std::map<std::string, std::vector<bool>>;

/// Options of one adapter on one layer (what a `LoRAConfig` resolves to).
///
/// Example:
/// \code
///   layer->add_adapter("default", lora::AdapterOptions(4).alpha(32).enable({true, false, true}));
/// \endcode
struct AdapterOptions {
  explicit AdapterOptions(int64_t r = 8) : r_(r) {}
  /// Rank of the update.
  TORCH_ARG(int64_t, r);
  /// Scale numerator: the update is multiplied by alpha / r (alpha / sqrt(r) with rsLoRA).
  TORCH_ARG(double, alpha) = 8.0;
  /// Dropout probability applied to the adapter's input only; skipped when 0.
  TORCH_ARG(double, dropout) = 0.0;
  /// Rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski, 2023).
  TORCH_ARG(bool, use_rslora) = false;
  TORCH_ARG(Init, init) = Init::KaimingUniform;
  /// dtype of A and B; the input is cast to it and the update cast back.
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat32;
  /// Slice mask over n equal output slices (loralib's `enable_lora`); empty = whole layer.
  TORCH_ARG(std::vector<bool>, enable) = {};
  /// DoRA (dora.hpp): a trainable magnitude per output feature rescales W0 + s·B·A (PEFT's name).
  TORCH_ARG(bool, use_dora) = false;

 public:
  double scaling() const { return use_rslora_ ? alpha_ / std::sqrt(double(r_)) : alpha_ / double(r_); }
};

/// Which modules of a model get an adapter, and with which options.
/// Field names and matching rules follow HuggingFace PEFT's `LoraConfig`.
///
/// Example:
/// \code
///   auto cfg = lora::LoRAConfig()
///                  .r(4).alpha(32).dropout(0.1)
///                  .target_modules({"c_attn"})
///                  .enable_lora({{"c_attn", {true, false, true}}});  // q and v of fused qkv
///   auto report = lora::inject_lora(*model, cfg);
///   std::cout << report << "\n";
/// \endcode
struct LoRAConfig {
  TORCH_ARG(int64_t, r) = 8;
  TORCH_ARG(double, alpha) = 8.0;
  TORCH_ARG(double, dropout) = 0.0;
  TORCH_ARG(bool, use_rslora) = false;
  TORCH_ARG(Init, init) = Init::KaimingUniform;
  TORCH_ARG(Bias, bias) = Bias::None;
  /// A module matches a target when its full name equals it or ends with "." + target.
  TORCH_ARG(std::vector<std::string>, target_modules) = {};
  /// ECMAScript regex that must match the whole module name (PEFT's string form of target_modules).
  TORCH_ARG(std::string, target_regex) = "";
  /// Modules never adapted, matched like `target_modules`.
  TORCH_ARG(std::vector<std::string>, exclude_modules) = {};
  /// Only adapt modules whose layer index (the number after `layers_pattern`) is listed.
  TORCH_ARG(std::vector<int64_t>, layers_to_transform) = {};
  /// Name of the module list holding the layers ("h", "layers"); empty: the last "<name>.<N>." in the path.
  TORCH_ARG(std::string, layers_pattern) = "";
  /// Per-target slice masks for fused projections, e.g. `{{"c_attn", {true, false, true}}}`.
  TORCH_ARG(SliceMasks, enable_lora) = {};
  /// Per-module rank overrides: a module takes the first key, in order, whose regex `(.*\.)?key`
  /// matches its whole path (PEFT's rule; a plain name matches as a dotted suffix).
  TORCH_ARG(RankPattern, rank_pattern) = {};
  /// Per-module alpha overrides, matched like `rank_pattern` (first matching key wins).
  TORCH_ARG(AlphaPattern, alpha_pattern) = {};
  /// dtype of the adapter weights.
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat32;
  /// DoRA adapters (dora.hpp) instead of plain LoRA, as PEFT's `use_dora`.
  TORCH_ARG(bool, use_dora) = false;
};

}  // namespace lora
