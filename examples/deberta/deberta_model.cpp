#include "deberta_model.hpp"

#include "checkpoint.hpp"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <regex>
#include <set>
#include <sstream>

namespace deberta {

namespace {

bool supported_act(const std::string& a) { return a == "gelu" || a == "tanh" || a == "relu"; }

torch::Tensor activation(const std::string& name, const torch::Tensor& x) {
  if (name == "gelu") return torch::gelu(x);  // exact (erf), HF's "gelu"
  if (name == "tanh") return torch::tanh(x);
  return torch::relu(x);
}

/// The most negative finite value of `dtype`: masked scores stay finite, so a row with no real
/// key softmaxes to a uniform row (then zeroed) and its gradient stays finite, as XSoftmax's does.
double lowest_of(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kDouble: return std::numeric_limits<double>::lowest();
    case torch::kHalf: return static_cast<double>(std::numeric_limits<c10::Half>::lowest());
    case torch::kBFloat16: return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
    default: return static_cast<double>(std::numeric_limits<float>::lowest());
  }
}

torch::nn::LayerNorm layer_norm(const Config& c, int64_t width) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({width}).eps(c.layer_norm_eps));
}

}  // namespace

Config Config::xxlarge() {
  Config c;
  c.num_hidden_layers = 48;
  c.hidden_size = 1536;
  c.num_attention_heads = 24;
  c.intermediate_size = 6144;
  c.relative_attention = true;
  c.position_buckets = 256;
  c.pos_att_type = {"p2c", "c2p"};
  c.share_att_key = true;
  c.norm_rel_ebd_layer_norm = true;
  c.conv_kernel_size = 3;
  c.conv_act = "gelu";
  c.position_biased_input = false;
  return c;
}

int64_t Config::position_span() const {
  if (position_buckets > 0) return position_buckets;
  return max_relative_positions >= 1 ? max_relative_positions : max_position_embeddings;
}

bool Config::has(const std::string& pos_type) const {
  return std::find(pos_att_type.begin(), pos_att_type.end(), pos_type) != pos_att_type.end();
}

Config Config::from_json_file(const std::string& path) {
  const nlohmann::json j = hf::read_config_json(path, "DeBERTa-v2");
  const std::string type = j.value("model_type", "");
  if (type != "deberta-v2")
    throw std::runtime_error("'" + path + "' describes a " + (type.empty() ? std::string("model without model_type") : "'" + type + "' model") +
                             ", not DeBERTa-v2 (model_type \"deberta-v2\", also DeBERTa-v3's): is this the right --model folder?");
  Config c;
  auto fail = [&](const std::string& what) { return std::runtime_error("'" + path + "': " + what); };
  auto get_int = [&](const char* key, int64_t& dst, bool required, bool may_be_negative = false) {
    if (!j.contains(key) || j[key].is_null()) {
      if (required) throw fail(std::string("missing field '") + key + "'");
      return;
    }
    if (!j[key].is_number_integer() || (!may_be_negative && j[key].get<int64_t>() < 0))
      throw fail(std::string("field '") + key + "' must be a" + (may_be_negative ? "n" : " non-negative") + " integer");
    dst = j[key].get<int64_t>();
  };
  auto get_double = [&](const char* key, double& dst) {
    if (!j.contains(key) || j[key].is_null()) return;
    if (!j[key].is_number()) throw fail(std::string("field '") + key + "' must be a number");
    dst = j[key].get<double>();
  };
  auto get_string = [&](const char* key, std::string& dst) {
    if (!j.contains(key) || j[key].is_null()) return;
    if (!j[key].is_string()) throw fail(std::string("field '") + key + "' must be a string");
    dst = j[key].get<std::string>();
  };
  get_int("vocab_size", c.vocab_size, true);
  get_int("hidden_size", c.hidden_size, true);
  get_int("num_hidden_layers", c.num_hidden_layers, true);
  get_int("num_attention_heads", c.num_attention_heads, true);
  get_int("intermediate_size", c.intermediate_size, true);
  get_int("max_position_embeddings", c.max_position_embeddings, false);
  get_int("attention_head_size", c.attention_head_size, false);
  get_int("embedding_size", c.embedding_size, false);
  get_int("pad_token_id", c.pad_token_id, false);
  get_int("max_relative_positions", c.max_relative_positions, false, true);
  get_int("position_buckets", c.position_buckets, false, true);
  get_int("conv_kernel_size", c.conv_kernel_size, false);
  if (j.contains("id2label") && j["id2label"].is_object()) c.num_labels = static_cast<int64_t>(j["id2label"].size());
  get_int("num_labels", c.num_labels, false);
  int64_t type_vocab = 0, conv_groups = 1;
  get_int("type_vocab_size", type_vocab, false);
  get_int("conv_groups", conv_groups, false);
  if (type_vocab > 0)
    throw fail("type_vocab_size " + std::to_string(type_vocab) + ": token type embeddings are not supported (DeBERTa-v2 and -v3 "
               "checkpoints have type_vocab_size 0)");
  if (conv_groups != 1) throw fail("conv_groups " + std::to_string(conv_groups) + " is not supported (DeBERTa-v2 checkpoints use 1)");
  if (c.hidden_size == 0 || c.num_attention_heads == 0 || (c.attention_head_size == 0 && c.hidden_size % c.num_attention_heads != 0) ||
      c.num_labels < 1)
    throw fail("hidden_size " + std::to_string(c.hidden_size) + " must be a positive multiple of num_attention_heads " +
               std::to_string(c.num_attention_heads) + " (or attention_head_size given), num_labels at least 1");
  get_double("layer_norm_eps", c.layer_norm_eps);
  get_double("hidden_dropout_prob", c.hidden_dropout_prob);
  get_double("attention_probs_dropout_prob", c.attention_probs_dropout_prob);
  get_double("pooler_dropout", c.pooler_dropout);
  get_double("cls_dropout", c.cls_dropout);
  get_string("hidden_act", c.hidden_act);
  get_string("pooler_hidden_act", c.pooler_hidden_act);
  get_string("conv_act", c.conv_act);
  for (const auto* act : {&c.hidden_act, &c.pooler_hidden_act, &c.conv_act})
    if (!supported_act(*act)) throw fail("activation '" + *act + "' is not supported (gelu, tanh, relu)");
  if (c.hidden_act != "gelu") throw fail("hidden_act '" + c.hidden_act + "' is not supported (DeBERTa uses \"gelu\")");
  if (j.contains("pooler_hidden_size") && !j["pooler_hidden_size"].is_null() && j["pooler_hidden_size"] != c.hidden_size)
    throw fail("pooler_hidden_size differs from hidden_size: not supported");
  c.position_biased_input = j.value("position_biased_input", c.position_biased_input);
  c.relative_attention = j.value("relative_attention", c.relative_attention);
  c.share_att_key = j.value("share_att_key", c.share_att_key);
  if (j.contains("pos_att_type") && !j["pos_att_type"].is_null()) {
    std::vector<std::string> types;
    if (j["pos_att_type"].is_string()) {  // "p2c|c2p", as DebertaV2Config splits it
      std::stringstream s(j["pos_att_type"].get<std::string>());
      for (std::string t; std::getline(s, t, '|');) types.push_back(t);
    } else if (j["pos_att_type"].is_array()) {
      for (const auto& t : j["pos_att_type"]) types.push_back(t.is_string() ? t.get<std::string>() : t.dump());
    } else {
      throw fail("pos_att_type must be a string (\"p2c|c2p\") or a list");
    }
    for (auto& t : types) {
      t.erase(0, t.find_first_not_of(' '));
      t.erase(t.find_last_not_of(' ') + 1);
      std::transform(t.begin(), t.end(), t.begin(), ::tolower);
      if (t != "c2p" && t != "p2c")
        throw fail("pos_att_type '" + t + "' is not supported (c2p, p2c: what DeBERTa-v2 and -v3 checkpoints use)");
      c.pos_att_type.push_back(t);
    }
  }
  if (j.contains("norm_rel_ebd") && j["norm_rel_ebd"].is_string()) {
    std::stringstream s(j["norm_rel_ebd"].get<std::string>());
    for (std::string t; std::getline(s, t, '|');) {
      t.erase(0, t.find_first_not_of(' '));
      t.erase(t.find_last_not_of(' ') + 1);
      std::transform(t.begin(), t.end(), t.begin(), ::tolower);
      if (t == "layer_norm") c.norm_rel_ebd_layer_norm = true;
      else if (t != "none" && !t.empty()) throw fail("norm_rel_ebd '" + t + "' is not supported (layer_norm, none)");
    }
  }
  return c;
}

std::string Config::to_json() const {
  nlohmann::ordered_json j;
  j["architectures"] = {"DebertaV2ForSequenceClassification"};
  j["model_type"] = "deberta-v2";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  if (attention_head_size > 0) j["attention_head_size"] = attention_head_size;
  j["intermediate_size"] = intermediate_size;
  j["max_position_embeddings"] = max_position_embeddings;
  if (embedding_size > 0) j["embedding_size"] = embedding_size;
  j["type_vocab_size"] = 0;
  j["pad_token_id"] = pad_token_id;
  j["layer_norm_eps"] = layer_norm_eps;
  j["hidden_dropout_prob"] = hidden_dropout_prob;
  j["attention_probs_dropout_prob"] = attention_probs_dropout_prob;
  j["pooler_dropout"] = pooler_dropout;
  if (cls_dropout >= 0) j["cls_dropout"] = cls_dropout;
  j["hidden_act"] = hidden_act;
  j["pooler_hidden_act"] = pooler_hidden_act;
  j["pooler_hidden_size"] = hidden_size;
  j["position_biased_input"] = position_biased_input;
  j["relative_attention"] = relative_attention;
  j["max_relative_positions"] = max_relative_positions;
  j["position_buckets"] = position_buckets;
  std::string types;
  for (const auto& t : pos_att_type) types += (types.empty() ? "" : "|") + t;
  j["pos_att_type"] = types;
  j["share_att_key"] = share_att_key;
  j["norm_rel_ebd"] = norm_rel_ebd_layer_norm ? "layer_norm" : "none";
  if (conv_kernel_size > 0) {
    j["conv_kernel_size"] = conv_kernel_size;
    j["conv_act"] = conv_act;
  }
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

torch::Tensor relative_positions(int64_t query_size, int64_t key_size, int64_t bucket_size, int64_t max_position) {
  const auto q = torch::arange(query_size, torch::kDouble).unsqueeze(1), k = torch::arange(key_size, torch::kDouble).unsqueeze(0);
  torch::Tensor rel = q - k;
  if (bucket_size > 0 && max_position > 0) {  // make_log_bucket_position, in float64 as numpy computes it
    const double mid = static_cast<double>(bucket_size / 2);
    const auto sign = rel.sign();
    const auto abs_pos = torch::where(rel.lt(mid).logical_and(rel.gt(-mid)), torch::full_like(rel, mid - 1), rel.abs());
    const auto log_pos =
        torch::ceil(torch::log(abs_pos / mid) / std::log(static_cast<double>(max_position - 1) / mid) * (mid - 1)) + mid;
    rel = torch::where(abs_pos.le(mid), rel, log_pos * sign);
  }
  return rel.to(torch::kLong);
}

EmbeddingsImpl::EmbeddingsImpl(const Config& c) {
  word_embeddings = register_module("word_embeddings", torch::nn::Embedding(c.vocab_size, c.embedding_width()));
  if (c.position_biased_input)
    position_embeddings = register_module("position_embeddings", torch::nn::Embedding(c.max_position_embeddings, c.embedding_width()));
  if (c.embedding_width() != c.hidden_size)
    embed_proj = register_module("embed_proj", torch::nn::Linear(torch::nn::LinearOptions(c.embedding_width(), c.hidden_size).bias(false)));
  LayerNorm = register_module("LayerNorm", layer_norm(c, c.hidden_size));
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor EmbeddingsImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& mask) {
  torch::Tensor x = word_embeddings(input_ids);
  if (position_embeddings) {
    const int64_t T = input_ids.size(1), n = position_embeddings->weight.size(0);
    if (T > n)
      throw std::invalid_argument("deberta: a sequence of " + std::to_string(T) + " tokens is longer than the model's " + std::to_string(n) +
                                  " positions: truncate it (--max-len)");
    x = x + position_embeddings->weight.slice(0, 0, T);
  }
  if (embed_proj) x = embed_proj(x);
  x = LayerNorm(x) * mask.unsqueeze(2).to(x.dtype());
  return dropout(x);
}

DisentangledSelfAttentionImpl::DisentangledSelfAttentionImpl(const Config& c) : config(c) {
  const int64_t all = c.num_attention_heads * c.head_size();
  query_proj = register_module("query_proj", lora::LoRALinear(c.hidden_size, all));
  key_proj = register_module("key_proj", lora::LoRALinear(c.hidden_size, all));
  value_proj = register_module("value_proj", lora::LoRALinear(c.hidden_size, all));
  if (c.relative_attention && !c.share_att_key) {
    if (c.has("c2p")) pos_key_proj = register_module("pos_key_proj", torch::nn::Linear(c.hidden_size, all));
    if (c.has("p2c")) pos_query_proj = register_module("pos_query_proj", torch::nn::Linear(c.hidden_size, all));
  }
  if (c.relative_attention) pos_dropout = register_module("pos_dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  dropout = register_module("dropout", torch::nn::Dropout(c.attention_probs_dropout_prob));
}

torch::Tensor DisentangledSelfAttentionImpl::base_query(const torch::Tensor& x) {
  torch::Tensor w = query_proj->weight;
  for (const auto& name : query_proj->adapter_names())
    if (query_proj->is_merged(name)) w = w - query_proj->delta_weight(name).to(w.scalar_type());
  return torch::nn::functional::linear(x, w, query_proj->bias);
}

torch::Tensor DisentangledSelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& mask, const torch::Tensor& relative_pos,
                                                     const torch::Tensor& rel) {
  const int64_t B = x.size(0), T = x.size(1), H = config.num_attention_heads, d = config.head_size();
  auto split = [&](const torch::Tensor& t) { return t.view({B, T, H, d}).transpose(1, 2); };  // [B, H, T, d]
  const torch::Tensor q = split(query_proj(x)), k = split(key_proj(x)), v = split(value_proj(x));
  const double scale = std::sqrt(static_cast<double>(d * (1 + config.has("c2p") + config.has("p2c"))));
  torch::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) / scale;
  if (config.relative_attention) {
    const int64_t span = config.position_span();
    const torch::Tensor r = pos_dropout(rel.slice(0, 0, 2 * span));
    auto heads = [&](const torch::Tensor& t) { return t.view({2 * span, H, d}).transpose(0, 1); };  // [H, 2·span, d]
    torch::Tensor pos_key, pos_query;
    if (config.share_att_key) {
      pos_key = heads(key_proj(r));
      if (config.has("p2c")) pos_query = heads(config.lora_in_position_query ? query_proj(r) : base_query(r));
    } else {
      if (config.has("c2p")) pos_key = heads(pos_key_proj(r));
      if (config.has("p2c")) pos_query = heads(pos_query_proj(r));
    }
    const auto expand = [&](const torch::Tensor& idx) { return idx.view({1, 1, T, T}).expand({B, H, T, T}); };
    if (config.has("c2p")) {  // content of token i to the position of i − j
      const auto c2p = torch::matmul(q, pos_key.transpose(-1, -2));  // [B, H, T, 2·span]
      scores = scores + torch::gather(c2p, -1, expand(torch::clamp(relative_pos + span, 0, 2 * span - 1))) / scale;
    }
    if (config.has("p2c")) {  // position of j − i to the content of token j: computed per key row, then transposed
      const auto p2c = torch::matmul(k, pos_query.transpose(-1, -2));
      scores = scores + torch::gather(p2c, -1, expand(torch::clamp(-relative_pos + span, 0, 2 * span - 1))).transpose(-1, -2) / scale;
    }
  }
  scores = scores.masked_fill(mask.logical_not(), lowest_of(scores.scalar_type()));
  const torch::Tensor probs = dropout(torch::softmax(scores, -1) * mask.to(scores.dtype()));  // XSoftmax: 0 on masked pairs
  return torch::matmul(probs, v).transpose(1, 2).reshape({B, T, H * d});
}

ResidualOutputImpl::ResidualOutputImpl(const Config& c, int64_t in_features) {
  dense = register_module("dense", lora::LoRALinear(in_features, c.hidden_size));
  LayerNorm = register_module("LayerNorm", layer_norm(c, c.hidden_size));
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor ResidualOutputImpl::forward(const torch::Tensor& x, const torch::Tensor& residual) {
  return LayerNorm(dropout(dense(x)) + residual);
}

AttentionImpl::AttentionImpl(const Config& c) {
  self = register_module("self", DisentangledSelfAttention(c));
  output = register_module("output", ResidualOutput(c, c.num_attention_heads * c.head_size()));
}

IntermediateImpl::IntermediateImpl(const Config& c) {
  dense = register_module("dense", lora::LoRALinear(c.hidden_size, c.intermediate_size));
}

LayerImpl::LayerImpl(const Config& c) {
  attention = register_module("attention", Attention(c));
  intermediate = register_module("intermediate", Intermediate(c));
  output = register_module("output", ResidualOutput(c, c.intermediate_size));
}

torch::Tensor LayerImpl::forward(const torch::Tensor& x, const torch::Tensor& mask, const torch::Tensor& relative_pos,
                                 const torch::Tensor& rel) {
  const torch::Tensor a = attention(x, mask, relative_pos, rel);
  return output(intermediate(a), a);
}

ConvLayerImpl::ConvLayerImpl(const Config& c) : act(c.conv_act) {
  const int64_t k = c.conv_kernel_size;
  conv = register_module("conv", torch::nn::Conv1d(torch::nn::Conv1dOptions(c.hidden_size, c.hidden_size, k).padding((k - 1) / 2)));
  LayerNorm = register_module("LayerNorm", layer_norm(c, c.hidden_size));
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor ConvLayerImpl::forward(const torch::Tensor& embeddings, const torch::Tensor& residual, const torch::Tensor& mask) {
  const torch::Tensor keep = mask.unsqueeze(2).to(residual.dtype());  // [B, T, 1]
  torch::Tensor out = conv(embeddings.transpose(1, 2)).transpose(1, 2) * keep;
  out = activation(act, dropout(out));
  return LayerNorm(residual + out) * keep;
}

EncoderImpl::EncoderImpl(const Config& c) : config(c) {
  layer = register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layer->push_back(Layer(c));
  if (c.relative_attention) rel_embeddings = register_module("rel_embeddings", torch::nn::Embedding(2 * c.position_span(), c.hidden_size));
  if (c.norm_rel_ebd_layer_norm) LayerNorm = register_module("LayerNorm", layer_norm(c, c.hidden_size));
  if (c.conv_kernel_size > 0) conv = register_module("conv", ConvLayer(c));
}

torch::Tensor EncoderImpl::rel_embedding() {
  if (!rel_embeddings) return {};
  return LayerNorm ? LayerNorm(rel_embeddings->weight) : rel_embeddings->weight;
}

torch::Tensor EncoderImpl::forward(const torch::Tensor& embeddings, const torch::Tensor& mask) {
  const int64_t T = embeddings.size(1);
  const torch::Tensor pairs = (mask.unsqueeze(1).unsqueeze(3) * mask.unsqueeze(1).unsqueeze(2)).to(torch::kBool);  // [B, 1, T, T]
  torch::Tensor rel, relative_pos;
  if (config.relative_attention) {
    rel = rel_embedding();
    relative_pos = relative_positions(T, T, config.position_buckets,
                                      config.max_relative_positions >= 1 ? config.max_relative_positions : config.max_position_embeddings)
                       .to(embeddings.device());
  }
  torch::Tensor x = embeddings;
  for (size_t i = 0; i < layer->size(); ++i) {
    x = layer[i]->as<LayerImpl>()->forward(x, pairs, relative_pos, rel);
    if (i == 0 && conv) x = conv(embeddings, x, mask);
  }
  return x;
}

DebertaV2ModelImpl::DebertaV2ModelImpl(const Config& c) : pad_token_id(c.pad_token_id) {
  embeddings = register_module("embeddings", Embeddings(c));
  encoder = register_module("encoder", Encoder(c));
}

torch::Tensor DebertaV2ModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  const torch::Tensor mask = (attention_mask.defined() ? attention_mask : input_ids.ne(pad_token_id)).to(torch::kLong);
  return encoder(embeddings(input_ids, mask), mask);
}

ContextPoolerImpl::ContextPoolerImpl(const Config& c) : act(c.pooler_hidden_act) {
  dense = register_module("dense", torch::nn::Linear(c.hidden_size, c.hidden_size));
  dropout = register_module("dropout", torch::nn::Dropout(c.pooler_dropout));
}

torch::Tensor ContextPoolerImpl::forward(const torch::Tensor& hidden) {
  return activation(act, dense(dropout(hidden.select(1, 0))));  // [CLS]
}

DebertaV2ForSequenceClassificationImpl::DebertaV2ForSequenceClassificationImpl(const Config& c) : config(c) {
  deberta = register_module("deberta", DebertaV2Model(c));
  pooler = register_module("pooler", ContextPooler(c));
  classifier = register_module("classifier", torch::nn::Linear(c.hidden_size, c.num_labels));
  dropout = register_module("dropout", torch::nn::Dropout(c.cls_dropout >= 0 ? c.cls_dropout : c.hidden_dropout_prob));
}

torch::Tensor DebertaV2ForSequenceClassificationImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  return classifier(dropout(pooler(deberta(input_ids, attention_mask))));
}

std::shared_ptr<DebertaV2ForSequenceClassificationImpl> DebertaV2ForSequenceClassificationImpl::from_pretrained(
    const std::string& dir, std::vector<std::string>* fresh, int64_t num_labels, double cls_dropout) {
  auto cfg = Config::from_json_file(dir + "/config.json");
  if (num_labels > 0) cfg.num_labels = num_labels;
  if (cls_dropout >= 0) cfg.cls_dropout = cls_dropout;
  const std::string st = hf::safetensors_path(dir);
  auto model = std::make_shared<DebertaV2ForSequenceClassificationImpl>(cfg);
  // Tensors transformers skips when it builds a classifier from a masked-LM (or RTD) checkpoint.
  static const std::regex skipped(R"(^(lm_predictions\..*|mask_predictions\..*|lm_head\..*|cls\..*|(deberta\.)?embeddings\.position_ids)$)");
  static const std::regex positions(R"(^(deberta\.)?embeddings\.position_embeddings\.weight$)");  // _keys_to_ignore_on_load_unexpected
  auto top = [](const std::string& t) {
    return t.rfind("deberta.", 0) == 0 || t.rfind("pooler.", 0) == 0 || t.rfind("classifier.", 0) == 0;
  };
  const auto head = hf::load_classifier(
      *model, st,
      {"DeBERTa-v2",
       [&](const std::string& t) { return std::regex_match(t, skipped) || (!cfg.position_biased_input && std::regex_match(t, positions)); },
       [&](const std::string& t) { return top(t) ? t : "deberta." + t; },
       [](const std::string& p) { return p.rfind("classifier.", 0) == 0 || p.rfind("pooler.", 0) == 0; },
       "is it a DeBERTa-v2/v3 checkpoint of this size (and num_labels)?"});
  if (!head.empty()) {  // HF's _init_weights for the fresh pooler and classifier: N(0, 0.02), zero bias
    torch::NoGradGuard no_grad;
    for (auto* l : {&model->pooler->dense, &model->classifier}) {
      (*l)->weight.normal_(0.0, 0.02);
      (*l)->bias.zero_();
    }
  }
  if (fresh) *fresh = head;
  return model;
}

void DebertaV2ForSequenceClassificationImpl::save_pretrained(const std::string& dir) const {
  auto* self = const_cast<DebertaV2ForSequenceClassificationImpl*>(this);
  lora::NamedTensors tensors;
  for (const auto& p : named_parameters()) tensors.insert(p.key(), p.value());
  hf::save_pretrained(*self, "deberta", dir, tensors, config.to_json());
}

lora::LoRAConfig paper_lora_config() {
  return lora::LoRAConfig().r(16).alpha(32).dropout(0.0).target_modules({"attention.self.query_proj", "attention.self.value_proj"});
}

}  // namespace deberta
