// RoBERTa on a GLUE task through the shared training loop: batches, the loss, the recipe's steps
// against the reference rule in float64, exact resume.
#include <gtest/gtest.h>

#include "finetune.hpp"
#include "../../../tests/support/lora_test/errors.hpp"

#include <lora/lora.hpp>

#include <cmath>
#include <filesystem>
#include <map>

namespace fs = std::filesystem;

namespace {

/// A small random RoBERTa folder (glue::init_model), written once per label count and process
/// (init_model reseeds torch's RNG: call it before seeding a test's own draws), removed at exit.
std::string model_dir(int64_t labels) {
  struct Folders {
    std::vector<fs::path> made;
    ~Folders() {
      for (const auto& d : made) fs::remove_all(d);
    }
  };
  static Folders folders;
  const auto dir = fs::temp_directory_path() / ("glue_test_model_" + std::to_string(labels) + "_" + std::to_string(::getpid()));
  if (!fs::exists(dir / "model.safetensors")) {
    glue::init_model(dir.string(), 2, 32, labels, 3);
    folders.made.push_back(dir);
  }
  return dir.string();
}

/// Random examples of 5 to 12 ids (in the model's vocabulary, no pads) with labels or scores.
std::vector<glue::Encoded> examples(size_t n, int64_t labels, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<glue::Encoded> out;
  for (size_t i = 0; i < n; ++i) {
    glue::Encoded e;
    const int64_t len = torch::randint(5, 13, {1}).item<int64_t>();
    e.ids.push_back(0);
    for (int64_t t = 1; t + 1 < len; ++t) e.ids.push_back(torch::randint(3, 1000, {1}).item<int64_t>());
    e.ids.push_back(2);
    e.label = torch::randint(0, labels, {1}).item<int64_t>();
    e.score = torch::rand({1}).item<double>() * 5;
    out.push_back(e);
  }
  return out;
}

void no_dropout(torch::nn::Module& m) {
  for (auto& child : m.modules())
    if (auto* d = child->as<torch::nn::DropoutImpl>()) d->options.p(0.0);
}

std::vector<size_t> all(size_t n) {
  std::vector<size_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

}  // namespace

TEST(GlueFinetune, PaddingToTheBatchGivesTheLogitsOfPaddingTo512) {
  auto model = glue::load_model(model_dir(2), 2);
  const auto ex = examples(6, 2, 1);
  const auto batch = glue::predict_logits(model, ex, 4, 1);
  const auto padded = glue::predict_logits(model, ex, 4, 1, 512);  // the reference's cost
  EXPECT_TRUE(torch::allclose(batch, padded, 1e-5, 1e-6)) << (batch - padded).abs().max().item<double>();
  const auto b = glue::make_batch(ex, {0, 1, 2}, 1, false);
  int64_t longest = 0;
  for (size_t i = 0; i < 3; ++i) longest = std::max<int64_t>(longest, static_cast<int64_t>(ex[i].ids.size()));
  EXPECT_EQ(b.input_ids.size(1), longest);
  EXPECT_EQ(b.attention_mask.sum().item<int64_t>(), static_cast<int64_t>(ex[0].ids.size() + ex[1].ids.size() + ex[2].ids.size()));
  EXPECT_EQ(glue::make_batch(ex, {0, 1, 2}, 1, false, 512).input_ids.size(1), 512);
}

TEST(GlueFinetune, LossIsCrossEntropyOrSquaredErrorPerExample) {
  for (int64_t labels : {3, 1}) {
    auto model = glue::load_model(model_dir(labels), labels);
    model->eval();
    const auto ex = examples(5, labels, 2);
    const auto batch = glue::make_batch(ex, all(ex.size()), 1, labels == 1);
    torch::NoGradGuard no_grad;
    const auto sums = glue::sequence_loss(model, batch);
    const auto logits = model.forward(batch.input_ids, batch.attention_mask).to(torch::kDouble);
    double want = 0;
    for (size_t i = 0; i < ex.size(); ++i) {
      const auto row = logits[static_cast<int64_t>(i)];
      if (labels == 1) {
        want += std::pow(row[0].item<double>() - ex[i].score, 2);
      } else {
        double z = 0;
        for (int64_t k = 0; k < labels; ++k) z += std::exp(row[k].item<double>());
        want += std::log(z) - row[ex[i].label].item<double>();
      }
    }
    EXPECT_NEAR(sums.sum.item<double>(), want, 1e-4 * std::max(1.0, std::abs(want))) << labels << " labels";
    EXPECT_EQ(sums.count.item<double>(), 5.0);
  }
}

TEST(GlueFinetune, RecipeStepsFollowTransformersAdamWScheduleAndClippingInFloat64) {
  glue::TrainArgs a;
  a.task = "rte";
  a.epochs = 2;
  a.batch_size = 4;
  a.lr = 5e-3;
  a.clip = 0.5;  // small enough to bind
  const auto ex = examples(10, 2, 3);
  const auto preset = glue::resolved_preset(a);
  const auto o = glue::loop_options(a, preset);
  model_dir(2);  // written before the seeding below
  const int64_t T = 2 * 3, W = static_cast<int64_t>(std::ceil(T * 0.06));  // 3 batches of 4 per epoch
  EXPECT_EQ(o.eps, 1e-8);
  EXPECT_EQ(o.weight_decay, 0.1);

  torch::manual_seed(7);
  auto model = glue::load_model(model_dir(2), 2);
  glue::prepare_for_lora(model, 8, 16);
  no_dropout(*model);
  {  // B starts at zero: give it values so that A's gradients are not zero from the first step
    torch::NoGradGuard g;
    for (auto& p : model->named_parameters())
      if (p.key().find("lora_B") != std::string::npos) p.value().normal_(0, 0.05);
  }
  // The float64 reference: the same weights, updated by the rule written out here.
  auto ref = glue::load_model(model_dir(2), 2);
  glue::prepare_for_lora(ref, 8, 16);
  no_dropout(*ref);
  {
    torch::NoGradGuard g;
    auto src = model->named_parameters();
    for (auto& p : ref->named_parameters()) p.value().copy_(src[p.key()]);
  }
  ref->to(torch::kDouble);
  std::vector<std::pair<std::string, torch::Tensor>> params;
  for (auto& p : ref->named_parameters())
    if (p.value().requires_grad()) params.emplace_back(p.key(), p.value());
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> moments;
  for (auto& [n, p] : params) moments[n] = {torch::zeros_like(p), torch::zeros_like(p)};
  int decayed = 0, exempt = 0;
  for (auto& [n, p] : params) (glue::decays(n) ? decayed : exempt)++;
  EXPECT_GT(decayed, 0);
  EXPECT_GT(exempt, 0) << "the classifier's biases take no weight decay";

  training::Trainer trainer(model.module, o, ex.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  EXPECT_EQ(trainer.options().warmup, W);  // the ratio's ceil(T · 0.06) steps
  for (int64_t k = 0; k < T; ++k) {
    const auto idx = trainer.next_indices();
    const auto batch = glue::make_batch(ex, idx, 1, false);
    trainer.step([&] { return glue::sequence_loss(model, batch); }, idx.empty(), static_cast<int64_t>(idx.size()));

    ref->train();
    const auto logits = ref.forward(batch.input_ids, batch.attention_mask);
    const auto loss = torch::nn::functional::cross_entropy(logits, batch.labels);
    for (auto& [n, p] : params) p.mutable_grad() = torch::Tensor();
    loss.backward();
    double norm2 = 0;
    for (auto& [n, p] : params) norm2 += p.grad().pow(2).sum().item<double>();
    const double coef = a.clip / (std::sqrt(norm2) + 1e-6);
    const double lr = k < W ? a.lr * double(k) / W : a.lr * double(T - k) / double(T - W);
    torch::NoGradGuard g;
    for (auto& [n, p] : params) {
      auto grad = coef < 1 ? p.grad() * coef : p.grad();
      auto& [m, v] = moments[n];
      m = 0.9 * m + 0.1 * grad;
      v = 0.999 * v + 0.001 * grad * grad;
      const double t = double(k + 1), step = lr * std::sqrt(1 - std::pow(0.999, t)) / (1 - std::pow(0.9, t));
      p.sub_(step * m / (v.sqrt() + 1e-8));
      if (glue::decays(n)) p.sub_(lr * 0.1 * p);
    }
  }
  auto trained = model->named_parameters();
  auto start = glue::load_model(model_dir(2), 2)->named_parameters();
  for (auto& [n, p] : params) {
    const auto got = trained[n].to(torch::kDouble), want = p.detach();
    const double scale = std::max(1e-12, want.abs().max().item<double>());
    EXPECT_LT((got - want).abs().max().item<double>() / scale, 2e-4) << n;
  }
  EXPECT_FALSE(torch::equal(trained["classifier.out_proj.weight"], start["classifier.out_proj.weight"])) << "the head trained";
  EXPECT_TRUE(torch::equal(trained["roberta.encoder.layer.0.attention.self.key.weight"],
                           start["roberta.encoder.layer.0.attention.self.key.weight"])) << "the base stays frozen";
}

TEST(GlueFinetune, ResumedRunEqualsTheUninterruptedOne) {
  glue::TrainArgs a;
  a.epochs = 2;
  a.batch_size = 4;
  const auto ex = examples(10, 2, 4);
  const auto o = glue::loop_options(a, glue::resolved_preset(a));
  const auto dir = model_dir(2);
  auto fresh = [&] {
    torch::manual_seed(9);
    auto m = glue::load_model(dir, 2);
    glue::prepare_for_lora(m, 8, 16);  // model dropout 0.1 stays on: the RNG state must resume too
    return m;
  };
  auto run = [&](const glue::Model& m, training::Trainer& t, int64_t steps) {
    for (int64_t k = 0; k < steps && !t.done(); ++k) {
      const auto idx = t.next_indices();
      const auto batch = glue::make_batch(ex, idx, 1, false);
      t.step([&] { return glue::sequence_loss(m, batch); }, idx.empty(), static_cast<int64_t>(idx.size()));
    }
  };
  auto whole = fresh();
  torch::manual_seed(1);
  training::Trainer t1(whole.module, o, ex.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  run(whole, t1, 100);
  const auto state = (fs::temp_directory_path() / ("glue_resume_" + std::to_string(::getpid()) + ".pt")).string();
  auto first = fresh();
  torch::manual_seed(1);
  training::Trainer t2(first.module, o, ex.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  run(first, t2, 4);
  t2.save_state(state);
  run(first, t2, 1);  // the interrupted run goes on a little before it dies: its RNG moves on
  auto second = fresh();
  training::Trainer t3(second.module, o, ex.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  t3.load_state(state);
  EXPECT_EQ(t3.position().step, 4);
  run(second, t3, 100);
  auto want = whole->named_parameters();
  for (const auto& p : second->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), want[p.key()])) << p.key();
  fs::remove(state);
}

TEST(GlueFinetune, ScoresAndErrorsNameTheCause) {
  const auto& rte = glue::task_named("rte");
  const auto ex = examples(4, 2, 5);
  auto logits = torch::zeros({4, 2});
  for (int64_t i = 0; i < 4; ++i) logits[i][i % 2 == 0 ? ex[static_cast<size_t>(i)].label : 1 - ex[static_cast<size_t>(i)].label] = 1;
  EXPECT_DOUBLE_EQ(glue::score_logits(rte, logits, ex).at("accuracy"), 0.5);  // rows 0 and 2 right
  EXPECT_NE(lora_test::error_of([&] { glue::score_logits(rte, torch::zeros({3, 2}), ex); }).find("3 rows of logits for 4 examples"),
            std::string::npos);
  glue::TrainArgs a;
  a.task = "wnli";
  EXPECT_NE(lora_test::error_of([&] { glue::resolved_preset(a); }).find("the paper has no recipe for wnli"), std::string::npos);
}

TEST(GlueFinetune, DebertaRunsTheXxlargeScriptsRecipe) {
  // deberta_v2_xxlarge_rte.sh: batch 4 x 8 GPUs, lr 2.6e-4, 11 epochs, max length 320, warm-up 50
  // steps, weight decay 0.01, cls_dropout 0.2, r 16, alpha 32, from the MNLI adapter.
  const auto dir = fs::temp_directory_path() / ("glue_test_deberta_" + std::to_string(::getpid()));
  glue::init_model(dir.string(), 1, 32, 2, 3, "deberta-v2", 1000);
  glue::TrainArgs a;
  a.arch = glue::arch_of(dir.string());
  EXPECT_EQ(a.arch, "deberta-v2");
  const auto p = glue::resolved_preset(a);
  EXPECT_EQ(p.global_batch(), 32);
  EXPECT_EQ(p.lr, 2.6e-4);
  EXPECT_EQ(p.epochs, 11);
  EXPECT_EQ(p.max_len, 320);
  EXPECT_TRUE(p.from_mnli);
  EXPECT_EQ(p.rank, 16);
  EXPECT_EQ(p.alpha, 32);
  EXPECT_EQ(p.cls_dropout, 0.2);
  const auto o = glue::loop_options(a, p);
  EXPECT_EQ(o.warmup, 50);
  EXPECT_EQ(o.warmup_ratio, 0);
  EXPECT_EQ(o.weight_decay, 0.01);
  a.task = "mrpc";  // the one script with a warm-up ratio (0.1)
  EXPECT_EQ(glue::loop_options(a, glue::resolved_preset(a)).warmup_ratio, 0.1);
  EXPECT_EQ(glue::loop_options(a, glue::resolved_preset(a)).warmup, 0);

  torch::manual_seed(4);
  auto model = glue::load_model(dir.string(), 2, p.cls_dropout);
  glue::prepare_for_lora(model, p.rank, p.alpha);
  std::vector<std::string> trainable;
  torch::Tensor a_values;
  for (const auto& q : model->named_parameters()) {
    if (!q.value().requires_grad()) continue;
    trainable.push_back(q.key());
    if (q.key().find("lora_A") != std::string::npos) a_values = a_values.defined() ? torch::cat({a_values, q.value().flatten()}) : q.value().flatten();
  }
  // query_proj and value_proj adapted; pooler and classifier trained in full; nothing else.
  EXPECT_EQ(trainable.size(), 4u + 4u);
  for (const auto& n : trainable)
    EXPECT_TRUE(n.find("query_proj.lora_") != std::string::npos || n.find("value_proj.lora_") != std::string::npos ||
                n.rfind("pooler.dense.", 0) == 0 || n.rfind("classifier.", 0) == 0)
        << n;
  // The reference's _init_weights: A ~ N(0, 0.02), not Kaiming (whose bound at in = 32 is 0.18).
  EXPECT_NEAR(a_values.std().item<double>(), 0.02, 0.003);
  const auto* dropout = model->named_modules()["dropout"]->as<torch::nn::DropoutImpl>();
  EXPECT_EQ(dropout->options.p(), 0.2);  // --cls_dropout on the classifier's dropout
  // A step on a padded batch trains: finite loss, the pooler moves, the base does not.
  const auto ex = examples(6, 2, 8);
  const auto before = model->named_parameters()["pooler.dense.weight"].clone();
  const auto frozen = model->named_parameters()["deberta.encoder.layer.0.attention.self.key_proj.weight"].clone();
  training::Options opt = o;
  opt.batch_size = 6;
  opt.lr = 1e-2;
  opt.warmup = 0;  // the preset's 50 warm-up steps would give the first step a learning rate of 0
  training::Trainer trainer(model.module, opt, ex.size(), lora::dist::ProcessGroup(), {}, {}, glue::decays);
  const auto idx = trainer.next_indices();
  const auto batch = glue::make_batch(ex, idx, 0, false);
  const double loss = trainer.step([&] { return glue::sequence_loss(model, batch); }, false, static_cast<int64_t>(idx.size()));
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_FALSE(torch::equal(model->named_parameters()["pooler.dense.weight"], before));
  EXPECT_TRUE(torch::equal(model->named_parameters()["deberta.encoder.layer.0.attention.self.key_proj.weight"], frozen));
  fs::remove_all(dir);
}
