#include "tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace gpt2 {

namespace {

// encoder.py's pattern. Python's `regex` \s is Unicode White_Space, which PCRE2's \s is not
// (it lacks U+0085), so the class is spelled out.
#define GPT2_WS "\\t\\n\\x0B\\f\\r\\x20\\x85\\xA0\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
constexpr const char* kPattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" GPT2_WS "\\p{L}\\p{N}]+|[" GPT2_WS "]+(?![^" GPT2_WS "])|[" GPT2_WS "]+";
#undef GPT2_WS

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

/// Splits valid UTF-8 into code points (text from vocab.json is valid: nlohmann checks).
std::vector<uint32_t> code_points(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<uint8_t>(s[i]);
    const int len = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    uint32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    for (int k = 1; k < len && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += len;
  }
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read '" + path + "'");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

std::string utf8_replace_invalid(const std::string& s) {
  static const std::string kReplacement = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(s.size());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const auto b = static_cast<uint8_t>(s[i]);
    if (b < 0x80) {
      out += static_cast<char>(b);
      ++i;
      continue;
    }
    int len = 0;
    uint8_t lo = 0x80, hi = 0xBF;  // valid range of the second byte
    if (b >= 0xC2 && b <= 0xDF) len = 2;
    else if (b == 0xE0) len = 3, lo = 0xA0;
    else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) len = 3;
    else if (b == 0xED) len = 3, hi = 0x9F;
    else if (b == 0xF0) len = 4, lo = 0x90;
    else if (b >= 0xF1 && b <= 0xF3) len = 4;
    else if (b == 0xF4) len = 4, hi = 0x8F;
    if (len == 0) {  // not a lead byte
      out += kReplacement;
      ++i;
      continue;
    }
    size_t k = 1;  // bytes of the maximal subpart so far
    while (k < static_cast<size_t>(len) && i + k < n) {
      const auto c = static_cast<uint8_t>(s[i + k]);
      const bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
      if (!ok) break;
      ++k;
    }
    if (k == static_cast<size_t>(len)) out.append(s, i, len);
    else out += kReplacement;  // one U+FFFD for the whole maximal subpart
    i += k;
  }
  return out;
}

struct Tokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

Tokenizer::Tokenizer(const std::string& vocab_json, const std::string& merges_txt) : regex_(new Regex) {
  // bytes_to_unicode(): printable bytes map to themselves, the others to 256 + n in order.
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
    byte_to_unicode_[b] = utf8(cp);
    unicode_to_byte_[cp] = static_cast<uint8_t>(b);
  }

  nlohmann::json vocab;
  try {
    vocab = nlohmann::json::parse(read_file(vocab_json));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error("'" + vocab_json + "' is not valid JSON: " + e.what());
  }
  if (!vocab.is_object() || vocab.empty()) throw std::runtime_error("'" + vocab_json + "' is not a token -> id object");
  id_to_token_.resize(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) throw std::runtime_error("'" + vocab_json + "': token '" + it.key() + "' has no integer id");
    const auto id = it.value().get<int64_t>();
    if (id < 0 || id >= static_cast<int64_t>(vocab.size()) || !id_to_token_[id].empty())
      throw std::runtime_error("'" + vocab_json + "': id " + std::to_string(id) + " of token '" + it.key() +
                               "' is out of range or repeated");
    id_to_token_[id] = it.key();
    token_to_id_[it.key()] = id;
  }
  if (auto it = token_to_id_.find("<|endoftext|>"); it != token_to_id_.end()) eos_ = it->second;

  std::istringstream merges(read_file(merges_txt));
  std::string line;
  int rank = 0, line_no = 0;
  while (std::getline(merges, line)) {
    ++line_no;
    if (line_no == 1 && line.rfind("#version", 0) == 0) continue;
    if (line.empty()) continue;
    const auto space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == line.size() || line.find(' ', space + 1) != std::string::npos)
      throw std::runtime_error("'" + merges_txt + "' line " + std::to_string(line_no) + ": expected two symbols separated by one space");
    ranks_.emplace(line, rank++);
  }
  if (rank == 0) throw std::runtime_error("'" + merges_txt + "' has no merges");

  int error = 0;
  PCRE2_SIZE offset = 0;
  regex_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                               &error, &offset, nullptr);
  if (!regex_->code) throw std::logic_error("gpt2::Tokenizer: the pre-tokenizer regex does not compile");
  pcre2_jit_compile(regex_->code, PCRE2_JIT_COMPLETE);  // optional: falls back to the interpreter
}

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  for (const char* f : {"vocab.json", "merges.txt"})
    if (!std::filesystem::exists(dir + "/" + f))
      throw std::runtime_error("tokenizer file '" + dir + "/" + f + "' not found: GPT-2's vocab.json and merges.txt are needed");
  return Tokenizer(dir + "/vocab.json", dir + "/merges.txt");
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<std::string> Tokenizer::bpe(const std::string& token) const {
  std::vector<std::string> word;
  for (uint32_t cp : code_points(token)) word.push_back(utf8(cp));
  while (word.size() > 1) {
    int best = std::numeric_limits<int>::max();
    size_t at = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      auto it = ranks_.find(word[i] + " " + word[i + 1]);
      if (it != ranks_.end() && it->second < best) best = it->second, at = i;
    }
    if (best == std::numeric_limits<int>::max()) break;
    const std::string first = word[at], second = word[at + 1];
    std::vector<std::string> merged;
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
        merged.push_back(first + second);
        i += 2;
      } else {
        merged.push_back(word[i++]);
      }
    }
    word.swap(merged);
  }
  return word;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int64_t> ids;
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
      pcre2_match_data_create_from_pattern(regex_->code, nullptr), &pcre2_match_data_free);
  pcre2_match_data* md = match.get();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  PCRE2_SIZE at = 0;
  uint32_t options = 0;
  while (at < text.size()) {
    const int rc = pcre2_match(regex_->code, subject, text.size(), at, options, md, nullptr);
    options = PCRE2_NO_UTF_CHECK;  // the whole subject was checked by the first call
    if (rc < 0) {
      if (rc == PCRE2_ERROR_NOMATCH) break;
      throw std::invalid_argument("gpt2::Tokenizer::encode: the text is not valid UTF-8 (PCRE2 error " +
                                  std::to_string(rc) + " near byte " + std::to_string(at) + ")");
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const std::string piece = text.substr(ov[0], ov[1] - ov[0]);
    at = ov[1] > ov[0] ? ov[1] : ov[0] + 1;
    {
      std::lock_guard<std::mutex> lock(*cache_mutex_);
      auto hit = cache_.find(piece);
      if (hit != cache_.end()) {
        ids.insert(ids.end(), hit->second.begin(), hit->second.end());
        continue;
      }
    }
    std::string mapped;
    for (unsigned char b : piece) mapped += byte_to_unicode_[b];
    std::vector<int64_t> piece_ids;
    for (const auto& sym : bpe(mapped)) {
      auto it = token_to_id_.find(sym);
      if (it == token_to_id_.end())
        throw std::runtime_error("gpt2::Tokenizer: BPE produced '" + sym + "', which vocab.json lacks: mismatched vocab and merges?");
      piece_ids.push_back(it->second);
    }
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    std::lock_guard<std::mutex> lock(*cache_mutex_);
    cache_.emplace(piece, std::move(piece_ids));
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string bytes;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size())
      throw std::out_of_range("gpt2::Tokenizer::decode: id " + std::to_string(id) + " is outside the vocabulary of " +
                              std::to_string(vocab_size()));
    for (uint32_t cp : code_points(id_to_token_[id])) {
      auto it = unicode_to_byte_.find(cp);
      if (it == unicode_to_byte_.end()) throw std::runtime_error("gpt2::Tokenizer: token " + std::to_string(id) + " is not byte-level");
      bytes += static_cast<char>(it->second);
    }
  }
  return utf8_replace_invalid(bytes);
}

}  // namespace gpt2
