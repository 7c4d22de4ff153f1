// LoRALinear: drop-in behaviour, the formula, gradients, slices, scaling, dropout, init.
#include "common.hpp"

#include <sstream>

using namespace lora_test;

namespace {

/// A LoRALinear(in, out) with one non-zero adapter "default" (Init::Random).
lora::LoRALinear adapted(int64_t in, int64_t out, lora::AdapterOptions o) {
  lora::LoRALinear layer(in, out);
  layer->add_adapter("default", o.init(lora::Init::Random));
  layer->set_active_adapters({"default"});
  return layer;
}

}  // namespace

class LoRALinearTest : public Seeded {};

TEST_F(LoRALinearTest, InitialisesAndComputesExactlyAsTorchLinear) {
  torch::manual_seed(3);
  torch::nn::Linear plain(12, 7);
  torch::manual_seed(3);
  lora::LoRALinear layer(12, 7);
  EXPECT_TRUE(torch::equal(layer->weight, plain->weight));
  EXPECT_TRUE(torch::equal(layer->bias, plain->bias));
  auto x = torch::randn({5, 12});
  EXPECT_TRUE(torch::equal(layer(x), plain(x)));
  std::vector<std::string> names;
  for (const auto& p : layer->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias"}));
}

TEST_F(LoRALinearTest, FreshAdapterLeavesOutputBitForBitUnchanged) {
  torch::nn::Linear plain(10, 6);
  lora::LoRALinear layer(plain);
  layer->add_adapter("default", lora::AdapterOptions(4).alpha(32));
  layer->set_active_adapters({"default"});
  EXPECT_TRUE(torch::equal(layer->lora_B("default"), torch::zeros({6, 4})));
  auto x = torch::randn({3, 4, 10});
  EXPECT_TRUE(torch::equal(layer(x), plain(x)));
}

TEST_F(LoRALinearTest, WrappingALinearSharesItsTensors) {
  torch::nn::Linear plain(4, 3);
  lora::LoRALinear layer(plain);
  EXPECT_EQ(layer->weight.data_ptr(), plain->weight.data_ptr());
  EXPECT_EQ(layer->bias.data_ptr(), plain->bias.data_ptr());
  torch::nn::Linear nobias(torch::nn::LinearOptions(4, 3).bias(false));
  EXPECT_FALSE(lora::LoRALinear(nobias)->bias.defined());
}

TEST_F(LoRALinearTest, PrettyPrintsLikeTorchLinear) {
  lora::LoRALinear layer(768, 2304);
  std::ostringstream s;
  layer->pretty_print(s);
  EXPECT_EQ(s.str(), "lora::LoRALinear(in_features=768, out_features=2304, bias=true)");
  layer->add_adapter("default", lora::AdapterOptions(4).alpha(32));
  s.str("");
  layer->pretty_print(s);
  EXPECT_EQ(s.str(), "lora::LoRALinear(in_features=768, out_features=2304, bias=true, adapters=[default: r=4, alpha=32])");
}

TEST_F(LoRALinearTest, AdapterParametersHavePeftNamesAndShapes) {
  auto layer = adapted(10, 6, lora::AdapterOptions(4));
  auto params = layer->named_parameters();
  ASSERT_TRUE(params.contains("lora_A.default.weight"));
  ASSERT_TRUE(params.contains("lora_B.default.weight"));
  EXPECT_EQ(params["lora_A.default.weight"].sizes(), torch::IntArrayRef({4, 10}));
  EXPECT_EQ(params["lora_B.default.weight"].sizes(), torch::IntArrayRef({6, 4}));
}

// ---- the formula, over dtypes and devices ------------------------------------------------

struct Case {
  torch::Dtype dtype;
  std::string device;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.dtype << " on " << c.device; }

class LoRALinearFormula : public ::testing::TestWithParam<Case> {
 protected:
  static double tolerance(torch::Dtype d) {
    return d == torch::kDouble ? 1e-12 : d == torch::kFloat ? 1e-5 : 2e-2;
  }
  void SetUp() override {
    torch::manual_seed(0);
    if (GetParam().device == "cuda" && !torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device present";
  }
};

TEST_P(LoRALinearFormula, ForwardEqualsFloat64Formula) {
  const auto [dtype, device] = GetParam();
  auto layer = adapted(16, 9, lora::AdapterOptions(3).alpha(5));
  layer->to(torch::Device(device), dtype);
  auto x = torch::randn({2, 5, 16}).to(torch::Device(device), dtype);
  auto y = layer(x);
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({2, 5, 9}));
  EXPECT_EQ(y.scalar_type(), dtype);
  auto ref = reference_linear(x, layer->weight, layer->bias, layer->lora_A("default"), layer->lora_B("default"), 5.0 / 3.0);
  EXPECT_LT(rel_err(y, ref), tolerance(dtype));
}

TEST_P(LoRALinearFormula, SliceMaskedForwardEqualsBlockFormula) {
  const auto [dtype, device] = GetParam();
  const int64_t in = 8, out = 12, r = 2;  // three slices of 4 rows: q, k, v
  auto layer = adapted(in, out, lora::AdapterOptions(r).alpha(4).enable({true, false, true}));
  layer->to(torch::Device(device), dtype);
  auto A = layer->lora_A("default").to(torch::kCPU, torch::kDouble);
  auto B = layer->lora_B("default").to(torch::kCPU, torch::kDouble);
  ASSERT_EQ(A.sizes(), torch::IntArrayRef({2 * r, in}));      // loralib: [k·r, in]
  ASSERT_EQ(B.sizes(), torch::IntArrayRef({2 * out / 3, r}));  // loralib: [k·out/n, r]
  // ΔW built block by block: q rows from (B0, A0), k rows zero, v rows from (B1, A1).
  auto dW = torch::zeros({out, in}, torch::kDouble);
  dW.slice(0, 0, 4) = 2.0 * torch::mm(B.slice(0, 0, 4), A.slice(0, 0, r));
  dW.slice(0, 8, 12) = 2.0 * torch::mm(B.slice(0, 4, 8), A.slice(0, r, 2 * r));
  auto x = torch::randn({7, in}).to(torch::Device(device), dtype);
  auto ref = reference_linear(x, layer->weight, layer->bias, {}, {}, 0) + torch::mm(x.to(torch::kCPU, torch::kDouble), dW.t());
  EXPECT_LT(rel_err(layer(x), ref), tolerance(dtype));
  auto delta = layer->delta_weight("default").to(torch::kCPU, torch::kDouble);
  EXPECT_LT(rel_err(delta, dW), dtype == torch::kFloat || dtype == torch::kDouble ? 1e-6 : 1e-2);
  EXPECT_TRUE(torch::equal(delta.slice(0, 4, 8), torch::zeros({4, in}, torch::kDouble)));
}

INSTANTIATE_TEST_SUITE_P(DtypesAndDevices, LoRALinearFormula,
                         // fp16 has no CPU matmul kernels in LibTorch 1.13: fp16 runs on CUDA only.
                         ::testing::Values(Case{torch::kFloat, "cpu"}, Case{torch::kDouble, "cpu"},
                                           Case{torch::kBFloat16, "cpu"}, Case{torch::kFloat, "cuda"},
                                           Case{torch::kDouble, "cuda"}, Case{torch::kHalf, "cuda"},
                                           Case{torch::kBFloat16, "cuda"}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(c10::toString(info.param.dtype)) + (info.param.device == "cpu" ? "Cpu" : "Cuda");
                         });

// ---- gradients ----------------------------------------------------------------------------

TEST_F(LoRALinearTest, GradientsOfAAndBEqualFiniteDifferences) {
  auto layer = adapted(6, 5, lora::AdapterOptions(2).alpha(3));
  layer->to(torch::kDouble);
  layer->weight.requires_grad_(false);
  layer->bias.requires_grad_(false);
  auto x = torch::randn({4, 6}, torch::kDouble);
  auto c = torch::randn({4, 5}, torch::kDouble);
  auto loss = [&] { return (layer(x) * c).sum(); };
  loss().backward();
  EXPECT_FALSE(layer->weight.grad().defined());
  EXPECT_FALSE(layer->bias.grad().defined());
  for (auto* name : {"A", "B"}) {
    torch::Tensor p = std::string(name) == "A" ? layer->lora_A("default") : layer->lora_B("default");
    auto analytic = p.grad().clone();
    auto numeric = numeric_gradient(p, loss);
    EXPECT_LT(rel_err(analytic, numeric), 1e-7) << "gradient of " << name;
  }
}

TEST_F(LoRALinearTest, RsLoRAScalesByAlphaOverSqrtR) {
  auto layer = adapted(8, 8, lora::AdapterOptions(4).alpha(6).use_rslora(true));
  EXPECT_DOUBLE_EQ(layer->scaling("default"), 6.0 / 2.0);
  auto x = torch::randn({3, 8});
  auto ref = reference_linear(x, layer->weight, layer->bias, layer->lora_A("default"), layer->lora_B("default"), 3.0);
  EXPECT_LT(rel_err(layer(x), ref), 1e-5);
  EXPECT_DOUBLE_EQ(lora::AdapterOptions(4).alpha(6).scaling(), 1.5);
}

TEST_F(LoRALinearTest, KaimingInitBoundsAAndZeroesB) {
  lora::LoRALinear layer(4096, 16);
  layer->add_adapter("default", lora::AdapterOptions(64));
  auto A = layer->lora_A("default");
  const double bound = 1.0 / std::sqrt(4096.0);  // kaiming_uniform(a = sqrt(5)) on fan_in = 4096
  EXPECT_LE(A.abs().max().item<double>(), bound);
  EXPECT_NEAR(A.std().item<double>(), bound / std::sqrt(3.0), 0.01 * bound);
  EXPECT_EQ(layer->lora_B("default").abs().sum().item<double>(), 0.0);
}

TEST_F(LoRALinearTest, GaussianInitHasStdOneOverR) {
  lora::LoRALinear layer(4096, 16);
  layer->add_adapter("default", lora::AdapterOptions(8).init(lora::Init::Gaussian));
  auto A = layer->lora_A("default");
  EXPECT_NEAR(A.mean().item<double>(), 0.0, 0.003);
  EXPECT_NEAR(A.std().item<double>(), 1.0 / 8, 0.003);
  EXPECT_EQ(layer->lora_B("default").abs().sum().item<double>(), 0.0);
}

TEST_F(LoRALinearTest, AdapterDtypeIsKeptAndResultCastBack) {
  lora::LoRALinear layer(8, 4);
  layer->to(torch::kDouble);
  layer->add_adapter("default", lora::AdapterOptions(2).init(lora::Init::Random).dtype(torch::kFloat));
  layer->set_active_adapters({"default"});
  EXPECT_EQ(layer->lora_A("default").scalar_type(), torch::kFloat);
  auto x = torch::randn({3, 8}, torch::kDouble);
  auto y = layer(x);
  EXPECT_EQ(y.scalar_type(), torch::kDouble);
  EXPECT_LT(rel_err(y, reference_linear(x, layer->weight, layer->bias, layer->lora_A("default"), layer->lora_B("default"), 4.0)), 1e-6);
}

TEST_F(LoRALinearTest, Bf16BaseWeightsWithFloatAdapter) {
  lora::LoRALinear layer(16, 8);
  layer->to(torch::kBFloat16);
  layer->add_adapter("default", lora::AdapterOptions(2).init(lora::Init::Random));
  layer->set_active_adapters({"default"});
  auto x = torch::randn({4, 16}).to(torch::kBFloat16);
  auto y = layer(x);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_LT(rel_err(y, reference_linear(x, layer->weight, layer->bias, layer->lora_A("default"), layer->lora_B("default"), 4.0)), 2e-2);
}

TEST_F(LoRALinearTest, SeveralActiveAdaptersAreSummed) {
  auto layer = adapted(6, 6, lora::AdapterOptions(2).alpha(2));
  layer->add_adapter("other", lora::AdapterOptions(3).alpha(6).init(lora::Init::Random));
  layer->set_active_adapters({"default", "other"});
  auto x = torch::randn({2, 6});
  auto ref = reference_linear(x, layer->weight, layer->bias, layer->lora_A("default"), layer->lora_B("default"), 1.0) +
             reference_linear(x, torch::zeros({6, 6}), {}, layer->lora_A("other"), layer->lora_B("other"), 2.0);
  EXPECT_LT(rel_err(layer(x), ref), 1e-5);
  layer->set_active_adapters({});
  EXPECT_LT(rel_err(layer(x), reference_linear(x, layer->weight, layer->bias, {}, {}, 0)), 1e-6);
}

TEST_F(LoRALinearTest, BadAdapterOptionsAreRefusedWithReasons) {
  lora::LoRALinear layer(8, 6);
  layer->add_adapter("default", lora::AdapterOptions(2));
  using E = std::invalid_argument;
  EXPECT_NE(error_of<E>([&] { layer->add_adapter("default", lora::AdapterOptions(2)); }).find("already exists"), std::string::npos);
  EXPECT_NE(error_of<E>([&] { layer->add_adapter("x", lora::AdapterOptions(0)); }).find("r > 0"), std::string::npos);
  EXPECT_NE(error_of<E>([&] { layer->add_adapter("a.b", lora::AdapterOptions(2)); }).find("no '.'"), std::string::npos);
  EXPECT_NE(error_of<E>([&] { layer->add_adapter("x", lora::AdapterOptions(2).enable({true, true, true, true})); })
                .find("out_features=6 into 4 slices"), std::string::npos);
  EXPECT_NE(error_of<E>([&] { layer->add_adapter("x", lora::AdapterOptions(2).enable({false, false})); }).find("enables no slice"),
            std::string::npos);
  EXPECT_NE(error_of<E>([&] { layer->set_active_adapters({"nope"}); }).find("no adapter named 'nope' (adapters: 'default')"),
            std::string::npos);
  EXPECT_EQ(layer->adapter_names(), std::vector<std::string>{"default"});
}

TEST_F(LoRALinearTest, DeleteAdapterRemovesItsParameters) {
  auto layer = adapted(6, 6, lora::AdapterOptions(2));
  layer->add_adapter("other", lora::AdapterOptions(2));
  layer->delete_adapter("default");
  std::vector<std::string> names;
  for (const auto& p : layer->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias", "lora_A.other.weight", "lora_B.other.weight"}));
  EXPECT_TRUE(layer->active_adapters().empty());
}
