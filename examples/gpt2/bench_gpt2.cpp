// GPT-2-small-shaped random weights (12 layers, 768 wide, 12 heads): forward tokens/s, and
// generation tokens/s with the KV cache against recomputing the whole prefix each step. Many
// adapters (issue #12): 8 prompts each with its own adapter against all on one adapter, and
// switching a merged GPT-2-medium-shaped model between adapters against reloading it.
#include <benchmark/benchmark.h>

#include "generate.hpp"

#include <lora/lora.hpp>

#include <chrono>
#include <filesystem>

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

// 8 prompts of 16 tokens, 16 new tokens each (greedy, KV cache), 8 adapters of the paper's shape
// (r 4, q and v). range(0) = 1: each prompt through its own adapter (lora::AdapterPerRow);
// 0: all through one adapter. Report tokens/s of each, then compare.
void BM_Gpt2SmallGenerateManyAdapters(benchmark::State& state) {
  torch::manual_seed(0);
  static auto model = [] {
    auto m = std::make_shared<gpt2::GPT2LMHeadModelImpl>(gpt2::Config());
    for (int a = 0; a < 8; ++a) lora::inject_lora(*m, gpt2::paper_lora_config(), "task" + std::to_string(a));
    torch::NoGradGuard no_grad;
    for (auto& p : lora::lora_parameters(*m)) p.normal_(0, 0.02);
    m->eval();
    return m;
  }();
  std::vector<std::vector<int64_t>> prompts(8);
  for (auto& p : prompts)
    for (int t = 0; t < 16; ++t) p.push_back(static_cast<int64_t>((t * 7919 + p.size() * 31 + 17) % 50000));
  gpt2::GenerateOptions o;
  o.max_new_tokens = 16;
  o.eos_token_ids = {};
  std::vector<std::string> per_prompt;
  for (int a = 0; a < 8; ++a) per_prompt.push_back("task" + std::to_string(a));
  for (auto _ : state) {
    if (state.range(0)) {
      lora::AdapterPerRow route(*model, per_prompt);
      benchmark::DoNotOptimize(gpt2::generate(*model, prompts, o));
    } else {
      lora::set_adapter(*model, {"task0"});
      benchmark::DoNotOptimize(gpt2::generate(*model, prompts, o));
    }
  }
  state.SetItemsProcessed(state.iterations() * 8 * 16);
  state.SetLabel("new tokens/s = items_per_second");
}

// GPT-2-medium-shaped (24 layers, 1024 wide, 355M parameters), the paper's adapter twice: time to
// switch the merged model from adapter a to b in place, and to reload the base weights from a
// safetensors file (page cache warm) and merge b, as one would without the kept W0 copy.
void BM_Gpt2MediumMergedSwitch(benchmark::State& state) {
  torch::manual_seed(0);
  gpt2::Config c;
  c.n_layer = 24;
  c.n_embd = 1024;
  c.n_head = 16;
  auto model = std::make_shared<gpt2::GPT2LMHeadModelImpl>(c);
  const auto dir = (std::filesystem::temp_directory_path() / ("gpt2_medium_bench_" + std::to_string(::getpid()))).string();
  if (!state.range(0)) model->save_pretrained(dir);
  for (const char* n : {"a", "b"}) lora::inject_lora(*model, gpt2::paper_lora_config(), n);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : lora::lora_parameters(*model)) p.normal_(0, 0.02);
  }
  model->eval();
  lora::set_adapter(*model, {"a"});
  lora::merge(*model);
  bool to_b = true;
  for (auto _ : state) {
    if (state.range(0)) {
      lora::switch_merged_adapter(*model, {to_b ? "b" : "a"});
    } else {
      auto fresh = gpt2::GPT2LMHeadModelImpl::from_pretrained(dir);
      lora::inject_lora(*fresh, gpt2::paper_lora_config(), "b");
      lora::merge(*fresh);
      benchmark::DoNotOptimize(fresh.get());
    }
    to_b = !to_b;
  }
  state.SetLabel(state.range(0) ? "switch in place (unmerge a from the kept W0, merge b)" : "reload W0 from disk, merge b");
  if (!state.range(0)) std::filesystem::remove_all(dir);
}

BENCHMARK(BM_Gpt2SmallGenerateManyAdapters)->ArgName("per_prompt_adapters")->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Gpt2MediumMergedSwitch)->ArgName("in_place")->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(4);
BENCHMARK(BM_Gpt2SmallForward)->Arg(128)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Gpt2SmallGenerate)->ArgName("kv_cache")->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond)->UseRealTime();
