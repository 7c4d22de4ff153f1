#pragma once
// Where a GPT-2 checkpoint named on the command line lives: a folder, or a model of the
// HuggingFace hub already in the local HF cache (the cache Python's transformers fills).

#include <string>
#include <vector>

namespace gpt2 {

/// The files a GPT-2 folder needs here.
inline const std::vector<std::string>& checkpoint_files() {
  static const std::vector<std::string> files{"config.json", "model.safetensors", "vocab.json", "merges.txt"};
  return files;
}

/// The HF hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
/// else ~/.cache/huggingface/hub (huggingface_hub's order).
std::string hf_hub_cache();

/// The folder holding the checkpoint `name_or_path`: the path itself when it is a folder; else,
/// for a hub model id ("gpt2-medium", "openai-community/gpt2"), the snapshot that the cache's
/// refs/main names (<cache>/models--<org>--<name>/snapshots/<revision>/), which must hold `files`.
/// Otherwise a std::runtime_error says where it looked and exactly what to fetch.
///
/// Example:
/// \code
///   auto dir = gpt2::resolve_pretrained("gpt2-medium");  // ~/.cache/huggingface/hub/models--gpt2-medium/snapshots/<rev>
/// \endcode
std::string resolve_pretrained(const std::string& name_or_path, const std::vector<std::string>& files = checkpoint_files());

}  // namespace gpt2
