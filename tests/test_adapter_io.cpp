// PEFT adapter files and the native adapter archive: round trips, a PEFT file laid out by
// hand, per-slice export, strict loading errors.
#include "common.hpp"

#include <filesystem>
#include <fstream>

using namespace lora_test;
namespace fs = std::filesystem;

namespace {

// A GPT-2-shaped toy with HF's module names: transformer.wte, transformer.h.N.attn.c_attn, ...
struct GptBlockImpl : torch::nn::Module {
  explicit GptBlockImpl(int64_t d) : d(d) {
    attn = register_module("attn", torch::nn::Sequential());  // a plain container, as in HF
    c_attn = attn->register_module("c_attn", lora::LoRALinear(d, 3 * d));
    c_proj = attn->register_module("c_proj", lora::LoRALinear(d, d));
    mlp = register_module("mlp", torch::nn::Sequential());
    c_fc = mlp->register_module("c_fc", lora::LoRALinear(d, d));
  }
  torch::Tensor forward(torch::Tensor x) {
    auto qkv = c_attn(x);
    x = x + c_proj(qkv.narrow(-1, 0, d) + qkv.narrow(-1, d, d).tanh() + qkv.narrow(-1, 2 * d, d));
    return x + c_fc(x).tanh();
  }
  int64_t d;
  torch::nn::Sequential attn{nullptr}, mlp{nullptr};
  lora::LoRALinear c_attn{nullptr}, c_proj{nullptr}, c_fc{nullptr};
};
TORCH_MODULE(GptBlock);

struct GptImpl : torch::nn::Module {
  explicit GptImpl(int64_t d = 8, int64_t vocab = 11, int64_t layers = 2) : d(d), vocab(vocab), layers(layers) {
    transformer = register_module("transformer", torch::nn::Sequential());
    wte = transformer->register_module("wte", lora::LoRAEmbedding(vocab, d));
    h = transformer->register_module("h", torch::nn::ModuleList());
    for (int64_t i = 0; i < layers; ++i) h->push_back(GptBlock(d));
  }
  torch::Tensor forward(const torch::Tensor& ids) {
    auto x = wte(ids);
    for (const auto& b : *h) x = b->as<GptBlockImpl>()->forward(x);
    return x;
  }
  int64_t d, vocab, layers;
  torch::nn::Sequential transformer{nullptr};
  lora::LoRAEmbedding wte{nullptr};
  torch::nn::ModuleList h{nullptr};
};
TORCH_MODULE(Gpt);

/// A second model with the same base weights as `m` (and no adapters).
Gpt same_base(Gpt& m) {
  Gpt copy(m->d, m->vocab, m->layers);
  copy_parameters(*copy, *m);
  return copy;
}

std::vector<float> iota(size_t n, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>((i * 7) % 11) - 0.3f;
  return v;
}

}  // namespace

class AdapterFileTest : public Seeded {};

TEST_F(AdapterFileTest, SaveLoadRoundTripGivesIdenticalTensorsOutputsAndConfig) {
  Gpt m;
  lora::inject_lora(*m, lora::LoRAConfig().r(2).alpha(6).dropout(0.1).init(lora::Init::Random)
                            .target_modules({"c_attn", "wte"}).rank_pattern({{"h.1.attn.c_attn", 3}}));
  auto dir = temp_dir("roundtrip");
  lora::save_adapter(*m, dir.string(), lora::SaveAdapterOptions().base_model_name_or_path("gpt2").task_type("CAUSAL_LM"));
  auto cfg = read_json(dir / "adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["r"], 2);
  EXPECT_EQ(cfg["lora_alpha"], 6.0);
  EXPECT_EQ(cfg["lora_dropout"], 0.1);
  EXPECT_EQ(cfg["target_modules"], nlohmann::json({"wte", "c_attn"}));
  EXPECT_EQ(cfg["rank_pattern"], nlohmann::json({{"transformer.h.1.attn.c_attn", 3}}));
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["base_model_name_or_path"], "gpt2");

  auto fresh = same_base(m);
  auto report = lora::load_adapter(*fresh, dir.string());
  EXPECT_EQ(report.adapted.size(), 3u);
  EXPECT_EQ(report.trainable_params, 0) << "PEFT loads adapters frozen by default (the whole model is then frozen)";
  auto a = lora::lora_state_dict(*m), b = lora::lora_state_dict(*fresh);
  ASSERT_EQ(a.keys(), b.keys());
  for (const auto& item : a) EXPECT_TRUE(torch::equal(item.value(), b[item.key()])) << item.key();
  auto& l1 = *fresh->h[1]->as<GptBlockImpl>()->c_attn;
  EXPECT_EQ(l1.adapter_options("default").r(), 3);
  EXPECT_DOUBLE_EQ(l1.adapter_options("default").alpha(), 6.0);
  EXPECT_DOUBLE_EQ(l1.adapter_options("default").dropout(), 0.1);
  m->eval();
  fresh->eval();
  auto ids = torch::randint(0, 11, {2, 5});
  EXPECT_TRUE(torch::equal(m->forward(ids), fresh->forward(ids)));
}

TEST_F(AdapterFileTest, HandWrittenPeftFileGivesTheFormulaOutputs) {
  // As PEFT writes GPT-2 adapters (Conv1D: fan_in_fan_out true), with extra harmless keys.
  Gpt m(4, 5, 1);
  auto dir = temp_dir("hand");
  write_text(dir / "adapter_config.json", R"({
    "alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "gpt2", "bias": "none",
    "fan_in_fan_out": true, "inference_mode": true, "init_lora_weights": true, "layer_replication": null,
    "layers_pattern": null, "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 8, "lora_dropout": 0.1,
    "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null, "peft_type": "LORA", "r": 2,
    "rank_pattern": {}, "revision": null, "target_modules": ["c_attn"], "task_type": "CAUSAL_LM", "use_dora": false,
    "use_rslora": false})");
  auto A = iota(2 * 4, 0.1f), B = iota(12 * 2, 0.05f);
  // PEFT's variant that keeps the adapter name in the key is accepted too.
  write_text(dir / "adapter_model.safetensors",
             hand_file({{"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", {2, 4}, A},
                        {"base_model.model.transformer.h.0.attn.c_attn.lora_B.default.weight", {12, 2}, B}}));
  lora::load_adapter(*m, dir.string());
  m->eval();  // lora_dropout 0.1 is active in training mode
  auto& layer = *m->h[0]->as<GptBlockImpl>()->c_attn;
  auto x = torch::randn({3, 4});
  auto At = torch::from_blob(A.data(), {2, 4}).clone(), Bt = torch::from_blob(B.data(), {12, 2}).clone();
  EXPECT_LT(rel_err(layer.forward(x), reference_linear(x, layer.weight, layer.bias, At, Bt, 8.0 / 2)), 1e-6);
}

TEST_F(AdapterFileTest, PatternKeysInTheFileTakeTheFirstMatchInTheFilesOrder) {
  // Two overlapping keys, written in both orders as PEFT writes its dicts: h.0's c_attn takes the
  // first matching key of the file (PEFT's get_pattern_key), h.1's only matches "c_attn". The
  // tensors have the ranks PEFT expects, and the outputs follow the alphas PEFT would use.
  for (const bool specific_first : {false, true}) {
    Gpt m(4, 5, 2);
    auto dir = temp_dir(specific_first ? "pattern_specific" : "pattern_general");
    const std::string general_r = "\"c_attn\": 2", specific_r = "\"h.0.attn.c_attn\": 3";
    const std::string general_a = "\"c_attn\": 4", specific_a = "\"h.0.attn.c_attn\": 9";
    auto both = [&](const std::string& g, const std::string& sp) { return specific_first ? sp + ", " + g : g + ", " + sp; };
    write_text(dir / "adapter_config.json", "{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": 1, \"target_modules\": [\"c_attn\"], "
                                            "\"rank_pattern\": {" + both(general_r, specific_r) + "}, "
                                            "\"alpha_pattern\": {" + both(general_a, specific_a) + "}}");
    const int64_t r0 = specific_first ? 3 : 2, r1 = 2;
    const double a0 = specific_first ? 9 : 4, a1 = 4;
    auto A0 = iota(static_cast<size_t>(r0 * 4), 0.1f), B0 = iota(static_cast<size_t>(12 * r0), 0.05f);
    auto A1 = iota(static_cast<size_t>(r1 * 4), 0.2f), B1 = iota(static_cast<size_t>(12 * r1), 0.03f);
    write_text(dir / "adapter_model.safetensors",
               hand_file({{"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", {r0, 4}, A0},
                          {"base_model.model.transformer.h.0.attn.c_attn.lora_B.weight", {12, r0}, B0},
                          {"base_model.model.transformer.h.1.attn.c_attn.lora_A.weight", {r1, 4}, A1},
                          {"base_model.model.transformer.h.1.attn.c_attn.lora_B.weight", {12, r1}, B1}}));
    lora::load_adapter(*m, dir.string());
    m->eval();
    auto x = torch::randn({3, 4});
    auto& l0 = *m->h[0]->as<GptBlockImpl>()->c_attn;
    auto& l1 = *m->h[1]->as<GptBlockImpl>()->c_attn;
    EXPECT_LT(rel_err(l0.forward(x), reference_linear(x, l0.weight, l0.bias, torch::from_blob(A0.data(), {r0, 4}),
                                                      torch::from_blob(B0.data(), {12, r0}), a0 / double(r0))),
              1e-6)
        << "specific key first: " << specific_first;
    EXPECT_LT(rel_err(l1.forward(x), reference_linear(x, l1.weight, l1.bias, torch::from_blob(A1.data(), {r1, 4}),
                                                      torch::from_blob(B1.data(), {12, r1}), a1 / double(r1))),
              1e-6);
    // Saved and read back: the same ranks and scalings.
    auto out = temp_dir(specific_first ? "pattern_specific_out" : "pattern_general_out");
    lora::save_adapter(*m, out.string());
    Gpt back = same_base(m);
    lora::load_adapter(*back, out.string());
    EXPECT_EQ(back->h[0]->as<GptBlockImpl>()->c_attn->adapter_options("default").r(), r0);
    EXPECT_DOUBLE_EQ(back->h[0]->as<GptBlockImpl>()->c_attn->scaling("default"), a0 / double(r0));
    EXPECT_DOUBLE_EQ(back->h[1]->as<GptBlockImpl>()->c_attn->scaling("default"), a1 / double(r1));
    lora_test::remove_tree(dir.string());
    lora_test::remove_tree(out.string());
  }
}

TEST_F(AdapterFileTest, SliceAdaptersExportAsEquivalentRank2rAdapter) {
  for (bool rslora : {false, true}) {
    Gpt m(4, 5, 1);
    lora::inject_lora(*m, lora::LoRAConfig().r(2).alpha(8).use_rslora(rslora).init(lora::Init::Random)
                              .target_modules({"c_attn"}).enable_lora({{"c_attn", {true, false, true}}}));
    auto dir = temp_dir("slices");
    lora::save_adapter(*m, dir.string());
    auto cfg = read_json(dir / "adapter_config.json");
    EXPECT_EQ(cfg["r"], 4);
    EXPECT_DOUBLE_EQ(cfg["lora_alpha"].get<double>(), rslora ? 8.0 * std::sqrt(2.0) : 16.0);
    auto B = lora::load_safetensors((dir / "adapter_model.safetensors").string())
                 ["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"];
    ASSERT_EQ(B.sizes(), torch::IntArrayRef({12, 4}));
    EXPECT_TRUE(torch::equal(B.slice(0, 4, 8), torch::zeros({4, 4}))) << "k rows stay zero";
    EXPECT_TRUE(torch::equal(B.slice(0, 0, 4).slice(1, 2, 4), torch::zeros({4, 2}))) << "q rows use only q's rank block";
    auto fresh = same_base(m);
    lora::load_adapter(*fresh, dir.string());
    auto& full = *fresh->h[0]->as<GptBlockImpl>()->c_attn;
    EXPECT_TRUE(full.adapter_options("default").enable().empty());
    auto x = torch::randn({3, 4});
    EXPECT_LT(rel_err(full.forward(x), m->h[0]->as<GptBlockImpl>()->c_attn->forward(x)), 1e-6) << "rslora=" << rslora;
  }
}

TEST_F(AdapterFileTest, NameMapRenamesBothWays) {
  Gpt m(4, 5, 1);
  lora::inject_lora(*m, lora::LoRAConfig().r(2).init(lora::Init::Random).target_modules({"c_fc"}));
  lora::NameMap names{[](const std::string& p) { return "model." + p.substr(std::string("transformer.").size()); },
                      [](const std::string& f) { return "transformer." + f.substr(std::string("model.").size()); }};
  auto dir = temp_dir("names");
  lora::save_adapter(*m, dir.string(), lora::SaveAdapterOptions().name_map(names));
  auto file = lora::load_safetensors((dir / "adapter_model.safetensors").string());
  EXPECT_TRUE(file.contains("base_model.model.model.h.0.mlp.c_fc.lora_A.weight"));
  auto fresh = same_base(m);
  EXPECT_NE(error_of<std::runtime_error>([&] { lora::load_adapter(*fresh, dir.string()); }).find("not a LoRA-capable layer"),
            std::string::npos);
  lora::load_adapter(*fresh, dir.string(), lora::LoadAdapterOptions().name_map(names));
  EXPECT_TRUE(torch::equal(fresh->h[0]->as<GptBlockImpl>()->c_fc->lora_B("default"), m->h[0]->as<GptBlockImpl>()->c_fc->lora_B("default")));
}

TEST_F(AdapterFileTest, StrictLoadingErrorsNameTheCause) {
  Gpt src(4, 5, 2);
  lora::inject_lora(*src, lora::LoRAConfig().r(2).init(lora::Init::Random).target_modules({"c_attn"}));
  auto good = temp_dir("good");
  lora::save_adapter(*src, good.string());
  const auto st_bytes = [&] {
    std::ifstream in(good / "adapter_model.safetensors", std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }();
  const auto cfg = read_json(good / "adapter_config.json");

  auto expect_error = [&](const std::string& what, const nlohmann::json& config, const std::string& tensors, Gpt target = Gpt(4, 5, 2)) {
    auto dir = temp_dir("bad");
    write_text(dir / "adapter_config.json", config.dump());
    if (!tensors.empty()) write_text(dir / "adapter_model.safetensors", tensors);
    const auto before = lora::lora_state_dict(*target).size();
    auto msg = error_of<std::runtime_error>([&] { lora::load_adapter(*target, dir.string()); });
    EXPECT_NE(msg.find(what), std::string::npos) << "expected '" << what << "', got '" << msg << "'";
    EXPECT_EQ(lora::lora_state_dict(*target).size(), before) << "a failed load changes nothing";
  };
  auto with = [&](const char* key, nlohmann::json v) {
    auto c = cfg;
    c[key] = v;
    return c;
  };
  expect_error("key 'lora_bias' has a non-default value (true)", with("lora_bias", true), st_bytes);
  expect_error("modules_to_save names 'lm_head', which is no module of this model", with("modules_to_save", {"lm_head"}), st_bytes);
  expect_error("key 'modules_to_save' must be a list", with("modules_to_save", "lm_head"), st_bytes);
  expect_error("key 'brand_new_knob' has a non-default value", with("brand_new_knob", 3), st_bytes);
  expect_error("must be \"LORA\"", with("peft_type", "IA3"), st_bytes);
  expect_error("was this adapter trained with r=2? adapter_config.json says r=4", with("r", 4), st_bytes);
  expect_error("not found", cfg, "");
  expect_error("selects: truncated file", with("target_modules", {"c_attn", "c_fc"}), st_bytes);
  expect_error("has tensors but adapter_config.json's target_modules does not select it", with("target_modules", {"h.0.attn.c_attn"}), st_bytes);
  // A file for a model with another width: the in_features differ.
  Gpt wide(6, 5, 2);
  lora::inject_lora(*wide, lora::LoRAConfig().r(2).target_modules({"c_attn"}));
  auto wdir = temp_dir("wide");
  lora::save_adapter(*wide, wdir.string());
  std::ifstream win(wdir / "adapter_model.safetensors", std::ios::binary);
  expect_error("has shape [2,6], expected [2,4]: different base model?", cfg,
               std::string((std::istreambuf_iterator<char>(win)), std::istreambuf_iterator<char>()));
  // Tensors for a module the model does not have, and a module with only A.
  auto A = iota(8, 0.1f);
  expect_error("belongs to module 'transformer.h.7.attn.c_attn', which is not a LoRA-capable layer",
               with("target_modules", nullptr), hand_file({{"base_model.model.transformer.h.7.attn.c_attn.lora_A.weight", {2, 4}, A}}));
  expect_error("has only its lora_A tensor", with("target_modules", nullptr),
               hand_file({{"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", {2, 4}, A}}));
  expect_error("are both lora_A of module 'transformer.h.0.attn.c_attn'", with("target_modules", nullptr),
               hand_file({{"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", {2, 4}, A},
                          {"base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight", {2, 4}, A}}));
  expect_error("does not start with 'base_model.model.'", with("target_modules", nullptr), hand_file({{"lora_A.weight", {2, 4}, A}}));
  // The key form names the layer kind: an embedding adapter's keys on a Linear module.
  expect_error("has the key form of an Embedding adapter but module 'transformer.h.0.attn.c_attn' is LoRALinear(in_features=4",
               with("target_modules", nullptr),
               hand_file({{"base_model.model.transformer.h.0.attn.c_attn.lora_embedding_A", {2, 4}, A}}));
  expect_error("is not a LoRA A/B tensor", with("target_modules", nullptr),
               hand_file({{"base_model.model.transformer.h.0.attn.c_attn.modules_to_save.default.weight", {2, 4}, A}}));
  // A pickle-only folder.
  auto bin = temp_dir("bin");
  write_text(bin / "adapter_config.json", cfg.dump());
  write_text(bin / "adapter_model.bin", "PK");
  Gpt m;
  EXPECT_NE(error_of<std::runtime_error>([&] { lora::load_adapter(*m, bin.string()); }).find("only the pickle adapter_model.bin"),
            std::string::npos);
}

TEST_F(AdapterFileTest, ExistingAdapterNameIsAnErrorOrReplaced) {
  Gpt m(4, 5, 1);
  lora::inject_lora(*m, lora::LoRAConfig().r(2).init(lora::Init::Random).target_modules({"c_attn"}));
  auto dir = temp_dir("exists");
  lora::save_adapter(*m, dir.string());
  auto msg = error_of<std::runtime_error>([&] { lora::load_adapter(*m, dir.string()); });
  EXPECT_NE(msg.find("already has adapter 'default'"), std::string::npos) << msg;
  auto& layer = *m->h[0]->as<GptBlockImpl>()->c_attn;
  auto saved_B = layer.lora_B("default").detach().clone();
  {
    torch::NoGradGuard g;
    layer.lora_B("default").zero_();
  }
  lora::load_adapter(*m, dir.string(), lora::LoadAdapterOptions().if_exists(lora::IfExists::Replace).trainable(true));
  EXPECT_TRUE(torch::equal(layer.lora_B("default"), saved_B));
  EXPECT_TRUE(layer.lora_B("default").requires_grad());
  EXPECT_FALSE(layer.weight.requires_grad());
  lora::load_adapter(*m, dir.string(), lora::LoadAdapterOptions().adapter_name("copy").activate(false).dtype(torch::kDouble));
  EXPECT_EQ(layer.lora_A("copy").scalar_type(), torch::kDouble);
  EXPECT_EQ(layer.active_adapters(), std::vector<std::string>{"default"});
}

TEST_F(AdapterFileTest, BiasesTravelWithTheAdapterWhenAsked) {
  Gpt m(4, 5, 1);
  lora::inject_lora(*m, lora::LoRAConfig().r(2).target_modules({"c_proj"}).bias(lora::Bias::LoraOnly));
  auto& layer = *m->h[0]->as<GptBlockImpl>()->c_proj;
  auto fresh = same_base(m);
  {
    torch::NoGradGuard g;
    layer.bias.add_(1.0);
  }
  auto dir = temp_dir("bias");
  lora::save_adapter(*m, dir.string(), lora::SaveAdapterOptions().bias(lora::Bias::LoraOnly));
  EXPECT_EQ(read_json(dir / "adapter_config.json")["bias"], "lora_only");
  lora::load_adapter(*fresh, dir.string());
  EXPECT_TRUE(torch::equal(fresh->h[0]->as<GptBlockImpl>()->c_proj->bias, layer.bias));
}

namespace {

// The toy with a sequence-classification head as HF names it (classifier.dense, classifier.out_proj).
struct ClassifierImpl : torch::nn::Module {
  explicit ClassifierImpl(int64_t labels = 3) : body(4, 5, 1) {
    register_module("transformer", body->transformer);
    classifier = register_module("classifier", torch::nn::Sequential());
    dense = classifier->register_module("dense", torch::nn::Linear(4, 4));
    out_proj = classifier->register_module("out_proj", torch::nn::Linear(4, labels));
  }
  Gpt body;
  torch::nn::Sequential classifier{nullptr};
  torch::nn::Linear dense{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(Classifier);

}  // namespace

TEST_F(AdapterFileTest, ModulesToSaveTravelAsPeftSavesThem) {
  // A file as PEFT writes a SEQ_CLS adapter: the head's tensors under base_model.model.classifier.*.
  auto dir = temp_dir("seqcls");
  write_text(dir / "adapter_config.json", R"({"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 2, "lora_alpha": 4,
    "target_modules": ["c_attn"], "modules_to_save": ["classifier"], "bias": "none"})");
  const auto A = iota(2 * 4, 0.1f), B = iota(12 * 2, 0.05f), dw = iota(16, 0.02f), db = iota(4, 0.3f), ow = iota(12, 0.04f),
             ob = iota(3, 0.5f);
  const std::vector<std::tuple<std::string, std::vector<int64_t>, std::vector<float>>> tensors{
      {"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", {2, 4}, A},
      {"base_model.model.transformer.h.0.attn.c_attn.lora_B.weight", {12, 2}, B},
      {"base_model.model.classifier.dense.weight", {4, 4}, dw},
      {"base_model.model.classifier.dense.bias", {4}, db},
      {"base_model.model.classifier.out_proj.weight", {3, 4}, ow},
      {"base_model.model.classifier.out_proj.bias", {3}, ob}};
  write_text(dir / "adapter_model.safetensors", hand_file(tensors));
  Classifier m;
  const auto before = m->body->transformer->named_parameters().values();
  lora::load_adapter(*m, dir.string(), lora::LoadAdapterOptions().trainable(true));
  auto as_tensor = [](const std::vector<float>& v, std::vector<int64_t> shape) {
    return torch::from_blob(const_cast<float*>(v.data()), shape).clone();
  };
  EXPECT_TRUE(torch::equal(m->dense->weight, as_tensor(dw, {4, 4})));
  EXPECT_TRUE(torch::equal(m->dense->bias, as_tensor(db, {4})));
  EXPECT_TRUE(torch::equal(m->out_proj->weight, as_tensor(ow, {3, 4})));
  EXPECT_TRUE(torch::equal(m->out_proj->bias, as_tensor(ob, {3})));
  for (const auto& p : m->named_parameters())
    EXPECT_EQ(p.value().requires_grad(), p.key().rfind("classifier.", 0) == 0 || p.key().find("lora_") != std::string::npos)
        << p.key() << ": the adapter and the saved head train, nothing else";

  // Saved back, the file holds the same keys and values, and the config lists the module.
  auto out = temp_dir("seqcls_out");
  lora::save_adapter(*m, out.string(), lora::SaveAdapterOptions().task_type("SEQ_CLS").modules_to_save({"classifier"}));
  EXPECT_EQ(read_json(out / "adapter_config.json")["modules_to_save"], nlohmann::json({"classifier"}));
  const auto saved = lora::load_safetensors((out / "adapter_model.safetensors").string());
  ASSERT_EQ(saved.size(), tensors.size());
  for (const auto& [key, shape, values] : tensors)
    EXPECT_TRUE(torch::equal(saved[key], as_tensor(values, shape))) << key;

  // A head for another number of labels is refused by name, or left out on request (the MNLI start).
  Classifier two(2);
  auto msg = error_of<std::runtime_error>([&] { lora::load_adapter(*two, dir.string()); });
  EXPECT_NE(msg.find("'base_model.model.classifier.out_proj.weight' has shape [3,4], the model's 'classifier.out_proj.weight' "
                     "has shape [2,4]: a head for another number of labels"), std::string::npos) << msg;
  EXPECT_TRUE(lora::lora_state_dict(*two).is_empty()) << "a failed load changes nothing";
  const auto head = two->out_proj->weight.clone();
  lora::load_adapter(*two, dir.string(), lora::LoadAdapterOptions().load_modules_to_save(false));
  EXPECT_TRUE(torch::equal(two->out_proj->weight, head));
  EXPECT_TRUE(torch::equal(two->body->h[0]->as<GptBlockImpl>()->c_attn->lora_B("default"), as_tensor(B, {12, 2})));

  // A head tensor missing from the file, and a name that selects no module.
  auto part = temp_dir("seqcls_part");
  fs::copy_file(dir / "adapter_config.json", part / "adapter_config.json");
  write_text(part / "adapter_model.safetensors", hand_file({tensors.begin(), tensors.end() - 1}));
  Classifier c3;
  msg = error_of<std::runtime_error>([&] { lora::load_adapter(*c3, part.string()); });
  EXPECT_NE(msg.find("has no tensor for 'classifier.out_proj.bias' of module 'classifier', which adapter_config.json's "
                     "modules_to_save lists"), std::string::npos) << msg;
  // The same head tensor twice (PEFT's copy prefix is read too).
  auto twice = temp_dir("seqcls_twice");
  fs::copy_file(dir / "adapter_config.json", twice / "adapter_config.json");
  auto doubled = tensors;
  doubled.emplace_back("base_model.model.classifier.modules_to_save.default.out_proj.bias", std::vector<int64_t>{3}, ob);
  write_text(twice / "adapter_model.safetensors", hand_file(doubled));
  msg = error_of<std::runtime_error>([&] { lora::load_adapter(*c3, twice.string()); });
  EXPECT_NE(msg.find("are both 'classifier.out_proj.bias' of modules_to_save"), std::string::npos) << msg;
  msg = error_of<std::invalid_argument>(
      [&] { lora::save_adapter(*m, out.string(), lora::SaveAdapterOptions().modules_to_save({"score"})); });
  EXPECT_NE(msg.find("modules_to_save names 'score', which is no module of this model"), std::string::npos) << msg;
}

TEST_F(AdapterFileTest, NativeArchiveRoundTripAndStrictness) {
  Gpt m(4, 5, 1);
  auto cfg = lora::LoRAConfig().r(2).init(lora::Init::Random).target_modules({"c_attn", "c_fc"});
  lora::inject_lora(*m, cfg);
  auto dir = temp_dir("native");
  const auto path = (dir / "lora.pt").string();
  lora::save_lora_state(*m, path);
  auto fresh = same_base(m);
  lora::inject_lora(*fresh, cfg);
  lora::load_lora_state(*fresh, path);
  auto a = lora::lora_state_dict(*m), b = lora::lora_state_dict(*fresh);
  for (const auto& item : a) EXPECT_TRUE(torch::equal(item.value(), b[item.key()])) << item.key();

  Gpt other_r(4, 5, 1);
  lora::inject_lora(*other_r, lora::LoRAConfig().r(3).target_modules({"c_attn", "c_fc"}));
  auto msg = error_of<std::runtime_error>([&] { lora::load_lora_state(*other_r, path); });
  EXPECT_NE(msg.find("has shape [2,4], the model expects [3,4]"), std::string::npos) << msg;
  Gpt fewer(4, 5, 1);
  lora::inject_lora(*fewer, lora::LoRAConfig().r(2).target_modules({"c_attn"}));
  msg = error_of<std::runtime_error>([&] { lora::load_lora_state(*fewer, path); });
  EXPECT_NE(msg.find("unexpected transformer.h.0.mlp.c_fc.lora_A.default.weight"), std::string::npos) << msg;
  fs::resize_file(path, fs::file_size(path) / 2);
  msg = error_of<std::runtime_error>([&] { lora::load_lora_state(*fresh, path); });
  EXPECT_NE(msg.find("is not a LibTorch archive"), std::string::npos) << msg;
}

TEST_F(AdapterFileTest, RegexInjectionSavesTargetsThatSelectExactlyTheAdaptedModules) {
  // One selector serves inject_lora, save_adapter's shortening of target_modules and load_adapter.
  Gpt m;
  const auto report = lora::inject_lora(*m, lora::LoRAConfig().r(2).init(lora::Init::Random).target_regex(R"(.*\.h\.1\..*c_(attn|fc))"));
  ASSERT_EQ(report.adapted, (std::vector<std::string>{"transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_fc"}));
  const auto dir = temp_dir("regex_targets");
  lora::save_adapter(*m, dir.string());
  const auto cfg = read_json(dir / "adapter_config.json");
  // Suffixes "c_attn"/"c_fc" would also select layer 0's modules: the file must list full names.
  const lora::TargetSelector saved(cfg["target_modules"].get<std::vector<std::string>>(), "");
  for (const auto& item : lora::detail::visible_modules(*m)) {
    const bool adapted = std::find(report.adapted.begin(), report.adapted.end(), item.first) != report.adapted.end();
    EXPECT_EQ(saved.selects(item.first), adapted) << item.first;
  }
  auto other = same_base(m);
  lora::load_adapter(*other, dir.string());
  auto ids = torch::randint(0, 11, {2, 5});
  m->eval();
  other->eval();
  EXPECT_TRUE(torch::allclose(other->forward(ids), m->forward(ids)));
  lora_test::remove_tree(dir.string());
}
