#pragma once
// The paper's fine-tuning loop for GPT-2 on E2E, one batch at a time, with a trainer state that
// resumes a run exactly (a PEFT adapter alone holds no optimizer moments, step or RNG state).

#include "data.hpp"
#include "model.hpp"

#include <lora/distributed.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace e2e {

/// What train adapts: a LoRA adapter, or every weight (the paper's FT baseline).
enum class Method { LoRA, Full };
/// The AdamW update rule: examples/NLG's (--correct_bias; e2e::ReferenceAdamW) or LibTorch's.
enum class UpdateRule { Reference, Torch };
/// Training precision: fp32, or bf16 autocast on CUDA (weights, gradients, moments stay fp32).
enum class Precision { FP32, BF16 };

/// The command-line names of each enum ("lora"/"full", "reference"/"torch", "fp32"/"bf16"), also
/// the values stored in trainer states; CLI11's CheckedTransformer validates options with them.
const std::map<std::string, Method>& method_names();
const std::map<std::string, UpdateRule>& update_rule_names();
const std::map<std::string, Precision>& precision_names();
std::string name_of(Method m);
std::string name_of(UpdateRule u);
std::string name_of(Precision p);

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

/// The device of a --device value, parsed by torch::Device: "cpu", or "cuda" / "cuda:N" where that
/// CUDA device is present; anything else is an error naming the value.
torch::Device device_named(const std::string& name);

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

/// Where a run is: the next batch is `batch` (0-based) of epoch `epoch` (1-based); `step` batches
/// were trained so far, holding `tokens` completion tokens.
struct Position {
  int64_t epoch = 1, batch = 0, step = 0, tokens = 0;
};

/// Trains a GPT2LMHeadModel on encoded E2E examples as the reference code does: its AdamW (eps
/// 1e-6, bias correction, decay after the update), the schedule stepped after every batch (update
/// k uses lr·k/warmup, then lr·(T−k)/(T−warmup)), no dropout inside the model, the label-smoothed
/// loss over completion tokens; optional gradient accumulation and clipping, bf16 autocast on CUDA. Each epoch visits the examples in a shuffle seeded by
/// (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
///
/// Data parallel (a `group` of N ranks): every rank walks the same shuffled order, takes its
/// contiguous share of each global batch (next_indices), and normalises its summed loss by the
/// batch's *global* token count (all-reduced before backward); gradients are summed over ranks
/// before each optimizer step. N ranks so compute the single-process step. The trainable
/// parameters are broadcast from rank 0 at construction; LoRA dropout is seeded per step from
/// (seed, rank, step), so a resumed run draws the same masks.
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

  /// The indices of this rank's share of the next batch (the whole batch in a single process;
  /// possibly none when a final batch has fewer examples than ranks).
  std::vector<size_t> next_indices() const;
  /// One batch: forward, backward and, every grad_accum batches or at an epoch's end, an
  /// optimizer step. Advances the position; returns the batch's mean loss.
  double step(const Batch& batch);
  bool done() const { return pos_.step >= total_steps_; }
  /// True while gradients of batches since the last optimizer step are pending (grad_accum > 1):
  /// no state can be saved then.
  bool accumulating() const { return accumulating_; }

  /// The learning rate of step `step` (0-based): the reference's LambdaLR, which is stepped after
  /// each batch, so step 0 runs at lr 0.
  double lr_at(int64_t step) const;
  int64_t steps_per_epoch() const { return per_epoch_; }
  int64_t total_steps() const { return total_steps_; }
  const Position& position() const { return pos_; }
  const TrainOptions& options() const { return o_; }
  int64_t trainable_count() const;
  int64_t parameter_count() const;
  std::shared_ptr<gpt2::GPT2LMHeadModelImpl> model() const { return model_; }
  lora::dist::ProcessGroup& group() { return group_; }

  /// Writes the trainer state (position, options that must not change, trainable parameters,
  /// AdamW moments, CPU and CUDA RNG states) to `file` atomically. Not while accumulating().
  void save_state(const std::string& file) const;
  /// Restores a state written by save_state (a file, or a folder holding trainer_state.pt). The
  /// run's options must match those it was saved with; the error names the first that differs.
  void load_state(const std::string& path);

 private:
  const std::vector<size_t>& order_of(int64_t epoch) const;

  std::shared_ptr<gpt2::GPT2LMHeadModelImpl> model_;
  TrainOptions o_;
  lora::dist::ProcessGroup group_;
  size_t num_examples_;
  std::vector<int64_t> lengths_;  // token counts of the examples, for group_by_length
  torch::Device device_;
  std::vector<std::pair<std::string, torch::Tensor>> trainable_;  // name -> parameter, in model order
  std::unique_ptr<torch::optim::AdamW> opt_;
  int64_t per_epoch_ = 0, total_steps_ = 0;
  Position pos_;
  bool accumulating_ = false;
  mutable int64_t order_epoch_ = 0;  // the epoch whose shuffle order_cache_ holds
  mutable std::vector<size_t> order_cache_;
};

}  // namespace e2e
