#include "roberta_tokenizer.hpp"

#include <algorithm>
#include <filesystem>
#include <stdexcept>

namespace roberta {

Tokenizer::Tokenizer(const std::string& vocab_json, const std::string& merges_txt) : bpe_(vocab_json, merges_txt) {
  for (auto [token, id] : {std::pair<const char*, int64_t*>{"<s>", &bos_}, {"<pad>", &pad_}, {"</s>", &eos_}, {"<unk>", &unk_}, {"<mask>", &mask_}}) {
    *id = bpe_.id_of(token);
    if (*id < 0)
      throw std::runtime_error("RoBERTa vocabulary '" + vocab_json + "' has no '" + token +
                               "' entry: is it GPT-2's vocab.json? RoBERTa's (roberta-base's vocab.json) is needed");
  }
}

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  for (const char* f : {"vocab.json", "merges.txt"})
    if (!std::filesystem::exists(dir + "/" + f))
      throw std::runtime_error("tokenizer file '" + dir + "/" + f + "' not found: RoBERTa's vocab.json and merges.txt are needed");
  return Tokenizer(dir + "/vocab.json", dir + "/merges.txt");
}

void truncate_longest_first(std::vector<int64_t>& a, std::vector<int64_t>& b, int64_t budget) {
  if (budget < 0) throw std::invalid_argument("truncate_longest_first: negative budget " + std::to_string(budget));
  int64_t na = static_cast<int64_t>(a.size()), nb = static_cast<int64_t>(b.size());
  if (na + nb <= budget) return;
  const bool swapped = na > nb;  // n1: the shorter
  int64_t n1 = swapped ? nb : na, n2 = swapped ? na : nb;
  n2 = n1 > budget ? n1 : std::max(n1, budget - n1);
  if (n1 + n2 > budget) {
    n1 = budget / 2;
    n2 = n1 + budget % 2;
  }
  if (swapped) std::swap(n1, n2);
  a.resize(static_cast<size_t>(std::min(na, n1)));
  b.resize(static_cast<size_t>(std::min(nb, n2)));
}

std::vector<int64_t> Tokenizer::encode_example(const std::string& a, const std::string& b, int64_t max_len) const {
  const bool pair = !b.empty();
  const int64_t specials = pair ? 4 : 2;
  if (max_len < specials)
    throw std::invalid_argument("encode_example: max_len " + std::to_string(max_len) + " leaves no room for the " +
                                std::to_string(specials) + " special tokens");
  std::vector<int64_t> x = encode(a), y = pair ? encode(b) : std::vector<int64_t>{};
  truncate_longest_first(x, y, max_len - specials);
  std::vector<int64_t> ids{bos_};
  ids.insert(ids.end(), x.begin(), x.end());
  ids.push_back(eos_);
  if (pair) {
    ids.push_back(eos_);
    ids.insert(ids.end(), y.begin(), y.end());
    ids.push_back(eos_);
  }
  return ids;
}

}  // namespace roberta
