#pragma once
// Where a checkpoint named on the command line lives, for every model family of the examples: a
// folder, or a model of the HuggingFace hub in the local HF cache (the cache Python's transformers
// fills), downloaded into that cache when it is not there and the network allows. Each family
// names the files its folders need (gpt2::checkpoint_files(), roberta::checkpoint_files()).

#include <string>
#include <vector>

namespace hf {

/// The HF hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
/// else ~/.cache/huggingface/hub (huggingface_hub's order).
std::string hf_hub_cache();

/// The hub to download from: $HF_ENDPOINT, else https://huggingface.co (huggingface_hub's).
std::string hf_endpoint();

/// Downloads `files` of the hub model `repo_id` (revision main) into the cache as huggingface_hub
/// lays it out: blobs/<etag> (written as <etag>.incomplete and renamed when whole; an
/// interrupted download resumes from the .incomplete file's size), snapshots/<commit>/<file> as a
/// relative symlink to its blob, refs/main holding the commit. Files already there are not
/// fetched again. Sends $HF_TOKEN as a bearer token when set; a progress line goes to stderr
/// (`progress` false: none). Returns the snapshot folder; a std::runtime_error names the file, the
/// URL and the cause.
std::string download_pretrained(const std::string& repo_id, const std::vector<std::string>& files, bool progress = true);

/// The folder holding the checkpoint `name_or_path`: the path itself when it is a folder; else,
/// for a hub model id ("gpt2-medium", "openai-community/gpt2"), the snapshot that the cache's
/// refs/main names (<cache>/models--<org>--<name>/snapshots/<revision>/), which must hold `files`;
/// what the cache lacks is downloaded (download_pretrained) unless $HF_HUB_OFFLINE is 1. Otherwise
/// a std::runtime_error says where it looked, why the download failed and exactly what to fetch.
///
/// Example:
/// \code
///   auto dir = hf::resolve_pretrained("gpt2-medium", gpt2::checkpoint_files());  // ~/.cache/huggingface/hub/models--gpt2-medium/snapshots/<rev>
/// \endcode
std::string resolve_pretrained(const std::string& name_or_path, const std::vector<std::string>& files);

}  // namespace hf
