// The training loop: schedule, exact resume from a trainer state, option checks, bf16 autocast.
#include <gtest/gtest.h>

#include "trainer.hpp"
#include "../../test_util.hpp"

#include <lora/lora.hpp>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

namespace fs = std::filesystem;

namespace {

using example_test::error_of;

gpt2::Config tiny_config() {
  gpt2::Config c;
  c.vocab_size = 97;
  c.n_positions = 64;
  c.n_layer = 2;
  c.n_embd = 32;
  c.n_head = 2;
  return c;
}

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
  for (int64_t s = 0; s < 12; ++s) {
    const double expected = s < 3 ? 1e-2 * (s + 1) / 3.0 : 1e-2 * (12.0 - s) / 9.0;
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
  o.method = "full";
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
  o.method = "full";
  msg = error_of([&] { e2e::Trainer(tiny_model(), o, data.size()).load_state(file); });
  EXPECT_NE(msg.find("saved by a --method lora run"), std::string::npos) << msg;

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
  o.dtype = "fp16";
  EXPECT_NE(error_of([&] { e2e::Trainer(tiny_model(), o, 4); }).find("--dtype must be fp32 or bf16"), std::string::npos);
  o = options();
  o.method = "adapter";
  EXPECT_NE(error_of([&] { e2e::Trainer(tiny_model(), o, 4); }).find("--method must be lora or full"), std::string::npos);
  if (!torch::cuda::is_available()) {
    o = options();
    o.dtype = "bf16";
    EXPECT_NE(error_of([&] { e2e::Trainer(tiny_model(), o, 4); }).find("use it with --device cuda"), std::string::npos);
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
  o.dtype = "bf16";
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
