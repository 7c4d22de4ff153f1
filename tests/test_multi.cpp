// Many adapters on one base: mixed-adapter batches, disabling adapters in a scope, combination,
// switching merged weights, hot-swapping, and several adapters in one folder.
#include <gtest/gtest.h>

#include "common.hpp"

#include <filesystem>

namespace fs = std::filesystem;

namespace {

/// An embedding, a fused projection with three output slices and an output layer.
struct Net : torch::nn::Module {
  Net() {
    emb = register_module("emb", lora::LoRAEmbedding(30, 8));
    qkv = register_module("qkv", lora::LoRALinear(8, 12));
    out = register_module("out", lora::LoRALinear(12, 5));
  }
  torch::Tensor forward(const torch::Tensor& ids) { return out(torch::tanh(qkv(emb(ids)))); }
  lora::LoRAEmbedding emb{nullptr};
  lora::LoRALinear qkv{nullptr}, out{nullptr};
};

void randomize_adapters(torch::nn::Module& m) {
  torch::NoGradGuard no_grad;
  for (auto& p : lora::lora_parameters(m)) p.normal_(0, 0.5);
}

/// Net with "a" (r 2, everywhere), "b" (r 4, alpha 2; q and v slices of qkv, and out) and
/// "c" (r 3, the embedding only), all random.
std::shared_ptr<Net> three_adapters() {
  auto net = std::make_shared<Net>();
  lora::inject_lora(*net, lora::LoRAConfig().r(2).alpha(4).target_modules({"emb", "qkv", "out"}), "a");
  lora::inject_lora(*net, lora::LoRAConfig().r(4).alpha(2).target_modules({"qkv", "out"}).enable_lora({{"qkv", {true, false, true}}}), "b");
  lora::inject_lora(*net, lora::LoRAConfig().r(3).alpha(3).target_modules({"emb"}), "c");
  randomize_adapters(*net);
  net->eval();
  return net;
}

std::string temp_dir(const std::string& name) {
  const auto d = (fs::temp_directory_path() / ("lora_multi_" + name + "_" + std::to_string(::getpid()))).string();
  lora_test::remove_tree(d);
  return d;
}

}  // namespace

class MultiAdapter : public lora_test::Seeded {};

const std::vector<lora::MixedStrategy> kStrategies{lora::MixedStrategy::Auto, lora::MixedStrategy::Stacked,
                                                   lora::MixedStrategy::Segmented};
const char* strategy_name(lora::MixedStrategy s) {
  return s == lora::MixedStrategy::Auto ? "auto" : s == lora::MixedStrategy::Stacked ? "stacked" : "segmented";
}

TEST_F(MultiAdapter, MixedBatchEqualsEachRowAloneWithItsAdapter) {
  auto net = three_adapters();
  const std::vector<std::string> per_row{"a", "b", "", "c", "b", "a"};
  const auto ids = torch::randint(0, 30, {6, 7});
  for (const auto strategy : kStrategies) {
    torch::Tensor mixed;
    {
      lora::AdapterPerRow route(*net, per_row, strategy);
      mixed = net->forward(ids);
    }
    for (size_t i = 0; i < per_row.size(); ++i) {
      torch::Tensor alone;
      if (per_row[i].empty()) {
        lora::DisableAdapters base(*net);
        alone = net->forward(ids.narrow(0, static_cast<int64_t>(i), 1));
      } else {
        lora::set_adapter(*net, {per_row[i]});
        alone = net->forward(ids.narrow(0, static_cast<int64_t>(i), 1));
      }
      EXPECT_TRUE(torch::allclose(mixed.narrow(0, static_cast<int64_t>(i), 1), alone, 1e-5, 1e-6))
          << strategy_name(strategy) << ", row " << i << " (" << per_row[i]
          << "): " << (mixed.narrow(0, static_cast<int64_t>(i), 1) - alone).abs().max();
    }
    // After the scope the active set rules again.
    lora::set_adapter(*net, {"a"});
    const auto all_a = net->forward(ids);
    EXPECT_TRUE(torch::allclose(all_a.narrow(0, 0, 1), mixed.narrow(0, 0, 1), 1e-5, 1e-6));
  }
}

TEST_F(MultiAdapter, MixedBatchLinearEqualsTheFloat64FormulaPerRow) {
  // One Linear, three adapters of different ranks (one on two of three output slices); rows in
  // runs and scattered, some without an adapter, a 3-D input; every algorithm.
  lora::LoRALinear layer(6, 9);
  layer->add_adapter("a", lora::AdapterOptions(2).alpha(3).init(lora::Init::Random));
  layer->add_adapter("b", lora::AdapterOptions(5).alpha(1).init(lora::Init::Random));
  layer->add_adapter("q", lora::AdapterOptions(3).alpha(2).enable({true, false, true}).init(lora::Init::Random));
  layer->eval();
  const std::vector<std::string> names{"a", "a", "b", "", "a", "q", "q", "b", "", "a"};
  const auto x = torch::randn({static_cast<int64_t>(names.size()), 3, 6});
  auto formula = [&](int64_t i, const std::string& n) {
    auto xi = x[i];
    if (n.empty()) return torch::nn::functional::linear(xi.to(torch::kDouble), layer->weight.to(torch::kDouble), layer->bias.to(torch::kDouble));
    const auto B = lora::detail::full_B(layer->lora_B(n), layer->adapter_options(n).enable(), 9);
    return lora_test::reference_linear(xi, layer->weight, layer->bias, layer->lora_A(n), B, layer->scaling(n));
  };
  for (const auto strategy : kStrategies) {
    torch::Tensor y;
    {
      lora::AdapterPerRow route(*layer, names, strategy);
      y = layer(x);
    }
    for (int64_t i = 0; i < x.size(0); ++i)
      EXPECT_TRUE(torch::allclose(y[i].to(torch::kDouble), formula(i, names[static_cast<size_t>(i)]), 1e-5, 1e-6))
          << strategy_name(strategy) << ", row " << i;
  }
  // The segmented pass here takes both of its ways: "a" (three runs) is gathered, "q" (one run)
  // and "b" (two runs) are computed on their runs in place.
  lora::detail::RowSlots rows;
  rows.present = {"a", "b", "q"};
  rows.slot = {0, 0, 1, -1, 0, 2, 2, 1, -1, 0};
  lora::detail::AdapterStack stack;
  stack.offset = {0, 2, 7};
  stack.rank = {2, 5, 6};
  const auto plan = lora::detail::plan_segments(rows, stack, 3, 6, 9, 4, lora::detail::MixedCosts::for_device(torch::kCPU));
  EXPECT_EQ(plan.gather, (std::vector<bool>{true, false, false}));
  EXPECT_EQ(plan.runs.size(), 6u);
}

TEST_F(MultiAdapter, MixedBatchSeesAdapterChangesInsideItsScope) {
  // The stacked copy of the adapters is kept for the scope; changing an adapter in place, or
  // replacing its tensor, must show in the next forward.
  lora::LoRALinear layer(5, 4);
  layer->add_adapter("a", lora::AdapterOptions(2).init(lora::Init::Random));
  layer->add_adapter("b", lora::AdapterOptions(3).init(lora::Init::Random));
  layer->eval();
  const auto x = torch::randn({4, 5});
  const std::vector<std::string> names{"a", "b", "b", "a"};
  auto expect_formula = [&](const torch::Tensor& y, const char* when) {
    for (int64_t i = 0; i < 4; ++i) {
      const auto& n = names[static_cast<size_t>(i)];
      const auto want = lora_test::reference_linear(x[i].unsqueeze(0), layer->weight, layer->bias, layer->lora_A(n),
                                                    layer->lora_B(n), layer->scaling(n));
      EXPECT_TRUE(torch::allclose(y[i].unsqueeze(0).to(torch::kDouble), want, 1e-5, 1e-6)) << when << ", row " << i;
    }
  };
  for (const auto strategy : {lora::MixedStrategy::Stacked, lora::MixedStrategy::Segmented}) {
    lora::AdapterPerRow route(*layer, names, strategy);
    expect_formula(layer(x), "first forward");
    {
      torch::NoGradGuard no_grad;
      layer->lora_B("b").mul_(-2.0);
    }
    expect_formula(layer(x), "after an in-place change of B");
    layer->lora_A("a").set_data(torch::randn({2, 5}));
    expect_formula(layer(x), "after A was given new data");
  }
}

TEST_F(MultiAdapter, MixedBatchErrorsNameTheCause) {
  auto net = three_adapters();
  EXPECT_NE(lora_test::error_of<std::exception>([&] { lora::AdapterPerRow r(*net, {"a", "zzz"}); }).find("no LoRA layer has an adapter named 'zzz'"), std::string::npos);
  {
    lora::AdapterPerRow r(*net, {"a", "b"});
    EXPECT_NE(lora_test::error_of<std::exception>([&] { net->forward(torch::randint(0, 30, {3, 4})); }).find("the input has 3 rows but lora::AdapterPerRow was given 2 adapter choices"),
              std::string::npos);
  }
  net->train();
  EXPECT_NE(lora_test::error_of<std::exception>([&] { lora::AdapterPerRow r(*net, {"a"}); }).find("training mode"), std::string::npos);
  net->eval();
  lora::set_adapter(*net, {"a"});
  lora::merge(*net);
  EXPECT_NE(lora_test::error_of<std::exception>([&] { lora::AdapterPerRow r(*net, {"a"}); }).find("is merged"), std::string::npos);
  EXPECT_NE(lora_test::error_of<std::exception>([&] { lora::DisableAdapters d(*net); }).find("is merged"), std::string::npos);
}

TEST_F(MultiAdapter, DeletingAnAdapterKeepsTheOthersValuesAndStorage) {
  // Deleting re-registers the adapter dicts; the remaining adapters must survive untouched
  // (a bug found here: they were re-created, B zeroed).
  auto net = three_adapters();
  const auto A = net->qkv->lora_A("b").clone(), B = net->qkv->lora_B("b").clone(), E = net->emb->lora_B("c").clone();
  const void* storage = net->qkv->lora_B("b").data_ptr();
  lora::delete_adapter(*net, "a");
  EXPECT_TRUE(torch::equal(net->qkv->lora_A("b"), A));
  EXPECT_TRUE(torch::equal(net->qkv->lora_B("b"), B));
  EXPECT_TRUE(torch::equal(net->emb->lora_B("c"), E));
  EXPECT_EQ(net->qkv->lora_B("b").data_ptr(), storage);
  EXPECT_EQ(net->qkv->named_parameters().size(), 4u);  // weight, bias, lora_A.b.weight, lora_B.b.weight
}

TEST_F(MultiAdapter, DisableAdaptersGivesTheBaseModelAndRestores) {
  lora::LoRALinear layer(5, 3);
  layer->add_adapter("x", lora::AdapterOptions(2).init(lora::Init::Random));
  layer->add_adapter("y", lora::AdapterOptions(2).init(lora::Init::Random));
  layer->set_active_adapters({"x", "y"});
  const auto in = torch::randn({4, 5});
  const auto with = layer(in);
  {
    lora::DisableAdapters off(*layer);
    EXPECT_TRUE(torch::allclose(layer(in), torch::nn::functional::linear(in, layer->weight, layer->bias), 1e-6, 1e-6));
    EXPECT_TRUE(layer->active_adapters().empty());
  }
  EXPECT_EQ(layer->active_adapters(), (std::vector<std::string>{"x", "y"}));
  EXPECT_TRUE(torch::equal(layer(in), with));
}

TEST_F(MultiAdapter, CatCombinationIsExactlyTheWeightedSum) {
  auto net = three_adapters();
  const auto report = lora::add_weighted_adapter(*net, {"a", "b"}, {0.7, -0.4}, "mix", lora::Combination::Cat);
  EXPECT_EQ(report.layers, (std::vector<std::string>{"emb", "qkv", "out"}));
  for (auto* layer : std::vector<lora::LoRALayer*>{net->emb.get(), net->qkv.get(), net->out.get()}) {
    torch::Tensor want = torch::zeros_like(layer->delta_weight("a"), torch::kDouble);
    if (layer->has_adapter("a")) want += 0.7 * layer->delta_weight("a").to(torch::kDouble);
    if (layer->has_adapter("b")) want += -0.4 * layer->delta_weight("b").to(torch::kDouble);
    EXPECT_TRUE(torch::allclose(layer->delta_weight("mix").to(torch::kDouble), want, 1e-5, 1e-6)) << layer->describe();
    EXPECT_DOUBLE_EQ(layer->scaling("mix"), 1.0);
    EXPECT_FALSE(layer->lora_A("mix").requires_grad());
  }
  EXPECT_EQ(net->qkv->adapter_options("mix").r(), 2 + 2 * 4);  // b's two slices count as rank 8
  EXPECT_EQ(net->emb->adapter_options("mix").r(), 2);
}

TEST_F(MultiAdapter, LinearAndSvdCombinationsFollowTheirFormulas) {
  lora::LoRALinear layer(10, 7);
  layer->add_adapter("p", lora::AdapterOptions(3).alpha(6).init(lora::Init::Random));
  layer->add_adapter("q", lora::AdapterOptions(3).alpha(1.5).init(lora::Init::Random));
  layer->add_adapter("r5", lora::AdapterOptions(5).init(lora::Init::Random));
  auto d = [](const torch::Tensor& t) { return t.detach().to(torch::kDouble); };
  lora::add_weighted_adapter(*layer, {"p", "q"}, {0.5, 2.0}, "lin", lora::Combination::Linear);
  const double fp = std::sqrt(0.5 * 2.0), fq = std::sqrt(2.0 * 0.5);
  const auto A = fp * d(layer->lora_A("p")) + fq * d(layer->lora_A("q")), B = fp * d(layer->lora_B("p")) + fq * d(layer->lora_B("q"));
  EXPECT_TRUE(torch::allclose(d(layer->delta_weight("lin")), torch::mm(B, A), 1e-5, 1e-6));
  // svd: the best rank-k approximation of the weighted sum; at full rank it is the sum itself.
  const auto sum = 0.5 * d(layer->delta_weight("p")) + 2.0 * d(layer->delta_weight("r5"));
  const auto exact = lora::add_weighted_adapter(*layer, {"p", "r5"}, {0.5, 2.0}, "svd8", lora::Combination::Svd, 8);
  EXPECT_LT(exact.worst_svd_relative_error, 1e-6);
  EXPECT_TRUE(torch::allclose(d(layer->delta_weight("svd8")), sum, 1e-4, 1e-5));
  const auto cut = lora::add_weighted_adapter(*layer, {"p", "r5"}, {0.5, 2.0}, "svd2", lora::Combination::Svd, 2);
  const auto S = torch::linalg_svdvals(sum);
  const double want = std::sqrt(S.narrow(0, 2, S.size(0) - 2).pow(2).sum().item<double>() / S.pow(2).sum().item<double>());
  EXPECT_NEAR(cut.worst_svd_relative_error, want, 1e-6);
  EXPECT_NEAR((d(layer->delta_weight("svd2")) - sum).norm().item<double>() / sum.norm().item<double>(), want, 1e-5);
  EXPECT_NE(lora_test::error_of<std::exception>([&] { lora::add_weighted_adapter(*layer, {"p", "r5"}, {1, 1}, "bad", lora::Combination::Linear); }).find("needs equal ranks"),
            std::string::npos);
  EXPECT_NE(lora_test::error_of<std::exception>([&] { lora::add_weighted_adapter(*layer, {"p", "nope"}, {1, 1}, "bad", lora::Combination::Cat); }).find("no LoRA layer has adapter 'nope'"),
            std::string::npos);
  EXPECT_NE(lora_test::error_of<std::exception>([&] { lora::add_weighted_adapter(*layer, {"p"}, {1}, "lin", lora::Combination::Cat); }).find("already has an adapter named 'lin'"),
            std::string::npos);
}

class MultiAdapterSwitch : public ::testing::TestWithParam<torch::Dtype> {};

TEST_P(MultiAdapterSwitch, SwitchingMergedWeightsEqualsAFreshMerge) {
  auto make = [&] {
    torch::manual_seed(3);
    auto n = three_adapters();
    n->to(GetParam());
    return n;
  };
  auto net = make(), fresh = make(), base = make();
  lora::set_adapter(*net, {"a"});
  lora::merge(*net);
  lora::switch_merged_adapter(*net, {"b"});
  lora::set_adapter(*fresh, {"b"});
  lora::merge(*fresh);
  EXPECT_TRUE(torch::equal(net->emb->weight, fresh->emb->weight)) << "emb: b does not adapt it, a's merge is undone exactly";
  EXPECT_TRUE(torch::equal(net->qkv->weight, fresh->qkv->weight));
  EXPECT_TRUE(torch::equal(net->out->weight, fresh->out->weight));
  EXPECT_FALSE(torch::equal(net->qkv->weight, base->qkv->weight));
  // And back to nothing merged: W0 exactly.
  lora::unmerge(*net);
  EXPECT_TRUE(torch::equal(net->qkv->weight, base->qkv->weight));
  EXPECT_TRUE(torch::equal(net->emb->weight, base->emb->weight));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, MultiAdapterSwitch, ::testing::Values(torch::kFloat32, torch::kBFloat16, torch::kFloat16),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

TEST_F(MultiAdapter, SeveralAdaptersSaveAndLoadInPeftsLayout) {
  auto net = std::make_shared<Net>();
  lora::inject_lora(*net, lora::LoRAConfig().r(2).target_modules({"qkv", "out"}));  // "default"
  lora::inject_lora(*net, lora::LoRAConfig().r(3).target_modules({"out"}), "short");
  lora::inject_lora(*net, lora::LoRAConfig().r(4).target_modules({"emb", "qkv"}), "formal");
  randomize_adapters(*net);
  const auto dir = temp_dir("save");
  const auto written = lora::save_adapters(*net, dir);
  EXPECT_EQ(written, (std::vector<std::string>{dir, dir + "/formal", dir + "/short"}));
  for (const auto& w : written) EXPECT_TRUE(fs::exists(w + "/adapter_model.safetensors")) << w;
  auto other = std::make_shared<Net>();
  const auto names = lora::load_adapters(*other, dir);
  EXPECT_EQ(names, (std::vector<std::string>{"default", "formal", "short"}));
  const auto want = net->named_parameters(), got = other->named_parameters();
  for (const auto& p : want) {
    if (p.key().find("lora_") == std::string::npos) continue;
    ASSERT_TRUE(got.contains(p.key())) << p.key();
    EXPECT_TRUE(torch::equal(got[p.key()], p.value())) << p.key();
  }
  EXPECT_EQ(other->qkv->active_adapters(), (std::vector<std::string>{"default"}));
  lora_test::remove_tree(dir);
}

TEST_F(MultiAdapter, HotSwapLoadsInPlaceWithPaddingAndExactScaling) {
  // The file: rank 2, alpha 6 on qkv and out. The slot: rank 4, alpha 8.
  torch::manual_seed(5);
  auto source = std::make_shared<Net>();
  lora::inject_lora(*source, lora::LoRAConfig().r(2).alpha(6).target_modules({"qkv", "out"}));
  randomize_adapters(*source);
  const auto dir = temp_dir("swap");
  lora::save_adapter(*source, dir);
  torch::manual_seed(5);
  auto net = std::make_shared<Net>();  // the same base weights
  lora::inject_lora(*net, lora::LoRAConfig().r(4).alpha(8).target_modules({"qkv", "out"}), "slot");
  randomize_adapters(*net);
  net->eval();
  source->eval();
  const void* before = net->qkv->lora_A("slot").data_ptr();
  auto flags = [&] {
    std::vector<bool> out;
    for (const auto& p : net->parameters()) out.push_back(p.requires_grad());
    return out;
  };
  const auto trainable = flags();
  lora::hotswap_adapter(*net, dir, "slot");
  EXPECT_EQ(flags(), trainable) << "no parameter frozen or unfrozen";
  EXPECT_EQ(net->qkv->lora_A("slot").data_ptr(), before) << "in place: the storage stays";
  EXPECT_EQ(net->qkv->adapter_names(), (std::vector<std::string>{"slot"}));
  const auto ids = torch::randint(0, 30, {3, 5});
  EXPECT_TRUE(torch::allclose(net->forward(ids), source->forward(ids), 1e-5, 1e-6));
  // A file that targets other modules, or a larger rank, leaves the model as it was.
  auto wide = std::make_shared<Net>();
  lora::inject_lora(*wide, lora::LoRAConfig().r(6).target_modules({"qkv", "out"}));
  const auto wide_dir = temp_dir("wide");
  lora::save_adapter(*wide, wide_dir);
  const auto snapshot = net->qkv->lora_B("slot").clone();
  EXPECT_NE(lora_test::error_of<std::exception>([&] { lora::hotswap_adapter(*net, wide_dir, "slot"); }).find("exceeds the slot's rank 4"), std::string::npos);
  auto emb_only = std::make_shared<Net>();
  lora::inject_lora(*emb_only, lora::LoRAConfig().r(2).target_modules({"emb", "qkv"}));
  const auto other_dir = temp_dir("other");
  lora::save_adapter(*emb_only, other_dir);
  EXPECT_NE(lora_test::error_of<std::exception>([&] { lora::hotswap_adapter(*net, other_dir, "slot"); }).find("target different modules"), std::string::npos);
  EXPECT_TRUE(torch::equal(net->qkv->lora_B("slot"), snapshot));
  EXPECT_EQ(net->qkv->adapter_names(), (std::vector<std::string>{"slot"}));
  for (const auto& d : {dir, wide_dir, other_dir}) lora_test::remove_tree(d);
}
