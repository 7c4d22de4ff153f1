#include "hub.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace gpt2 {

namespace fs = std::filesystem;

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : std::string();
}

/// "gpt2-medium" or "org/name": letters, digits, '-', '_', '.', at most one '/', not a path.
bool looks_like_repo_id(const std::string& s) {
  if (s.empty() || s.front() == '.' || s.front() == '/' || s.find("..") != std::string::npos) return false;
  int slashes = 0;
  for (char c : s) {
    if (c == '/') ++slashes;
    else if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  }
  return slashes <= 1 && s.back() != '/';
}

std::string fetch_hint(const std::string& id, const std::vector<std::string>& files) {
  std::string list;
  for (const auto& f : files) list += " " + f;
  return "get it where a network is at hand with `huggingface-cli download " + id + list +
         "` (which fills this cache), or put those files in a folder and pass the folder";
}

}  // namespace

std::string hf_hub_cache() {
  if (auto v = env("HF_HUB_CACHE"); !v.empty()) return v;
  if (auto v = env("HF_HOME"); !v.empty()) return v + "/hub";
  if (auto v = env("XDG_CACHE_HOME"); !v.empty()) return v + "/huggingface/hub";
  return env("HOME") + "/.cache/huggingface/hub";
}

std::string resolve_pretrained(const std::string& name_or_path, const std::vector<std::string>& files) {
  if (fs::is_directory(name_or_path)) return name_or_path;
  if (!looks_like_repo_id(name_or_path))
    throw std::runtime_error("model '" + name_or_path + "': no such folder");
  std::string folder = "models--" + name_or_path;
  for (size_t at = folder.find('/'); at != std::string::npos; at = folder.find('/')) folder.replace(at, 1, "--");
  const std::string cache = hf_hub_cache(), repo = cache + "/" + folder;
  std::ifstream ref(repo + "/refs/main");
  std::string revision;
  if (!(ref >> revision))
    throw std::runtime_error("model '" + name_or_path + "' is neither a folder nor in the HuggingFace cache (no " + repo +
                             "/refs/main): " + fetch_hint(name_or_path, files));
  const std::string snapshot = repo + "/snapshots/" + revision;
  std::string missing;
  for (const auto& f : files)
    if (!fs::exists(snapshot + "/" + f)) missing += (missing.empty() ? "" : ", ") + f;
  if (!missing.empty())
    throw std::runtime_error("model '" + name_or_path + "': the HuggingFace cache snapshot " + snapshot + " lacks " + missing +
                             ": " + fetch_hint(name_or_path, files));
  return snapshot;
}

}  // namespace gpt2
