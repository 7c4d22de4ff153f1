// Adapter file sizes and save/load times for a GPT-2-medium-shaped model (24 fused
// c_attn projections 1024 -> 3072, the paper's q/v adapters with r = 4), and raw
// safetensors read speed.
#include <benchmark/benchmark.h>
#include <lora/lora.hpp>

#include <filesystem>

namespace {

struct AttnImpl : torch::nn::Module {
  AttnImpl() { c_attn = register_module("c_attn", lora::LoRALinear(1024, 3072)); }
  lora::LoRALinear c_attn{nullptr};
};
TORCH_MODULE(Attn);

struct MediumImpl : torch::nn::Module {
  MediumImpl() {
    auto t = register_module("transformer", torch::nn::Sequential());
    auto h = t->register_module("h", torch::nn::ModuleList());
    for (int i = 0; i < 24; ++i) {
      auto block = std::make_shared<torch::nn::Module>();
      block->register_module("attn", Attn());
      h->push_back(block);
    }
  }
};
TORCH_MODULE(Medium);

const lora::LoRAConfig kPaper =
    lora::LoRAConfig().r(4).alpha(32).target_modules({"c_attn"}).enable_lora({{"c_attn", {true, false, true}}});

std::string temp(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("lora_bench_" + name)).string();
}

void BM_SaveAdapter(benchmark::State& state) {
  Medium m;
  lora::inject_lora(*m, kPaper);
  const auto dir = temp("save");
  for (auto _ : state) lora::save_adapter(*m, dir);
  state.counters["file_bytes"] = static_cast<double>(std::filesystem::file_size(dir + "/adapter_model.safetensors"));
}

void BM_LoadAdapter(benchmark::State& state) {
  Medium src;
  lora::inject_lora(*src, kPaper);
  const auto dir = temp("load");
  lora::save_adapter(*src, dir);
  Medium m;
  lora::load_adapter(*m, dir);
  for (auto _ : state) lora::load_adapter(*m, dir, lora::LoadAdapterOptions().if_exists(lora::IfExists::Replace));
  state.counters["file_bytes"] = static_cast<double>(std::filesystem::file_size(dir + "/adapter_model.safetensors"));
}

// Reading 128 MiB of float32 through the validated parser into tensors.
void BM_LoadSafetensors128MiB(benchmark::State& state) {
  const auto path = temp("big.safetensors");
  lora::NamedTensors t;
  for (int i = 0; i < 8; ++i) t.insert("w" + std::to_string(i), torch::randn({1024, 4096}));
  lora::save_safetensors(path, t);
  for (auto _ : state) benchmark::DoNotOptimize(lora::load_safetensors(path).size());
  state.SetBytesProcessed(state.iterations() * 8 * 1024 * 4096 * 4);
}

}  // namespace

BENCHMARK(BM_SaveAdapter)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LoadAdapter)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LoadSafetensors128MiB)->Unit(benchmark::kMillisecond);
