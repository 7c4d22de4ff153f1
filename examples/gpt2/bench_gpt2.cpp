// GPT-2-small-shaped random weights (12 layers, 768 wide, 12 heads): forward tokens/s, and
// generation tokens/s with the KV cache against recomputing the whole prefix each step.
#include <benchmark/benchmark.h>

#include "generate.hpp"

namespace {

gpt2::GPT2LMHeadModelImpl& small() {
  static auto model = [] {
    torch::manual_seed(0);
    auto m = std::make_shared<gpt2::GPT2LMHeadModelImpl>(gpt2::Config());
    m->eval();
    return m;
  }();
  return *model;
}

void BM_Gpt2SmallForward(benchmark::State& state) {
  auto& m = small();
  torch::NoGradGuard no_grad;
  auto ids = torch::randint(0, 50257, {1, state.range(0)});
  for (auto _ : state) benchmark::DoNotOptimize(m.forward(ids).data_ptr());
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetLabel("tokens/s = items_per_second");
}

// 32 new tokens after a 32-token prompt; range(0) = 1 with the KV cache, 0 without.
void BM_Gpt2SmallGenerate(benchmark::State& state) {
  auto& m = small();
  torch::NoGradGuard no_grad;
  const int64_t prompt = 32, steps = 32;
  auto ids = torch::randint(0, 50257, {1, prompt});
  for (auto _ : state) {
    if (state.range(0)) {
      gpt2::KVCache cache;
      auto logits = m.forward(ids, {}, &cache);
      for (int64_t s = 0; s < steps; ++s) logits = m.forward(logits.select(1, -1).argmax(-1, true), {}, &cache);
    } else {
      auto seq = ids;
      for (int64_t s = 0; s < steps; ++s) seq = torch::cat({seq, m.forward(seq).select(1, -1).argmax(-1, true)}, 1);
    }
  }
  state.SetItemsProcessed(state.iterations() * steps);
}

}  // namespace

BENCHMARK(BM_Gpt2SmallForward)->Arg(128)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Gpt2SmallGenerate)->ArgName("kv_cache")->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond)->UseRealTime();
