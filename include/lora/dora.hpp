#pragma once
/// \file dora.hpp
/// `lora::DoRA`: Weight-Decomposed Low-Rank Adaptation (Liu et al., 2024, "DoRA: Weight-Decomposed
/// Low-Rank Adaptation") as an adapter variant (variant.hpp), with HuggingFace PEFT's semantics
/// (`tuners/lora/dora.py`, `variants.py`). Turned on per adapter by `AdapterOptions::use_dora` or
/// `LoRAConfig::use_dora`.
///
/// With W the output-major base weight, ΔW = s·B·A the adapter's LoRA update, and n = ‖W + ΔW‖
/// the L2 norm of each output feature's row:
///
///     W' = (m / n) ⊙ (W + ΔW)          m: the trainable magnitude, one entry per output feature
///
/// n is recomputed in every forward from the current A and B but detached (the paper's §4.3:
/// no gradient flows through the norm), as PEFT does. m starts at n of the new adapter, so at
/// ‖W‖ while B = 0 and the model starts equal to its base: add DoRA adapters after the base
/// weights are loaded (as PEFT, which also takes m at injection).
///
/// Forward, as PEFT computes it:
/// - without dropout (or in eval): y = (m/n) ⊙ (x·Wᵀ + s·x·Aᵀ·Bᵀ) + b, i.e. x·W'ᵀ + b;
/// - with LoRA dropout in training, x' = dropout(x):
///   y = x·Wᵀ + b + (m/n − 1) ⊙ (x'·Wᵀ) + (m/n) ⊙ (s·x'·Aᵀ·Bᵀ): the base output of the undropped
///   input stays, and the magnitude's correction and the update see the dropped-out one.
/// - Embedding (PEFT's DoraEmbeddingLayer): the output features are E's embedding_dim columns, so
///   n is the norm of each column of E + ΔE over the vocabulary: y = (m/n) ⊙ (E[ids] + s·Aᵀ[ids]·Bᵀ).
/// - Slice masks (a fused q/k/v projection; PEFT has none): DoRA is defined per slice. m has
///   entries for the output features of the enabled slices only; the other features keep scale
///   1 exactly, so a disabled slice stays the base's. In a PEFT file the adapter takes its
///   whole-layer form: m on the enabled features and n (= ‖W‖, which gives scale 1) elsewhere.
///
/// Cost: every forward forms ΔW (out × in × r) and the norm of W + ΔW (an out × in temporary),
/// and the output is rescaled once more, in the forward and the backward; dropout adds x'·Wᵀ
/// (a second base-sized GEMM, PEFT's cost too). Merged, DoRA costs what the base costs.
///
/// Example:
/// \code
///   auto cfg = lora::LoRAConfig().r(8).alpha(16).target_modules({"c_attn"}).use_dora(true);
///   lora::inject_lora(*model, cfg);   // adds lora_magnitude_vector.default.weight to each layer
/// \endcode

#include <lora/variant.hpp>

#include <ostream>

namespace lora {

/// DoRA's magnitude m for one adapter on one layer, and its arithmetic. Its one parameter is
/// `weight` (PEFT's name: `lora_magnitude_vector.<adapter>.weight` in the model,
/// `<module>.lora_magnitude_vector` in PEFT files).
class DoRAImpl : public torch::nn::Cloneable<DoRAImpl>, public AdapterVariant {
 public:
  /// The key of m in PEFT files, after the module path.
  static constexpr const char* kFileKey = "lora_magnitude_vector";

  /// A layer of `out_features` output features; `rows`: the features the adapter adapts (a slice
  /// mask's enabled slices), empty for all.
  explicit DoRAImpl(int64_t out_features, std::vector<int64_t> rows = {})
      : out_features_(out_features), rows_(std::move(rows)) {
    reset();
  }

  void reset() override {
    const int64_t n = rows_.empty() ? out_features_ : static_cast<int64_t>(rows_.size());
    weight = register_parameter("weight", torch::ones({n}));
  }

  /// n = ‖W + ΔW‖ of every output feature, detached, in ΔW's dtype.
  static torch::Tensor weight_norm(const torch::Tensor& w, const torch::Tensor& delta) {
    torch::NoGradGuard no_grad;
    return row_norms(w.to(delta.scalar_type()) + delta);
  }
  /// The L2 norm of each row of `v`.
  static torch::Tensor row_norms(const torch::Tensor& v) {
    return at::linalg_vector_norm(v, 2, torch::IntArrayRef{1}, false, c10::nullopt);
  }

  /// m / n on every output feature (1 on the features the adapter does not adapt), in ΔW's dtype;
  /// differentiable in m.
  torch::Tensor scale(const torch::Tensor& w, const torch::Tensor& delta) const { return scale_for(weight_norm(w, delta)); }
  /// The same from the norms n.
  torch::Tensor scale_for(const torch::Tensor& n) const {
    const torch::Tensor m = weight.to(n.scalar_type());
    if (rows_.empty()) return m / n;
    const torch::Tensor idx = rows_index(n.device());
    return torch::ones_like(n).index_copy(0, idx, m / n.index_select(0, idx));
  }

  std::string variant_name() const override { return "DoRA"; }
  std::string dict_name() const override { return kFileKey; }

  void init(const torch::Tensor& w, const torch::Tensor& delta) override {
    torch::NoGradGuard no_grad;
    const torch::Tensor n = weight_norm(w, delta);
    weight.copy_(rows_.empty() ? n : n.index_select(0, rows_index(n.device())));
  }

  torch::Tensor forward(const VariantTerms& t) override {
    if (t.fused.defined()) {
      const torch::Tensor s = scale(t.weight, t.delta).to(t.fused.scalar_type());
      return t.bias.defined() ? torch::addcmul(t.bias.to(t.fused.scalar_type()), t.fused, s) : t.fused * s;
    }
    const torch::Tensor s = scale(t.weight, t.delta).to(t.base.scalar_type());
    return t.base + t.plain * (s - 1) + t.update * s;
  }

  torch::Tensor effective_weight(const torch::Tensor& w, const torch::Tensor& delta) override {
    torch::NoGradGuard no_grad;
    torch::Tensor v = w.to(delta.scalar_type()) + delta;
    return v.mul_(scale_for(row_norms(v)).unsqueeze(1));
  }

  std::vector<std::pair<std::string, torch::Tensor>> file_tensors(const torch::Tensor& w, const torch::Tensor& delta) override {
    torch::NoGradGuard no_grad;
    if (rows_.empty()) return {{kFileKey, weight.detach()}};
    torch::Tensor full = weight_norm(w, delta);  // scale 1 on the features the adapter leaves alone
    full.index_copy_(0, rows_index(full.device()), weight.detach().to(full.scalar_type()));
    return {{kFileKey, full.to(weight.scalar_type())}};
  }

  void load_file_tensor(const std::string& key, const torch::Tensor& value) override {
    TORCH_CHECK(key == kFileKey, "DoRA: '", key, "' is not one of its file tensors");
    torch::NoGradGuard no_grad;
    const torch::Tensor v = value.to(weight.device(), weight.scalar_type());
    weight.copy_(rows_.empty() ? v : v.index_select(0, rows_index(weight.device())));
  }

  /// `lora::DoRA(out_features=2304, adapted=1536)`
  void pretty_print(std::ostream& stream) const override {
    stream << "lora::DoRA(out_features=" << out_features_;
    if (!rows_.empty()) stream << ", adapted=" << rows_.size();
    stream << ")";
  }

  /// m: one entry per adapted output feature.
  torch::Tensor weight;

 private:
  torch::Tensor rows_index(torch::Device device) const {
    return torch::tensor(rows_, torch::kLong).to(device);
  }

  int64_t out_features_;
  std::vector<int64_t> rows_;
};

/// A `ModuleHolder` for `DoRAImpl`.
TORCH_MODULE(DoRA);

}  // namespace lora
