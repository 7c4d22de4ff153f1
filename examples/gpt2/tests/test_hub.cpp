// Downloading hub models into the HuggingFace cache layout, against a small HTTP server in the test
// that answers as the hub does (X-Repo-Commit, ETag, Range requests).
#include <gtest/gtest.h>

#include "../../../tests/common.hpp"  // lora_test::remove_tree
#include "../../test_gpt2.hpp"
#include "../../test_util.hpp"
#include "hub.hpp"
#include "model.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

namespace fs = std::filesystem;

namespace {

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// A hub on 127.0.0.1 serving `files` of one repository at revision main = `commit`:
/// HEAD/GET <repo>/resolve/<main|commit>/<file>. Records each request's method, path, Range and
/// Authorization headers.
class FakeHub {
 public:
  FakeHub(std::string repo, std::map<std::string, std::string> files, std::string commit)
      : repo_(std::move(repo)), files_(std::move(files)), commit_(std::move(commit)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 8) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      throw std::runtime_error("FakeHub: cannot listen on 127.0.0.1");
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeHub() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<std::string> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  static std::string etag_of(const std::string& file) { return "etag-" + file; }

  std::atomic<bool> ignore_range{false};    // answer 200 with the whole file to a Range request
  std::atomic<int> cut_next_get{0};         // send only this many body bytes of the next GET, then close

 private:
  void serve() {
    for (;;) {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      handle(c);
      ::close(c);
    }
  }

  static std::string header(const std::string& request, const std::string& name) {
    std::istringstream in(request);
    std::string line;
    while (std::getline(in, line)) {
      if (line.size() > name.size() && strncasecmp(line.c_str(), name.c_str(), name.size()) == 0 && line[name.size()] == ':') {
        std::string v = line.substr(name.size() + 1);
        v.erase(0, v.find_first_not_of(' '));
        if (!v.empty() && v.back() == '\r') v.pop_back();
        return v;
      }
    }
    return "";
  }

  void send_all(int c, const std::string& data) {
    for (size_t at = 0; at < data.size();) {
      const ssize_t n = ::send(c, data.data() + at, data.size() - at, MSG_NOSIGNAL);
      if (n <= 0) return;
      at += static_cast<size_t>(n);
    }
  }

  void handle(int c) {
    std::string request;
    char buf[4096];
    while (request.find("\r\n\r\n") == std::string::npos) {
      const ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) return;
      request.append(buf, static_cast<size_t>(n));
    }
    std::istringstream first(request);
    std::string method, path;
    first >> method >> path;
    const std::string range = header(request, "Range");
    {
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(method + " " + path + (range.empty() ? "" : " " + range) +
                          (header(request, "Authorization").empty() ? "" : " auth=" + header(request, "Authorization")));
    }
    const std::string main_prefix = "/" + repo_ + "/resolve/main/", commit_prefix = "/" + repo_ + "/resolve/" + commit_ + "/";
    std::string file;
    if (path.rfind(main_prefix, 0) == 0) file = path.substr(main_prefix.size());
    else if (path.rfind(commit_prefix, 0) == 0) file = path.substr(commit_prefix.size());
    const auto it = files_.find(file);
    if (file.empty() || it == files_.end()) {
      send_all(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      return;
    }
    const std::string& body = it->second;
    size_t from = 0;
    if (!range.empty() && !ignore_range) from = std::stoul(range.substr(range.find('=') + 1));
    std::ostringstream head;
    if (from >= body.size() && from > 0) {
      send_all(c, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      return;
    }
    head << (from > 0 ? "HTTP/1.1 206 Partial Content\r\n" : "HTTP/1.1 200 OK\r\n") << "X-Repo-Commit: " << commit_
         << "\r\nETag: \"" << etag_of(file) << "\"\r\nContent-Length: " << body.size() - from << "\r\n";
    if (from > 0) head << "Content-Range: bytes " << from << "-" << body.size() - 1 << "/" << body.size() << "\r\n";
    head << "Connection: close\r\n\r\n";
    send_all(c, head.str());
    if (method != "GET") return;
    size_t n = body.size() - from;
    if (const int cut = cut_next_get.exchange(0); cut > 0) n = std::min(n, static_cast<size_t>(cut));
    send_all(c, body.substr(from, n));
  }

  std::string repo_;
  std::map<std::string, std::string> files_;
  std::string commit_;
  int fd_ = -1, port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> requests_;
};

class Gpt2Hub : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    root_ = fs::temp_directory_path() / ("gpt2_hub_" + std::to_string(::getpid()));
    lora_test::remove_tree(root_.string());
    model_ = std::make_shared<gpt2::GPT2LMHeadModelImpl>(example_test::tiny_gpt2_config(40, 16, 1, 8, 2));
    model_->eval();
    model_->save_pretrained((root_ / "source").string());
    for (const char* f : {"config.json", "model.safetensors"}) files_[f] = read_all(root_ / "source" / f);
    files_["vocab.json"] = "{\"a\": 0}";
    files_["merges.txt"] = "#version: 0.2\n";
  }
  void TearDown() override { lora_test::remove_tree(root_.string()); }

  fs::path root_;
  std::shared_ptr<gpt2::GPT2LMHeadModelImpl> model_;
  std::map<std::string, std::string> files_;
  const std::string commit_ = "4c1d2e3f";
};

}  // namespace

TEST_F(Gpt2Hub, DownloadsIntoTheHuggingFaceCacheLayoutOnce) {
  FakeHub hub("org/tiny", files_, commit_);
  example_test::ScopedEnv cache("HF_HUB_CACHE", (root_ / "cache").string()), endpoint("HF_ENDPOINT", hub.endpoint() + "/"),
      offline("HF_HUB_OFFLINE", ""), token("HF_TOKEN", "hf_secret");
  const std::string snapshot = hf::resolve_pretrained("org/tiny", gpt2::checkpoint_files());
  const fs::path repo = root_ / "cache" / "models--org--tiny";
  EXPECT_EQ(snapshot, (repo / "snapshots" / commit_).string());
  EXPECT_EQ(read_all(repo / "refs" / "main"), commit_);
  for (const auto& [name, bytes] : files_) {
    const fs::path link = repo / "snapshots" / commit_ / name;
    ASSERT_TRUE(fs::is_symlink(link)) << name;
    EXPECT_EQ(fs::read_symlink(link), fs::path("../../blobs") / FakeHub::etag_of(name)) << name;
    EXPECT_EQ(read_all(link), bytes) << name;
    EXPECT_FALSE(fs::exists(repo / "blobs" / (FakeHub::etag_of(name) + ".incomplete"))) << name;
  }
  // Files are fetched by the commit that main named, with the token.
  const auto seen = hub.requests();
  EXPECT_EQ(seen.size(), 2 * files_.size());
  for (const auto& r : seen) EXPECT_NE(r.find("auth=Bearer hf_secret"), std::string::npos) << r;
  EXPECT_NE(std::find(seen.begin(), seen.end(), "GET /org/tiny/resolve/" + commit_ + "/model.safetensors auth=Bearer hf_secret"),
            seen.end());
  // The downloaded checkpoint is the model.
  auto loaded = gpt2::GPT2LMHeadModelImpl::from_pretrained(snapshot);
  loaded->eval();
  const auto ids = torch::randint(0, 40, {2, 5});
  EXPECT_TRUE(torch::equal(loaded->forward(ids), model_->forward(ids)));
  // In the cache now: no second request.
  EXPECT_EQ(hf::resolve_pretrained("org/tiny", gpt2::checkpoint_files()), snapshot);
  EXPECT_EQ(hub.requests().size(), seen.size());
}

TEST_F(Gpt2Hub, InterruptedDownloadsResume) {
  FakeHub hub("org/tiny", files_, commit_);
  example_test::ScopedEnv cache("HF_HUB_CACHE", (root_ / "cache").string()), endpoint("HF_ENDPOINT", hub.endpoint()),
      offline("HF_HUB_OFFLINE", ""), token("HF_TOKEN", "");
  const std::string& weights = files_["model.safetensors"];
  const fs::path part = root_ / "cache" / "models--org--tiny" / "blobs" / (FakeHub::etag_of("model.safetensors") + ".incomplete");
  // The connection drops after 100 bytes: an error that says the bytes are kept, and the part file holds them.
  hub.cut_next_get = 100;
  const std::vector<std::string> weights_only{"model.safetensors"};
  const auto msg = example_test::error_of([&] { hf::download_pretrained("org/tiny", weights_only, false); });
  EXPECT_NE(msg.find("bytes kept in"), std::string::npos) << msg;
  ASSERT_TRUE(fs::exists(part));
  EXPECT_EQ(read_all(part), weights.substr(0, 100));
  // The next try asks for the rest only, and the blob is whole.
  const std::string snapshot = hf::download_pretrained("org/tiny", weights_only, false);
  EXPECT_EQ(hub.requests().back(), "GET /org/tiny/resolve/" + commit_ + "/model.safetensors bytes=100-");
  EXPECT_EQ(read_all(fs::path(snapshot) / "model.safetensors"), weights);
  EXPECT_FALSE(fs::exists(part));
  // A server that ignores Range sends everything again: the part file starts over instead of growing.
  lora_test::remove_tree((root_ / "cache").string());
  fs::create_directories(part.parent_path());
  std::ofstream(part, std::ios::binary) << weights.substr(0, 50);
  hub.ignore_range = true;
  EXPECT_EQ(read_all(fs::path(hf::download_pretrained("org/tiny", weights_only, false)) / "model.safetensors"), weights);
}

TEST_F(Gpt2Hub, FailedDownloadsSayWhatToFetch) {
  FakeHub hub("org/tiny", files_, commit_);
  example_test::ScopedEnv cache("HF_HUB_CACHE", (root_ / "cache").string()), endpoint("HF_ENDPOINT", hub.endpoint()),
      offline("HF_HUB_OFFLINE", ""), token("HF_TOKEN", "");
  // A model the hub does not have: the HTTP status, the URL, and the manual way.
  auto msg = example_test::error_of([] { hf::resolve_pretrained("org/absent", gpt2::checkpoint_files()); });
  EXPECT_NE(msg.find("HTTP 404"), std::string::npos) << msg;
  EXPECT_NE(msg.find("/org/absent/resolve/main/config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("huggingface-cli download org/absent config.json model.safetensors vocab.json merges.txt"), std::string::npos)
      << msg;
  EXPECT_FALSE(fs::exists(root_ / "cache" / "models--org--absent" / "refs" / "main"));
  // Offline: no request at all.
  const size_t before = hub.requests().size();
  {
    example_test::ScopedEnv off("HF_HUB_OFFLINE", "1");
    msg = example_test::error_of([] { hf::resolve_pretrained("org/tiny", gpt2::checkpoint_files()); });
  }
  EXPECT_NE(msg.find("HF_HUB_OFFLINE forbids downloading"), std::string::npos) << msg;
  EXPECT_EQ(hub.requests().size(), before);
  // Nobody listening: the transport error.
  std::string dead;
  {
    FakeHub gone("org/tiny", files_, commit_);
    dead = gone.endpoint();
  }
  example_test::ScopedEnv nowhere("HF_ENDPOINT", dead);
  msg = example_test::error_of([] { hf::resolve_pretrained("org/tiny", gpt2::checkpoint_files()); });
  EXPECT_NE(msg.find("downloading it failed"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dead), std::string::npos) << msg;
}
