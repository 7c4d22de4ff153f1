// The GLUE recipe data-parallel over Gloo on 127.0.0.1: two ranks (this binary started twice in
// worker mode) must compute the single-process run, the head and a final batch of one example
// per rank included; for RoBERTa and for DeBERTa-v2.
#include <gtest/gtest.h>

#include "finetune.hpp"
#include "../../../tests/common.hpp"  // lora_test::remove_tree
#include <lora_test/spawn.hpp>

#include <filesystem>

namespace fs = std::filesystem;

namespace {

/// 10 random examples: batches of 4, 4 and 2 (one per rank).
std::vector<glue::Encoded> examples() {
  torch::manual_seed(21);
  std::vector<glue::Encoded> out(10);
  for (auto& e : out) {
    const int64_t len = torch::randint(5, 13, {1}).item<int64_t>();
    e.ids.push_back(0);
    for (int64_t t = 1; t + 1 < len; ++t) e.ids.push_back(torch::randint(3, 1000, {1}).item<int64_t>());
    e.ids.push_back(2);
    e.label = torch::randint(0, 2, {1}).item<int64_t>();
  }
  return out;
}

glue::Model model(const std::string& dir) {
  torch::manual_seed(5);
  auto m = glue::load_model(dir, 2);
  glue::prepare_for_lora(m, 8, 16);
  for (auto& child : m->modules())  // the ranks draw other dropout masks than one process
    if (auto* d = child->as<torch::nn::DropoutImpl>()) d->options.p(0.0);
  return m;
}

training::Options options() {
  glue::TrainArgs a;
  a.epochs = 2;
  a.batch_size = 4;
  a.lr = 5e-3;
  return glue::loop_options(a, glue::resolved_preset(a));
}

std::vector<torch::Tensor> run(const std::string& dir, lora::dist::ProcessGroup group) {
  const auto data = examples();
  auto m = model(dir);
  training::Trainer t(m.module, options(), data.size(), std::move(group), {}, {}, glue::decays);
  const int64_t pad = m.arch == "deberta-v2" ? 0 : 1;
  while (!t.done()) {
    const auto idx = t.next_indices();
    const auto batch = glue::make_batch(data, idx, pad, false);
    t.step([&] { return glue::sequence_loss(m, batch); }, idx.empty(), static_cast<int64_t>(idx.size()));
  }
  std::vector<torch::Tensor> out;
  for (const auto& p : m->parameters())
    if (p.requires_grad()) out.push_back(p.detach().clone());
  out.push_back(torch::tensor(t.position().tokens));
  return out;
}

/// Worker: MODEL_DIR OUT.
int worker(char** argv) {
  try {
    auto group = lora::dist::ProcessGroup::from_env(lora::dist::ProcessGroupOptions().timeout(std::chrono::seconds(60)));
    torch::save(run(argv[0], group), argv[1]);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}

}  // namespace

class GlueDataParallel : public ::testing::TestWithParam<std::string> {};

TEST_P(GlueDataParallel, TwoRanksTrainAsOneProcess) {
  const std::string dir = (fs::temp_directory_path() / ("glue_dist_" + GetParam() + "_" + std::to_string(::getpid()))).string();
  glue::init_model(dir + "/model", 1, 32, 2, 3, GetParam(), 1000);
  const auto reference = run(dir + "/model", lora::dist::ProcessGroup());
  const int port = lora_test::free_port();
  std::vector<lora_test::Rank> rs;
  for (int r = 0; r < 2; ++r) {
    const std::string out = dir + "/rank" + std::to_string(r) + ".pt";
    rs.push_back(lora_test::spawn_self({"--worker", dir + "/model", out}, lora_test::torchrun_env(r, 2, port), out, out + ".err"));
  }
  for (size_t r = 0; r < rs.size(); ++r) {
    ASSERT_EQ(lora_test::wait_rank(rs[r], std::chrono::seconds(240)), 0) << lora_test::read_text(rs[r].err);
    std::vector<torch::Tensor> got;
    torch::load(got, rs[r].out);
    ASSERT_EQ(got.size(), reference.size());
    double worst = 0;
    for (size_t i = 0; i + 1 < got.size(); ++i)
      worst = std::max(worst, (got[i] - reference[i]).abs().max().item<double>() / reference[i].abs().max().item<double>());
    EXPECT_LT(worst, 1e-5) << "rank " << r;
    EXPECT_EQ(got.back().item<int64_t>(), 20) << "both ranks count the 10 examples of each of the 2 epochs";
  }
  lora_test::remove_tree(dir);
}

INSTANTIATE_TEST_SUITE_P(Families, GlueDataParallel, ::testing::Values("roberta", "deberta-v2"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param == "roberta" ? "Roberta" : "DebertaV2"; });

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--worker") return worker(argv + 2);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
