#pragma once
/// \file variant.hpp
/// `lora::AdapterVariant`: the seam for LoRA variants (HuggingFace PEFT's `LoraVariant`), adapters
/// whose arithmetic is not plain LoRA's additive s·B·A. DoRA (dora.hpp) is the first.
///
/// A variant belongs to one adapter on one layer. It keeps that adapter's A and B (and so their
/// initialisation, dropout, slice masks and file keys) and adds what it owns:
/// - its extra parameters: the variant is a module, registered in the layer's `ModuleDict` named
///   `dict_name()` under the adapter's name (DoRA: `lora_magnitude_vector.<adapter>.weight`, as in
///   PEFT), so `lora_parameters`, `lora_state_dict`, the native archive and `to()` / `clone()`
///   treat them like A and B;
/// - its forward: the layer computes the plain-LoRA pieces (`VariantTerms`) and the variant
///   turns them into the layer's output;
/// - its merged weight (`effective_weight`): `merge` writes it, `delta_weight` is it minus W0;
/// - its file tensors (`file_tensors` / `load_file_tensor`). Its flag in `adapter_config.json`
///   and its keys are known to the config reader and the loader (peft_config.hpp, adapter_io.hpp),
///   which must recognise them before any variant exists.
///
/// Layers hand a variant their weights *output-major*: [out_features, in_features], one row per
/// output feature (Linear: W0 itself; Embedding: Eᵀ [embedding_dim, num_embeddings]).
///
/// Operations that assume an additive update (batches that mix adapters, add_weighted_adapter,
/// hotswap_adapter, several adapters active on one layer) refuse a variant adapter by name.
/// docs/guide.md ("Adding an adapter variant") walks through DoRA as the worked example.

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace lora {

/// The plain-LoRA pieces of one forward, each [N, out_features] in the output's dtype, as a layer
/// hands them to its adapter's variant. Either `fused` is set (the adapter sees the layer's own
/// input: no dropout, or eval), or `base`, `plain` and `update` are (the adapter's input x' is a
/// dropped-out copy of the input x).
struct VariantTerms {
  torch::Tensor fused;   ///< x·Wᵀ + s·x·Aᵀ·Bᵀ, without the bias
  torch::Tensor base;    ///< x·Wᵀ + b: the layer's output without the adapter
  torch::Tensor plain;   ///< x'·Wᵀ, without the bias
  torch::Tensor update;  ///< s·x'·Aᵀ·Bᵀ
  torch::Tensor bias;    ///< b, undefined when the layer has none
  torch::Tensor weight;  ///< W, output-major
  torch::Tensor delta;   ///< s·B·A output-major, detached, in the wider of float32 and W's dtype
};

/// What a variant adds to a LoRA adapter (see the file comment).
class AdapterVariant {
 public:
  virtual ~AdapterVariant() = default;

  /// The variant's name in messages: "DoRA".
  virtual std::string variant_name() const = 0;
  /// The layer's ModuleDict that holds it: "lora_magnitude_vector".
  virtual std::string dict_name() const = 0;

  /// Sets the variant's parameters for a new adapter, from W and the adapter's starting update.
  virtual void init(const torch::Tensor& weight, const torch::Tensor& delta) = 0;
  /// The layer's output from the plain-LoRA pieces.
  virtual torch::Tensor forward(const VariantTerms& terms) = 0;
  /// The weight the layer computes with (output-major, in the dtype of `delta`): W + ΔW for plain LoRA.
  virtual torch::Tensor effective_weight(const torch::Tensor& weight, const torch::Tensor& delta) = 0;

  /// The variant's tensors in a PEFT file, by key suffix after the module path, in the
  /// whole-layer form a PEFT layer of this shape has.
  virtual std::vector<std::pair<std::string, torch::Tensor>> file_tensors(const torch::Tensor& weight,
                                                                          const torch::Tensor& delta) = 0;
  /// Copies file tensor `key` (its shape checked by the loader) into the variant's parameters.
  virtual void load_file_tensor(const std::string& key, const torch::Tensor& value) = 0;
};

}  // namespace lora
