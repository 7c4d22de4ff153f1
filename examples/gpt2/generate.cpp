#include "generate.hpp"

#include <algorithm>
#include <map>
#include <random>
#include <set>

namespace gpt2 {

GenerateOptions paper_decoding() {
  GenerateOptions o;
  o.num_beams = 10;
  o.length_penalty = 0.8;
  o.no_repeat_ngram_size = 4;
  o.max_new_tokens = 64;
  o.eos_token_ids = {50256, 628};
  return o;
}

std::string clean_text(const std::string& decoded) {
  std::string s = decoded.substr(0, decoded.find("<|endoftext|>"));
  s = s.substr(0, s.find("\n\n"));
  const char* ws = " \t\n\r\f\v";
  const auto b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

namespace {

/// Left-pads prompts into ids [N, L] and mask [N, L], each prompt repeated `copies` times.
std::pair<torch::Tensor, torch::Tensor> left_pad(const std::vector<std::vector<int64_t>>& prompts, int64_t copies) {
  size_t L = 0;
  for (const auto& p : prompts) {
    if (p.empty()) throw std::invalid_argument("gpt2::generate: an empty prompt (give at least one token, e.g. EOS)");
    L = std::max(L, p.size());
  }
  const int64_t N = static_cast<int64_t>(prompts.size()) * copies;
  auto ids = torch::zeros({N, static_cast<int64_t>(L)}, torch::kLong), mask = torch::zeros({N, static_cast<int64_t>(L)}, torch::kLong);
  auto a = ids.accessor<int64_t, 2>(), m = mask.accessor<int64_t, 2>();
  for (int64_t r = 0; r < N; ++r) {
    const auto& p = prompts[r / copies];
    const size_t off = L - p.size();
    for (size_t j = 0; j < p.size(); ++j) {
      a[r][off + j] = p[j];
      m[r][off + j] = 1;
    }
  }
  return {ids, mask};
}

/// Applies repetition penalty, min-length EOS ban and no-repeat n-grams to `logits` [N, V] in place.
/// `context[r]` is what the rules look at for row r (generated tokens, or prompt + generated).
void process_logits(torch::Tensor& logits, const std::vector<std::vector<int64_t>>& context, int64_t generated,
                    const GenerateOptions& o) {
  auto cpu = logits.to(torch::kCPU, torch::kFloat).contiguous();
  auto acc = cpu.accessor<float, 2>();
  const int64_t N = cpu.size(0);
  for (int64_t r = 0; r < N; ++r) {
    const auto& ctx = context[r];
    if (o.repetition_penalty != 1.0)
      for (int64_t t : std::set<int64_t>(ctx.begin(), ctx.end())) {
        float& s = acc[r][t];
        s = s < 0 ? s * static_cast<float>(o.repetition_penalty) : s / static_cast<float>(o.repetition_penalty);
      }
    if (generated < o.min_length)
      for (int64_t eos : o.eos_token_ids) acc[r][eos] = -std::numeric_limits<float>::infinity();
    const auto n = static_cast<size_t>(o.no_repeat_ngram_size);
    if (n > 0 && ctx.size() + 1 >= n) {
      // Ban every token that would complete an n-gram already present in the context.
      const std::vector<int64_t> prefix(ctx.end() - static_cast<long>(n - 1), ctx.end());
      for (size_t i = 0; i + n <= ctx.size(); ++i)
        if (std::equal(prefix.begin(), prefix.end(), ctx.begin() + static_cast<long>(i)))
          acc[r][ctx[i + n - 1]] = -std::numeric_limits<float>::infinity();
    }
  }
  logits = cpu.to(logits.device());
}

std::vector<int64_t> cut_at_eos(const std::vector<int64_t>& tokens, const std::vector<int64_t>& eos) {
  auto it = std::find_first_of(tokens.begin(), tokens.end(), eos.begin(), eos.end());
  return std::vector<int64_t>(tokens.begin(), it);
}

int64_t sample_row(torch::Tensor logits, const GenerateOptions& o, std::mt19937_64& rng) {
  logits = logits.to(torch::kDouble) / o.temperature;
  const int64_t V = logits.size(0);
  if (o.top_k > 0 && o.top_k < V) {
    const double kth = std::get<0>(logits.topk(o.top_k)).min().item<double>();
    logits = logits.masked_fill(logits < kth, -std::numeric_limits<double>::infinity());
  }
  auto probs = logits.softmax(0);
  if (o.top_p < 1.0) {  // keep the smallest set of most likely tokens whose mass reaches top_p
    auto [sorted, order] = probs.sort(0, /*descending=*/true);
    auto before = sorted.cumsum(0) - sorted;
    auto drop = order.masked_select(before >= o.top_p);
    probs.index_fill_(0, drop, 0.0);
    probs = probs / probs.sum();
  }
  auto cdf = probs.cumsum(0);
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng) * cdf[-1].item<double>();
  const int64_t pick = (cdf < u).sum().item<int64_t>();
  return std::min(pick, V - 1);
}

}  // namespace

std::vector<std::vector<int64_t>> generate(GPT2LMHeadModelImpl& model, const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& o) {
  if (o.num_beams < 1) throw std::invalid_argument("gpt2::generate: num_beams must be >= 1");
  if (o.do_sample && o.num_beams != 1) throw std::invalid_argument("gpt2::generate: sampling takes num_beams = 1");
  if (prompts.empty()) return {};
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const auto device = model.transformer->wte->weight.device();
  const bool hf = o.conventions == Conventions::HuggingFace;
  const int64_t B = static_cast<int64_t>(prompts.size()), K = o.num_beams, N = B * K;
  auto [ids, mask] = left_pad(prompts, K);
  if (ids.size(1) + o.max_new_tokens - 1 > model.config.n_positions)
    throw std::invalid_argument("gpt2::generate: a prompt of " + std::to_string(ids.size(1)) + " tokens plus max_new_tokens=" +
                                std::to_string(o.max_new_tokens) + " exceeds n_positions=" + std::to_string(model.config.n_positions));
  ids = ids.to(device);
  mask = mask.to(device);
  KVCache cache;
  auto logits = model.forward(ids, mask, &cache).select(1, -1);  // [N, V]
  const int64_t V = logits.size(-1);

  std::vector<std::vector<int64_t>> generated(N), context(N);
  if (hf)
    for (int64_t r = 0; r < N; ++r) context[r] = prompts[r / K];
  auto step_input = [&](const torch::Tensor& tokens) {
    mask = torch::cat({mask, torch::ones({N, 1}, mask.options())}, 1);
    return model.forward(tokens.view({N, 1}).to(device), mask, &cache).select(1, -1);
  };
  auto is_eos = [&](int64_t t) { return std::find(o.eos_token_ids.begin(), o.eos_token_ids.end(), t) != o.eos_token_ids.end(); };

  std::vector<std::vector<int64_t>> result(B);
  if (K == 1) {  // greedy or sampling
    std::mt19937_64 rng(o.seed);
    std::vector<bool> done(B, false);
    for (int64_t step = 0; step < o.max_new_tokens; ++step) {
      process_logits(logits, context, step, o);
      std::vector<int64_t> next(B);
      if (o.do_sample) {
        auto cpu = logits.to(torch::kCPU);
        for (int64_t r = 0; r < B; ++r) next[r] = sample_row(cpu[r], o, rng);
      } else {
        auto arg = logits.argmax(-1).to(torch::kCPU);
        for (int64_t r = 0; r < B; ++r) next[r] = arg[r].item<int64_t>();
      }
      bool all = true;
      for (int64_t r = 0; r < B; ++r) {
        if (!done[r]) {
          generated[r].push_back(next[r]);
          context[r].push_back(next[r]);
          done[r] = is_eos(next[r]);
        }
        all = all && done[r];
      }
      if (all || step + 1 == o.max_new_tokens) break;
      logits = step_input(torch::tensor(next, torch::kLong));
    }
    for (int64_t r = 0; r < B; ++r) result[r] = cut_at_eos(generated[r], o.eos_token_ids);
  } else {  // beam search, as gpt2_beam.py
    auto beam_scores = torch::zeros({B, K}, torch::kFloat);
    std::vector<double> best_score(B, -std::numeric_limits<double>::infinity());
    std::vector<std::vector<int64_t>> best(B);
    std::vector<bool> has_best(B, false);
    auto add_candidates = [&](bool eos_only) {
      auto acc = beam_scores.accessor<float, 2>();
      for (int64_t r = 0; r < N; ++r) {
        const int64_t b = r / K, k = r % K;
        if (eos_only && !is_eos(generated[r].back())) continue;
        const double len = static_cast<double>(generated[r].size() + (hf ? prompts[b].size() : 0));
        const double score = acc[b][k] / std::pow(len, o.length_penalty);
        if (!has_best[b] || best_score[b] < score) {
          best_score[b] = score;
          best[b] = generated[r];
          has_best[b] = true;
        }
        acc[b][k] = -std::numeric_limits<float>::infinity();
      }
    };
    for (int64_t step = 0; step < o.max_new_tokens; ++step) {
      process_logits(logits, context, step, o);
      auto logprob = logits.to(torch::kCPU, torch::kFloat).log_softmax(-1).view({B, K, V});
      auto next_scores = step == 0 ? logprob.select(1, 0) : (beam_scores.unsqueeze(-1) + logprob).view({B, K * V});
      auto [top_scores, top_idx] = next_scores.topk(K, 1, /*largest=*/true, /*sorted=*/true);
      auto beam_id = top_idx.div(V, "floor"), token = top_idx.remainder(V);
      auto rows = (beam_id + torch::arange(B, torch::kLong).unsqueeze(1) * K).view({-1});
      beam_scores = top_scores.contiguous();
      std::vector<std::vector<int64_t>> g(N), c(N);
      auto rows_a = rows.accessor<int64_t, 1>();
      auto tok = token.reshape({-1});
      auto tok_a = tok.accessor<int64_t, 1>();
      for (int64_t r = 0; r < N; ++r) {
        g[r] = generated[rows_a[r]];
        g[r].push_back(tok_a[r]);
        c[r] = context[rows_a[r]];
        c[r].push_back(tok_a[r]);
      }
      generated.swap(g);
      context.swap(c);
      add_candidates(/*eos_only=*/true);
      if (step + 1 == o.max_new_tokens) break;
      if (torch::isinf(beam_scores).all().item<bool>()) break;  // every beam has finished
      cache.select(rows.to(device));
      mask = mask.index_select(0, rows.to(device));
      logits = step_input(tok);
    }
    add_candidates(/*eos_only=*/false);
    for (int64_t b = 0; b < B; ++b) result[b] = cut_at_eos(best[b], o.eos_token_ids);
  }
  model.train(was_training);
  return result;
}

}  // namespace gpt2
