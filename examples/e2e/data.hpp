#pragma once
// The E2E NLG data as the paper's code reads it, and the batches it trains on.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "loop.hpp"

namespace gpt2 {
class Tokenizer;
}

namespace e2e {

/// One meaning representation with one human reference.
struct Pair {
  std::string mr, ref;
};

/// `s` without leading and trailing whitespace (Python's str.strip() on ASCII whitespace).
std::string strip(const std::string& s);

/// Reads a `mr||ref` file (microsoft/LoRA's data/e2e/*.txt): each line is stripped and split as
/// `mr, ref = line.strip().split("||")`. Blank lines are skipped; a line without exactly one
/// "||" is an error naming the file and the line.
std::vector<Pair> read_pairs(const std::string& path);

/// Reads the official CSV release (tuetschek/e2e-dataset: header "mr","ref" or just "mr";
/// RFC 4180 quoting), or, for a path ending in ".tsv", a system-output file of the challenge
/// (tuetschek/e2e-eval: tab-separated, header MR<tab>output; `ref` then holds the output). MRs
/// stay in the `name[...]` notation.
std::vector<Pair> read_csv(const std::string& path);

/// One MR with all its references, for generation and scoring (distinct MRs in file order).
struct Grouped {
  std::string mr;
  std::vector<std::string> refs;
};
std::vector<Grouped> group_by_mr(const std::vector<Pair>& pairs);

/// A training example as token ids: encode(mr) + [50256] is the context, encode(" " + ref) +
/// [50256] the completion; the loss covers the completion only.
struct Example {
  std::vector<int64_t> tokens;
  int64_t context_len = 0;
};
Example encode_example(const gpt2::Tokenizer& tok, const Pair& pair, int64_t max_len = 512);
/// encode_example of the first `limit` pairs (0: all).
std::vector<Example> encode_all(const gpt2::Tokenizer& tok, const std::vector<Pair>& pairs, int64_t max_len, size_t limit = 0);

/// Inputs, next-token targets and the loss mask of a batch, right-padded (with token 0, mask 0)
/// to `pad_to`, or to the batch's own longest example when pad_to is 0 (no padding waste).
struct Batch {
  torch::Tensor input;   ///< [B, L] long
  torch::Tensor target;  ///< [B, L] long: input shifted left by one
  torch::Tensor mask;    ///< [B, L] float: 1 where the target is a completion token
};
Batch make_batch(const std::vector<Example>& examples, const std::vector<size_t>& indices, int64_t pad_to = 0);

/// HF Trainer's group_by_length on a shuffled order (the shared loop's; see examples/train/loop.hpp).
using training::group_by_length;

/// microsoft/LoRA's loss: per position (1 - ls) · NLL + ls · mean(-log p) (label smoothing ls),
/// masked; returns the per-example sums [B] and the mask counts [B]. The batch loss is
/// sums.sum() / (counts.sum() + 1e-4), as the reference computes it.
std::pair<torch::Tensor, torch::Tensor> masked_loss(const torch::Tensor& logits, const Batch& batch, double label_smoothing);

/// The same sums from hidden states [B, L, C] and a head (hidden -> logits), applying the head to
/// the masked positions only: the context half of each example never reaches the vocabulary
/// projection, which is most of a small model's cost.
std::pair<torch::Tensor, torch::Tensor> masked_loss_from_hidden(const torch::Tensor& hidden,
                                                                const std::function<torch::Tensor(const torch::Tensor&)>& head,
                                                                const Batch& batch, double label_smoothing);

}  // namespace e2e
