#pragma once
// What every HF model folder loader of the examples shares (GPT-2, RoBERTa, DeBERTa-v2): finding
// model.safetensors, one error that lists what does not fit, and writing a folder back.

#include <lora/lora.hpp>
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace hf {

/// HF's config.json parsed; errors name the file and say a `family` folder needs it.
nlohmann::json read_config_json(const std::string& path, const std::string& family);

/// `dir`/model.safetensors, or an error saying it is missing (and that a pytorch_model.bin
/// beside it is not read).
std::string safetensors_path(const std::string& dir);

/// What a checkpoint's tensors did not fit: parameter names, file names, "name has shape ...".
struct Misfit {
  std::vector<std::string> missing, unexpected, wrong_shape;
  bool empty() const { return missing.empty() && unexpected.empty() && wrong_shape.empty(); }
};

/// Throws std::runtime_error "'FILE' does not fit the MODEL of its config.json: missing ...;
/// unexpected ...; ...; HINT" (at most 20 names per list) unless `m` is empty.
void throw_if_misfit(const std::string& file, const std::string& model, const Misfit& m, const std::string& hint);

/// How a family maps a classifier checkpoint onto its model (load_classifier).
struct LoadRules {
  std::string family;  ///< "RoBERTa", "DeBERTa-v2": named in errors
  std::function<bool(const std::string& tensor)> skip;        ///< tensors transformers ignores (another head's)
  std::function<std::string(const std::string& tensor)> key;  ///< the parameter a tensor fills
  std::function<bool(const std::string& parameter)> in_head;  ///< the classification head's parameters
  std::string hint;                                           ///< the error's last words
};

/// Copies `st` (a model.safetensors) into `model`'s parameters by name, strictly: a tensor that
/// fills no parameter, a parameter no tensor fills, another shape are one error listing them all
/// (throw_if_misfit). The head's parameters may be missing all together (a masked-LM checkpoint:
/// they stay as initialised and are returned), not some of them.
std::vector<std::string> load_classifier(torch::nn::Module& model, const std::string& st, const LoadRules& rules);

/// Writes `tensors` to dir/model.safetensors and `config_json` to dir/config.json. A model that
/// still has LoRA adapters is refused (merge_and_unload it, or save the adapter alone).
void save_pretrained(torch::nn::Module& model, const std::string& family, const std::string& dir, const lora::NamedTensors& tensors,
                     const std::string& config_json);

}  // namespace hf
