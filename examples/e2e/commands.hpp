#pragma once
// gpt2-e2e's subcommands, one options struct and one function each; gpt2_e2e.cpp only maps the
// command line onto these structs (CLI11) and prints errors.

#include "scorer.hpp"
#include "trainer.hpp"

#include <lora/analysis.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace e2e::cli {

/// `train`: the recipe on a folder of train.txt + valid.txt; writes epoch_N/, checkpoint/, and
/// adapter/ (LoRA) or model/ (full fine-tuning), each with a trainer_state.pt, and train_log.csv.
/// Launched by torchrun (or with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set), the ranks train
/// data-parallel (e2e::Trainer); rank 0 alone prints, logs and saves.
struct TrainArgs {
  std::string model, data, out, resume;
  int64_t max_len = 512, log_every = 10, valid_limit = 0, threads = 0, save_every = 0;
  int64_t dist_timeout = 300;  ///< seconds a rank waits for the others before it gives up
  TrainOptions o;
};
struct TrainResult {
  int64_t trainable = 0, total = 0, steps = 0, tokens = 0, total_steps = 0;
  double seconds = 0;
  std::vector<double> losses, valid;
};
TrainResult train(const TrainArgs& a);

/// `generate`: one hypothesis per distinct MR of an mr||ref file, with the paper's beam search;
/// writes hypothesis.txt and references.txt (the scorer's layout). Several adapters: `adapters`
/// holds "NAME=DIR" entries (a plain DIR is "default"), all loaded on one base model, and `routes`
/// "NAME=TEXT" rules: an MR containing TEXT uses adapter NAME (the first matching rule; MRs that
/// match none use the first adapter). Each MR's hypothesis equals a run with its adapter alone.
struct GenerateArgs {
  std::string model, data, out, device = "cpu";
  std::vector<std::string> adapters, routes;
  int64_t limit = 0, beams = 10, max_new_tokens = 64;
};
struct GenerateResult {
  std::vector<std::string> hyps;
  std::vector<std::vector<std::string>> refs;
  double seconds = 0;
  int64_t tokens = 0;
};
GenerateResult generate(const GenerateArgs& a);

/// `eval`: mean per-token cross-entropy over the completion tokens of an mr||ref file.
struct EvalArgs {
  std::string model, adapter, data, device = "cpu";
  int64_t limit = 0;
};
double eval(const EvalArgs& a);

/// `export`: the base model with the adapter merged, as a plain HF GPT-2 folder (+ tokenizer files).
struct ExportArgs {
  std::string model, adapter, out;
};
void export_merged(const ExportArgs& a);

/// `score`: BLEU, NIST, ROUGE-L, CIDEr of a hypothesis file against a references file, as text
/// or as JSON (METEOR null: it needs the METEOR jar).
struct ScoreArgs {
  std::string hyp, refs;
  bool json = false;
};
std::string score(const ScoreArgs& a);

/// `init`: a randomly initialised GPT-2 in HF layout, optionally with GPT-2's tokenizer files.
struct InitArgs {
  std::string out, vocab;
  int64_t layers = 2, embd = 64, heads = 2, positions = 1024, seed = 0;
};
void init(const InitArgs& a);

/// `run`: train -> generate on test.txt -> score -> report.md + loss.svg. Without a model: smoke
/// mode, a small random GPT-2 for a short budget.
struct RunArgs {
  std::string model, data, vocab, out = "runs/e2e", device = "cpu";
  Precision dtype = Precision::FP32;
  int64_t max_steps = -1, gen_limit = -1, valid_limit = -1, beams = 10, threads = 0, epochs = 5, batch_size = 8, seed = 110;
};
void run(const RunArgs& a);

/// `analyze`: the paper's §7 on one or two trained adapters of one base model (lora/analysis.hpp).
/// Writes analysis.md: per adapted weight (per slice of c_attn: W_q and W_v apart) Table 7's
/// numbers and ΔW's singular values (spectra_NAME.svg and .csv); with two adapters (r = 8 and
/// r = 64, or two seeds) also φ of their A for i ≤ max_i, j ≤ max_j as heat maps like Figures 3
/// and 4 (phi_LAYER_TYPE.svg), and φ of two random Gaussian matrices of the same shapes.
/// `adapters` holds DIR or NAME=DIR entries (names default to A and B).
struct AnalyzeArgs {
  std::string model, out;
  std::vector<std::string> adapters;
  int64_t max_i = 8, max_j = 64, seed = 0;
};
struct AnalyzeResult {
  std::vector<std::string> names;                             ///< the adapters' names, in order
  std::vector<std::vector<lora::LayerAnalysis>> layers;       ///< per adapter: analyze_adapter
  std::vector<lora::SubspaceComparison> comparisons;          ///< two adapters: compare_adapters
  int64_t n_layer = 0;
};
AnalyzeResult analyze(const AnalyzeArgs& a);

/// `sweep`: the paper's Tables 5 and 6 on GPT-2 + E2E. Trains one adapter per cell with the
/// recipe (e2e::Trainer) and scores it by validation loss: Table 5, which attention weights at an
/// equal parameter budget (r = budget for one type, budget/2 for two, budget/4 for four), and
/// Table 6, ranks × {W_q; W_q, W_v; all four}. Then Figure 3 (the W_q, W_v adapters at the two
/// `compare` ranks), Figure 4 (the larger one at two seeds) and Table 7 (W_q of the middle
/// layer at every rank) through `analyze`. Writes sweep.md beside the paper's numbers (GPT-3 on
/// WikiSQL and MultiNLI), figure3/, figure4/ and runs/<cell>/ (PEFT adapters). Without a model:
/// smoke mode: a small random GPT-2, 60 steps per cell, 100 validation examples.
struct SweepArgs {
  std::string model, data, vocab, out = "runs/sweep", device = "cpu";
  std::vector<int64_t> ranks = {1, 2, 4, 8, 64}, compare = {8, 64};
  int64_t budget_rank = 8, max_steps = -1, valid_limit = -1, epochs = 5, batch_size = 8, seed = 110, threads = 0;
};
void sweep(const SweepArgs& a);

/// "NAME=VALUE", or a plain VALUE named `fallback`; `option` names the flag in errors.
std::pair<std::string, std::string> name_value(const std::string& s, const std::string& fallback, const char* option);

/// The first folder holding `file`: `flag` when given (an error if it lacks the file), then $env,
/// then ../shared/data/<sub> and data/<sub> under the working directory (scripts/get-data.sh
/// fills data/). An error lists where it looked.
std::string find_data(const std::string& flag, const char* env, const std::string& sub, const std::string& file);

}  // namespace e2e::cli
