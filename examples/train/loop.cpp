#include "loop.hpp"
#include "optimizer.hpp"

#include <lora/lora.hpp>

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

namespace training {

namespace {

constexpr int64_t kStateFormat = 1;

// States written before the trainer kept parameter names as they are (lora::save_lora_state's
// convention) had '.' replaced by '/': still read.
std::string legacy_key_of(std::string name) {
  std::replace(name.begin(), name.end(), '.', '/');
  return name;
}

torch::Tensor scalar(int64_t v) { return torch::tensor(v, torch::kLong); }

torch::Tensor rng_state(torch::Device device) {
  auto gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(torch::Device device, const torch::Tensor& state) {
  auto gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

template <class E>
std::string name_in(const std::map<std::string, E>& names, E value) {
  for (const auto& [name, v] : names)
    if (v == value) return name;
  throw std::logic_error("training: an enum value without a name");
}

}  // namespace

CudaAutocast::CudaAutocast(bool on) : on_(on) {
  if (!on_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  prev_on_ = at::autocast::is_autocast_enabled(at::kCUDA);
  prev_dtype_ = at::autocast::get_autocast_dtype(at::kCUDA);
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
#else
  prev_on_ = at::autocast::is_enabled();
  prev_dtype_ = at::autocast::get_autocast_gpu_dtype();
  at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
  at::autocast::set_enabled(true);
#endif
  at::autocast::increment_nesting();
}

CudaAutocast::~CudaAutocast() {
  if (!on_) return;
  // The cast weights are cached for the region only: the optimizer changes them next.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  at::autocast::set_autocast_enabled(at::kCUDA, prev_on_);
  at::autocast::set_autocast_dtype(at::kCUDA, prev_dtype_);
#else
  at::autocast::set_enabled(prev_on_);
  at::autocast::set_autocast_gpu_dtype(prev_dtype_);
#endif
}

const std::map<std::string, UpdateRule>& update_rule_names() {
  static const std::map<std::string, UpdateRule> names{{"reference", UpdateRule::Reference}, {"torch", UpdateRule::Torch}};
  return names;
}
const std::map<std::string, Precision>& precision_names() {
  static const std::map<std::string, Precision> names{{"fp32", Precision::FP32}, {"bf16", Precision::BF16}};
  return names;
}
std::string name_of(UpdateRule u) { return name_in(update_rule_names(), u); }
std::string name_of(Precision p) { return name_in(precision_names(), p); }

torch::Device device_named(const std::string& name) {
  c10::optional<torch::Device> device;
  try {
    device = torch::Device(name);  // LibTorch's own parser: "cpu", "cuda", "cuda:1", ...
  } catch (const c10::Error&) {
  }
  if (!device || !(device->is_cpu() || device->is_cuda()))
    throw std::invalid_argument("--device must be cpu, cuda or cuda:N, got '" + name + "'");
  if (device->is_cuda()) {
    if (!torch::cuda::is_available()) throw std::invalid_argument("--device " + name + ": no CUDA device is available");
    if (device->has_index() && device->index() >= static_cast<int64_t>(torch::cuda::device_count()))
      throw std::invalid_argument("--device " + name + ": this machine has " + std::to_string(torch::cuda::device_count()) +
                                  " CUDA device(s)");
  }
  return *device;
}

std::vector<size_t> group_by_length(const std::vector<size_t>& order, const std::vector<int64_t>& lengths, int64_t batch_size) {
  if (batch_size < 1) throw std::invalid_argument("group_by_length: batch_size must be at least 1");
  for (size_t i : order)
    if (i >= lengths.size())
      throw std::invalid_argument("group_by_length: index " + std::to_string(i) + " but only " +
                                  std::to_string(lengths.size()) + " lengths");
  const auto n = static_cast<int64_t>(order.size());
  const int64_t mult = std::max<int64_t>(1, std::min<int64_t>(n / (4 * batch_size), 50));
  const auto mega = static_cast<size_t>(mult * batch_size);
  std::vector<size_t> out(order);
  size_t longest_at = 0;  // the first element of the megabatch whose longest is longest
  for (size_t begin = 0; begin < out.size(); begin += mega) {
    const auto first = out.begin() + static_cast<std::ptrdiff_t>(begin);
    const auto last = out.begin() + static_cast<std::ptrdiff_t>(std::min(out.size(), begin + mega));
    // Python's sorted(reverse=True) is stable: equal lengths keep their shuffled order.
    std::stable_sort(first, last, [&](size_t a, size_t b) { return lengths[a] > lengths[b]; });
    if (lengths[out[begin]] > lengths[out[longest_at]]) longest_at = begin;  // argmax: the first maximum
  }
  if (!out.empty()) std::swap(out[0], out[longest_at]);
  return out;
}

Trainer::Trainer(std::shared_ptr<torch::nn::Module> model, Options options, size_t num_examples, lora::dist::ProcessGroup group,
                 std::vector<int64_t> lengths, std::vector<StateTag> tags, std::function<bool(const std::string&)> decays)
    : model_(std::move(model)), o_(std::move(options)), group_(std::move(group)), num_examples_(num_examples),
      lengths_(std::move(lengths)), tags_(std::move(tags)), device_(device_named(o_.device)) {
  if (o_.dtype == Precision::BF16 && !device_.is_cuda())
    throw std::invalid_argument("--dtype bf16 is bf16 autocast on CUDA: use it with --device cuda (fp32 on the CPU)");
  if (o_.batch_size < 1 || o_.grad_accum < 1 || o_.epochs < 1)
    throw std::invalid_argument("--batch-size, --grad-accum and --epochs must be at least 1");
  if (num_examples_ == 0) throw std::invalid_argument("no training examples");
  if (!lengths_.empty() && lengths_.size() != num_examples_)
    throw std::invalid_argument("training::Trainer: " + std::to_string(lengths_.size()) + " lengths for " +
                                std::to_string(num_examples_) + " examples");
  model_->to(device_);
  std::vector<torch::Tensor> params, decayed, exempt;
  for (const auto& item : model_->named_parameters())
    if (item.value().requires_grad()) {
      trainable_.emplace_back(item.key(), item.value());
      params.push_back(item.value());
      (!decays || decays(item.key()) ? decayed : exempt).push_back(item.value());
    }
  if (trainable_.empty()) throw std::invalid_argument("training::Trainer: the model has no trainable parameters");
  group_.broadcast(params);  // every rank starts from rank 0's adapter (or weights)
  const auto adamw = torch::optim::AdamWOptions(o_.lr).weight_decay(o_.weight_decay).betas({0.9, 0.999}).eps(o_.eps);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (exempt.empty()) {
    groups.emplace_back(params);  // one group, as before parameter groups existed: states stay readable
  } else {
    if (!decayed.empty()) groups.emplace_back(decayed, std::make_unique<torch::optim::AdamWOptions>(adamw));
    auto no_decay = adamw;
    no_decay.weight_decay(0.0);
    groups.emplace_back(exempt, std::make_unique<torch::optim::AdamWOptions>(no_decay));
  }
  if (o_.optimizer == UpdateRule::Reference)
    opt_ = std::make_unique<ReferenceAdamW>(std::move(groups), adamw);
  else
    opt_ = std::make_unique<torch::optim::AdamW>(std::move(groups), adamw);
  per_epoch_ = (static_cast<int64_t>(num_examples_) + o_.batch_size - 1) / o_.batch_size;
  total_steps_ = per_epoch_ * o_.epochs;
  if (o_.max_steps > 0) total_steps_ = std::min(total_steps_, o_.max_steps);
  if (o_.warmup_ratio > 0) o_.warmup = static_cast<int64_t>(std::ceil(static_cast<double>(total_steps_) * o_.warmup_ratio));
}

int64_t Trainer::trainable_count() const {
  int64_t n = 0;
  for (const auto& p : trainable_) n += p.second.numel();
  return n;
}

int64_t Trainer::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : model_->parameters()) n += p.numel();
  return n;
}

double Trainer::lr_at(int64_t step) const {  // get_linear_schedule_with_warmup
  if (step < o_.warmup) return o_.lr * double(step) / double(std::max<int64_t>(1, o_.warmup));
  return o_.lr * std::max(0.0, double(total_steps_ - step) / double(std::max<int64_t>(1, total_steps_ - o_.warmup)));
}

const std::vector<size_t>& Trainer::order_of(int64_t epoch) const {
  if (order_epoch_ != epoch) {
    order_cache_.resize(num_examples_);
    std::iota(order_cache_.begin(), order_cache_.end(), size_t{0});
    std::seed_seq seq{static_cast<uint64_t>(o_.seed), static_cast<uint64_t>(epoch)};
    std::mt19937_64 rng(seq);
    std::shuffle(order_cache_.begin(), order_cache_.end(), rng);
    if (o_.group_by_length) {
      if (lengths_.size() != num_examples_)
        throw std::logic_error("training::Trainer: group_by_length needs the examples' lengths; construct the Trainer with the examples (or their lengths)");
      order_cache_ = group_by_length(order_cache_, lengths_, o_.batch_size);
    }
    order_epoch_ = epoch;
  }
  return order_cache_;
}

std::vector<size_t> Trainer::next_indices() const {
  const auto& order = order_of(pos_.epoch);
  const auto begin = static_cast<size_t>(pos_.batch * o_.batch_size);
  const auto end = std::min(order.size(), begin + static_cast<size_t>(o_.batch_size));
  const auto ranks = static_cast<size_t>(group_.world_size()), rank = static_cast<size_t>(group_.rank());
  const size_t from = begin + (end - begin) * rank / ranks, to = begin + (end - begin) * (rank + 1) / ranks;
  return {order.begin() + static_cast<std::ptrdiff_t>(from), order.begin() + static_cast<std::ptrdiff_t>(to)};
}

double Trainer::step(const std::function<LossSums()>& loss_of, bool empty, int64_t units) {
  if (done()) throw std::logic_error("Trainer::step: all " + std::to_string(total_steps_) + " steps are done");
  model_->train();
  const bool parallel = group_.world_size() > 1;
  if (parallel)  // dropout masks that differ per rank and are the same again when resumed
    torch::manual_seed(static_cast<uint64_t>(o_.seed) * 1000003ULL + static_cast<uint64_t>(group_.rank()) * 7919ULL +
                       static_cast<uint64_t>(pos_.step) * 104729ULL);
  double loss_value = 0;
  if (!parallel) {
    torch::Tensor loss;
    {
      CudaAutocast autocast(o_.dtype == Precision::BF16);
      const LossSums s = loss_of();
      loss = s.sum.sum() / (s.count.sum() + 1e-4);  // the reference's normalisation
    }
    (loss / static_cast<double>(o_.grad_accum)).backward();
    loss_value = loss.item<double>();
    pos_.tokens += units;
  } else {
    // The global batch's loss sum and count first, so that each rank's share is normalised by
    // the count the single process would use.
    torch::Tensor local_sum;
    auto stats = torch::zeros({3}, torch::kDouble);
    if (!empty) {
      CudaAutocast autocast(o_.dtype == Precision::BF16);
      const LossSums s = loss_of();
      local_sum = s.sum.sum();
      stats[0] = local_sum.detach().to(torch::kCPU, torch::kDouble);
      stats[1] = s.count.sum().to(torch::kCPU, torch::kDouble);
      stats[2] = static_cast<double>(units);
    }
    group_.all_reduce({stats});
    const double global_count = stats[1].item<double>();
    if (!empty) (local_sum / (global_count + 1e-4) / static_cast<double>(o_.grad_accum)).backward();
    loss_value = stats[0].item<double>() / (global_count + 1e-4);
    pos_.tokens += static_cast<int64_t>(stats[2].item<double>());
  }
  const bool epoch_end = pos_.batch + 1 == per_epoch_;
  accumulating_ = true;
  if ((pos_.batch + 1) % o_.grad_accum == 0 || epoch_end || pos_.step + 1 == total_steps_) {
    std::vector<torch::Tensor> params;
    for (auto& group : opt_->param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr_at(pos_.step));
      params.insert(params.end(), group.params().begin(), group.params().end());
    }
    // Sums over ranks (nothing to sum in one process) and gives a parameter without a gradient
    // zeros, as the reference's zeroed gradients: Adam still steps it.
    group_.all_reduce_gradients(params);
    if (o_.clip > 0) torch::nn::utils::clip_grad_norm_(params, o_.clip);
    opt_->step();
    // Gradients are dropped rather than zeroed (zero_grad(set_to_none=true), PyTorch 2's default):
    // the next backward then hands each parameter its gradient buffer instead of adding it into a
    // zeroed one, which kept a second copy of the largest gradient (GPT-2's 154 MB wte) alive.
    for (auto& p : params) p.mutable_grad().reset();
    accumulating_ = false;
  }
  ++pos_.step;
  if (epoch_end) {
    ++pos_.epoch;
    pos_.batch = 0;
  } else {
    ++pos_.batch;
  }
  return loss_value;
}

void Trainer::save_state(const std::string& file) const {
  if (accumulating_)
    throw std::logic_error("Trainer::save_state: gradients of " + std::to_string(pos_.batch % o_.grad_accum) +
                           " batches are still being accumulated; save after an optimizer step");
  torch::NoGradGuard no_grad;
  torch::serialize::OutputArchive archive;
  archive.write("format", scalar(kStateFormat));
  for (const auto& tag : tags_) archive.write(tag.key, c10::IValue(tag.value));
  archive.write("update_rule", c10::IValue(name_of(o_.optimizer)));
  archive.write("group_by_length", scalar(o_.group_by_length ? 1 : 0));
  for (const auto& [key, v] : {std::pair<const char*, int64_t>{"epoch", pos_.epoch}, {"batch", pos_.batch}, {"step", pos_.step},
                               {"tokens", pos_.tokens}, {"seed", o_.seed}, {"batch_size", o_.batch_size},
                               {"grad_accum", o_.grad_accum}, {"examples", static_cast<int64_t>(num_examples_)},
                               {"total_steps", total_steps_}, {"world_size", group_.world_size()}})
    archive.write(key, scalar(v));
  torch::serialize::OutputArchive params(archive.compilation_unit());
  for (const auto& [name, p] : trainable_) params.write(name, p.detach().to(torch::kCPU), /*is_buffer=*/true);
  archive.write("params", params);
  torch::serialize::OutputArchive optim(archive.compilation_unit());
  opt_->save(optim);
  archive.write("optimizer", optim);
  archive.write("rng_cpu", rng_state(torch::kCPU), true);
  if (device_.is_cuda()) archive.write("rng_cuda", rng_state(device_), true);
  // Streamed into the file (no copy of the state in memory: for full fine-tuning that is 3× the
  // weights), written atomically: a crash leaves the previous state whole.
  lora::atomic_write(file, [&](std::FILE* f) {
    archive.save_to([&](const void* data, size_t n) -> size_t {
      lora::write_bytes(f, data, n, file);
      return n;
    });
  });
}

void Trainer::load_state(const std::string& path) {
  namespace fs = std::filesystem;
  const std::string file = fs::is_directory(path) ? path + "/trainer_state.pt" : path;
  if (!fs::exists(file))
    throw std::runtime_error("trainer state '" + file + "' not found: --resume takes a trainer_state.pt written by train "
                             "(in each epoch_N folder, the adapter folder and the checkpoint folder)");
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(file, device_);
  } catch (const c10::Error& e) {
    throw std::runtime_error("trainer state '" + file + "' cannot be read (" + e.what_without_backtrace() +
                             "): is it a complete trainer_state.pt written by train?");
  }
  auto read_int = [&](const char* key) {
    torch::Tensor t;
    if (!archive.try_read(key, t)) throw std::runtime_error("trainer state '" + file + "' has no '" + key + "' entry");
    return t.item<int64_t>();
  };
  if (read_int("format") != kStateFormat)
    throw std::runtime_error("trainer state '" + file + "' has format " + std::to_string(read_int("format")) +
                             ", this build reads format " + std::to_string(kStateFormat));
  for (const auto& tag : tags_) {  // a tag the state lacks (written before it existed) is not checked
    c10::IValue saved;
    if (archive.try_read(tag.key, saved) && saved.toStringRef() != tag.value)
      throw std::runtime_error("trainer state '" + file + "' " + tag.mismatch(saved.toStringRef()));
  }
  c10::IValue optimizer("torch");  // states written before --optimizer existed used LibTorch's AdamW
  archive.try_read("update_rule", optimizer);
  if (optimizer.toStringRef() != name_of(o_.optimizer))
    throw std::runtime_error("trainer state '" + file + "' was saved by a --optimizer " + optimizer.toStringRef() +
                             " run; this run is --optimizer " + name_of(o_.optimizer));
  torch::Tensor grouped = scalar(0);  // states written before --group-by-length: off
  archive.try_read("group_by_length", grouped);
  if ((grouped.item<int64_t>() != 0) != o_.group_by_length)
    throw std::runtime_error("trainer state '" + file + "' was saved by a run " + (o_.group_by_length ? "without" : "with") +
                             " --group-by-length; resume with the same batch order");
  const std::pair<const char*, int64_t> must_match[] = {{"seed", o_.seed},
                                                        {"batch_size", o_.batch_size},
                                                        {"grad_accum", o_.grad_accum},
                                                        {"examples", static_cast<int64_t>(num_examples_)},
                                                        {"total_steps", total_steps_}};
  for (const auto& [key, now] : must_match) {
    const int64_t saved = read_int(key);
    if (saved != now)
      throw std::runtime_error("trainer state '" + file + "' was saved with " + key + " = " + std::to_string(saved) +
                               ", this run has " + std::to_string(now) +
                               ": resume with the options and data of the interrupted run (--seed, --batch-size, "
                               "--grad-accum, --epochs, --max-steps)");
  }
  torch::Tensor ranks = scalar(1);  // states written before data parallelism: one process
  archive.try_read("world_size", ranks);
  if (ranks.item<int64_t>() != group_.world_size())
    throw std::runtime_error("trainer state '" + file + "' was saved by a run of " + std::to_string(ranks.item<int64_t>()) +
                             " process(es), this run has " + std::to_string(group_.world_size()) +
                             ": resume with as many ranks (LoRA dropout is drawn per rank)");
  torch::serialize::InputArchive params;
  archive.read("params", params);
  std::vector<torch::Tensor> values;
  for (const auto& [name, p] : trainable_) {
    torch::Tensor v;
    if (!params.try_read(name, v, true) && !params.try_read(legacy_key_of(name), v, true))
      throw std::runtime_error("trainer state '" + file + "' has no value for trainable parameter '" + name +
                               "': was it saved for another model or adapter configuration?");
    if (!v.sizes().equals(p.sizes()))
      throw std::runtime_error("trainer state '" + file + "': parameter '" + name + "' has shape " +
                               lora::shape_str(v.sizes()) + ", the model's is " + lora::shape_str(p.sizes()) +
                               ": was it saved with another --rank or model?");
    values.push_back(v);
  }
  if (static_cast<size_t>(params.keys().size()) != trainable_.size())
    throw std::runtime_error("trainer state '" + file + "' holds " + std::to_string(params.keys().size()) +
                             " trainable parameters, this run has " + std::to_string(trainable_.size()) +
                             ": was it saved with other --targets?");
  torch::serialize::InputArchive optim;
  archive.read("optimizer", optim);
  opt_->load(optim);
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < values.size(); ++i) trainable_[i].second.copy_(values[i]);
  }
  torch::Tensor cpu_state, cuda_state;
  archive.read("rng_cpu", cpu_state, true);
  set_rng_state(torch::kCPU, cpu_state.to(torch::kCPU));
  if (device_.is_cuda() && archive.try_read("rng_cuda", cuda_state, true)) set_rng_state(device_, cuda_state.to(torch::kCPU));
  pos_ = Position{read_int("epoch"), read_int("batch"), read_int("step"), read_int("tokens")};
}

}  // namespace training
