#include "scorer.hpp"

#include "data.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <stdexcept>

namespace e2e {

namespace {

using Tokens = std::vector<std::string>;
using NGram = std::string;  // tokens joined by ' '

/// Counts of all n-grams of orders 1..max_n (mteval's Words2Ngrams).
std::map<NGram, int> ngram_counts(const Tokens& w, int max_n) {
  std::map<NGram, int> out;
  for (size_t i = 0; i < w.size(); ++i) {
    std::string g;
    for (int j = 0; j < max_n && i + j < w.size(); ++j) {
      g += (j ? " " : "") + w[i + j];
      ++out[g];
    }
  }
  return out;
}

int order_of(const NGram& g) { return 1 + static_cast<int>(std::count(g.begin(), g.end(), ' ')); }

/// References padded as measure_scores.py pads them for mteval: every MR gets as many reference
/// slots as the MR with the most references; missing ones are empty segments.
std::vector<std::vector<Tokens>> padded_mteval_refs(const std::vector<std::vector<std::string>>& refs) {
  size_t most = 0;
  for (const auto& r : refs) most = std::max(most, r.size());
  std::vector<std::vector<Tokens>> out;
  for (const auto& r : refs) {
    std::vector<Tokens> seg;
    for (size_t k = 0; k < most; ++k) seg.push_back(k < r.size() ? mteval_tokens(r[k]) : Tokens());
    out.push_back(seg);
  }
  return out;
}

void check_sizes(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs) {
  if (hyps.size() != refs.size())
    throw std::invalid_argument("scorer: " + std::to_string(hyps.size()) + " hypotheses but " + std::to_string(refs.size()) +
                                " reference groups: the files do not belong together");
  if (hyps.empty()) throw std::invalid_argument("scorer: nothing to score");
  for (size_t i = 0; i < refs.size(); ++i)
    if (refs[i].empty())
      throw std::invalid_argument("scorer: MR " + std::to_string(i + 1) +
                                  " has no references (every hypothesis needs at least one; in a references file, MRs "
                                  "are separated by exactly one blank line)");
}

std::string lower_ascii(std::string s) {
  for (auto& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

}  // namespace

std::vector<std::string> mteval_tokens(const std::string& text) {
  // mteval-v13a's tokenization(), in the same order; std::regex_replace, like Perl's s///g,
  // replaces non-overlapping matches from left to right.
  static const std::vector<std::pair<std::regex, std::string>> sgml = {
      {std::regex("<skipped>"), ""}, {std::regex("-\n"), ""},     {std::regex("\n"), " "},   {std::regex("&quot;"), "\""},
      {std::regex("&amp;"), "&"},    {std::regex("&lt;"), "<"},   {std::regex("&gt;"), ">"}};
  std::string s = text;
  for (const auto& [re, with] : sgml) s = std::regex_replace(s, re, with);
  s = lower_ascii(" " + s + " ");
  static const std::regex punct(R"(([\{-\~\[-\` -\&\(-\+\:-\@\/]))");
  static const std::regex before(R"(([^0-9])([\.,]))"), after(R"(([\.,])([^0-9]))"), dash(R"(([0-9])(-))");
  s = std::regex_replace(s, punct, " $1 ");
  s = std::regex_replace(s, before, "$1 $2 ");
  s = std::regex_replace(s, after, " $1 $2");
  s = std::regex_replace(s, dash, "$1 $2 ");
  Tokens out;
  std::string cur;
  for (char c : s) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      if (!cur.empty()) out.push_back(cur), cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

std::vector<std::string> ptb_tokens(const std::string& text) {
  // Split on whitespace, then peel punctuation and clitics off each chunk as the PTB tokenizer does.
  static const std::set<std::string> removed = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"};
  static const std::vector<std::string> clitics = {"n't", "'s", "'re", "'ve", "'ll", "'d", "'m"};
  static const std::map<std::string, std::string> brackets = {{"(", "-lrb-"}, {")", "-rrb-"}, {"{", "-lcb-"},
                                                               {"}", "-rcb-"}, {"[", "-lsb-"}, {"]", "-rsb-"}};
  std::string s = lower_ascii(text);
  // Curly quotes and double quotes become quote tokens (removed below).
  for (const auto& q : {std::string("\xE2\x80\x9C"), std::string("\xE2\x80\x9D"), std::string("\"")}) {
    for (size_t at = s.find(q); at != std::string::npos; at = s.find(q, at + 4)) s.replace(at, q.size(), " `` ");
  }
  for (size_t at = s.find("\xE2\x80\x99"); at != std::string::npos; at = s.find("\xE2\x80\x99", at)) s.replace(at, 3, "'");
  Tokens out;
  auto emit = [&](const std::string& t) {
    if (t.empty()) return;
    auto b = brackets.find(t);
    const std::string tok = b != brackets.end() ? b->second : t;
    if (!removed.count(tok) && tok != "``") out.push_back(tok);
  };
  std::string chunk;
  auto flush = [&] {
    std::string w = chunk;
    chunk.clear();
    std::vector<std::string> tail;
    // Leading punctuation, brackets and currency symbols (a clitic such as "'s" stays whole).
    while (!w.empty() && std::find(clitics.begin(), clitics.end(), w) == clitics.end()) {
      if (std::string("([{\"'`$#&").find(w[0]) != std::string::npos) {
        emit(std::string(1, w[0]));
        w.erase(0, 1);
      } else if (w.compare(0, 2, "\xC2\xA3") == 0 || w.compare(0, 3, "\xE2\x82\xAC") == 0) {  // £, €
        const size_t n = w[0] == '\xC2' ? 2 : 3;
        emit(w.substr(0, n));
        w.erase(0, n);
      } else {
        break;
      }
    }
    // Trailing punctuation and brackets (a period stays inside numbers and abbreviations like "a.m.").
    while (!w.empty()) {
      const char c = w.back();
      if (std::string(",;:?!)]}\"'`").find(c) != std::string::npos) {
        if (c == '\'' && w.size() > 1 && w[w.size() - 2] == 's') {  // plural possessive: dogs'
          tail.insert(tail.begin(), "'");
          w.pop_back();
          continue;
        }
        tail.insert(tail.begin(), std::string(1, c));
        w.pop_back();
      } else if (c == '.') {
        size_t dots = 0;
        while (dots < w.size() && w[w.size() - 1 - dots] == '.') ++dots;
        const std::string stem = w.substr(0, w.size() - dots);
        const bool abbrev = dots == 1 && stem.find('.') != std::string::npos;  // e.g. "u.s."
        if (abbrev) break;
        tail.insert(tail.begin(), dots >= 3 ? "..." : std::string(dots, '.'));
        w = stem;
      } else {
        break;
      }
    }
    // Clitics at the end of the word.
    for (const auto& c : clitics) {
      if (w.size() > c.size() && w.compare(w.size() - c.size(), c.size(), c) == 0) {
        tail.insert(tail.begin(), c);
        w.erase(w.size() - c.size());
        break;
      }
    }
    emit(w);
    for (const auto& t : tail) emit(t);
  };
  for (char c : s) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') flush();
    else chunk += c;
  }
  flush();
  return out;
}

double bleu(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs) {
  check_sizes(hyps, refs);
  const auto padded = padded_mteval_refs(refs);
  double ref_length = 0;
  std::vector<double> match(5, 0), tst(5, 0);
  for (size_t i = 0; i < hyps.size(); ++i) {
    const Tokens h = mteval_tokens(hyps[i]);
    const auto hc = ngram_counts(h, 4);
    std::map<NGram, int> ref_max;
    long closest = -1;
    for (const auto& r : padded[i]) {
      for (const auto& [g, c] : ngram_counts(r, 4)) ref_max[g] = std::max(ref_max[g], c);
      const long len = static_cast<long>(r.size()), hl = static_cast<long>(h.size());
      if (closest < 0 || std::abs(hl - len) < std::abs(hl - closest) || (std::abs(hl - len) == std::abs(hl - closest) && len < closest))
        closest = len;
    }
    ref_length += static_cast<double>(closest);
    for (int n = 1; n <= 4; ++n) tst[n] += h.size() >= static_cast<size_t>(n) ? static_cast<double>(h.size() - n + 1) : 0.0;
    for (const auto& [g, c] : hc) {
      auto it = ref_max.find(g);
      if (it != ref_max.end()) match[order_of(g)] += std::min(c, it->second);
    }
  }
  // mteval's bleu_score(): zero matches smoothed as 1 / 2^k.
  double score = 0, smooth = 1;
  const double bp = tst[1] > 0 ? std::exp(std::min(0.0, 1.0 - ref_length / tst[1])) : 0.0;
  for (int n = 1; n <= 4; ++n) {
    if (tst[n] == 0) continue;
    if (match[n] == 0) {
      smooth *= 2;
      score += std::log(1.0 / (smooth * tst[n]));
    } else {
      score += std::log(match[n] / tst[n]);
    }
  }
  return std::exp(score / 4) * bp;
}

double nist(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs) {
  check_sizes(hyps, refs);
  const auto padded = padded_mteval_refs(refs);
  // Information weights from n-gram counts over all references (compute_ngram_info).
  std::map<NGram, double> count;
  double total_words = 0;
  for (const auto& seg : padded)
    for (const auto& r : seg) {
      total_words += static_cast<double>(r.size());
      for (const auto& [g, c] : ngram_counts(r, 5)) count[g] += c;
    }
  auto info = [&](const NGram& g) {
    const auto sp = g.rfind(' ');
    const double denom = sp == std::string::npos ? total_words : count[g.substr(0, sp)];
    return -std::log(count[g] / denom) / std::log(2.0);
  };
  std::vector<double> tst(6, 0), tst_info(6, 0);
  double ref_unigrams = 0, ref_segments = 0;
  for (size_t i = 0; i < hyps.size(); ++i) {
    const Tokens h = mteval_tokens(hyps[i]);
    std::map<NGram, int> ref_max;
    for (const auto& r : padded[i]) {
      for (const auto& [g, c] : ngram_counts(r, 5)) ref_max[g] = std::max(ref_max[g], c);
      ref_unigrams += static_cast<double>(r.size());
    }
    for (const auto& r : refs[i]) ref_segments += r.empty() ? 0 : 1;  // non-empty references
    for (int n = 1; n <= 5; ++n) tst[n] += h.size() >= static_cast<size_t>(n) ? static_cast<double>(h.size() - n + 1) : 0.0;
    for (const auto& [g, c] : ngram_counts(h, 5)) {
      auto it = ref_max.find(g);
      if (it != ref_max.end()) tst_info[order_of(g)] += info(g) * std::min(c, it->second);
    }
  }
  const double nsys = ref_segments / static_cast<double>(hyps.size());  // average references per segment
  const double ratio = tst[1] / (ref_unigrams / nsys);
  double penalty = 1;
  if (ratio <= 0) penalty = 0;
  else if (ratio < 1) {
    const double beta = -std::log(0.5) / std::log(1.5) / std::log(1.5);
    penalty = std::exp(-beta * std::log(ratio) * std::log(ratio));
  }
  double score = 0;
  for (int n = 1; n <= 5; ++n) score += tst_info[n] / std::max(tst[n], 1.0);
  return score * penalty;
}

namespace {

Tokens coco_split(const std::vector<std::string>& tokens) {
  // pycocoevalcap joins tokens with ' ' and ROUGE splits with split(" "): an empty caption is one empty token.
  return tokens.empty() ? Tokens{""} : tokens;
}

size_t lcs(const Tokens& a, const Tokens& b) {
  std::vector<size_t> prev(b.size() + 1, 0), cur(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) cur[j] = a[i - 1] == b[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

double rouge_l(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs) {
  check_sizes(hyps, refs);
  const double beta = 1.2;
  double sum = 0;
  for (size_t i = 0; i < hyps.size(); ++i) {
    const Tokens c = coco_split(ptb_tokens(hyps[i]));
    double prec = 0, rec = 0;
    for (const auto& ref : refs[i]) {
      const Tokens r = coco_split(ptb_tokens(ref));
      const double l = static_cast<double>(lcs(r, c));
      prec = std::max(prec, l / static_cast<double>(c.size()));
      rec = std::max(rec, l / static_cast<double>(r.size()));
    }
    sum += prec != 0 && rec != 0 ? (1 + beta * beta) * prec * rec / (rec + beta * beta * prec) : 0.0;
  }
  return sum / static_cast<double>(hyps.size());
}

double cider(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs) {
  check_sizes(hyps, refs);
  const int N = 4;
  const double sigma = 6.0;
  auto counts = [&](const std::string& s) { return ngram_counts(ptb_tokens(s), N); };
  std::vector<std::map<NGram, int>> test;
  std::vector<std::vector<std::map<NGram, int>>> ref_counts;
  std::map<NGram, double> df;  // in how many MRs' references an n-gram occurs
  for (size_t i = 0; i < hyps.size(); ++i) {
    test.push_back(counts(hyps[i]));
    std::vector<std::map<NGram, int>> rc;
    std::set<NGram> seen;
    for (const auto& r : refs[i]) {
      rc.push_back(counts(r));
      for (const auto& kv : rc.back()) seen.insert(kv.first);
    }
    for (const auto& g : seen) df[g] += 1;
    ref_counts.push_back(rc);
  }
  const double log_ref_len = std::log(static_cast<double>(hyps.size()));
  struct Vec {
    std::vector<std::map<NGram, double>> v = std::vector<std::map<NGram, double>>(4);
    std::vector<double> norm = std::vector<double>(4, 0.0);
    double length = 0;
  };
  auto to_vec = [&](const std::map<NGram, int>& cnts) {
    Vec out;
    for (const auto& [g, tf] : cnts) {
      auto it = df.find(g);
      const double d = std::log(std::max(1.0, it == df.end() ? 0.0 : it->second));
      const int n = order_of(g) - 1;
      out.v[n][g] = tf * (log_ref_len - d);
      out.norm[n] += out.v[n][g] * out.v[n][g];
      if (n == 1) out.length += tf;  // as pycocoevalcap: the "length" counts bigrams
    }
    for (auto& x : out.norm) x = std::sqrt(x);
    return out;
  };
  double total = 0;
  for (size_t i = 0; i < hyps.size(); ++i) {
    const Vec h = to_vec(test[i]);
    std::vector<double> score(N, 0.0);
    for (const auto& rc : ref_counts[i]) {
      const Vec r = to_vec(rc);
      const double delta = h.length - r.length;
      for (int n = 0; n < N; ++n) {
        double val = 0;
        for (const auto& [g, w] : h.v[n]) {
          auto it = r.v[n].find(g);
          const double rw = it == r.v[n].end() ? 0.0 : it->second;
          val += std::min(w, rw) * rw;
        }
        if (h.norm[n] != 0 && r.norm[n] != 0) val /= h.norm[n] * r.norm[n];
        score[n] += val * std::exp(-(delta * delta) / (2 * sigma * sigma));
      }
    }
    double avg = 0;
    for (double s : score) avg += s / N;
    total += avg / static_cast<double>(refs[i].size()) * 10.0;
  }
  return total / static_cast<double>(hyps.size());
}

Scores score(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs) {
  return {bleu(hyps, refs), nist(hyps, refs), rouge_l(hyps, refs), cider(hyps, refs)};
}

std::vector<std::string> read_hypotheses(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read hypothesis file '" + path + "'");
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(strip(line));
  return out;
}

std::vector<std::vector<std::string>> read_references(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read reference file '" + path + "'");
  std::vector<std::vector<std::string>> out(1);
  for (std::string line; std::getline(in, line);) {
    line = strip(line);
    if (line.empty()) out.emplace_back();
    else out.back().push_back(line);
  }
  if (out.back().empty()) out.pop_back();
  for (size_t i = 0; i < out.size(); ++i)
    if (out[i].empty())
      throw std::runtime_error("'" + path + "': MR " + std::to_string(i + 1) + " has no references (two blank lines in a row?)");
  return out;
}

}  // namespace e2e
