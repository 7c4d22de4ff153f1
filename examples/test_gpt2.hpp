#pragma once
// A small GPT-2 configuration for the example tests (gpt2_tests, e2e_tests, e2e_dist_tests).

#include "model.hpp"

namespace example_test {

/// GPT-2's architecture at toy size; the defaults are the trainer tests' model.
inline gpt2::Config tiny_gpt2_config(int64_t vocab = 97, int64_t positions = 64, int64_t layers = 2, int64_t embd = 32,
                                     int64_t heads = 2) {
  gpt2::Config c;
  c.vocab_size = vocab;
  c.n_positions = positions;
  c.n_layer = layers;
  c.n_embd = embd;
  c.n_head = heads;
  return c;
}

}  // namespace example_test
