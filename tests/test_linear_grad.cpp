// LoRALinear's autograd function: gradients against float64 autograd on plain tensors and
// finite differences, slice masks, several adapters, trainable W0, dropout read back through
// an identity adapter, the Philox generator against its published answers, autocast.
#include "common.hpp"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

using namespace lora_test;

namespace {

/// A layer with random (non-zero) adapters as `adapters` lists them.
lora::LoRALinear layer_with(int64_t in, int64_t out, const std::vector<lora::AdapterOptions>& adapters) {
  lora::LoRALinear layer(in, out);
  std::vector<std::string> names;
  for (size_t i = 0; i < adapters.size(); ++i) {
    names.push_back("a" + std::to_string(i));
    auto o = adapters[i];
    layer->add_adapter(names.back(), o.init(lora::Init::Random));
  }
  layer->set_active_adapters(names);
  return layer;
}

/// The layer's formula in float64 with autograd on plain leaf copies; slice masks built block
/// by block with cat (out of place). `masks[i]` multiplies the adapter input (dropout), if given.
struct Reference {
  torch::Tensor x, W, b, y;
  std::vector<torch::Tensor> A, B;
};

Reference reference(lora::LoRALinear& layer, const torch::Tensor& x, const std::vector<torch::Tensor>& masks = {}) {
  auto leaf = [](const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kDouble).requires_grad_(true); };
  Reference ref;
  ref.x = leaf(x);
  ref.W = leaf(layer->weight);
  ref.b = leaf(layer->bias);
  auto x2 = ref.x.reshape({-1, layer->options.in_features()});
  auto y = torch::addmm(ref.b, x2, ref.W.t());
  const int64_t out = layer->options.out_features();
  for (size_t i = 0; i < layer->active_adapters().size(); ++i) {
    const auto& name = layer->active_adapters()[i];
    const auto& o = layer->adapter_options(name);
    ref.A.push_back(leaf(layer->lora_A(name)));
    ref.B.push_back(leaf(layer->lora_B(name)));
    auto xi = i < masks.size() && masks[i].defined() ? x2 * masks[i].to(torch::kDouble) / (1.0 - o.dropout()) : x2;
    auto h = torch::mm(xi, ref.A[i].t());
    if (o.enable().empty()) {
      y = y + o.scaling() * torch::mm(h, ref.B[i].t());
      continue;
    }
    const int64_t n = static_cast<int64_t>(o.enable().size()), slice = out / n, r = o.r();
    std::vector<torch::Tensor> cols;
    int64_t k = 0;
    for (int64_t j = 0; j < n; ++j) {
      if (!o.enable()[j]) {
        cols.push_back(torch::zeros({x2.size(0), slice}, torch::kDouble));
        continue;
      }
      cols.push_back(torch::mm(h.narrow(1, k * r, r), ref.B[i].narrow(0, k * slice, slice).t()));
      ++k;
    }
    y = y + o.scaling() * torch::cat(cols, 1);
  }
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  ref.y = y.view(sizes);
  return ref;
}

struct GradCase {
  torch::Dtype dtype;
  std::string device;
  std::string variant;  // "plain", "slices", "two", "full" (W0 and b trained too)
};

void PrintTo(const GradCase& c, std::ostream* os) { *os << c.variant << " " << c.dtype << " on " << c.device; }

}  // namespace

class LoRALinearGradient : public ::testing::TestWithParam<GradCase> {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    if (GetParam().device == "cuda" && !torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device present";
  }
  static double tolerance(torch::Dtype d) { return d == torch::kDouble ? 1e-10 : d == torch::kFloat ? 2e-5 : 3e-2; }
};

TEST_P(LoRALinearGradient, EveryGradientEqualsFloat64Autograd) {
  const auto& [dtype, device, variant] = GetParam();
  const int64_t in = 24, out = 18;
  std::vector<lora::AdapterOptions> adapters{lora::AdapterOptions(3).alpha(5)};
  if (variant == "slices") adapters = {lora::AdapterOptions(2).alpha(4).enable({true, false, true})};
  if (variant == "two") adapters.push_back(lora::AdapterOptions(4).alpha(2).enable({false, true, true}));
  auto layer = layer_with(in, out, adapters);
  const bool full = variant == "full";
  layer->weight.requires_grad_(full);
  layer->bias.requires_grad_(full);
  layer->to(torch::Device(device), dtype);
  auto x = torch::randn({3, 5, in}).to(torch::Device(device), dtype).requires_grad_(true);
  auto dy = torch::randn({3, 5, out}).to(torch::Device(device), dtype);  // a dense upstream gradient
  auto ref = reference(layer, x);

  auto y = layer(x);
  ASSERT_EQ(y.sizes(), ref.y.sizes());
  EXPECT_EQ(y.scalar_type(), dtype);
  EXPECT_LT(rel_err(y, ref.y), tolerance(dtype));
  // One node computes the layer (behind the view back to [3, 5, out]); no CopySlices.
  ASSERT_TRUE(y.grad_fn());
  ASSERT_EQ(y.grad_fn()->next_edges().size(), 1u);
  const auto node = y.grad_fn()->next_edges()[0].function;
  ASSERT_TRUE(node);
  EXPECT_NE(node->name().find("LoRALinearFunction"), std::string::npos) << node->name();
  y.backward(dy);
  ref.y.backward(dy.to(torch::kCPU, torch::kDouble));

  EXPECT_LT(rel_err(x.grad(), ref.x.grad()), tolerance(dtype)) << "dx";
  for (size_t i = 0; i < adapters.size(); ++i) {
    const auto& name = layer->active_adapters()[i];
    EXPECT_EQ(layer->lora_A(name).grad().scalar_type(), layer->lora_A(name).scalar_type());
    EXPECT_LT(rel_err(layer->lora_A(name).grad(), ref.A[i].grad()), tolerance(dtype)) << "dA of " << name;
    EXPECT_LT(rel_err(layer->lora_B(name).grad(), ref.B[i].grad()), tolerance(dtype)) << "dB of " << name;
  }
  if (full) {
    EXPECT_LT(rel_err(layer->weight.grad(), ref.W.grad()), tolerance(dtype)) << "dW0";
    EXPECT_LT(rel_err(layer->bias.grad(), ref.b.grad()), tolerance(dtype)) << "db";
  } else {
    EXPECT_FALSE(layer->weight.grad().defined());
    EXPECT_FALSE(layer->bias.grad().defined());
  }
}

INSTANTIATE_TEST_SUITE_P(
    VariantsDtypesDevices, LoRALinearGradient,
    // fp16 has no CPU matmul kernels in LibTorch 1.13: fp16 runs on CUDA only.
    ::testing::Values(GradCase{torch::kDouble, "cpu", "plain"}, GradCase{torch::kFloat, "cpu", "plain"},
                      GradCase{torch::kBFloat16, "cpu", "plain"}, GradCase{torch::kFloat, "cpu", "slices"},
                      GradCase{torch::kDouble, "cpu", "slices"}, GradCase{torch::kFloat, "cpu", "two"},
                      GradCase{torch::kDouble, "cpu", "full"}, GradCase{torch::kFloat, "cuda", "plain"},
                      GradCase{torch::kHalf, "cuda", "plain"}, GradCase{torch::kBFloat16, "cuda", "slices"},
                      GradCase{torch::kFloat, "cuda", "two"}, GradCase{torch::kFloat, "cuda", "full"}),
    [](const ::testing::TestParamInfo<GradCase>& info) {
      std::string v = info.param.variant;
      v[0] = static_cast<char>(std::toupper(v[0]));
      return v + std::string(c10::toString(info.param.dtype)) + (info.param.device == "cpu" ? "Cpu" : "Cuda");
    });

class LoRALinearGrad : public Seeded {};

TEST_F(LoRALinearGrad, InputAndAdapterGradientsEqualFiniteDifferencesWithSlices) {
  auto layer = layer_with(6, 6, {lora::AdapterOptions(2).alpha(3).enable({false, true, true})});
  layer->to(torch::kDouble);
  layer->weight.requires_grad_(false);
  layer->bias.requires_grad_(false);
  auto x = torch::randn({4, 6}, torch::kDouble).requires_grad_(true);
  auto c = torch::randn({4, 6}, torch::kDouble);
  auto loss = [&] { return (layer(x) * c).sum(); };
  loss().backward();
  std::vector<std::pair<std::string, torch::Tensor>> params{
      {"x", x}, {"A", layer->lora_A("a0")}, {"B", layer->lora_B("a0")}};
  for (auto& [what, p] : params) {
    auto analytic = p.grad().clone();
    auto numeric = numeric_gradient(p, loss);
    EXPECT_LT(rel_err(analytic, numeric), 1e-7) << "gradient of " << what;
  }
}

TEST_F(LoRALinearGrad, EmptyBatchAndNoGradPathsWork) {
  auto layer = layer_with(8, 5, {lora::AdapterOptions(2).dropout(0.3)});
  auto x = torch::randn({0, 8}, torch::TensorOptions().requires_grad(true));
  auto y = layer(x);
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({0, 5}));
  y.sum().backward();
  EXPECT_EQ(layer->lora_A("a0").grad().abs().sum().item<double>(), 0.0);
  torch::NoGradGuard no_grad;
  layer->eval();
  auto z = torch::randn({3, 8});
  EXPECT_FALSE(layer(z).requires_grad());
  EXPECT_LT(rel_err(layer(z), reference(layer, z).y), 1e-5);
}

TEST_F(LoRALinearGrad, WrongInputWidthNamesTheLayer) {
  auto layer = layer_with(8, 5, {lora::AdapterOptions(2)});
  const auto msg = error_of<std::invalid_argument>([&] { layer(torch::randn({3, 7})); });
  EXPECT_NE(msg.find("LoRALinear(in_features=8, out_features=5): input of shape [3,7] does not end in in_features=8"),
            std::string::npos) << msg;
}

// ---- dropout ------------------------------------------------------------------------------

namespace {

/// An adapter that reads its dropped-out input back: in = out = r, A = B = I, W0 = 0, b = 0,
/// alpha = r (scale 1), so the layer's output is dropout(x) itself.
lora::LoRALinear identity_readout(int64_t d, double p, torch::Device device) {
  lora::LoRALinear layer(d, d);
  layer->add_adapter("a0", lora::AdapterOptions(d).alpha(static_cast<double>(d)).dropout(p));
  layer->set_active_adapters({"a0"});
  torch::NoGradGuard no_grad;
  layer->weight.zero_();
  layer->bias.zero_();
  layer->lora_A("a0").copy_(torch::eye(d));
  layer->lora_B("a0").copy_(torch::eye(d));
  layer->to(device);
  layer->train();
  return layer;
}

}  // namespace

class LoRALinearDropout : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    if (GetParam() == "cuda" && !torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device present";
  }
};

// The mask depends only on the random state and x's shape: an identity adapter run from the
// same state reads it back, and the general layer's output and gradients must then equal the
// float64 formula with that mask.
namespace {

/// Reads the dropout mask back through an identity adapter, then checks a general layer's output
/// and gradients against the float64 formula with that mask.
void expect_one_mask_in_forward_and_backward(const torch::Device& device, int64_t in, int64_t out, int64_t N) {
  const double p = 0.3;
  auto layer = layer_with(in, out, {lora::AdapterOptions(4).alpha(8).dropout(p)});
  layer->weight.requires_grad_(false);
  layer->bias.requires_grad_(false);
  layer->to(device);
  layer->train();
  auto readout = identity_readout(in, p, device);
  auto x = torch::randn({N, in}, torch::TensorOptions(device)).requires_grad_(true);
  auto dy = torch::randn({N, out}, torch::TensorOptions(device));

  torch::manual_seed(7);
  if (device.is_cuda()) torch::cuda::manual_seed(7);
  torch::Tensor dropped;
  {
    torch::NoGradGuard no_grad;
    dropped = readout(x).cpu();
  }
  auto mask = dropped != 0;
  // Every element is either dropped or scaled by 1 / (1 - p).
  auto kept = torch::where(mask, dropped - x.detach().cpu() / (1.0 - p), torch::zeros_like(dropped));
  EXPECT_LT(kept.abs().max().item<double>(), 1e-5);
  const double keep_rate = mask.to(torch::kDouble).mean().item<double>();
  EXPECT_GT(keep_rate, 0.55);
  EXPECT_LT(keep_rate, 0.85);

  torch::manual_seed(7);
  if (device.is_cuda()) torch::cuda::manual_seed(7);
  auto y = layer(x);
  y.backward(dy);
  auto ref = reference(layer, x, {mask});
  ref.y.backward(dy.cpu().to(torch::kDouble));
  EXPECT_LT(rel_err(y, ref.y), 1e-5);
  EXPECT_LT(rel_err(x.grad(), ref.x.grad()), 1e-5);
  EXPECT_LT(rel_err(layer->lora_A("a0").grad(), ref.A[0].grad()), 1e-5);
  EXPECT_LT(rel_err(layer->lora_B("a0").grad(), ref.B[0].grad()), 1e-5);

  // Evaluation mode applies no dropout.
  layer->eval();
  torch::NoGradGuard no_grad;
  EXPECT_LT(rel_err(layer(x), reference(layer, x).y), 1e-5);
}

}  // namespace

TEST_P(LoRALinearDropout, TrainingUsesOneMaskInForwardAndBackward) {
  expect_one_mask_in_forward_and_backward(torch::Device(GetParam()), 32, 12, 40);
}

TEST_P(LoRALinearDropout, OneMaskOverManyChunksOfAnOddWidth) {
  // 601 × 1001 elements: rows straddle mask bytes, the CPU kernels split the work into chunks of
  // 32,768 elements, and the last mask byte is partial (601,601 = 8·75,200 + 1).
  expect_one_mask_in_forward_and_backward(torch::Device(GetParam()), 1001, 24, 601);
}

TEST_P(LoRALinearDropout, KeepsOneMinusPAndIsReproducibleFromTheSeed) {
  const torch::Device device(GetParam());
  const double p = 0.1;
  auto readout = identity_readout(256, p, device);
  auto x = torch::ones({4096, 256}, torch::TensorOptions(device));
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  if (device.is_cuda()) torch::cuda::manual_seed(3);
  auto a = readout(x);
  auto b = readout(x);
  torch::manual_seed(3);
  if (device.is_cuda()) torch::cuda::manual_seed(3);
  auto c = readout(x);
  EXPECT_TRUE(torch::equal(a, c));
  EXPECT_FALSE(torch::equal(a, b));
  // 1,048,576 Bernoulli(0.9) draws: the standard deviation of the rate is 0.0003.
  const double rate = (a != 0).to(torch::kDouble).mean().item<double>();
  EXPECT_NEAR(rate, 0.9, 0.0015);
  EXPECT_LT((a.masked_select(a != 0) - 1.0 / 0.9).abs().max().item<double>(), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Devices, LoRALinearDropout, ::testing::Values("cpu", "cuda"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param == "cpu" ? std::string("Cpu") : std::string("Cuda");
                         });

TEST_F(LoRALinearGrad, SplitMix64MatchesTheReferenceStream) {
  // The first outputs of Vigna's reference splitmix64.c seeded with 1234567.
  const std::vector<uint64_t> expected{6457827717110365317ull, 3203168211198807973ull, 9817491932198370423ull,
                                       4593380528125082431ull, 16408922859458223821ull};
  for (size_t k = 0; k < expected.size(); ++k) EXPECT_EQ(lora::detail::splitmix64(1234567, k), expected[k]) << "output " << k;
}

TEST_F(LoRALinearGrad, CpuMaskIsIndependentOfThreadsAndReadBackExactly) {
  auto x = torch::randn({1000, 77});  // 77,000 elements: several parallel chunks, a partial last byte
  const int threads = torch::get_num_threads();
  torch::set_num_threads(1);
  auto one = lora::detail::bit_dropout(x, 0.25, 12345);
  torch::set_num_threads(std::max(2, threads));
  auto many = lora::detail::bit_dropout(x, 0.25, 12345);
  torch::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one.first, many.first));
  EXPECT_TRUE(torch::equal(one.second, many.second));
  // Bit i of the mask is set exactly where element i was kept, and kept elements are x / (1 - p).
  auto bits = one.second.to(torch::kLong).unsqueeze(1);
  auto kept = (bits.bitwise_and(torch::pow(2, torch::arange(8, torch::kLong))) != 0).reshape({-1}).narrow(0, 0, x.numel());
  EXPECT_TRUE(torch::equal(kept.view(x.sizes()), one.first != 0));
  EXPECT_LT(rel_err(one.first.masked_select(kept.view(x.sizes())), x.masked_select(kept.view(x.sizes())) / 0.75), 1e-6);
  // The backward companion applies the same mask and scale to x and, in place, to a gradient.
  auto g = torch::ones({1000, 77});
  auto xd = lora::detail::masked_scale(x, one.second, 0.25, g);
  EXPECT_TRUE(torch::equal(xd, one.first));
  EXPECT_TRUE(torch::equal(g != 0, one.first != 0));
  EXPECT_LT((g.masked_select(g != 0) - 1 / 0.75).abs().max().item<double>(), 1e-6);
  // Neighbouring decisions are uncorrelated (SplitMix64 halves, consecutive counters).
  auto k = kept.to(torch::kDouble);
  auto a = k.narrow(0, 0, k.numel() - 1) - 0.75, b = k.narrow(0, 1, k.numel() - 1) - 0.75;
  EXPECT_LT(std::abs((a * b).mean().item<double>()) / 0.1875, 0.02);
}

// ---- autocast -----------------------------------------------------------------------------

namespace {

/// bf16 autocast on the CPU for a scope (the API changed in LibTorch 2.4).
struct CpuAutocast {
  CpuAutocast() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCPU, true);
#else
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
#endif
  }
  ~CpuAutocast() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(at::kCPU, false);
#else
    at::autocast::set_cpu_enabled(false);
#endif
    at::autocast::clear_cache();
  }
};

}  // namespace

TEST_F(LoRALinearGrad, AutocastComputesInBf16AndReturnsFloatGradients) {
  auto layer = layer_with(32, 16, {lora::AdapterOptions(4).alpha(8).enable({true, true})});
  layer->weight.requires_grad_(false);
  layer->bias.requires_grad_(false);
  auto x = torch::randn({10, 32}).requires_grad_(true);
  auto dy = torch::randn({10, 16});
  auto ref = reference(layer, x);
  torch::Tensor y;
  {
    CpuAutocast autocast;
    y = layer(x);
  }
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);  // as torch::nn::functional::linear under autocast
  y.backward(dy.to(torch::kBFloat16));
  ref.y.backward(dy.to(torch::kDouble));
  EXPECT_EQ(x.grad().scalar_type(), torch::kFloat);
  EXPECT_EQ(layer->lora_A("a0").grad().scalar_type(), torch::kFloat);
  EXPECT_LT(rel_err(y, ref.y), 3e-2);
  EXPECT_LT(rel_err(x.grad(), ref.x.grad()), 3e-2);
  EXPECT_LT(rel_err(layer->lora_A("a0").grad(), ref.A[0].grad()), 3e-2);
  EXPECT_LT(rel_err(layer->lora_B("a0").grad(), ref.B[0].grad()), 3e-2);
}
