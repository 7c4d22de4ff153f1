// RoBERTa's tokenizer: transformers' docstring ids, HF's pair layout and longest-first cut, and
// every RTE line of ../shared computed another way (GPT-2's tokenizer and vocabulary, each token
// string looked up in RoBERTa's vocab.json: the two share merges and byte mapping, not ids).
#include <gtest/gtest.h>

#include "roberta_tokenizer.hpp"

#include <lora_test/errors.hpp>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

namespace fs = std::filesystem;

namespace {

std::string data_dir(const char* env, const std::string& sub) {
  if (const char* v = std::getenv(env)) return v;
  return std::string(LORA_SOURCE_DIR) + "/../shared/data/" + sub;
}

#define REQUIRE_ROBERTA_FILES()                                                                                      \
  if (!fs::exists(data_dir("LORA_ROBERTA_DIR", "roberta") + "/vocab.json"))                                          \
  GTEST_SKIP() << "RoBERTa tokenizer files not found in " << data_dir("LORA_ROBERTA_DIR", "roberta")                 \
               << " (set LORA_ROBERTA_DIR to a folder with roberta-base's vocab.json and merges.txt)"

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

}  // namespace

TEST(RobertaTokenizer, DocstringIdsAndSpecialTokens) {
  REQUIRE_ROBERTA_FILES();
  const auto tok = roberta::Tokenizer::from_dir(data_dir("LORA_ROBERTA_DIR", "roberta"));
  // transformers' RobertaTokenizer docstring: tokenizer("Hello world")["input_ids"] and the same with a leading space.
  EXPECT_EQ(tok.encode_example("Hello world", "", 512), (std::vector<int64_t>{0, 31414, 232, 2}));
  EXPECT_EQ(tok.encode_example(" Hello world", "", 512), (std::vector<int64_t>{0, 20920, 232, 2}));
  EXPECT_EQ(tok.pad_id(), 1);
  EXPECT_EQ(tok.unk_id(), 3);
  EXPECT_EQ(tok.mask_id(), 50264);
  EXPECT_EQ(tok.vocab_size(), 50265);
  // A pair: <s> A </s></s> B </s>.
  std::vector<int64_t> pair = {0, 31414, 2, 2};
  for (int64_t id : tok.encode("world")) pair.push_back(id);
  pair.push_back(2);
  EXPECT_EQ(tok.encode_example("Hello", "world", 512), pair);
  // Cut to 7: 3 ids for the texts, the longer ("a b c d e") loses first.
  const auto cut = tok.encode_example("Hi", "a b c d e", 7);
  ASSERT_EQ(cut.size(), 7u);
  EXPECT_EQ(cut[1], tok.encode("Hi")[0]);
  const auto longer = tok.encode("a b c d e");
  ASSERT_EQ(longer.size(), 5u);
  EXPECT_EQ(std::vector<int64_t>(cut.begin() + 4, cut.end() - 1), std::vector<int64_t>(longer.begin(), longer.begin() + 2));
}

TEST(RobertaTokenizer, LongestFirstKeepsTheShorterWhenItCan) {
  auto ids = [](int64_t n, int64_t base) {
    std::vector<int64_t> v;
    for (int64_t i = 0; i < n; ++i) v.push_back(base + i);
    return v;
  };
  auto a = ids(10, 100), b = ids(3, 200);
  roberta::truncate_longest_first(a, b, 8);  // the shorter (3) fits: the longer keeps 5, its first ones
  EXPECT_EQ(a, ids(5, 100));
  EXPECT_EQ(b, ids(3, 200));
  a = ids(2, 100), b = ids(9, 200);
  roberta::truncate_longest_first(a, b, 6);
  EXPECT_EQ(a.size(), 2u);
  EXPECT_EQ(b, ids(4, 200));
  a = ids(10, 100), b = ids(12, 200);
  roberta::truncate_longest_first(a, b, 9);  // both long: 4 and 5
  EXPECT_EQ(a.size(), 4u);
  EXPECT_EQ(b.size(), 5u);
  a = ids(3, 100), b = ids(3, 200);
  roberta::truncate_longest_first(a, b, 10);  // fits: untouched
  EXPECT_EQ(a.size() + b.size(), 6u);
  EXPECT_NE(lora_test::error_of([] { roberta::Tokenizer::from_dir("/nonexistent"); }).find("RoBERTa's vocab.json and merges.txt"),
            std::string::npos);
  EXPECT_NE(lora_test::error_of([&] { roberta::truncate_longest_first(a, b, -1); }).find("negative budget"), std::string::npos);
}

TEST(RobertaTokenizer, RteLinesMatchGpt2TokensLookedUpInRobertasVocabulary) {
  REQUIRE_ROBERTA_FILES();
  const std::string rte = data_dir("LORA_GLUE_DIR", "glue") + "/RTE/dev.tsv", gpt2_dir = data_dir("LORA_GPT2_DIR", "gpt2");
  if (!fs::exists(rte) || !fs::exists(gpt2_dir + "/vocab.json")) GTEST_SKIP() << "RTE dev.tsv or GPT-2's tokenizer files not found";
  const auto tok = roberta::Tokenizer::from_dir(data_dir("LORA_ROBERTA_DIR", "roberta"));
  const auto gpt2_tok = gpt2::Tokenizer::from_dir(gpt2_dir);
  std::unordered_map<int64_t, std::string> gpt2_token;
  const auto gpt2_vocab = read_json(gpt2_dir + "/vocab.json");
  for (const auto& [token, id] : gpt2_vocab.items()) gpt2_token[id.get<int64_t>()] = token;
  const auto roberta_vocab = read_json(data_dir("LORA_ROBERTA_DIR", "roberta") + "/vocab.json");
  std::ifstream in(rte);
  std::string line;
  std::getline(in, line);  // header
  size_t texts = 0;
  while (std::getline(in, line)) {
    std::istringstream cols(line);
    std::string index, s1, s2;
    std::getline(cols, index, '\t');
    std::getline(cols, s1, '\t');
    std::getline(cols, s2, '\t');
    for (const auto& text : {s1, s2}) {
      std::vector<int64_t> expected;
      for (int64_t id : gpt2_tok.encode(text)) expected.push_back(roberta_vocab.at(gpt2_token.at(id)).get<int64_t>());
      ASSERT_EQ(tok.encode(text), expected) << text;
      ++texts;
    }
  }
  EXPECT_EQ(texts, 2u * 277u);
}

TEST(RobertaTokenizer, GptTwosVocabularyIsRefusedByName) {
  const std::string gpt2_dir = data_dir("LORA_GPT2_DIR", "gpt2");
  if (!fs::exists(gpt2_dir + "/vocab.json")) GTEST_SKIP() << "GPT-2's tokenizer files not found in " << gpt2_dir;
  const auto msg = lora_test::error_of([&] { roberta::Tokenizer::from_dir(gpt2_dir); });
  EXPECT_NE(msg.find("has no '<s>' entry: is it GPT-2's vocab.json?"), std::string::npos) << msg;
}
