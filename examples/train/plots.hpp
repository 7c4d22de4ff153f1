#pragma once
// SVG figures the examples' reports share: a training-loss curve, line plots of named series, heat
// maps (the paper's Figures 3 and 4). Written as text, no plotting library.

#include <torch/torch.h>

#include <string>
#include <vector>

namespace training {

/// The training loss as an SVG polyline (raw per-step loss and a 20-step moving average).
void write_loss_svg(const std::string& path, const std::vector<double>& losses);

/// A [rows, cols] grid of values in [0, 1] as an SVG heat map (the paper's Figures 3 and 4): row
/// i (1-based) top to bottom, column j left to right, a colour bar, each cell's value on hover.
void write_heatmap_svg(const std::string& path, const torch::Tensor& grid, const std::string& title, const std::string& row_axis,
                       const std::string& col_axis);

/// One named series per line (e.g. ΔW's singular values, each normalised by its first), plotted
/// against their 1-based index on a [0, 1] axis. A series' colour follows its `group` (q, k, v, o
/// are labelled W_q, ... in the legend, as the paper writes the attention weights).
struct Series {
  std::string name, group;
  std::vector<double> values;
};
void write_lines_svg(const std::string& path, const std::vector<Series>& series, const std::string& title, const std::string& x_axis,
                     const std::string& y_axis);

}  // namespace training
