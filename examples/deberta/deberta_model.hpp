#pragma once
// DeBERTa-v2 (DebertaV2ForSequenceClassification semantics; DeBERTa-v3 checkpoints use the same
// code) in LibTorch, with HuggingFace's module names so that checkpoints load by name and adapter
// files use PEFT's paths. Reads top to bottom like modeling_deberta_v2.py as microsoft/LoRA's
// examples/NLU ran it: config, embeddings, relative positions, disentangled attention, the
// post-LayerNorm block, the encoder (with the first layer's convolution), the pooler and head.

#include <lora/lora.hpp>

#include <string>
#include <vector>

namespace deberta {

/// The fields of HF's DebertaV2Config that change the computation (defaults: HF's).
struct Config {
  int64_t vocab_size = 128100;
  int64_t hidden_size = 1536;
  int64_t num_hidden_layers = 24;
  int64_t num_attention_heads = 24;
  int64_t attention_head_size = 0;  ///< 0: hidden_size / num_attention_heads
  int64_t intermediate_size = 6144;
  int64_t max_position_embeddings = 512;
  int64_t embedding_size = 0;  ///< 0: hidden_size; otherwise embed_proj maps it to hidden_size
  int64_t pad_token_id = 0;
  int64_t num_labels = 2;  ///< 1: a regression (STS-B)
  double layer_norm_eps = 1e-7;
  double hidden_dropout_prob = 0.1, attention_probs_dropout_prob = 0.1;
  double pooler_dropout = 0;
  double cls_dropout = -1;  ///< the classifier's dropout; < 0: hidden_dropout_prob (HF's rule)
  std::string hidden_act = "gelu", pooler_hidden_act = "gelu";
  bool position_biased_input = true;  ///< absolute position embeddings added to the input
  bool relative_attention = false;
  int64_t max_relative_positions = -1;  ///< < 1: max_position_embeddings
  int64_t position_buckets = -1;        ///< > 0: relative positions in log buckets
  std::vector<std::string> pos_att_type;  ///< of "c2p", "p2c"
  bool share_att_key = false;             ///< positions projected by query_proj / key_proj
  bool norm_rel_ebd_layer_norm = false;   ///< norm_rel_ebd "layer_norm": LayerNorm on the relative embeddings
  int64_t conv_kernel_size = 0;           ///< > 0: the first layer's output goes through ConvLayer
  std::string conv_act = "tanh";
  /// Not HF's: whether the LoRA update of query_proj also projects the relative embeddings when
  /// share_att_key. microsoft/LoRA's model calls nn.Linear.forward(query_proj, ...) there, so the
  /// position queries see W0 only (false, the paper's recipe); HF + PEFT call the LoRA layer (true).
  bool lora_in_position_query = false;

  /// microsoft/deberta-v2-xxlarge's config.json: 48 layers, 1536 wide, 24 heads, 6144, relative
  /// attention with c2p|p2c, shared keys, 256 log buckets, LayerNorm on the relative embeddings, the
  /// gelu convolution, no absolute positions (change the sizes for a smaller model of its form).
  static Config xxlarge();

  int64_t head_size() const { return attention_head_size > 0 ? attention_head_size : hidden_size / num_attention_heads; }
  int64_t embedding_width() const { return embedding_size > 0 ? embedding_size : hidden_size; }
  /// Half the relative-embedding table: position_buckets, else max_relative_positions, else max_position_embeddings.
  int64_t position_span() const;
  bool has(const std::string& pos_type) const;

  /// Reads HF's config.json (pos_att_type as "p2c|c2p" or a list; num_labels from "num_labels" or
  /// the size of "id2label"); errors name the file and the field, and what is not supported.
  static Config from_json_file(const std::string& path);
  /// HF's config.json for this model.
  std::string to_json() const;
};

/// build_relative_position of the reference: [q, k] of q_i − k_j, in log buckets when
/// `bucket_size` > 0 (make_log_bucket_position, computed in float64 as its numpy code is).
torch::Tensor relative_positions(int64_t query_size, int64_t key_size, int64_t bucket_size, int64_t max_position);

struct EmbeddingsImpl : torch::nn::Module {
  explicit EmbeddingsImpl(const Config& c);
  /// input_ids [B, T], mask [B, T] -> [B, T, hidden]: word (+ position) embeddings, embed_proj,
  /// LayerNorm, zeroed at pads, dropout.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& mask);
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr};
  torch::nn::Linear embed_proj{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(Embeddings);

/// attention.self: DisentangledSelfAttention. query_proj and value_proj are LoRA-capable (the
/// paper adapts them); key_proj too, for other configurations.
struct DisentangledSelfAttentionImpl : torch::nn::Module {
  explicit DisentangledSelfAttentionImpl(const Config& c);
  /// x [B, T, H]; mask [B, 1, T, T] bool (both tokens real); relative_pos [T, T]; rel [2·span, H].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, const torch::Tensor& relative_pos, const torch::Tensor& rel);
  /// query_proj's frozen projection (W0 x + b, merged adapters taken out): the position queries of
  /// microsoft/LoRA's model.
  torch::Tensor base_query(const torch::Tensor& x);
  Config config;
  lora::LoRALinear query_proj{nullptr}, key_proj{nullptr}, value_proj{nullptr};
  torch::nn::Linear pos_key_proj{nullptr}, pos_query_proj{nullptr};  ///< when !share_att_key
  torch::nn::Dropout pos_dropout{nullptr}, dropout{nullptr};
};
TORCH_MODULE(DisentangledSelfAttention);

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
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, const torch::Tensor& relative_pos, const torch::Tensor& rel) {
    return output(self(x, mask, relative_pos, rel), x);
  }
  DisentangledSelfAttention self{nullptr};
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
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, const torch::Tensor& relative_pos, const torch::Tensor& rel);
  Attention attention{nullptr};
  Intermediate intermediate{nullptr};
  ResidualOutput output{nullptr};
};
TORCH_MODULE(Layer);

/// ConvLayer: a 1-D convolution over the embeddings, zeroed at pads, activation, LayerNorm over it
/// plus the first layer's output, zeroed at pads again.
struct ConvLayerImpl : torch::nn::Module {
  explicit ConvLayerImpl(const Config& c);
  torch::Tensor forward(const torch::Tensor& embeddings, const torch::Tensor& residual, const torch::Tensor& mask);
  std::string act;
  torch::nn::Conv1d conv{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(ConvLayer);

struct EncoderImpl : torch::nn::Module {
  explicit EncoderImpl(const Config& c);
  /// The last hidden states; `mask` [B, T] (1 = token).
  torch::Tensor forward(const torch::Tensor& embeddings, const torch::Tensor& mask);
  /// The relative embeddings every layer reads ([2·span, H], after the LayerNorm when configured).
  torch::Tensor rel_embedding();
  Config config;
  torch::nn::ModuleList layer{nullptr};
  torch::nn::Embedding rel_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  ConvLayer conv{nullptr};
};
TORCH_MODULE(Encoder);

struct DebertaV2ModelImpl : torch::nn::Module {
  explicit DebertaV2ModelImpl(const Config& c);
  /// The last hidden states [B, T, hidden]; `attention_mask` [B, T] (1 = token, 0 = padding),
  /// from input_ids != pad_token_id when undefined.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {});
  Embeddings embeddings{nullptr};
  Encoder encoder{nullptr};
  int64_t pad_token_id;
};
TORCH_MODULE(DebertaV2Model);

/// ContextPooler: the [CLS] state, dropout, dense, activation (gelu).
struct ContextPoolerImpl : torch::nn::Module {
  explicit ContextPoolerImpl(const Config& c);
  torch::Tensor forward(const torch::Tensor& hidden);
  std::string act;
  torch::nn::Linear dense{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(ContextPooler);

/// DeBERTa-v2 with a sequence-classification (or, num_labels = 1, regression) head.
///
/// Example:
/// \code
///   auto model = deberta::DebertaV2ForSequenceClassificationImpl::from_pretrained("models/deberta-v2-xxlarge");
///   lora::inject_lora(*model, deberta::paper_lora_config());  // r = 16, alpha = 32 on query_proj, value_proj
///   torch::Tensor logits = model->forward(ids, mask);        // [B, num_labels]
/// \endcode
struct DebertaV2ForSequenceClassificationImpl : torch::nn::Module {
  explicit DebertaV2ForSequenceClassificationImpl(const Config& c);
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {});

  /// The model of an HF folder (config.json + model.safetensors). A checkpoint without a pooler
  /// and classifier (deberta-v2-xxlarge is a masked-LM checkpoint) leaves them as initialised and
  /// lists them in `fresh`; its lm_predictions.*, mask_predictions.*, position_ids (and
  /// position_embeddings when the model does not use them) are skipped, as transformers does. Any
  /// other missing or unexpected key, or a shape that differs, is an error listing them.
  /// `num_labels` > 0 replaces the config's; `cls_dropout` >= 0 too (the scripts' --cls_dropout).
  static std::shared_ptr<DebertaV2ForSequenceClassificationImpl> from_pretrained(const std::string& dir,
                                                                                 std::vector<std::string>* fresh = nullptr,
                                                                                 int64_t num_labels = 0, double cls_dropout = -1);
  /// Writes config.json + model.safetensors in HF's layout (after lora::merge_and_unload).
  void save_pretrained(const std::string& dir) const;

  Config config;
  DebertaV2Model deberta{nullptr};
  ContextPooler pooler{nullptr};
  torch::nn::Linear classifier{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(DebertaV2ForSequenceClassification);

/// The scripts' GLUE adapter (microsoft/LoRA examples/NLU/deberta_v2_xxlarge_*.sh): r = 16,
/// alpha = 32 (the paper's Table 10 says r = 8, alpha = 8), no LoRA dropout, on query_proj and value_proj.
lora::LoRAConfig paper_lora_config();

}  // namespace deberta
