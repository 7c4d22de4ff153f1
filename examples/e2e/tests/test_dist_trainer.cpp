// e2e::Trainer data-parallel over Gloo on 127.0.0.1: two ranks (this binary started twice in worker
// mode) must compute the single-process run, for LoRA and full fine-tuning, with gradient
// accumulation, a final batch smaller than the number of ranks, and a resume in the middle.
#include <gtest/gtest.h>

#include "trainer.hpp"
#include "../../test_gpt2.hpp"
#include "../../../tests/common.hpp"  // lora_test::remove_tree
#include <lora_test/spawn.hpp>

#include <filesystem>
#include <random>

namespace fs = std::filesystem;

namespace {

std::shared_ptr<gpt2::GPT2LMHeadModelImpl> tiny_model() {
  torch::manual_seed(7);
  return std::make_shared<gpt2::GPT2LMHeadModelImpl>(example_test::tiny_gpt2_config());
}

/// 9 examples in batches of 4: every epoch ends with a batch of one, so one rank has none.
std::vector<e2e::Example> examples() {
  std::mt19937 rng(3);
  std::vector<e2e::Example> out(9);
  for (auto& e : out) {
    const int64_t ctx = 3 + rng() % 6, len = ctx + 2 + rng() % 8;
    for (int64_t i = 0; i < len; ++i) e.tokens.push_back(static_cast<int64_t>(rng() % 96));
    e.context_len = ctx;
  }
  return out;
}

e2e::TrainOptions options(const std::string& method, int64_t accum) {
  e2e::TrainOptions o;
  o.method = e2e::method_names().at(method);
  o.grad_accum = accum;
  o.epochs = 2;
  o.batch_size = 4;
  o.warmup = 2;
  o.lr = method == "full" ? 1e-3 : 1e-2;
  o.lora_dropout = 0;  // the ranks draw different masks from a single process's
  return o;
}

/// Trains to the end (or `steps` batches), returning the trainable tensors and the token count.
std::vector<torch::Tensor> run(e2e::Trainer& t, int steps = -1) {
  const auto data = examples();
  for (int i = 0; (steps < 0 || i < steps) && !t.done(); ++i) t.step(e2e::make_batch(data, t.next_indices()));
  std::vector<torch::Tensor> out;
  for (const auto& p : t.model()->parameters())
    if (p.requires_grad()) out.push_back(p.detach().clone());
  out.push_back(torch::tensor(t.position().tokens));
  return out;
}

/// Worker: METHOD ACCUM OUT PHASE STATE. PHASE "all": train to the end; "first": 3 batches, then
/// rank 0 saves the trainer state to STATE; "rest": resume from STATE and train to the end.
int worker(char** argv) {
  try {
    const std::string method = argv[0], out = argv[2], phase = argv[3], state = argv[4];
    auto group = lora::dist::ProcessGroup::from_env(lora::dist::ProcessGroupOptions().timeout(std::chrono::seconds(60)));
    e2e::Trainer t(tiny_model(), options(method, std::atoi(argv[1])), examples().size(), group);
    if (phase == "rest") t.load_state(state);
    auto result = run(t, phase == "first" ? 3 : -1);
    if (phase == "first" && group.rank() == 0) t.save_state(state);
    group.barrier();
    torch::save(result, out);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>() /
         std::max(b.to(torch::kDouble).abs().max().item<double>(), 1e-30);
}

struct Case {
  std::string method;
  int64_t accum;
  bool resume;
};

class E2EDataParallel : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : name)
      if (c == '/') c = '_';
    dir_ = (fs::temp_directory_path() / ("e2e_dist_" + std::to_string(::getpid()) + "_" + name)).string();
    fs::create_directories(dir_);
  }
  void TearDown() override { lora_test::remove_tree(dir_); }

  /// Both ranks of one phase; every rank's result.
  std::vector<std::vector<torch::Tensor>> ranks(const std::string& phase) {
    const auto& c = GetParam();
    const int port = lora_test::free_port();
    std::vector<lora_test::Rank> rs;
    for (int r = 0; r < 2; ++r) {
      const std::string out = dir_ + "/" + phase + std::to_string(r) + ".pt";
      rs.push_back(lora_test::spawn_self({"--worker", c.method, std::to_string(c.accum), out, phase, dir_ + "/state.pt"},
                                         lora_test::torchrun_env(r, 2, port), out, out + ".err"));
    }
    std::vector<std::vector<torch::Tensor>> results;
    for (const auto& r : rs) {
      EXPECT_EQ(lora_test::wait_rank(r, std::chrono::seconds(240)), 0) << lora_test::read_text(r.err);
      std::vector<torch::Tensor> got;
      if (fs::exists(r.out)) torch::load(got, r.out);
      results.push_back(got);
    }
    return results;
  }
  std::string dir_;
};

}  // namespace

TEST_P(E2EDataParallel, TwoRanksTrainAsOneProcess) {
  const auto& c = GetParam();
  e2e::Trainer single(tiny_model(), options(c.method, c.accum), examples().size());
  const auto reference = run(single);
  if (c.resume) {
    ranks("first");
    // The state the two ranks wrote is theirs: one process may not continue it.
    e2e::Trainer other(tiny_model(), options(c.method, c.accum), examples().size());
    std::string msg;
    try {
      other.load_state(dir_ + "/state.pt");
    } catch (const std::exception& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find("saved by a run of 2 process(es), this run has 1"), std::string::npos) << msg;
  }
  const auto results = ranks(c.resume ? "rest" : "all");
  for (size_t r = 0; r < results.size(); ++r) {
    ASSERT_EQ(results[r].size(), reference.size()) << "rank " << r;
    double worst = 0;
    for (size_t i = 0; i + 1 < reference.size(); ++i) worst = std::max(worst, rel_err(results[r][i], reference[i]));
    EXPECT_LT(worst, 1e-5) << "rank " << r;
    EXPECT_EQ(results[r].back().item<int64_t>(), reference.back().item<int64_t>()) << "global token count, rank " << r;
    std::cout << "[ dp ] " << c.method << " accum " << c.accum << (c.resume ? " resumed" : "") << ", rank " << r << ": "
              << reference.size() - 1 << " tensors, worst relative difference " << worst << "\n";
  }
}

INSTANTIATE_TEST_SUITE_P(Recipes, E2EDataParallel,
                         ::testing::Values(Case{"lora", 1, false}, Case{"full", 1, false}, Case{"lora", 2, false},
                                           Case{"lora", 1, true}),
                         [](const auto& info) {
                           return info.param.method + "_accum" + std::to_string(info.param.accum) +
                                  (info.param.resume ? "_resumed" : "");
                         });

int main(int argc, char** argv) {
  if (argc == 7 && std::string(argv[1]) == "--worker") return worker(argv + 2);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
