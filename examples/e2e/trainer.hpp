#pragma once
// The paper's fine-tuning of GPT-2 on E2E: what GPT-2 brings to the shared training loop
// (training::Trainer, examples/train) — its adapter, its completion-token loss, the NLG recipe's
// defaults — with a trainer state that resumes a run exactly.

#include "data.hpp"
#include "loop.hpp"
#include "model.hpp"
#include "optimizer.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace e2e {

// The shared loop's names, used here as GPT-2's own.
using training::device_named;
using training::name_of;
using training::Position;
using training::precision_names;
using training::Precision;
using training::ReferenceAdamW;
using training::update_rule_names;
using training::UpdateRule;

/// What train adapts: a LoRA adapter, or every weight (the paper's FT baseline).
enum class Method { LoRA, Full };

/// The command-line names ("lora"/"full"), also the values stored in trainer states; CLI11's
/// CheckedTransformer validates options with them (as with training::update_rule_names()).
const std::map<std::string, Method>& method_names();
std::string name_of(Method m);

/// The recipe of Hu et al. (2021) as microsoft/LoRA examples/NLG trains it (gpt2_ft.py with its
/// README's command), as defaults.
struct TrainOptions {
  Method method = Method::LoRA;
  /// The attention weights to adapt, in the paper's notation (§7.1): any of q, k, v (slices of
  /// the fused c_attn) and o (attn.c_proj); "qv" is the paper's choice (gpt2::attention_lora_config).
  std::string weights = "qv";
  std::string targets;  ///< instead of `weights`: whole modules with this name suffix (e.g. "c_fc")
  int64_t rank = 4;
  double alpha = 32, lora_dropout = 0.1;
  bool dora = false;  ///< DoRA adapters (Liu et al., 2024; PEFT's use_dora) instead of plain LoRA: not the paper's
  double lr = 2e-4, weight_decay = 0.01, label_smoothing = 0.1, clip = 0;  ///< clip 0: off, as in the paper
  int64_t warmup = 500;        ///< linear warm-up steps, then linear decay to 0
  UpdateRule optimizer = UpdateRule::Reference;
  /// Apply config.json's embd/attn/resid dropout in training. Off: the reference model has none.
  bool model_dropout = false;
  int64_t epochs = 5, batch_size = 8, grad_accum = 1, max_steps = 0;  ///< max_steps 0: all epochs
  int64_t pad_to = 0;          ///< pad each batch to this length (0: to the batch's own longest)
  /// Batches of similar lengths (e2e::group_by_length on each epoch's shuffle): less padding, but
  /// not the reference's order, so off by default. Needs the Trainer built from the examples.
  bool group_by_length = false;
  int64_t seed = 110;
  std::string device = "cpu";  ///< "cpu" or "cuda"
  Precision dtype = Precision::FP32;  ///< BF16: CUDA only
};

/// The batch's per-example sums of the reference loss over completion tokens and their counts
/// (e2e::masked_loss_from_hidden on the model's hidden states, the LM head applied to completion
/// positions only), on the model's device.
std::pair<torch::Tensor, torch::Tensor> completion_loss(gpt2::GPT2LMHeadModelImpl& model, const Batch& batch,
                                                        double label_smoothing);

/// Mean per-token cross-entropy over all completion tokens of `examples` (no label smoothing),
/// in eval mode, batches of `batch_size` in order. With a group of several ranks, each rank
/// evaluates its contiguous share of the examples and the sums are all-reduced: every rank
/// returns the mean over all of them.
double mean_loss(gpt2::GPT2LMHeadModelImpl& model, const std::vector<Example>& examples, int64_t batch_size,
                 lora::dist::ProcessGroup* group = nullptr);

/// Trains a GPT2LMHeadModel on encoded E2E examples as the reference code does: its AdamW (eps
/// 1e-6, bias correction, decay after the update), the schedule stepped after every batch (update
/// k uses lr·k/warmup, then lr·(T−k)/(T−warmup)), no dropout inside the model, the label-smoothed
/// loss over completion tokens (position().tokens counts them); optional gradient accumulation
/// and clipping, bf16 autocast on CUDA. Shuffling, data parallelism and the trainer state are
/// training::Trainer's.
///
/// Example:
/// \code
///   e2e::Trainer trainer(model, e2e::TrainOptions(), train_set.size());
///   while (!trainer.done()) {
///     double loss = trainer.step(e2e::make_batch(train_set, trainer.next_indices()));
///     if (trainer.position().batch == 0) trainer.save_state("run/trainer_state.pt");  // an epoch ended
///   }
/// \endcode
class Trainer {
 public:
  /// Injects the adapter (method lora; the model must have none yet) or unfreezes every
  /// parameter (full), moves the model to the device and builds the optimizer.
  Trainer(std::shared_ptr<gpt2::GPT2LMHeadModelImpl> model, TrainOptions options, size_t num_examples,
          lora::dist::ProcessGroup group = lora::dist::ProcessGroup());
  /// The same for these examples, whose lengths options.group_by_length needs.
  Trainer(std::shared_ptr<gpt2::GPT2LMHeadModelImpl> model, TrainOptions options, const std::vector<Example>& examples,
          lora::dist::ProcessGroup group = lora::dist::ProcessGroup());

  /// The indices of this rank's share of the next batch (see training::Trainer::next_indices).
  std::vector<size_t> next_indices() const { return loop_.next_indices(); }
  /// One batch: forward, backward and, every grad_accum batches or at an epoch's end, an
  /// optimizer step. Advances the position; returns the batch's mean loss.
  double step(const Batch& batch);
  bool done() const { return loop_.done(); }
  bool accumulating() const { return loop_.accumulating(); }
  /// The learning rate of step `step` (0-based): the reference's LambdaLR, which is stepped after
  /// each batch, so step 0 runs at lr 0.
  double lr_at(int64_t step) const { return loop_.lr_at(step); }
  int64_t steps_per_epoch() const { return loop_.steps_per_epoch(); }
  int64_t total_steps() const { return loop_.total_steps(); }
  const Position& position() const { return loop_.position(); }
  const TrainOptions& options() const { return o_; }
  int64_t trainable_count() const { return loop_.trainable_count(); }
  int64_t parameter_count() const { return loop_.parameter_count(); }
  std::shared_ptr<gpt2::GPT2LMHeadModelImpl> model() const { return model_; }
  lora::dist::ProcessGroup& group() { return loop_.group(); }

  /// The trainer state (training::Trainer::save_state), recording the method and what is adapted.
  void save_state(const std::string& file) const { loop_.save_state(file); }
  /// Restores a state written by save_state; the options must match (the error names the first that differs).
  void load_state(const std::string& path) { loop_.load_state(path); }

 private:
  std::shared_ptr<gpt2::GPT2LMHeadModelImpl> model_;
  TrainOptions o_;
  training::Trainer loop_;
};

}  // namespace e2e
