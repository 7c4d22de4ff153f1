#include "deberta_tokenizer.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

namespace deberta {

namespace {

/// spm_shim.cpp's functions, from a namespace of their own (see the header).
struct Shim {
  void* (*load)(const char*, char*, int);
  void (*free)(void*);
  int (*size)(void*);
  int (*piece_to_id)(void*, const char*);
  int (*id_to_piece)(void*, int, char*, int);
  int (*is_unknown)(void*, int);
  int (*encode)(void*, const char*, size_t, int*, int);
  int (*decode)(void*, const int*, int, char*, int);
  int (*train)(const char*, char*, int);

  static const Shim& get() {
    static const Shim shim = [] {
      const char* env = std::getenv("LORA_SPM_SHIM");
      const std::string path = env ? env : LORA_SPM_SHIM_PATH;
      void* h = dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!h)
        throw std::runtime_error("cannot load the SentencePiece shim '" + path + "' (" + dlerror() +
                                 "): build the lora_spm_shim target, or point $LORA_SPM_SHIM at liblora_spm_shim.so");
      Shim s{};
      auto bind = [&](auto& fn, const char* name) {
        fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
        if (!fn) throw std::runtime_error("the SentencePiece shim '" + path + "' lacks " + name + ": rebuild lora_spm_shim");
      };
      bind(s.load, "lora_spm_load");
      bind(s.free, "lora_spm_free");
      bind(s.size, "lora_spm_size");
      bind(s.piece_to_id, "lora_spm_piece_to_id");
      bind(s.id_to_piece, "lora_spm_id_to_piece");
      bind(s.is_unknown, "lora_spm_is_unknown");
      bind(s.encode, "lora_spm_encode");
      bind(s.decode, "lora_spm_decode");
      bind(s.train, "lora_spm_train");
      return s;
    }();
    return shim;
  }
};

}  // namespace

Tokenizer::Tokenizer(const std::string& spm_model) {
  if (!std::filesystem::exists(spm_model))
    throw std::runtime_error("tokenizer file '" + spm_model + "' not found: DeBERTa's spm.model is needed");
  const Shim& shim = Shim::get();
  char err[512];
  void* sp = shim.load(spm_model.c_str(), err, sizeof err);
  if (!sp) throw std::runtime_error("'" + spm_model + "' is not a SentencePiece model (" + err + "): DeBERTa's spm.model is needed");
  sp_ = std::shared_ptr<void>(sp, shim.free);
  size_ = shim.size(sp);
  for (auto [p, id] : {std::pair<const char*, int64_t*>{"[PAD]", &pad_}, {"[CLS]", &cls_}, {"[SEP]", &sep_}, {"[UNK]", &unk_}}) {
    *id = shim.piece_to_id(sp, p);
    if (piece(*id) != p)
      throw std::runtime_error("SentencePiece model '" + spm_model + "' has no '" + p + "' piece: is it DeBERTa's spm.model?");
  }
  const int64_t mask = shim.piece_to_id(sp, "[MASK]");
  mask_ = piece(mask) == "[MASK]" ? mask : size_;
}

Tokenizer Tokenizer::from_dir(const std::string& dir) { return Tokenizer(dir + "/spm.model"); }

std::string Tokenizer::piece(int64_t id) const {
  const Shim& shim = Shim::get();
  std::string out(64, '\0');
  int n = shim.id_to_piece(sp_.get(), static_cast<int>(id), out.data(), static_cast<int>(out.size()));
  if (n >= static_cast<int>(out.size())) {
    out.assign(static_cast<size_t>(n) + 1, '\0');
    n = shim.id_to_piece(sp_.get(), static_cast<int>(id), out.data(), static_cast<int>(out.size()));
  }
  out.resize(static_cast<size_t>(n));
  return out;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  const Shim& shim = Shim::get();
  std::vector<int> ids(text.size() + 8);
  int n = shim.encode(sp_.get(), text.data(), text.size(), ids.data(), static_cast<int>(ids.size()));
  if (n > static_cast<int>(ids.size())) {
    ids.resize(static_cast<size_t>(n));
    n = shim.encode(sp_.get(), text.data(), text.size(), ids.data(), n);
  }
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) out.push_back(shim.is_unknown(sp_.get(), ids[static_cast<size_t>(i)]) ? unk_ : ids[static_cast<size_t>(i)]);
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> v;
  for (int64_t id : ids) {
    if (id < 0 || id >= size_) throw std::out_of_range("deberta::Tokenizer::decode: id " + std::to_string(id) + " is not in the vocabulary");
    v.push_back(static_cast<int>(id));
  }
  const Shim& shim = Shim::get();
  std::string out(4 * v.size() + 16, '\0');
  int n = shim.decode(sp_.get(), v.data(), static_cast<int>(v.size()), out.data(), static_cast<int>(out.size()));
  if (n >= static_cast<int>(out.size())) {
    out.assign(static_cast<size_t>(n) + 1, '\0');
    n = shim.decode(sp_.get(), v.data(), static_cast<int>(v.size()), out.data(), static_cast<int>(out.size()));
  }
  out.resize(static_cast<size_t>(n));
  return out;
}

std::vector<int64_t> Tokenizer::encode_example(const std::string& a, const std::string& b, int64_t max_len) const {
  const bool pair = !b.empty();
  const int64_t specials = pair ? 3 : 2;
  if (max_len < specials)
    throw std::invalid_argument("encode_example: max_len " + std::to_string(max_len) + " leaves no room for the " +
                                std::to_string(specials) + " special tokens");
  std::vector<int64_t> x = encode(a), y = pair ? encode(b) : std::vector<int64_t>{};
  while (static_cast<int64_t>(x.size() + y.size()) > max_len - specials) (x.size() > y.size() ? x : y).pop_back();
  std::vector<int64_t> ids{cls_};
  ids.insert(ids.end(), x.begin(), x.end());
  ids.push_back(sep_);
  if (pair) {
    ids.insert(ids.end(), y.begin(), y.end());
    ids.push_back(sep_);
  }
  return ids;
}

void train_sentencepiece(const std::string& text_file, const std::string& prefix, int64_t vocab_size) {
  if (text_file.find(' ') != std::string::npos || prefix.find(' ') != std::string::npos)
    throw std::invalid_argument("train_sentencepiece: SentencePiece's argument line cannot hold paths with spaces ('" + prefix + "')");
  const std::string args = "--input=" + text_file + " --model_prefix=" + prefix + " --vocab_size=" + std::to_string(vocab_size) +
                           " --model_type=unigram --character_coverage=1.0 --pad_id=0 --bos_id=1 --eos_id=2 --unk_id=3"
                           " --pad_piece=[PAD] --bos_piece=[CLS] --eos_piece=[SEP] --unk_piece=[UNK] --user_defined_symbols=[MASK]"
                           " --hard_vocab_limit=false --minloglevel=2";
  char err[512];
  if (Shim::get().train(args.c_str(), err, sizeof err) != 0)
    throw std::runtime_error("training a SentencePiece model on '" + text_file + "' failed: " + err);
}

}  // namespace deberta
