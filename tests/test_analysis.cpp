// §7's analysis functions (analysis.hpp) against the paper's definitions computed another way
// here: projections and traces instead of cumulative sums, and matrices whose answers are known.
#include "common.hpp"

#include <lora/analysis.hpp>

using namespace lora_test;

namespace {

/// An orthonormal basis of A's row space, top-i first, as columns ([in, i]).
torch::Tensor row_basis(const torch::Tensor& A, int64_t i) {
  auto svd = torch::linalg_svd(A.to(torch::kDouble), false);
  return std::get<2>(svd).narrow(0, 0, i).t();
}

/// φ(i, j) as trace(P1·P2) / min(i, j) with the two projection matrices.
double phi_by_projections(const torch::Tensor& A1, const torch::Tensor& A2, int64_t i, int64_t j) {
  auto U1 = row_basis(A1, i), U2 = row_basis(A2, j);
  auto P1 = U1.mm(U1.t()), P2 = U2.mm(U2.t());
  return P1.mm(P2).trace().item<double>() / static_cast<double>(std::min(i, j));
}

}  // namespace

class AnalysisTest : public Seeded {};

TEST_F(AnalysisTest, SubspaceSimilarityIsThePapersPhiForEveryIAndJ) {
  auto A1 = torch::randn({8, 40}), A2 = torch::randn({12, 40});
  auto phi = lora::subspace_similarity(A1, A2);
  ASSERT_EQ(phi.sizes(), torch::IntArrayRef({8, 12}));
  for (int64_t i = 1; i <= 8; ++i)
    for (int64_t j = 1; j <= 12; ++j) EXPECT_NEAR(phi[i - 1][j - 1].item<double>(), phi_by_projections(A1, A2, i, j), 1e-12);
  // B through its column space: B's left-singular vectors are A's right ones for B = Aᵀ.
  EXPECT_LT(rel_err(lora::subspace_similarity_B(A1.t(), A2.t()), phi), 1e-12);
}

TEST_F(AnalysisTest, IdenticalSubspacesGiveOneAndOrthogonalOnesZero) {
  auto A = torch::randn({6, 30});
  EXPECT_LT(rel_err(lora::subspace_similarity(A, 3.0 * A), torch::ones({6, 6}, torch::kDouble)), 1e-12);
  auto eye = torch::eye(30);
  auto first = eye.narrow(0, 0, 4) * 2.0, second = eye.narrow(0, 10, 5);  // rows in disjoint coordinate spans
  EXPECT_LT(lora::subspace_similarity(first, second).abs().max().item<double>(), 1e-12);
  // A subspace inside a larger one: φ(i, j) = 1 once j covers it all.
  auto big = torch::cat({first, torch::randn({3, 30})}, 0);
  EXPECT_NEAR(lora::subspace_similarity(first, big)[3][6].item<double>(), 1.0, 1e-10);
}

TEST_F(AnalysisTest, RandomSubspacesOverlapAsExpected) {
  // For random i- and j-dimensional subspaces of R^d, E‖U_iᵀU_j‖² = i·j/d, so φ ≈ max(i, j)/d.
  const int64_t d = 400;
  double sum = 0;
  const int trials = 40;
  for (int t = 0; t < trials; ++t) {
    auto phi = lora::subspace_similarity(torch::randn({8, d}), torch::randn({8, d}));
    sum += phi[7][7].item<double>() * d / 8.0;
  }
  EXPECT_NEAR(sum / trials, 1.0, 0.1);
}

TEST_F(AnalysisTest, WeightAlignmentFindsAKnownAmplification) {
  // W with known singular directions; ΔW = c·u3·v3ᵀ lies along W's third direction, s3 = 2.
  auto Q1 = std::get<0>(torch::linalg_qr(torch::randn({20, 20}, torch::kDouble)));
  auto Q2 = std::get<0>(torch::linalg_qr(torch::randn({15, 15}, torch::kDouble)));
  std::vector<double> s = {9, 5, 2, 1, 0.5};
  auto S = torch::zeros({20, 15}, torch::kDouble);
  for (size_t k = 0; k < s.size(); ++k) S[k][k] = s[k];
  auto W = Q1.mm(S).mm(Q2.t());
  auto dW = 7.0 * Q1.select(1, 2).unsqueeze(1).mm(Q2.select(1, 2).unsqueeze(0));
  const auto a = lora::weight_alignment(W, dW, 1);
  EXPECT_NEAR(a.delta_norm, 7.0, 1e-10);
  EXPECT_NEAR(a.on_delta, 2.0, 1e-10);
  EXPECT_NEAR(a.amplification(), 3.5, 1e-9);
  EXPECT_NEAR(a.on_weight, 9.0, 1e-10);  // W's own top direction
  EXPECT_NEAR(a.weight_norm, std::sqrt(81 + 25 + 4 + 1 + 0.25), 1e-10);
  EXPECT_GT(a.on_random, 0.0);
  EXPECT_LT(a.on_random, 9.0 + 1e-9);  // nothing beats W's top direction
  EXPECT_EQ(lora::weight_alignment(W, dW, 1, 3).on_random, lora::weight_alignment(W, dW, 1, 3).on_random);  // seeded
}

TEST_F(AnalysisTest, AnalyzeAdapterReportsEachLayerAndEachSlice) {
  TinyTransformer m(17, 8, 1);
  lora::inject_lora(*m, lora::LoRAConfig().r(2).alpha(4).init(lora::Init::Random).target_modules({"q", "fc"})
                            .enable_lora({{"fc", {true, false, false, true}}}));
  const auto report = lora::analyze_adapter(*m, "default");
  ASSERT_EQ(report.size(), 3u);  // q whole, fc's slices 0 and 3
  EXPECT_EQ(report[0].module, "blocks.0.attn.q");
  EXPECT_EQ(report[0].slice, -1);
  EXPECT_EQ(report[1].slice, 0);
  EXPECT_EQ(report[2].slice, 3);
  auto& q = *m->blocks[0]->as<BlockImpl>()->attn->q;
  auto dq = 2.0 * q.lora_B("default").to(torch::kDouble).mm(q.lora_A("default").to(torch::kDouble));
  EXPECT_LT(rel_err(report[0].singular_values, torch::linalg_svdvals(dq)), 1e-6);
  EXPECT_NEAR(report[0].alignment.delta_norm, dq.norm().item<double>(), 1e-6);
  // fc's slice 3: rows 24..31 of W and ΔW (the second block of A and B).
  auto& fc = *m->blocks[0]->as<BlockImpl>()->mlp->fc;
  auto A = fc.lora_A("default").to(torch::kDouble).narrow(0, 2, 2), B = fc.lora_B("default").to(torch::kDouble).narrow(0, 8, 8);
  auto d3 = 2.0 * B.mm(A);
  EXPECT_LT(rel_err(report[2].singular_values, torch::linalg_svdvals(d3)), 1e-6);
  EXPECT_NEAR(report[2].alignment.weight_norm, fc.weight.narrow(0, 24, 8).to(torch::kDouble).norm().item<double>(), 1e-6);
  lora::merge(*m);
  EXPECT_FALSE(error_of<std::logic_error>([&] { lora::analyze_adapter(*m, "default"); }).empty());
  EXPECT_FALSE(error_of<std::invalid_argument>([&] { lora::subspace_similarity(torch::ones({2, 3}), torch::ones({2, 4})); }).empty());
}

TEST_F(AnalysisTest, CompareAdaptersGivesPhiPerSharedWeightAndSlice) {
  TinyTransformer m(17, 8, 1);
  const auto cfg = lora::LoRAConfig().init(lora::Init::Random).target_modules({"q", "fc"}).enable_lora({{"fc", {true, false, false, true}}});
  lora::inject_lora(*m, lora::LoRAConfig(cfg).r(2).alpha(4), "small");
  lora::inject_lora(*m, lora::LoRAConfig(cfg).r(5).alpha(4).target_modules({"fc"}), "large");  // no q
  // The factors rebuild each weight's update: scaling·B_g·A_g equals the slice's rows of ΔW.
  const auto f = lora::adapter_factors(*m, "small");
  ASSERT_EQ(f.size(), 3u);
  auto& fc = *m->blocks[0]->as<BlockImpl>()->mlp->fc;
  auto dW = fc.delta_weight("small").to(torch::kDouble);
  EXPECT_EQ(f[2].module, "blocks.0.mlp.fc");
  EXPECT_EQ(f[2].slice, 3);
  EXPECT_LT(rel_err(2.0 * f[2].B.to(torch::kDouble).mm(f[2].A.to(torch::kDouble)), dW.narrow(0, 24, 8)), 1e-6);
  EXPECT_LT(rel_err(2.0 * f[1].B.to(torch::kDouble).mm(f[1].A.to(torch::kDouble)), dW.narrow(0, 0, 8)), 1e-6);
  EXPECT_EQ(dW.narrow(0, 8, 16).abs().max().item<double>(), 0.0);
  // Only fc's two slices are shared; each φ is the projection formula on that slice's rows of A.
  const auto c = lora::compare_adapters(*m, "small", "large");
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].slice, 0);
  EXPECT_EQ(c[1].slice, 3);
  ASSERT_EQ(c[1].phi_A.sizes(), torch::IntArrayRef({2, 5}));
  auto a_small = fc.lora_A("small").narrow(0, 2, 2), a_large = fc.lora_A("large").narrow(0, 5, 5);
  for (int64_t i = 1; i <= 2; ++i)
    for (int64_t j = 1; j <= 5; ++j)
      EXPECT_NEAR(c[1].phi_A[i - 1][j - 1].item<double>(), phi_by_projections(a_small, a_large, i, j), 1e-10);
  auto b_small = fc.lora_B("small").narrow(0, 8, 8), b_large = fc.lora_B("large").narrow(0, 8, 8);
  EXPECT_NEAR(c[1].phi_B[1][4].item<double>(), phi_by_projections(b_small.t(), b_large.t(), 2, 5), 1e-10);
  lora::inject_lora(*m, lora::LoRAConfig(cfg).r(2).target_modules({"q"}).enable_lora({}), "qonly");
  EXPECT_NE(error_of<std::invalid_argument>([&] { lora::compare_adapters(*m, "qonly", "large"); }).find("no weight in common"),
            std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] { lora::adapter_factors(*m, "missing"); }).find("'missing'"), std::string::npos);
}

TEST_F(AnalysisTest, FusedSlicesReadAPeftFileSliceBySliceAsTheMaskedAdapterWas) {
  // A PEFT file stores a slice-masked adapter as the equivalent whole-layer one; FusedSlices
  // splits it again: the same weights, factors spanning the same subspaces, the same Table 7.
  TinyTransformer m(17, 8, 1);
  lora::inject_lora(*m, lora::LoRAConfig().r(2).alpha(4).init(lora::Init::Random).target_modules({"q", "fc"})
                            .enable_lora({{"fc", {false, true, false, true}}}));
  const auto dir = temp_dir("fused");
  lora::save_adapter(*m, dir.string());
  TinyTransformer fresh(17, 8, 1);
  copy_parameters(*fresh, *m);
  lora::load_adapter(*fresh, dir.string());
  remove_tree(dir.string());
  const lora::FusedSlices fused = {{"fc", 4}};
  EXPECT_EQ(lora::adapter_factors(*fresh, "default").size(), 2u);  // without: q and the whole fc
  const auto before = lora::analyze_adapter(*m, "default"), after = lora::analyze_adapter(*fresh, "default", 0, 0, fused);
  ASSERT_EQ(after.size(), 3u);
  for (size_t k = 0; k < 3; ++k) {
    EXPECT_EQ(after[k].module, before[k].module);
    EXPECT_EQ(after[k].slice, before[k].slice);
    EXPECT_EQ(after[k].alignment.r, 2);
    EXPECT_LT(rel_err(after[k].singular_values, before[k].singular_values), 1e-6);
    EXPECT_NEAR(after[k].alignment.on_delta, before[k].alignment.on_delta, 1e-6 * before[k].alignment.on_delta);
  }
  const auto f0 = lora::adapter_factors(*m, "default"), f1 = lora::adapter_factors(*fresh, "default", fused);
  ASSERT_EQ(f1.size(), 3u);
  EXPECT_LT(rel_err(lora::subspace_similarity(f0[2].A, f1[2].A), torch::ones({2, 2}, torch::kDouble)), 1e-9);
  EXPECT_LT(rel_err(lora::subspace_similarity_B(f0[2].B, f1[2].B), torch::ones({2, 2}, torch::kDouble)), 1e-9);
  EXPECT_NE(error_of<std::invalid_argument>([&] { lora::adapter_factors(*fresh, "default", {{"fc", 5}}); }).find("do not divide evenly"),
            std::string::npos);
}

TEST_F(AnalysisTest, FusedSlicesOfAnUntrainedAdapterLeaveTheWholeLayer) {
  TinyTransformer m(17, 8, 1);
  lora::inject_lora(*m, lora::LoRAConfig().r(2).target_modules({"fc"}));  // B = 0: no slice shows
  const auto f = lora::adapter_factors(*m, "default", {{"fc", 4}});
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].slice, -1);
  EXPECT_EQ(f[0].A.size(0), 2);
}
