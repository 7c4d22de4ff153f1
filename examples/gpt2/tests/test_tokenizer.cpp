// GPT-2 byte-level BPE: ids equal OpenAI's encoder.py (as shipped by microsoft/LoRA) on every
// line of the E2E data and on hand-picked cases; decode(encode(s)) == s; invalid UTF-8 -> U+FFFD.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include "tokenizer.hpp"
#include "../../test_util.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

namespace {

using example_test::data_dir;


const gpt2::Tokenizer* tokenizer() {
  static std::unique_ptr<gpt2::Tokenizer> tok = [] {
    const auto dir = data_dir("LORA_GPT2_DIR", "gpt2");
    return std::filesystem::exists(dir + "/vocab.json") ? std::make_unique<gpt2::Tokenizer>(gpt2::Tokenizer::from_dir(dir))
                                                        : nullptr;
  }();
  return tok.get();
}

#define REQUIRE_TOKENIZER()                                                                                  \
  if (!tokenizer())                                                                                          \
  GTEST_SKIP() << "GPT-2 tokenizer files not found in " << data_dir("LORA_GPT2_DIR", "gpt2")                 \
               << " (set LORA_GPT2_DIR to a folder with vocab.json and merges.txt)"

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) out += {hex[md[i] >> 4], hex[md[i] & 15]};
  return out;
}

}  // namespace

TEST(Tokenizer, HandPickedCasesMatchReferenceIds) {
  REQUIRE_TOKENIZER();
  // Ids printed by microsoft/LoRA's examples/NLG/src/encoder.py (python3-regex 2.5.123) for these strings.
  const std::vector<std::pair<std::string, std::vector<int64_t>>> cases = {
      {"Hello world", {15496, 995}},
      {"I'm sure they've said it's 'fine', we'll see; I'd go.",
       {40, 1101, 1654, 484, 1053, 531, 340, 338, 705, 38125, 3256, 356, 1183, 766, 26, 314, 1549, 467, 13}},
      {"  leading and  double  spaces \n\n trailing  ", {220, 3756, 290, 220, 4274, 220, 9029, 220, 628, 25462, 220, 220}},
      {"tab\tand\nnewline\r\n", {8658, 197, 392, 198, 3605, 1370, 201, 198}},
      {"naïve café £30 5 star ★★★", {2616, 38776, 40304, 4248, 1270, 642, 3491, 23883, 28353}},
      {"日本語のテキスト", {33768, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302}},
      {"emoji 😀👍🏽 mixed", {368, 31370, 30325, 222, 41840, 235, 8582, 237, 121, 7668}},
      {"Ünïcödé ÀÉÎ ß ΣΩ", {127, 250, 77, 26884, 66, 9101, 67, 2634, 6184, 222, 38351, 127, 236, 6184, 253, 7377, 96, 138, 102}},
      {"numbers 123 4.56 7,890 ½ ²", {77, 17024, 17031, 604, 13, 3980, 767, 11, 23, 3829, 25208, 1587, 110}},
      {"<|endoftext|>", {27, 91, 437, 1659, 5239, 91, 29}},
      {"a\u0085b\u00a0c\u2003d\u3000e", {64, 126, 227, 65, 1849, 66, 447, 225, 67, 5099, 222, 68}},
      {"CAPS DON'T CONTRACT", {33177, 50, 23917, 6, 51, 27342, 10659}},
      {"x  \t y", {87, 220, 220, 197, 331}},
      {"name : The Vaults | Type : pub | price : more than £ 30 ||The Vaults pub near Café Adriatic has a 5 star rating . ",
       {3672, 1058, 383, 21314, 930, 5994, 1058, 2240, 930, 2756, 1058, 517, 621, 4248, 1542, 8614, 464, 21314, 2240, 1474,
        42151, 1215, 380, 1512, 468, 257, 642, 3491, 7955, 764, 220}},
      {"", {}},
      {" ", {220}},
      {"\n", {198}},
      {"'s'S", {338, 6, 50}},
      {"   ", {220, 220, 220}},
  };
  for (const auto& [text, ids] : cases) {
    EXPECT_EQ(tokenizer()->encode(text), ids) << "text: '" << text << "'";
    EXPECT_EQ(tokenizer()->decode(ids), text);
  }
  EXPECT_EQ(tokenizer()->eos_id(), 50256);
  EXPECT_EQ(tokenizer()->vocab_size(), 50257);
}

TEST(Tokenizer, EveryE2ELineMatchesReferenceDigest) {
  REQUIRE_TOKENIZER();
  const auto dir = data_dir("LORA_E2E_DIR", "e2e");
  if (!std::filesystem::exists(dir + "/test.txt"))
    GTEST_SKIP() << "E2E data not found in " << dir << " (set LORA_E2E_DIR)";
  // SHA-256 of "ids joined by spaces + \n" per line (line without its \n), from encoder.py.
  const std::vector<std::tuple<std::string, size_t, std::string>> files = {
      {"train.txt", 42061, "82e23fe6de7bb9126b09fae845970491f5f59363b83e0197528bef99df331bac"},
      {"valid.txt", 4672, "40e53c1d8c7a529480df462191b4e8919f98dce0530a21943e6388937e7e7ddf"},
      {"test.txt", 4693, "8b8112879b4ce8f0aec5f803beca8736c4742817acd17450e8f07a089c02ae18"},
  };
  for (const auto& [name, lines, digest] : files) {
    std::ifstream in(dir + "/" + name);
    std::string line, stream;
    size_t n = 0;
    while (std::getline(in, line)) {
      std::string ids;
      for (auto id : tokenizer()->encode(line)) ids += (ids.empty() ? "" : " ") + std::to_string(id);
      stream += ids + "\n";
      ++n;
    }
    EXPECT_EQ(n, lines) << name;
    EXPECT_EQ(sha256_hex(stream), digest) << name << ": token ids differ from the reference encoder";
  }
}

TEST(Tokenizer, DecodeOfEncodeIsIdentityOnRandomUtf8) {
  REQUIRE_TOKENIZER();
  std::mt19937 rng(0);
  const std::vector<uint32_t> pool = {'a', 'Z', ' ', '\n', '\t', '\'', '.', '7', 0xE9, 0xA3, 0x3A3, 0x5D0, 0x627, 0x4E2D,
                                      0x3042, 0x1F600, 0x2003, 0x85, 0x301, 0xFEFF, 0x10FFFF};
  for (int trial = 0; trial < 200; ++trial) {
    std::string s;
    const int len = static_cast<int>(rng() % 24);
    for (int i = 0; i < len; ++i) {
      uint32_t cp = pool[rng() % pool.size()];
      if (cp < 0x80) s += static_cast<char>(cp);
      else if (cp < 0x800) s += {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
      else if (cp < 0x10000)
        s += {static_cast<char>(0xE0 | (cp >> 12)), static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
      else
        s += {static_cast<char>(0xF0 | (cp >> 18)), static_cast<char>(0x80 | ((cp >> 12) & 0x3F)),
              static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
    }
    EXPECT_EQ(tokenizer()->decode(tokenizer()->encode(s)), s);
  }
}

TEST(Tokenizer, InvalidUtf8DecodesToReplacementLikeCPython) {
  // Expected values: bytes(...).decode("utf-8", errors="replace") in CPython 3.11.
  const std::string R = "\xEF\xBF\xBD";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"\xE2\x82", R},           {"a\xFF" "b", "a" + R + "b"},   {"\xF0\x80\x80", R + R + R}, {"\xED\xA0\x80", R + R + R},
      {"\xF4\x90\x80\x80", R + R + R + R}, {"\xC3\xA9\xE2\x82\xAC", "\xC3\xA9\xE2\x82\xAC"}, {"\xE2\x82\xC3\xA9", R + "\xC3\xA9"},
      {"\xC0\xAF", R + R},       {"\xF0\x9F\x98", R},
  };
  for (const auto& [in, out] : cases) EXPECT_EQ(gpt2::utf8_replace_invalid(in), out);
  REQUIRE_TOKENIZER();
  // Token 447 is the byte 0xE2 alone: a truncated sequence in model output.
  EXPECT_EQ(tokenizer()->decode({447}), R);
}

TEST(Tokenizer, BadInputsGiveClearErrors) {
  auto msg = [](auto fn) {
    try {
      fn();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(msg([] { gpt2::Tokenizer::from_dir("/nonexistent"); }).find("'/nonexistent/vocab.json' not found"), std::string::npos);
  auto dir = std::filesystem::temp_directory_path() / "gpt2_tok_bad";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "vocab.json") << R"({"a": 0, "b": 1, "ab": 2})";
  std::ofstream(dir / "merges.txt") << "#version: 0.2\na b\nthree parts here\n";
  EXPECT_NE(msg([&] { gpt2::Tokenizer::from_dir(dir.string()); }).find("merges.txt' line 3"), std::string::npos);
  std::ofstream(dir / "merges.txt") << "#version: 0.2\na b\n";
  gpt2::Tokenizer tiny = gpt2::Tokenizer::from_dir(dir.string());
  EXPECT_NE(msg([&] { tiny.encode("a\xFF"); }).find("not valid UTF-8"), std::string::npos);
  EXPECT_NE(msg([&] { tiny.decode({7}); }).find("id 7 is outside the vocabulary of 3"), std::string::npos);
}

TEST(Tokenizer, ConcurrentEncodesGiveTheSameIdsAsOneThread) {
  REQUIRE_TOKENIZER();
  // Many distinct words, so that the shared cache grows (and rehashes) while threads read it.
  std::vector<std::string> lines;
  std::mt19937 rng(5);
  for (int i = 0; i < 400; ++i) {
    std::string line;
    for (int w = 0; w < 12; ++w) line += " w" + std::to_string(rng() % 100000) + (w % 3 ? "ing" : "ed");
    lines.push_back(line);
  }
  gpt2::Tokenizer fresh = gpt2::Tokenizer::from_dir(data_dir("LORA_GPT2_DIR", "gpt2"));
  std::vector<std::vector<std::vector<int64_t>>> got(4, std::vector<std::vector<int64_t>>(lines.size()));
  std::vector<std::thread> threads;
  for (size_t t = 0; t < got.size(); ++t)
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < lines.size(); ++i) got[t][i] = fresh.encode(lines[(i + 97 * t) % lines.size()]);
    });
  for (auto& th : threads) th.join();
  for (size_t t = 0; t < got.size(); ++t)
    for (size_t i = 0; i < lines.size(); ++i)
      ASSERT_EQ(got[t][i], tokenizer()->encode(lines[(i + 97 * t) % lines.size()])) << "thread " << t << " line " << i;
}
