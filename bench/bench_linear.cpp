// A LoRA training step against a frozen torch::nn::Linear step (the goal: <= 1.05x),
// and merged-adapter inference against the plain layer (the goal: equal).
// Shapes: d = 1024, r = 8, float32; 4096 tokens on the CPU, 65536 on CUDA (the "dev" argument:
// 0 CPU, 1 CUDA, skipped with a message when no device is present).
#include <benchmark/benchmark.h>
#include <lora/lora.hpp>

namespace {

constexpr int64_t kD = 1024, kRank = 8;

/// The device of argument `dev` (0 CPU, 1 CUDA); nullopt (and the benchmark skipped) without CUDA.
c10::optional<torch::Device> device_of(benchmark::State& state, int64_t dev) {
  if (dev == 0) return torch::Device(torch::kCPU);
  if (torch::cuda::is_available()) return torch::Device(torch::kCUDA);
  state.SkipWithError("no CUDA device present");
  return c10::nullopt;
}

int64_t tokens_on(const torch::Device& d) { return d.is_cuda() ? 65536 : 4096; }

/// CUDA work is asynchronous: each iteration waits for its kernels.
void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

// Forward + backward to the input through a frozen Linear: what a frozen layer costs
// inside a fine-tuned network.
void BM_FrozenLinearStep(benchmark::State& state) {
  const auto dev = device_of(state, state.range(0));
  if (!dev) return;
  const int64_t tokens = tokens_on(*dev);
  torch::manual_seed(0);
  torch::nn::Linear layer(kD, kD);
  layer->to(*dev);
  for (auto& p : layer->parameters()) p.requires_grad_(false);
  auto x = torch::randn({tokens, kD}, torch::TensorOptions(*dev).requires_grad(true));
  for (auto _ : state) {
    x.mutable_grad() = torch::Tensor();
    layer(x).sum().backward();
    benchmark::DoNotOptimize(x.grad().data_ptr());
    sync(*dev);
  }
  state.SetItemsProcessed(state.iterations() * tokens);
}

// The same with a LoRA adapter whose A and B are trained.
void BM_LoRAStep(benchmark::State& state) {
  const auto dev = device_of(state, state.range(1));
  if (!dev) return;
  const int64_t tokens = tokens_on(*dev);
  torch::manual_seed(0);
  lora::LoRALinear layer(kD, kD);
  layer->add_adapter("default", lora::AdapterOptions(kRank).alpha(16).dropout(state.range(0) / 100.0));
  layer->set_active_adapters({"default"});
  layer->weight.requires_grad_(false);
  layer->bias.requires_grad_(false);
  layer->to(*dev);
  layer->train();
  auto x = torch::randn({tokens, kD}, torch::TensorOptions(*dev).requires_grad(true));
  for (auto _ : state) {
    x.mutable_grad() = torch::Tensor();
    layer->lora_A("default").mutable_grad() = torch::Tensor();
    layer->lora_B("default").mutable_grad() = torch::Tensor();
    layer(x).sum().backward();
    benchmark::DoNotOptimize(x.grad().data_ptr());
    sync(*dev);
  }
  state.SetItemsProcessed(state.iterations() * tokens);
}

void BM_LinearInference(benchmark::State& state) {
  const auto dev = device_of(state, state.range(0));
  if (!dev) return;
  const int64_t tokens = tokens_on(*dev);
  torch::manual_seed(0);
  torch::nn::Linear layer(kD, kD);
  layer->to(*dev);
  torch::NoGradGuard no_grad;
  auto x = torch::randn({tokens, kD}, *dev);
  for (auto _ : state) {
    benchmark::DoNotOptimize(layer(x).data_ptr());
    sync(*dev);
  }
  state.SetItemsProcessed(state.iterations() * tokens);
}

// range(0) = 1: merged (zero extra latency expected); 0: adapter applied on the fly.
void BM_LoRAInference(benchmark::State& state) {
  const auto dev = device_of(state, state.range(1));
  if (!dev) return;
  const int64_t tokens = tokens_on(*dev);
  torch::manual_seed(0);
  lora::LoRALinear layer(kD, kD);
  layer->add_adapter("default", lora::AdapterOptions(kRank).alpha(16).init(lora::Init::Random));
  layer->set_active_adapters({"default"});
  layer->to(*dev);
  layer->eval();
  if (state.range(0)) lora::merge(*layer);
  torch::NoGradGuard no_grad;
  auto x = torch::randn({tokens, kD}, *dev);
  for (auto _ : state) {
    benchmark::DoNotOptimize(layer(x).data_ptr());
    sync(*dev);
  }
  state.SetItemsProcessed(state.iterations() * tokens);
}

}  // namespace

BENCHMARK(BM_FrozenLinearStep)->ArgName("dev")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LoRAStep)->ArgNames({"dropout_pct", "dev"})->ArgsProduct({{0, 10}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LinearInference)->ArgName("dev")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LoRAInference)->ArgNames({"merged", "dev"})->ArgsProduct({{0, 1}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime();
