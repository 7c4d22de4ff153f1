// The E2E metrics against hand computations and against the official scorer's numbers.
#include <gtest/gtest.h>

#include "data.hpp"
#include "scorer.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include "../../test_util.hpp"

#include <map>
#include <sstream>

namespace {

std::string data_dir() { return example_test::data_dir("LORA_E2E_DIR", "e2e"); }

using Strings = std::vector<std::string>;

}  // namespace

TEST(E2EScorer, MtevalTokenizationFollowsItsRules) {
  // Lowercased; ? split (punctuation class); comma split unless between digits; dash split after a digit.
  EXPECT_EQ(e2e::mteval_tokens("It's £20-25, isn't it?"), (Strings{"it's", "£20", "-", "25", ",", "isn't", "it", "?"}));
  EXPECT_EQ(e2e::mteval_tokens("Price 1,000.5 (cheap)."), (Strings{"price", "1,000.5", "(", "cheap", ")", "."}));
}

TEST(E2EScorer, PtbTokenizationSplitsCliticsAndDropsPunctuation) {
  EXPECT_EQ(e2e::ptb_tokens("Zizzi's isn't cheap (£20-25)."), (Strings{"zizzi", "'s", "is", "n't", "cheap", "-lrb-", "£", "20-25", "-rrb-"}));
  EXPECT_EQ(e2e::ptb_tokens("\"The Mill\", a pub; near the U.S. ... yes!"),
            (Strings{"the", "mill", "a", "pub", "near", "the", "u.s.", "yes"}));
  EXPECT_TRUE(e2e::ptb_tokens(" . , ").empty());
}

TEST(E2EScorer, BleuOfOneSegmentByHand) {
  // hyp a b c d vs ref a b c e: 3/4 unigrams, 2/3 bigrams, 1/2 trigrams, 0/1 4-grams -> mteval
  // smooths the zero as 1/(2·1); equal lengths, so no brevity penalty.
  const double expected = std::pow(3.0 / 4 * 2.0 / 3 * 1.0 / 2 * 1.0 / 2, 0.25);
  EXPECT_NEAR(e2e::bleu({"a b c d"}, {{"a b c e"}}), expected, 1e-12);
  // Shorter than the closest reference (5 words vs 4): brevity penalty exp(1 - 5/4).
  EXPECT_NEAR(e2e::bleu({"a b c d"}, {{"a b c d e", "x y z w v u v"}}), std::exp(1 - 5.0 / 4), 1e-12);
}

TEST(E2EScorer, RougeLByHand) {
  // LCS(a b c d, a c d e f) = 3: P = 3/4, R = 3/5, F = (1 + 1.2²) P R / (R + 1.2² P).
  const double P = 0.75, R = 0.6, b2 = 1.44;
  EXPECT_NEAR(e2e::rouge_l({"a b c d"}, {{"a c d e f", "x"}}), (1 + b2) * P * R / (R + b2 * P), 1e-12);
  EXPECT_EQ(e2e::rouge_l({""}, {{"a"}}), 0.0);
}

TEST(E2EScorer, TinyExampleMatchesTheOfficialScorer) {
  // Numbers printed by tuetschek/e2e-metrics: mteval-v13a-sig.pl for BLEU/NIST (4 decimals) and
  // pycocoevalcap's Rouge/Cider on the same (already PTB-tokenized) text.
  const Strings hyps = {"the cat sat on the mat .", "a dog runs"};
  const std::vector<Strings> refs = {{"the cat is on the mat .", "there is a cat on the mat ."},
                                     {"a dog runs fast", "the dog is running"}};
  const auto s = e2e::score(hyps, refs);
  EXPECT_NEAR(s.bleu, 0.4877, 5e-5);
  EXPECT_NEAR(s.nist, 3.404, 5e-4);
  EXPECT_NEAR(s.rouge_l, 0.8344748858447488, 1e-9);
  EXPECT_NEAR(s.cider, 3.6482762847101564, 1e-9);
}

TEST(E2EScorer, FullTestSetMatchesTheOfficialScorer) {
  const auto dir = data_dir();
  if (!std::filesystem::exists(dir + "/test.txt")) GTEST_SKIP() << "E2E data not found in " << dir << " (set LORA_E2E_DIR)";
  const auto groups = e2e::group_by_mr(e2e::read_pairs(dir + "/test.txt"));
  ASSERT_EQ(groups.size(), 630u);
  // Hypotheses built deterministically: every 7th MR gets another MR's first reference, the
  // others their last reference with every third word dropped.
  Strings hyps;
  std::vector<Strings> refs;
  for (size_t i = 0; i < groups.size(); ++i) {
    refs.push_back(groups[i].refs);
    if (i % 7 == 0) {
      hyps.push_back(groups[(i + 3) % groups.size()].refs[0]);
      continue;
    }
    std::istringstream words(groups[i].refs.back());
    std::string w, h;
    for (int j = 0; words >> w; ++j)
      if (j % 3 != 2) h += (h.empty() ? "" : " ") + w;
    hyps.push_back(h);
  }
  const auto s = e2e::score(hyps, refs);
  // Official numbers for these inputs (see TinyExampleMatchesTheOfficialScorer for the sources).
  EXPECT_NEAR(s.bleu, 0.1660, 5e-5);
  EXPECT_NEAR(s.nist, 5.207, 5e-4);
  EXPECT_NEAR(s.rouge_l, 0.7393303562974981, 1e-9);
  EXPECT_NEAR(s.cider, 0.8484505839939533, 1e-9);
}

// The challenge's published word-overlap scores of two primary systems (Dušek, Novikova & Rieser,
// "Evaluating the state-of-the-art of end-to-end NLG: the E2E NLG challenge", 2020, table of
// automatic metrics), from their outputs in tuetschek/e2e-eval and the official test references.
// BLEU, NIST and ROUGE-L must match the published four decimals (1e-4); CIDEr is held to the issue's
// 0.01 (we land ~0.001 off: the Java PTB tokenizer is re-implemented here).
TEST(E2EScorer, PublishedChallengeScoresOfPrimarySystems) {
  std::string eval_dir;
  for (const std::string& d : {example_test::data_dir("LORA_E2E_EVAL_DIR", "e2e-eval"), std::string(LORA_SOURCE_DIR) + "/data/e2e-eval"})
    if (std::filesystem::exists(d + "/system_outputs/primary/tgen.tsv")) eval_dir = d;
  std::string csv = data_dir() + "/csv/testset_w_refs.csv";
  if (!std::filesystem::exists(csv)) csv = eval_dir + "/testset_w_refs.csv";
  if (eval_dir.empty() || !std::filesystem::exists(csv))
    GTEST_SKIP() << "challenge system outputs or official test CSV not found: run scripts/get-data.sh --challenge, or set "
                    "LORA_E2E_EVAL_DIR to a checkout of github.com/tuetschek/e2e-eval";
  const auto groups = e2e::group_by_mr(e2e::read_csv(csv));
  ASSERT_EQ(groups.size(), 630u);
  std::vector<Strings> refs;
  for (const auto& g : groups) refs.push_back(g.refs);
  struct Published {
    const char* system;
    double bleu, nist, rouge_l, cider;
  };
  for (const auto& p : {Published{"tgen", 0.6593, 8.6094, 0.6850, 2.2338}, Published{"slug", 0.6619, 8.6130, 0.6772, 2.2615}}) {
    std::map<std::string, std::string> output;
    for (const auto& row : e2e::read_csv(eval_dir + "/system_outputs/primary/" + p.system + ".tsv")) output[row.mr] = row.ref;
    Strings hyps;
    for (const auto& g : groups) {
      ASSERT_TRUE(output.count(g.mr)) << p.system << " has no output for " << g.mr;
      hyps.push_back(output[g.mr]);
    }
    const auto s = e2e::score(hyps, refs);
    EXPECT_NEAR(s.bleu, p.bleu, 1e-4) << p.system;
    EXPECT_NEAR(s.nist, p.nist, 1e-4) << p.system;
    EXPECT_NEAR(s.rouge_l, p.rouge_l, 1e-4) << p.system;
    EXPECT_NEAR(s.cider, p.cider, 1e-2) << p.system;
  }
}

TEST(E2EScorer, FilesAndMismatchesGiveClearErrors) {
  auto dir = std::filesystem::temp_directory_path() / ("e2e_scorer_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  { std::ofstream(dir / "refs.txt") << "a b\nc d\n\ne f\n\n"; }
  auto refs = e2e::read_references((dir / "refs.txt").string());
  ASSERT_EQ(refs.size(), 2u);
  EXPECT_EQ(refs[0], (Strings{"a b", "c d"}));
  std::string msg;
  try {
    e2e::score({"x"}, refs);
  } catch (const std::invalid_argument& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("1 hypotheses but 2 reference groups"), std::string::npos) << msg;
}

TEST(E2EScorer, AnMrWithoutReferencesIsAnErrorNotANan) {
  std::string msg;
  try {
    e2e::score({"a b c", "d e f"}, {{"a b c"}, {}});
  } catch (const std::invalid_argument& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("MR 2 has no references"), std::string::npos) << msg;
}
