#pragma once
// An encoder (RoBERTa, DeBERTa-v2: models.hpp) on a GLUE task with the paper's recipe, through the
// examples' shared training loop (training::Trainer): what the GLUE example brings to it (encoding,
// batches, the loss, what trains, HF's weight-decay exemptions) and the `glue` CLI's commands.

#include "data.hpp"
#include "loop.hpp"
#include "metrics.hpp"
#include "models.hpp"
#include "recipe.hpp"

#include <map>
#include <string>
#include <vector>

namespace glue {

/// One example as token ids (RoBERTa `<s> A </s></s> B </s>`, DeBERTa `[CLS] A [SEP] B [SEP]`) with its label id or score.
struct Encoded {
  std::vector<int64_t> ids;
  int64_t label = -1;
  double score = 0;
};
std::vector<Encoded> encode_all(const PairTokenizer& tok, const std::vector<Example>& examples, int64_t max_len);

/// Examples `indices` padded with `pad_id` to the longest of them, or to `pad_to` when it is
/// larger (the reference pads every example to 512); attention_mask 1 on real tokens.
struct Batch {
  torch::Tensor input_ids, attention_mask;  ///< [B, L] long
  torch::Tensor labels;                     ///< [B] long (classification) or float (regression scores)
  int64_t size() const { return input_ids.defined() ? input_ids.size(0) : 0; }
};
Batch make_batch(const std::vector<Encoded>& examples, const std::vector<size_t>& indices, int64_t pad_id, bool regression,
                 int64_t pad_to = 0);

/// HF's sequence-classification loss as sums over the batch's examples: cross-entropy
/// (num_labels > 1) or squared error (num_labels 1, STS-B); count = the number of examples.
training::LossSums sequence_loss(const Model& model, const Batch& batch);

/// Logits [N, num_labels] of every example in order, in eval mode (no dropout), batches of `batch_size`.
torch::Tensor predict_logits(const Model& model, const std::vector<Encoded>& examples,
                             int64_t batch_size, int64_t pad_id, int64_t pad_to = 0);

/// The task's metrics (glue::compute_metrics) of logits against the examples' labels.
std::map<std::string, double> score_logits(const Task& task, const torch::Tensor& logits, const std::vector<Encoded>& examples);

/// transformers 4.4's Trainer rule: weight decay on every parameter except biases and LayerNorm
/// weights ("bias" or "LayerNorm." in the name; RoBERTa's and DeBERTa's LayerNorms are named so).
bool decays(const std::string& parameter_name);

/// The family's paper adapter on the model at `rank`, `alpha` (RoBERTa: query, value; DeBERTa:
/// query_proj, value_proj, its A drawn from N(0, 0.02) as the reference's _init_weights redraws
/// it), the head trained in full (PEFT's modules_to_save: model.head), everything else frozen.
void prepare_for_lora(const Model& model, int64_t rank, double alpha);

/// `glue train`: options default to the preset of --task (recipe.hpp); an unset value (< 0) takes the preset's.
struct TrainArgs {
  std::string task = "rte", model, data, out, tokenizer;
  std::string arch = "roberta";  ///< the family when no model folder says it (smoke runs); train reads config.json's
  std::string preset_model;      ///< which preset table (roberta-base, roberta-large, deberta-v2-xxlarge); empty: the family's
  std::string init_adapter;  ///< a PEFT folder whose A and B start training (MNLI start); its head is not loaded
  std::string init_loralib;  ///< the same from a loralib checkpoint (roberta_base_lora_mnli.bin)
  std::string resume;        ///< a trainer state (or a folder holding one) to continue from
  double lr = -1;
  int64_t epochs = -1, batch_size = -1, max_len = -1;
  int64_t pad_to = 0;  ///< 0: pad to each batch's longest (same logits); 512: the reference's cost
  int64_t rank = -1;
  double alpha = -1, warmup_ratio = -1, weight_decay = -1, cls_dropout = -1;
  int64_t warmup_steps = -1;
  double clip = 1.0, eps = 1e-8;
  int64_t seed = 0, max_steps = 0;
  int64_t max_train = 0, max_eval = 0;  ///< use only the first N examples (0: all)
  int64_t eval_batch = 64;
  int64_t log_every = 10;  ///< a progress line every N steps (train_log.csv has every step)
  std::string device = "cpu";
  int dist_timeout = 300;
};

/// Whose preset table a run uses: --preset, else the family's (default_preset).
std::string preset_name(const TrainArgs& a);
/// The task's preset with the run's overrides (recipe.hpp).
Preset resolved_preset(const TrainArgs& a);
/// The shared loop's options for the recipe: transformers 4.4's AdamW rule (training::ReferenceAdamW)
/// with eps and clipping from `a`, the preset's weight decay and global batch, its warm-up steps or
/// else its warm-up ratio (the Trainer turns it into ceil(T · ratio) steps, HF's get_warmup_steps).
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
  std::string arch, preset_model;  ///< the model's family and whose preset table ran
  std::string adapted, head;       ///< "query, value" and "classifier": what LoRA adapts, what trains in full
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

/// The smoke run's model: a random 2-layer, 64-wide model of `a.arch` in a.out/random-<arch>
/// (DeBERTa with a SentencePiece model trained on the task's training text, as no spm.model is at
/// hand); sets a.model and, for DeBERTa, a.tokenizer.
void init_smoke_model(TrainArgs& a);

/// `glue convert`: microsoft/LoRA's loralib checkpoint to a PEFT SEQ_CLS folder (adapter + head
/// in modules_to_save), on a RoBERTa-base-shaped model (--model gives another).
void convert_loralib(const std::string& checkpoint, const std::string& out, const std::string& model_dir);

/// Writes out/report.md: the run's settings, its epochs and a Table-2-shaped row beside the
/// paper's (marked smoke when the model is random).
void write_report(const std::string& path, const TrainArgs& a, const TrainResult& r, bool smoke);


}  // namespace glue
