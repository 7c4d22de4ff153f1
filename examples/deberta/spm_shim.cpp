// A C interface to Debian's libsentencepiece, built as its own shared library and loaded by
// deberta::Tokenizer into a separate link namespace (dlmopen). Debian's libsentencepiece carries
// its own protobuf-lite 3.14 with exported symbols, and Debian's libtorch loads libprotobuf 3.21:
// in one namespace the two resolve into each other and the process dies in a static initialiser.
// Only C types cross this boundary; every buffer is the caller's.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace {

int copy_out(const std::string& s, char* buf, int cap) {
  if (cap > 0) {
    const size_t n = std::min(s.size(), static_cast<size_t>(cap - 1));
    std::memcpy(buf, s.data(), n);
    buf[n] = '\0';
  }
  return static_cast<int>(s.size());
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) void* lora_spm_load(const char* path, char* err, int err_cap) {
  auto* sp = new sentencepiece::SentencePieceProcessor();
  const auto status = sp->Load(path);
  if (!status.ok()) {
    copy_out(status.ToString(), err, err_cap);
    delete sp;
    return nullptr;
  }
  return sp;
}

__attribute__((visibility("default"))) void lora_spm_free(void* sp) { delete static_cast<sentencepiece::SentencePieceProcessor*>(sp); }

__attribute__((visibility("default"))) int lora_spm_size(void* sp) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(sp)->GetPieceSize();
}

__attribute__((visibility("default"))) int lora_spm_piece_to_id(void* sp, const char* piece) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(sp)->PieceToId(piece);
}

__attribute__((visibility("default"))) int lora_spm_id_to_piece(void* sp, int id, char* buf, int cap) {
  return copy_out(static_cast<sentencepiece::SentencePieceProcessor*>(sp)->IdToPiece(id), buf, cap);
}

__attribute__((visibility("default"))) int lora_spm_is_unknown(void* sp, int id) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(sp)->IsUnknown(id) ? 1 : 0;
}

/// The ids of text[0, len): writes at most `cap` into `out`, returns how many there are.
__attribute__((visibility("default"))) int lora_spm_encode(void* sp, const char* text, size_t len, int* out, int cap) {
  const std::vector<int> ids = static_cast<sentencepiece::SentencePieceProcessor*>(sp)->EncodeAsIds(std::string(text, len));
  std::copy_n(ids.begin(), std::min<size_t>(ids.size(), static_cast<size_t>(std::max(cap, 0))), out);
  return static_cast<int>(ids.size());
}

__attribute__((visibility("default"))) int lora_spm_decode(void* sp, const int* ids, int n, char* buf, int cap) {
  return copy_out(static_cast<sentencepiece::SentencePieceProcessor*>(sp)->DecodeIds(std::vector<int>(ids, ids + n)), buf, cap);
}

/// SentencePieceTrainer::Train(args): 0 on success, else -1 with the message in err.
__attribute__((visibility("default"))) int lora_spm_train(const char* args, char* err, int err_cap) {
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  if (status.ok()) return 0;
  copy_out(status.ToString(), err, err_cap);
  return -1;
}
}
