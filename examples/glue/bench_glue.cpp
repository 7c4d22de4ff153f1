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
// BM_DebertaXxlargeVsRobertaLargeLoRAStep: two layers of deberta-v2-xxlarge's shape (LoRA r 16 on
// query_proj, value_proj) beside two of roberta-large's (r 8 on query, value), the same batches:
// tokens/s per layer and for the whole models (48 and 24 layers).
// BM_DebertaXxlargeTrainingMemory: the peak memory of an xxlarge-shaped LoRA step at batch 1 in
// fp32, from 2 and 4 layers extrapolated to 48 (run it alone: --benchmark_filter=Memory).
//
// The RTE path comes from $LORA_DATA_DIR (else ../shared/data beside the checkout).
#include <benchmark/benchmark.h>

#include "finetune.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>

namespace {

namespace fs = std::filesystem;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

glue::Model model_of(int64_t layers, uint64_t seed) {
  roberta::Config c;  // roberta-base's width
  c.num_hidden_layers = layers;
  torch::manual_seed(seed);
  auto m = glue::wrap(std::make_shared<roberta::RobertaForSequenceClassificationImpl>(c));
  glue::prepare_for_lora(m, 8, 16);
  return m;
}

/// `layers` of roberta-large (1024 wide, 16 heads, 4096; LoRA r 8, alpha 16 on query, value).
glue::Model roberta_large(int64_t layers, int64_t vocab) {
  roberta::Config c;
  c.num_hidden_layers = layers;
  c.hidden_size = 1024;
  c.num_attention_heads = 16;
  c.intermediate_size = 4096;
  c.vocab_size = vocab;
  torch::manual_seed(5);
  auto m = glue::wrap(std::make_shared<roberta::RobertaForSequenceClassificationImpl>(c));
  glue::prepare_for_lora(m, 8, 16);
  return m;
}

/// `layers` of deberta-v2-xxlarge (1536 wide, 24 heads of 64, 6144; shared keys, c2p|p2c, 256 log
/// buckets, the convolution; LoRA r 16, alpha 32 on query_proj, value_proj, as its scripts).
glue::Model deberta_xxlarge(int64_t layers, int64_t vocab) {
  deberta::Config c = deberta::Config::xxlarge();
  c.num_hidden_layers = layers;
  c.vocab_size = vocab;
  torch::manual_seed(6);
  auto m = glue::wrap(std::make_shared<deberta::DebertaV2ForSequenceClassificationImpl>(c));
  glue::prepare_for_lora(m, 16, 32);
  return m;
}

std::vector<glue::Encoded> random_examples(size_t n, int64_t len, int64_t vocab) {
  torch::manual_seed(3);
  std::vector<glue::Encoded> data(n);
  for (auto& e : data) {
    e.ids = std::vector<int64_t>(static_cast<size_t>(len));
    auto ids = torch::randint(4, vocab, {len});
    for (int64_t t = 0; t < len; ++t) e.ids[static_cast<size_t>(t)] = ids[t].item<int64_t>();
    e.label = static_cast<int64_t>(e.ids[1] % 2);
  }
  return data;
}

training::Options step_options() {
  glue::TrainArgs a;
  a.batch_size = 8;
  a.epochs = 1000;  // never done within a benchmark
  return glue::loop_options(a, glue::resolved_preset(a));
}

double timed_step(training::Trainer& t, const glue::Model& m, const std::vector<glue::Encoded>& data,
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
  const glue::PairTokenizer tok = roberta::Tokenizer::from_dir(data + "/roberta");
  auto examples = glue::read_tsv(task, data + "/glue/RTE/train.tsv");
  examples.resize(std::min<size_t>(examples.size(), 512));
  const auto encoded = glue::encode_all(tok, examples, 512);
  auto to_batch = model_of(2, 1), to_512 = model_of(2, 1);
  training::Trainer batch_run(to_batch.module, step_options(), encoded.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  training::Trainer full_run(to_512.module, step_options(), encoded.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  std::vector<double> ratios, batch_s, full_s, lengths;
  for (auto _ : state) {
    const auto idx = batch_run.next_indices();
    int64_t longest = 0;
    for (size_t i : idx) longest = std::max<int64_t>(longest, static_cast<int64_t>(encoded[i].ids.size()));
    lengths.push_back(static_cast<double>(longest));
    double tb, tf;
    if (state.iterations() % 2 == 0) {
      tb = timed_step(batch_run, to_batch, encoded, 0);
      tf = timed_step(full_run, to_512, encoded, 512);
    } else {
      tf = timed_step(full_run, to_512, encoded, 512);
      tb = timed_step(batch_run, to_batch, encoded, 0);
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
  const auto data = random_examples(64, kLen, 50000);
  auto m = model_of(12, 2);
  training::Trainer t(m.module, step_options(), data.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  timed_step(t, m, data, 0);  // warm-up: the first step allocates the optimizer's moments
  std::vector<double> times;
  for (auto _ : state) {
    const double s = timed_step(t, m, data, 0);
    state.SetIterationTime(s);
    times.push_back(s);
  }
  state.counters["step_ms"] = 1e3 * median(times);
  state.counters["tokens_per_s"] = static_cast<double>(kBatch * kLen) / median(times);
  state.counters["threads"] = at::get_num_threads();  // the Python side prints torch.get_num_threads()
}
BENCHMARK(BM_RobertaBaseLoRAStep)->UseManualTime()->Iterations(5)->Unit(benchmark::kMillisecond);

void BM_DebertaXxlargeVsRobertaLargeLoRAStep(benchmark::State& state) {
  // Two layers of each shape (the embeddings at a 1000-token vocabulary: the step is the layers),
  // the same 8 x 128-token batches, one step of each per iteration, alternating which goes first.
  constexpr int64_t kBatch = 8, kLen = 128, kLayers = 2;
  const auto data = random_examples(64, kLen, 1000);
  auto deb = deberta_xxlarge(kLayers, 1000), rob = roberta_large(kLayers, 1000);
  training::Trainer td(deb.module, step_options(), data.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  training::Trainer tr(rob.module, step_options(), data.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  timed_step(td, deb, data, 0);
  timed_step(tr, rob, data, 0);
  std::vector<double> ratios, ds, rs;
  for (auto _ : state) {
    double a, b;
    if (state.iterations() % 2 == 0) {
      a = timed_step(td, deb, data, 0);
      b = timed_step(tr, rob, data, 0);
    } else {
      b = timed_step(tr, rob, data, 0);
      a = timed_step(td, deb, data, 0);
    }
    state.SetIterationTime(a + b);
    ratios.push_back(a / b);
    ds.push_back(a);
    rs.push_back(b);
  }
  const double tokens = static_cast<double>(kBatch * kLen);
  state.counters["deberta_layer_tok_s"] = tokens * kLayers / median(ds);  // tokens/s through one layer
  state.counters["roberta_layer_tok_s"] = tokens * kLayers / median(rs);
  state.counters["layer_time_ratio"] = median(ratios);  // per layer: DeBERTa-xxlarge / RoBERTa-large
  // Whole models: 48 layers against 24.
  state.counters["deberta_xxl_tok_s"] = tokens / (median(ds) / kLayers * 48);
  state.counters["roberta_large_tok_s"] = tokens / (median(rs) / kLayers * 24);
  state.counters["trainable_deberta_per_layer"] = 2.0 * 16 * (1536 + 1536);
}
BENCHMARK(BM_DebertaXxlargeVsRobertaLargeLoRAStep)->UseManualTime()->Iterations(6)->Unit(benchmark::kMillisecond);

/// The peak resident memory of this process so far (VmHWM), in GiB.
double peak_gib() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / (1024.0 * 1024.0);
  return 0;
}

void BM_DebertaXxlargeTrainingMemory(benchmark::State& state) {
  // Peak memory of a LoRA training step of deberta-v2-xxlarge's shape at batch 1 and 320 tokens
  // (RTE's max length) in fp32 on the CPU: measured with 2 and then 4 layers (the real 128100-token
  // vocabulary), the difference giving one layer's weights and saved activations, extrapolated to
  // 48 layers. Run it alone (--benchmark_filter=Memory): VmHWM only grows.
  const auto data = random_examples(1, 320, 128000);
  std::vector<double> peaks;
  for (auto _ : state) {
    for (int64_t layers : {2, 4}) {
      auto m = deberta_xxlarge(layers, 128100);
      training::Options o = step_options();
      o.batch_size = 1;
      training::Trainer t(m.module, o, data.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
      timed_step(t, m, data, 0);
      peaks.push_back(peak_gib());
    }
  }
  const double per_layer = (peaks[1] - peaks[0]) / 2, base = peaks[0] - 2 * per_layer;
  state.counters["peak_2_layers_gib"] = peaks[0];
  state.counters["peak_4_layers_gib"] = peaks[1];
  state.counters["per_layer_gib"] = per_layer;
  state.counters["est_48_layers_gib"] = base + 48 * per_layer;
}
BENCHMARK(BM_DebertaXxlargeTrainingMemory)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
