#pragma once
// microsoft/LoRA's released GLUE checkpoints (roberta_{base,large}_lora_mnli.bin): a loralib
// state dict saved by torch.save, read through LibTorch's pickle reader. Keys as loralib names
// them: "roberta.encoder.layer.N.attention.self.query.lora_A" (no ".weight") and the trained
// "classifier.*" head.

#include "model.hpp"

#include <map>
#include <string>

namespace roberta {

/// The adapter and head of a loralib checkpoint.
struct LoralibCheckpoint {
  /// module path ("roberta.encoder.layer.0.attention.self.query") -> {A [r, in], B [out, r]}
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> lora;
  lora::NamedTensors classifier;  ///< "classifier.dense.weight", ... (empty when the file has none)
  int64_t rank = 0;
};

/// Reads a torch.save'd loralib state dict. An error names the file and what is wrong: not a
/// torch.save zip, a key that is neither LoRA nor classifier, an A without its B, ranks that differ.
LoralibCheckpoint read_loralib_checkpoint(const std::string& path);

/// Puts the checkpoint on `model`: injects roberta::paper_lora_config() at the file's rank as
/// adapter `name` on the modules the file adapts (alpha 16, as the reference scripts train; the
/// file does not record it) and copies A and B; copies the classifier too when `with_head` (its
/// num_labels must match: MRPC, RTE and STS-B start from the MNLI adapter with a fresh head).
void apply_loralib_checkpoint(RobertaForSequenceClassificationImpl& model, const LoralibCheckpoint& ckpt, bool with_head,
                              const std::string& name = "default");

}  // namespace roberta
