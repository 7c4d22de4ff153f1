#pragma once
// The `run` subcommand's outputs: report.md (configuration actually used, cost, metrics next to the
// paper's Table 3) and loss.svg (training::write_loss_svg).

#include "plots.hpp"
#include "scorer.hpp"
#include "trainer.hpp"

#include <string>
#include <vector>

namespace e2e {

/// Everything report.md shows of one run.
struct RunReport {
  bool smoke = false;
  std::string model, data;
  TrainOptions options;     ///< as the trainer used them
  std::string decoding;     ///< e.g. "beam 10, length penalty 0.8, no-repeat 4-grams, 64 new tokens, EOS 50256 628"
  int64_t trainable = 0, total = 0, steps = 0, total_steps = 0, tokens = 0;
  double train_seconds = 0, generate_seconds = 0, total_seconds = 0;
  size_t mrs = 0;           ///< test MRs generated and scored
  long peak_rss_mb = 0;
  std::vector<double> valid;  ///< validation loss per epoch
  Scores scores;
};

/// Writes report.md.
void write_report(const std::string& path, const RunReport& r);

/// "qv" -> "W_q, W_v": TrainOptions::weights as the paper writes them.
std::string weight_types(const std::string& weights);

// The shared figures (examples/train/plots.hpp), used here as the E2E report's own.
using training::Series;
using training::write_heatmap_svg;
using training::write_lines_svg;
using training::write_loss_svg;

}  // namespace e2e
