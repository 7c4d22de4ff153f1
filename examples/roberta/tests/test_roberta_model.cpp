// The C++ RoBERTa against a float64 forward written here from the architecture (HF's
// modeling_roberta.py) on a small random checkpoint this test writes in HF's layout, with and
// without LoRA on query and value; padding; loading errors.
#include <gtest/gtest.h>

#include "loralib_checkpoint.hpp"
#include "model.hpp"

#include <lora_test/errors.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include <unistd.h>

namespace fs = std::filesystem;
using lora_test::error_of;

namespace {

constexpr int64_t kVocab = 40, kHidden = 16, kHeads = 2, kLayers = 2, kInter = 24, kPositions = 20, kLabels = 3;

using Weights = std::map<std::string, torch::Tensor>;

/// HF-layout tensors of a random RoBERTa classifier (float64 masters; written as float32).
Weights random_weights(bool with_head = true) {
  torch::manual_seed(11);
  Weights w;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, double scale = 0.2) {
    w[name] = torch::randn(shape, torch::kDouble) * scale;
  };
  add("roberta.embeddings.word_embeddings.weight", {kVocab, kHidden});
  add("roberta.embeddings.position_embeddings.weight", {kPositions, kHidden});
  add("roberta.embeddings.token_type_embeddings.weight", {1, kHidden});
  for (const char* ln : {"roberta.embeddings.LayerNorm"}) {
    w[std::string(ln) + ".weight"] = 1 + torch::randn({kHidden}, torch::kDouble) * 0.1;
    w[std::string(ln) + ".bias"] = torch::randn({kHidden}, torch::kDouble) * 0.1;
  }
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string p = "roberta.encoder.layer." + std::to_string(l) + ".";
    for (const char* m : {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"}) {
      add(p + m + ".weight", {kHidden, kHidden});
      add(p + m + ".bias", {kHidden}, 0.05);
    }
    add(p + "intermediate.dense.weight", {kInter, kHidden});
    add(p + "intermediate.dense.bias", {kInter}, 0.05);
    add(p + "output.dense.weight", {kHidden, kInter});
    add(p + "output.dense.bias", {kHidden}, 0.05);
    for (const char* ln : {"attention.output.LayerNorm", "output.LayerNorm"}) {
      w[p + ln + ".weight"] = 1 + torch::randn({kHidden}, torch::kDouble) * 0.1;
      w[p + ln + ".bias"] = torch::randn({kHidden}, torch::kDouble) * 0.1;
    }
  }
  if (with_head) {
    add("classifier.dense.weight", {kHidden, kHidden});
    add("classifier.dense.bias", {kHidden});
    add("classifier.out_proj.weight", {kLabels, kHidden});
    add("classifier.out_proj.bias", {kLabels});
  }
  return w;
}

std::string config_json(const std::string& model_type = "roberta") {
  return "{\"model_type\": \"" + model_type + "\", \"vocab_size\": " + std::to_string(kVocab) + ", \"hidden_size\": " + std::to_string(kHidden) +
         ", \"num_hidden_layers\": " + std::to_string(kLayers) + ", \"num_attention_heads\": " + std::to_string(kHeads) +
         ", \"intermediate_size\": " + std::to_string(kInter) + ", \"max_position_embeddings\": " + std::to_string(kPositions) +
         ", \"type_vocab_size\": 1, \"pad_token_id\": 1, \"layer_norm_eps\": 1e-05, \"hidden_act\": \"gelu\", "
         "\"id2label\": {\"0\": \"a\", \"1\": \"b\", \"2\": \"c\"}}";
}

struct Checkpoint {
  fs::path dir;
  explicit Checkpoint(const Weights& w, const std::string& config = config_json(), const std::string& name = "ckpt") {
    dir = fs::temp_directory_path() / ("roberta_test_" + name + "_" + std::to_string(::getpid()));
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
  return (x - mean) / (var + 1e-5).sqrt() * g + b;
}

/// LoRA terms added to a named linear: name -> (A, B, scaling).
using Lora = std::map<std::string, std::tuple<torch::Tensor, torch::Tensor, double>>;

/// The logits of HF's RobertaForSequenceClassification in float64, eval mode, one sequence with
/// `n` real tokens followed by pads.
torch::Tensor reference_logits(Weights w, const std::vector<int64_t>& ids, const Lora& lora = {}) {
  for (auto& [k, v] : w) v = v.to(torch::kDouble);
  auto linear = [&](const std::string& name, const torch::Tensor& x) {
    torch::Tensor y = x.mm(w.at(name + ".weight").t()) + w.at(name + ".bias");
    if (const auto it = lora.find(name); it != lora.end()) {
      const auto& [A, B, s] = it->second;
      y = y + s * x.mm(A.to(torch::kDouble).t()).mm(B.to(torch::kDouble).t());
    }
    return y;
  };
  const int64_t T = static_cast<int64_t>(ids.size()), pad = 1, d = kHidden / kHeads;
  torch::Tensor x = torch::zeros({T, kHidden}, torch::kDouble);
  int64_t position = pad;
  std::vector<bool> is_token;
  for (int64_t t = 0; t < T; ++t) {
    is_token.push_back(ids[t] != pad);
    const int64_t pos = ids[t] != pad ? ++position : pad;
    x[t] = w.at("roberta.embeddings.word_embeddings.weight")[ids[t]] + w.at("roberta.embeddings.position_embeddings.weight")[pos] +
           w.at("roberta.embeddings.token_type_embeddings.weight")[0];
  }
  x = layer_norm(x, w.at("roberta.embeddings.LayerNorm.weight"), w.at("roberta.embeddings.LayerNorm.bias"));
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string p = "roberta.encoder.layer." + std::to_string(l) + ".";
    const auto q = linear(p + "attention.self.query", x), k = linear(p + "attention.self.key", x), v = linear(p + "attention.self.value", x);
    torch::Tensor context = torch::zeros({T, kHidden}, torch::kDouble);
    for (int64_t h = 0; h < kHeads; ++h) {
      const auto qh = q.narrow(1, h * d, d), kh = k.narrow(1, h * d, d), vh = v.narrow(1, h * d, d);
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> s;  // softmax over the real tokens only
        double top = -1e300;
        for (int64_t j = 0; j < T; ++j) {
          s.push_back(is_token[j] ? qh[i].dot(kh[j]).item<double>() / std::sqrt(double(d)) : -1e300);
          top = std::max(top, s.back());
        }
        double z = 0;
        for (int64_t j = 0; j < T; ++j) z += s[j] = is_token[j] ? std::exp(s[j] - top) : 0.0;
        for (int64_t j = 0; j < T; ++j) context[i].narrow(0, h * d, d) += s[j] / z * vh[j];
      }
    }
    const auto a = layer_norm(linear(p + "attention.output.dense", context) + x, w.at(p + "attention.output.LayerNorm.weight"),
                              w.at(p + "attention.output.LayerNorm.bias"));
    const auto hmid = linear(p + "intermediate.dense", a);
    const auto gelu = 0.5 * hmid * (1 + torch::erf(hmid / std::sqrt(2.0)));
    x = layer_norm(linear(p + "output.dense", gelu) + a, w.at(p + "output.LayerNorm.weight"), w.at(p + "output.LayerNorm.bias"));
  }
  const auto first = x.narrow(0, 0, 1);
  return linear("classifier.out_proj", torch::tanh(linear("classifier.dense", first))).squeeze(0);
}

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).norm().item<double>() / b.to(torch::kDouble).norm().item<double>();
}

}  // namespace

TEST(RobertaModel, LogitsEqualTheFloat64Forward) {
  const auto w = random_weights();
  Checkpoint ckpt(w);
  auto model = roberta::RobertaForSequenceClassificationImpl::from_pretrained(ckpt.dir.string());
  model->eval();
  EXPECT_EQ(model->config.num_labels, kLabels);  // from id2label
  const std::vector<int64_t> a = {0, 7, 9, 30, 2, 2, 5, 2}, b = {0, 12, 3, 2};
  // Two rows, the second right-padded: each row's logits equal its own float64 forward.
  auto ids = torch::ones({2, 8}, torch::kLong);
  for (size_t t = 0; t < a.size(); ++t) ids[0][static_cast<int64_t>(t)] = a[t];
  for (size_t t = 0; t < b.size(); ++t) ids[1][static_cast<int64_t>(t)] = b[t];
  torch::NoGradGuard no_grad;
  const auto logits = model->forward(ids);
  ASSERT_EQ(logits.sizes(), torch::IntArrayRef({2, kLabels}));
  EXPECT_LT(rel_err(logits[0], reference_logits(w, a)), 1e-5);
  std::vector<int64_t> b_padded = b;
  b_padded.resize(8, 1);
  EXPECT_LT(rel_err(logits[1], reference_logits(w, b_padded)), 1e-5);
  EXPECT_LT(rel_err(logits[1], reference_logits(w, b)), 1e-5);  // pads change nothing
}

TEST(RobertaModel, PaperAdapterOnQueryAndValueAddsItsTerm) {
  const auto w = random_weights();
  Checkpoint ckpt(w, config_json(), "lora");
  auto model = roberta::RobertaForSequenceClassificationImpl::from_pretrained(ckpt.dir.string());
  const auto report = lora::inject_lora(*model, roberta::paper_lora_config().init(lora::Init::Random));
  EXPECT_EQ(report.adapted.size(), 2u * kLayers);  // query and value of each layer, nothing else
  EXPECT_EQ(report.trainable_params, kLayers * 2 * (8 * kHidden + kHidden * 8));
  model->eval();
  Lora terms;
  for (int64_t l = 0; l < kLayers; ++l)
    for (const char* m : {"query", "value"}) {
      auto& layer = *model->roberta->encoder->layer[l]->as<roberta::LayerImpl>()->attention->self;
      auto& lin = std::string(m) == "query" ? *layer.query : *layer.value;
      terms["roberta.encoder.layer." + std::to_string(l) + ".attention.self." + m] = {lin.lora_A("default"), lin.lora_B("default"), 16.0 / 8.0};
    }
  const std::vector<int64_t> a = {0, 4, 8, 15, 16, 23, 42 % kVocab, 2};
  torch::NoGradGuard no_grad;
  const auto logits = model->forward(torch::tensor(a).unsqueeze(0))[0];
  EXPECT_LT(rel_err(logits, reference_logits(w, a, terms)), 1e-5);
  EXPECT_GT(rel_err(logits, reference_logits(w, a)), 1e-3);  // the adapter changed the logits
}

TEST(RobertaModel, LoadingSaysWhatIsWrong) {
  auto w = random_weights(/*with_head=*/false);
  {
    Checkpoint masked_lm(w, config_json(), "nohead");  // roberta-base: no classifier, a fresh head
    std::vector<std::string> fresh;
    roberta::RobertaForSequenceClassificationImpl::from_pretrained(masked_lm.dir.string(), &fresh);
    EXPECT_EQ(fresh.size(), 4u);
  }
  w["lm_head.dense.weight"] = torch::zeros({kHidden, kHidden}, torch::kDouble);  // skipped, as transformers does
  w.erase("roberta.encoder.layer.1.output.dense.bias");
  w["roberta.encoder.layer.0.attention.self.query.weight"] = torch::zeros({kHidden, kHidden + 1}, torch::kDouble);
  w["roberta.extra.weight"] = torch::zeros({2}, torch::kDouble);
  Checkpoint broken(w, config_json(), "broken");
  const auto msg = error_of([&] { roberta::RobertaForSequenceClassificationImpl::from_pretrained(broken.dir.string()); });
  EXPECT_NE(msg.find("missing roberta.encoder.layer.1.output.dense.bias"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unexpected roberta.extra.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("query.weight has shape [16,17], expected [16,16]"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("lm_head"), std::string::npos) << msg;
  Checkpoint gpt2(random_weights(), config_json("gpt2"), "gpt2");
  EXPECT_NE(error_of([&] { roberta::RobertaForSequenceClassificationImpl::from_pretrained(gpt2.dir.string()); })
                .find("describes a 'gpt2' model, not RoBERTa"),
            std::string::npos);
}

TEST(RobertaLoralib, TheReleasedMnliCheckpointLoadsOntoARobertaBase) {
  const char* env = std::getenv("LORA_LORALIB_DIR");
  const std::string file = (env ? std::string(env) : std::string(LORA_SOURCE_DIR) + "/../shared/data/loralib") + "/roberta_base_lora_mnli.bin";
  if (!fs::exists(file)) GTEST_SKIP() << "microsoft/LoRA's roberta_base_lora_mnli.bin not found at " << file << " (set LORA_LORALIB_DIR)";
  const auto ckpt = roberta::read_loralib_checkpoint(file);
  EXPECT_EQ(ckpt.rank, 8);
  EXPECT_EQ(ckpt.lora.size(), 24u);  // query and value of 12 layers
  EXPECT_EQ(ckpt.classifier.size(), 4u);
  // roberta-base's shapes (a small vocabulary: the adapter does not touch the embeddings).
  roberta::Config c;
  c.vocab_size = 100;
  c.num_labels = 3;
  roberta::RobertaForSequenceClassificationImpl model(c);
  roberta::apply_loralib_checkpoint(model, ckpt, /*with_head=*/true);
  auto& first = *model.roberta->encoder->layer[0]->as<roberta::LayerImpl>()->attention->self->query;
  auto& last = *model.roberta->encoder->layer[11]->as<roberta::LayerImpl>()->attention->self->value;
  // Values read from the same file by Python's torch.load (python3-torch 1.13).
  EXPECT_NEAR(first.lora_A("default").to(torch::kDouble).sum().item<double>(), 0.03336205060531938, 1e-9);
  EXPECT_DOUBLE_EQ(first.lora_A("default")[3][100].item<double>(), -0.035094693303108215);
  EXPECT_NEAR(last.lora_B("default").to(torch::kDouble).norm().item<double>(), 2.180258352087367, 1e-9);
  EXPECT_DOUBLE_EQ(model.classifier->out_proj->bias[1].item<double>(), 0.0525931641459465);
  EXPECT_EQ(first.adapter_options("default").alpha(), 16.0);
  EXPECT_EQ(lora::lora_parameters(model).size(), 48u);
  // An RTE model (2 labels) takes the adapter without the MNLI head, and refuses the head by name.
  c.num_labels = 2;
  roberta::RobertaForSequenceClassificationImpl rte(c);
  const auto msg = error_of([&] { roberta::apply_loralib_checkpoint(rte, ckpt, /*with_head=*/true, "mnli"); });
  EXPECT_NE(msg.find("does not fit the model's classifier (num_labels 2)"), std::string::npos) << msg;
  roberta::RobertaForSequenceClassificationImpl rte2(c);
  roberta::apply_loralib_checkpoint(rte2, ckpt, /*with_head=*/false);
  EXPECT_EQ(lora::lora_parameters(rte2).size(), 48u);
  // Not a torch.save file: one clear error.
  const auto bad = fs::temp_directory_path() / ("loralib_bad_" + std::to_string(::getpid()) + ".bin");
  std::ofstream(bad) << "not a zip";
  EXPECT_NE(error_of([&] { roberta::read_loralib_checkpoint(bad.string()); }).find("is it a state dict saved by torch.save"),
            std::string::npos);
  // Truncated: the zip's directory is gone; one clear error naming the file.
  {
    std::ifstream in(file, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(bad, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  EXPECT_NE(error_of([&] { roberta::read_loralib_checkpoint(bad.string()); }).find("'" + bad.string() + "' cannot be read"),
            std::string::npos);
  fs::remove(bad);
}

TEST(RobertaModel, PeftSeqClsAdapterWithItsHeadGivesTheFloat64Logits) {
  // Trained adapter and head saved as PEFT saves a SEQ_CLS adapter, loaded on a fresh model.
  auto w = random_weights();
  Checkpoint ckpt(w, config_json(), "seqcls");
  auto trained = roberta::RobertaForSequenceClassificationImpl::from_pretrained(ckpt.dir.string());
  lora::inject_lora(*trained, roberta::paper_lora_config().init(lora::Init::Random));
  {
    torch::NoGradGuard g;
    for (auto& p : trained->classifier->parameters()) p.add_(torch::randn_like(p) * 0.3);
  }
  const auto dir = fs::temp_directory_path() / ("roberta_seqcls_adapter_" + std::to_string(::getpid()));
  lora::save_adapter(*trained, dir.string(), lora::SaveAdapterOptions().task_type("SEQ_CLS").modules_to_save({"classifier"}));
  auto model = roberta::RobertaForSequenceClassificationImpl::from_pretrained(ckpt.dir.string());
  lora::load_adapter(*model, dir.string());
  model->eval();
  Lora terms;
  for (const auto& [path, layer] : lora::detail::lora_layers(*trained))
    if (layer->has_adapter("default")) terms[path] = {layer->lora_A("default"), layer->lora_B("default"), 16.0 / 8.0};
  for (const char* k : {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"})
    w[k] = trained->named_parameters()[k].detach().to(torch::kDouble);
  const std::vector<int64_t> a = {0, 5, 9, 21, 2, 2, 33, 2};
  torch::NoGradGuard no_grad;
  const auto logits = model->forward(torch::tensor(a).unsqueeze(0))[0];
  EXPECT_LT(rel_err(logits, reference_logits(w, a, terms)), 1e-5);
  fs::remove_all(dir);
}

TEST(RobertaModel, AGpt2AdapterIsRefusedByName) {
  Checkpoint ckpt(random_weights(), config_json(), "gpt2adapter");
  auto model = roberta::RobertaForSequenceClassificationImpl::from_pretrained(ckpt.dir.string());
  // A GPT-2 adapter file as PEFT writes it: c_attn's A and B.
  const auto dir = fs::temp_directory_path() / ("roberta_gpt2_adapter_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  lora::NamedTensors t;
  t.insert("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", torch::zeros({4, kHidden}));
  t.insert("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight", torch::zeros({3 * kHidden, 4}));
  lora::save_safetensors((dir / "adapter_model.safetensors").string(), t);
  std::ofstream(dir / "adapter_config.json") << R"({"peft_type": "LORA", "r": 4, "lora_alpha": 32, "target_modules": ["c_attn"],
    "task_type": "CAUSAL_LM", "fan_in_fan_out": true})";
  const auto msg = error_of([&] { lora::load_adapter(*model, dir.string()); });
  EXPECT_NE(msg.find("tensor 'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight' belongs to module "
                     "'transformer.h.0.attn.c_attn', which is not a LoRA-capable layer of this model"), std::string::npos) << msg;
  EXPECT_TRUE(lora::detail::lora_layers(*model).empty() || lora::lora_state_dict(*model).is_empty()) << "nothing was loaded";
  fs::remove_all(dir);
}
