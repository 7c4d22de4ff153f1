// gpt2-e2e analyze (the paper's §7 as report pages) and the SVG figures it draws, against numbers
// computed here from the adapters' tensors before they were saved.
#include <gtest/gtest.h>

#include "commands.hpp"
#include "report.hpp"
#include "../../test_gpt2.hpp"
#include "../../test_util.hpp"

#include <lora/lora.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>

#include <unistd.h>

namespace fs = std::filesystem;

namespace {

using example_test::error_of;

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

size_t count_of(const std::string& text, const std::string& pattern) {
  const std::regex re(pattern);
  return static_cast<size_t>(std::distance(std::sregex_iterator(text.begin(), text.end(), re), std::sregex_iterator()));
}

/// The top right-singular vector of A [r, in], float64.
torch::Tensor top_direction(const torch::Tensor& A) { return std::get<2>(torch::linalg_svd(A.to(torch::kDouble), false))[0]; }

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("e2e_study_" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
};

}  // namespace

TEST(E2EStudy, HeatMapHasOneCellPerValueColouredByIt) {
  TempDir tmp;
  const auto file = (tmp.path / "phi.svg").string();
  e2e::write_heatmap_svg(file, torch::tensor({{0.0, 1.0, 0.5}, {0.25, 0.75, 2.0}}, torch::kDouble), "t", "i", "j");
  const std::string svg = read_text(file);
  EXPECT_EQ(count_of(svg, "<title>i=\\d+ j=\\d+: "), 6u);
  EXPECT_NE(svg.find("fill=\"#440154\"><title>i=1 j=1: 0.000"), std::string::npos) << svg;  // viridis at 0
  EXPECT_NE(svg.find("fill=\"#fde725\"><title>i=1 j=2: 1.000"), std::string::npos);        // and at 1
  EXPECT_NE(svg.find("fill=\"#21918c\"><title>i=1 j=3: 0.500"), std::string::npos);        // the middle anchor
  EXPECT_NE(svg.find("fill=\"#fde725\"><title>i=2 j=3: 2.000"), std::string::npos);        // clamped, value kept
  EXPECT_NE(error_of([&] { e2e::write_heatmap_svg(file, torch::zeros({3}), "t", "i", "j"); }).find("[rows, cols]"), std::string::npos);
}

TEST(E2EStudy, AnalyzeComparesTwoAdaptersPerLayerAndSlice) {
  TempDir tmp;
  torch::manual_seed(5);
  gpt2::GPT2LMHeadModelImpl base(example_test::tiny_gpt2_config());
  base.save_pretrained((tmp.path / "model").string());
  // Two adapters of the q and v slices, r = 2 and r = 4, trained-looking (random A and B).
  std::vector<std::shared_ptr<gpt2::GPT2LMHeadModelImpl>> models;
  for (int64_t r : {2, 4}) {
    auto m = gpt2::GPT2LMHeadModelImpl::from_pretrained((tmp.path / "model").string());
    lora::inject_lora(*m, gpt2::attention_lora_config("qv").r(r).alpha(8).init(lora::Init::Random));
    lora::save_adapter(*m, (tmp.path / ("r" + std::to_string(r))).string(), lora::SaveAdapterOptions().fan_in_fan_out(true));
    models.push_back(m);
  }
  const auto out = tmp.path / "analysis";
  const auto result = e2e::cli::analyze({(tmp.path / "model").string(), out.string(),
                                         {"small=" + (tmp.path / "r2").string(), "large=" + (tmp.path / "r4").string()}, 2, 3, 0});
  ASSERT_EQ(result.names, (std::vector<std::string>{"small", "large"}));
  ASSERT_EQ(result.comparisons.size(), 4u);  // 2 layers × (q, v)
  // Layer 1's v: A's rows 2..3 (r = 2) and 4..7 (r = 4) of the second slice block.
  auto& small_attn = *models[0]->transformer->h[1]->as<gpt2::BlockImpl>()->attn->c_attn;
  auto& large_attn = *models[1]->transformer->h[1]->as<gpt2::BlockImpl>()->attn->c_attn;
  const auto a_small = small_attn.lora_A("default").narrow(0, 2, 2), a_large = large_attn.lora_A("default").narrow(0, 4, 4);
  const auto& v1 = result.comparisons[3];
  EXPECT_EQ(v1.module, "transformer.h.1.attn.c_attn");
  EXPECT_EQ(v1.slice, 2);
  const double cos = top_direction(a_small).dot(top_direction(a_large)).item<double>();
  EXPECT_NEAR(v1.phi_A[0][0].item<double>(), cos * cos, 1e-9);
  // Table 7's ‖ΔW‖_F of that weight: scaling · B · A of the slice, computed here.
  const auto b_small = small_attn.lora_B("default").narrow(0, 32, 32).to(torch::kDouble);
  const double delta = (4.0 * b_small.mm(a_small.to(torch::kDouble))).norm().item<double>();
  ASSERT_EQ(result.layers[0].size(), 4u);
  EXPECT_NEAR(result.layers[0][3].alignment.delta_norm, delta, 1e-6 * delta);  // ΔW is formed in fp32
  // The report: a Table-7 row per weight and adapter, one heat map per shared weight of i ≤ 2, j ≤ 3.
  const std::string md = read_text(out / "analysis.md");
  EXPECT_EQ(count_of(md, "\\| layer \\d W_[qv] \\(r = [24]\\) \\|"), 8u) << md;
  for (const char* f : {"phi_layer0_q.svg", "phi_layer0_v.svg", "phi_layer1_q.svg", "phi_layer1_v.svg", "phi_random.svg",
                        "spectra_small.svg", "spectra_large.csv"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  EXPECT_EQ(count_of(read_text(out / "phi_layer1_v.svg"), "<title>i=\\d j=\\d: "), 6u);
  EXPECT_NE(md.find("![phi_layer1_v.svg](phi_layer1_v.svg)"), std::string::npos);  // the middle layer is shown
  // One adapter: no comparison; three: refused; an adapter of other weights: refused by name.
  EXPECT_TRUE(e2e::cli::analyze({(tmp.path / "model").string(), out.string(), {(tmp.path / "r2").string()}}).comparisons.empty());
  EXPECT_NE(error_of([&] {
              e2e::cli::analyze({(tmp.path / "model").string(), out.string(), {"a=" + (tmp.path / "r2").string(), "b=x", "c=y"}});
            }).find("not 3"),
            std::string::npos);
  auto other = gpt2::GPT2LMHeadModelImpl::from_pretrained((tmp.path / "model").string());
  lora::inject_lora(*other, gpt2::attention_lora_config("k").r(2).init(lora::Init::Random));
  lora::save_adapter(*other, (tmp.path / "k").string(), lora::SaveAdapterOptions().fan_in_fan_out(true));
  EXPECT_NE(error_of([&] {
              e2e::cli::analyze({(tmp.path / "model").string(), out.string(), {(tmp.path / "r2").string(), (tmp.path / "k").string()}});
            }).find("no weight in common"),
            std::string::npos);
}
