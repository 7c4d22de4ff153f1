// glue-bench: what a GLUE training step costs.
//
// BM_GlueStepPaddedTo512VsToTheBatch: the recipe's training step (forward, backward, AdamW, through
// training::Trainer) on RTE batches of 8 from ../shared, padded to 512 as microsoft/LoRA's scripts
// do (--pad_to_max_length) against padded to the batch's longest (this example's default: the same
// logits). Two models with the same weights, one step of each per iteration, alternating which
// goes first; `ratio` is the median over pairs of (padded-to-512 time / padded-to-batch time).
// Model: two of roberta-base's layers (width 768, 12 heads, 3072) so that 512-token batches fit a
// 2-core machine's patience; attention grows with length squared, the rest linearly, so the ratio
// of the full model is close to this one's.
//
// BM_RobertaBaseLoRAStep: a whole roberta-base-shaped model (12 layers, random weights), LoRA r = 8
// on query and value plus the head, one training step on 8 sequences of 128 tokens; `tokens_per_s`.
// bench/python/roberta_baseline.py times the same step written plainly in PyTorch (a loralib-style
// layer, torch.optim.AdamW) on the same libtorch, for the side-by-side.
//
// The RTE path comes from $LORA_DATA_DIR (else ../shared/data beside the checkout).
#include <benchmark/benchmark.h>

#include "finetune.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>

namespace {

namespace fs = std::filesystem;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

std::shared_ptr<roberta::RobertaForSequenceClassificationImpl> model_of(int64_t layers, uint64_t seed) {
  roberta::Config c;  // roberta-base's width
  c.num_hidden_layers = layers;
  torch::manual_seed(seed);
  auto m = std::make_shared<roberta::RobertaForSequenceClassificationImpl>(c);
  glue::prepare_for_lora(*m, 8, 16);
  return m;
}

training::Options step_options() {
  glue::TrainArgs a;
  a.batch_size = 8;
  a.epochs = 1000;  // never done within a benchmark
  return glue::loop_options(a, glue::resolved_preset(a));
}

double timed_step(training::Trainer& t, roberta::RobertaForSequenceClassificationImpl& m, const std::vector<glue::Encoded>& data,
                  int64_t pad_to) {
  const auto idx = t.next_indices();
  const auto batch = glue::make_batch(data, idx, 1, false, pad_to);
  const auto t0 = std::chrono::steady_clock::now();
  t.step([&] { return glue::sequence_loss(m, batch); }, idx.empty(), static_cast<int64_t>(idx.size()));
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void BM_GlueStepPaddedTo512VsToTheBatch(benchmark::State& state) {
  const std::string data = glue::default_data_dir();
  if (!fs::exists(data + "/glue/RTE/train.tsv") || !fs::exists(data + "/roberta/vocab.json")) {
    state.SkipWithError(("RTE or RoBERTa's tokenizer not found under " + data + " (set LORA_DATA_DIR)").c_str());
    return;
  }
  const auto& task = glue::task_named("rte");
  const auto tok = roberta::Tokenizer::from_dir(data + "/roberta");
  auto examples = glue::read_tsv(task, data + "/glue/RTE/train.tsv");
  examples.resize(std::min<size_t>(examples.size(), 512));
  const auto encoded = glue::encode_all(tok, examples, 512);
  auto to_batch = model_of(2, 1), to_512 = model_of(2, 1);
  training::Trainer batch_run(to_batch, step_options(), encoded.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  training::Trainer full_run(to_512, step_options(), encoded.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  std::vector<double> ratios, batch_s, full_s, lengths;
  for (auto _ : state) {
    const auto idx = batch_run.next_indices();
    int64_t longest = 0;
    for (size_t i : idx) longest = std::max<int64_t>(longest, static_cast<int64_t>(encoded[i].ids.size()));
    lengths.push_back(static_cast<double>(longest));
    double tb, tf;
    if (state.iterations() % 2 == 0) {
      tb = timed_step(batch_run, *to_batch, encoded, 0);
      tf = timed_step(full_run, *to_512, encoded, 512);
    } else {
      tf = timed_step(full_run, *to_512, encoded, 512);
      tb = timed_step(batch_run, *to_batch, encoded, 0);
    }
    state.SetIterationTime(tb + tf);
    ratios.push_back(tf / tb);
    batch_s.push_back(tb);
    full_s.push_back(tf);
  }
  state.counters["ratio"] = median(ratios);
  state.counters["batch_ms"] = 1e3 * median(batch_s);
  state.counters["pad512_ms"] = 1e3 * median(full_s);
  state.counters["batch_len"] = median(lengths);
}
BENCHMARK(BM_GlueStepPaddedTo512VsToTheBatch)->UseManualTime()->Iterations(12)->Unit(benchmark::kMillisecond);

void BM_RobertaBaseLoRAStep(benchmark::State& state) {
  constexpr int64_t kBatch = 8, kLen = 128;
  torch::manual_seed(3);
  std::vector<glue::Encoded> data(64);
  for (auto& e : data) {
    e.ids = std::vector<int64_t>(kLen);
    auto ids = torch::randint(3, 50000, {kLen});
    for (int64_t t = 0; t < kLen; ++t) e.ids[static_cast<size_t>(t)] = ids[t].item<int64_t>();
    e.label = static_cast<int64_t>(e.ids[1] % 2);
  }
  auto m = model_of(12, 2);
  training::Trainer t(m, step_options(), data.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  timed_step(t, *m, data, 0);  // warm-up: the first step allocates the optimizer's moments
  std::vector<double> times;
  for (auto _ : state) {
    const double s = timed_step(t, *m, data, 0);
    state.SetIterationTime(s);
    times.push_back(s);
  }
  state.counters["step_ms"] = 1e3 * median(times);
  state.counters["tokens_per_s"] = static_cast<double>(kBatch * kLen) / median(times);
  state.counters["threads"] = at::get_num_threads();  // the Python side prints torch.get_num_threads()
}
BENCHMARK(BM_RobertaBaseLoRAStep)->UseManualTime()->Iterations(5)->Unit(benchmark::kMillisecond);

}  // namespace
