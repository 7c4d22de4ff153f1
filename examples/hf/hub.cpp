#include "hub.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <stdexcept>

namespace hf {

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

bool env_true(const char* name) {
  std::string v = env(name);
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return v == "1" || v == "ON" || v == "YES" || v == "TRUE";
}

/// <cache>/models--<org>--<name>
std::string repo_folder(const std::string& repo_id) {
  std::string folder = "models--" + repo_id;
  for (size_t at = folder.find('/'); at != std::string::npos; at = folder.find('/')) folder.replace(at, 1, "--");
  return hf_hub_cache() + "/" + folder;
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
  const std::string repo = repo_folder(name_or_path);
  std::ifstream ref(repo + "/refs/main");
  std::string revision, why;
  if (ref >> revision) {
    const std::string snapshot = repo + "/snapshots/" + revision;
    std::string missing;
    for (const auto& f : files)
      if (!fs::exists(snapshot + "/" + f)) missing += (missing.empty() ? "" : ", ") + f;
    if (missing.empty()) return snapshot;
    why = "model '" + name_or_path + "': the HuggingFace cache snapshot " + snapshot + " lacks " + missing;
  } else {
    why = "model '" + name_or_path + "' is neither a folder nor in the HuggingFace cache (no " + repo + "/refs/main)";
  }
  if (env_true("HF_HUB_OFFLINE"))
    throw std::runtime_error(why + ", and HF_HUB_OFFLINE forbids downloading: " + fetch_hint(name_or_path, files));
  try {
    return download_pretrained(name_or_path, files);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(why + "; downloading it failed (" + e.what() + "): " + fetch_hint(name_or_path, files));
  }
}

// ---- downloading -----------------------------------------------------------------------------

namespace {

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
  ~CurlGlobal() { curl_global_cleanup(); }
};

using Easy = std::unique_ptr<CURL, decltype(&curl_easy_cleanup)>;
using Headers = std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)>;

Easy new_easy(const std::string& url, curl_slist* headers) {
  static CurlGlobal global;
  Easy h(curl_easy_init(), &curl_easy_cleanup);
  if (!h) throw std::runtime_error("libcurl could not start a transfer");
  curl_easy_setopt(h.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(h.get(), CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h.get(), CURLOPT_USERAGENT, "lora-examples/1 (libcurl)");
  curl_easy_setopt(h.get(), CURLOPT_CONNECTTIMEOUT, 20L);
  curl_easy_setopt(h.get(), CURLOPT_LOW_SPEED_LIMIT, 1L);  // a stalled transfer ends after a minute
  curl_easy_setopt(h.get(), CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(h.get(), CURLOPT_NOSIGNAL, 1L);
  return h;
}

Headers auth_headers() {
  curl_slist* list = nullptr;
  if (auto token = env("HF_TOKEN"); !token.empty()) list = curl_slist_append(list, ("Authorization: Bearer " + token).c_str());
  return Headers(list, &curl_slist_free_all);
}

size_t collect_header(char* data, size_t size, size_t n, void* user) {
  auto& headers = *static_cast<std::map<std::string, std::string>*>(user);
  std::string line(data, size * n);
  const size_t colon = line.find(':');
  if (line.rfind("HTTP/", 0) == 0) headers.clear();  // a new response (after a redirect or a 100)
  if (colon == std::string::npos) return size * n;
  std::string key = line.substr(0, colon), value = line.substr(colon + 1);
  std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const auto first = value.find_first_not_of(" \t"), last = value.find_last_not_of(" \t\r\n");
  headers[key] = first == std::string::npos ? "" : value.substr(first, last - first + 1);
  return size * n;
}

std::string http_error(long status, const std::string& url) {
  std::string text = "HTTP " + std::to_string(status) + " for " + url;
  if (status == 401 || status == 403) text += ": a gated or private model; set HF_TOKEN to a token that may read it";
  if (status == 404) text += ": no such model or file on the hub";
  return text;
}

struct FileInfo {
  std::string commit, etag;
  long long size = -1;
};

/// HEAD <endpoint>/<repo>/resolve/main/<file>, following the hub's own (relative) redirects only,
/// as huggingface_hub does: the answer before the CDN redirect carries the commit and the etag.
FileInfo head(const std::string& repo_id, const std::string& file) {
  const std::string endpoint = hf_endpoint();
  std::string url = endpoint + "/" + repo_id + "/resolve/main/" + file;
  auto auth = auth_headers();
  for (int hop = 0; hop < 5; ++hop) {
    std::map<std::string, std::string> headers;
    auto h = new_easy(url, auth.get());
    curl_easy_setopt(h.get(), CURLOPT_NOBODY, 1L);
    curl_easy_setopt(h.get(), CURLOPT_HEADERFUNCTION, collect_header);
    curl_easy_setopt(h.get(), CURLOPT_HEADERDATA, &headers);
    if (CURLcode rc = curl_easy_perform(h.get()); rc != CURLE_OK)
      throw std::runtime_error(std::string(curl_easy_strerror(rc)) + " for " + url);
    long status = 0;
    curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &status);
    if (status >= 300 && status < 400 && headers.count("location") && headers["location"].rfind("/", 0) == 0) {
      url = endpoint + headers["location"];  // a renamed repository (gpt2-medium -> openai-community/gpt2-medium)
      continue;
    }
    if (status >= 400) throw std::runtime_error(http_error(status, url));
    FileInfo info;
    info.commit = headers["x-repo-commit"];
    info.etag = headers.count("x-linked-etag") ? headers["x-linked-etag"] : headers["etag"];
    if (info.etag.rfind("W/", 0) == 0) info.etag.erase(0, 2);
    info.etag.erase(std::remove(info.etag.begin(), info.etag.end(), '"'), info.etag.end());
    const std::string size = headers.count("x-linked-size") ? headers["x-linked-size"] : headers["content-length"];
    if (!size.empty() && (status == 200 || headers.count("x-linked-size"))) info.size = std::atoll(size.c_str());
    if (info.commit.empty() || info.etag.empty() || info.etag.find('/') != std::string::npos)
      throw std::runtime_error(url + " answered without a usable X-Repo-Commit and ETag: is " + endpoint + " a HuggingFace hub?");
    return info;
  }
  throw std::runtime_error("too many redirects for " + url);
}

struct Transfer {
  long long offset = 0;
  std::string name;
  int shown = -1;
  bool progress = true;
};

size_t write_body(char* data, size_t size, size_t n, void* out) {
  return std::fwrite(data, 1, size * n, static_cast<std::FILE*>(out));
}

int show_progress(void* user, curl_off_t total, curl_off_t now, curl_off_t, curl_off_t) {
  auto& t = *static_cast<Transfer*>(user);
  if (!t.progress || total <= 0) return 0;
  const long long whole = t.offset + total, done = t.offset + now;
  const int percent = static_cast<int>(100 * done / std::max<long long>(whole, 1));
  if (percent != t.shown) {
    t.shown = percent;
    std::fprintf(stderr, "\rdownloading %s: %.1f / %.1f MB (%d%%)", t.name.c_str(), double(done) / 1e6, double(whole) / 1e6, percent);
    if (percent == 100) std::fputc('\n', stderr);
  }
  return 0;
}

/// GET url, appending to `part` from byte `offset` (a Range request when offset > 0).
CURLcode get_into(const std::string& url, const std::string& part, Transfer& t, long& status) {
  std::unique_ptr<std::FILE, decltype(&std::fclose)> out(std::fopen(part.c_str(), t.offset > 0 ? "ab" : "wb"), &std::fclose);
  if (!out) throw std::runtime_error("cannot write '" + part + "'");
  auto auth = auth_headers();
  auto h = new_easy(url, auth.get());
  curl_easy_setopt(h.get(), CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(h.get(), CURLOPT_RESUME_FROM_LARGE, static_cast<curl_off_t>(t.offset));
  curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, write_body);
  curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, out.get());
  curl_easy_setopt(h.get(), CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(h.get(), CURLOPT_XFERINFOFUNCTION, show_progress);
  curl_easy_setopt(h.get(), CURLOPT_XFERINFODATA, &t);
  const CURLcode rc = curl_easy_perform(h.get());
  curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &status);
  if (std::fflush(out.get()) != 0) throw std::runtime_error("cannot write '" + part + "' (disk full?)");
  return rc;
}

/// GET url into `blob` via `blob`.incomplete (resumed from its size), renamed when whole.
void fetch_blob(const std::string& url, const std::string& blob, long long expected, const std::string& name, bool progress) {
  const std::string part = blob + ".incomplete";
  Transfer t;
  t.offset = fs::exists(part) ? static_cast<long long>(fs::file_size(part)) : 0;
  t.name = name;
  t.progress = progress;
  if (expected >= 0 && t.offset > expected) t.offset = 0;
  if (expected < 0 || t.offset < expected) {
    long status = 0;
    CURLcode rc = get_into(url, part, t, status);
    if (rc == CURLE_RANGE_ERROR && t.offset > 0) {  // the server cannot resume: start over
      t.offset = 0;
      rc = get_into(url, part, t, status);
    }
    if (status >= 400 && status != 416) throw std::runtime_error(http_error(status, url));
    if (rc != CURLE_OK)
      throw std::runtime_error(std::string(curl_easy_strerror(rc)) + " for " + url + " (" + std::to_string(fs::file_size(part)) +
                               " bytes kept in " + part + "; the next try resumes from there)");
  }
  const auto got = static_cast<long long>(fs::file_size(part));
  if (expected >= 0 && got != expected)
    throw std::runtime_error(url + " gave " + std::to_string(got) + " bytes, the hub announced " + std::to_string(expected));
  fs::rename(part, blob);
}

void write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!(out << text) || !out.flush()) throw std::runtime_error("cannot write '" + tmp + "'");
  }
  fs::rename(tmp, path);
}

}  // namespace

std::string hf_endpoint() {
  std::string e = env("HF_ENDPOINT");
  if (e.empty()) return "https://huggingface.co";
  while (!e.empty() && e.back() == '/') e.pop_back();
  return e;
}

std::string download_pretrained(const std::string& repo_id, const std::vector<std::string>& files, bool progress) {
  if (!looks_like_repo_id(repo_id)) throw std::runtime_error("'" + repo_id + "' is not a hub model id");
  const std::string repo = repo_folder(repo_id);
  std::string commit;
  for (const auto& file : files) {
    const FileInfo info = head(repo_id, file);
    if (commit.empty()) commit = info.commit;
    if (info.commit != commit)
      throw std::runtime_error("the hub's main revision of " + repo_id + " moved from " + commit + " to " + info.commit +
                               " while downloading; try again");
    const std::string blob = repo + "/blobs/" + info.etag, link = repo + "/snapshots/" + commit + "/" + file;
    fs::create_directories(repo + "/blobs");
    fs::create_directories(fs::path(link).parent_path());
    if (!fs::exists(blob))
      fetch_blob(hf_endpoint() + "/" + repo_id + "/resolve/" + commit + "/" + file, blob, info.size, repo_id + "/" + file, progress);
    std::error_code ec;
    fs::remove(link, ec);
    fs::create_symlink(fs::relative(blob, fs::path(link).parent_path()), link, ec);
    if (ec) fs::copy_file(blob, link, fs::copy_options::overwrite_existing);  // no symlinks here: a copy, as huggingface_hub does
  }
  fs::create_directories(repo + "/refs");
  write_atomically(repo + "/refs/main", commit);
  return repo + "/snapshots/" + commit;
}

}  // namespace hf
