// Merge / unmerge / merge_and_unload, clone() and to() of adapted layers.
#include "common.hpp"

using namespace lora_test;

namespace {

struct Two : torch::nn::Cloneable<Two> {
  Two() { reset(); }
  void reset() override {
    a = register_module("a", lora::LoRALinear(10, 12));
    b = register_module("b", lora::LoRALinear(12, 6));
  }
  torch::Tensor forward(const torch::Tensor& x) { return b(torch::tanh(a(x))); }
  lora::LoRALinear a{nullptr}, b{nullptr};
};

/// A model with non-zero adapters on both layers (q/v-style slice mask on `a`).
std::shared_ptr<Two> adapted_model() {
  auto m = std::make_shared<Two>();
  lora::inject_lora(*m, lora::LoRAConfig().r(2).alpha(4).init(lora::Init::Random).target_modules({"a", "b"})
                            .enable_lora({{"a", {true, false, true}}}));
  return m;
}

}  // namespace

class MergeTest : public Seeded {};

TEST_F(MergeTest, MergedOutputEqualsUnmergedOutput) {
  auto m = adapted_model();
  m->eval();
  auto x = torch::randn({5, 10});
  auto before = m->forward(x);
  lora::merge(*m);
  EXPECT_TRUE(m->a->merged());
  EXPECT_LT(rel_err(m->forward(x), before), 1e-5);
}

TEST_F(MergeTest, MergeAddsFloat64DeltaIntoWeight) {
  auto m = adapted_model();
  auto W0 = m->b->weight.detach().to(torch::kDouble);
  auto dW = 2.0 * torch::mm(m->b->lora_B("default").detach().to(torch::kDouble), m->b->lora_A("default").detach().to(torch::kDouble));
  lora::merge(*m);
  EXPECT_LT(rel_err(m->b->weight, W0 + dW), 1e-6);
}

TEST_F(MergeTest, UnmergeRestoresFloat32WeightExactly) {
  auto m = adapted_model();
  auto W0 = m->a->weight.detach().clone();
  lora::merge(*m);
  EXPECT_FALSE(torch::equal(m->a->weight, W0));
  lora::unmerge(*m);
  EXPECT_TRUE(torch::equal(m->a->weight, W0));
  EXPECT_FALSE(m->a->merged());
}

class MergeLowPrecision : public ::testing::TestWithParam<torch::Dtype> {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

TEST_P(MergeLowPrecision, UnmergeRestoresWeightBitForBitAndDeltaIsRoundedOnce) {
  lora::LoRALinear layer(64, 32);
  layer->to(GetParam());
  layer->add_adapter("default", lora::AdapterOptions(4).alpha(8).init(lora::Init::Random));
  layer->set_active_adapters({"default"});
  auto W0 = layer->weight.detach().clone();
  // Expected merged weight: W0 + s·B·A in float64, rounded once to the weight's dtype.
  auto expected = (W0.to(torch::kDouble) + 2.0 * torch::mm(layer->lora_B("default").to(torch::kDouble),
                                                            layer->lora_A("default").to(torch::kDouble)))
                      .to(GetParam());
  layer->merge();
  auto diff = (layer->weight.to(torch::kDouble) - expected.to(torch::kDouble)).abs();
  auto ulp = expected.to(torch::kDouble).abs() * (GetParam() == torch::kHalf ? 1.0 / 1024 : 1.0 / 128);
  EXPECT_TRUE((diff <= ulp + 1e-30).all().item<bool>());  // at most one rounding step away
  layer->unmerge();
  EXPECT_TRUE(torch::equal(layer->weight, W0));
}

INSTANTIATE_TEST_SUITE_P(HalfTypes, MergeLowPrecision, ::testing::Values(torch::kBFloat16, torch::kHalf),
                         [](const ::testing::TestParamInfo<torch::Dtype>& i) {
                           return std::string(i.param == torch::kHalf ? "Float16" : "BFloat16");
                         });

TEST_F(MergeTest, SafeMergeRefusesNaNAndTouchesNothing) {
  auto m = adapted_model();
  {
    torch::NoGradGuard g;
    m->b->lora_B("default")[0][0] = std::numeric_limits<float>::quiet_NaN();
  }
  auto Wa = m->a->weight.detach().clone(), Wb = m->b->weight.detach().clone();
  auto msg = error_of<std::runtime_error>([&] { lora::merge(*m, /*safe=*/true); });
  EXPECT_NE(msg.find("module 'b'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("NaN/Inf"), std::string::npos) << msg;
  EXPECT_TRUE(torch::equal(m->a->weight, Wa));
  EXPECT_TRUE(torch::equal(m->b->weight, Wb));
  EXPECT_FALSE(m->a->merged());
  lora::merge(*m);  // unsafe: writes the NaN
  EXPECT_TRUE(torch::isnan(m->b->weight).any().item<bool>());
}

TEST_F(MergeTest, MergingTwiceAndUnmergingUnmergedAreNoOps) {
  auto m = adapted_model();
  auto W0 = m->a->weight.detach().clone();
  lora::unmerge(*m);
  EXPECT_TRUE(torch::equal(m->a->weight, W0));
  lora::merge(*m);
  auto once = m->a->weight.detach().clone();
  lora::merge(*m);
  EXPECT_TRUE(torch::equal(m->a->weight, once));
  lora::unmerge(*m);
  EXPECT_TRUE(torch::equal(m->a->weight, W0));
}

TEST_F(MergeTest, TrainingForwardOnMergedAdapterThrows) {
  auto m = adapted_model();
  lora::merge(*m);
  m->train();
  auto x = torch::randn({2, 10});
  auto msg = error_of<std::logic_error>([&] { m->forward(x); });
  EXPECT_NE(msg.find("unmerge"), std::string::npos) << msg;
  {
    torch::NoGradGuard g;
    EXPECT_NO_THROW(m->forward(x));
  }
  m->eval();
  EXPECT_NO_THROW(m->forward(x));
  lora::unmerge(*m);
  m->train();
  EXPECT_NO_THROW(m->forward(x).sum().backward());
  EXPECT_TRUE(m->a->lora_A("default").grad().defined());
}

TEST_F(MergeTest, MergeAndUnloadLeavesBaseNamesAndMergedOutput) {
  auto m = adapted_model();
  m->eval();
  auto x = torch::randn({3, 10});
  auto before = m->forward(x);
  lora::merge_and_unload(*m);
  std::vector<std::string> names, base;
  for (const auto& p : m->named_parameters()) names.push_back(p.key());
  for (const auto& p : Two().named_parameters()) base.push_back(p.key());
  EXPECT_EQ(names, base);
  EXPECT_LT(rel_err(m->forward(x), before), 1e-5);
  EXPECT_FALSE(m->a->merged());
  EXPECT_NE(error_of<std::invalid_argument>([&] { m->a->lora_A("default"); }).find("no adapter named 'default'"), std::string::npos);
}

TEST_F(MergeTest, CloneKeepsFlagsValuesAndIndependence) {
  auto m = adapted_model();
  auto copy = std::dynamic_pointer_cast<Two>(m->clone());
  ASSERT_TRUE(copy);
  for (const auto& p : copy->named_parameters()) {
    const bool is_lora = p.key().find(".lora_") != std::string::npos;
    EXPECT_EQ(p.value().requires_grad(), is_lora) << p.key();
    EXPECT_TRUE(torch::equal(p.value(), m->named_parameters()[p.key()])) << p.key();
    EXPECT_NE(p.value().data_ptr(), m->named_parameters()[p.key()].data_ptr()) << p.key();
  }
  EXPECT_EQ(copy->a->adapter_options("default").enable(), (std::vector<bool>{true, false, true}));
  auto x = torch::randn({2, 10});
  EXPECT_TRUE(torch::equal(copy->forward(x), m->forward(x)));
}

TEST_F(MergeTest, CloneOfMergedModelUnmergesIndependently) {
  auto m = adapted_model();
  auto W0 = m->a->weight.detach().clone();
  lora::merge(*m);
  auto copy = std::dynamic_pointer_cast<Two>(m->clone());
  lora::unmerge(*copy);
  EXPECT_TRUE(torch::equal(copy->a->weight, W0));
  EXPECT_TRUE(m->a->merged());
  EXPECT_FALSE(torch::equal(m->a->weight, W0));
}

TEST_F(MergeTest, ToDoubleCastsEverythingAndCarriesTheUnmergedCopy) {
  auto m = adapted_model();
  auto W0 = m->a->weight.detach().to(torch::kDouble);
  lora::merge(*m);
  m->to(torch::kDouble);
  for (const auto& p : m->parameters()) EXPECT_EQ(p.scalar_type(), torch::kDouble);
  lora::unmerge(*m);
  EXPECT_TRUE(torch::equal(m->a->weight, W0));
  auto x = torch::randn({4, 12}, torch::kDouble);
  auto ref = reference_linear(x, m->b->weight, m->b->bias, m->b->lora_A("default"), m->b->lora_B("default"), 2.0);
  EXPECT_LT(rel_err(m->b(x), ref), 1e-12);
}

TEST_F(MergeTest, SwitchingTasksBySubtractingOneAdapterAndAddingAnother) {
  auto m = adapted_model();
  lora::inject_lora(*m, lora::LoRAConfig().r(3).alpha(3).init(lora::Init::Random).target_modules({"b"}), "task2");
  m->eval();
  auto x = torch::randn({2, 12});
  auto W0 = m->b->weight.detach().clone();
  lora::set_adapter(*m, {"task2"});
  auto ref2 = reference_linear(x, W0, m->b->bias, m->b->lora_A("task2"), m->b->lora_B("task2"), 1.0);
  lora::merge(*m);
  EXPECT_LT(rel_err(m->b(x), ref2), 1e-5);
  EXPECT_NE(error_of<std::logic_error>([&] { lora::set_adapter(*m, {"default"}); }).find("unmerge() first"), std::string::npos);
  lora::unmerge(*m);
  lora::set_adapter(*m, {"default"});
  lora::merge(*m);
  auto ref1 = reference_linear(x, W0, m->b->bias, m->b->lora_A("default"), m->b->lora_B("default"), 2.0);
  EXPECT_LT(rel_err(m->b(x), ref1), 1e-5);
}

TEST_F(MergeTest, SetAdapterChecksEveryLayerBeforeSwitchingAny) {
  auto m = adapted_model();
  lora::inject_lora(*m, lora::LoRAConfig().r(3).target_modules({"a", "b"}), "task2");
  lora::set_adapter(*m, {"default"});
  m->b->merge();  // only the second layer (in model order) is merged
  const auto msg = error_of<std::logic_error>([&] { lora::set_adapter(*m, {"task2"}); });
  EXPECT_NE(msg.find("module 'b': LoRALinear(in_features=12, out_features=6): cannot switch adapters while merged"),
            std::string::npos) << msg;
  EXPECT_EQ(m->a->active_adapters(), std::vector<std::string>{"default"}) << "layer a was switched before b failed";
  EXPECT_EQ(m->b->active_adapters(), std::vector<std::string>{"default"});
}

TEST_F(MergeTest, ErrorsNamedAfterTheirModuleKeepTheirExceptionType) {
  using lora::detail::at_module;
  auto message = [](auto&& fn) {
    try {
      fn();
    } catch (const std::out_of_range& e) {
      return std::string("out_of_range: ") + e.what();
    } catch (const std::overflow_error& e) {
      return std::string("overflow_error: ") + e.what();
    } catch (const c10::Error& e) {
      return std::string("c10::Error: ") + e.what_without_backtrace();
    } catch (const std::exception& e) {
      return std::string("other: ") + e.what();
    }
    return std::string("nothing thrown");
  };
  EXPECT_EQ(message([] { at_module("blocks.0.q", [] { throw std::out_of_range("index 9"); }); }),
            "out_of_range: module 'blocks.0.q': index 9");
  EXPECT_EQ(message([] { at_module("", [] { throw std::overflow_error("too big"); }); }),
            "overflow_error: module '<root>': too big");
  EXPECT_EQ(message([] { at_module("x", [] { TORCH_CHECK(false, "torch says no"); }); }).rfind("c10::Error: torch says no", 0), 0u);
}
