#include "model.hpp"

#include "checkpoint.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

namespace gpt2 {

namespace {

const std::set<std::string> kActivations = {"gelu_new", "gelu_pytorch_tanh", "gelu", "relu"};

/// HF keeps these projections as Conv1D with weight [in, out].
bool is_conv1d_weight(const std::string& key) {
  static const std::regex re(R"(^transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$)");
  return std::regex_match(key, re);
}

}  // namespace

Config Config::from_json_file(const std::string& path) {
  const nlohmann::json j = hf::read_config_json(path, "GPT-2");
  Config c;
  auto get_int = [&](const char* key, int64_t& dst, const char* alt = nullptr) {
    const char* k = j.contains(key) ? key : (alt && j.contains(alt) ? alt : nullptr);
    if (!k) throw std::runtime_error("'" + path + "': missing field '" + key + "'");
    if (!j[k].is_number_integer() || j[k].get<int64_t>() <= 0)
      throw std::runtime_error("'" + path + "': field '" + k + "' must be a positive integer");
    dst = j[k].get<int64_t>();
  };
  get_int("vocab_size", c.vocab_size);
  get_int("n_positions", c.n_positions, "n_ctx");
  get_int("n_embd", c.n_embd);
  get_int("n_layer", c.n_layer);
  get_int("n_head", c.n_head);
  if (c.n_embd % c.n_head != 0)
    throw std::runtime_error("'" + path + "': n_embd " + std::to_string(c.n_embd) + " is not divisible by n_head " + std::to_string(c.n_head));
  c.layer_norm_epsilon = j.value("layer_norm_epsilon", c.layer_norm_epsilon);
  c.activation_function = j.value("activation_function", c.activation_function);
  if (!kActivations.count(c.activation_function))
    throw std::runtime_error("'" + path + "': activation_function '" + c.activation_function +
                             "' is not supported (gelu_new, gelu_pytorch_tanh, gelu, relu)");
  c.resid_pdrop = j.value("resid_pdrop", c.resid_pdrop);
  c.embd_pdrop = j.value("embd_pdrop", c.embd_pdrop);
  c.attn_pdrop = j.value("attn_pdrop", c.attn_pdrop);
  return c;
}

std::string Config::to_json() const {
  nlohmann::ordered_json j;
  j["architectures"] = {"GPT2LMHeadModel"};
  j["model_type"] = "gpt2";
  j["vocab_size"] = vocab_size;
  j["n_positions"] = n_positions;
  j["n_ctx"] = n_positions;
  j["n_embd"] = n_embd;
  j["n_layer"] = n_layer;
  j["n_head"] = n_head;
  j["layer_norm_epsilon"] = layer_norm_epsilon;
  j["activation_function"] = activation_function;
  j["resid_pdrop"] = resid_pdrop;
  j["embd_pdrop"] = embd_pdrop;
  j["attn_pdrop"] = attn_pdrop;
  j["initializer_range"] = 0.02;
  j["bos_token_id"] = 50256;
  j["eos_token_id"] = 50256;
  return j.dump(2) + "\n";
}

void KVCache::select(const torch::Tensor& index) {
  for (auto& t : k) t = t.index_select(0, index);
  for (auto& t : v) t = t.index_select(0, index);
}

// ---- attention ------------------------------------------------------------------------------

namespace {

/// The most negative finite value of `t` (HF's torch.finfo(dtype).min): a masked score must be
/// representable in the scores' dtype (bf16 under autocast) and finite (a fully masked padding
/// row must not turn into NaN).
double lowest_of(torch::ScalarType t) {
  switch (t) {
    case torch::kBFloat16: return static_cast<float>(std::numeric_limits<c10::BFloat16>::lowest());
    case torch::kHalf: return static_cast<float>(std::numeric_limits<c10::Half>::lowest());
    case torch::kDouble: return std::numeric_limits<double>::lowest();
    default: return std::numeric_limits<float>::lowest();
  }
}

}  // namespace

AttentionImpl::AttentionImpl(const Config& c) : n_head(c.n_head), attn_pdrop(c.attn_pdrop), resid_pdrop(c.resid_pdrop) {
  c_attn = register_module("c_attn", lora::LoRALinear(c.n_embd, 3 * c.n_embd));
  c_proj = register_module("c_proj", lora::LoRALinear(c.n_embd, c.n_embd));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& allowed, torch::Tensor* k_cache,
                                     torch::Tensor* v_cache) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), hd = C / n_head;
  auto qkv = c_attn(x).split(C, /*dim=*/2);
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, n_head, hd}).transpose(1, 2); };  // [B, H, T, hd]
  torch::Tensor q = heads(qkv[0]), k = heads(qkv[1]), v = heads(qkv[2]);
  if (k_cache) {
    if (k_cache->defined()) {
      k = torch::cat({*k_cache, k}, 2);
      v = torch::cat({*v_cache, v}, 2);
    }
    *k_cache = k;
    *v_cache = v;
  }
  auto att = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));
  att = att.masked_fill(allowed.logical_not(), lowest_of(att.scalar_type())).softmax(-1);
  if (is_training() && attn_pdrop > 0) att = torch::dropout(att, attn_pdrop, true);
  auto y = torch::matmul(att, v).transpose(1, 2).contiguous().view({B, T, C});
  y = c_proj(y);
  return is_training() && resid_pdrop > 0 ? torch::dropout(y, resid_pdrop, true) : y;
}

// ---- MLP and block ----------------------------------------------------------------------------

MLPImpl::MLPImpl(const Config& c) : activation(c.activation_function), resid_pdrop(c.resid_pdrop) {
  if (!kActivations.count(activation)) throw std::invalid_argument("gpt2: activation_function '" + activation + "' is not supported");
  c_fc = register_module("c_fc", lora::LoRALinear(c.n_embd, 4 * c.n_embd));
  c_proj = register_module("c_proj", lora::LoRALinear(4 * c.n_embd, c.n_embd));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  auto h = c_fc(x);
  if (activation == "gelu") h = torch::gelu(h);
  else if (activation == "relu") h = torch::relu(h);
  else h = torch::gelu(h, "tanh");  // gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  h = c_proj(h);
  return is_training() && resid_pdrop > 0 ? torch::dropout(h, resid_pdrop, true) : h;
}

BlockImpl::BlockImpl(const Config& c) {
  auto ln = [&] { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.n_embd}).eps(c.layer_norm_epsilon)); };
  ln_1 = register_module("ln_1", ln());
  attn = register_module("attn", Attention(c));
  ln_2 = register_module("ln_2", ln());
  mlp = register_module("mlp", MLP(c));
}

torch::Tensor BlockImpl::forward(torch::Tensor x, const torch::Tensor& allowed, torch::Tensor* k_cache, torch::Tensor* v_cache) {
  x = x + attn(ln_1(x), allowed, k_cache, v_cache);
  return x + mlp(ln_2(x));
}

TransformerImpl::TransformerImpl(const Config& c) {
  // The lookup's gradient is sparse (the rows of the batch's tokens): the engine adds it in place
  // into the head's dense [vocab, n_embd] gradient of the same tied weight, where a dense lookup
  // gradient would keep two more vocab-sized buffers alive at the end of full fine-tuning's
  // backward (the two gradients and their sum). wte's gradient is dense either way.
  wte = register_module("wte", lora::LoRAEmbedding(torch::nn::EmbeddingOptions(c.vocab_size, c.n_embd).sparse(true)));
  wte->set_tied_to("lm_head");  // the output head reads wte's weight (GPT2LMHeadModelImpl::lm_head)
  wpe = register_module("wpe", torch::nn::Embedding(c.n_positions, c.n_embd));
  h = register_module("h", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.n_layer; ++i) h->push_back(Block(c));
  ln_f = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.n_embd}).eps(c.layer_norm_epsilon)));
}

// ---- the model --------------------------------------------------------------------------------

GPT2LMHeadModelImpl::GPT2LMHeadModelImpl(const Config& c) : config(c) {
  transformer = register_module("transformer", Transformer(c));
  // HF's _init_weights: N(0, 0.02) weights, zero biases, and residual projections scaled by
  // 1/sqrt(2 n_layer) (the LayerNorms keep LibTorch's ones/zeros).
  torch::NoGradGuard no_grad;
  for (auto& p : named_parameters()) {
    const auto& key = p.key();
    if (key.find(".ln_") != std::string::npos) continue;
    if (key.size() > 5 && key.compare(key.size() - 5, 5, ".bias") == 0) {
      p.value().zero_();
      continue;
    }
    const bool residual = key.find("c_proj.weight") != std::string::npos;
    p.value().normal_(0.0, residual ? 0.02 / std::sqrt(2.0 * c.n_layer) : 0.02);
  }
}

torch::Tensor GPT2LMHeadModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask, KVCache* cache) {
  return lm_head(hidden_states(input_ids, attention_mask, cache));
}

torch::Tensor GPT2LMHeadModelImpl::lm_head(const torch::Tensor& hidden) {
  return torch::nn::functional::linear(hidden, transformer->wte->weight.to(hidden.scalar_type()));  // tied to wte
}

torch::Tensor GPT2LMHeadModelImpl::hidden_states(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                                 KVCache* cache) {
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const int64_t past = cache ? cache->length() : 0, total = past + T;
  if (total > config.n_positions)
    throw std::invalid_argument("gpt2: " + std::to_string(total) + " positions exceed n_positions=" + std::to_string(config.n_positions));
  const auto dev = input_ids.device();
  // Query t (absolute position past + t) may see key j when j <= past + t and j is not padding.
  auto causal = torch::ones({T, total}, torch::TensorOptions().dtype(torch::kBool).device(dev)).tril(past);
  torch::Tensor allowed = causal.view({1, 1, T, total}), positions;
  if (attention_mask.defined()) {
    if (attention_mask.size(0) != B || attention_mask.size(1) != total)
      throw std::invalid_argument("gpt2: attention_mask has shape " + lora::shape_str(attention_mask.sizes()) + ", expected [" +
                                  std::to_string(B) + "," + std::to_string(total) + "] (past + new tokens)");
    auto keep = attention_mask.to(torch::kBool);
    allowed = allowed.logical_and(keep.view({B, 1, 1, total}));
    positions = (attention_mask.to(torch::kLong).cumsum(1) - 1).clamp_min(0).narrow(1, past, T);
  } else {
    positions = torch::arange(past, total, torch::TensorOptions().dtype(torch::kLong).device(dev)).unsqueeze(0).expand({B, T});
  }
  if (cache && cache->k.empty()) {
    cache->k.resize(config.n_layer);
    cache->v.resize(config.n_layer);
  }
  auto x = transformer->wte(input_ids) + transformer->wpe(positions);
  if (is_training() && config.embd_pdrop > 0) x = torch::dropout(x, config.embd_pdrop, true);
  for (int64_t i = 0; i < config.n_layer; ++i)
    x = transformer->h[i]->as<BlockImpl>()->forward(x, allowed, cache ? &cache->k[i] : nullptr, cache ? &cache->v[i] : nullptr);
  return transformer->ln_f(x);
}

std::shared_ptr<GPT2LMHeadModelImpl> GPT2LMHeadModelImpl::from_pretrained(const std::string& dir, torch::Dtype dtype) {
  const auto cfg = Config::from_json_file(dir + "/config.json");
  const std::string st = hf::safetensors_path(dir);
  auto model = std::make_shared<GPT2LMHeadModelImpl>(cfg);
  const lora::safetensors::File file(st);
  auto params = model->named_parameters();
  static const std::regex buffers(R"(^h\.\d+\.attn\.(bias|masked_bias)$)");
  std::set<std::string> loaded;
  hf::Misfit misfit;
  auto& unexpected = misfit.unexpected;
  auto& wrong = misfit.wrong_shape;
  const lora::safetensors::TensorView* lm_head = nullptr;
  torch::NoGradGuard no_grad;
  for (const auto& t : file.tensors()) {
    if (t.name == "lm_head.weight") {
      lm_head = &t;
      continue;
    }
    const std::string rest = t.name.rfind("transformer.", 0) == 0 ? t.name.substr(12) : t.name;
    if (std::regex_match(rest, buffers)) continue;  // causal-mask buffers: we build the mask ourselves
    const std::string key = "transformer." + rest;
    if (!params.contains(key)) {
      unexpected.push_back(t.name);
      continue;
    }
    const bool conv1d = is_conv1d_weight(key);
    const auto value = lora::borrow_tensor(t);  // the file's bytes, read in place
    if ((conv1d ? value.t() : value).sizes() != params[key].sizes()) {
      wrong.push_back(t.name + " has shape " + lora::shape_str(torch::IntArrayRef(t.shape)) + ", expected " +
                      lora::shape_str(conv1d ? params[key].t().sizes() : params[key].sizes()));
      loaded.insert(key);  // there, if misshapen: not also "missing"
      continue;
    }
    // Copied into the parameter ~16 MB of file rows at a time, each piece's pages released at
    // once: loading holds the model and one piece, not the model twice (wte alone is 154 MB).
    // (GPT-2's parameters have one or two dimensions: a scalar never passes the shape check.)
    const int64_t rows = value.size(0);
    const size_t row_bytes = t.nbytes / static_cast<size_t>(std::max<int64_t>(1, rows));
    const int64_t piece = std::max<int64_t>(1, static_cast<int64_t>((size_t{16} << 20) / std::max<size_t>(1, row_bytes)));
    for (int64_t r0 = 0; r0 < rows; r0 += piece) {
      const int64_t n = std::min(piece, rows - r0);
      if (conv1d)
        params[key].narrow(1, r0, n).copy_(value.narrow(0, r0, n).t());
      else
        params[key].narrow(0, r0, n).copy_(value.narrow(0, r0, n));
      file.release(t.data + static_cast<size_t>(r0) * row_bytes, static_cast<size_t>(n) * row_bytes);
    }
    loaded.insert(key);
  }
  for (const auto& p : params)
    if (!loaded.count(p.key())) misfit.missing.push_back(p.key());
  hf::throw_if_misfit(st, "GPT-2", misfit, "is it a GPT-2 checkpoint of this size?");
  if (lm_head && !torch::equal(lora::borrow_tensor(*lm_head), model->transformer->wte->weight))
    throw std::runtime_error("'" + st + "': lm_head.weight differs from transformer.wte.weight; GPT-2's head is tied "
                             "to the token embedding and an untied head is not supported");
  model->to(dtype);
  return model;
}

void GPT2LMHeadModelImpl::save_pretrained(const std::string& dir) const {
  auto* self = const_cast<GPT2LMHeadModelImpl*>(this);
  lora::NamedTensors tensors;
  for (const auto& p : named_parameters())
    tensors.insert(p.key(), is_conv1d_weight(p.key()) ? p.value().t() : p.value());
  hf::save_pretrained(*self, "gpt2", dir, tensors, config.to_json());
}

void GPT2LMHeadModelImpl::set_dropout(double embd, double attn, double resid) {
  for (double p : {embd, attn, resid})
    if (p < 0.0 || p >= 1.0) throw std::invalid_argument("gpt2: dropout probabilities must be in [0, 1), got " + std::to_string(p));
  config.embd_pdrop = embd;
  config.attn_pdrop = attn;
  config.resid_pdrop = resid;
  for (const auto& block : *transformer->h) {
    auto* b = block->as<BlockImpl>();
    b->attn->attn_pdrop = attn;
    b->attn->resid_pdrop = resid;
    b->mlp->resid_pdrop = resid;
  }
}

lora::LoRAConfig paper_lora_config() {
  return lora::LoRAConfig().r(4).alpha(32).dropout(0.1).target_modules({"c_attn"}).enable_lora({{"c_attn", {true, false, true}}});
}

lora::LoRAConfig attention_lora_config(const std::string& weights) {
  std::vector<bool> qkv(3, false);
  bool o = false;
  for (size_t i = 0; i < weights.size(); ++i) {
    const size_t at = std::string("qkvo").find(weights[i]);
    if (at == std::string::npos || weights.find(weights[i]) != i)
      throw std::invalid_argument("attention weights '" + weights + "': '" + weights[i] +
                                  "' is not one of q, k, v, o or is repeated (the paper's W_q, W_k, W_v, W_o; e.g. qv or qkvo)");
    if (at == 3)
      o = true;
    else
      qkv[at] = true;
  }
  if (weights.empty()) throw std::invalid_argument("attention weights: empty; name at least one of q, k, v, o (e.g. qv)");
  std::vector<std::string> targets;
  lora::SliceMasks masks;
  if (std::count(qkv.begin(), qkv.end(), true) > 0) {
    targets.push_back("attn.c_attn");
    masks["attn.c_attn"] = qkv;
  }
  if (o) targets.push_back("attn.c_proj");  // not mlp.c_proj: target names match whole dotted suffixes
  return paper_lora_config().target_modules(targets).enable_lora(masks);
}

}  // namespace gpt2
