// lora::dist (include/lora/distributed.hpp): Gloo on 127.0.0.1 with two processes. The test binary
// starts copies of itself as ranks (`--worker SCENARIO OUT`), each with the launcher's environment.
#include <gtest/gtest.h>

#include <lora/distributed.hpp>
#include <lora/lora.hpp>

#include "common.hpp"
#include <lora_test/spawn.hpp>


#include <algorithm>
#include <thread>
#include <chrono>
#include <map>

namespace {

namespace fs = std::filesystem;

constexpr int kSteps = 4, kAccum = 2, kGlobalBatch = 8, kIn = 12, kHidden = 16, kOut = 6;

/// A two-layer network of LoRA-capable layers: W0 from seed 1 on every rank.
struct Net : torch::nn::Module {
  Net() {
    torch::manual_seed(1);
    fc1 = register_module("fc1", lora::LoRALinear(kIn, kHidden));
    fc2 = register_module("fc2", lora::LoRALinear(kHidden, kOut));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::tanh(fc1(x))); }
  lora::LoRALinear fc1{nullptr}, fc2{nullptr};
};

std::vector<torch::Tensor> trainable(torch::nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (const auto& p : m.parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}

struct RunResult {
  std::vector<torch::Tensor> params;
  int64_t bytes = 0;
};

/// The training loop every test runs: kSteps optimizer steps, each over kAccum batches of
/// kGlobalBatch rows; this rank takes its contiguous share of every batch and normalises its
/// summed squared error by the global element count, so the all-reduced gradient is the
/// single-process one. Adapters (or, for full, W0) start from a seed that differs per rank: the
/// broadcast must make them rank 0's. `fail_at` >= 0: there rank 1 exits without a word (`stall`
/// false) or stops answering for a minute (`stall` true).
RunResult train(lora::dist::ProcessGroup& group, bool full, int fail_at = -1, bool stall = false) {
  Net net;
  if (full) {
    torch::manual_seed(100 + group.rank());
    for (auto& p : net.parameters()) {
      torch::NoGradGuard no_grad;
      p.normal_(0, 0.3);
      p.requires_grad_(true);
    }
  } else {
    torch::manual_seed(100 + group.rank());
    lora::inject_lora(net, lora::LoRAConfig().r(3).alpha(6).target_modules({"fc1", "fc2"}));
    torch::NoGradGuard no_grad;
    for (auto& p : lora::lora_parameters(net)) p.normal_(0, 0.3);  // B non-zero: every tensor moves
  }
  auto params = trainable(net);
  group.broadcast(params);
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-2).weight_decay(0.01));
  torch::manual_seed(7);
  const auto X = torch::randn({kSteps, kAccum, kGlobalBatch, kIn}), Y = torch::randn({kSteps, kAccum, kGlobalBatch, kOut});
  const int64_t share = kGlobalBatch / group.world_size(), from = share * group.rank();
  for (int s = 0; s < kSteps; ++s) {
    if (s == fail_at && group.rank() == 1) {
      if (stall) std::this_thread::sleep_for(std::chrono::minutes(1));
      std::_Exit(3);
    }
    opt.zero_grad();
    for (int a = 0; a < kAccum; ++a) {
      const auto x = X[s][a].narrow(0, from, share), y = Y[s][a].narrow(0, from, share);
      ((net.forward(x) - y).pow(2).sum() / double(kGlobalBatch * kOut * kAccum)).backward();
    }
    group.all_reduce_gradients(params);
    opt.step();
  }
  RunResult r;
  for (const auto& p : params) r.params.push_back(p.detach().clone());
  r.bytes = group.bytes_moved();
  return r;
}

int worker(const std::string& scenario, const std::string& out) {
  try {
    const auto timeout = std::chrono::milliseconds(std::atoi(std::getenv("LORA_TEST_TIMEOUT_MS")));
    auto group = lora::dist::ProcessGroup::from_env(lora::dist::ProcessGroupOptions().timeout(timeout));
    const bool fails = scenario == "die" || scenario == "stall";
    const auto r = train(group, scenario == "full", fails ? 2 : -1, scenario == "stall");
    auto tensors = r.params;
    tensors.push_back(torch::tensor(r.bytes));
    torch::save(tensors, out);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}

/// Rank `rank` of `world`: this binary as `--worker SCENARIO DIR/rankN.pt`, with torchrun's variables.
lora_test::Rank spawn_rank(const std::string& scenario, const std::string& dir, int rank, int world, int port,
                           const std::map<std::string, std::string>& extra = {}) {
  auto env = lora_test::torchrun_env(rank, world, port);
  env["LORA_TEST_TIMEOUT_MS"] = "4000";
  for (const auto& kv : extra) env[kv.first] = kv.second;
  const std::string out = dir + "/rank" + std::to_string(rank) + ".pt";
  return lora_test::spawn_self({"--worker", scenario, out}, env, out, dir + "/rank" + std::to_string(rank) + ".err");
}

using lora_test::free_port;
using lora_test::read_text;
using lora_test::Rank;
using lora_test::wait_rank;

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>() /
         std::max(b.abs().max().item<double>(), 1e-30);
}

class DistributedTest : public lora_test::Seeded {
 protected:
  void SetUp() override {
    lora_test::Seeded::SetUp();
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::replace(name.begin(), name.end(), '/', '_');
    dir_ = (fs::temp_directory_path() / ("lora_dist_" + std::to_string(::getpid()) + "_" + name)).string();
    fs::create_directories(dir_);
  }
  void TearDown() override { lora_test::remove_tree(dir_); }
  std::string dir_;
};

}  // namespace

TEST(DistributedLaunchEnv, ReadsTorchrunAndSlurmVariables) {
  auto env_of = [](std::map<std::string, std::string> vars) {
    return lora::dist::launch_env([vars](const char* n) -> const char* {
      auto it = vars.find(n);
      return it == vars.end() ? nullptr : it->second.c_str();
    });
  };
  auto e = env_of({});
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.rank, 0);
  e = env_of({{"WORLD_SIZE", "4"}, {"RANK", "2"}, {"LOCAL_RANK", "0"}, {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "10.0.0.5"},
              {"MASTER_PORT", "29400"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RESTART_COUNT", "3"}});
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.rank, 2);
  EXPECT_EQ(e.local_rank, 0);
  EXPECT_EQ(e.local_world_size, 2);
  EXPECT_EQ(e.master_addr, "10.0.0.5");
  EXPECT_EQ(e.master_port, 29400);
  EXPECT_TRUE(e.agent_store);
  EXPECT_EQ(e.restart_count, 3);
  e = env_of({{"SLURM_NTASKS", "8"}, {"SLURM_PROCID", "5"}, {"SLURM_LOCALID", "1"}, {"MASTER_ADDR", "node1"}, {"MASTER_PORT", "1234"}});
  EXPECT_EQ(e.source, "Slurm");
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_FALSE(e.agent_store);
}

TEST(DistributedLaunchEnv, BadOrPartialEnvironmentsAreClearErrors) {
  auto error_of = [](std::map<std::string, std::string> vars) {
    try {
      lora::dist::launch_env([vars](const char* n) -> const char* {
        auto it = vars.find(n);
        return it == vars.end() ? nullptr : it->second.c_str();
      });
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}}).find("WORLD_SIZE is set but RANK is not"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}}).find("RANK is set but WORLD_SIZE is not"), std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}}).find("RANK='2'"),
            std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "two"}, {"RANK", "0"}}).find("WORLD_SIZE='two' is not an integer"), std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}, {"RANK", "0"}}).find("MASTER_ADDR or MASTER_PORT is not set"), std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "70000"}}).find("MASTER_PORT='70000'"),
            std::string::npos);
}

TEST(DistributedLaunchEnv, AnUnreachableStoreIsAnErrorWithinTheTimeout) {
  lora::dist::LaunchEnv env;
  env.world_size = 2;
  env.rank = 1;  // a client: nobody hosts the store on this port
  env.master_port = free_port();
  const auto start = std::chrono::steady_clock::now();
  std::string msg;
  try {
    lora::dist::ProcessGroup(env, lora::dist::ProcessGroupOptions().timeout(std::chrono::milliseconds(1500)));
  } catch (const std::runtime_error& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("rank 1 of 2: cannot reach the TCPStore at 127.0.0.1:" + std::to_string(env.master_port)), std::string::npos)
      << msg;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

TEST_F(DistributedTest, OneProcessNeedsNoGroup) {
  lora::dist::ProcessGroup single(lora::dist::LaunchEnv{});
  auto t = torch::ones({3});
  single.all_reduce({t});
  EXPECT_TRUE(torch::equal(t, torch::ones({3})));
  EXPECT_EQ(single.bytes_moved(), 0);
}

class DistributedTraining : public DistributedTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(DistributedTraining, TwoRanksEqualOneRank) {
  const bool full = GetParam() == "full";
  lora::dist::ProcessGroup single(lora::dist::LaunchEnv{});
  const auto reference = train(single, full);
  const int port = free_port();
  std::vector<Rank> ranks{spawn_rank(GetParam(), dir_, 0, 2, port), spawn_rank(GetParam(), dir_, 1, 2, port)};
  for (const auto& r : ranks) ASSERT_EQ(wait_rank(r, std::chrono::seconds(120)), 0) << read_text(r.err);
  int64_t param_bytes = 0;
  for (const auto& p : reference.params) param_bytes += p.numel() * 4;
  for (const auto& r : ranks) {
    std::vector<torch::Tensor> got;
    torch::load(got, r.out);
    ASSERT_EQ(got.size(), reference.params.size() + 1);
    double worst = 0;
    for (size_t i = 0; i < reference.params.size(); ++i) worst = std::max(worst, rel_err(got[i], reference.params[i]));
    EXPECT_LT(worst, 1e-5) << r.out;
    // One broadcast of the trainable tensors, then one all-reduce of their gradients per step.
    EXPECT_EQ(got.back().item<int64_t>(), param_bytes * (1 + kSteps));
    std::cout << "[ dist ] " << GetParam() << " " << r.out << ": worst relative difference " << worst << ", "
              << got.back().item<int64_t>() << " bytes\n";
  }
}

INSTANTIATE_TEST_SUITE_P(LoraAndFull, DistributedTraining, ::testing::Values("lora", "full"));

TEST_F(DistributedTest, TorchrunsAgentStoreIsJoinedAsAClient) {
  // torchrun's agent hosts the store; the ranks must not try to host it, and work under its prefix.
  const int port = free_port();
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(port);
  so.isServer = true;
  so.waitWorkers = false;
  auto agent = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", so);
  const std::map<std::string, std::string> extra{{"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RESTART_COUNT", "3"}};
  std::vector<Rank> ranks{spawn_rank("lora", dir_, 0, 2, port, extra), spawn_rank("lora", dir_, 1, 2, port, extra)};
  for (const auto& r : ranks) ASSERT_EQ(wait_rank(r, std::chrono::seconds(120)), 0) << read_text(r.err);
  lora::dist::ProcessGroup single(lora::dist::LaunchEnv{});
  const auto reference = train(single, false);
  std::vector<torch::Tensor> got;
  torch::load(got, ranks[1].out);
  for (size_t i = 0; i < reference.params.size(); ++i) EXPECT_LT(rel_err(got[i], reference.params[i]), 1e-5);
}

TEST_F(DistributedTest, ADeadRankEndsTheOtherWithinTheTimeout) {
  const int port = free_port();
  const auto start = std::chrono::steady_clock::now();
  std::vector<Rank> ranks{spawn_rank("die", dir_, 0, 2, port), spawn_rank("die", dir_, 1, 2, port)};
  EXPECT_EQ(wait_rank(ranks[1], std::chrono::seconds(120)), 3);
  const int status = wait_rank(ranks[0], std::chrono::seconds(120));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(status, 1) << "rank 0 must exit with an error, not hang (-1) or crash";
  const std::string err = read_text(ranks[0].err);
  EXPECT_NE(err.find("lora::dist: rank 0 of 2: all_reduce of gradients failed or timed out (timeout 4"), std::string::npos)
      << err;
  EXPECT_FALSE(fs::exists(ranks[0].out)) << "no result written after a failure";
  std::cout << "[ dist ] the surviving rank exited after " << seconds << " s\n";
}

TEST_F(DistributedTest, AStalledRankEndsTheOtherAfterTheTimeout) {
  const int port = free_port();
  const auto start = std::chrono::steady_clock::now();
  std::vector<Rank> ranks{spawn_rank("stall", dir_, 0, 2, port), spawn_rank("stall", dir_, 1, 2, port)};
  const int status = wait_rank(ranks[0], std::chrono::seconds(50));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  wait_rank(ranks[1], std::chrono::seconds(0));  // kill the sleeper
  EXPECT_EQ(status, 1) << "rank 0 must give up after its 4 s timeout, not hang (-1)";
  EXPECT_GE(seconds, 4.0);
  const std::string err = read_text(ranks[0].err);
  EXPECT_NE(err.find("lora::dist: rank 0 of 2: all_reduce of gradients failed or timed out (timeout 4"), std::string::npos)
      << err;
  std::cout << "[ dist ] the waiting rank gave up after " << seconds << " s (timeout 4 s)\n";
}

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--worker") return worker(argv[2], argv[3]);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
