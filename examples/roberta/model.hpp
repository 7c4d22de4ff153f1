#pragma once
// RoBERTa (RobertaForSequenceClassification semantics) in LibTorch, with HuggingFace's module
// names so that checkpoints load by name and adapter files use PEFT's paths. Reads top to bottom
// like transformers' modeling_roberta.py: config, embeddings, self-attention, the post-LayerNorm
// block, the encoder, the classification head, loading.

#include <lora/lora.hpp>

#include <string>
#include <vector>

namespace roberta {

/// The fields of HF's RobertaConfig that change the computation.
struct Config {
  int64_t vocab_size = 50265;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  int64_t max_position_embeddings = 514;
  int64_t type_vocab_size = 1;
  int64_t pad_token_id = 1;
  int64_t num_labels = 2;  ///< 1: a regression (STS-B)
  double layer_norm_eps = 1e-5;
  double hidden_dropout_prob = 0.1, attention_probs_dropout_prob = 0.1;
  std::string hidden_act = "gelu";  ///< exact (erf) GELU, the only one RoBERTa checkpoints use

  /// Reads HF's config.json (num_labels from "num_labels" or the size of "id2label"); errors
  /// name the file and the field.
  static Config from_json_file(const std::string& path);
  /// HF's config.json for this model (architectures, model_type and the fields above).
  std::string to_json() const;
};

struct EmbeddingsImpl : torch::nn::Module {
  explicit EmbeddingsImpl(const Config& c);
  /// input_ids [B, T] -> [B, T, hidden]: word + position + token type 0, LayerNorm, dropout.
  /// Positions count the non-pad tokens from pad_token_id + 1; pads get pad_token_id (HF's
  /// create_position_ids_from_input_ids), so right padding does not change the other rows.
  torch::Tensor forward(const torch::Tensor& input_ids);
  int64_t padding_idx;
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(Embeddings);

/// attention.self: query, key, value (LoRA-capable: the paper adapts query and value).
struct SelfAttentionImpl : torch::nn::Module {
  explicit SelfAttentionImpl(const Config& c);
  /// x [B, T, H]; `additive_mask` [B, 1, 1, T]: 0 for tokens, a large negative value for pads.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& additive_mask);
  int64_t heads;
  lora::LoRALinear query{nullptr}, key{nullptr}, value{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(SelfAttention);

/// A dense projection, dropout, and LayerNorm over it plus the residual (attention.output and output).
struct ResidualOutputImpl : torch::nn::Module {
  ResidualOutputImpl(const Config& c, int64_t in_features);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& residual);
  lora::LoRALinear dense{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(ResidualOutput);

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const Config& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& additive_mask) { return output(self(x, additive_mask), x); }
  SelfAttention self{nullptr};
  ResidualOutput output{nullptr};
};
TORCH_MODULE(Attention);

struct IntermediateImpl : torch::nn::Module {
  explicit IntermediateImpl(const Config& c);
  torch::Tensor forward(const torch::Tensor& x) { return torch::gelu(dense(x)); }
  lora::LoRALinear dense{nullptr};
};
TORCH_MODULE(Intermediate);

/// One encoder layer (post-LayerNorm): attention, then the feed-forward block.
struct LayerImpl : torch::nn::Module {
  explicit LayerImpl(const Config& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& additive_mask);
  Attention attention{nullptr};
  Intermediate intermediate{nullptr};
  ResidualOutput output{nullptr};
};
TORCH_MODULE(Layer);

struct EncoderImpl : torch::nn::Module {
  explicit EncoderImpl(const Config& c);
  torch::nn::ModuleList layer{nullptr};
};
TORCH_MODULE(Encoder);

/// RobertaModel without the pooler (RobertaForSequenceClassification builds it so).
struct RobertaModelImpl : torch::nn::Module {
  explicit RobertaModelImpl(const Config& c);
  /// The last hidden states [B, T, hidden]; `attention_mask` [B, T] (1 = token, 0 = padding),
  /// from input_ids != pad_token_id when undefined.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {});
  Embeddings embeddings{nullptr};
  Encoder encoder{nullptr};
  int64_t pad_token_id;
};
TORCH_MODULE(RobertaModel);

/// RobertaClassificationHead: the <s> token's state, dropout, dense, tanh, dropout, out_proj.
struct ClassificationHeadImpl : torch::nn::Module {
  explicit ClassificationHeadImpl(const Config& c);
  torch::Tensor forward(const torch::Tensor& hidden);
  torch::nn::Linear dense{nullptr}, out_proj{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(ClassificationHead);

/// RoBERTa with a sequence-classification (or, num_labels = 1, regression) head.
///
/// Example:
/// \code
///   auto model = roberta::RobertaForSequenceClassificationImpl::from_pretrained("models/roberta-base");
///   lora::inject_lora(*model, roberta::paper_lora_config());  // r = 8, alpha = 16 on query, value
///   torch::Tensor logits = model->forward(ids, mask);        // [B, num_labels]
/// \endcode
struct RobertaForSequenceClassificationImpl : torch::nn::Module {
  explicit RobertaForSequenceClassificationImpl(const Config& c);
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {});

  /// The model of an HF folder (config.json + model.safetensors). A checkpoint without a
  /// classifier (roberta-base is a masked-LM checkpoint) leaves the head as initialised and lists
  /// it in `fresh`; its lm_head.* and pooler.* tensors are skipped, as transformers does. Any
  /// other missing or unexpected key, or a shape that differs, is an error that lists them.
  /// `num_labels` > 0 replaces the config's (a task's head on a base checkpoint).
  static std::shared_ptr<RobertaForSequenceClassificationImpl> from_pretrained(const std::string& dir,
                                                                               std::vector<std::string>* fresh = nullptr,
                                                                               int64_t num_labels = 0);
  /// Writes config.json + model.safetensors in HF's layout (after lora::merge_and_unload).
  void save_pretrained(const std::string& dir) const;

  Config config;
  RobertaModel roberta{nullptr};
  ClassificationHead classifier{nullptr};
};
TORCH_MODULE(RobertaForSequenceClassification);

/// The paper's GLUE adapter (microsoft/LoRA examples/NLU): r = 8, alpha = 16 (its scripts; the
/// paper's Table 9 says 8), no LoRA dropout, on attention's query and value.
lora::LoRAConfig paper_lora_config();

}  // namespace roberta
