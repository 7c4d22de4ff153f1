// DeBERTa's tokenizer against SentencePiece's own API, on a small SentencePiece model trained here
// with DeBERTa's special pieces; the pair layout and truncation against counts; errors.
#include <gtest/gtest.h>

#include "deberta_tokenizer.hpp"

#include <lora_test/errors.hpp>

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <fstream>

#include <unistd.h>

namespace fs = std::filesystem;
using lora_test::error_of;

namespace {

const std::vector<std::string>& sentences() {
  static const std::vector<std::string> s = [] {
    const std::vector<std::string> subjects = {"The cat", "A man", "Two dogs", "The old woman", "Children", "A teacher"},
                                   verbs = {"is eating", "walks to", "sees", "likes", "painted", "reads about"},
                                   objects = {"the red house.", "an apple.", "the river bank.", "a long book.", "the Ünïcode café.",
                                              "3 green bottles."};
    std::vector<std::string> out;
    for (const auto& a : subjects)
      for (const auto& b : verbs)
        for (const auto& c : objects) out.push_back(a + " " + b + " " + c);
    return out;
  }();
  return s;
}

/// A unigram model trained on sentences() (once per process), by our helper and by hand.
struct Models {
  fs::path dir = fs::temp_directory_path() / ("deberta_spm_" + std::to_string(::getpid()));
  Models() {
    fs::create_directories(dir);
    std::ofstream text(dir / "corpus.txt");
    for (const auto& s : sentences()) text << s << "\n";
    text.close();
    deberta::train_sentencepiece((dir / "corpus.txt").string(), (dir / "spm").string(), 80);
    // SentencePiece's defaults (<unk> 0, <s> 1, </s> 2): not DeBERTa's pieces.
    const auto status = sentencepiece::SentencePieceTrainer::Train("--input=" + (dir / "corpus.txt").string() + " --model_prefix=" +
                                                                   (dir / "plain").string() + " --vocab_size=60 --hard_vocab_limit=false --minloglevel=2");
    EXPECT_TRUE(status.ok()) << status.ToString();
  }
  ~Models() { fs::remove_all(dir); }
};

const Models& models() {
  static Models m;
  return m;
}

}  // namespace

TEST(DebertaTokenizer, IdsEqualSentencePiecesOwnEncoding) {
  const auto model = (models().dir / "spm.model").string();
  const deberta::Tokenizer tok(model);
  sentencepiece::SentencePieceProcessor sp;
  ASSERT_TRUE(sp.Load(model).ok());
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_EQ(tok.cls_id(), 1);
  EXPECT_EQ(tok.sep_id(), 2);
  EXPECT_EQ(tok.unk_id(), 3);
  EXPECT_EQ(sp.IdToPiece(static_cast<int>(tok.mask_id())), "[MASK]");
  EXPECT_EQ(tok.vocab_size(), sp.GetPieceSize());
  for (const std::string text : {"The cat sees an apple.", "Two dogs painted the Ünïcode café.", "  spaces   and\ttabs ", "",
                                 "unseen words: xylophone QUIZ 42"}) {
    const std::vector<int> want = sp.EncodeAsIds(text);
    const auto got = tok.encode(text);
    ASSERT_EQ(got.size(), want.size()) << text;
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << text << " at " << i;
    if (!text.empty()) EXPECT_EQ(tok.decode(got), sp.DecodeIds(want));
  }
  // HF's layout: [CLS] A [SEP] and [CLS] A [SEP] B [SEP].
  const std::string a = "A man walks to the river bank.", b = "Children read.";
  std::vector<int64_t> pair{1};
  for (int id : sp.EncodeAsIds(a)) pair.push_back(id);
  pair.push_back(2);
  for (int id : sp.EncodeAsIds(b)) pair.push_back(id);
  pair.push_back(2);
  EXPECT_EQ(tok.encode_example(a, b, 512), pair);
  std::vector<int64_t> single(pair.begin(), pair.begin() + static_cast<int64_t>(sp.EncodeAsIds(a).size()) + 2);
  EXPECT_EQ(tok.encode_example(a, "", 512), single);
}

TEST(DebertaTokenizer, TruncationTakesOneTokenAtATimeFromTheLonger) {
  const deberta::Tokenizer tok((models().dir / "spm.model").string());
  const std::string a = "The old woman reads about the Ünïcode café. A teacher likes 3 green bottles.", b = "The cat is eating.";
  const auto na = static_cast<int64_t>(tok.encode(a).size()), nb = static_cast<int64_t>(tok.encode(b).size());
  ASSERT_GT(na, nb + 4);
  // Budget nb + 2 for the texts: the longer loses tokens down to nb, then they alternate, the pair's first.
  const int64_t max_len = 3 + nb + nb - 1;  // one below 2·nb: the pair gives one token
  const auto ids = tok.encode_example(a, b, max_len);
  ASSERT_EQ(static_cast<int64_t>(ids.size()), max_len);
  const auto sep = std::find(ids.begin() + 1, ids.end(), tok.sep_id());
  EXPECT_EQ(sep - ids.begin() - 1, nb);                      // A kept nb tokens
  EXPECT_EQ(ids.end() - sep - 2, nb - 1);                    // B kept nb - 1
  const auto a_ids = tok.encode(a), b_ids = tok.encode(b);
  EXPECT_TRUE(std::equal(ids.begin() + 1, sep, a_ids.begin()));  // the heads of each text
  EXPECT_TRUE(std::equal(sep + 1, ids.end() - 1, b_ids.begin()));
  EXPECT_NE(error_of([&] { tok.encode_example(a, b, 2); }).find("leaves no room for the 3 special tokens"), std::string::npos);
}

TEST(DebertaTokenizer, ErrorsNameTheFileAndTheMissingPiece) {
  EXPECT_NE(error_of([] { deberta::Tokenizer::from_dir("/nonexistent"); }).find("'/nonexistent/spm.model' not found"), std::string::npos);
  const auto junk = models().dir / "junk.model";
  std::ofstream(junk) << "not a model";
  EXPECT_NE(error_of([&] { deberta::Tokenizer t(junk.string()); }).find("is not a SentencePiece model"), std::string::npos);
  const auto msg = error_of([&] { deberta::Tokenizer t((models().dir / "plain.model").string()); });
  EXPECT_NE(msg.find("has no '[PAD]' piece: is it DeBERTa's spm.model?"), std::string::npos) << msg;
}
