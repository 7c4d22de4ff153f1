#include "report.hpp"

#include <lora/lora.hpp>

#include <algorithm>
#include <fstream>
#include <iomanip>
#include <sstream>

namespace e2e {

namespace {

/// A number as a person writes it: 0.0002 -> "0.0002", 32 -> "32".
std::string num(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

std::string method_line(const TrainOptions& o) {
  if (o.method != Method::LoRA) return "full fine-tuning";
  return std::string(o.dora ? "DoRA" : "LoRA") + ": r = " + std::to_string(o.rank) + ", alpha = " + num(o.alpha) + ", dropout " + num(o.lora_dropout) + ", `" +
         o.targets + "`" + (o.qv_only && o.targets == "c_attn" ? " (q and v slices)" : "");
}

}  // namespace

void write_report(const std::string& path, const RunReport& r) {
  const TrainOptions& o = r.options;
  std::ofstream md(path);
  md << std::fixed;
  md << "# GPT-2 + LoRA on E2E NLG\n\n";
  if (r.smoke)
    md << "**Smoke mode**: a small randomly initialised GPT-2 (2 layers, 128 wide), " << r.steps << " training steps, " << r.mrs
       << " test MRs. The numbers mean nothing; they show the pipeline runs.\n\n";
  md << "## Configuration\n\n| | |\n|---|---|\n"
     << "| model | `" << r.model << "` |\n| data | `" << r.data << "` |\n"
     << "| method | " << method_line(o) << " |\n"
     << "| optimiser | " << (o.optimizer == UpdateRule::Reference ? "examples/NLG's AdamW" : "LibTorch's AdamW") << ", lr " << num(o.lr)
     << ", weight decay " << num(o.weight_decay) << ", betas 0.9/0.999, eps 1e-6; linear schedule, warm-up " << o.warmup
     << " of " << r.total_steps << " steps" << (o.clip > 0 ? ", clip " + num(o.clip) : std::string()) << " |\n"
     << "| model dropout | " << (o.model_dropout ? "config.json's" : "none (as the reference model)") << " |\n"
     << "| epochs / batch / grad accum / label smoothing / seed | " << o.epochs << " / " << o.batch_size << " / "
     << o.grad_accum << " / " << num(o.label_smoothing) << " / " << o.seed << " |\n"
     << "| device / dtype | " << o.device << " / " << name_of(o.dtype) << " |\n"
     << "| decoding | " << r.decoding << " |\n\n";
  md << "## Cost\n\n| | |\n|---|---|\n"
     << "| trainable parameters | " << lora::with_commas(r.trainable) << " of " << lora::with_commas(r.total)
     << " (" << std::setprecision(4) << 100.0 * double(r.trainable) / double(std::max<int64_t>(r.total, 1)) << "%) |\n"
     << std::setprecision(1) << "| training | " << r.steps << " steps, " << r.train_seconds << " s, "
     << double(r.tokens) / std::max(r.train_seconds, 1e-9) << " completion tokens/s |\n"
     << "| generation | " << r.mrs << " MRs, " << r.generate_seconds << " s |\n"
     << "| peak memory (RSS) | " << r.peak_rss_mb << " MB |\n| total time | " << r.total_seconds << " s |\n\n";
  if (!r.valid.empty()) md << "Validation loss after the last epoch: " << std::setprecision(4) << r.valid.back() << "\n\n";
  md << "## Metrics\n\nScored with this project's C++ port of the official E2E scorer (METEOR is not computed: it needs "
        "a Java jar with paraphrase tables).\n\n"
     << "| | BLEU | NIST | METEOR | ROUGE-L | CIDEr |\n|---|---|---|---|---|---|\n"
     << std::setprecision(2) << "| this run" << (r.smoke ? " (smoke)" : "") << " | " << 100 * r.scores.bleu << " | "
     << r.scores.nist << " | n/a | " << 100 * r.scores.rouge_l << " | " << r.scores.cider << " |\n"
     << "| paper, GPT-2 M + LoRA (Table 3) | 70.4 | 8.85 | 46.8 | 71.8 | 2.53 |\n"
     << "| paper, GPT-2 L + LoRA (Table 3) | 70.4 | 8.89 | 46.8 | 72.0 | 2.47 |\n\n"
     << "![training loss](loss.svg)\n";
}

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

}  // namespace e2e
