#pragma once
// The examples' one training loop, whatever the model: AdamW over the trainable parameters (the
// reference rule, e.g. examples/NLG's and transformers 4.4's, or LibTorch's), a linear warm-up
// and decay stepped after every update, gradient accumulation and clipping, bf16 autocast on
// CUDA, data parallel over a lora::dist::ProcessGroup, and a trainer state that resumes a run
// exactly. A model family brings the seam: its loss on a batch, as sums (LossSums), and what it
// trains (the parameters that require gradients when the Trainer is built).

#include <lora/distributed.hpp>

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace training {

/// The AdamW update rule: the reference code's (training::ReferenceAdamW) or LibTorch's.
enum class UpdateRule { Reference, Torch };
/// Training precision: fp32, or bf16 autocast on CUDA (weights, gradients, moments stay fp32).
enum class Precision { FP32, BF16 };

/// The command-line names ("reference"/"torch", "fp32"/"bf16"), also the values trainer states store.
const std::map<std::string, UpdateRule>& update_rule_names();
const std::map<std::string, Precision>& precision_names();
std::string name_of(UpdateRule u);
std::string name_of(Precision p);

/// The device of a --device value, parsed by torch::Device: "cpu", or "cuda" / "cuda:N" where that
/// CUDA device is present; anything else is an error naming the value.
torch::Device device_named(const std::string& name);

/// HF Trainer's group_by_length (transformers' get_length_grouped_indices) applied to an
/// already shuffled `order`: cut into megabatches of min(n / (4·batch_size), 50) batches (at
/// least one), sort each megabatch by length, longest first, and move the longest example of all
/// to the front (an out-of-memory shows on the first batch). Batches then hold examples of
/// similar lengths and pad less; the order still depends on the shuffle only.
std::vector<size_t> group_by_length(const std::vector<size_t>& order, const std::vector<int64_t>& lengths, int64_t batch_size);

/// The loop's settings; what a model family adds (adapter, loss options) stays with it.
struct Options {
  double lr = 2e-4, weight_decay = 0.01, eps = 1e-6;
  double clip = 0;             ///< max gradient norm; 0: off
  int64_t warmup = 0;          ///< linear warm-up steps, then linear decay to 0
  /// > 0: the warm-up is ceil(T · ratio) of the run's T steps instead (HF's get_warmup_steps); the
  /// Trainer's options() then hold the steps.
  double warmup_ratio = 0;
  UpdateRule optimizer = UpdateRule::Reference;
  int64_t epochs = 1, batch_size = 8, grad_accum = 1, max_steps = 0;  ///< max_steps 0: all epochs
  bool group_by_length = false;  ///< needs the examples' lengths
  int64_t seed = 0;
  std::string device = "cpu";
  Precision dtype = Precision::FP32;  ///< BF16: CUDA only
};

/// A batch's loss as sums: `sum` (a scalar, or per-example sums) of the per-item losses and
/// `count`, the number of items (tokens, examples) the batch's loss is averaged over.
struct LossSums {
  torch::Tensor sum, count;
};

/// Something a trainer state records and a resumed run must match (the method, what is
/// adapted): `mismatch(saved)` words the error for a state saved with another value.
struct StateTag {
  std::string key, value;
  std::function<std::string(const std::string& saved)> mismatch;
};

/// Where a run is: the next batch is `batch` (0-based) of epoch `epoch` (1-based); `step` batches
/// were trained so far, holding `tokens` items (the `units` step() was given: GPT-2 counts
/// completion tokens, a GLUE task examples).
struct Position {
  int64_t epoch = 1, batch = 0, step = 0, tokens = 0;
};

/// Trains the parameters of `model` that require gradients. Each epoch visits the examples in a
/// shuffle seeded by (seed, epoch), so a resumed run sees the same batches as an uninterrupted
/// one; the loss of a batch is sum / count of the model's LossSums; the learning rate of update k
/// is lr·k/warmup, then lr·(T−k)/(T−warmup) (LambdaLR stepped after each batch).
///
/// Data parallel (a `group` of N ranks): every rank walks the same shuffled order, takes its
/// contiguous share of each global batch (next_indices), and normalises its loss sum by the
/// batch's *global* count (all-reduced before backward); gradients are summed over ranks before
/// each optimizer step, so N ranks compute the single-process step. The trainable parameters are
/// broadcast from rank 0 at construction; the RNG is seeded per step from (seed, rank, step), so
/// a resumed run draws the same dropout masks.
///
/// Example:
/// \code
///   training::Trainer trainer(model, options, examples.size());
///   while (!trainer.done()) {
///     auto batch = make_batch(examples, trainer.next_indices());
///     trainer.step([&] { return my_loss(*model, batch); }, batch.empty(), batch.size());
///   }
/// \endcode
class Trainer {
 public:
  /// Moves the model to the device and builds the optimizer over its trainable parameters.
  /// `lengths`: the examples' sizes, for group_by_length. `decays(name)`: whether a parameter
  /// gets weight decay (all do when unset; HF's Trainer exempts biases and LayerNorm weights).
  /// `tags`: recorded in the state, checked on resume.
  Trainer(std::shared_ptr<torch::nn::Module> model, Options options, size_t num_examples,
          lora::dist::ProcessGroup group = lora::dist::ProcessGroup(), std::vector<int64_t> lengths = {},
          std::vector<StateTag> tags = {}, std::function<bool(const std::string&)> decays = nullptr);

  /// The indices of this rank's share of the next batch (the whole batch in a single process;
  /// possibly none when a final batch has fewer examples than ranks).
  std::vector<size_t> next_indices() const;
  /// One batch: `loss` computes this rank's share (in train mode, under autocast when bf16; not
  /// called when the share is `empty`); backward and, every grad_accum batches or at an epoch's
  /// end, an optimizer step. `units` (the share's tokens or examples) adds to position().tokens.
  /// Advances the position; returns the batch's mean loss.
  double step(const std::function<LossSums()>& loss, bool empty, int64_t units);
  bool done() const { return pos_.step >= total_steps_; }
  /// True while gradients of batches since the last optimizer step are pending (grad_accum > 1):
  /// no state can be saved then.
  bool accumulating() const { return accumulating_; }

  /// The learning rate of step `step` (0-based): step 0 runs at lr 0 when there is a warm-up.
  double lr_at(int64_t step) const;
  int64_t steps_per_epoch() const { return per_epoch_; }
  int64_t total_steps() const { return total_steps_; }
  const Position& position() const { return pos_; }
  const Options& options() const { return o_; }
  int64_t trainable_count() const;
  int64_t parameter_count() const;
  const std::shared_ptr<torch::nn::Module>& module() const { return model_; }
  lora::dist::ProcessGroup& group() { return group_; }
  torch::Device device() const { return device_; }

  /// Writes the trainer state (position, options that must not change, tags, trainable
  /// parameters, AdamW moments, CPU and CUDA RNG states) to `file` atomically. Not while accumulating().
  void save_state(const std::string& file) const;
  /// Restores a state written by save_state (a file, or a folder holding trainer_state.pt). The
  /// run's options must match those it was saved with; the error names the first that differs.
  void load_state(const std::string& path);

 private:
  const std::vector<size_t>& order_of(int64_t epoch) const;

  std::shared_ptr<torch::nn::Module> model_;
  Options o_;
  lora::dist::ProcessGroup group_;
  size_t num_examples_;
  std::vector<int64_t> lengths_;
  std::vector<StateTag> tags_;
  torch::Device device_;
  std::vector<std::pair<std::string, torch::Tensor>> trainable_;  // name -> parameter, in model order
  std::unique_ptr<torch::optim::AdamW> opt_;
  int64_t per_epoch_ = 0, total_steps_ = 0;
  Position pos_;
  bool accumulating_ = false;
  mutable int64_t order_epoch_ = 0;  // the epoch whose shuffle order_cache_ holds
  mutable std::vector<size_t> order_cache_;
};

/// bf16 autocast on CUDA for one scope (LibTorch 2.4 changed the C++ API; both are handled).
class CudaAutocast {
 public:
  explicit CudaAutocast(bool on);
  ~CudaAutocast();
  CudaAutocast(const CudaAutocast&) = delete;
  CudaAutocast& operator=(const CudaAutocast&) = delete;

 private:
  bool on_, prev_on_ = false;
  at::ScalarType prev_dtype_ = at::kHalf;
};

}  // namespace training
