// A LoRA training step against a frozen torch::nn::Linear step (the goal: <= 1.05x),
// and merged-adapter inference against the plain layer (the goal: equal).
// Shapes: d = 1024, r = 8, 4096 tokens, float32, CPU unless --cuda is wired in later.
#include <benchmark/benchmark.h>
#include <lora/lora.hpp>

namespace {

constexpr int64_t kD = 1024, kTokens = 4096, kRank = 8;

// Forward + backward to the input through a frozen Linear: what a frozen layer costs
// inside a fine-tuned network.
void BM_FrozenLinearStep(benchmark::State& state) {
  torch::manual_seed(0);
  torch::nn::Linear layer(kD, kD);
  for (auto& p : layer->parameters()) p.requires_grad_(false);
  auto x = torch::randn({kTokens, kD}, torch::requires_grad());
  for (auto _ : state) {
    x.mutable_grad() = torch::Tensor();
    layer(x).sum().backward();
    benchmark::DoNotOptimize(x.grad().data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * kTokens);
}

// The same with a LoRA adapter whose A and B are trained.
void BM_LoRAStep(benchmark::State& state) {
  torch::manual_seed(0);
  lora::LoRALinear layer(kD, kD);
  layer->add_adapter("default", lora::AdapterOptions(kRank).alpha(16).dropout(state.range(0) / 100.0));
  layer->set_active_adapters({"default"});
  layer->weight.requires_grad_(false);
  layer->bias.requires_grad_(false);
  layer->train();
  auto x = torch::randn({kTokens, kD}, torch::requires_grad());
  for (auto _ : state) {
    x.mutable_grad() = torch::Tensor();
    layer->lora_A("default").mutable_grad() = torch::Tensor();
    layer->lora_B("default").mutable_grad() = torch::Tensor();
    layer(x).sum().backward();
    benchmark::DoNotOptimize(x.grad().data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * kTokens);
}

void BM_LinearInference(benchmark::State& state) {
  torch::manual_seed(0);
  torch::nn::Linear layer(kD, kD);
  torch::NoGradGuard no_grad;
  auto x = torch::randn({kTokens, kD});
  for (auto _ : state) benchmark::DoNotOptimize(layer(x).data_ptr());
  state.SetItemsProcessed(state.iterations() * kTokens);
}

// range(0) = 1: merged (zero extra latency expected); 0: adapter applied on the fly.
void BM_LoRAInference(benchmark::State& state) {
  torch::manual_seed(0);
  lora::LoRALinear layer(kD, kD);
  layer->add_adapter("default", lora::AdapterOptions(kRank).alpha(16).init(lora::Init::Random));
  layer->set_active_adapters({"default"});
  layer->eval();
  if (state.range(0)) lora::merge(*layer);
  torch::NoGradGuard no_grad;
  auto x = torch::randn({kTokens, kD});
  for (auto _ : state) benchmark::DoNotOptimize(layer(x).data_ptr());
  state.SetItemsProcessed(state.iterations() * kTokens);
}

}  // namespace

BENCHMARK(BM_FrozenLinearStep)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LoRAStep)->ArgName("dropout_pct")->Arg(0)->Arg(10)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LinearInference)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LoRAInference)->ArgName("merged")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
