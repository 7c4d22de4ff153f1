#include "trainer.hpp"

#include <lora/lora.hpp>

#include <algorithm>
#include <stdexcept>

namespace e2e {

namespace {

/// What a run adapts, as its trainer state records it: "weights qv" or "targets c_fc".
std::string adapted_weights(const TrainOptions& o) { return o.targets.empty() ? "weights " + o.weights : "targets " + o.targets; }

/// The model with its adapter (method lora; it must have none yet) or with every parameter
/// trainable (full), and without dropout unless asked: what the loop then trains.
std::shared_ptr<gpt2::GPT2LMHeadModelImpl> prepared(std::shared_ptr<gpt2::GPT2LMHeadModelImpl> model, const TrainOptions& o) {
  if (o.method == Method::LoRA) {
    // The paper's config on this run's attention weights (or whole target modules), rank, alpha, dropout.
    auto cfg = gpt2::attention_lora_config(o.weights).r(o.rank).alpha(o.alpha).dropout(o.lora_dropout).use_dora(o.dora);
    if (!o.targets.empty()) cfg.target_modules({o.targets}).enable_lora({});
    lora::inject_lora(*model, cfg);
  } else {
    for (auto& p : model->parameters()) p.set_requires_grad(true);
  }
  if (!o.model_dropout) model->set_dropout(0.0, 0.0, 0.0);
  return model;
}

/// The shared loop's settings from the NLG recipe's (examples/NLG's AdamW eps 1e-6, all weights decayed).
training::Options loop_options(const TrainOptions& o) {
  training::Options l;
  l.lr = o.lr;
  l.weight_decay = o.weight_decay;
  l.eps = 1e-6;
  l.clip = o.clip;
  l.warmup = o.warmup;
  l.optimizer = o.optimizer;
  l.epochs = o.epochs;
  l.batch_size = o.batch_size;
  l.grad_accum = o.grad_accum;
  l.max_steps = o.max_steps;
  l.group_by_length = o.group_by_length;
  l.seed = o.seed;
  l.device = o.device;
  l.dtype = o.dtype;
  return l;
}

std::vector<training::StateTag> state_tags(const TrainOptions& o) {
  const std::string method = name_of(o.method), adapted = adapted_weights(o);
  return {{"method", method,
           [method](const std::string& saved) {
             return "was saved by a --method " + saved + " run; this run is --method " + method;
           }},
          {"adapted", adapted, [adapted](const std::string& saved) {
             return "was saved by a run adapting " + saved + "; this run adapts " + adapted +
                    ": resume with the same --weights or --targets";
           }}};
}

std::vector<int64_t> lengths_of(const std::vector<Example>& examples) {
  std::vector<int64_t> lengths;
  lengths.reserve(examples.size());
  for (const auto& e : examples) lengths.push_back(static_cast<int64_t>(e.tokens.size()));
  return lengths;
}

}  // namespace

const std::map<std::string, Method>& method_names() {
  static const std::map<std::string, Method> names{{"lora", Method::LoRA}, {"full", Method::Full}};
  return names;
}

std::string name_of(Method m) {
  for (const auto& [name, v] : method_names())
    if (v == m) return name;
  throw std::logic_error("e2e: a method without a name");
}

std::pair<torch::Tensor, torch::Tensor> completion_loss(gpt2::GPT2LMHeadModelImpl& model, const Batch& batch,
                                                        double label_smoothing) {
  const auto device = model.transformer->wte->weight.device();
  return masked_loss_from_hidden(model.hidden_states(batch.input.to(device)),
                                 [&](const torch::Tensor& h) { return model.lm_head(h); }, batch, label_smoothing);
}

double mean_loss(gpt2::GPT2LMHeadModelImpl& model, const std::vector<Example>& examples, int64_t batch_size,
                 lora::dist::ProcessGroup* group) {
  torch::NoGradGuard no_grad;
  model.eval();
  const size_t ranks = group ? static_cast<size_t>(group->world_size()) : 1, rank = group ? static_cast<size_t>(group->rank()) : 0;
  const size_t first = examples.size() * rank / ranks, last = examples.size() * (rank + 1) / ranks;
  double total = 0, count = 0;
  for (size_t at = first; at < last; at += static_cast<size_t>(batch_size)) {
    std::vector<size_t> idx;
    for (size_t i = at; i < std::min(last, at + static_cast<size_t>(batch_size)); ++i) idx.push_back(i);
    auto [sums, counts] = completion_loss(model, make_batch(examples, idx), 0.0);
    total += sums.sum().to(torch::kDouble).item<double>();
    count += counts.sum().item<double>();
  }
  if (group && group->world_size() > 1) {
    auto both = torch::tensor({total, count}, torch::kDouble);
    group->all_reduce({both});
    total = both[0].item<double>();
    count = both[1].item<double>();
  }
  if (count == 0)
    throw std::invalid_argument("mean_loss: no completion tokens to average (" + std::to_string(examples.size()) +
                                " examples): is the validation set empty?");
  return total / count;
}

Trainer::Trainer(std::shared_ptr<gpt2::GPT2LMHeadModelImpl> model, TrainOptions options, size_t num_examples,
                 lora::dist::ProcessGroup group)
    : model_(prepared(std::move(model), options)), o_(std::move(options)),
      loop_(model_, loop_options(o_), num_examples, std::move(group), {}, state_tags(o_)) {}

Trainer::Trainer(std::shared_ptr<gpt2::GPT2LMHeadModelImpl> model, TrainOptions options, const std::vector<Example>& examples,
                 lora::dist::ProcessGroup group)
    : model_(prepared(std::move(model), options)), o_(std::move(options)),
      loop_(model_, loop_options(o_), examples.size(), std::move(group), lengths_of(examples), state_tags(o_)) {}

double Trainer::step(const Batch& batch) {
  const bool empty = batch.input.numel() == 0;  // a final batch with fewer examples than ranks
  const int64_t tokens = empty ? 0 : static_cast<int64_t>(batch.mask.sum().item<double>());
  return loop_.step(
      [&] {
        auto [sums, counts] = completion_loss(*model_, batch, o_.label_smoothing);
        return training::LossSums{sums, counts};
      },
      empty, tokens);
}

}  // namespace e2e
