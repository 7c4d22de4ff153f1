// LoRAEmbedding: drop-in behaviour and the formula E[ids] + s (Aᵀ[ids]) Bᵀ.
#include "common.hpp"

using namespace lora_test;

class LoRAEmbeddingTest : public Seeded {};

TEST_F(LoRAEmbeddingTest, InitialisesAndComputesExactlyAsTorchEmbedding) {
  torch::manual_seed(5);
  torch::nn::Embedding plain(torch::nn::EmbeddingOptions(20, 6).padding_idx(3));
  torch::manual_seed(5);
  lora::LoRAEmbedding layer(torch::nn::EmbeddingOptions(20, 6).padding_idx(3));
  EXPECT_TRUE(torch::equal(layer->weight, plain->weight));
  auto ids = torch::randint(0, 20, {4, 5});
  EXPECT_TRUE(torch::equal(layer(ids), plain(ids)));
}

TEST_F(LoRAEmbeddingTest, FreshAdapterZeroesAAndKeepsOutput) {
  torch::nn::Embedding plain(11, 4);
  lora::LoRAEmbedding layer(plain);
  EXPECT_EQ(layer->weight.data_ptr(), plain->weight.data_ptr());
  layer->add_adapter("default", lora::AdapterOptions(3));
  layer->set_active_adapters({"default"});
  EXPECT_EQ(layer->lora_A("default").sizes(), torch::IntArrayRef({3, 11}));  // PEFT: [r, num_embeddings]
  EXPECT_EQ(layer->lora_B("default").sizes(), torch::IntArrayRef({4, 3}));   // PEFT: [embedding_dim, r]
  EXPECT_EQ(layer->lora_A("default").abs().sum().item<double>(), 0.0);
  EXPECT_GT(layer->lora_B("default").abs().sum().item<double>(), 0.0);
  auto ids = torch::randint(0, 11, {2, 7});
  EXPECT_TRUE(torch::equal(layer(ids), plain(ids)));
  EXPECT_TRUE(layer->named_parameters().contains("lora_embedding_A.default.weight"));
}

TEST_F(LoRAEmbeddingTest, ForwardAndDeltaEqualFloat64Formula) {
  lora::LoRAEmbedding layer(13, 5);
  layer->add_adapter("default", lora::AdapterOptions(2).alpha(3).init(lora::Init::Random));
  layer->set_active_adapters({"default"});
  auto ids = torch::randint(0, 13, {3, 4});
  auto E = layer->weight.detach().to(torch::kDouble);
  auto A = layer->lora_A("default").detach().to(torch::kDouble), B = layer->lora_B("default").detach().to(torch::kDouble);
  auto dE = 1.5 * torch::mm(B, A).t();  // [num, dim]
  auto ref = (E + dE).index({ids.reshape({-1})}).reshape({3, 4, 5});
  EXPECT_LT(rel_err(layer(ids), ref), 1e-6);
  EXPECT_LT(rel_err(layer->delta_weight("default"), dE), 1e-6);
}

TEST_F(LoRAEmbeddingTest, MergeUnmergeRoundTrip) {
  lora::LoRAEmbedding layer(9, 4);
  layer->add_adapter("default", lora::AdapterOptions(2).init(lora::Init::Random));
  layer->set_active_adapters({"default"});
  auto E0 = layer->weight.detach().clone();
  auto ids = torch::randint(0, 9, {6});
  auto before = layer(ids);
  lora::merge(*layer);
  // Training through a merged adapter would train nothing: refused, as for LoRALinear.
  EXPECT_NE(error_of<std::logic_error>([&] { layer(ids); }).find("is merged into the weight"), std::string::npos);
  layer->eval();
  EXPECT_LT(rel_err(layer(ids), before), 1e-6);
  lora::unmerge(*layer);
  EXPECT_TRUE(torch::equal(layer->weight, E0));
}

TEST_F(LoRAEmbeddingTest, SliceMasksAreRefused) {
  lora::LoRAEmbedding layer(9, 4);
  auto msg = error_of<std::invalid_argument>([&] { layer->add_adapter("default", lora::AdapterOptions(2).enable({true, false})); });
  EXPECT_NE(msg.find("slice masks apply to Linear layers only"), std::string::npos) << msg;
  EXPECT_TRUE(layer->adapter_names().empty());
}
