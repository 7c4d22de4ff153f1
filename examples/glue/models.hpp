#pragma once
// The encoder families the GLUE example trains (RoBERTa, DeBERTa-v2), behind one small interface:
// LibTorch's forward is not virtual, so glue holds each model with its forward, its head and its
// paper adapter, and each tokenizer with its pair encoding. A new family adds a wrap() and a case
// in load_model / tokenizer_for / init_model; the loop, the CLI and the report stay as they are.

#include "deberta_model.hpp"
#include "deberta_tokenizer.hpp"
#include "model.hpp"
#include "roberta_tokenizer.hpp"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace glue {

/// A sequence classifier of some family, with HF's module names.
///
/// Example:
/// \code
///   glue::Model m = glue::load_model("models/deberta-v2-xxlarge", 2);
///   glue::prepare_for_lora(m, 16, 32);
///   torch::Tensor logits = m.forward(ids, mask);  // [B, 2]
/// \endcode
struct Model {
  std::string arch;                          ///< config.json's model_type: "roberta" or "deberta-v2"
  std::shared_ptr<torch::nn::Module> module;  ///< the whole model: adapters and heads by PEFT's paths
  /// input_ids [B, T], attention_mask [B, T] -> logits [B, num_labels]
  std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)> forward;
  int64_t num_labels = 2;
  std::vector<std::string> head;  ///< trained in full and saved as PEFT's modules_to_save
  lora::LoRAConfig lora;          ///< the family's paper adapter (its scripts' r, alpha, targets)
  double lora_A_std = 0;          ///< > 0: A redrawn from N(0, std) after injection, as the family's reference does

  /// The adapted modules' last names ("query_proj, value_proj"), joined by `separator`.
  std::string adapted(const std::string& separator) const;

  torch::nn::Module* operator->() const { return module.get(); }
  torch::nn::Module& operator*() const { return *module; }
  torch::Device device() const;
};

Model wrap(std::shared_ptr<roberta::RobertaForSequenceClassificationImpl> m);
Model wrap(std::shared_ptr<deberta::DebertaV2ForSequenceClassificationImpl> m);

/// The model_type of a model folder's config.json; an error names the folder and the families known.
std::string arch_of(const std::string& model_dir);

/// The model of a folder with `num_labels` (the head starts fresh when the checkpoint has none,
/// as transformers does); `cls_dropout` >= 0 sets DeBERTa's classifier dropout (--cls_dropout).
Model load_model(const std::string& dir, int64_t num_labels, double cls_dropout = -1);

/// What glue needs of a tokenizer: the pair encoding with the family's specials, and its pad id.
struct PairTokenizer {
  std::function<std::vector<int64_t>(const std::string& a, const std::string& b, int64_t max_len)> encode_example;
  int64_t pad_id = 0;
  PairTokenizer() = default;
  template <class Tokenizer>
  PairTokenizer(Tokenizer t)  // NOLINT: any tokenizer with encode_example and pad_id
      : pad_id(t.pad_id()) {
    auto shared = std::make_shared<Tokenizer>(std::move(t));
    encode_example = [shared](const std::string& a, const std::string& b, int64_t n) { return shared->encode_example(a, b, n); };
  }
};

/// The family's tokenizer: from `tokenizer_dir` when given, else from the model folder (RoBERTa:
/// vocab.json + merges.txt; DeBERTa-v2: spm.model); an error says which files are needed.
PairTokenizer tokenizer_for(const std::string& arch, const std::string& tokenizer_dir, const std::string& model_dir);

/// `glue init`: a small random model folder (config.json + model.safetensors) of `arch` with
/// `num_labels`; `vocab_size` 0 keeps the family's (RoBERTa 50265, DeBERTa-v2 128100). DeBERTa's
/// is shaped as deberta-v2-xxlarge (shared keys, 256 log buckets, the convolution), narrower.
void init_model(const std::string& dir, int64_t layers, int64_t hidden, int64_t num_labels, uint64_t seed,
                const std::string& arch = "roberta", int64_t vocab_size = 0);

}  // namespace glue
