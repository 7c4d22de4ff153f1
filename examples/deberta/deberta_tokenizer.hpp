#pragma once
// DeBERTa-v2's tokenizer: SentencePiece (Debian's libsentencepiece) over the checkpoint's
// spm.model, with DeBERTa's special tokens and HF's sequence layout (DebertaV2Tokenizer, the slow
// tokenizer transformers 4.4 had). No torch here.
//
// libsentencepiece is reached through spm_shim.cpp, a small C interface loaded with dlmopen into a
// link namespace of its own: Debian's libsentencepiece exports the protobuf-lite 3.14 it carries,
// Debian's libtorch loads libprotobuf 3.21, and in one namespace they bind to each other (the
// process dies in a static initialiser). The shim is found at $LORA_SPM_SHIM, else where the build
// put it.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace deberta {

/// Example:
/// \code
///   auto tok = deberta::Tokenizer::from_dir("models/deberta-v2-xxlarge");  // its spm.model
///   tok.encode_example("A man is eating.", "Someone eats.", 128);       // [CLS] A [SEP] B [SEP]
/// \endcode
class Tokenizer {
 public:
  /// Loads `spm_model`; an error names the file, and a special token ([PAD], [CLS], [SEP], [UNK])
  /// the model lacks ("is it DeBERTa's spm.model?").
  explicit Tokenizer(const std::string& spm_model);
  /// dir/spm.model.
  static Tokenizer from_dir(const std::string& dir);

  /// SentencePiece's ids of `text`, without special tokens; a piece SentencePiece does not know
  /// is [UNK] (SPMTokenizer maps unknown pieces to "[UNK]").
  std::vector<int64_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int64_t>& ids) const;

  /// `[CLS] A [SEP]`, or `[CLS] A [SEP] B [SEP]` when `b` is non-empty, at most `max_len` ids: the
  /// texts lose one token at a time from the longer (the pair's on a tie), as transformers' slow
  /// tokenizers truncate "longest_first".
  std::vector<int64_t> encode_example(const std::string& a, const std::string& b, int64_t max_len) const;

  int64_t pad_id() const { return pad_; }    ///< [PAD] (0 in DeBERTa's spm.model)
  int64_t cls_id() const { return cls_; }    ///< [CLS] (1)
  int64_t sep_id() const { return sep_; }    ///< [SEP] (2)
  int64_t unk_id() const { return unk_; }    ///< [UNK] (3)
  int64_t mask_id() const { return mask_; }  ///< [MASK]: its piece, else the first id after the model's (128000), as HF adds it
  int64_t vocab_size() const { return size_; }  ///< SentencePiece's pieces (without an added [MASK])

 private:
  std::shared_ptr<void> sp_;  ///< the shim's processor
  std::string piece(int64_t id) const;
  int64_t pad_ = 0, cls_ = 1, sep_ = 2, unk_ = 3, mask_ = 0, size_ = 0;
};

/// Trains a small unigram SentencePiece model on the lines of `text_file` with DeBERTa's specials
/// at DeBERTa's ids ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3, [MASK] a user-defined piece): writes
/// `prefix`.model and `prefix`.vocab. For the smoke run and tests (real runs use the checkpoint's).
void train_sentencepiece(const std::string& text_file, const std::string& prefix, int64_t vocab_size);

}  // namespace deberta
