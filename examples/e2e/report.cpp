#include "report.hpp"

#include <lora/lora.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
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
  return std::string(o.dora ? "DoRA" : "LoRA") + ": r = " + std::to_string(o.rank) + ", alpha = " + num(o.alpha) + ", dropout " +
         num(o.lora_dropout) + ", " + (o.targets.empty() ? "attention weights " + weight_types(o.weights) : "`" + o.targets + "`");
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

std::string weight_types(const std::string& weights) {
  std::string out;
  for (char c : weights) out += (out.empty() ? "W_" : ", W_") + std::string(1, c);
  return out;
}


}  // namespace e2e
