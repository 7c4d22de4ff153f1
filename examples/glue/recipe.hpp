#pragma once
// The paper's GLUE recipe as microsoft/LoRA's examples/NLU scripts run it
// (roberta_{base,large}_<task>.sh with run_glue.py and transformers 4.4.2's Trainer), and the
// paper's Table 2 numbers to report beside ours. No torch here.

#include "data.hpp"

#include <cstdint>
#include <string>

namespace glue {

/// One task's hyperparameters for one model size. The rest is common to all scripts: LoRA r = 8,
/// alpha = 16 on query and value, no LoRA dropout; AdamW β 0.9/0.999, ε 1e-8, weight decay 0.1
/// (not on biases and LayerNorm weights), linear schedule with warm-up ratio 0.06, gradient
/// clipping 1.0 (the Trainer's default), fp32, evaluation every epoch (the best epoch reported),
/// seed 0, model dropout 0.1.
struct Preset {
  int64_t per_device_batch = 16, devices = 8;  ///< the scripts' batch per GPU and num_gpus
  double lr = 5e-4;
  int64_t epochs = 30;
  int64_t max_len = 512;
  bool from_mnli = false;  ///< MRPC, RTE, STS-B start from the MNLI adapter (--lora_path), head fresh
  int64_t global_batch() const { return per_device_batch * devices; }
};

/// The scripts' preset for `model` ("roberta-base" or "roberta-large") on `task`; an error for
/// other models and for WNLI (the paper does not report it).
Preset preset(const std::string& model, const Task& task);

/// The paper's Table 2 (LoRA rows): the median over 5 seeds of the headline metric, in percent
/// ("87.5"), with its spread ("±.3"); empty strings where the paper has no entry.
struct PaperResult {
  std::string value, spread;
};
PaperResult paper_table2(const std::string& model, const Task& task);

}  // namespace glue
