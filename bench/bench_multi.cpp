// Many adapters in one batch (issue #12): a GPT-2-medium-shaped c_attn (1024 -> 3072), 64 rows
// of 16 tokens, 8 adapters of rank 8, inference. Three ways, interleaved one call each per
// iteration: every row through one adapter (the single-adapter forward), each row through its
// own adapter with lora::AdapterPerRow (gathered batched matmuls), and PEFT's way (a loop over
// the adapters, each on its rows' sub-batch, scattered back). Counters: mixed_vs_single and
// loop_vs_single are medians of per-iteration ratios (goal: mixed <= 1.3x single on the CPU).
#include <benchmark/benchmark.h>
#include <lora/lora.hpp>

#include <algorithm>
#include <chrono>
#include <functional>

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

void BM_MixedAdapterBatch(benchmark::State& state) {
  constexpr int64_t kIn = 1024, kOut = 3072, kRows = 64, kTokens = 16, kAdapters = 8, kRank = 8;
  torch::manual_seed(0);
  lora::LoRALinear layer(kIn, kOut);
  std::vector<std::string> names, per_row;
  for (int64_t a = 0; a < kAdapters; ++a) {
    names.push_back("task" + std::to_string(a));
    layer->add_adapter(names.back(), lora::AdapterOptions(kRank).alpha(16).init(lora::Init::Random));
  }
  for (int64_t r = 0; r < kRows; ++r) per_row.push_back(names[static_cast<size_t>(r % kAdapters)]);
  layer->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({kRows, kTokens, kIn});
  auto single = [&] {
    layer->set_active_adapters({names[0]});
    benchmark::DoNotOptimize(layer(x).data_ptr());
  };
  auto mixed = [&] {
    lora::AdapterPerRow route(*layer, per_row);
    benchmark::DoNotOptimize(layer(x).data_ptr());
  };
  auto loop = [&] {  // PEFT's _mixed_batch_forward: the base once, then each adapter on its rows
    layer->set_active_adapters({});
    torch::Tensor y = layer(x);
    for (int64_t a = 0; a < kAdapters; ++a) {
      const auto rows = torch::arange(a, kRows, kAdapters);
      const auto& n = names[static_cast<size_t>(a)];
      const auto xs = x.index_select(0, rows);
      const auto u = torch::matmul(torch::matmul(xs, layer->lora_A(n).t()), layer->lora_B(n).t()) * layer->scaling(n);
      y.index_add_(0, rows, u);
    }
    benchmark::DoNotOptimize(y.data_ptr());
  };
  using clock = std::chrono::steady_clock;
  auto time = [](const std::function<void()>& fn) {
    const auto t0 = clock::now();
    fn();
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  single(), mixed(), loop();  // warm-up
  std::vector<double> mixed_ratio, loop_ratio, single_s;
  for (auto _ : state) {
    const double ts = time(single), tm = time(mixed), tl = time(loop);
    state.SetIterationTime(ts + tm + tl);
    mixed_ratio.push_back(tm / ts);
    loop_ratio.push_back(tl / ts);
    single_s.push_back(ts);
  }
  state.counters["mixed_vs_single"] = median(mixed_ratio);
  state.counters["loop_vs_single"] = median(loop_ratio);
  state.counters["single_ms"] = 1e3 * median(single_s);
}

}  // namespace

BENCHMARK(BM_MixedAdapterBatch)->Unit(benchmark::kMillisecond)->UseManualTime()->MinTime(3.0);
