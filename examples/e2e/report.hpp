#pragma once
// The `run` subcommand's outputs: report.md (configuration actually used, cost, metrics next to the
// paper's Table 3) and loss.svg.

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

/// The training loss as an SVG polyline (raw per-step loss and a 20-step moving average).
void write_loss_svg(const std::string& path, const std::vector<double>& losses);

/// "qv" -> "W_q, W_v": TrainOptions::weights as the paper writes them.
std::string weight_types(const std::string& weights);

/// A [rows, cols] grid of values in [0, 1] as an SVG heat map (the paper's Figures 3 and 4): row
/// i (1-based) top to bottom, column j left to right, a colour bar, each cell's value on hover.
void write_heatmap_svg(const std::string& path, const torch::Tensor& grid, const std::string& title, const std::string& row_axis,
                       const std::string& col_axis);

/// One named series per line (e.g. ΔW's singular values, each normalised by its first), plotted
/// against their 1-based index on a [0, 1] axis. A series' colour follows its `group`.
struct Series {
  std::string name, group;
  std::vector<double> values;
};
void write_lines_svg(const std::string& path, const std::vector<Series>& series, const std::string& title, const std::string& x_axis,
                     const std::string& y_axis);

}  // namespace e2e
