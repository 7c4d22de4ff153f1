// Training speed of the paper's recipe (LoRA r=4 on q,v of c_attn, AdamW, label smoothing 0.1,
// batch 8) on GPT-2-shaped random weights, with per-batch padding against the reference code's
// padding of every example to 512 tokens. Batches come from the real E2E training set when it is
// found ($LORA_E2E_DIR + $LORA_GPT2_DIR, or ../shared/data), else from synthetic examples with
// E2E-like lengths (said in the label).
//
// Counters (plain numbers): tok/s (input tokens that are not padding, per second), step_ms,
// epoch_h (hours for one epoch of E2E's 42,061 examples = 5,258 steps) and recipe_h (hours for
// the paper's 5 epochs).
#include <benchmark/benchmark.h>

#include "../test_util.hpp"
#include "tokenizer.hpp"
#include "trainer.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <random>

namespace {

constexpr double kStepsPerEpoch = 5258;  // ceil(42061 / 8)

struct Data {
  std::vector<e2e::Example> examples;
  std::string source;
};

const Data& data() {
  static const Data d = [] {
    Data out;
    const auto e2e_dir = example_test::data_dir("LORA_E2E_DIR", "e2e"), gpt2_dir = example_test::data_dir("LORA_GPT2_DIR", "gpt2");
    if (std::filesystem::exists(e2e_dir + "/train.txt") && std::filesystem::exists(gpt2_dir + "/vocab.json")) {
      const auto tok = gpt2::Tokenizer::from_dir(gpt2_dir);
      auto pairs = e2e::read_pairs(e2e_dir + "/train.txt");
      std::mt19937_64 rng(0);
      std::shuffle(pairs.begin(), pairs.end(), rng);
      for (size_t i = 0; i < 4000 && i < pairs.size(); ++i) out.examples.push_back(e2e::encode_example(tok, pairs[i]));
      out.source = "E2E train";
    } else {
      std::mt19937_64 rng(0);  // context 15..35 and completion 10..40 tokens: about E2E's mean of 53
      for (int i = 0; i < 4000; ++i) {
        e2e::Example e;
        e.context_len = 15 + static_cast<int64_t>(rng() % 21);
        const int64_t len = e.context_len + 10 + static_cast<int64_t>(rng() % 31);
        for (int64_t t = 0; t < len; ++t) e.tokens.push_back(static_cast<int64_t>(rng() % 50257));
        out.examples.push_back(e);
      }
      out.source = "synthetic (no E2E data found)";
    }
    return out;
  }();
  return d;
}

gpt2::Config shape(int64_t size) {
  gpt2::Config c;  // GPT-2 small: 12 layers, 768 wide, 12 heads
  if (size == 1) c.n_layer = 24, c.n_embd = 1024, c.n_head = 16;  // GPT-2 medium, the paper's main model
  return c;
}

// range(0): 0 small / 1 medium; range(1): pad to (0: the batch's longest); range(2): 0 cpu fp32,
// 1 cuda fp32, 2 cuda bf16 autocast.
void BM_TrainStep(benchmark::State& state) {
  const bool cuda = state.range(2) > 0;
  if (cuda && !torch::cuda::is_available()) return state.SkipWithError("no CUDA device");
  static std::map<std::vector<int64_t>, std::unique_ptr<e2e::Trainer>> trainers;  // built once per configuration
  const std::vector<int64_t> key{state.range(0), state.range(1), state.range(2)};
  auto& trainer = trainers[key];
  const auto& d = data();
  if (!trainer) {
    torch::manual_seed(0);
    e2e::TrainOptions o;
    o.pad_to = state.range(1);
    o.device = cuda ? "cuda" : "cpu";
    o.dtype = state.range(2) == 2 ? e2e::Precision::BF16 : e2e::Precision::FP32;
    o.epochs = 1000;  // never runs out
    trainer = std::make_unique<e2e::Trainer>(std::make_shared<gpt2::GPT2LMHeadModelImpl>(shape(state.range(0))), o, d.examples.size());
    trainer->step(e2e::make_batch(d.examples, trainer->next_indices(), o.pad_to));  // warm-up: allocations, kernels
  }
  int64_t tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const auto idx = trainer->next_indices();
    for (auto i : idx) tokens += static_cast<int64_t>(d.examples[i].tokens.size()) - 1;
    benchmark::DoNotOptimize(trainer->step(e2e::make_batch(d.examples, idx, state.range(1))));  // .item() syncs
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double step_s = secs / static_cast<double>(state.iterations());
  state.counters["tok/s"] = static_cast<double>(tokens) / secs;
  state.counters["step_ms"] = 1e3 * step_s;
  state.counters["epoch_h"] = step_s * kStepsPerEpoch / 3600.0;
  state.counters["recipe_h"] = 5.0 * step_s * kStepsPerEpoch / 3600.0;
  state.SetLabel(std::string(state.range(0) ? "gpt2-medium" : "gpt2-small") + (state.range(1) ? ", pad to 512" : ", per-batch padding") +
                 (state.range(2) == 0 ? ", cpu fp32" : state.range(2) == 1 ? ", cuda fp32" : ", cuda bf16") + ", " + d.source);
}

}  // namespace

// CPU: small with both paddings, medium per-batch (seconds per step: few iterations).
BENCHMARK(BM_TrainStep)
    ->ArgNames({"medium", "pad", "dev"})
    ->Args({0, 0, 0})
    ->Args({0, 512, 0})
    ->Args({1, 0, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(10.0);
// CUDA: bf16 autocast with both paddings, fp32 for comparison, both sizes.
BENCHMARK(BM_TrainStep)
    ->ArgNames({"medium", "pad", "dev"})
    ->Args({0, 0, 2})
    ->Args({0, 512, 2})
    ->Args({1, 0, 1})
    ->Args({1, 0, 2})
    ->Args({1, 512, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3.0);
