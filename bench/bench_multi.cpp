// Many adapters in one batch (issues #12, #24): a GPT-2-medium-shaped c_attn (1024 -> 3072),
// inference, each way interleaved one call each per iteration:
//   single     every row through one adapter (the plain one-adapter forward): the goal's yardstick
//   mixed      each row through its own adapter, lora::AdapterPerRow (Auto: the layer picks)
//   stacked    the same, forced to the stacked algorithm (mixed.hpp)
//   segmented  the same, forced to the segmented algorithm
//   loop       PEFT's _mixed_batch_forward: the base once, then each adapter on its rows'
//              sub-batch (index_select), scaled, added back (index_add_)
// Counters are medians of per-iteration ratios; `picked` is what Auto chose (0 stacked,
// 1 segmented). Goals: mixed <= 1.10x single at 8 adapters r 8, 64 rows x 16 tokens, and
// mixed <= loop at every shape of the sweep.
//
// Arguments: adapters, rank (0: mixed ranks 4, 8, 16, 32, 64 in turn), rows, tokens per row,
// layout (0: rows assigned round-robin, the worst case for segments; 1: consecutive rows share
// an adapter, as the beams of a prompt or a batch sorted by adapter).
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
  constexpr int64_t kIn = 1024, kOut = 3072;
  const int64_t n_adapters = state.range(0), rank = state.range(1), rows = state.range(2), tokens = state.range(3);
  const bool grouped = state.range(4) != 0;
  torch::manual_seed(0);
  lora::LoRALinear layer(kIn, kOut);
  std::vector<std::string> names, per_row;
  const int64_t mixed_ranks[] = {4, 8, 16, 32, 64};
  for (int64_t a = 0; a < n_adapters; ++a) {
    names.push_back("task" + std::to_string(a));
    const int64_t r = rank > 0 ? rank : mixed_ranks[a % 5];
    layer->add_adapter(names.back(), lora::AdapterOptions(r).alpha(16).init(lora::Init::Random));
  }
  std::vector<int64_t> adapter_of(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) {
    adapter_of[static_cast<size_t>(i)] = grouped ? i * std::min(n_adapters, rows) / rows : i % n_adapters;
    per_row.push_back(names[static_cast<size_t>(adapter_of[static_cast<size_t>(i)])]);
  }
  layer->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({rows, tokens, kIn});
  auto single = [&] {
    layer->set_active_adapters({names[0]});
    benchmark::DoNotOptimize(layer(x).data_ptr());
  };
  // The mixed ways run on a copy of the layer (same weights) that keeps one AdapterPerRow scope
  // for the whole run, as generate() keeps one across decoding steps: its stacked adapters are
  // built once. Between calls only the scope's strategy changes.
  auto routed = std::dynamic_pointer_cast<lora::LoRALinearImpl>(layer->clone());
  lora::AdapterPerRow scope(*routed, per_row);
  auto run_with = [&](lora::MixedStrategy s) {
    return [&, s] {
      scope.set_strategy(s);
      benchmark::DoNotOptimize(routed->forward(x).data_ptr());
    };
  };
  auto mixed = run_with(lora::MixedStrategy::Auto), stacked = run_with(lora::MixedStrategy::Stacked),
       segmented = run_with(lora::MixedStrategy::Segmented);
  std::vector<torch::Tensor> row_index(static_cast<size_t>(n_adapters));
  for (int64_t a = 0; a < n_adapters; ++a) {
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < rows; ++i)
      if (adapter_of[static_cast<size_t>(i)] == a) idx.push_back(i);
    if (!idx.empty()) row_index[static_cast<size_t>(a)] = torch::tensor(idx, torch::kLong);
  }
  auto loop = [&] {  // PEFT's _mixed_batch_forward: the base once, then each adapter on its rows
    layer->set_active_adapters({});
    torch::Tensor y = layer(x);
    for (int64_t a = 0; a < n_adapters; ++a) {
      const auto& idx = row_index[static_cast<size_t>(a)];
      if (!idx.defined()) continue;
      const auto& n = names[static_cast<size_t>(a)];
      const auto xs = x.index_select(0, idx);
      const auto u = torch::matmul(torch::matmul(xs, layer->lora_A(n).t()), layer->lora_B(n).t()) * layer->scaling(n);
      y.index_add_(0, idx, u);
    }
    benchmark::DoNotOptimize(y.data_ptr());
  };
  using clock = std::chrono::steady_clock;
  auto time = [](const std::function<void()>& fn) {
    const auto t0 = clock::now();
    fn();
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  single(), loop(), stacked(), segmented(), mixed();  // warm-up
  std::vector<double> r_mixed, r_loop, r_stacked, r_segmented, r_mixed_loop, single_s;
  for (auto _ : state) {
    const double ts = time(single), tm = time(mixed), tl = time(loop), tst = time(stacked), tse = time(segmented);
    state.SetIterationTime(ts + tm + tl + tst + tse);
    r_mixed.push_back(tm / ts);
    r_loop.push_back(tl / ts);
    r_stacked.push_back(tst / ts);
    r_segmented.push_back(tse / ts);
    r_mixed_loop.push_back(tm / tl);
    single_s.push_back(ts);
  }
  // What Auto picks here, from the same rule the layer runs.
  lora::detail::RowSlots slots;
  lora::detail::AdapterStack stack;
  for (int64_t i = 0; i < rows; ++i) {
    const auto& n = per_row[static_cast<size_t>(i)];
    auto it = std::find(slots.present.begin(), slots.present.end(), n);
    if (it == slots.present.end()) {
      slots.present.push_back(n);
      stack.offset.push_back(stack.total_rank());
      stack.rank.push_back(layer->adapter_options(n).r());
      it = slots.present.end() - 1;
    }
    slots.slot.push_back(it - slots.present.begin());
  }
  const auto costs = lora::detail::MixedCosts::for_device(torch::kCPU);
  const auto plan = lora::detail::plan_segments(slots, stack, tokens, kIn, kOut, 4, costs);
  state.counters["picked"] =
      lora::detail::pick_mixed_strategy(plan, stack, rows * tokens, kIn, kOut, 4, costs) == lora::MixedStrategy::Stacked ? 0 : 1;
  state.counters["mixed_vs_single"] = median(r_mixed);
  state.counters["loop_vs_single"] = median(r_loop);
  state.counters["mixed_vs_loop"] = median(r_mixed_loop);
  state.counters["stacked_vs_single"] = median(r_stacked);
  state.counters["segmented_vs_single"] = median(r_segmented);
  state.counters["single_ms"] = 1e3 * median(single_s);
}

}  // namespace

// The goal's shape first, then the sweep: adapters 2..64, ranks 4..64 (and mixed), rows 1..64,
// tokens 1..512 (1: a decoding step with the KV cache), both layouts.
BENCHMARK(BM_MixedAdapterBatch)
    ->ArgNames({"adapters", "rank", "rows", "tokens", "grouped"})
    ->Args({8, 8, 64, 16, 0})
    ->Args({2, 8, 64, 16, 0})
    ->Args({64, 8, 64, 16, 0})
    ->Args({8, 4, 64, 16, 0})
    ->Args({8, 64, 64, 16, 0})
    ->Args({64, 64, 64, 16, 0})
    ->Args({8, 0, 64, 16, 0})
    ->Args({64, 0, 64, 16, 0})
    ->Args({8, 8, 64, 16, 1})
    ->Args({64, 64, 64, 16, 1})
    ->Args({8, 8, 1, 16, 0})
    ->Args({8, 8, 8, 16, 0})
    ->Args({2, 4, 2, 512, 0})
    ->Args({8, 8, 8, 512, 0})
    ->Args({8, 64, 8, 512, 1})
    ->Args({8, 8, 1, 1, 0})
    ->Args({2, 4, 2, 1, 0})
    ->Args({8, 8, 8, 1, 0})
    ->Args({8, 8, 64, 1, 0})
    ->Args({64, 8, 64, 1, 0})
    ->Args({64, 64, 64, 1, 0})
    ->Args({64, 0, 64, 1, 0})
    ->Args({8, 8, 64, 1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime()
    ->MinTime(5.0);
