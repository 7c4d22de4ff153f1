// The C++ DeBERTa-v2 against a float64 forward written here from the architecture (disentangled
// attention with c2p and p2c, log-bucketed relative positions, the first layer's convolution) on
// small random checkpoints this test writes in HF's layout; LoRA on query_proj / value_proj; PEFT
// files both ways; loading errors.
#include <gtest/gtest.h>

#include "deberta_model.hpp"

#include <lora_test/errors.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include <unistd.h>

namespace fs = std::filesystem;
using lora_test::error_of;

namespace {

constexpr int64_t kVocab = 40, kHidden = 16, kHeads = 2, kLayers = 2, kInter = 24, kPositions = 24, kLabels = 3;

/// Two shapes of DeBERTa: xxlarge's (shared keys, buckets, conv, LayerNorm on the relative
/// embeddings, no absolute positions) and the older v2 one (own position projections, no buckets
/// and a span shorter than the sequences, absolute positions, an embedding projection).
struct Variant {
  std::string name;
  bool share = true, conv = true, rel_norm = true, absolute = false;
  int64_t buckets = 8, max_rel = 16, embedding = kHidden;
  int64_t span() const { return buckets > 0 ? buckets : max_rel; }
};
void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }
const Variant kXxlarge{"xxlarge", true, true, true, false, 8, 16, kHidden};
const Variant kOlder{"older", false, false, false, true, -1, 5, 12};

using Weights = std::map<std::string, torch::Tensor>;

Weights random_weights(const Variant& v, bool with_head = true) {
  torch::manual_seed(7);
  Weights w;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, double scale = 0.25) {
    w[name] = torch::randn(shape, torch::kDouble) * scale;
  };
  auto add_ln = [&](const std::string& name) {
    w[name + ".weight"] = 1 + torch::randn({kHidden}, torch::kDouble) * 0.1;
    w[name + ".bias"] = torch::randn({kHidden}, torch::kDouble) * 0.1;
  };
  auto add_linear = [&](const std::string& name, int64_t out, int64_t in) {
    add(name + ".weight", {out, in});
    add(name + ".bias", {out}, 0.05);
  };
  add("deberta.embeddings.word_embeddings.weight", {kVocab, v.embedding}, 0.5);
  if (v.absolute) add("deberta.embeddings.position_embeddings.weight", {kPositions, v.embedding}, 0.5);
  if (v.embedding != kHidden) add("deberta.embeddings.embed_proj.weight", {kHidden, v.embedding});
  add_ln("deberta.embeddings.LayerNorm");
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string p = "deberta.encoder.layer." + std::to_string(l) + ".";
    for (const char* m : {"attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj", "attention.output.dense"})
      add_linear(p + m, kHidden, kHidden);
    if (!v.share) {
      add_linear(p + "attention.self.pos_key_proj", kHidden, kHidden);
      add_linear(p + "attention.self.pos_query_proj", kHidden, kHidden);
    }
    add_linear(p + "intermediate.dense", kInter, kHidden);
    add_linear(p + "output.dense", kHidden, kInter);
    add_ln(p + "attention.output.LayerNorm");
    add_ln(p + "output.LayerNorm");
  }
  add("deberta.encoder.rel_embeddings.weight", {2 * v.span(), kHidden}, 0.5);
  if (v.rel_norm) add_ln("deberta.encoder.LayerNorm");
  if (v.conv) {
    add("deberta.encoder.conv.conv.weight", {kHidden, kHidden, 3}, 0.2);
    add("deberta.encoder.conv.conv.bias", {kHidden}, 0.05);
    add_ln("deberta.encoder.conv.LayerNorm");
  }
  if (with_head) {
    add_linear("pooler.dense", kHidden, kHidden);
    add_linear("classifier", kLabels, kHidden);
  }
  return w;
}

std::string config_json(const Variant& v, const std::string& extra = "") {
  std::ostringstream s;
  s << R"({"model_type": "deberta-v2", "vocab_size": )" << kVocab << R"(, "hidden_size": )" << kHidden
    << R"(, "num_hidden_layers": )" << kLayers << R"(, "num_attention_heads": )" << kHeads << R"(, "intermediate_size": )" << kInter
    << R"(, "max_position_embeddings": )" << kPositions << R"(, "type_vocab_size": 0, "layer_norm_eps": 1e-7, "hidden_act": "gelu",
      "relative_attention": true, "pos_att_type": "p2c|c2p", "position_biased_input": )"
    << (v.absolute ? "true" : "false") << R"(, "share_att_key": )" << (v.share ? "true" : "false")
    << R"(, "position_buckets": )" << v.buckets << R"(, "max_relative_positions": )" << v.max_rel
    << R"(, "norm_rel_ebd": ")" << (v.rel_norm ? "layer_norm" : "none") << "\""
    << (v.conv ? R"(, "conv_kernel_size": 3, "conv_act": "gelu")" : "")
    << (v.embedding != kHidden ? ", \"embedding_size\": " + std::to_string(v.embedding) : "")
    << R"(, "id2label": {"0": "a", "1": "b", "2": "c"})" << extra << "}";
  return s.str();
}

struct Checkpoint {
  fs::path dir;
  Checkpoint(const Weights& w, const std::string& config, const std::string& name) {
    dir = fs::temp_directory_path() / ("deberta_test_" + name + "_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    lora::NamedTensors t;
    for (const auto& [k, v] : w) t.insert(k, v.to(torch::kFloat));
    lora::save_safetensors((dir / "model.safetensors").string(), t);
    std::ofstream(dir / "config.json") << config;
  }
  ~Checkpoint() { fs::remove_all(dir); }
};

torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& g, const torch::Tensor& b) {
  const auto mean = x.mean(-1, true), var = (x - mean).pow(2).mean(-1, true);
  return (x - mean) / (var + 1e-7).sqrt() * g + b;
}

torch::Tensor gelu_erf(const torch::Tensor& x) { return 0.5 * x * (1 + torch::erf(x / std::sqrt(2.0))); }

/// DeBERTa-v2's log bucket of a relative position (the paper's and modeling_deberta_v2.py's rule).
int64_t bucket(int64_t rel, int64_t buckets, int64_t max_position) {
  if (buckets <= 0) return rel;
  const int64_t mid = buckets / 2, sign = rel > 0 ? 1 : rel < 0 ? -1 : 0;
  if (std::abs(rel) <= mid) return rel;
  const double log_pos = std::ceil(std::log(double(std::abs(rel)) / mid) / std::log(double(max_position - 1) / mid) * (mid - 1)) + mid;
  return static_cast<int64_t>(log_pos) * sign;
}

/// LoRA terms added to a named linear: name -> (A, B, scaling).
using Lora = std::map<std::string, std::tuple<torch::Tensor, torch::Tensor, double>>;

/// HF's DebertaV2ForSequenceClassification in float64, eval mode, one unpadded sequence.
/// `lora_position_query`: the query_proj adapter also projects the relative embeddings (HF +
/// PEFT); microsoft/LoRA's model projects them by W0 alone.
torch::Tensor reference_logits(Weights w, const Variant& v, const std::vector<int64_t>& ids, const Lora& lora = {},
                               bool lora_position_query = false) {
  for (auto& [k, t] : w) t = t.to(torch::kDouble);
  auto linear = [&](const std::string& name, const torch::Tensor& x, bool with_lora = true) {
    torch::Tensor y = x.mm(w.at(name + ".weight").t()) + w.at(name + ".bias");
    if (const auto it = lora.find(name); with_lora && it != lora.end()) {
      const auto& [A, B, s] = it->second;
      y = y + s * x.mm(A.to(torch::kDouble).t()).mm(B.to(torch::kDouble).t());
    }
    return y;
  };
  const int64_t T = static_cast<int64_t>(ids.size()), d = kHidden / kHeads, span = v.span();
  torch::Tensor x = torch::zeros({T, v.embedding}, torch::kDouble);
  for (int64_t t = 0; t < T; ++t) {
    x[t] = w.at("deberta.embeddings.word_embeddings.weight")[ids[t]];
    if (v.absolute) x[t] += w.at("deberta.embeddings.position_embeddings.weight")[t];
  }
  if (v.embedding != kHidden) x = x.mm(w.at("deberta.embeddings.embed_proj.weight").t());
  x = layer_norm(x, w.at("deberta.embeddings.LayerNorm.weight"), w.at("deberta.embeddings.LayerNorm.bias"));
  const torch::Tensor embeddings = x;
  torch::Tensor rel = w.at("deberta.encoder.rel_embeddings.weight");
  if (v.rel_norm) rel = layer_norm(rel, w.at("deberta.encoder.LayerNorm.weight"), w.at("deberta.encoder.LayerNorm.bias"));
  auto clamp = [&](int64_t i) { return std::min(std::max<int64_t>(i, 0), 2 * span - 1); };
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string p = "deberta.encoder.layer." + std::to_string(l) + ".attention.self.";
    const auto q = linear(p + "query_proj", x), k = linear(p + "key_proj", x), val = linear(p + "value_proj", x);
    const auto pos_key = v.share ? linear(p + "key_proj", rel) : linear(p + "pos_key_proj", rel);
    const auto pos_query = v.share ? linear(p + "query_proj", rel, lora_position_query) : linear(p + "pos_query_proj", rel);
    torch::Tensor context = torch::zeros({T, kHidden}, torch::kDouble);
    for (int64_t h = 0; h < kHeads; ++h) {
      const auto qh = q.narrow(1, h * d, d), kh = k.narrow(1, h * d, d), vh = val.narrow(1, h * d, d);
      const auto pk = pos_key.narrow(1, h * d, d), pq = pos_query.narrow(1, h * d, d);
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> s(static_cast<size_t>(T));
        double top = -1e300;
        for (int64_t j = 0; j < T; ++j) {
          const double c2c = qh[i].dot(kh[j]).item<double>();
          const double c2p = qh[i].dot(pk[clamp(bucket(i - j, v.buckets, v.max_rel) + span)]).item<double>();
          const double p2c = kh[j].dot(pq[clamp(-bucket(j - i, v.buckets, v.max_rel) + span)]).item<double>();
          s[j] = (c2c + c2p + p2c) / std::sqrt(3.0 * d);
          top = std::max(top, s[j]);
        }
        double z = 0;
        for (auto& e : s) z += e = std::exp(e - top);
        for (int64_t j = 0; j < T; ++j) context[i].narrow(0, h * d, d) += s[j] / z * vh[j];
      }
    }
    const std::string o = "deberta.encoder.layer." + std::to_string(l) + ".";
    const auto a = layer_norm(linear(o + "attention.output.dense", context) + x, w.at(o + "attention.output.LayerNorm.weight"),
                              w.at(o + "attention.output.LayerNorm.bias"));
    x = layer_norm(linear(o + "output.dense", gelu_erf(linear(o + "intermediate.dense", a))) + a, w.at(o + "output.LayerNorm.weight"),
                   w.at(o + "output.LayerNorm.bias"));
    if (l == 0 && v.conv) {  // out_t = b + Σ_k W[:, :, k] · emb_{t+k−1}, zero beyond the ends
      const auto W = w.at("deberta.encoder.conv.conv.weight");
      torch::Tensor out = w.at("deberta.encoder.conv.conv.bias").unsqueeze(0).repeat({T, 1});
      for (int64_t t = 0; t < T; ++t)
        for (int64_t kk = 0; kk < 3; ++kk)
          if (t + kk - 1 >= 0 && t + kk - 1 < T) out[t] += W.select(2, kk).mv(embeddings[t + kk - 1]);
      x = layer_norm(x + gelu_erf(out), w.at("deberta.encoder.conv.LayerNorm.weight"), w.at("deberta.encoder.conv.LayerNorm.bias"));
    }
  }
  const auto pooled = gelu_erf(linear("pooler.dense", x.narrow(0, 0, 1)));
  return linear("classifier", pooled).squeeze(0);
}

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).norm().item<double>() / b.to(torch::kDouble).norm().item<double>();
}

class DebertaModel : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

/// ids as a [2, 14] batch: `a` (14 tokens) and `b` right-padded with 0 ([PAD]).
std::pair<torch::Tensor, torch::Tensor> batch_of(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  auto ids = torch::zeros({2, static_cast<int64_t>(a.size())}, torch::kLong), mask = torch::zeros_like(ids);
  for (size_t t = 0; t < a.size(); ++t) ids[0][static_cast<int64_t>(t)] = a[t], mask[0][static_cast<int64_t>(t)] = 1;
  for (size_t t = 0; t < b.size(); ++t) ids[1][static_cast<int64_t>(t)] = b[t], mask[1][static_cast<int64_t>(t)] = 1;
  return {ids, mask};
}

const std::vector<int64_t> kA = {1, 7, 9, 30, 2, 11, 5, 38, 21, 13, 17, 25, 19, 2}, kB = {1, 12, 3, 33, 8, 2};

}  // namespace

TEST(DebertaRelativePositions, FallInTheLogBucketsOfTheReference) {
  // make_log_bucket_position(·, 256, 512), worked by hand: mid 128; |r| ≤ 128 stays; else
  // ceil(ln(|r|/128) / ln(511/128) · 127) + 128 with r's sign: 129 -> 129, 200 -> 169, 511 -> 255.
  const auto r = deberta::relative_positions(512, 512, 256, 512);
  EXPECT_EQ(r[0][0].item<int64_t>(), 0);
  EXPECT_EQ(r[128][0].item<int64_t>(), 128);
  EXPECT_EQ(r[0][128].item<int64_t>(), -128);
  EXPECT_EQ(r[129][0].item<int64_t>(), 129);
  EXPECT_EQ(r[200][0].item<int64_t>(), 169);
  EXPECT_EQ(r[0][200].item<int64_t>(), -169);
  EXPECT_EQ(r[511][0].item<int64_t>(), 255);  // ln(511/128)/ln(511/128) is exactly 1 in float64: not 256
  EXPECT_EQ(deberta::relative_positions(3, 4, -1, -1)[2][0].item<int64_t>(), 2);  // no buckets: i − j
  EXPECT_EQ(deberta::relative_positions(3, 4, -1, -1)[0][3].item<int64_t>(), -3);
}

TEST_P(DebertaModel, LogitsEqualTheFloat64Forward) {
  const Variant v = GetParam();
  const auto w = random_weights(v);
  Checkpoint ckpt(w, config_json(v), "logits_" + v.name);
  auto model = deberta::DebertaV2ForSequenceClassificationImpl::from_pretrained(ckpt.dir.string());
  model->eval();
  EXPECT_EQ(model->config.num_labels, kLabels);
  const auto [ids, mask] = batch_of(kA, kB);
  torch::NoGradGuard no_grad;
  const auto logits = model->forward(ids, mask);
  ASSERT_EQ(logits.sizes(), torch::IntArrayRef({2, kLabels}));
  EXPECT_LT(rel_err(logits[0], reference_logits(w, v, kA)), 1e-5);
  EXPECT_LT(rel_err(logits[1], reference_logits(w, v, kB)), 1e-5);  // the pads change nothing
  EXPECT_LT(rel_err(model->forward(ids.narrow(0, 1, 1).narrow(1, 0, 6))[0], logits[1]), 1e-5);  // nor does the batch
}

TEST_P(DebertaModel, PaperAdapterOnQueryProjAndValueProjAddsItsTermAndMergesExactly) {
  const Variant v = GetParam();
  const auto w = random_weights(v);
  Checkpoint ckpt(w, config_json(v), "lora_" + v.name);
  auto model = deberta::DebertaV2ForSequenceClassificationImpl::from_pretrained(ckpt.dir.string());
  const auto report = lora::inject_lora(*model, deberta::paper_lora_config().r(4).init(lora::Init::Random));
  EXPECT_EQ(report.adapted.size(), 2u * kLayers);  // query_proj and value_proj of each layer
  EXPECT_EQ(report.trainable_params, kLayers * 2 * (4 * kHidden + kHidden * 4));
  model->eval();
  Lora terms;
  for (const auto& [path, layer] : lora::detail::lora_layers(*model))
    if (layer->has_adapter("default")) terms[path] = {layer->lora_A("default"), layer->lora_B("default"), 32.0 / 4.0};
  const auto [ids, mask] = batch_of(kA, kB);
  torch::NoGradGuard no_grad;
  const auto logits = model->forward(ids, mask);
  EXPECT_LT(rel_err(logits[0], reference_logits(w, v, kA, terms)), 1e-5);
  EXPECT_LT(rel_err(logits[1], reference_logits(w, v, kB, terms)), 1e-5);
  EXPECT_GT(rel_err(logits[0], reference_logits(w, v, kA)), 1e-3);  // the adapter changed the logits
  if (v.share) {  // W0 alone projects the positions (microsoft/LoRA); HF + PEFT's form on request
    EXPECT_GT(rel_err(logits[0], reference_logits(w, v, kA, terms, true)), 1e-4);
    model->config.lora_in_position_query = true;
    for (auto& l : *model->deberta->encoder->layer) l->as<deberta::LayerImpl>()->attention->self->config.lora_in_position_query = true;
    EXPECT_LT(rel_err(model->forward(ids, mask)[0], reference_logits(w, v, kA, terms, true)), 1e-5);
    for (auto& l : *model->deberta->encoder->layer) l->as<deberta::LayerImpl>()->attention->self->config.lora_in_position_query = false;
  }
  lora::merge(*model);  // merged: the same logits, the position queries still from W0
  EXPECT_LT(rel_err(model->forward(ids, mask), logits), 1e-5);
}

TEST_P(DebertaModel, PaddedRowsKeepGradientsFinite) {
  // A padded query row has no key to attend to: its scores stay finite (XSoftmax zeroes them), so
  // training on padded batches gives the unpadded gradients, not NaN.
  const Variant v = GetParam();
  const auto w = random_weights(v);
  Checkpoint ckpt(w, config_json(v), "grad_" + v.name);
  auto padded = deberta::DebertaV2ForSequenceClassificationImpl::from_pretrained(ckpt.dir.string());
  auto alone = deberta::DebertaV2ForSequenceClassificationImpl::from_pretrained(ckpt.dir.string());
  padded->eval();
  alone->eval();
  const auto [ids, mask] = batch_of(kA, kB);
  padded->forward(ids, mask)[1].pow(2).sum().backward();
  alone->forward(torch::tensor(kB).unsqueeze(0)).pow(2).sum().backward();
  auto want = alone->named_parameters();
  for (const auto& p : padded->named_parameters()) {
    ASSERT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
    EXPECT_LT((p.value().grad() - want[p.key()].grad()).abs().max().item<double>(), 1e-5) << p.key();
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DebertaModel, ::testing::Values(kXxlarge, kOlder),
                         [](const ::testing::TestParamInfo<Variant>& i) { return i.param.name; });

TEST(DebertaAdapterFiles, PeftSeqClsAdapterLoadsAndSavesInPeftsLayout) {
  // Hand-laid as PEFT writes a SEQ_CLS adapter of DeBERTa (lora_A/B + the pooler and classifier
  // in modules_to_save): the loaded model gives the float64 logits; saving writes the same tensors back.
  auto w = random_weights(kXxlarge, /*with_head=*/false);
  Checkpoint ckpt(w, config_json(kXxlarge), "peft");
  const auto dir = fs::temp_directory_path() / ("deberta_peft_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  torch::manual_seed(3);
  lora::NamedTensors file;
  Lora terms;
  for (int64_t l = 0; l < kLayers; ++l)
    for (const char* m : {"query_proj", "value_proj"}) {
      const std::string path = "deberta.encoder.layer." + std::to_string(l) + ".attention.self." + m;
      const auto A = torch::randn({8, kHidden}) * 0.3, B = torch::randn({kHidden, 8}) * 0.3;
      file.insert("base_model.model." + path + ".lora_A.weight", A);
      file.insert("base_model.model." + path + ".lora_B.weight", B);
      terms[path] = {A, B, 16.0 / 8.0};
    }
  for (const auto& [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
           {"pooler.dense.weight", {kHidden, kHidden}}, {"pooler.dense.bias", {kHidden}}, {"classifier.weight", {kLabels, kHidden}},
           {"classifier.bias", {kLabels}}}) {
    const auto t = torch::randn(shape) * 0.3;
    file.insert("base_model.model." + name, t);
    w[name] = t.to(torch::kDouble);
  }
  lora::save_safetensors((dir / "adapter_model.safetensors").string(), file);
  std::ofstream(dir / "adapter_config.json") << R"({"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 8, "lora_alpha": 16,
    "lora_dropout": 0.0, "target_modules": ["query_proj", "value_proj"], "modules_to_save": ["pooler", "classifier"], "bias": "none"})";
  std::vector<std::string> fresh;
  auto model = deberta::DebertaV2ForSequenceClassificationImpl::from_pretrained(ckpt.dir.string(), &fresh);
  EXPECT_EQ(fresh.size(), 4u);  // a masked-LM checkpoint: pooler and classifier start fresh
  lora::load_adapter(*model, dir.string());
  model->eval();
  {
    torch::NoGradGuard no_grad;
    EXPECT_LT(rel_err(model->forward(torch::tensor(kA).unsqueeze(0))[0], reference_logits(w, kXxlarge, kA, terms)), 1e-5);
  }
  const auto out = fs::temp_directory_path() / ("deberta_peft_out_" + std::to_string(::getpid()));
  lora::save_adapter(*model, out.string(), lora::SaveAdapterOptions().task_type("SEQ_CLS").modules_to_save({"pooler", "classifier"}));
  const lora::safetensors::File saved((out / "adapter_model.safetensors").string());
  EXPECT_EQ(saved.tensors().size(), file.size());
  for (const auto& t : saved.tensors()) {
    ASSERT_TRUE(file.contains(t.name)) << t.name;
    EXPECT_TRUE(torch::equal(lora::borrow_tensor(t), file[t.name])) << t.name;
  }
  fs::remove_all(dir);
  fs::remove_all(out);
}

TEST(DebertaLoading, SaysWhatIsWrong) {
  auto w = random_weights(kXxlarge);
  w["lm_predictions.lm_head.dense.weight"] = torch::zeros({kHidden, kHidden}, torch::kDouble);  // skipped, as transformers does
  w["deberta.embeddings.position_embeddings.weight"] = torch::zeros({kPositions, kHidden}, torch::kDouble);  // unused: skipped
  w.erase("deberta.encoder.layer.1.output.dense.bias");
  w["deberta.encoder.rel_embeddings.weight"] = torch::zeros({10, kHidden}, torch::kDouble);
  w["deberta.extra.weight"] = torch::zeros({2}, torch::kDouble);
  Checkpoint broken(w, config_json(kXxlarge), "broken");
  const auto msg = error_of([&] { deberta::DebertaV2ForSequenceClassificationImpl::from_pretrained(broken.dir.string()); });
  EXPECT_NE(msg.find("missing deberta.encoder.layer.1.output.dense.bias"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unexpected deberta.extra.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rel_embeddings.weight has shape [10,16], expected [16,16]"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("lm_predictions"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("position_embeddings"), std::string::npos) << msg;
  const auto good = random_weights(kXxlarge);
  for (const auto& [extra, want] : std::vector<std::pair<std::string, std::string>>{
           {R"(, "pos_att_type": ["p2c", "p2p"])", "pos_att_type 'p2p' is not supported"},
           {R"(, "type_vocab_size": 2)", "token type embeddings are not supported"},
           {R"(, "hidden_act": "swish")", "activation 'swish' is not supported"}}) {
    std::string config = config_json(kXxlarge, "");
    config.insert(config.size() - 1, extra);  // a later duplicate key wins in nlohmann's parse
    Checkpoint c(good, config, "config");
    const auto m = error_of([&] { deberta::DebertaV2ForSequenceClassificationImpl::from_pretrained(c.dir.string()); });
    EXPECT_NE(m.find(want), std::string::npos) << m;
  }
  Checkpoint roberta(good, R"({"model_type": "roberta", "vocab_size": 40})", "roberta");
  EXPECT_NE(error_of([&] { deberta::DebertaV2ForSequenceClassificationImpl::from_pretrained(roberta.dir.string()); })
                .find("describes a 'roberta' model, not DeBERTa-v2"),
            std::string::npos);
}
