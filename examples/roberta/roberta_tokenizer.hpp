#pragma once
// RoBERTa's tokenizer: GPT-2's byte-level BPE (gpt2::Tokenizer, not a copy) over RoBERTa's own
// vocab.json, whose ids differ from GPT-2's ("Hello" is 31414, not 15496), with its special
// tokens and HF's sequence layout. No torch here.

#include "tokenizer.hpp"  // gpt2::Tokenizer (examples/gpt2)

#include <cstdint>
#include <string>
#include <vector>

namespace roberta {

/// Example:
/// \code
///   auto tok = roberta::Tokenizer::from_dir("../shared/data/roberta");
///   tok.encode_example("Hello world", "", 512);  // {0, 31414, 232, 2}: <s> Hello world </s>
/// \endcode
class Tokenizer {
 public:
  /// Reads RoBERTa's vocab.json and merges.txt; an error names a missing special token.
  Tokenizer(const std::string& vocab_json, const std::string& merges_txt);
  static Tokenizer from_dir(const std::string& dir);

  /// Token ids of text, without special tokens (text such as "<s>" is not parsed as one).
  std::vector<int64_t> encode(const std::string& text) const { return bpe_.encode(text); }
  std::string decode(const std::vector<int64_t>& ids) const { return bpe_.decode(ids); }

  /// `<s> A </s>`, or `<s> A </s></s> B </s>` when `b` is non-empty (HF's RobertaTokenizer), at
  /// most `max_len` ids: the texts' tokens are cut longest first (truncate_longest_first).
  std::vector<int64_t> encode_example(const std::string& a, const std::string& b, int64_t max_len) const;

  int64_t bos_id() const { return bos_; }    ///< <s> (0)
  int64_t pad_id() const { return pad_; }    ///< <pad> (1)
  int64_t eos_id() const { return eos_; }    ///< </s> (2)
  int64_t unk_id() const { return unk_; }    ///< <unk> (3)
  int64_t mask_id() const { return mask_; }  ///< <mask> (50264)
  int64_t vocab_size() const { return bpe_.vocab_size(); }

 private:
  gpt2::Tokenizer bpe_;
  int64_t bos_ = 0, pad_ = 1, eos_ = 2, unk_ = 3, mask_ = 50264;
};

/// Cuts two token sequences to `budget` ids in all, as HF's fast tokenizers' "longest_first"
/// does: when the shorter fits in half the budget it is kept and the longer takes the rest;
/// otherwise the first gets budget / 2 and the second the remainder. (transformers' slow
/// tokenizers cut one token at a time from the longer, which differs only in how an odd budget
/// splits between two long texts; GLUE's 512 gives an even budget of 508.)
void truncate_longest_first(std::vector<int64_t>& a, std::vector<int64_t>& b, int64_t budget);

}  // namespace roberta
