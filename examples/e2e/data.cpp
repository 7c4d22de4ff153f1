#include "data.hpp"

#include "tokenizer.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <map>
#include <stdexcept>

namespace e2e {

std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const auto b = s.find_first_not_of(ws);
  return b == std::string::npos ? "" : s.substr(b, s.find_last_not_of(ws) - b + 1);
}

namespace {

std::ifstream open(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read E2E data file '" + path + "'");
  return in;
}

/// microsoft/LoRA's per-position loss from log-probabilities [..., V] and targets [...]:
/// (1 - ls) · NLL + ls · mean(-log p), or the plain NLL when ls is 0.
torch::Tensor token_loss(const torch::Tensor& logprobs, const torch::Tensor& target, double ls) {
  auto nll = -logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1);
  return ls > 1e-4 ? (1.0 - ls) * nll + ls * (-logprobs.mean(-1)) : nll;
}

}  // namespace

std::vector<Pair> read_pairs(const std::string& path) {
  auto in = open(path);
  std::vector<Pair> out;
  std::string line;
  for (size_t no = 1; std::getline(in, line); ++no) {
    const std::string s = strip(line);
    if (s.empty()) continue;
    const auto sep = s.find("||");
    if (sep == std::string::npos || s.find("||", sep + 2) != std::string::npos)
      throw std::runtime_error("'" + path + "' line " + std::to_string(no) +
                               ": expected 'meaning representation||reference' with exactly one '||'");
    out.push_back({s.substr(0, sep), s.substr(sep + 2)});
  }
  if (out.empty()) throw std::runtime_error("'" + path + "' holds no 'mr||ref' lines");
  return out;
}

std::vector<Pair> read_csv(const std::string& path) {
  const bool tsv = path.size() >= 4 && path.compare(path.size() - 4, 4, ".tsv") == 0;
  const char delimiter = tsv ? '\t' : ',';
  auto in = open(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::vector<std::string>> rows(1, std::vector<std::string>(1));
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    auto& field = rows.back().back();
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') field += '"', ++i;
      else if (c == '"') quoted = false;
      else field += c;
    } else if (c == '"') {
      quoted = true;
    } else if (c == delimiter) {
      rows.back().emplace_back();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      rows.emplace_back(1);
    } else {
      field += c;
    }
  }
  if (quoted) throw std::runtime_error("'" + path + "': a quoted field is not closed: truncated file?");
  while (!rows.empty() && rows.back().size() == 1 && rows.back()[0].empty()) rows.pop_back();
  auto lower = [](std::string v) {
    for (auto& ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return v;
  };
  const bool header_ok = !rows.empty() && !rows[0].empty() && rows[0].size() <= 2 && lower(rows[0][0]) == "mr" &&
                         (rows[0].size() == 1 || lower(rows[0][1]) == "ref" || lower(rows[0][1]) == "output");
  if (!header_ok)
    throw std::runtime_error("'" + path + "': expected a header \"mr\",\"ref\" (or just \"mr\"; MR<tab>output in a system-output .tsv)");
  const size_t cols = rows[0].size();
  std::vector<Pair> out;
  for (size_t r = 1; r < rows.size(); ++r) {
    if (rows[r].size() != cols)
      throw std::runtime_error("'" + path + "' record " + std::to_string(r + 1) + ": expected " + std::to_string(cols) +
                               " fields, found " + std::to_string(rows[r].size()));
    out.push_back({rows[r][0], cols == 2 ? rows[r][1] : std::string()});
  }
  return out;
}

std::vector<Grouped> group_by_mr(const std::vector<Pair>& pairs) {
  std::vector<Grouped> out;
  std::map<std::string, size_t> at;
  for (const auto& p : pairs) {
    auto it = at.find(p.mr);
    if (it == at.end()) {
      at.emplace(p.mr, out.size());
      out.push_back({p.mr, {}});
      it = at.find(p.mr);
    }
    if (!p.ref.empty()) out[it->second].refs.push_back(p.ref);
  }
  return out;
}

Example encode_example(const gpt2::Tokenizer& tok, const Pair& pair, int64_t max_len) {
  const int64_t eos = tok.eos_id();  // 50256, "<|endoftext|>"
  Example e;
  e.tokens = tok.encode(pair.mr);
  e.tokens.push_back(eos);
  e.context_len = static_cast<int64_t>(e.tokens.size());
  auto completion = tok.encode(" " + pair.ref);
  e.tokens.insert(e.tokens.end(), completion.begin(), completion.end());
  e.tokens.push_back(eos);
  if (static_cast<int64_t>(e.tokens.size()) > max_len) e.tokens.resize(static_cast<size_t>(max_len));
  return e;
}

std::vector<Example> encode_all(const gpt2::Tokenizer& tok, const std::vector<Pair>& pairs, int64_t max_len, size_t limit) {
  std::vector<Example> out;
  for (size_t i = 0; i < pairs.size() && (limit == 0 || i < limit); ++i) out.push_back(encode_example(tok, pairs[i], max_len));
  return out;
}

Batch make_batch(const std::vector<Example>& examples, const std::vector<size_t>& indices, int64_t pad_to) {
  int64_t L = pad_to;
  if (L == 0)
    for (size_t i : indices) L = std::max<int64_t>(L, static_cast<int64_t>(examples[i].tokens.size()));
  const auto B = static_cast<int64_t>(indices.size());
  Batch b{torch::zeros({B, L}, torch::kLong), torch::zeros({B, L}, torch::kLong), torch::zeros({B, L}, torch::kFloat)};
  auto in = b.input.accessor<int64_t, 2>(), tg = b.target.accessor<int64_t, 2>();
  auto mk = b.mask.accessor<float, 2>();
  for (int64_t r = 0; r < B; ++r) {
    const auto& e = examples[indices[r]];
    const auto n = static_cast<int64_t>(e.tokens.size());
    if (n > L) throw std::invalid_argument("e2e::make_batch: an example of " + std::to_string(n) + " tokens exceeds pad_to=" + std::to_string(L));
    for (int64_t t = 0; t < n; ++t) in[r][t] = e.tokens[t];
    // Position t predicts token t+1; completion tokens start at context_len.
    for (int64_t t = 0; t + 1 < n; ++t) {
      tg[r][t] = e.tokens[t + 1];
      mk[r][t] = t + 1 >= e.context_len ? 1.0f : 0.0f;
    }
  }
  return b;
}

std::pair<torch::Tensor, torch::Tensor> masked_loss(const torch::Tensor& logits, const Batch& batch, double ls) {
  auto logprobs = logits.to(torch::kFloat).log_softmax(-1);
  auto target = batch.target.to(logits.device());
  auto mask = batch.mask.to(logits.device());
  return {(token_loss(logprobs, target, ls) * mask).sum(1), mask.sum(1)};
}

std::pair<torch::Tensor, torch::Tensor> masked_loss_from_hidden(const torch::Tensor& hidden,
                                                                const std::function<torch::Tensor(const torch::Tensor&)>& head,
                                                                const Batch& batch, double ls) {
  const auto device = hidden.device();
  const auto mask = batch.mask.to(device);
  const auto flat = mask.reshape({-1}).nonzero().squeeze(1);  // positions with a loss
  const int64_t L = mask.size(1);
  auto h = hidden.reshape({-1, hidden.size(-1)}).index_select(0, flat);
  auto logprobs = head(h).to(torch::kFloat).log_softmax(-1);  // [M, V]
  auto target = batch.target.to(device).reshape({-1}).index_select(0, flat);
  auto loss = token_loss(logprobs, target, ls);
  auto sums = torch::zeros({mask.size(0)}, loss.options()).index_add(0, flat.div(L, "floor"), loss);
  return {sums, mask.sum(1)};
}

}  // namespace e2e
