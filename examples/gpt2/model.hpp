#pragma once
// GPT-2 (GPT2LMHeadModel semantics) in LibTorch, with HuggingFace's module names so that
// checkpoints load by name and adapter files use PEFT's paths. Reads top to bottom like
// nanoGPT's model.py: config, attention, MLP, block, model, loading and saving.

#include <lora/lora.hpp>

#include <string>
#include <vector>

namespace gpt2 {

/// The files a GPT-2 folder needs here (hf::resolve_pretrained finds or fetches them).
inline const std::vector<std::string>& checkpoint_files() {
  static const std::vector<std::string> files{"config.json", "model.safetensors", "vocab.json", "merges.txt"};
  return files;
}

/// The fields of HF's GPT2Config that change the computation.
struct Config {
  int64_t vocab_size = 50257;
  int64_t n_positions = 1024;
  int64_t n_embd = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  double layer_norm_epsilon = 1e-5;
  std::string activation_function = "gelu_new";
  double resid_pdrop = 0.1, embd_pdrop = 0.1, attn_pdrop = 0.1;

  /// Reads HF's config.json; errors name the file and the field.
  static Config from_json_file(const std::string& path);
  /// HF's config.json for this model (architectures, model_type and the fields above).
  std::string to_json() const;
};

/// Keys and values of every layer for incremental decoding: k[i], v[i] are [B, H, T, head_dim].
struct KVCache {
  std::vector<torch::Tensor> k, v;
  int64_t length() const { return k.empty() || !k[0].defined() ? 0 : k[0].size(2); }
  /// Keeps the rows `index` (beam search reorders hypotheses).
  void select(const torch::Tensor& index);
};

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const Config& c);
  /// x [B, T, C]; `allowed` [B or 1, 1, T, T_past + T] says which keys each query may see; cache
  /// tensors are appended to when given.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& allowed, torch::Tensor* k_cache, torch::Tensor* v_cache);
  int64_t n_head;
  double attn_pdrop, resid_pdrop;
  lora::LoRALinear c_attn{nullptr}, c_proj{nullptr};
};
TORCH_MODULE(Attention);

struct MLPImpl : torch::nn::Module {
  explicit MLPImpl(const Config& c);
  torch::Tensor forward(const torch::Tensor& x);
  std::string activation;
  double resid_pdrop;
  lora::LoRALinear c_fc{nullptr}, c_proj{nullptr};
};
TORCH_MODULE(MLP);

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(const Config& c);
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& allowed, torch::Tensor* k_cache, torch::Tensor* v_cache);
  torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  Attention attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(Block);

struct TransformerImpl : torch::nn::Module {
  explicit TransformerImpl(const Config& c);
  lora::LoRAEmbedding wte{nullptr};
  torch::nn::Embedding wpe{nullptr};
  torch::nn::ModuleList h{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
};
TORCH_MODULE(Transformer);

/// GPT-2 with the language-model head tied to `transformer.wte` (the logits are computed
/// from wte's weight directly, so the tensor is registered once).
struct GPT2LMHeadModelImpl : torch::nn::Module {
  explicit GPT2LMHeadModelImpl(const Config& c);

  /// Logits [B, T, vocab] for `input_ids` [B, T]. `attention_mask` [B, T_past + T] (1 = token,
  /// 0 = padding; left or right padding) masks padded keys and sets positions to
  /// cumsum(mask) - 1, so a padded sequence gets the logits it has alone. With `cache`,
  /// the keys/values of this call are appended to it (incremental decoding).
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {}, KVCache* cache = nullptr);
  /// The final hidden states [B, T, n_embd] (after ln_f): `forward` is `lm_head(hidden_states(...))`.
  torch::Tensor hidden_states(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {}, KVCache* cache = nullptr);
  /// The tied LM head: logits of hidden states [..., n_embd] -> [..., vocab]. Training can apply it to
  /// the positions that carry a loss only.
  torch::Tensor lm_head(const torch::Tensor& hidden);

  /// The model of an HF folder: config.json + model.safetensors. Conv1D weights ([in, out]) are
  /// transposed once; keys with or without "transformer.", with or without the attn.bias /
  /// attn.masked_bias buffers and lm_head.weight (which must equal wte) are accepted; any other
  /// missing or unexpected key, or a shape that differs, is an error that lists them.
  static std::shared_ptr<GPT2LMHeadModelImpl> from_pretrained(const std::string& dir, torch::Dtype dtype = torch::kFloat32);
  /// Writes config.json + model.safetensors in HF's layout (Conv1D orientation restored), loadable
  /// by transformers; after lora::merge_and_unload this deploys a fine-tuned model.
  void save_pretrained(const std::string& dir) const;

  /// Sets the dropout probabilities used in training mode: after the embeddings, on the attention
  /// weights, and on each residual branch (config.json's embd_pdrop, attn_pdrop, resid_pdrop).
  /// 0, 0, 0 is GPT-2 as microsoft/LoRA's examples/NLG trains it (its model has no dropout).
  void set_dropout(double embd, double attn, double resid);

  Config config;
  Transformer transformer{nullptr};
};
TORCH_MODULE(GPT2LMHeadModel);

/// The paper's adapter config for GPT-2 (r = 4, alpha = 32, dropout 0.1, q and v of c_attn).
lora::LoRAConfig paper_lora_config();

/// paper_lora_config() on the attention weights named as in the paper's §7.1 (Table 5): any of
/// 'q', 'k', 'v' (the three slices of the fused `attn.c_attn`) and 'o' (`attn.c_proj`), e.g.
/// "qv" (the paper's choice) or "qkvo". An error names a letter outside these or a repeated one.
lora::LoRAConfig attention_lora_config(const std::string& weights);

/// GPT-2's fused projection for lora/analysis.hpp: `attn.c_attn` is q, k, v stacked, so an
/// adapter loaded from a PEFT file is analysed per slice (W_q and W_v apart, as the paper does).
inline lora::FusedSlices fused_projections() { return {{"attn.c_attn", 3}}; }

}  // namespace gpt2
