#include "model.hpp"

#include "checkpoint.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <set>

namespace roberta {

Config Config::from_json_file(const std::string& path) {
  const nlohmann::json j = hf::read_config_json(path, "RoBERTa");
  const std::string type = j.value("model_type", "");
  if (type != "roberta")
    throw std::runtime_error("'" + path + "' describes a " + (type.empty() ? std::string("model without model_type") : "'" + type + "' model") +
                             ", not RoBERTa (model_type \"roberta\"): is this the right --model folder?");
  Config c;
  auto get_int = [&](const char* key, int64_t& dst, bool required) {
    if (!j.contains(key)) {
      if (required) throw std::runtime_error("'" + path + "': missing field '" + key + "'");
      return;
    }
    if (!j[key].is_number_integer() || j[key].get<int64_t>() < 0)
      throw std::runtime_error("'" + path + "': field '" + key + "' must be a non-negative integer");
    dst = j[key].get<int64_t>();
  };
  get_int("vocab_size", c.vocab_size, true);
  get_int("hidden_size", c.hidden_size, true);
  get_int("num_hidden_layers", c.num_hidden_layers, true);
  get_int("num_attention_heads", c.num_attention_heads, true);
  get_int("intermediate_size", c.intermediate_size, true);
  get_int("max_position_embeddings", c.max_position_embeddings, true);
  get_int("type_vocab_size", c.type_vocab_size, false);
  get_int("pad_token_id", c.pad_token_id, false);
  if (j.contains("id2label") && j["id2label"].is_object()) c.num_labels = static_cast<int64_t>(j["id2label"].size());
  get_int("num_labels", c.num_labels, false);
  if (c.hidden_size == 0 || c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 || c.num_labels < 1)
    throw std::runtime_error("'" + path + "': hidden_size " + std::to_string(c.hidden_size) + " must be a positive multiple of " +
                             "num_attention_heads " + std::to_string(c.num_attention_heads) + ", num_labels at least 1");
  c.layer_norm_eps = j.value("layer_norm_eps", c.layer_norm_eps);
  c.hidden_dropout_prob = j.value("hidden_dropout_prob", c.hidden_dropout_prob);
  c.attention_probs_dropout_prob = j.value("attention_probs_dropout_prob", c.attention_probs_dropout_prob);
  c.hidden_act = j.value("hidden_act", c.hidden_act);
  if (c.hidden_act != "gelu")
    throw std::runtime_error("'" + path + "': hidden_act '" + c.hidden_act + "' is not supported (RoBERTa uses \"gelu\")");
  if (j.contains("classifier_dropout") && !j["classifier_dropout"].is_null())
    throw std::runtime_error("'" + path + "': classifier_dropout is set; this RoBERTa uses hidden_dropout_prob in the head, as "
                             "RoBERTa checkpoints do (classifier_dropout null)");
  return c;
}

std::string Config::to_json() const {
  nlohmann::ordered_json j;
  j["architectures"] = {"RobertaForSequenceClassification"};
  j["model_type"] = "roberta";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["intermediate_size"] = intermediate_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["type_vocab_size"] = type_vocab_size;
  j["pad_token_id"] = pad_token_id;
  j["bos_token_id"] = 0;
  j["eos_token_id"] = 2;
  j["layer_norm_eps"] = layer_norm_eps;
  j["hidden_dropout_prob"] = hidden_dropout_prob;
  j["attention_probs_dropout_prob"] = attention_probs_dropout_prob;
  j["hidden_act"] = hidden_act;
  j["classifier_dropout"] = nullptr;
  j["num_labels"] = num_labels;
  nlohmann::ordered_json id2label, label2id;
  for (int64_t i = 0; i < num_labels; ++i) {
    id2label[std::to_string(i)] = "LABEL_" + std::to_string(i);
    label2id["LABEL_" + std::to_string(i)] = i;
  }
  j["id2label"] = id2label;
  j["label2id"] = label2id;
  j["initializer_range"] = 0.02;
  return j.dump(2) + "\n";
}

EmbeddingsImpl::EmbeddingsImpl(const Config& c) : padding_idx(c.pad_token_id) {
  word_embeddings = register_module("word_embeddings", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  position_embeddings = register_module("position_embeddings", torch::nn::Embedding(c.max_position_embeddings, c.hidden_size));
  token_type_embeddings = register_module("token_type_embeddings", torch::nn::Embedding(c.type_vocab_size, c.hidden_size));
  LayerNorm = register_module("LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)));
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor EmbeddingsImpl::forward(const torch::Tensor& input_ids) {
  const torch::Tensor is_token = input_ids.ne(padding_idx).to(torch::kLong);
  const torch::Tensor positions = is_token.cumsum(1) * is_token + padding_idx;
  if (positions.max().item<int64_t>() >= position_embeddings->weight.size(0))
    throw std::invalid_argument("roberta: a sequence of " + std::to_string(positions.max().item<int64_t>() - padding_idx) +
                                " tokens is longer than the model's " + std::to_string(position_embeddings->weight.size(0) - padding_idx - 1) +
                                " positions: truncate it (max length 512)");
  torch::Tensor x = word_embeddings(input_ids) + position_embeddings(positions) + token_type_embeddings->weight[0];
  return dropout(LayerNorm(x));
}

SelfAttentionImpl::SelfAttentionImpl(const Config& c) : heads(c.num_attention_heads) {
  query = register_module("query", lora::LoRALinear(c.hidden_size, c.hidden_size));
  key = register_module("key", lora::LoRALinear(c.hidden_size, c.hidden_size));
  value = register_module("value", lora::LoRALinear(c.hidden_size, c.hidden_size));
  dropout = register_module("dropout", torch::nn::Dropout(c.attention_probs_dropout_prob));
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& additive_mask) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), d = H / heads;
  auto split = [&](const torch::Tensor& t) { return t.view({B, T, heads, d}).transpose(1, 2); };  // [B, heads, T, d]
  const torch::Tensor q = split(query(x)), k = split(key(x)), v = split(value(x));
  torch::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(d)) + additive_mask;
  const torch::Tensor probs = dropout(torch::softmax(scores, -1));
  return torch::matmul(probs, v).transpose(1, 2).reshape({B, T, H});
}

ResidualOutputImpl::ResidualOutputImpl(const Config& c, int64_t in_features) {
  dense = register_module("dense", lora::LoRALinear(in_features, c.hidden_size));
  LayerNorm = register_module("LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)));
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor ResidualOutputImpl::forward(const torch::Tensor& x, const torch::Tensor& residual) {
  return LayerNorm(dropout(dense(x)) + residual);
}

AttentionImpl::AttentionImpl(const Config& c) {
  self = register_module("self", SelfAttention(c));
  output = register_module("output", ResidualOutput(c, c.hidden_size));
}

IntermediateImpl::IntermediateImpl(const Config& c) {
  dense = register_module("dense", lora::LoRALinear(c.hidden_size, c.intermediate_size));
}

LayerImpl::LayerImpl(const Config& c) {
  attention = register_module("attention", Attention(c));
  intermediate = register_module("intermediate", Intermediate(c));
  output = register_module("output", ResidualOutput(c, c.intermediate_size));
}

torch::Tensor LayerImpl::forward(const torch::Tensor& x, const torch::Tensor& additive_mask) {
  const torch::Tensor a = attention(x, additive_mask);
  return output(intermediate(a), a);
}

EncoderImpl::EncoderImpl(const Config& c) {
  layer = register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layer->push_back(Layer(c));
}

RobertaModelImpl::RobertaModelImpl(const Config& c) : pad_token_id(c.pad_token_id) {
  embeddings = register_module("embeddings", Embeddings(c));
  encoder = register_module("encoder", Encoder(c));
}

torch::Tensor RobertaModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  const torch::Tensor mask = attention_mask.defined() ? attention_mask : input_ids.ne(pad_token_id);
  torch::Tensor x = embeddings(input_ids);
  // HF's extended mask: 0 where a key is a token, the dtype's lowest value where it is padding.
  const torch::Tensor additive =
      (1.0 - mask.to(x.dtype()).view({mask.size(0), 1, 1, mask.size(1)})) * std::numeric_limits<float>::lowest();
  for (const auto& l : *encoder->layer) x = l->as<LayerImpl>()->forward(x, additive);
  return x;
}

ClassificationHeadImpl::ClassificationHeadImpl(const Config& c) {
  dense = register_module("dense", torch::nn::Linear(c.hidden_size, c.hidden_size));
  out_proj = register_module("out_proj", torch::nn::Linear(c.hidden_size, c.num_labels));
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor ClassificationHeadImpl::forward(const torch::Tensor& hidden) {
  const torch::Tensor first = hidden.select(1, 0);  // <s>
  return out_proj(dropout(torch::tanh(dense(dropout(first)))));
}

RobertaForSequenceClassificationImpl::RobertaForSequenceClassificationImpl(const Config& c) : config(c) {
  roberta = register_module("roberta", RobertaModel(c));
  classifier = register_module("classifier", ClassificationHead(c));
}

torch::Tensor RobertaForSequenceClassificationImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  return classifier(roberta(input_ids, attention_mask));
}

std::shared_ptr<RobertaForSequenceClassificationImpl> RobertaForSequenceClassificationImpl::from_pretrained(
    const std::string& dir, std::vector<std::string>* fresh, int64_t num_labels) {
  auto cfg = Config::from_json_file(dir + "/config.json");
  if (num_labels > 0) cfg.num_labels = num_labels;
  const std::string st = hf::safetensors_path(dir);
  auto model = std::make_shared<RobertaForSequenceClassificationImpl>(cfg);
  // Tensors transformers skips when it builds a classifier from another head's checkpoint.
  static const std::regex skipped(R"(^(lm_head\..*|(roberta\.)?pooler\..*|(roberta\.)?embeddings\.position_ids)$)");
  const auto head = hf::load_classifier(
      *model, st,
      {"RoBERTa", [](const std::string& t) { return std::regex_match(t, skipped); },
       [](const std::string& t) { return t.rfind("classifier.", 0) == 0 || t.rfind("roberta.", 0) == 0 ? t : "roberta." + t; },
       [](const std::string& p) { return p.rfind("classifier.", 0) == 0; },
       "is it a RoBERTa checkpoint of this size (and num_labels)?"});
  if (fresh) *fresh = head;
  return model;
}

void RobertaForSequenceClassificationImpl::save_pretrained(const std::string& dir) const {
  auto* self = const_cast<RobertaForSequenceClassificationImpl*>(this);
  lora::NamedTensors tensors;
  for (const auto& p : named_parameters()) tensors.insert(p.key(), p.value());
  hf::save_pretrained(*self, "roberta", dir, tensors, config.to_json());
}

lora::LoRAConfig paper_lora_config() {
  return lora::LoRAConfig().r(8).alpha(16).dropout(0.0).target_modules({"attention.self.query", "attention.self.value"});
}

}  // namespace roberta
