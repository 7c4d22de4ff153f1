#pragma once
/// \file merge.hpp
/// Folding adapters into the base weights for zero-latency inference, and back.
///
/// Semantics, per LoRA layer:
/// - `merge` adds s·B·A of every active adapter into W0. ΔW is computed in the wider
///   of float32 and W0's dtype and written into W0 in W0's dtype. While merged, the
///   forward does not add the adapter again. Merging a merged layer does nothing.
/// - `unmerge` restores W0 bit for bit, for every dtype (bf16 and fp16 too), from a
///   copy of W0 taken at merge time. The copy costs one extra W0 per merged layer; it
///   is not a registered buffer (so never in a checkpoint) and follows `to()` and
///   `clone()`. Unmerging an unmerged layer does nothing.
/// - `merge_and_unload` merges without keeping the copy and then removes the
///   adapters: each layer then behaves as a plain Linear / Embedding and its
///   parameter names are the base model's.
/// - A forward in training mode, with gradients on, through a merged trainable
///   adapter throws: unmerge before training.
/// - `safe = true` checks every layer's merged weight for NaN/Inf before any layer
///   is written; on failure nothing is merged.

#include <lora/state.hpp>

namespace lora {

namespace detail {

/// Merges every layer; with `safe`, every layer's merged weight is built and checked for NaN/Inf
/// first (held until all are checked: one merged weight per layer in memory) and nothing is
/// written unless all are finite.
inline void merge_layers(torch::nn::Module& model, bool safe, bool keep_copy, bool unload) {
  std::vector<std::pair<LoRALayer*, LoRALayer::PendingMerge>> pending;
  for_each_lora_layer(model, [&](const std::string& name, LoRALayer& layer) {
    if (!safe) {
      at_module(name, [&] {
        layer.merge(/*safe=*/false, keep_copy);
        if (unload) layer.unload();
      });
      return;
    }
    auto p = layer.prepare_merge();
    if (!p.finite())
      throw std::runtime_error("merge: module '" + (name.empty() ? std::string("<root>") : name) +
                               "': merging its active adapter(s) would put NaN/Inf into the weight; "
                               "nothing was merged (check the adapter file or the training run that made it)");
    pending.emplace_back(&layer, std::move(p));
  });
  for (auto& [layer, p] : pending) {
    layer->commit_merge(p, keep_copy);
    if (unload) layer->unload();
  }
}

}  // namespace detail

/// Merges the active adapters of every LoRA layer into its base weight.
///
/// Example:
/// \code
///   model->eval();
///   lora::merge(*model);    // inference now costs exactly what the base model costs
///   lora::unmerge(*model);  // W0 restored exactly; the adapter is live again
/// \endcode
inline void merge(torch::nn::Module& model, bool safe = false) {
  detail::merge_layers(model, safe, /*keep_copy=*/true, /*unload=*/false);
}

/// Restores every merged layer's base weight exactly.
inline void unmerge(torch::nn::Module& model) {
  detail::for_each_lora_layer(model, [&](const std::string& name, LoRALayer& layer) {
    detail::at_module(name, [&] { layer.unmerge(); });
  });
}

/// Merges the active adapters for good and removes every adapter: afterwards
/// `model.named_parameters()` has exactly the base model's names.
inline void merge_and_unload(torch::nn::Module& model, bool safe = false) {
  detail::merge_layers(model, safe, /*keep_copy=*/false, /*unload=*/true);
}

/// Switches a merged model from its merged adapter(s) to `names` in place, without reloading the
/// base weights: each merged layer restores W0 from the copy kept at merge time (exact, every
/// dtype), activates `names` and merges them. Layers that were not merged are merged too.
inline void switch_merged_adapter(torch::nn::Module& model, const std::vector<std::string>& names) {
  unmerge(model);
  set_adapter(model, names);
  merge(model);
}

}  // namespace lora
