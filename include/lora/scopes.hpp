#pragma once
/// \file scopes.hpp
/// Scoped changes of which adapters a model applies, undone when the scope ends:
/// `DisableAdapters` (PEFT's `disable_adapter()`: the base model, e.g. for a reference pass) and
/// `AdapterPerRow` (PEFT's `adapter_names` in forward: one adapter per row of a batch, computed
/// as serving systems batch LoRA requests).

#include <lora/state.hpp>
#include <lora/walk.hpp>

#include <memory>
#include <set>
#include <string>
#include <vector>

namespace lora {


/// While alive, no LoRA layer of `model` applies an adapter: the forward is the base model's.
/// The active adapters of every layer are restored when it ends. Merged layers are refused.
///
/// Example:
/// \code
///   torch::Tensor reference;
///   {
///     lora::DisableAdapters base(*model);
///     reference = model->forward(ids);   // the frozen base model
///   }
///   auto tuned = model->forward(ids);    // with the adapter again
/// \endcode
class DisableAdapters {
 public:
  explicit DisableAdapters(torch::nn::Module& model) {
    for (const auto& [name, layer] : detail::unmerged_layers(model, "DisableAdapters")) {
      saved_.emplace_back(layer, layer->active_adapters());
      layer->set_active_adapters({});
    }
  }
  ~DisableAdapters() {
    for (auto& [layer, active] : saved_) layer->set_active_adapters(active);
  }
  DisableAdapters(const DisableAdapters&) = delete;
  DisableAdapters& operator=(const DisableAdapters&) = delete;

 private:
  std::vector<std::pair<LoRALayer*, std::vector<std::string>>> saved_;
};

/// While alive, row i of every input's first dimension uses adapter `per_row[i]` ("" for none) in
/// every LoRA layer of `model`, whatever the active set; a layer without an adapter of that name
/// applies none to the row (as PEFT does). The base GEMM runs once for the batch; each layer then
/// adds the rows' updates in place, either through its adapters stacked once for the scope (a few
/// operations whatever the number of adapters) or adapter by adapter on the rows that use it
/// (each row pays its own rank only), whichever its cost estimate for the batch's shape says is
/// cheaper (mixed.hpp; `strategy` forces one). Adapters of different ranks, slice masks and
/// embedding adapters mix in one batch.
/// Inference only (the model must be in eval mode; no gradient reaches the adapters), on unmerged
/// layers; an adapter name no layer has is an error. Inputs have per_row.size() rows, or k times
/// as many: then each choice covers k consecutive rows, so beam search (k beams per prompt,
/// prompt-major, as gpt2::generate lays them out, the KV cache included) runs each prompt with
/// its adapter.
///
/// Example:
/// \code
///   model->eval();
///   lora::AdapterPerRow route(*model, {"summarize", "translate", "", "summarize"});
///   auto logits = model->forward(ids);   // ids: [4, T], each row through its own adapter
/// \endcode
class AdapterPerRow {
 public:
  AdapterPerRow(torch::nn::Module& model, const std::vector<std::string>& per_row,
                MixedStrategy strategy = MixedStrategy::Auto) {
    if (model.is_training())
      throw std::logic_error("AdapterPerRow: the model is in training mode; batches that mix adapters are for inference: eval() first");
    auto layers = detail::unmerged_layers(model, "AdapterPerRow");
    auto rows = std::make_shared<LoRALayer::RowAdapters>();
    rows->strategy = strategy;
    for (const auto& name : per_row) {
      if (name.empty()) {
        rows->index.push_back(-1);
        continue;
      }
      auto it = std::find(rows->names.begin(), rows->names.end(), name);
      if (it == rows->names.end()) {
        bool known = false;
        std::set<std::string> all;
        for (const auto& [path, layer] : layers) {
          known = known || layer->has_adapter(name);
          all.insert(layer->adapter_names().begin(), layer->adapter_names().end());
        }
        if (!known)
          throw std::invalid_argument("AdapterPerRow: no LoRA layer has an adapter named '" + name + "' (adapters: " +
                                      detail::list_names(std::vector<std::string>(all.begin(), all.end())) + ")");
        for (const auto& [path, layer] : layers)
          if (const AdapterVariant* v = layer->has_adapter(name) ? layer->variant(name) : nullptr)
            throw std::invalid_argument("AdapterPerRow: adapter '" + name + "' is a " + v->variant_name() + " adapter (module '" +
                                        path + "'): a mixed batch adds each row's s·B·A to a shared base output, which " +
                                        v->variant_name() + "'s rescaled weight is not; run its rows in a batch of their own");
        rows->names.push_back(name);
        it = rows->names.end() - 1;
      }
      rows->index.push_back(it - rows->names.begin());
    }
    rows_ = rows;
    for (const auto& [path, layer] : layers) {
      layer->set_row_adapters(rows);
      layers_.push_back(layer);
    }
  }
  ~AdapterPerRow() {
    for (auto* layer : layers_) layer->set_row_adapters(nullptr);
  }
  AdapterPerRow(const AdapterPerRow&) = delete;
  AdapterPerRow& operator=(const AdapterPerRow&) = delete;

  /// How the layers compute the batches from now on (mixed.hpp); the results are the same up to
  /// rounding. For measuring the algorithms against each other.
  void set_strategy(MixedStrategy strategy) { rows_->strategy = strategy; }

 private:
  std::shared_ptr<LoRALayer::RowAdapters> rows_;
  std::vector<LoRALayer*> layers_;
};

}  // namespace lora
