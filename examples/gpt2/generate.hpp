#pragma once
// Generation on the KV cache: greedy, sampling (temperature, top-k, top-p, seeded) and beam
// search, batched and deterministic. The default conventions are microsoft/LoRA's
// gpt2_beam.py + gpt2_decode.py, which the paper's numbers come from: a finished beam's score
// is divided by (number of generated tokens)^length_penalty, and the no-repeat n-gram and
// repetition-penalty rules look at generated tokens only. `Conventions::HuggingFace` counts
// the prompt too, as transformers does for decoder-only models.

#include "model.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace gpt2 {

enum class Conventions { MicrosoftLoRA, HuggingFace };

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  int64_t num_beams = 1;
  bool do_sample = false;  ///< sampling (num_beams must be 1)
  double temperature = 1.0;
  int64_t top_k = 0;   ///< 0: off
  double top_p = 1.0;  ///< 1: off
  uint64_t seed = 0;   ///< sampling is deterministic for a seed
  double length_penalty = 1.0;
  int64_t no_repeat_ngram_size = 0;
  double repetition_penalty = 1.0;
  int64_t min_length = 0;  ///< EOS is forbidden before this many generated tokens
  std::vector<int64_t> eos_token_ids = {50256};
  Conventions conventions = Conventions::MicrosoftLoRA;
};

/// The paper's E2E decoding: beam 10, length penalty 0.8, no-repeat 4-grams, at most 64 new
/// tokens, EOS 50256 ("<|endoftext|>") and 628 ("\n\n").
GenerateOptions paper_decoding();

/// Generated token ids for each prompt (prompt excluded), cut before the first EOS. Prompts may
/// differ in length (they are left-padded and masked). Runs without gradients, in eval mode.
std::vector<std::vector<int64_t>> generate(GPT2LMHeadModelImpl& model, const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& options = GenerateOptions());

/// gpt2_decode.py's post-processing of decoded text: cut at "<|endoftext|>", then at the first
/// blank line ("\n\n"), then strip surrounding whitespace.
std::string clean_text(const std::string& decoded);

}  // namespace gpt2
