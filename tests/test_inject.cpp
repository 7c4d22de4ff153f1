// inject_lora: selection rules, errors, reports, trainable sets, state dicts, end-to-end training.
#include "common.hpp"

#include <sstream>

using namespace lora_test;

namespace {

std::vector<std::string> adapted_names(torch::nn::Module& model, const lora::LoRAConfig& cfg) {
  return lora::inject_lora(model, cfg).adapted;
}

using Names = std::vector<std::string>;

/// A model that holds a plain torch::nn::Linear beside LoRA-capable layers.
struct WithPlain : torch::nn::Module {
  WithPlain() {
    fc = register_module("fc", lora::LoRALinear(4, 4));
    plain = register_module("plain", torch::nn::Linear(4, 4));
  }
  lora::LoRALinear fc{nullptr};
  torch::nn::Linear plain{nullptr};
};

}  // namespace

class InjectTest : public Seeded {};

TEST_F(InjectTest, SuffixTargetsSelectExactlyTheMatchingLayers) {
  TinyTransformer m;
  EXPECT_EQ(adapted_names(*m, lora::LoRAConfig().target_modules({"q", "v"})),
            (Names{"blocks.0.attn.q", "blocks.0.attn.v", "blocks.1.attn.q", "blocks.1.attn.v"}));
}

TEST_F(InjectTest, FullNameAndDottedSuffixButNotPartialWords) {
  TinyTransformer m;
  // "proj" must not match "mlp.fc" and "attn.q" must not match "blocks.0.attn.qq"-like names.
  EXPECT_EQ(adapted_names(*m, lora::LoRAConfig().target_modules({"blocks.1.mlp.proj", "0.attn.o"})),
            (Names{"blocks.0.attn.o", "blocks.1.mlp.proj"}));
}

TEST_F(InjectTest, SuffixMatchingStopsAtDots) {
  // "q" selects ".q" only, never a sibling "qq" nor a name that merely ends in the letter.
  struct Siblings : torch::nn::Module {
    Siblings() {
      q = register_module("q", lora::LoRALinear(4, 4));
      qq = register_module("qq", lora::LoRALinear(4, 4));
      seq = register_module("seq", lora::LoRALinear(4, 4));
    }
    lora::LoRALinear q{nullptr}, qq{nullptr}, seq{nullptr};
  };
  Siblings m;
  EXPECT_EQ(adapted_names(m, lora::LoRAConfig().target_modules({"q"})), (Names{"q"}));
  Siblings m2;
  EXPECT_EQ(adapted_names(m2, lora::LoRAConfig().target_modules({"qq"})), (Names{"qq"}));
}

TEST_F(InjectTest, RegexMustMatchTheWholeName) {
  TinyTransformer m;
  EXPECT_EQ(adapted_names(*m, lora::LoRAConfig().target_regex(R"(blocks\.\d\.attn\.[kv])")),
            (Names{"blocks.0.attn.k", "blocks.0.attn.v", "blocks.1.attn.k", "blocks.1.attn.v"}));
  TinyTransformer m2;
  EXPECT_NE(error_of<std::invalid_argument>([&] { lora::inject_lora(*m2, lora::LoRAConfig().target_regex("attn\\.k")); })
                .find("selects no module"), std::string::npos);
}

TEST_F(InjectTest, ExcludeModulesAndLayersToTransformFilter) {
  TinyTransformer m;
  EXPECT_EQ(adapted_names(*m, lora::LoRAConfig().target_modules({"q", "v"}).exclude_modules({"blocks.0.attn.v"})),
            (Names{"blocks.0.attn.q", "blocks.1.attn.q", "blocks.1.attn.v"}));
  TinyTransformer m2;
  EXPECT_EQ(adapted_names(*m2, lora::LoRAConfig().target_modules({"fc", "q"}).layers_to_transform({1})),
            (Names{"blocks.1.attn.q", "blocks.1.mlp.fc"}));
  TinyTransformer m3;
  EXPECT_EQ(adapted_names(*m3, lora::LoRAConfig().target_modules({"q"}).layers_to_transform({0}).layers_pattern("blocks")),
            (Names{"blocks.0.attn.q"}));
}

TEST_F(InjectTest, UnknownTargetIsAnErrorListingCandidates) {
  TinyTransformer m;
  auto msg = error_of<std::invalid_argument>([&] { lora::inject_lora(*m, lora::LoRAConfig().target_modules({"q", "c_attn"})); });
  EXPECT_NE(msg.find("target 'c_attn' matches no module"), std::string::npos) << msg;
  EXPECT_NE(msg.find("blocks.0.attn.q"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("lora_A"), std::string::npos) << "LoRA internals are no candidates: " << msg;
  EXPECT_TRUE(m->blocks[0]->as<BlockImpl>()->attn->q->adapter_names().empty()) << "an error must change nothing";
}

TEST_F(InjectTest, PlainLinearTargetExplainsWhyAndTheFix) {
  WithPlain m;
  auto msg = error_of<std::invalid_argument>([&] { lora::inject_lora(m, lora::LoRAConfig().target_modules({"fc", "plain"})); });
  EXPECT_NE(msg.find("module 'plain'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("plain torch::nn::Linear"), std::string::npos) << msg;
  EXPECT_NE(msg.find("forward() is not virtual"), std::string::npos) << msg;
  EXPECT_NE(msg.find("declare it as lora::LoRALinear"), std::string::npos) << msg;
  EXPECT_TRUE(m.fc->adapter_names().empty());
}

TEST_F(InjectTest, ContainerTargetIsRefused) {
  TinyTransformer m;
  auto msg = error_of<std::invalid_argument>([&] { lora::inject_lora(*m, lora::LoRAConfig().target_modules({"attn"})); });
  EXPECT_NE(msg.find("is not a LoRA-capable layer"), std::string::npos) << msg;
}

TEST_F(InjectTest, SecondInjectionWithTheSameNameThrowsAndChangesNothing) {
  TinyTransformer m;
  lora::inject_lora(*m, lora::LoRAConfig().target_modules({"q"}));
  auto before = lora::lora_state_dict(*m);
  auto msg = error_of<std::invalid_argument>([&] { lora::inject_lora(*m, lora::LoRAConfig().target_modules({"q", "v"})); });
  EXPECT_NE(msg.find("already has adapter 'default'"), std::string::npos) << msg;
  EXPECT_EQ(lora::lora_state_dict(*m).keys(), before.keys());
}

TEST_F(InjectTest, SecondInjectionWithANewNameAddsAndActivatesIt) {
  TinyTransformer m;
  lora::inject_lora(*m, lora::LoRAConfig().target_modules({"q"}));
  lora::inject_lora(*m, lora::LoRAConfig().r(2).target_modules({"q", "v"}), "task2");
  auto& attn = *m->blocks[0]->as<BlockImpl>()->attn;
  EXPECT_EQ(attn.q->adapter_names(), (Names{"default", "task2"}));
  EXPECT_EQ(attn.q->active_adapters(), Names{"task2"});
  EXPECT_FALSE(attn.q->lora_A("default").requires_grad());
  EXPECT_TRUE(attn.q->lora_A("task2").requires_grad());
  lora::set_adapter(*m, {"default"});
  EXPECT_EQ(attn.q->active_adapters(), Names{"default"});
  EXPECT_TRUE(attn.v->active_adapters().empty());
  lora::delete_adapter(*m, "task2");
  EXPECT_EQ(attn.v->adapter_names(), Names{});
  EXPECT_NE(error_of<std::invalid_argument>([&] { lora::delete_adapter(*m, "task2"); }).find("no LoRA layer"), std::string::npos);
}

TEST_F(InjectTest, ReportCountsParametersAndPrintsLikePeft) {
  TinyTransformer m(17, 8, 2);
  auto report = lora::inject_lora(*m, lora::LoRAConfig().r(2).target_modules({"q", "fc"}));
  // q: 2·(8+8) = 32 per block; fc: 2·(8+32) = 80 per block.
  EXPECT_EQ(report.trainable_params, 2 * (32 + 80));
  int64_t base = 0;
  for (const auto& p : TinyTransformer(17, 8, 2)->parameters()) base += p.numel();
  EXPECT_EQ(report.all_params, base + report.trainable_params);
  ASSERT_EQ(base + 224, 2081);  // base 1857 = emb 136 + 2 blocks × 856 + head 9
  std::ostringstream s;
  s << report;  // PEFT: f"trainable params: {t:,d} || all params: {a:,d} || trainable%: {100 * t / a:.4f}"
  EXPECT_EQ(s.str(), "trainable params: 224 || all params: 2,081 || trainable%: 10.7641");
  EXPECT_EQ(lora::with_commas(124734720), "124,734,720");
}

TEST_F(InjectTest, BiasModesChooseTrainableBiases) {
  auto trainable = [](lora::Bias bias) {
    TinyTransformer m;
    lora::inject_lora(*m, lora::LoRAConfig().target_modules({"blocks.0.attn.q"}).bias(bias));
    Names out;
    for (const auto& p : m->named_parameters())
      if (p.value().requires_grad() && p.key().find("lora_") == std::string::npos) out.push_back(p.key());
    return out;
  };
  EXPECT_EQ(trainable(lora::Bias::None), Names{});
  EXPECT_EQ(trainable(lora::Bias::LoraOnly), Names{"blocks.0.attn.q.bias"});
  Names all = trainable(lora::Bias::All);
  EXPECT_EQ(all.size(), 2u * (4 + 2 + 1) + 1);  // per block: q,k,v,o, fc, proj, ln.bias; plus head.bias
  for (const auto& n : all) EXPECT_EQ(n.substr(n.size() - 4), "bias");
}

TEST_F(InjectTest, RankAlphaAndSlicePatternsArePerModule) {
  TinyTransformer m;
  lora::inject_lora(*m, lora::LoRAConfig().r(2).alpha(4).target_modules({"q", "fc"})
                            .rank_pattern({{"blocks.1.attn.q", 4}, {"fc", 1}})
                            .alpha_pattern({{R"(blocks\.0\..*q)", 8}})
                            .enable_lora({{"fc", {true, false, true, false}}}));
  auto& b0 = *m->blocks[0]->as<BlockImpl>();
  auto& b1 = *m->blocks[1]->as<BlockImpl>();
  EXPECT_EQ(b0.attn->q->adapter_options("default").r(), 2);
  EXPECT_DOUBLE_EQ(b0.attn->q->scaling("default"), 4.0);
  EXPECT_EQ(b1.attn->q->adapter_options("default").r(), 4);
  EXPECT_DOUBLE_EQ(b1.attn->q->scaling("default"), 1.0);
  EXPECT_EQ(b0.mlp->fc->lora_A("default").sizes(), torch::IntArrayRef({2, 8}));   // k·r = 2·1
  EXPECT_EQ(b0.mlp->fc->lora_B("default").sizes(), torch::IntArrayRef({16, 1}));  // k·out/n = 2·8
  TinyTransformer m2;
  auto msg = error_of<std::invalid_argument>([&] {
    lora::inject_lora(*m2, lora::LoRAConfig().target_modules({"q"}).enable_lora({{"c_attn", {true, false, true}}}));
  });
  EXPECT_NE(msg.find("enable_lora key 'c_attn' matches none"), std::string::npos) << msg;
}

TEST_F(InjectTest, PatternKeysTakeTheFirstMatchInTheOrderGiven) {
  // PEFT's get_pattern_key: the first key, in the dict's order, whose (.*\.)?key matches. Both
  // orders of two overlapping keys, for rank and alpha (a sorted map got one of them wrong).
  auto resolve = [](const lora::RankPattern& ranks, const lora::AlphaPattern& alphas) {
    TinyTransformer m;
    lora::inject_lora(*m, lora::LoRAConfig().r(1).alpha(1).target_modules({"q"}).rank_pattern(ranks).alpha_pattern(alphas));
    auto& q0 = *m->blocks[0]->as<BlockImpl>()->attn->q;
    auto& q1 = *m->blocks[1]->as<BlockImpl>()->attn->q;
    return std::vector<double>{double(q0.adapter_options("default").r()), q0.adapter_options("default").alpha(),
                               double(q1.adapter_options("default").r()), q1.adapter_options("default").alpha()};
  };
  EXPECT_EQ(resolve({{"q", 2}, {"blocks.0.attn.q", 3}}, {{"q", 4}, {"blocks.0.attn.q", 6}}), (std::vector<double>{2, 4, 2, 4}));
  EXPECT_EQ(resolve({{"blocks.0.attn.q", 3}, {"q", 2}}, {{"blocks.0.attn.q", 6}, {"q", 4}}), (std::vector<double>{3, 6, 2, 4}));
  TinyTransformer m;
  auto msg = error_of<std::invalid_argument>([&] {
    lora::inject_lora(*m, lora::LoRAConfig().target_modules({"q"}).rank_pattern({{"q", 2}, {"q", 3}}));
  });
  EXPECT_NE(msg.find("rank_pattern key 'q' is given twice"), std::string::npos) << msg;
}

TEST_F(InjectTest, LoRAParametersAndStateDictNameOnlyAdapters) {
  TinyTransformer m;
  lora::inject_lora(*m, lora::LoRAConfig().r(2).target_modules({"emb", "blocks.0.attn.v"}));
  auto sd = lora::lora_state_dict(*m);
  EXPECT_EQ(sd.keys(), (Names{"emb.lora_embedding_A.default.weight", "emb.lora_embedding_B.default.weight",
                              "blocks.0.attn.v.lora_A.default.weight", "blocks.0.attn.v.lora_B.default.weight"}));
  EXPECT_EQ(lora::lora_parameters(*m).size(), 4u);
  auto with_bias = lora::lora_state_dict(*m, lora::Bias::LoraOnly);
  EXPECT_TRUE(with_bias.contains("blocks.0.attn.v.bias"));
}

TEST_F(InjectTest, TinyTransformerTrainsOnlyAdaptersThenMergesToSameOutputs) {
  TinyTransformer m(17, 8, 2);
  auto report = lora::inject_lora(*m, lora::LoRAConfig().r(4).alpha(8).target_modules({"q", "v", "fc"}));
  EXPECT_EQ(report.adapted.size(), 6u);
  std::map<std::string, torch::Tensor> frozen;
  for (const auto& p : m->named_parameters())
    if (p.key().find("lora_") == std::string::npos) frozen[p.key()] = p.value().detach().clone();

  auto ids = torch::randint(0, 17, {16, 6});
  auto target = torch::sin(ids.to(torch::kFloat)).cumsum(1) * 0.3;  // a toy regression target
  torch::optim::AdamW opt(lora::lora_parameters(*m), torch::optim::AdamWOptions(1e-2).weight_decay(0.0));
  m->train();
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    opt.zero_grad();
    auto loss = torch::mse_loss(m->forward(ids), target);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, 0.7 * first) << "loss " << first << " -> " << last;
  for (const auto& p : m->named_parameters())
    if (frozen.count(p.key())) {
      EXPECT_TRUE(torch::equal(p.value(), frozen[p.key()])) << p.key() << " changed";
    }

  m->eval();
  auto before = m->forward(ids);
  lora::merge(*m);
  EXPECT_LT(rel_err(m->forward(ids), before), 1e-5);
}

TEST_F(InjectTest, ConfigErrorsAreReported) {
  TinyTransformer m;
  using E = std::invalid_argument;
  EXPECT_NE(error_of<E>([&] { lora::inject_lora(*m, lora::LoRAConfig()); }).find("no targets"), std::string::npos);
  EXPECT_NE(error_of<E>([&] { lora::inject_lora(*m, lora::LoRAConfig().r(0).target_modules({"q"})); }).find("r must be > 0"),
            std::string::npos);
  EXPECT_NE(error_of<E>([&] { lora::inject_lora(*m, lora::LoRAConfig().target_regex("(")); }).find("target_regex (target_modules as one string) '(' is not a valid regex"),
            std::string::npos);
  EXPECT_NE(error_of<E>([&] { lora::inject_lora(*m, lora::LoRAConfig().target_modules({"q"}).dropout(1.5)); })
                .find("module 'blocks.0.attn.q'"), std::string::npos);
}

TEST_F(InjectTest, TargetSelectorRulesAndTheirCombinations) {
  using S = lora::TargetSelector;
  const S names({"q", "mlp.fc"}, "");
  EXPECT_TRUE(names.selects("blocks.0.attn.q"));
  EXPECT_TRUE(names.selects("q"));
  EXPECT_FALSE(names.selects("blocks.0.attn.qq"));
  EXPECT_FALSE(names.selects("blocks.0.attn.seq"));
  EXPECT_TRUE(names.selects("blocks.1.mlp.fc"));
  EXPECT_FALSE(names.selects("blocks.1.xmlp.fc"));
  std::vector<std::string> entries;
  EXPECT_TRUE(names.matches_targets("blocks.1.mlp.fc", &entries));
  EXPECT_EQ(entries, std::vector<std::string>{"mlp.fc"});

  const S regex({}, R"(blocks\.\d\.attn\.[kv])");
  EXPECT_TRUE(regex.is_regex());
  EXPECT_TRUE(regex.selects("blocks.0.attn.k"));
  EXPECT_FALSE(regex.selects("x.blocks.0.attn.k"));  // the whole path must match
  EXPECT_FALSE(regex.selects("blocks.0.attn.kk"));

  const S excluded({"q", "v"}, "", {"blocks.0.attn.v"});
  EXPECT_FALSE(excluded.selects("blocks.0.attn.v"));
  EXPECT_TRUE(excluded.selects("blocks.1.attn.v"));
  const S regex_excluded({}, R"(.*\.[qv])", {"v"});
  EXPECT_TRUE(regex_excluded.selects("blocks.3.attn.q"));
  EXPECT_FALSE(regex_excluded.selects("blocks.3.attn.v"));

  const S layers({"q"}, "", {}, {1, 3});
  EXPECT_EQ(layers.layer_index("blocks.3.attn.q"), 3);
  EXPECT_TRUE(layers.selects("blocks.3.attn.q"));
  EXPECT_FALSE(layers.selects("blocks.2.attn.q"));
  EXPECT_FALSE(layers.selects("q"));  // no layer index: not in the listed layers
  const S pattern({"q"}, "", {}, {0}, "h");
  EXPECT_EQ(pattern.layer_index("transformer.h.0.sub.7.q"), 0);  // the number after "h.", not the last one
  EXPECT_TRUE(pattern.selects("transformer.h.0.sub.7.q"));
  EXPECT_FALSE(pattern.selects("blocks.0.attn.q"));

  using E = std::invalid_argument;
  EXPECT_NE(error_of<E>([] { S({"q"}, "q"); }).find("not both"), std::string::npos);
  EXPECT_NE(error_of<E>([] { S({}, "(unclosed"); }).find("target_regex (target_modules as one string) '(unclosed' is not a valid regex"), std::string::npos);
  EXPECT_NE(error_of<E>([] { S({"q"}, "", {}, {}, "h"); }).find("layers_pattern is set but layers_to_transform is empty"),
            std::string::npos);
  EXPECT_NE(error_of<E>([] { S({}, ".*q", {}, {0}); }).find("cannot be combined with a target regex"), std::string::npos);
  EXPECT_TRUE(lora::KeyPattern("attn.q").matches("blocks.0.attn.q"));
  EXPECT_FALSE(lora::KeyPattern("attn.q").matches("blocks.0.attn.qq"));
}

TEST_F(InjectTest, NamesAndRegexTogetherAreRefusedNotHalfIgnored) {
  TinyTransformer m;
  const auto msg = error_of<std::invalid_argument>(
      [&] { lora::inject_lora(*m, lora::LoRAConfig().target_modules({"q"}).target_regex(R"(.*\.v)")); });
  EXPECT_NE(msg.find("set target_modules (names) or target_regex, not both"), std::string::npos) << msg;
  EXPECT_TRUE(lora::lora_parameters(*m).empty());
}
