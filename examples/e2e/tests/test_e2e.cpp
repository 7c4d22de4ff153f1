// E2E data, token layout, loss mask, label-smoothed loss and per-batch padding.
#include <gtest/gtest.h>

#include "data.hpp"
#include "model.hpp"
#include "report.hpp"
#include "tokenizer.hpp"
#include "../../test_gpt2.hpp"
#include "../../test_util.hpp"

#include <filesystem>
#include <fstream>
#include <iterator>

#include <unistd.h>

namespace fs = std::filesystem;

namespace {

using example_test::data_dir;
using example_test::error_of;


fs::path write(const std::string& name, const std::string& text) {
  auto p = fs::temp_directory_path() / ("e2e_test_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(p, std::ios::binary) << text;
  return p;
}


}  // namespace

TEST(E2EData, MrRefLinesAreStrippedAndSplit) {
  auto p = write("pairs.txt", "name : A | food : B||A serves B . \n\n  name : C||C is here . \r\n");
  auto pairs = e2e::read_pairs(p.string());
  ASSERT_EQ(pairs.size(), 2u);
  EXPECT_EQ(pairs[0].mr, "name : A | food : B");
  EXPECT_EQ(pairs[0].ref, "A serves B .");
  EXPECT_EQ(pairs[1].mr, "name : C");
  auto bad = write("bad.txt", "ok||fine\nno separator\n");
  auto msg = error_of([&] { e2e::read_pairs(bad.string()); });
  EXPECT_NE(msg.find("line 2: expected 'meaning representation||reference'"), std::string::npos) << msg;
  auto two = write("two.txt", "a||b||c\n");
  EXPECT_NE(error_of([&] { e2e::read_pairs(two.string()); }).find("exactly one '||'"), std::string::npos);
  EXPECT_NE(error_of([] { e2e::read_pairs("/nonexistent.txt"); }).find("cannot read E2E data file"), std::string::npos);
}

TEST(E2EData, OfficialCsvQuotingAndMrOnlyFiles) {
  auto p = write("set.csv", "\"mr\",\"ref\"\r\n\"name[A], food[B]\",\"A serves \"\"B\"\", cheaply.\"\r\n\"name[A], food[B]\",\"Second, ref.\"\r\n");
  auto pairs = e2e::read_csv(p.string());
  ASSERT_EQ(pairs.size(), 2u);
  EXPECT_EQ(pairs[0].mr, "name[A], food[B]");
  EXPECT_EQ(pairs[0].ref, "A serves \"B\", cheaply.");
  auto groups = e2e::group_by_mr(pairs);
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0].refs, (std::vector<std::string>{"A serves \"B\", cheaply.", "Second, ref."}));
  auto mr_only = e2e::read_csv(write("test.csv", "mr\n\"name[X], area[riverside]\"\n").string());
  ASSERT_EQ(mr_only.size(), 1u);
  EXPECT_EQ(mr_only[0].ref, "");
  EXPECT_NE(error_of([&] { e2e::read_csv(write("h.csv", "meaning,text\na,b\n").string()); }).find("expected a header"), std::string::npos);
  EXPECT_NE(error_of([&] { e2e::read_csv(write("q.csv", "mr,ref\n\"open,b\n").string()); }).find("not closed"), std::string::npos);
  EXPECT_NE(error_of([&] { e2e::read_csv(write("f.csv", "mr,ref\na,b,c\n").string()); }).find("record 2: expected 2 fields"),
            std::string::npos);
  // The challenge's system outputs (tuetschek/e2e-eval): tab-separated, commas inside fields.
  auto tsv = e2e::read_csv(write("sys.tsv", "MR\toutput\n\"name[A], food[B]\"\tA serves B, cheaply.\n").string());
  ASSERT_EQ(tsv.size(), 1u);
  EXPECT_EQ(tsv[0].mr, "name[A], food[B]");
  EXPECT_EQ(tsv[0].ref, "A serves B, cheaply.");
}

TEST(E2EData, RealFilesParseWithTheirKnownSizes) {
  const auto dir = data_dir("LORA_E2E_DIR", "e2e");
  if (!fs::exists(dir + "/test.txt")) GTEST_SKIP() << "E2E data not found in " << dir << " (set LORA_E2E_DIR)";
  EXPECT_EQ(e2e::read_pairs(dir + "/train.txt").size(), 42061u);
  auto test = e2e::read_pairs(dir + "/test.txt");
  EXPECT_EQ(test.size(), 4693u);
  EXPECT_EQ(e2e::group_by_mr(test).size(), 630u);
  if (!fs::exists(dir + "/csv/testset_w_refs.csv"))
    GTEST_SKIP() << "the .txt files check out; the official CSVs are not in " << dir << "/csv (scripts/get-data.sh fetches them)";
  auto csv = e2e::read_csv(dir + "/csv/testset_w_refs.csv");
  EXPECT_EQ(csv.size(), 4693u);
  EXPECT_EQ(e2e::group_by_mr(csv).size(), 630u);
}

TEST(E2EData, TrainingExampleTokenLayout) {
  const auto dir = data_dir("LORA_GPT2_DIR", "gpt2");
  if (!fs::exists(dir + "/vocab.json")) GTEST_SKIP() << "GPT-2 tokenizer files not found in " << dir;
  auto tok = gpt2::Tokenizer::from_dir(dir);
  auto e = e2e::encode_example(tok, {"name : The Vaults | Type : pub", "The Vaults is a pub ."});
  std::vector<int64_t> expected = tok.encode("name : The Vaults | Type : pub");
  expected.push_back(50256);
  const auto context = static_cast<int64_t>(expected.size());
  for (auto id : tok.encode(" The Vaults is a pub .")) expected.push_back(id);
  expected.push_back(50256);
  EXPECT_EQ(e.tokens, expected);
  EXPECT_EQ(e.context_len, context);
  EXPECT_EQ(tok.decode(e.tokens), "name : The Vaults | Type : pub<|endoftext|> The Vaults is a pub .<|endoftext|>");
  EXPECT_EQ(e2e::encode_example(tok, {"a b c", "d e f"}, 4).tokens.size(), 4u);
}

TEST(E2EData, BatchTargetsAndMaskCoverTheCompletionOnly) {
  std::vector<e2e::Example> ex = {{{10, 11, 12, 50256, 20, 21, 50256}, 4}, {{30, 50256, 40, 50256}, 2}};
  auto b = e2e::make_batch(ex, {0, 1});
  ASSERT_EQ(b.input.sizes(), torch::IntArrayRef({2, 7}));
  EXPECT_TRUE(torch::equal(b.input[1], torch::tensor({30, 50256, 40, 50256, 0, 0, 0})));
  EXPECT_TRUE(torch::equal(b.target[0], torch::tensor({11, 12, 50256, 20, 21, 50256, 0})));
  // Position t predicts token t+1: completion tokens start at context_len, so positions
  // context_len-1 .. n-2 count (microsoft/LoRA: [0]*(len(context)-1) + [1]*len(completion)).
  EXPECT_TRUE(torch::equal(b.mask[0], torch::tensor({0.f, 0.f, 0.f, 1.f, 1.f, 1.f, 0.f})));
  EXPECT_TRUE(torch::equal(b.mask[1], torch::tensor({0.f, 1.f, 1.f, 0.f, 0.f, 0.f, 0.f})));
  EXPECT_EQ(e2e::make_batch(ex, {1}, 512).input.size(1), 512);
}

TEST(E2EData, LabelSmoothedLossMatchesHandComputation) {
  torch::manual_seed(0);
  std::vector<e2e::Example> ex = {{{1, 2, 3, 0}, 2}};
  auto b = e2e::make_batch(ex, {0});
  auto logits = torch::randn({1, 4, 5});
  const double ls = 0.1;
  auto [sums, counts] = e2e::masked_loss(logits, b, ls);
  double expected = 0;
  for (int t : {1, 2}) {  // masked positions predict tokens 3 and 0
    std::vector<double> z(5);
    double mx = -1e9, sum = 0;
    for (int v = 0; v < 5; ++v) mx = std::max(mx, z[v] = logits[0][t][v].item<double>());
    for (int v = 0; v < 5; ++v) sum += std::exp(z[v] - mx);
    auto logp = [&](int v) { return z[v] - mx - std::log(sum); };
    double mean = 0;
    for (int v = 0; v < 5; ++v) mean += logp(v) / 5;
    const int target = t == 1 ? 3 : 0;
    expected += (1 - ls) * -logp(target) + ls * -mean;
  }
  EXPECT_NEAR(sums.item<double>(), expected, 1e-5);
  EXPECT_EQ(counts.item<float>(), 2.f);
}

TEST(E2EData, PerBatchPaddingGivesTheLossesOfPaddingTo512) {
  torch::manual_seed(0);
  gpt2::GPT2LMHeadModelImpl model(example_test::tiny_gpt2_config(64, 512, 2, 16, 2));
  model.eval();
  std::vector<e2e::Example> ex;
  for (int len : {9, 23, 14}) {
    e2e::Example e;
    for (int i = 0; i < len; ++i) e.tokens.push_back((i * 7 + len) % 64);
    e.context_len = len / 2;
    ex.push_back(e);
  }
  auto tight = e2e::make_batch(ex, {0, 1, 2}), padded = e2e::make_batch(ex, {0, 1, 2}, 512);
  EXPECT_EQ(tight.input.size(1), 23);
  torch::NoGradGuard g;
  auto [a, na] = e2e::masked_loss(model.forward(tight.input), tight, 0.1);
  auto [b, nb] = e2e::masked_loss(model.forward(padded.input), padded, 0.1);
  EXPECT_TRUE(torch::equal(na, nb));
  EXPECT_LT(((a - b).abs() / b.abs()).max().item<double>(), 1e-5);
  // The head applied to the masked positions only gives the same sums.
  auto [fast, nc] = e2e::masked_loss_from_hidden(model.hidden_states(tight.input),
                                              [&](const torch::Tensor& h) { return model.lm_head(h); }, tight, 0.1);
  EXPECT_TRUE(torch::equal(nc, na));
  EXPECT_LT(((fast - a).abs() / a.abs()).max().item<double>(), 1e-5);
}

TEST(E2EReport, ConfigurationIsTheOneTheRunUsed) {
  e2e::RunReport r;
  r.model = "gpt2-medium";
  r.options.method = e2e::Method::LoRA;
  r.options.rank = 8;
  r.options.alpha = 16;
  r.options.optimizer = e2e::UpdateRule::Torch;
  r.options.model_dropout = true;
  r.options.warmup = 7;
  r.total_steps = 70;
  r.decoding = "beam 3";
  r.trainable = 10;
  r.total = 1000;
  const auto path = std::filesystem::temp_directory_path() / ("e2e_report_" + std::to_string(::getpid()) + ".md");
  e2e::write_report(path.string(), r);
  std::ifstream in(path);
  const std::string md((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* want : {"| method | LoRA: r = 8, alpha = 16, dropout 0.1, attention weights W_q, W_v |",
                           "| optimiser | LibTorch's AdamW, lr 0.0002, weight decay 0.01", "warm-up 7 of 70 steps",
                           "| model dropout | config.json's |", "| decoding | beam 3 |", "10 of 1,000 (1.0000%)"})
    EXPECT_NE(md.find(want), std::string::npos) << want << "\n" << md;
  std::filesystem::remove(path);
}
