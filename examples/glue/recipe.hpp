#pragma once
// The paper's GLUE recipe as microsoft/LoRA's examples/NLU scripts run it
// (roberta_{base,large}_<task>.sh, deberta_v2_xxlarge_<task>.sh with run_glue.py and
// transformers 4.4.2's Trainer), and the
// paper's Table 2 numbers to report beside ours. No torch here.

#include "data.hpp"

#include <cstdint>
#include <string>

namespace glue {

/// One task's hyperparameters for one model. RoBERTa's scripts share: LoRA r = 8, alpha = 16 on
/// query and value, weight decay 0.1, warm-up ratio 0.06. DeBERTa XXL's set r = 16, alpha = 32 on
/// query_proj and value_proj, and per task the weight decay, warm-up steps and classifier dropout.
/// Common to all: no LoRA dropout; AdamW β 0.9/0.999, ε 1e-8, no decay on biases and LayerNorm
/// weights; a linear schedule; gradient clipping 1.0 (the Trainer's default); evaluation every
/// epoch (the best epoch reported); seed 0; model dropout 0.1.
struct Preset {
  int64_t per_device_batch = 16, devices = 8;  ///< the scripts' batch per GPU and num_gpus
  double lr = 5e-4;
  int64_t epochs = 30;
  int64_t max_len = 512;
  bool from_mnli = false;  ///< MRPC, RTE, STS-B start from the MNLI adapter (--lora_path), head fresh
  int64_t rank = 8;
  double alpha = 16, weight_decay = 0.1;
  double warmup_ratio = 0.06;  ///< used when warmup_steps is 0
  int64_t warmup_steps = 0;
  double cls_dropout = -1;  ///< DeBERTa's --cls_dropout; < 0: the model's hidden dropout
  bool fp16 = false;        ///< the scripts' --fp16 (DeBERTa); here bf16 autocast on CUDA, fp32 on CPUs
  int64_t global_batch() const { return per_device_batch * devices; }
};

/// The preset table a model family uses unless told: roberta-base, deberta-v2-xxlarge.
std::string default_preset(const std::string& arch);

/// The scripts' preset for `model` ("roberta-base", "roberta-large" or "deberta-v2-xxlarge") on
/// `task`; an error for other models and for WNLI (the paper does not report it).
Preset preset(const std::string& model, const Task& task);

/// The paper's Table 2 (LoRA rows): the median over 5 seeds of the headline metric, in percent
/// ("87.5"), with its spread ("±.3"); empty strings where the paper has no entry.
struct PaperResult {
  std::string value, spread;
};
PaperResult paper_table2(const std::string& model, const Task& task);

}  // namespace glue
