#include "recipe.hpp"

#include <map>
#include <stdexcept>

namespace glue {

namespace {

/// "base" or "large" from a model name, as the scripts' file names say.
std::string size_of(const std::string& model) {
  if (model.find("roberta-base") != std::string::npos || model == "base") return "base";
  if (model.find("roberta-large") != std::string::npos || model == "large") return "large";
  if (model.find("deberta-v2-xxlarge") != std::string::npos || model == "xxlarge") return "xxlarge";
  throw std::invalid_argument("GLUE presets exist for roberta-base, roberta-large and deberta-v2-xxlarge (microsoft/LoRA's scripts), "
                              "not '" + model + "': pass --preset with one of them");
}

/// deberta_v2_xxlarge_<task>.sh: per-device batch, lr, epochs, max_seq_length, --lora_path,
/// weight decay, warm-up steps (MRPC: --warmup_ratio 0.1), --cls_dropout; 8 GPUs, r 16, alpha 32, fp16.
Preset deberta(int64_t batch, double lr, int64_t epochs, int64_t max_len, bool from_mnli, double weight_decay, int64_t warmup_steps,
               double cls_dropout, double warmup_ratio = 0) {
  Preset p{batch, 8, lr, epochs, max_len, from_mnli};
  p.rank = 16;
  p.alpha = 32;
  p.weight_decay = weight_decay;
  p.warmup_steps = warmup_steps;
  p.warmup_ratio = warmup_ratio;
  p.cls_dropout = cls_dropout;
  p.fp16 = true;
  return p;
}

}  // namespace

std::string default_preset(const std::string& arch) { return arch == "deberta-v2" ? "deberta-v2-xxlarge" : "roberta-base"; }

Preset preset(const std::string& model, const Task& task) {
  // examples/NLU/roberta_{base,large}_<task>.sh at microsoft/LoRA c4593f0: per-device batch,
  // num_gpus, learning rate, epochs, max_seq_length, --lora_path.
  static const std::map<std::string, Preset> table = {
      {"base/mnli", {16, 8, 5e-4, 30, 512, false}},  {"base/sst-2", {16, 8, 5e-4, 60, 512, false}},
      {"base/mrpc", {16, 8, 4e-4, 30, 512, true}},   {"base/cola", {32, 2, 4e-4, 80, 512, false}},
      {"base/qnli", {32, 8, 4e-4, 25, 512, false}},  {"base/qqp", {16, 8, 5e-4, 25, 512, false}},
      {"base/rte", {32, 8, 5e-4, 80, 512, true}},    {"base/sts-b", {16, 8, 4e-4, 40, 512, true}},
      {"large/mnli", {4, 8, 3e-4, 10, 128, false}},  {"large/sst-2", {8, 8, 4e-4, 10, 512, false}},
      {"large/mrpc", {4, 8, 3e-4, 20, 512, true}},   {"large/cola", {4, 8, 3e-4, 20, 128, false}},
      {"large/qnli", {4, 8, 2e-4, 10, 512, false}},  {"large/qqp", {4, 8, 3e-4, 20, 512, false}},
      {"large/rte", {8, 8, 4e-4, 20, 512, true}},    {"large/sts-b", {4, 8, 3e-4, 10, 128, true}},
      {"xxlarge/mnli", deberta(8, 1e-4, 5, 256, false, 0, 1000, 0.15)},
      {"xxlarge/sst-2", deberta(8, 6e-5, 16, 128, false, 0.01, 1000, 0)},
      {"xxlarge/mrpc", deberta(32, 2e-4, 30, 128, true, 0.01, 0, 0, 0.1)},
      {"xxlarge/cola", deberta(4, 1.3e-4, 10, 64, false, 0, 100, 0.1)},
      {"xxlarge/qnli", deberta(6, 1e-4, 8, 512, false, 0.01, 500, 0.1)},
      {"xxlarge/qqp", deberta(8, 1e-4, 11, 320, false, 0.01, 10000, 0.2)},
      {"xxlarge/rte", deberta(4, 2.6e-4, 11, 320, true, 0.01, 50, 0.2)},
      {"xxlarge/sts-b", deberta(4, 2e-4, 10, 128, true, 0.1, 100, 0.2)}};
  const auto it = table.find(size_of(model) + "/" + task.name);
  if (it == table.end())
    throw std::invalid_argument("the paper has no recipe for " + task.name + " (Table 2 reports MNLI, SST-2, MRPC, CoLA, QNLI, QQP, "
                                "RTE, STS-B): pass every hyperparameter");
  return it->second;
}

PaperResult paper_table2(const std::string& model, const Task& task) {
  // Hu et al. (2021), Table 2, rows "RoB_base (LoRA)", "RoB_large (LoRA)" and "DeB_XXL (LoRA)".
  static const std::map<std::string, PaperResult> table = {
      {"base/mnli", {"87.5", "±.3"}},  {"base/sst-2", {"95.1", "±.2"}},  {"base/mrpc", {"89.7", "±.7"}},
      {"base/cola", {"63.4", "±1.2"}}, {"base/qnli", {"93.3", "±.3"}},   {"base/qqp", {"90.8", "±.1"}},
      {"base/rte", {"86.6", "±.7"}},   {"base/sts-b", {"91.5", "±.2"}},  {"large/mnli", {"90.6", "±.2"}},
      {"large/sst-2", {"96.2", "±.5"}}, {"large/mrpc", {"90.9", "±1.2"}}, {"large/cola", {"68.2", "±1.9"}},
      {"large/qnli", {"94.9", "±.3"}}, {"large/qqp", {"91.6", "±.1"}},   {"large/rte", {"87.4", "±2.5"}},
      {"large/sts-b", {"92.6", "±.2"}},  {"xxlarge/mnli", {"91.9", "±.2"}}, {"xxlarge/sst-2", {"96.9", "±.2"}},
      {"xxlarge/mrpc", {"92.6", "±.6"}}, {"xxlarge/cola", {"72.4", "±1.1"}}, {"xxlarge/qnli", {"96.0", "±.1"}},
      {"xxlarge/qqp", {"92.9", "±.1"}},  {"xxlarge/rte", {"94.9", "±.4"}},   {"xxlarge/sts-b", {"93.0", "±.2"}}};
  const auto it = table.find(size_of(model) + "/" + task.name);
  return it == table.end() ? PaperResult{} : it->second;
}

}  // namespace glue
