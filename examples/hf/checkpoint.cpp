#include "checkpoint.hpp"

#include <set>

#include <filesystem>
#include <fstream>

namespace hf {

nlohmann::json read_config_json(const std::string& path, const std::string& family) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read '" + path + "': a " + family + " folder needs HF's config.json");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error("'" + path + "' is not valid JSON: " + e.what());
  }
}

std::string safetensors_path(const std::string& dir) {
  const std::string st = dir + "/model.safetensors";
  if (!std::filesystem::exists(st))
    throw std::runtime_error("'" + st + "' not found" +
                             (std::filesystem::exists(dir + "/pytorch_model.bin")
                                  ? std::string(": only pytorch_model.bin (pickle) is there, which is not read; convert it to safetensors")
                                  : std::string()));
  return st;
}

void throw_if_misfit(const std::string& file, const std::string& model, const Misfit& m, const std::string& hint) {
  if (m.empty()) return;
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 20; ++i) s += (i ? ", " : "") + v[i];
    return v.size() > 20 ? s + ", ... (" + std::to_string(v.size()) + " in all)" : s;
  };
  std::string msg = "'" + file + "' does not fit the " + model + " of its config.json:";
  if (!m.missing.empty()) msg += " missing " + list(m.missing) + ";";
  if (!m.unexpected.empty()) msg += " unexpected " + list(m.unexpected) + ";";
  if (!m.wrong_shape.empty()) msg += " " + list(m.wrong_shape) + ";";
  throw std::runtime_error(msg + " " + hint);
}

std::vector<std::string> load_classifier(torch::nn::Module& model, const std::string& st, const LoadRules& rules) {
  const lora::safetensors::File file(st);
  auto params = model.named_parameters();
  std::set<std::string> loaded;
  Misfit misfit;
  torch::NoGradGuard no_grad;
  for (const auto& t : file.tensors()) {
    if (rules.skip(t.name)) continue;
    const std::string key = rules.key(t.name);
    if (!params.contains(key)) {
      misfit.unexpected.push_back(t.name);
      continue;
    }
    const auto value = lora::borrow_tensor(t);
    if (value.sizes() != params[key].sizes()) {
      misfit.wrong_shape.push_back(t.name + " has shape " + lora::shape_str(torch::IntArrayRef(t.shape)) + ", expected " +
                                   lora::shape_str(params[key].sizes()));
      loaded.insert(key);  // there, if misshapen: not also "missing"
      continue;
    }
    params[key].copy_(value);
    loaded.insert(key);
  }
  std::vector<std::string> head;
  size_t head_size = 0;
  for (const auto& p : params) {
    head_size += rules.in_head(p.key());
    if (!loaded.count(p.key())) (rules.in_head(p.key()) ? head : misfit.missing).push_back(p.key());
  }
  if (!head.empty() && head.size() != head_size) misfit.missing.insert(misfit.missing.end(), head.begin(), head.end());  // half a head
  throw_if_misfit(st, rules.family, misfit, rules.hint);
  return head;
}

void save_pretrained(torch::nn::Module& model, const std::string& family, const std::string& dir, const lora::NamedTensors& tensors,
                     const std::string& config_json) {
  if (!lora::lora_state_dict(model).is_empty())
    throw std::logic_error(family + ": the model still has LoRA adapters; call lora::merge_and_unload(model) before "
                           "save_pretrained, or save the adapter alone with lora::save_adapter");
  std::filesystem::create_directories(dir);
  lora::save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  lora::write_text_file(dir + "/config.json", config_json);
}

}  // namespace hf
