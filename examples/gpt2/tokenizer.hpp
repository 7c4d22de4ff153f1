#pragma once
// GPT-2's byte-level BPE tokenizer (vocab.json + merges.txt), producing exactly the ids of
// OpenAI's encoder.py (as used by microsoft/LoRA). No torch here.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace gpt2 {

class Tokenizer {
 public:
  /// Reads `vocab.json` (token → id) and `merges.txt` (first line "#version: ...", then one
  /// merge "a b" per line, best first). Throws std::runtime_error naming the file on bad input.
  Tokenizer(const std::string& vocab_json, const std::string& merges_txt);
  /// The same from a folder holding both files.
  static Tokenizer from_dir(const std::string& dir);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  /// Token ids of UTF-8 text: pre-tokenized by GPT-2's regex, bytes mapped to unicode, BPE-merged.
  std::vector<int64_t> encode(const std::string& text) const;
  /// Text of token ids; byte sequences that are not valid UTF-8 become U+FFFD, as Python's
  /// `bytes.decode("utf-8", errors="replace")` does. Throws on an id outside the vocabulary.
  std::string decode(const std::vector<int64_t>& ids) const;

  int64_t vocab_size() const { return static_cast<int64_t>(id_to_token_.size()); }
  /// The id of a vocabulary entry ("<s>", "ĠHello"), or -1 when vocab.json has none.
  int64_t id_of(const std::string& token) const {
    const auto it = token_to_id_.find(token);
    return it == token_to_id_.end() ? -1 : it->second;
  }
  int64_t eos_id() const { return eos_; }

 private:
  std::vector<std::string> bpe(const std::string& word) const;

  std::unordered_map<std::string, int64_t> token_to_id_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int> ranks_;  // "a b" -> merge rank
  std::string byte_to_unicode_[256];            // UTF-8 of the code point each byte maps to
  std::unordered_map<uint32_t, uint8_t> unicode_to_byte_;
  int64_t eos_ = 50256;
  struct Regex;
  std::unique_ptr<Regex> regex_;
  // encode() is const and may run on several threads at once (a pointer keeps the class movable)
  std::unique_ptr<std::mutex> cache_mutex_ = std::make_unique<std::mutex>();
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache_;
};

/// Replaces invalid UTF-8 in `bytes` by U+FFFD, one per maximal invalid subpart (CPython's rule).
std::string utf8_replace_invalid(const std::string& bytes);

}  // namespace gpt2
