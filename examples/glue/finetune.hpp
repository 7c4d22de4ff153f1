#pragma once
// RoBERTa on a GLUE task with the paper's recipe, through the examples' shared training loop
// (training::Trainer): what the GLUE example brings to it (encoding, batches, the loss, what trains,
// HF's weight-decay exemptions) and the `glue` CLI's commands.

#include "data.hpp"
#include "loop.hpp"
#include "metrics.hpp"
#include "model.hpp"
#include "recipe.hpp"
#include "roberta_tokenizer.hpp"

#include <map>
#include <string>
#include <vector>

namespace glue {

/// One example as token ids (`<s> A </s></s> B </s>`) with its label id or score.
struct Encoded {
  std::vector<int64_t> ids;
  int64_t label = -1;
  double score = 0;
};
std::vector<Encoded> encode_all(const roberta::Tokenizer& tok, const std::vector<Example>& examples, int64_t max_len);

/// Examples `indices` padded with `pad_id` to the longest of them, or to `pad_to` when it is
/// larger (the reference pads every example to 512); attention_mask 1 on real tokens.
struct Batch {
  torch::Tensor input_ids, attention_mask;  ///< [B, L] long
  torch::Tensor labels;                     ///< [B] long (classification) or float (regression scores)
  int64_t size() const { return input_ids.defined() ? input_ids.size(0) : 0; }
};
Batch make_batch(const std::vector<Encoded>& examples, const std::vector<size_t>& indices, int64_t pad_id, bool regression,
                 int64_t pad_to = 0);

/// HF RobertaForSequenceClassification's loss as sums over the batch's examples: cross-entropy
/// (num_labels > 1) or squared error (num_labels 1, STS-B); count = the number of examples.
training::LossSums sequence_loss(roberta::RobertaForSequenceClassificationImpl& model, const Batch& batch);

/// Logits [N, num_labels] of every example in order, in eval mode (no dropout), batches of `batch_size`.
torch::Tensor predict_logits(roberta::RobertaForSequenceClassificationImpl& model, const std::vector<Encoded>& examples,
                             int64_t batch_size, int64_t pad_id, int64_t pad_to = 0);

/// The task's metrics (glue::compute_metrics) of logits against the examples' labels.
std::map<std::string, double> score_logits(const Task& task, const torch::Tensor& logits, const std::vector<Encoded>& examples);

/// transformers 4.4's Trainer rule: weight decay on every parameter except biases and LayerNorm
/// weights ("bias" or "LayerNorm." in the name; RoBERTa's LayerNorms are named so).
bool decays(const std::string& parameter_name);

/// The paper's adapter on the model (r, alpha on query and value; roberta::paper_lora_config()),
/// the head trained in full (PEFT's modules_to_save = ["classifier"]), everything else frozen.
void prepare_for_lora(roberta::RobertaForSequenceClassificationImpl& model, int64_t rank, double alpha);

/// `glue train`: options default to the preset of --task (recipe.hpp); an unset value (< 0) takes the preset's.
struct TrainArgs {
  std::string task = "rte", model, data, out, tokenizer;
  std::string preset_model = "roberta-base";  ///< which preset table: roberta-base or roberta-large
  std::string init_adapter;  ///< a PEFT folder whose A and B start training (MNLI start); its head is not loaded
  std::string init_loralib;  ///< the same from a loralib checkpoint (roberta_base_lora_mnli.bin)
  std::string resume;        ///< a trainer state (or a folder holding one) to continue from
  double lr = -1;
  int64_t epochs = -1, batch_size = -1, max_len = -1;
  int64_t pad_to = 0;  ///< 0: pad to each batch's longest (same logits); 512: the reference's cost
  int64_t rank = 8;
  double alpha = 16, warmup_ratio = 0.06, weight_decay = 0.1, clip = 1.0, eps = 1e-8;
  int64_t seed = 0, max_steps = 0;
  int64_t max_train = 0, max_eval = 0;  ///< use only the first N examples (0: all)
  int64_t eval_batch = 64;
  int64_t log_every = 10;  ///< a progress line every N steps (train_log.csv has every step)
  std::string device = "cpu";
  int dist_timeout = 300;
};

/// The task's preset with the run's overrides (recipe.hpp).
Preset resolved_preset(const TrainArgs& a);
/// The shared loop's options for the recipe: transformers 4.4's AdamW rule (training::ReferenceAdamW)
/// with eps, weight decay and clipping from `a`, the global batch, and the warm-up ratio (the
/// Trainer turns it into ceil(T · ratio) steps, HF's get_warmup_steps).
training::Options loop_options(const TrainArgs& a, const Preset& p);

/// One epoch's evaluation.
struct EpochResult {
  int64_t epoch = 0;
  double train_loss = 0;
  std::map<std::string, double> metrics;  ///< by file ("dev", "dev_mismatched") and HF name: "dev/accuracy"
  double headline = 0;                    ///< the paper's metric on the first eval file
};

struct TrainResult {
  std::vector<EpochResult> epochs;
  size_t best = 0;  ///< index into epochs of the best headline (the paper reports the best epoch)
  Preset preset;    ///< the values that ran (preset and overrides)
  int64_t trainable = 0, total = 0, steps = 0, train_examples = 0;
  std::vector<double> losses;  ///< per step, as trained in this run
  double seconds = 0;
};

/// Trains, evaluating after every epoch; writes out/epoch_N (adapter + trainer state),
/// out/best (the best epoch's adapter), out/metrics.json, out/train_log.csv, out/loss.svg. Data parallel under torchrun's variables.
/// A run resumed with `resume` evaluates, reports and picks the best among the epochs it runs.
TrainResult train(const TrainArgs& a);

/// `glue eval` / `glue predict`: the model with an adapter folder (optional) on the task's eval files.
struct EvalArgs {
  std::string task = "rte", model, adapter, data, tokenizer, logits_out;
  int64_t max_len = 512, batch_size = 64, max_eval = 0, pad_to = 0;
  std::string device = "cpu";
};
/// Metrics per eval file ("dev/accuracy", ...); with logits_out, writes one JSON array of logits
/// per line, one line per example in input order (all eval files, one after the other).
std::map<std::string, double> evaluate(const EvalArgs& a);

/// Where the smoke run and the benchmark read RTE and RoBERTa's tokenizer: $LORA_DATA_DIR, else
/// ../shared/data beside the checkout.
std::string default_data_dir();

/// `glue init`: a small random RoBERTa folder (config.json + model.safetensors) with RoBERTa's
/// vocabulary size and `num_labels`, for the smoke run and tests.
void init_model(const std::string& dir, int64_t layers, int64_t hidden, int64_t num_labels, uint64_t seed);

/// `glue convert`: microsoft/LoRA's loralib checkpoint to a PEFT SEQ_CLS folder (adapter + head
/// in modules_to_save), on a RoBERTa-base-shaped model (--model gives another).
void convert_loralib(const std::string& checkpoint, const std::string& out, const std::string& model_dir);

/// Writes out/report.md: the run's settings, its epochs and a Table-2-shaped row beside the
/// paper's (marked smoke when the model is random).
void write_report(const std::string& path, const TrainArgs& a, const TrainResult& r, bool smoke);

/// The RoBERTa model of a folder with `num_labels` (the head is fresh when the checkpoint has none).
std::shared_ptr<roberta::RobertaForSequenceClassificationImpl> load_model(const std::string& dir, int64_t num_labels);

}  // namespace glue
