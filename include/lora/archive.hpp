#pragma once
/// \file archive.hpp
/// The LibTorch-native archive of a model's adapter state (`lora_state_dict` through
/// `torch::serialize`): for resuming C++ runs. Files for other tools are PEFT's (adapter_io.hpp).
///
/// Example:
/// \code
///   lora::save_lora_state(*model, "run/lora.pt");
///   lora::load_lora_state(*other, "run/lora.pt");   // a model injected with the same config
/// \endcode

#include <lora/dora.hpp>
#include <lora/inject.hpp>
#include <lora/atomic_file.hpp>
#include <lora/state.hpp>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace lora {

/// Saves `lora_state_dict(model, bias, adapter)` as a LibTorch archive (names kept), atomically.
/// Reload it with `load_lora_state` into a model injected with the same config.
inline void save_lora_state(torch::nn::Module& model, const std::string& path, const std::string& adapter = "",
                            Bias bias = Bias::None) {
  const auto state = lora_state_dict(model, bias, adapter);
  if (state.is_empty()) throw std::invalid_argument("save_lora_state: the model has no adapter parameters to save");
  torch::serialize::OutputArchive archive;
  for (const auto& item : state) archive.write(item.key(), item.value().detach());
  atomic_write(path, [&](std::FILE* f) {
    archive.save_to([&](const void* data, size_t n) {
      write_bytes(f, data, n, path);
      return n;
    });
  });
}

/// Loads an archive written by `save_lora_state` as strictly as `load_adapter`: the
/// archive's names must be exactly `lora_state_dict(model, bias, adapter)`'s and every
/// shape must match; otherwise nothing is changed and the error names the tensors.
inline void load_lora_state(torch::nn::Module& model, const std::string& path, const std::string& adapter = "",
                            Bias bias = Bias::None) {
  if (!std::filesystem::exists(path)) throw std::runtime_error("'" + path + "' not found");
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw std::runtime_error("'" + path + "' is not a LibTorch archive (truncated?): " + e.what_without_backtrace());
  }
  auto state = lora_state_dict(model, bias, adapter);
  std::vector<std::string> unexpected, missing;
  for (const auto& key : archive.keys())
    if (!state.contains(key)) unexpected.push_back(key);
  std::map<std::string, torch::Tensor> loaded;
  for (const auto& item : state) {
    torch::Tensor t;
    if (!archive.try_read(item.key(), t)) {
      missing.push_back(item.key());
      continue;
    }
    if (t.sizes() != item.value().sizes())
      throw std::runtime_error("'" + path + "': tensor '" + item.key() + "' has shape " + shape_str(t.sizes()) +
                               ", the model expects " + shape_str(item.value().sizes()) +
                               ": saved from a model injected with another r or base model?");
    loaded[item.key()] = t;
  }
  if (!unexpected.empty() || !missing.empty()) {
    auto dora = [](const std::vector<std::string>& names) {
      for (const auto& n : names)
        if (n.find(std::string(DoRAImpl::kFileKey) + ".") != std::string::npos) return true;
      return false;
    };
    const std::string hint = dora(unexpected) ? ": the archive holds DoRA magnitudes, the model's adapter is plain LoRA (inject with use_dora(true))"
                             : dora(missing) ? ": the model's adapter is DoRA, the archive's is plain LoRA (inject without use_dora)"
                                             : " (inject the model with the config it was saved from)";
    throw std::runtime_error("'" + path + "' does not match the model's adapters: unexpected " +
                             detail::list_names(unexpected) + "; missing " + detail::list_names(missing) + hint);
  }
  torch::NoGradGuard no_grad;
  for (auto& item : state) item.value().copy_(loaded[item.key()]);
}

}  // namespace lora
