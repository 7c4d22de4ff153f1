// Training speed of the paper's recipe (LoRA r=4 on q,v of c_attn, AdamW, label smoothing 0.1,
// batch 8) on GPT-2-shaped random weights, with per-batch padding against the reference code's
// padding of every example to 512 tokens. Batches come from the real E2E training set when it is
// found ($LORA_E2E_DIR + $LORA_GPT2_DIR, or ../shared/data), else from synthetic examples with
// E2E-like lengths (said in the label).
//
// Counters (plain numbers): tok/s (input tokens that are not padding, per second), step_ms,
// epoch_h (hours for one epoch of E2E's 42,061 examples = 5,258 steps), recipe_h (hours for
// the paper's 5 epochs), pad (share of the computed positions that are padding), GFLOP/s of the
// steps, sgemm (the median rate of a 2048³ sgemm timed just before each step) and of_peak (the
// median over steps of the step's FLOP rate over its sgemm's). BM_SgemmPeak is the best of six
// sgemms, the machine's roofline when it is quiet.
//
// The FLOPs of a step, counted as the step does them (padding included, the causal half of the
// attention scores included since it is computed): per layer and position, 2·12·C² for the four
// projections (c_attn 3C², c_proj C², c_fc 4C², mlp.c_proj 4C²) and 2·2·L·C for the scores and
// their weighted sum (L the batch's length); the backward again as much for the projections,
// whose frozen weights need no weight gradient, and twice as much for the attention. The head
// runs on the completion positions only: 2·C·V forward and 2·C·V for its input gradient (wte is
// frozen). LoRA's own products (r = 4) are left out: under 0.1% of the step.
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

/// The rate of one 2048×2048×2048 sgemm, in GFLOP/s, on the device the steps run on.
double sgemm_rate(bool cuda) {
  static std::map<bool, std::pair<torch::Tensor, torch::Tensor>> operands;
  auto& ab = operands[cuda];
  if (!ab.first.defined()) {
    const auto opt = torch::TensorOptions().device(cuda ? torch::kCUDA : torch::kCPU);
    ab = {torch::randn({2048, 2048}, opt), torch::randn({2048, 2048}, opt)};
  }
  if (cuda) ab.first.sum().item<float>();
  const auto start = std::chrono::steady_clock::now();
  auto c = torch::mm(ab.first, ab.second);
  if (cuda) c.sum().item<float>();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return 2.0 * 2048 * 2048 * 2048 / s / 1e9;
}

/// The best of a few sgemm rates, measured once per process: the machine's roofline.
double sgemm_peak(bool cuda) {
  static std::map<bool, double> peak;
  if (!peak.count(cuda)) {
    double best = 0;
    for (int i = 0; i < 6; ++i) best = std::max(best, sgemm_rate(cuda));
    peak[cuda] = best;
  }
  return peak[cuda];
}

void BM_SgemmPeak(benchmark::State& state) {
  const bool cuda = state.range(0) > 0;
  if (cuda && !torch::cuda::is_available()) return state.SkipWithError("no CUDA device");
  for (auto _ : state) benchmark::DoNotOptimize(sgemm_peak(cuda));
  state.counters["GFLOP/s"] = sgemm_peak(cuda);
}

/// FLOPs of one training step on a batch (see the file comment).
double step_flops(const gpt2::Config& c, const e2e::Batch& b) {
  const double C = static_cast<double>(c.n_embd), L = static_cast<double>(b.input.size(1));
  const double positions = static_cast<double>(b.input.numel()), completions = b.mask.sum().item<double>();
  const double per_position = 2.0 * (2.0 * 12.0 * C * C) + 3.0 * (2.0 * 2.0 * L * C);
  return static_cast<double>(c.n_layer) * positions * per_position + completions * 2.0 * (2.0 * C * static_cast<double>(c.vocab_size));
}

// range(0): 0 small / 1 medium; range(1): pad to (0: the batch's longest); range(2): 0 cpu fp32,
// 1 cuda fp32, 2 cuda bf16 autocast; range(3): 1 = --group-by-length.
void BM_TrainStep(benchmark::State& state) {
  const bool cuda = state.range(2) > 0;
  if (cuda && !torch::cuda::is_available()) return state.SkipWithError("no CUDA device");
  static std::map<std::vector<int64_t>, std::unique_ptr<e2e::Trainer>> trainers;  // built once per configuration
  const std::vector<int64_t> key{state.range(0), state.range(1), state.range(2), state.range(3)};
  auto& trainer = trainers[key];
  const auto& d = data();
  if (!trainer) {
    torch::manual_seed(0);
    e2e::TrainOptions o;
    o.pad_to = state.range(1);
    o.device = cuda ? "cuda" : "cpu";
    o.dtype = state.range(2) == 2 ? e2e::Precision::BF16 : e2e::Precision::FP32;
    o.epochs = 1000;  // never runs out
    o.group_by_length = state.range(3) == 1;
    trainer = std::make_unique<e2e::Trainer>(std::make_shared<gpt2::GPT2LMHeadModelImpl>(shape(state.range(0))), o, d.examples);
    trainer->step(e2e::make_batch(d.examples, trainer->next_indices(), o.pad_to));  // warm-up: allocations, kernels
  }
  // Each step is paired with an sgemm timed just before it, and of_peak is the median of the
  // pairs' ratios: this machine's speed drifts by several per cent from minute to minute, which a
  // peak measured once would mix into the ratio.
  int64_t tokens = 0;
  double flops = 0, positions = 0, real = 0, secs = 0;  // real: positions holding a token
  std::vector<double> ratios, rates;
  for (auto _ : state) {
    const double rate = sgemm_rate(cuda);
    const auto start = std::chrono::steady_clock::now();
    const auto idx = trainer->next_indices();
    for (auto i : idx) {
      tokens += static_cast<int64_t>(d.examples[i].tokens.size()) - 1;
      real += static_cast<double>(d.examples[i].tokens.size());
    }
    const auto batch = e2e::make_batch(d.examples, idx, state.range(1));
    const double f = step_flops(trainer->model()->config, batch);
    positions += static_cast<double>(batch.input.numel());
    benchmark::DoNotOptimize(trainer->step(batch));  // .item() syncs
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.SetIterationTime(s);
    flops += f;
    secs += s;
    rates.push_back(rate);
    ratios.push_back(f / s / 1e9 / rate);
  }
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  };
  state.counters["GFLOP/s"] = flops / secs / 1e9;
  state.counters["sgemm"] = median(rates);
  state.counters["of_peak"] = median(ratios);
  state.counters["pad"] = 1.0 - real / positions;
  const double step_s = secs / static_cast<double>(state.iterations());
  state.counters["tok/s"] = static_cast<double>(tokens) / secs;
  state.counters["step_ms"] = 1e3 * step_s;
  state.counters["epoch_h"] = step_s * kStepsPerEpoch / 3600.0;
  state.counters["recipe_h"] = 5.0 * step_s * kStepsPerEpoch / 3600.0;
  state.SetLabel(std::string(state.range(0) ? "gpt2-medium" : "gpt2-small") +
                 (state.range(1) ? ", pad to 512" : state.range(3) ? ", grouped by length" : ", per-batch padding") +
                 (state.range(2) == 0 ? ", cpu fp32" : state.range(2) == 1 ? ", cuda fp32" : ", cuda bf16") + ", " + d.source);
}

}  // namespace

BENCHMARK(BM_SgemmPeak)->ArgNames({"dev"})->Arg(0)->Arg(1)->Iterations(1)->Unit(benchmark::kMillisecond);
// CPU: small with both paddings and grouped by length, medium per-batch (seconds per step: few
// iterations).
BENCHMARK(BM_TrainStep)
    ->ArgNames({"medium", "pad", "dev", "grouped"})
    ->Args({0, 0, 0, 0})
    ->Args({0, 0, 0, 1})
    ->Args({0, 512, 0, 0})
    ->Args({1, 0, 0, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime()
    ->MinTime(10.0);
// CUDA: bf16 autocast with both paddings, fp32 for comparison, both sizes.
BENCHMARK(BM_TrainStep)
    ->ArgNames({"medium", "pad", "dev", "grouped"})
    ->Args({0, 0, 2, 0})
    ->Args({0, 512, 2, 0})
    ->Args({1, 0, 1, 0})
    ->Args({1, 0, 2, 0})
    ->Args({1, 0, 2, 1})
    ->Args({1, 512, 2, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime()
    ->MinTime(3.0);
