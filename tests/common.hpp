#pragma once
// Shared test helpers: a seeding fixture, reference formulas on plain tensors, small models.

#include <gtest/gtest.h>
#include <lora/lora.hpp>
#include <lora_test/errors.hpp>
#include <torch/version.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include <ftw.h>
#include <unistd.h>
#include <cstdio>

namespace lora_test {

/// Every test starts from torch::manual_seed(0), as PyTorch's own C++ API tests do.
class Seeded : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

/// The LoRA formula in float64 from plain tensors: x W0ᵀ + b + s (x Aᵀ) Bᵀ.
inline torch::Tensor reference_linear(const torch::Tensor& x, const torch::Tensor& W0, const torch::Tensor& b,
                                      const torch::Tensor& A, const torch::Tensor& B, double s) {
  auto d = [](const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kDouble); };
  auto y = torch::matmul(d(x), d(W0).t());
  if (b.defined()) y = y + d(b);
  if (A.defined()) y = y + s * torch::matmul(torch::matmul(d(x), d(A).t()), d(B).t());
  return y;
}

/// Max |a - b| / max(|b|, tiny), both taken to float64 on the CPU.
inline double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto A = a.detach().to(torch::kCPU, torch::kDouble), B = b.detach().to(torch::kCPU, torch::kDouble);
  return (A - B).abs().max().item<double>() / std::max(B.abs().max().item<double>(), 1e-300);
}

/// Central finite differences (step 1e-6) of the scalar `loss()` with respect to every element
/// of the float64 tensor `p`, which is perturbed in place and restored.
template <class Loss>
torch::Tensor numeric_gradient(torch::Tensor p, Loss&& loss) {
  auto numeric = torch::zeros_like(p);
  const double h = 1e-6;
  torch::NoGradGuard no_grad;
  auto flat = p.view({-1});
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double v = flat[i].item<double>();
    flat[i] = v + h;
    const double up = loss().template item<double>();
    flat[i] = v - h;
    const double down = loss().template item<double>();
    flat[i] = v;
    numeric.view({-1})[i] = (up - down) / (2 * h);
  }
  return numeric;
}


/// Removes a folder and everything in it. Not std::filesystem::remove_all: the pip wheels of
/// LibTorch 2.x export a statically linked copy of libstdc++'s filesystem code whose
/// remove_all crashes (null call) in any program that links them (pytorch/pytorch#133437).
inline void remove_tree(const std::string& path) {
  ::nftw(path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }, 16,
         FTW_DEPTH | FTW_PHYS);
}

/// Copies every parameter of `to` from the parameter of the same name in `from`: a second model
/// with the first one's base weights, built before any adapter is added.
inline void copy_parameters(torch::nn::Module& to, torch::nn::Module& from) {
  torch::NoGradGuard no_grad;
  auto src = from.named_parameters();
  for (auto& p : to.named_parameters()) p.value().copy_(src[p.key()]);
}

/// A fresh, empty folder under the system's temp folder, named for the test and the process.
inline std::filesystem::path temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("lora_adapter_" + name + "_" + std::to_string(::getpid()));
  remove_tree(dir.string());
  std::filesystem::create_directories(dir);
  return dir;
}

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

inline void write_text(const std::filesystem::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

/// safetensors bytes laid out by hand from (name, shape, float values), F32, in order: a file
/// written without the library's writer.
inline std::string hand_file(const std::vector<std::tuple<std::string, std::vector<int64_t>, std::vector<float>>>& ts) {
  std::string header = "{", data;
  for (const auto& [name, shape, values] : ts) {
    std::string dims;
    for (auto d : shape) dims += (dims.empty() ? "" : ",") + std::to_string(d);
    header += (header.size() > 1 ? "," : "") + std::string("\"") + name + "\":{\"dtype\":\"F32\",\"shape\":[" + dims +
              "],\"data_offsets\":[" + std::to_string(data.size()) + "," + std::to_string(data.size() + 4 * values.size()) + "]}";
    data.append(reinterpret_cast<const char*>(values.data()), 4 * values.size());
  }
  header += "}";
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  return out + header + data;
}

/// A two-block model shaped like a transformer, with LoRA-capable projections:
/// blocks.N.attn.{q,k,v,o}, blocks.N.mlp.{fc,proj}, plus an embedding and a plain head.
struct AttnImpl : torch::nn::Cloneable<AttnImpl> {
  explicit AttnImpl(int64_t d) : d(d) { reset(); }
  void reset() override {
    q = register_module("q", lora::LoRALinear(d, d));
    k = register_module("k", lora::LoRALinear(d, d));
    v = register_module("v", lora::LoRALinear(d, d));
    o = register_module("o", lora::LoRALinear(d, d));
  }
  torch::Tensor forward(const torch::Tensor& x) {  // x: [B, T, d], single head, causal
    auto att = torch::matmul(q(x), k(x).transpose(1, 2)) / std::sqrt(double(d));
    auto T = x.size(1);
    auto mask = torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(x.device())).triu(1);
    att = att.masked_fill(mask, -1e9).softmax(-1);
    return o(torch::matmul(att, v(x)));
  }
  int64_t d;
  lora::LoRALinear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
};
TORCH_MODULE(Attn);

struct MlpImpl : torch::nn::Cloneable<MlpImpl> {
  explicit MlpImpl(int64_t d) : d(d) { reset(); }
  void reset() override {
    fc = register_module("fc", lora::LoRALinear(d, 4 * d));
    proj = register_module("proj", lora::LoRALinear(4 * d, d));
  }
  torch::Tensor forward(const torch::Tensor& x) { return proj(torch::gelu(fc(x))); }
  int64_t d;
  lora::LoRALinear fc{nullptr}, proj{nullptr};
};
TORCH_MODULE(Mlp);

struct BlockImpl : torch::nn::Cloneable<BlockImpl> {
  explicit BlockImpl(int64_t d) : d(d) { reset(); }
  void reset() override {
    ln = register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    attn = register_module("attn", Attn(d));
    mlp = register_module("mlp", Mlp(d));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = x + attn(ln(x));
    return x + mlp(ln(x));
  }
  int64_t d;
  torch::nn::LayerNorm ln{nullptr};
  Attn attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(Block);

struct TinyTransformerImpl : torch::nn::Cloneable<TinyTransformerImpl> {
  TinyTransformerImpl(int64_t vocab = 17, int64_t d = 8, int64_t layers = 2) : vocab(vocab), d(d), layers(layers) { reset(); }
  void reset() override {
    emb = register_module("emb", lora::LoRAEmbedding(vocab, d));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < layers; ++i) blocks->push_back(Block(d));
    head = register_module("head", torch::nn::Linear(d, 1));
  }
  torch::Tensor forward(const torch::Tensor& ids) {
    auto x = emb(ids);
    for (const auto& b : *blocks) x = b->as<BlockImpl>()->forward(x);
    return head(x).squeeze(-1);
  }
  int64_t vocab, d, layers;
  lora::LoRAEmbedding emb{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(TinyTransformer);

#if TORCH_VERSION_MAJOR >= 2
namespace warning_api = c10::WarningUtils;  // LibTorch 2.x: c10::Warning became the warning's class
#else
namespace warning_api = c10::Warning;
#endif

/// Collects the c10 warnings (TORCH_WARN) raised in a scope instead of printing them.
class CaptureWarnings : public c10::WarningHandler {
 public:
  CaptureWarnings() : prev_(warning_api::get_warning_handler()) { warning_api::set_warning_handler(this); }
  ~CaptureWarnings() override { warning_api::set_warning_handler(prev_); }
  CaptureWarnings(const CaptureWarnings&) = delete;
  CaptureWarnings& operator=(const CaptureWarnings&) = delete;
#if TORCH_VERSION_MAJOR >= 2
  void process(const c10::Warning& warning) override { messages.push_back(warning.msg()); }
#else
  void process(const c10::SourceLocation&, const std::string& msg, const bool) override { messages.push_back(msg); }
#endif
  /// How many messages contain `text`.
  size_t count(const std::string& text) const {
    size_t n = 0;
    for (const auto& m : messages) n += m.find(text) != std::string::npos;
    return n;
  }
  std::vector<std::string> messages;

 private:
  c10::WarningHandler* prev_;
};

}  // namespace lora_test
