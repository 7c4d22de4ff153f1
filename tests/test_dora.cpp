// DoRA (dora.hpp): the forward, gradients, dropout form, merge, files and refusals, each
// against DoRA's formula written out here in float64 (PEFT's semantics: the norm per output
// feature, detached).
#include "common.hpp"

#include <lora/dora.hpp>

using namespace lora_test;

namespace {

::testing::AssertionResult has(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

torch::Tensor d64(const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kDouble); }

/// B of a slice-masked adapter placed on its output slices, zero elsewhere, built here by hand.
torch::Tensor expand_slices(const torch::Tensor& B, const std::vector<bool>& enable, int64_t out) {
  if (enable.empty()) return B;
  const int64_t n = static_cast<int64_t>(enable.size()), slice = out / n, r = B.size(1);
  std::vector<torch::Tensor> cols;
  int64_t block = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (!enable[j]) continue;
    std::vector<torch::Tensor> pieces;  // down the output axis: block `block` of B on slice j, zero elsewhere
    for (int64_t i = 0; i < n; ++i)
      pieces.push_back(i == j ? B.narrow(0, block * slice, slice) : torch::zeros({slice, r}, B.options()));
    cols.push_back(torch::cat(pieces, 0));
    ++block;
  }
  return torch::cat(cols, 1);
}

/// DoRA's scale m/‖W0 + s·B·A‖ per output row (float64), with m given for the `rows` adapted
/// (all when empty) and scale 1 elsewhere; the norm is detached.
torch::Tensor dora_scale(const torch::Tensor& W0, const torch::Tensor& A, const torch::Tensor& Bfull, double s,
                         const torch::Tensor& m, const std::vector<int64_t>& rows) {
  const torch::Tensor n = (W0 + s * Bfull.mm(A)).detach().pow(2).sum(1).sqrt();
  if (rows.empty()) return m / n;
  std::vector<torch::Tensor> per_row;
  for (int64_t j = 0; j < n.size(0); ++j) {
    const auto it = std::find(rows.begin(), rows.end(), j);
    per_row.push_back(it == rows.end() ? torch::ones({}, n.options()) : m[it - rows.begin()] / n[j]);
  }
  return torch::stack(per_row);
}

std::vector<int64_t> enabled_rows(const std::vector<bool>& enable, int64_t out) {
  std::vector<int64_t> rows;
  const int64_t n = enable.empty() ? 1 : static_cast<int64_t>(enable.size());
  for (int64_t j = 0; j < n && !enable.empty(); ++j)
    if (enable[j])
      for (int64_t i = j * out / n; i < (j + 1) * out / n; ++i) rows.push_back(i);
  return rows;
}

torch::Tensor& magnitude(lora::LoRALayer& layer, const std::string& name = "default") {
  auto* dora = dynamic_cast<lora::DoRAImpl*>(layer.variant(name));
  EXPECT_NE(dora, nullptr);
  return dora->weight;
}

/// Gives every magnitude of `model` a random positive factor, so that m ≠ ‖W‖.
void perturb_magnitudes(torch::nn::Module& model) {
  torch::NoGradGuard g;
  for (auto& p : model.named_parameters())
    if (p.key().find("lora_magnitude_vector") != std::string::npos) p.value().mul_(torch::rand_like(p.value()) + 0.5);
}

/// A second TinyTransformer with the same base weights as `m` (and no adapters).
TinyTransformer same_base(TinyTransformer& m) {
  TinyTransformer copy(m->vocab, m->d, m->layers);
  copy_parameters(*copy, *m);
  return copy;
}

}  // namespace

class DoRALinearTest : public Seeded, public ::testing::WithParamInterface<std::vector<bool>> {};

TEST_P(DoRALinearTest, ForwardMatchesTheFloat64Formula) {
  const auto enable = GetParam();
  lora::LoRALinear layer(6, 12);
  layer->add_adapter("default", lora::AdapterOptions(2).alpha(3).init(lora::Init::Random).use_dora(true).enable(enable));
  layer->set_active_adapters({"default"});
  const auto rows = enabled_rows(enable, 12);
  EXPECT_EQ(magnitude(*layer).numel(), rows.empty() ? 12 : static_cast<int64_t>(rows.size()));
  perturb_magnitudes(*layer);
  layer->eval();
  auto x = torch::randn({2, 3, 6});
  const double s = 3.0 / 2;
  auto Bfull = expand_slices(d64(layer->lora_B("default")), enable, 12);
  auto scale = dora_scale(d64(layer->weight), d64(layer->lora_A("default")), Bfull, s, d64(magnitude(*layer)), rows);
  auto W = scale.unsqueeze(1) * (d64(layer->weight) + s * Bfull.mm(d64(layer->lora_A("default"))));
  auto want = torch::matmul(d64(x), W.t()) + d64(layer->bias);
  auto y = layer(x);
  EXPECT_LT(rel_err(y, want), 1e-6);
  // The outputs of a disabled slice stay the base's, bit for bit.
  auto base = torch::nn::functional::linear(x, layer->weight, layer->bias);
  for (int64_t j = 0; j < 12; ++j) {
    if (!rows.empty() && std::find(rows.begin(), rows.end(), j) == rows.end()) {
      EXPECT_TRUE(torch::equal(y.select(-1, j), base.select(-1, j))) << "feature " << j;
    }
  }
}

TEST_P(DoRALinearTest, StartsAtTheBaseWithTheMagnitudeOfW0) {
  lora::LoRALinear layer(6, 12);
  layer->add_adapter("default", lora::AdapterOptions(2).alpha(3).use_dora(true).enable(GetParam()));
  layer->set_active_adapters({"default"});
  auto norms = d64(layer->weight).pow(2).sum(1).sqrt();
  const auto rows = enabled_rows(GetParam(), 12);
  auto want = rows.empty() ? norms : norms.index_select(0, torch::tensor(rows));
  EXPECT_LT(rel_err(magnitude(*layer), want), 1e-6);
  auto x = torch::randn({4, 6});
  EXPECT_LT(rel_err(layer(x), torch::nn::functional::linear(x, layer->weight, layer->bias)), 1e-6);
}

TEST_P(DoRALinearTest, GradientsMatchTheFormulaAndFiniteDifferences) {
  const auto enable = GetParam();
  lora::LoRALinear layer(6, 12);
  layer->to(torch::kDouble);
  layer->add_adapter("default", lora::AdapterOptions(2).alpha(3).dtype(torch::kDouble).init(lora::Init::Random).use_dora(true).enable(enable));
  layer->set_active_adapters({"default"});
  perturb_magnitudes(*layer);
  const auto rows = enabled_rows(enable, 12);
  const double s = 1.5;
  auto x = torch::randn({5, 6}, torch::kDouble).requires_grad_(true);
  auto G = torch::randn({5, 12}, torch::kDouble);  // a dense upstream gradient
  auto& m = magnitude(*layer);
  (layer(x) * G).sum().backward();

  // The formula with stock autograd on copies: y = (m/n) ⊙ (x·W0ᵀ + s·x·Aᵀ·Bᵀ) + b, n detached.
  auto A = layer->lora_A("default").detach().clone().requires_grad_(true);
  auto B = layer->lora_B("default").detach().clone().requires_grad_(true);
  auto mr = m.detach().clone().requires_grad_(true);
  auto xr = x.detach().clone().requires_grad_(true);
  auto Bfull = expand_slices(B, enable, 12);
  auto scale = dora_scale(layer->weight.detach(), A, Bfull, s, mr, rows);
  auto y = scale * (xr.mm(layer->weight.detach().t()) + s * xr.mm(A.t()).mm(Bfull.t())) + layer->bias.detach();
  (y * G).sum().backward();
  EXPECT_LT(rel_err(layer->lora_A("default").grad(), A.grad()), 1e-10);
  EXPECT_LT(rel_err(layer->lora_B("default").grad(), B.grad()), 1e-10);
  EXPECT_LT(rel_err(m.grad(), mr.grad()), 1e-10);
  EXPECT_LT(rel_err(x.grad(), xr.grad()), 1e-10);

  // m and x do not enter the (detached) norm, so finite differences of the layer give their gradients.
  auto loss = [&] { return (layer(x) * G).sum(); };
  EXPECT_LT(rel_err(m.grad(), numeric_gradient(m.detach(), loss)), 1e-6);
  EXPECT_LT(rel_err(x.grad(), numeric_gradient(x.detach(), loss)), 1e-6);
}

TEST_P(DoRALinearTest, DropoutInTrainingFollowsPeftsForm) {
  const auto enable = GetParam();
  lora::LoRALinear layer(6, 12);
  layer->add_adapter("default", lora::AdapterOptions(2).alpha(3).dropout(0.5).init(lora::Init::Random).use_dora(true).enable(enable));
  layer->set_active_adapters({"default"});
  perturb_magnitudes(*layer);
  layer->train();
  auto x = torch::randn({7, 6});
  torch::manual_seed(7);
  auto y = layer(x);
  torch::manual_seed(7);
  auto xd = d64(torch::dropout(x, 0.5, /*train=*/true));  // the same draw the layer made
  const double s = 1.5;
  auto W0 = d64(layer->weight), A = d64(layer->lora_A("default"));
  auto Bfull = expand_slices(d64(layer->lora_B("default")), enable, 12);
  auto scale = dora_scale(W0, A, Bfull, s, d64(magnitude(*layer)), enabled_rows(enable, 12));
  // y = x·W0ᵀ + b + (m/n − 1) ⊙ (x'·W0ᵀ) + (m/n) ⊙ s·x'·Aᵀ·Bᵀ
  auto want = d64(x).mm(W0.t()) + d64(layer->bias) + (scale - 1) * xd.mm(W0.t()) + scale * s * xd.mm(A.t()).mm(Bfull.t());
  EXPECT_LT(rel_err(y, want), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(WholeAndSlices, DoRALinearTest,
                         ::testing::Values(std::vector<bool>{}, std::vector<bool>{true, false, true}),
                         [](const auto& info) { return info.param.empty() ? std::string("Whole") : std::string("Slices"); });

class DoRAMergeTest : public Seeded, public ::testing::WithParamInterface<torch::Dtype> {};

TEST_P(DoRAMergeTest, MergedEqualsUnmergedAndUnmergeRestoresW0Exactly) {
  const auto dtype = GetParam();
  const double tol = dtype == torch::kFloat32 ? 1e-5 : 3e-2;
  lora::LoRALinear layer(16, 12);
  layer->to(dtype);
  layer->add_adapter("default", lora::AdapterOptions(4).alpha(8).init(lora::Init::Random).use_dora(true));
  layer->set_active_adapters({"default"});
  perturb_magnitudes(*layer);
  layer->eval();
  auto x = torch::randn({5, 16}).to(dtype);
  const auto W0 = layer->weight.detach().clone();
  auto A = d64(layer->lora_A("default")), Bd = d64(layer->lora_B("default"));
  auto scale = dora_scale(d64(W0), A, Bd, 2.0, d64(magnitude(*layer)), {});
  auto W = scale.unsqueeze(1) * (d64(W0) + 2.0 * Bd.mm(A));
  EXPECT_LT(rel_err(layer->delta_weight("default"), W - d64(W0)), dtype == torch::kFloat32 ? 1e-5 : 1e-2);
  const bool runs = dtype != torch::kHalf;  // LibTorch 1.13 has no fp16 GEMM on the CPU: weights only
  auto forward = [&] { return runs ? layer(x) : torch::zeros({1}); };
  auto unmerged = forward();
  layer->merge();
  EXPECT_LT(rel_err(layer->weight, W), tol);
  if (runs) {
    EXPECT_LT(rel_err(layer(x), unmerged), tol);
  }
  layer->unmerge();
  EXPECT_TRUE(torch::equal(layer->weight, W0));
  EXPECT_TRUE(torch::equal(forward(), unmerged));
  layer->merge(/*safe=*/false, /*keep_copy=*/false);
  layer->unload();
  EXPECT_EQ(layer->named_parameters().size(), 2u);  // weight and bias: a plain Linear
  EXPECT_LT(rel_err(layer->weight, W), tol);
  if (runs) {
    EXPECT_LT(rel_err(layer(x), unmerged), tol);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, DoRAMergeTest, ::testing::Values(torch::kFloat32, torch::kBFloat16, torch::kFloat16),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

class DoRATest : public Seeded {};

TEST_F(DoRATest, EmbeddingNormsRunOverTheVocabularyAsInPeft) {
  lora::LoRAEmbedding layer(9, 5);
  layer->add_adapter("default", lora::AdapterOptions(2).alpha(4).init(lora::Init::Random).use_dora(true));
  layer->set_active_adapters({"default"});
  EXPECT_EQ(magnitude(*layer).numel(), 5);
  perturb_magnitudes(*layer);
  layer->eval();
  auto ids = torch::tensor({{1, 8, 3}, {0, 0, 5}});
  // ΔE = s·(B·A)ᵀ [num, dim]; n: the norm of each of E + ΔE's columns; E' = (m/n) ⊙ (E + ΔE).
  auto V = d64(layer->weight) + 2.0 * d64(layer->lora_B("default")).mm(d64(layer->lora_A("default"))).t();
  auto E = (d64(magnitude(*layer)) / V.pow(2).sum(0).sqrt()) * V;
  auto want = E.index_select(0, ids.reshape({-1})).view({2, 3, 5});
  EXPECT_LT(rel_err(layer(ids), want), 1e-6);
  layer->merge();
  EXPECT_LT(rel_err(layer->weight, E), 1e-6);
  EXPECT_LT(rel_err(layer(ids), want), 1e-6);
}

TEST_F(DoRATest, PeftFileRoundTripKeepsTheMagnitudesUnderPeftsKeys) {
  TinyTransformer m(17, 8, 2);
  lora::inject_lora(*m, lora::LoRAConfig().r(2).alpha(4).init(lora::Init::Random).target_modules({"q", "v", "emb"}).use_dora(true));
  perturb_magnitudes(*m);
  m->eval();
  auto ids = torch::randint(0, 17, {2, 5});
  auto want = m(ids);
  auto dir = temp_dir("dora_roundtrip");
  lora::save_adapter(*m, dir.string());
  EXPECT_EQ(read_json(dir / "adapter_config.json")["use_dora"], true);
  auto file = lora::load_safetensors((dir / "adapter_model.safetensors").string());
  const std::string key = "base_model.model.blocks.1.attn.v.lora_magnitude_vector";
  ASSERT_TRUE(file.contains(key));
  EXPECT_TRUE(torch::equal(file[key], magnitude(*m->blocks[1]->as<BlockImpl>()->attn->v)));
  EXPECT_EQ(file["base_model.model.emb.lora_magnitude_vector"].sizes(), torch::IntArrayRef({8}));
  EXPECT_EQ(file.size(), 5u * 3u);  // A, B and m of 5 layers

  auto fresh = same_base(m);
  lora::load_adapter(*fresh, dir.string());
  fresh->eval();
  EXPECT_TRUE(torch::equal(fresh(ids), want));
  remove_tree(dir.string());
}

TEST_F(DoRATest, SliceAdapterSavesItsWholeLayerFormWithScaleOneOffTheSlices) {
  TinyTransformer m(17, 8, 1);
  lora::inject_lora(*m, lora::LoRAConfig().r(2).alpha(4).init(lora::Init::Random).target_modules({"q"})
                            .enable_lora({{"q", {true, false}}}).use_dora(true));
  auto& q = *m->blocks[0]->as<BlockImpl>()->attn->q;
  EXPECT_EQ(magnitude(q).numel(), 4);
  perturb_magnitudes(*m);
  m->eval();
  auto ids = torch::randint(0, 17, {2, 5});
  auto want = m(ids);
  auto dir = temp_dir("dora_slices");
  lora::save_adapter(*m, dir.string());
  auto file = lora::load_safetensors((dir / "adapter_model.safetensors").string());
  auto mag = file["base_model.model.blocks.0.attn.q.lora_magnitude_vector"];
  ASSERT_EQ(mag.sizes(), torch::IntArrayRef({8}));
  EXPECT_TRUE(torch::equal(mag.narrow(0, 0, 4), magnitude(q)));
  EXPECT_LT(rel_err(mag.narrow(0, 4, 4), d64(q.weight).narrow(0, 4, 4).pow(2).sum(1).sqrt()), 1e-6);  // ‖W0‖: scale 1

  auto fresh = same_base(m);
  lora::load_adapter(*fresh, dir.string());
  fresh->eval();
  EXPECT_LT(rel_err(fresh(ids), want), 1e-5);
  remove_tree(dir.string());
}

TEST_F(DoRATest, HandWrittenPeftDoRAFileGivesTheFormulaOutputs) {
  TinyTransformer m(17, 8, 1);
  auto dir = temp_dir("dora_hand");
  write_text(dir / "adapter_config.json",
             R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q"], "use_dora": true, "use_rslora": false,
                 "lora_dropout": 0.05, "bias": "none", "fan_in_fan_out": false, "rank_pattern": {}, "alpha_pattern": {}})");
  std::vector<float> A(16), B(16), mag(8);
  for (int i = 0; i < 16; ++i) A[i] = 0.1f * static_cast<float>((i * 5) % 7) - 0.3f, B[i] = 0.05f * static_cast<float>((i * 3) % 5);
  for (int i = 0; i < 8; ++i) mag[i] = 0.5f + 0.25f * static_cast<float>(i);
  write_text(dir / "adapter_model.safetensors",
             hand_file({{"base_model.model.blocks.0.attn.q.lora_A.weight", {2, 8}, A},
                        {"base_model.model.blocks.0.attn.q.lora_B.weight", {8, 2}, B},
                        {"base_model.model.blocks.0.attn.q.lora_magnitude_vector", {8}, mag}}));
  lora::load_adapter(*m, dir.string());
  m->eval();
  auto& q = *m->blocks[0]->as<BlockImpl>()->attn->q;
  auto At = d64(torch::from_blob(A.data(), {2, 8})), Bt = d64(torch::from_blob(B.data(), {8, 2}));
  auto scale = dora_scale(d64(q.weight), At, Bt, 2.0, d64(torch::from_blob(mag.data(), {8})), {});
  auto x = torch::randn({3, 8});
  auto want = scale * (d64(x).mm(d64(q.weight).t()) + 2.0 * d64(x).mm(At.t()).mm(Bt.t())) + d64(q.bias);
  EXPECT_LT(rel_err(q.forward(x), want), 1e-6);
  remove_tree(dir.string());
}

TEST_F(DoRATest, FilesWhoseFlagAndTensorsDisagreeAreRefusedAndChangeNothing) {
  TinyTransformer m(17, 8, 1);
  auto& q = *m->blocks[0]->as<BlockImpl>()->attn->q;
  auto expect_refused = [&](const std::string& config, const std::vector<std::tuple<std::string, std::vector<int64_t>, std::vector<float>>>& ts,
                            const std::string& why) {
    auto dir = temp_dir("dora_bad");
    write_text(dir / "adapter_config.json", config);
    write_text(dir / "adapter_model.safetensors", hand_file(ts));
    EXPECT_TRUE(has(error_of<std::runtime_error>([&] { lora::load_adapter(*m, dir.string()); }), why));
    EXPECT_TRUE(q.adapter_names().empty());
    remove_tree(dir.string());
  };
  const std::string pre = "base_model.model.blocks.0.attn.q.";
  const std::vector<float> a(16, 0.1f), mag(8, 1.f);
  const std::string plain = R"({"peft_type": "LORA", "r": 2, "target_modules": ["q"]})";
  const std::string dora = R"({"peft_type": "LORA", "r": 2, "target_modules": ["q"], "use_dora": true})";
  expect_refused(plain, {{pre + "lora_A.weight", {2, 8}, a}, {pre + "lora_B.weight", {8, 2}, a}, {pre + "lora_magnitude_vector", {8}, mag}},
                 "is a DoRA magnitude, but adapter_config.json does not set \"use_dora\": true");
  expect_refused(dora, {{pre + "lora_A.weight", {2, 8}, a}, {pre + "lora_B.weight", {8, 2}, a}},
                 "has no lora_magnitude_vector tensor, which adapter_config.json's \"use_dora\": true needs");
  expect_refused(dora, {{pre + "lora_A.weight", {2, 8}, a}, {pre + "lora_B.weight", {8, 2}, a},
                        {pre + "lora_magnitude_vector", {7}, std::vector<float>(7, 1.f)}},
                 "has shape [7], expected [8] (one per output feature");
}

TEST_F(DoRATest, OperationsThatAssumeAnAdditiveUpdateRefuseDoRAByName) {
  TinyTransformer m(17, 8, 1);
  lora::inject_lora(*m, lora::LoRAConfig().r(2).target_modules({"q", "v"}).use_dora(true), "d");
  lora::inject_lora(*m, lora::LoRAConfig().r(2).target_modules({"q", "v"}), "p");
  EXPECT_TRUE(has(error_of<std::invalid_argument>([&] { lora::set_adapter(*m, {"d", "p"}); }),
              "adapter 'd' is a DoRA adapter, which must be the only active adapter of its layer"));
  EXPECT_TRUE(has(error_of<std::invalid_argument>([&] { lora::add_weighted_adapter(*m, {"p", "d"}, {0.5, 0.5}, "mix", lora::Combination::Cat); }),
              "adapter 'd' is a DoRA adapter"));
  m->eval();
  EXPECT_TRUE(has(error_of<std::invalid_argument>([&] { lora::AdapterPerRow route(*m, {"p", "d"}); }),
              "AdapterPerRow: adapter 'd' is a DoRA adapter"));
  auto dir_p = temp_dir("dora_swap_p"), dir_d = temp_dir("dora_swap_d");
  lora::save_adapter(*m, dir_p.string(), lora::SaveAdapterOptions().adapter_name("p"));
  lora::save_adapter(*m, dir_d.string(), lora::SaveAdapterOptions().adapter_name("d"));
  EXPECT_TRUE(has(error_of<std::invalid_argument>([&] { lora::hotswap_adapter(*m, dir_p.string(), "d"); }),
              "the slot is a DoRA adapter"));
  EXPECT_TRUE(has(error_of<std::invalid_argument>([&] { lora::hotswap_adapter(*m, dir_d.string(), "p"); }),
              "the file is a DoRA adapter"));
  auto& q = *m->blocks[0]->as<BlockImpl>()->attn->q;
  EXPECT_EQ(q.adapter_names(), (std::vector<std::string>{"d", "p"}));  // nothing left behind
  // Deleting the plain adapter keeps the DoRA one's magnitude (same tensor).
  auto before = magnitude(q, "d");
  lora::delete_adapter(*m, "p");
  EXPECT_TRUE(magnitude(q, "d").is_same(before));
  remove_tree(dir_p.string());
  remove_tree(dir_d.string());
}

TEST_F(DoRATest, NativeArchiveAndCloneCarryTheMagnitude) {
  auto cfg = lora::LoRAConfig().r(2).init(lora::Init::Random).target_modules({"q", "v", "emb"}).use_dora(true);
  TinyTransformer m(17, 8, 2);
  lora::inject_lora(*m, cfg);
  perturb_magnitudes(*m);
  m->eval();
  auto ids = torch::randint(0, 17, {2, 5});
  auto want = m(ids);
  const auto path = (temp_dir("dora_archive") / "adapter.pt").string();
  lora::save_lora_state(*m, path);

  auto fresh = same_base(m);
  lora::inject_lora(*fresh, cfg);  // other random A, B, and m = ‖W0 + ΔW‖
  lora::load_lora_state(*fresh, path);
  fresh->eval();
  EXPECT_TRUE(torch::equal(fresh(ids), want));

  auto plain = same_base(m);
  lora::inject_lora(*plain, lora::LoRAConfig().r(2).target_modules({"q", "v", "emb"}));
  EXPECT_TRUE(has(error_of<std::runtime_error>([&] { lora::load_lora_state(*plain, path); }),
              "the archive holds DoRA magnitudes, the model's adapter is plain LoRA"));

  auto copy = std::dynamic_pointer_cast<TinyTransformerImpl>(m->clone());
  auto& q0 = *m->blocks[0]->as<BlockImpl>()->attn->q;
  auto& q1 = *copy->blocks[0]->as<BlockImpl>()->attn->q;
  EXPECT_TRUE(torch::equal(magnitude(q1), magnitude(q0)));
  EXPECT_FALSE(magnitude(q1).is_same(magnitude(q0)));
  EXPECT_TRUE(torch::equal(copy->forward(ids), want));
  remove_tree(std::filesystem::path(path).parent_path().string());
}

TEST_F(DoRATest, AFewTrainingStepsLowerTheLossAndTrainOnlyTheAdapter) {
  TinyTransformer m(17, 8, 2);
  lora::inject_lora(*m, lora::LoRAConfig().r(4).alpha(8).dropout(0.1).target_modules({"q", "v", "fc"}).use_dora(true));
  const auto base = m->blocks[0]->as<BlockImpl>()->attn->q->weight.detach().clone();
  const auto m0 = magnitude(*m->blocks[0]->as<BlockImpl>()->attn->q).detach().clone();
  auto params = lora::lora_parameters(*m);
  EXPECT_EQ(params.size(), 2u * 3u * 3u);  // A, B, m of q, v, fc in 2 blocks
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(2e-2).weight_decay(0));
  auto ids = torch::randint(0, 17, {8, 6});
  auto target = torch::randn({8, 6});
  m->train();
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    opt.zero_grad();
    auto loss = torch::mse_loss(m(ids), target);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, 0.8 * first);
  EXPECT_TRUE(torch::equal(m->blocks[0]->as<BlockImpl>()->attn->q->weight, base));
  EXPECT_FALSE(torch::equal(magnitude(*m->blocks[0]->as<BlockImpl>()->attn->q), m0));
}
