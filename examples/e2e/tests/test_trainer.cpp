// The training loop: schedule, exact resume from a trainer state, option checks, bf16 autocast.
#include <gtest/gtest.h>

#include "optimizer.hpp"
#include "trainer.hpp"
#include "../../test_gpt2.hpp"
#include "../../test_util.hpp"

#include <lora/lora.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <random>

namespace fs = std::filesystem;

namespace {

using example_test::error_of;

gpt2::Config tiny_config() { return example_test::tiny_gpt2_config(); }

/// A fresh tiny GPT-2 with the same weights every call.
std::shared_ptr<gpt2::GPT2LMHeadModelImpl> tiny_model() {
  torch::manual_seed(7);
  return std::make_shared<gpt2::GPT2LMHeadModelImpl>(tiny_config());
}

std::vector<e2e::Example> examples(size_t n) {
  std::mt19937 rng(3);
  std::vector<e2e::Example> out(n);
  for (auto& e : out) {
    const int64_t ctx = 3 + rng() % 6, len = ctx + 2 + rng() % 8;
    for (int64_t i = 0; i < len; ++i) e.tokens.push_back(static_cast<int64_t>(rng() % 96));
    e.context_len = ctx;
  }
  return out;
}

e2e::TrainOptions options() {
  e2e::TrainOptions o;
  o.epochs = 2;
  o.batch_size = 3;
  o.warmup = 2;
  o.lr = 1e-2;  // large enough that every step visibly moves the adapter
  return o;
}

std::vector<torch::Tensor> trainable(const gpt2::GPT2LMHeadModelImpl& model) {
  std::vector<torch::Tensor> out;
  for (const auto& p : model.parameters())
    if (p.requires_grad()) out.push_back(p.detach().clone());
  return out;
}


/// Trains `t` on `data` for `n` more batches, or to the end when n < 0.
void train(e2e::Trainer& t, const std::vector<e2e::Example>& data, int n = -1) {
  for (int i = 0; (n < 0 || i < n) && !t.done(); ++i) t.step(e2e::make_batch(data, t.next_indices()));
}

/// A fresh tiny model, resumed from the trainer state `file` and trained to the end.
std::shared_ptr<gpt2::GPT2LMHeadModelImpl> resumed_to_end(const std::string& file, const e2e::TrainOptions& o,
                                                          const std::vector<e2e::Example>& data) {
  auto model = tiny_model();
  e2e::Trainer t(model, o, data.size());
  t.load_state(file);
  train(t, data);
  return model;
}

/// Every trainable tensor of `a` equals `b`'s bit for bit.
void expect_same_trainables(const gpt2::GPT2LMHeadModelImpl& a, const gpt2::GPT2LMHeadModelImpl& b) {
  const auto pa = trainable(a), pb = trainable(b);
  ASSERT_EQ(pa.size(), pb.size());
  ASSERT_FALSE(pa.empty());
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pb[i])) << "parameter " << i;
}

std::string temp_file(const std::string& name) {
  return (fs::temp_directory_path() / ("trainer_test_" + std::to_string(::getpid()) + "_" + name)).string();
}

}  // namespace

TEST(E2ETrainer, ScheduleIsLinearWarmUpThenLinearDecayToZero) {
  auto o = options();
  o.warmup = 3;
  o.epochs = 3;
  e2e::Trainer t(tiny_model(), o, 10);  // 4 batches per epoch (the last one short), 12 steps
  ASSERT_EQ(t.steps_per_epoch(), 4);
  ASSERT_EQ(t.total_steps(), 12);
  EXPECT_EQ(t.lr_at(0), 0.0);
  for (int64_t s = 0; s < 12; ++s) {
    // examples/NLG's LambdaLR, stepped after each batch: the first update runs at lr 0.
    const double expected = s < 3 ? 1e-2 * s / 3.0 : 1e-2 * (12.0 - s) / 9.0;
    EXPECT_NEAR(t.lr_at(s), expected, 1e-15) << "step " << s;
  }
}

TEST(E2ETrainer, EpochsVisitEveryExampleOnceInASeededOrder) {
  const auto data = examples(10);
  e2e::Trainer t(tiny_model(), options(), data.size());
  std::vector<size_t> seen;
  std::vector<std::vector<size_t>> epoch1;
  while (t.position().epoch == 1) {
    auto idx = t.next_indices();
    epoch1.push_back(idx);
    seen.insert(seen.end(), idx.begin(), idx.end());
    t.step(e2e::make_batch(data, idx));
  }
  std::sort(seen.begin(), seen.end());
  std::vector<size_t> all(10);
  std::iota(all.begin(), all.end(), size_t{0});
  EXPECT_EQ(seen, all);
  EXPECT_EQ(epoch1.back().size(), 1u);  // 10 = 3 + 3 + 3 + 1
  EXPECT_NE(t.next_indices(), epoch1.front()) << "epoch 2 should be shuffled anew";
}

TEST(E2EGroupByLength, MatchesTransformersOnAHandWorkedOrder) {
  // 10 examples, batch 1: megabatches of min(10 / 4, 50) = 2 in the given order, each sorted
  // longest first (ties keep their order), then the longest of all (index 4, length 9, first in
  // the fourth megabatch) swapped with the first element.
  const std::vector<int64_t> lengths{5, 7, 2, 2, 9, 1, 3, 8, 4, 6};
  const std::vector<size_t> order{3, 2, 0, 1, 5, 6, 4, 7, 9, 8};
  // megabatches: [3 2] -> [3 2] (tie), [0 1] -> [1 0], [5 6] -> [6 5], [4 7] -> [4 7], [9 8] -> [9 8]
  const std::vector<size_t> expected{4, 2, 1, 0, 6, 5, 3, 7, 9, 8};
  EXPECT_EQ(e2e::group_by_length(order, lengths, 1), expected);
  EXPECT_NE(error_of([&] { e2e::group_by_length({0, 12}, lengths, 1); }).find("index 12"), std::string::npos);
}

TEST(E2EGroupByLength, TrainerPadsLessAndStillVisitsEveryExampleOnce) {
  const auto data = examples(60);
  auto o = options();
  o.batch_size = 4;
  auto padded = [&](bool grouped, std::vector<size_t>* seen) {
    o.group_by_length = grouped;
    e2e::Trainer t(tiny_model(), o, data);
    int64_t positions = 0;
    while (t.position().epoch == 1) {
      const auto idx = t.next_indices();
      seen->insert(seen->end(), idx.begin(), idx.end());
      const auto batch = e2e::make_batch(data, idx);
      positions += batch.input.numel();
      t.step(batch);
    }
    return positions;
  };
  std::vector<size_t> plain_seen, grouped_seen;
  const int64_t plain = padded(false, &plain_seen), grouped = padded(true, &grouped_seen);
  int64_t real = 0;
  for (const auto& e : data) real += static_cast<int64_t>(e.tokens.size());
  EXPECT_LT(grouped - real, (plain - real) / 2) << "padding: grouped " << grouped - real << ", shuffled " << plain - real;
  std::sort(grouped_seen.begin(), grouped_seen.end());
  std::vector<size_t> all(60);
  std::iota(all.begin(), all.end(), size_t{0});
  EXPECT_EQ(grouped_seen, all);

  o.group_by_length = true;  // the lengths are needed, and a state does not resume with another order
  e2e::Trainer no_lengths(tiny_model(), o, data.size());
  EXPECT_NE(error_of([&] { no_lengths.next_indices(); }).find("construct the Trainer with the examples"), std::string::npos);
  e2e::Trainer grouped_run(tiny_model(), o, data);
  train(grouped_run, data, 1);
  const auto file = temp_file("grouped.pt");
  grouped_run.save_state(file);
  o.group_by_length = false;
  e2e::Trainer other(tiny_model(), o, data);
  EXPECT_NE(error_of([&] { other.load_state(file); }).find("with --group-by-length"), std::string::npos);
  fs::remove(file);
}

TEST(E2ETrainer, ResumedRunMatchesUninterruptedRunExactly) {
  const auto data = examples(10);
  auto o = options();
  o.lora_dropout = 0.3;  // the dropout masks must continue from the saved RNG state
  auto straight = tiny_model();
  e2e::Trainer a(straight, o, data.size());
  std::vector<double> losses_a;
  while (!a.done()) losses_a.push_back(a.step(e2e::make_batch(data, a.next_indices())));

  const auto file = temp_file("state.pt");
  std::vector<double> losses_b;
  {
    e2e::Trainer b(tiny_model(), o, data.size());
    for (int i = 0; i < 5; ++i) losses_b.push_back(b.step(e2e::make_batch(data, b.next_indices())));  // mid-epoch 2
    b.save_state(file);
    torch::manual_seed(12345);  // anything the interrupted process did afterwards must not matter
    torch::rand({100});
  }
  auto resumed = tiny_model();
  e2e::Trainer c(resumed, o, data.size());
  c.load_state(file);
  EXPECT_EQ(c.position().step, 5);
  EXPECT_EQ(c.position().epoch, 2);
  EXPECT_EQ(c.position().batch, 1);
  while (!c.done()) losses_b.push_back(c.step(e2e::make_batch(data, c.next_indices())));
  EXPECT_EQ(losses_a, losses_b);
  expect_same_trainables(*straight, *resumed);
  EXPECT_EQ(a.position().tokens, c.position().tokens);
  fs::remove(file);
}

TEST(E2ETrainer, DoRATrainsTheMagnitudesAndResumesExactly) {
  const auto data = examples(10);
  auto o = options();
  o.dora = true;
  o.lora_dropout = 0.3;  // DoRA's dropout form draws its own mask
  auto straight = tiny_model();
  e2e::Trainer a(straight, o, data.size());
  std::map<std::string, torch::Tensor> start;
  for (const auto& p : straight->named_parameters())
    if (p.key().find("lora_magnitude_vector") != std::string::npos) {
      EXPECT_TRUE(p.value().requires_grad()) << p.key();
      start[p.key()] = p.value().detach().clone();
    }
  EXPECT_EQ(start.size(), static_cast<size_t>(tiny_config().n_layer));  // one per c_attn
  train(a, data);
  for (const auto& p : straight->named_parameters())
    if (start.count(p.key())) {
      EXPECT_FALSE(torch::equal(p.value(), start[p.key()])) << p.key();
    }

  const auto file = temp_file("dora_state.pt");
  {
    e2e::Trainer b(tiny_model(), o, data.size());
    train(b, data, 3);
    b.save_state(file);
  }
  expect_same_trainables(*straight, *resumed_to_end(file, o, data));
  fs::remove(file);
}

TEST(E2ETrainer, GradientAccumulationResumesAndEndsWithAnOptimizerStep) {
  const auto data = examples(10);  // 4 batches of 3 per epoch
  auto o = options();
  o.grad_accum = 2;
  auto straight = tiny_model();
  e2e::Trainer a(straight, o, data.size());
  train(a, data);
  const auto file = temp_file("accum.pt");
  {
    e2e::Trainer b(tiny_model(), o, data.size());
    train(b, data, 1);
    EXPECT_TRUE(b.accumulating());
    EXPECT_NE(error_of([&] { b.save_state(file); }).find("still being accumulated"), std::string::npos);
    train(b, data, 5);  // 6 steps: epoch 2, batch 2
    EXPECT_FALSE(b.accumulating());
    b.save_state(file);
  }
  expect_same_trainables(*straight, *resumed_to_end(file, o, data));
  // A step budget that ends inside an accumulation window still ends with an optimizer step.
  o.max_steps = 3;
  e2e::Trainer d(tiny_model(), o, data.size());
  train(d, data);
  EXPECT_FALSE(d.accumulating());
  d.save_state(file);
  fs::remove(file);
}

TEST(E2ETrainer, FullFineTuningResumesToo) {
  const auto data = examples(6);
  auto o = options();
  o.method = e2e::Method::Full;
  o.lr = 1e-3;
  auto straight = tiny_model();
  e2e::Trainer a(straight, o, data.size());
  EXPECT_EQ(a.trainable_count(), a.parameter_count());
  train(a, data);
  const auto file = temp_file("full.pt");
  {
    e2e::Trainer b(tiny_model(), o, data.size());
    train(b, data, 3);
    b.save_state(file);
  }
  expect_same_trainables(*straight, *resumed_to_end(file, o, data));
  fs::remove(file);
}

TEST(E2ETrainer, StateOfAnotherRunIsRefusedWithTheOptionThatDiffers) {
  const auto data = examples(10);
  const auto file = temp_file("other.pt");
  {
    e2e::Trainer t(tiny_model(), options(), data.size());
    train(t, data, 1);
    t.save_state(file);
  }
  auto o = options();
  o.batch_size = 4;
  auto msg = error_of([&] { e2e::Trainer(tiny_model(), o, data.size()).load_state(file); });
  EXPECT_NE(msg.find("batch_size = 3, this run has 4"), std::string::npos) << msg;
  o = options();
  o.rank = 8;
  msg = error_of([&] { e2e::Trainer(tiny_model(), o, data.size()).load_state(file); });
  EXPECT_NE(msg.find("has shape [8,32], the model's is [16,32]"), std::string::npos) << msg;
  o = options();
  o.method = e2e::Method::Full;
  msg = error_of([&] { e2e::Trainer(tiny_model(), o, data.size()).load_state(file); });
  EXPECT_NE(msg.find("saved by a --method lora run"), std::string::npos) << msg;
  o = options();
  o.weights = "qk";  // the same parameter shapes as q, v: only the recorded weights tell them apart
  msg = error_of([&] { e2e::Trainer(tiny_model(), o, data.size()).load_state(file); });
  EXPECT_NE(msg.find("adapting weights qv; this run adapts weights qk"), std::string::npos) << msg;

  // Truncated: the error names the file and what it expected.
  std::ifstream in(file, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(file, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  msg = error_of([&] { e2e::Trainer(tiny_model(), options(), data.size()).load_state(file); });
  EXPECT_NE(msg.find("trainer state '" + file + "' cannot be read"), std::string::npos) << msg;
  fs::remove(file);
  msg = error_of([&] { e2e::Trainer(tiny_model(), options(), data.size()).load_state(file); });
  EXPECT_NE(msg.find("not found"), std::string::npos) << msg;
}

TEST(E2ETrainer, BadOptionsAreRefused) {
  auto o = options();
  if (!torch::cuda::is_available()) {
    o.dtype = e2e::Precision::BF16;
    EXPECT_NE(error_of([&] { e2e::Trainer(tiny_model(), o, 4); }).find("use it with --device cuda"), std::string::npos);
  }
  o = options();
  o.batch_size = 0;
  EXPECT_NE(error_of([&] { e2e::Trainer(tiny_model(), o, 4); }).find("--batch-size"), std::string::npos);
  EXPECT_NE(error_of([&] { e2e::Trainer(tiny_model(), options(), 0); }).find("no training examples"), std::string::npos);
}

TEST(E2ETrainer, EnumNamesRoundTrip) {
  // The names the CLI accepts and trainer states store; a state written before the enums held these strings.
  EXPECT_EQ(e2e::name_of(e2e::Method::LoRA), "lora");
  EXPECT_EQ(e2e::name_of(e2e::Method::Full), "full");
  EXPECT_EQ(e2e::name_of(e2e::UpdateRule::Reference), "reference");
  EXPECT_EQ(e2e::name_of(e2e::UpdateRule::Torch), "torch");
  EXPECT_EQ(e2e::name_of(e2e::Precision::FP32), "fp32");
  EXPECT_EQ(e2e::name_of(e2e::Precision::BF16), "bf16");
  for (const auto& [name, v] : e2e::method_names()) EXPECT_EQ(e2e::name_of(v), name);
  for (const auto& [name, v] : e2e::update_rule_names()) EXPECT_EQ(e2e::name_of(v), name);
  for (const auto& [name, v] : e2e::precision_names()) EXPECT_EQ(e2e::name_of(v), name);
}

TEST(E2ETrainer, DevicesAreParsedByLibTorch) {
  EXPECT_EQ(e2e::device_named("cpu"), torch::Device(torch::kCPU));
  for (const std::string bad : {"tpu", "cuda:x", "", "cpu0"})
    EXPECT_NE(error_of([&] { e2e::device_named(bad); }).find("--device must be cpu, cuda or cuda:N, got '" + bad + "'"),
              std::string::npos) << bad;
  if (!torch::cuda::is_available()) {
    EXPECT_NE(error_of([] { e2e::device_named("cuda:1"); }).find("--device cuda:1: no CUDA device is available"), std::string::npos);
  } else {
    EXPECT_EQ(e2e::device_named("cuda:0"), torch::Device(torch::kCUDA, 0));
    const auto n = std::to_string(torch::cuda::device_count());
    EXPECT_NE(error_of([&] { e2e::device_named("cuda:" + n); }).find("this machine has " + n + " CUDA device(s)"), std::string::npos);
  }
}

// bf16 autocast: the loss and the adapter's first update stay close to fp32 on the same batch,
// while parameters and optimizer state stay fp32.
TEST(E2ETrainer, Bf16AutocastOnCudaTracksFp32) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: bf16 autocast is CUDA-only";
  const auto data = examples(8);
  auto o = options();
  o.device = "cuda";
  o.lora_dropout = 0;
  o.warmup = 1;
  o.lr = 1e-3;
  auto m32 = tiny_model(), m16 = tiny_model();
  e2e::Trainer t32(m32, o, data.size());
  o.dtype = e2e::Precision::BF16;
  e2e::Trainer t16(m16, o, data.size());
  for (int i = 0; i < 3; ++i) {  // the later losses follow the bf16 run's own updates
    const auto batch = e2e::make_batch(data, t32.next_indices());
    const double l32 = t32.step(batch), l16 = t16.step(batch);
    EXPECT_NEAR(l16, l32, 2e-2 * std::abs(l32)) << "step " << i;
  }
  for (const auto& p : trainable(*m16)) {
    EXPECT_EQ(p.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(p.is_cuda());
    EXPECT_GT(p.abs().max().item<double>(), 0.0);  // B moved off zero: the bf16 gradients arrived
  }
}

// ---- the recipe's trajectory against float64 formulas ------------------------------------------

namespace {

/// The trainer's steps recomputed in float64 on plain tensors: a float64 copy of the model gives
/// the gradients of the reference loss; the schedule and the update rule are the formulas of
/// examples/NLG (optimizer "reference") or of PyTorch's AdamW ("torch").
class Float64Recipe {
 public:
  Float64Recipe(const gpt2::GPT2LMHeadModelImpl& trained, const e2e::TrainOptions& o, int64_t total_steps)
      : o_(o), total_(total_steps) {
    model_ = tiny_model();
    if (o.method == e2e::Method::LoRA)
      lora::inject_lora(*model_, lora::LoRAConfig().r(o.rank).alpha(o.alpha).target_modules({"c_attn"}).enable_lora(
                                     {{"c_attn", {true, false, true}}}));
    model_->set_dropout(0, 0, 0);  // the reference GPT-2 has no dropout; lora_dropout is 0 in these runs
    const auto src = trained.named_parameters();
    torch::NoGradGuard no_grad;
    for (auto& item : model_->named_parameters()) {
      item.value().copy_(src[item.key()]);
      item.value().set_requires_grad(src[item.key()].requires_grad());
    }
    model_->to(torch::kDouble);
    for (auto& item : model_->named_parameters())
      if (item.value().requires_grad()) {
        names_.push_back(item.key());
        params_.push_back(item.value());
        m_.push_back(torch::zeros_like(item.value()));
        v_.push_back(torch::zeros_like(item.value()));
      }
  }

  double lr(int64_t k) const {
    if (k < o_.warmup) return o_.lr * double(k) / double(o_.warmup);
    return o_.lr * std::max(0.0, double(total_ - k) / double(total_ - o_.warmup));
  }

  void step(const e2e::Batch& batch) {
    model_->train();
    for (auto& p : params_) p.mutable_grad() = torch::Tensor();
    auto [sums, counts] = e2e::completion_loss(*model_, batch, o_.label_smoothing);
    (sums.sum() / (counts.sum() + 1e-4)).backward();
    const double lr_k = lr(k_++), b1 = 0.9, b2 = 0.999, eps = 1e-6, wd = o_.weight_decay;
    ++t_;
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
      auto& p = params_[i];
      const auto g = p.grad();
      if (o_.optimizer == e2e::UpdateRule::Torch) p.mul_(1 - lr_k * wd);  // PyTorch: decay first
      m_[i] = b1 * m_[i] + (1 - b1) * g;
      v_[i] = b2 * v_[i] + (1 - b2) * g * g;
      const double bc1 = 1 - std::pow(b1, t_), bc2 = 1 - std::pow(b2, t_);
      if (o_.optimizer == e2e::UpdateRule::Torch) {
        p.sub_(lr_k / bc1 * m_[i] / (v_[i].sqrt() / std::sqrt(bc2) + eps));
      } else {  // examples/NLG: eps before the bias correction, decay after the update
        p.sub_(lr_k * std::sqrt(bc2) / bc1 * m_[i] / (v_[i].sqrt() + eps));
        p.sub_(lr_k * wd * p);
      }
    }
  }

  const std::vector<std::string>& names() const { return names_; }
  const std::vector<torch::Tensor>& params() const { return params_; }

 private:
  e2e::TrainOptions o_;
  int64_t total_, k_ = 0, t_ = 0;
  std::shared_ptr<gpt2::GPT2LMHeadModelImpl> model_;
  std::vector<std::string> names_;
  std::vector<torch::Tensor> params_, m_, v_;
};

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto A = a.detach().to(torch::kDouble), B = b.detach().to(torch::kDouble);
  return (A - B).abs().max().item<double>() / std::max(B.abs().max().item<double>(), 1e-300);
}

}  // namespace

class E2ETrainerTrajectory : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(E2ETrainerTrajectory, EveryTrainableTensorFollowsTheFloat64Recipe) {
  const auto& [method, optimizer] = GetParam();
  const auto data = examples(10);
  auto o = options();
  o.method = e2e::method_names().at(method);
  o.optimizer = e2e::update_rule_names().at(optimizer);
  o.lora_dropout = 0;
  o.lr = method == "full" ? 1e-3 : 1e-2;
  auto model = tiny_model();
  e2e::Trainer trainer(model, o, data.size());
  Float64Recipe ref(*model, o, trainer.total_steps());
  ASSERT_EQ(trainer.total_steps(), 8);
  // Training mode must be deterministic: no dropout inside the model by default.
  for (int k = 0; k < trainer.total_steps(); ++k) {
    const auto batch = e2e::make_batch(data, trainer.next_indices());
    trainer.step(batch);
    ref.step(batch);
  }
  const auto now = model->named_parameters();
  double worst = 0;
  for (size_t i = 0; i < ref.names().size(); ++i) {
    const double err = rel_err(now[ref.names()[i]], ref.params()[i]);
    worst = std::max(worst, err);
    EXPECT_LT(err, 1e-5) << ref.names()[i];
  }
  std::cout << "[ trajectory ] " << method << "/" << optimizer << ": " << ref.names().size()
            << " tensors, worst relative difference " << worst << "\n";
}

INSTANTIATE_TEST_SUITE_P(MethodsAndOptimizers, E2ETrainerTrajectory,
                         ::testing::Values(std::make_pair(std::string("lora"), std::string("reference")),
                                           std::make_pair(std::string("full"), std::string("reference")),
                                           std::make_pair(std::string("lora"), std::string("torch")),
                                           std::make_pair(std::string("full"), std::string("torch"))),
                         [](const auto& info) { return info.param.first + "_" + info.param.second; });

TEST(E2ETrainer, ReferenceAndTorchAdamWTakeDifferentSteps) {
  // One parameter, a gradient near eps: the reference rule's eps (before bias correction) damps the
  // first steps far more than PyTorch's; both are checked against their closed forms at t = 1.
  for (const std::string which : {"reference", "torch"}) {
    auto p = torch::ones({1}, torch::kDouble).requires_grad_(true);
    const auto adamw = torch::optim::AdamWOptions(0.1).betas({0.9, 0.999}).eps(1e-6).weight_decay(0.5);
    std::unique_ptr<torch::optim::AdamW> opt = which == "reference"
                                                   ? std::make_unique<e2e::ReferenceAdamW>(std::vector<torch::Tensor>{p}, adamw)
                                                   : std::make_unique<torch::optim::AdamW>(std::vector<torch::Tensor>{p}, adamw);
    p.mutable_grad() = torch::full({1}, 1e-6, torch::kDouble);
    opt->step();
    const double g = 1e-6, lr = 0.1, wd = 0.5;
    // t = 1: m = 0.1 g, v = 0.001 g²; reference: p = (1 − lr·√0.001/0.1 · 0.1g/(√0.001·g + eps))·(1 − lr·wd)
    const double ref = (1 - lr * std::sqrt(0.001) / 0.1 * (0.1 * g) / (std::sqrt(0.001) * g + 1e-6)) * (1 - lr * wd);
    // torch: p = (1 − lr·wd) − lr/0.1 · 0.1g / (√(0.001g²)/√0.001 + eps)
    const double tor = (1 - lr * wd) - lr / 0.1 * (0.1 * g) / (g + 1e-6);
    EXPECT_NEAR(p.item<double>(), which == "reference" ? ref : tor, 1e-12) << which;
  }
}

TEST(E2ETrainer, ReferenceAdamWUpdatesLargeParametersInPiecesAsOneFormula) {
  // Sizes around the optimizer's 2^20-element pieces (one under, several with a partial last
  // piece, a non-contiguous one updated whole), three steps against the rule written out in float64.
  const int64_t piece = int64_t{1} << 20;
  std::vector<torch::Tensor> params = {torch::randn({piece - 3}), torch::randn({3, piece / 2 + 7}),
                                       torch::randn({2 * piece / 512 + 1, 512}).t()};
  for (auto& p : params) p.set_requires_grad(true);
  std::vector<torch::Tensor> p64, m64, v64;
  for (const auto& p : params) {
    p64.push_back(p.detach().to(torch::kDouble));
    m64.push_back(torch::zeros_like(p64.back()));
    v64.push_back(torch::zeros_like(p64.back()));
  }
  const double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-6, wd = 0.01;
  e2e::ReferenceAdamW opt(params, torch::optim::AdamWOptions(lr).betas({b1, b2}).eps(eps).weight_decay(wd));
  for (int t = 1; t <= 3; ++t) {
    for (size_t i = 0; i < params.size(); ++i) {
      const auto g = torch::randn(params[i].sizes());
      params[i].mutable_grad() = g;
      const auto g64 = g.to(torch::kDouble);
      m64[i] = b1 * m64[i] + (1 - b1) * g64;
      v64[i] = b2 * v64[i] + (1 - b2) * g64 * g64;
      p64[i] = p64[i] - lr * std::sqrt(1 - std::pow(b2, t)) / (1 - std::pow(b1, t)) * m64[i] / (v64[i].sqrt() + eps);
      p64[i] = p64[i] * (1 - lr * wd);
    }
    opt.step();
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const auto diff = (params[i].detach().to(torch::kDouble) - p64[i]).abs().max().item<double>();
    EXPECT_LT(diff, 1e-6 * p64[i].abs().max().item<double>()) << "parameter " << i << " " << params[i].sizes();
  }
}

TEST(E2ETrainer, ModelDropoutIsOffUnlessAsked) {
  const auto data = examples(4);
  const auto batch = e2e::make_batch(data, {0, 1, 2, 3});
  for (const bool model_dropout : {false, true}) {
    auto o = options();
    o.lora_dropout = 0;
    o.model_dropout = model_dropout;
    auto model = tiny_model();  // config dropout 0.1 everywhere, as the hub's GPT-2
    e2e::Trainer trainer(model, o, data.size());
    model->train();
    torch::NoGradGuard no_grad;
    const auto a = model->forward(batch.input), b = model->forward(batch.input);
    EXPECT_EQ(torch::equal(a, b), !model_dropout) << "model_dropout " << model_dropout;
  }
}

TEST(E2ETrainer, StateOfTheOtherOptimizerIsRefused) {
  const auto data = examples(10);
  auto o = options();
  e2e::Trainer a(tiny_model(), o, data.size());
  train(a, data, 2);
  const auto file = temp_file("optimizer.pt");
  a.save_state(file);
  o.optimizer = e2e::UpdateRule::Torch;
  e2e::Trainer b(tiny_model(), o, data.size());
  const auto msg = error_of([&] { b.load_state(file); });
  EXPECT_NE(msg.find("saved by a --optimizer reference run; this run is --optimizer torch"), std::string::npos) << msg;
  fs::remove(file);
}

TEST(E2ETrainer, MeanLossOfNoExamplesIsAnErrorNotANan) {
  auto model = tiny_model();
  const auto msg = error_of([&] { e2e::mean_loss(*model, {}, 4); });
  EXPECT_NE(msg.find("no completion tokens to average (0 examples)"), std::string::npos) << msg;
}
