// The whole-model paths on CUDA: injection, training gradients, merge/unmerge, adapter files
// written from the GPU and read on the CPU. Each test skips with a reason where no GPU is present.
#include "common.hpp"

#include <filesystem>

namespace fs = std::filesystem;
using lora_test::TinyTransformer;

namespace {

class CudaTest : public lora_test::Seeded {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device present";
    Seeded::SetUp();
  }
  static lora::LoRAConfig config() {
    return lora::LoRAConfig().r(4).alpha(8).init(lora::Init::Random).target_modules({"q", "v", "fc", "emb"});
  }
};

}  // namespace

TEST_F(CudaTest, InjectedModelOnCudaMatchesTheSameModelOnCpu) {
  TinyTransformer cpu(50, 16, 2);
  lora::inject_lora(*cpu, config());
  auto gpu = std::dynamic_pointer_cast<lora_test::TinyTransformerImpl>(cpu->clone(torch::kCUDA));
  ASSERT_TRUE(gpu);
  cpu->eval();
  gpu->eval();
  auto ids = torch::randint(0, 50, {4, 9});
  auto y_cpu = cpu(ids), y_gpu = gpu->forward(ids.to(torch::kCUDA));
  EXPECT_TRUE(y_gpu.is_cuda());
  EXPECT_LT(lora_test::rel_err(y_gpu, y_cpu), 1e-4);  // TF32 may be on for CUDA matmuls: a loose bound
}

TEST_F(CudaTest, GradientsOnCudaMatchCpuGradients) {
  TinyTransformer cpu(50, 16, 2);
  lora::inject_lora(*cpu, config());
  auto gpu = std::dynamic_pointer_cast<lora_test::TinyTransformerImpl>(cpu->clone(torch::kCUDA));
  auto ids = torch::randint(0, 50, {4, 9});
  cpu(ids).pow(2).sum().backward();
  gpu->forward(ids.to(torch::kCUDA)).pow(2).sum().backward();
  const auto pc = lora::lora_parameters(*cpu), pg = lora::lora_parameters(*gpu);
  ASSERT_EQ(pc.size(), pg.size());
  ASSERT_FALSE(pc.empty());
  for (size_t i = 0; i < pc.size(); ++i) {
    ASSERT_TRUE(pg[i].grad().defined()) << "parameter " << i;
    EXPECT_LT(lora_test::rel_err(pg[i].grad(), pc[i].grad()), 1e-3) << "parameter " << i;
  }
}

TEST_F(CudaTest, MergeUnmergeOnCudaRestoresWeightsBitForBit) {
  TinyTransformer model(50, 16, 2);
  model->to(torch::kCUDA);
  lora::inject_lora(*model, config());
  model->eval();
  auto ids = torch::randint(0, 50, {2, 7}, torch::TensorOptions(torch::kCUDA).dtype(torch::kLong));
  const auto before = model(ids);
  std::vector<torch::Tensor> weights;
  for (const auto& p : model->parameters()) weights.push_back(p.detach().clone());
  lora::merge(*model);
  EXPECT_LT(lora_test::rel_err(model(ids), before), 1e-4);
  lora::unmerge(*model);
  const auto after = model->parameters();
  for (size_t i = 0; i < weights.size(); ++i) EXPECT_TRUE(torch::equal(after[i], weights[i])) << "parameter " << i;
}

TEST_F(CudaTest, AdapterSavedFromCudaLoadsOnCpuWithTheSameOutputs) {
  TinyTransformer gpu(50, 16, 2);
  gpu->to(torch::kCUDA);
  lora::inject_lora(*gpu, config());
  const auto dir = (fs::temp_directory_path() / ("lora_cuda_test_" + std::to_string(::getpid()))).string();
  lora::save_adapter(*gpu, dir);
  torch::manual_seed(0);  // the same base weights, built on the CPU
  TinyTransformer cpu(50, 16, 2);
  lora::load_adapter(*cpu, dir);
  gpu->eval();
  cpu->eval();
  auto ids = torch::randint(0, 50, {3, 5});
  EXPECT_LT(lora_test::rel_err(gpu(ids.to(torch::kCUDA)), cpu(ids)), 1e-4);
  lora_test::remove_tree(dir);
}
