#include "plots.hpp"

#include <lora/lora.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

namespace training {

/// The training loss as an SVG polyline (raw per-step loss and a 20-step moving average).
void write_loss_svg(const std::string& path, const std::vector<double>& losses) {
  const double W = 720, H = 360, L = 60, R = 20, T = 30, B = 40;
  double lo = 1e30, hi = -1e30;
  for (double v : losses) lo = std::min(lo, v), hi = std::max(hi, v);
  if (losses.empty() || hi <= lo) hi = lo + 1;
  auto x = [&](size_t i) { return L + (W - L - R) * (losses.size() > 1 ? double(i) / double(losses.size() - 1) : 0.0); };
  auto y = [&](double v) { return T + (H - T - B) * (hi - v) / (hi - lo); };
  std::ofstream svg(path);
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << W / 2 << "\" y=\"18\" text-anchor=\"middle\">training loss (label-smoothed) per step</text>\n"
      << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n"
      << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n"
      << "<text x=\"" << L - 6 << "\" y=\"" << T + 4 << "\" text-anchor=\"end\">" << std::setprecision(3) << hi << "</text>\n"
      << "<text x=\"" << L - 6 << "\" y=\"" << H - B << "\" text-anchor=\"end\">" << lo << "</text>\n"
      << "<text x=\"" << W - R << "\" y=\"" << H - B + 16 << "\" text-anchor=\"end\">step " << losses.size() << "</text>\n";
  auto poly = [&](const std::vector<double>& v, const char* color, double width) {
    svg << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"" << width << "\" points=\"";
    for (size_t i = 0; i < v.size(); ++i) svg << std::fixed << std::setprecision(1) << x(i) << "," << y(v[i]) << " ";
    svg << "\"/>\n";
  };
  poly(losses, "#9ecae1", 1);
  std::vector<double> avg;
  double sum = 0;
  for (size_t i = 0; i < losses.size(); ++i) {
    sum += losses[i] - (i >= 20 ? losses[i - 20] : 0.0);
    avg.push_back(sum / double(std::min<size_t>(i + 1, 20)));
  }
  poly(avg, "#08519c", 2);
  svg << "</svg>\n";
}

namespace {

/// The viridis colour map at t in [0, 1] (five anchors, linear in between), as "#rrggbb".
std::string viridis(double t) {
  static const double anchors[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 4;
  const int k = std::min(static_cast<int>(t), 3);
  const double f = t - k;
  char hex[8];
  std::snprintf(hex, sizeof hex, "#%02x%02x%02x", static_cast<int>(std::lround(anchors[k][0] + f * (anchors[k + 1][0] - anchors[k][0]))),
                static_cast<int>(std::lround(anchors[k][1] + f * (anchors[k + 1][1] - anchors[k][1]))),
                static_cast<int>(std::lround(anchors[k][2] + f * (anchors[k + 1][2] - anchors[k][2]))));
  return hex;
}

/// Text for SVG: & < > escaped.
std::string xml(const std::string& s) {
  std::string out;
  for (char c : s) out += c == '&' ? "&amp;" : c == '<' ? "&lt;" : c == '>' ? "&gt;" : std::string(1, c);
  return out;
}

}  // namespace

void write_heatmap_svg(const std::string& path, const torch::Tensor& grid, const std::string& title, const std::string& row_axis,
                       const std::string& col_axis) {
  if (grid.dim() != 2 || grid.numel() == 0)
    throw std::invalid_argument("write_heatmap_svg: '" + path + "' needs a non-empty [rows, cols] grid, got " + lora::shape_str(grid.sizes()));
  const torch::Tensor g = grid.detach().to(torch::kCPU, torch::kDouble).contiguous();
  const int64_t rows = g.size(0), cols = g.size(1);
  const double cell = std::clamp(640.0 / static_cast<double>(cols), 6.0, 28.0), ch = std::max(cell, 12.0);
  const double L = 56, T = 40, W = L + cell * static_cast<double>(cols) + 90, H = T + ch * static_cast<double>(rows) + 48;
  std::ostringstream svg;
  svg << std::fixed << std::setprecision(1) << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
      << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << W / 2 << "\" y=\"18\" text-anchor=\"middle\" font-size=\"13\">" << xml(title) << "</text>\n";
  const double* v = g.data_ptr<double>();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const double x = v[i * cols + j];
      svg << "<rect x=\"" << L + cell * static_cast<double>(j) << "\" y=\"" << T + ch * static_cast<double>(i) << "\" width=\"" << cell
          << "\" height=\"" << ch << "\" fill=\"" << viridis(x) << "\"><title>i=" << i + 1 << " j=" << j + 1 << ": "
          << std::setprecision(3) << x << std::setprecision(1) << "</title></rect>\n";
    }
  const int64_t row_step = rows <= 16 ? 1 : 8, col_step = cols <= 16 ? 1 : 8;
  for (int64_t i = 0; i < rows; ++i)
    if (i == 0 || (i + 1) % row_step == 0)
      svg << "<text x=\"" << L - 4 << "\" y=\"" << T + ch * (static_cast<double>(i) + 0.5) + 4 << "\" text-anchor=\"end\">" << i + 1 << "</text>\n";
  for (int64_t j = 0; j < cols; ++j)
    if (j == 0 || (j + 1) % col_step == 0)
      svg << "<text x=\"" << L + cell * (static_cast<double>(j) + 0.5) << "\" y=\"" << T + ch * static_cast<double>(rows) + 14
          << "\" text-anchor=\"middle\">" << j + 1 << "</text>\n";
  svg << "<text x=\"" << L + cell * static_cast<double>(cols) / 2 << "\" y=\"" << H - 10 << "\" text-anchor=\"middle\">" << xml(col_axis) << "</text>\n"
      << "<text transform=\"translate(16," << T + ch * static_cast<double>(rows) / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
      << xml(row_axis) << "</text>\n";
  // The colour bar: 0 at the bottom, 1 at the top.
  const double bx = L + cell * static_cast<double>(cols) + 24, bh = std::max(ch * static_cast<double>(rows), 60.0);
  for (int k = 0; k < 20; ++k)
    svg << "<rect x=\"" << bx << "\" y=\"" << T + bh * k / 20 << "\" width=\"14\" height=\"" << bh / 20 + 0.5 << "\" fill=\""
        << viridis(1.0 - (k + 0.5) / 20) << "\"/>\n";
  svg << "<text x=\"" << bx + 18 << "\" y=\"" << T + 8 << "\">1</text>\n<text x=\"" << bx + 18 << "\" y=\"" << T + bh << "\">0</text>\n</svg>\n";
  lora::write_text_file(path, svg.str());
}

void write_lines_svg(const std::string& path, const std::vector<Series>& series, const std::string& title, const std::string& x_axis,
                     const std::string& y_axis) {
  static const std::map<std::string, const char*> colours = {{"q", "#1f77b4"}, {"k", "#2ca02c"}, {"v", "#ff7f0e"}, {"o", "#d62728"}};
  size_t n = 1;
  for (const auto& s : series) n = std::max(n, s.values.size());
  const double W = 720, H = 360, L = 60, R = 110, T = 30, B = 44;
  auto x = [&](size_t i) { return L + (W - L - R) * (n > 1 ? double(i) / double(n - 1) : 0.5); };
  auto y = [&](double v) { return T + (H - T - B) * (1.0 - std::clamp(v, 0.0, 1.0)); };
  std::ostringstream svg;
  svg << std::fixed << std::setprecision(1) << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << W / 2 << "\" y=\"18\" text-anchor=\"middle\">" << xml(title) << "</text>\n"
      << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n"
      << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n"
      << "<text x=\"" << L - 6 << "\" y=\"" << T + 4 << "\" text-anchor=\"end\">1</text>\n"
      << "<text x=\"" << L - 6 << "\" y=\"" << H - B << "\" text-anchor=\"end\">0</text>\n"
      << "<text x=\"" << L << "\" y=\"" << H - B + 16 << "\" text-anchor=\"middle\">1</text>\n"
      << "<text x=\"" << W - R << "\" y=\"" << H - B + 16 << "\" text-anchor=\"middle\">" << n << "</text>\n"
      << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 8 << "\" text-anchor=\"middle\">" << xml(x_axis) << "</text>\n"
      << "<text transform=\"translate(16," << (T + H - B) / 2 << ") rotate(-90)\" text-anchor=\"middle\">" << xml(y_axis) << "</text>\n";
  std::vector<std::string> groups;
  for (const auto& s : series) {
    const auto c = colours.find(s.group);
    svg << "<polyline fill=\"none\" stroke=\"" << (c == colours.end() ? "#7f7f7f" : c->second) << "\" stroke-width=\"1.5\" points=\"";
    for (size_t i = 0; i < s.values.size(); ++i) svg << x(i) << "," << y(s.values[i]) << " ";
    svg << "\"><title>" << xml(s.name) << "</title></polyline>\n";
    if (std::find(groups.begin(), groups.end(), s.group) == groups.end()) groups.push_back(s.group);
  }
  for (size_t k = 0; k < groups.size(); ++k) {  // the legend, one entry per group
    const auto c = colours.find(groups[k]);
    const double ly = T + 16 * static_cast<double>(k);
    svg << "<line x1=\"" << W - R + 12 << "\" y1=\"" << ly << "\" x2=\"" << W - R + 32 << "\" y2=\"" << ly << "\" stroke=\""
        << (c == colours.end() ? "#7f7f7f" : c->second) << "\" stroke-width=\"2\"/>\n<text x=\"" << W - R + 36 << "\" y=\"" << ly + 4
        << "\">" << xml(c == colours.end() ? groups[k] : "W_" + groups[k]) << "</text>\n";
  }
  svg << "</svg>\n";
  lora::write_text_file(path, svg.str());
}

}  // namespace training
