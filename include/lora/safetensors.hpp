#pragma once
/// \file safetensors.hpp
/// The safetensors format (https://github.com/huggingface/safetensors), read and
/// written without torch: this header hands out byte spans and metadata, and
/// `lora/tensor_file.hpp` turns them into tensors.
///
/// Layout: 8 bytes little-endian u64 N; N bytes of UTF-8 JSON
/// `{"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
///   "__metadata__": {"key": "value"}}`; then the data buffer, offsets relative to it.
///
/// `parse` validates as the reference implementation does; every violation is a
/// `std::runtime_error` naming the file, the tensor and the rule:
/// the header length is at most 100,000,000 and lies inside the file; the header is
/// a JSON object with no duplicate names; `__metadata__` maps strings to strings;
/// each tensor has exactly `dtype` (a known one), `shape` and `data_offsets`; its byte
/// length equals numel × dtype size; the tensors tile the data buffer exactly: in
/// offset order, contiguous, non-overlapping, from 0 to its end.
///
/// `write_file` is atomic: it writes a temporary file in the target's folder,
/// flushes and fsyncs it, then renames it over the target, so a crash or an
/// exception during a save leaves the previous file intact.

#include <lora/atomic_file.hpp>

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace lora {
namespace safetensors {

enum class Dtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

inline const std::vector<std::pair<const char*, Dtype>>& dtype_table() {
  static const std::vector<std::pair<const char*, Dtype>> table = {
      {"F64", Dtype::F64}, {"F32", Dtype::F32}, {"F16", Dtype::F16}, {"BF16", Dtype::BF16}, {"I64", Dtype::I64},
      {"I32", Dtype::I32}, {"I16", Dtype::I16}, {"I8", Dtype::I8},   {"U8", Dtype::U8},     {"BOOL", Dtype::BOOL}};
  return table;
}

inline const char* dtype_name(Dtype d) {
  for (const auto& e : dtype_table())
    if (e.second == d) return e.first;
  return "?";
}

inline size_t dtype_size(Dtype d) {
  switch (d) {
    case Dtype::F64: case Dtype::I64: return 8;
    case Dtype::F32: case Dtype::I32: return 4;
    case Dtype::F16: case Dtype::BF16: case Dtype::I16: return 2;
    default: return 1;
  }
}

/// Largest header the reference implementation accepts.
constexpr uint64_t kMaxHeaderSize = 100000000;

/// One tensor's bytes, little-endian row-major: a view into a parsed file (not
/// necessarily aligned), or what `write_file` writes.
struct TensorView {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
};

struct Parsed {
  std::vector<TensorView> tensors;  ///< in data-offset order
  std::map<std::string, std::string> metadata;

  const TensorView* find(const std::string& name) const {
    for (const auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
};

namespace detail {

inline uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

inline void put_le64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

[[noreturn]] inline void fail(const std::string& source, const std::string& what) {
  throw std::runtime_error("safetensors file '" + source + "': " + what);
}

}  // namespace detail

/// Parses and validates a whole safetensors file held in memory. The views point into
/// `data`, which must outlive the result. `source` names the file in errors.
inline Parsed parse(const uint8_t* data, size_t size, const std::string& source) {
  using detail::fail;
  if (size < 8)
    fail(source, "the file has " + std::to_string(size) + " bytes, fewer than the 8-byte header length: truncated?");
  const uint64_t n = detail::read_le64(data);
  if (n > kMaxHeaderSize)
    fail(source, "header length " + std::to_string(n) + " exceeds the 100,000,000-byte limit: not a safetensors file?");
  if (n > size - 8)
    fail(source, "header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
                     " bytes): truncated?");
  const char* header = reinterpret_cast<const char*>(data + 8);
  if (n == 0 || header[0] != '{') fail(source, "the header does not start with '{': not a safetensors file?");

  // nlohmann keeps the last of duplicate keys silently: catch them while parsing.
  std::string duplicate;
  std::set<std::string> seen;
  nlohmann::json::parser_callback_t on_event = [&](int depth, nlohmann::json::parse_event_t event,
                                                   nlohmann::json& parsed) {
    if (depth == 1 && event == nlohmann::json::parse_event_t::key && parsed.is_string() &&
        !seen.insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header, header + n, on_event);
  } catch (const nlohmann::json::exception& e) {
    fail(source, std::string("the header is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(source, "the header is not a JSON object");
  if (!duplicate.empty()) fail(source, "tensor '" + duplicate + "' appears twice in the header");

  Parsed out;
  const uint64_t buffer = size - 8 - n;
  const uint8_t* base = data + 8 + n;
  std::vector<std::pair<uint64_t, uint64_t>> offsets;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(source, "__metadata__ is not an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail(source, "__metadata__ entry '" + m.key() + "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "': ";
    if (!v.is_object()) fail(source, where + "entry is not an object");
    for (auto f = v.begin(); f != v.end(); ++f)
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
        fail(source, where + "unknown field '" + f.key() + "' (expected dtype, shape, data_offsets)");
    if (!v.contains("dtype") || !v["dtype"].is_string()) fail(source, where + "missing string field 'dtype'");
    if (!v.contains("shape") || !v["shape"].is_array()) fail(source, where + "missing array field 'shape'");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      fail(source, where + "'data_offsets' must be an array [begin, end]");

    TensorView t;
    t.name = name;
    const std::string dtype = v["dtype"].get<std::string>();
    bool known = false;
    for (const auto& e : dtype_table())
      if (dtype == e.first) {
        t.dtype = e.second;
        known = true;
      }
    if (!known) fail(source, where + "unknown dtype '" + dtype + "' (known: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");

    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) fail(source, where + "shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / dim))
        fail(source, where + "shape overflows");
      numel *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(source, where + "data_offsets must be non-negative integers");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end) fail(source, where + "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] end before they begin");
    if (end > buffer)
      fail(source, where + "data_offsets end at " + std::to_string(end) + ", past the " + std::to_string(buffer) +
                       "-byte data buffer: truncated?");
    const size_t elem = dtype_size(t.dtype);
    if (numel > std::numeric_limits<uint64_t>::max() / elem || numel * elem != end - begin)
      fail(source, where + "has " + std::to_string(end - begin) + " bytes, but shape and dtype " + dtype + " need " +
                       std::to_string(numel) + " x " + std::to_string(elem));
    t.data = base + begin;
    t.nbytes = static_cast<size_t>(end - begin);
    out.tensors.push_back(std::move(t));
    offsets.emplace_back(begin, end);
  }

  // The tensors must tile the buffer: sorted by offset, each starts where the last ended.
  std::vector<size_t> order(out.tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return offsets[a] < offsets[b]; });
  uint64_t at = 0;
  std::vector<TensorView> sorted;
  for (size_t i : order) {
    if (offsets[i].first != at)
      fail(source, "tensor '" + out.tensors[i].name + "' starts at byte " + std::to_string(offsets[i].first) +
                       " of the data buffer, expected " + std::to_string(at) +
                       (offsets[i].first < at ? ": it overlaps the previous tensor" : ": there is a gap before it"));
    at = offsets[i].second;
    sorted.push_back(std::move(out.tensors[i]));
  }
  if (at != buffer)
    fail(source, "the tensors cover " + std::to_string(at) + " of the " + std::to_string(buffer) +
                     " data bytes: trailing bytes after the last tensor");
  out.tensors = std::move(sorted);
  return out;
}

/// A whole file mapped read-only into memory (one mapping, no copy).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open '" + path + "': " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw std::runtime_error("'" + path + "' is not a regular file");
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        throw std::runtime_error("cannot map '" + path + "': " + std::strerror(errno));
      }
      data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_ ? data_ : reinterpret_cast<const uint8_t*>(""); }
  size_t size() const { return size_; }
  /// Drops the pages of [p, p + n) from this process's memory (they are read from the file again
  /// if touched): a loader that copied a tensor out releases its bytes, so loading a model does
  /// not hold the model twice.
  void release(const uint8_t* p, size_t n) const {
    if (!data_ || n == 0 || p < data_ || p + n > data_ + size_) return;
    const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    const uintptr_t begin = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
    const uintptr_t end = std::min(reinterpret_cast<uintptr_t>(data_ + size_), (reinterpret_cast<uintptr_t>(p + n) + page - 1) & ~(page - 1));
    ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);  // advice only: a failure changes nothing
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

/// An opened, validated safetensors file; its views stay valid while it lives.
class File {
 public:
  explicit File(const std::string& path) : map_(path), parsed_(parse(map_.data(), map_.size(), path)) {}
  const std::vector<TensorView>& tensors() const { return parsed_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return parsed_.metadata; }
  const TensorView* find(const std::string& name) const { return parsed_.find(name); }
  const std::string& path() const { return map_.path(); }
  /// Releases the memory of n bytes at p once they were copied out (MappedFile::release).
  void release(const uint8_t* p, size_t n) const { map_.release(p, n); }

 private:
  MappedFile map_;
  Parsed parsed_;
};

/// The header bytes (JSON, space-padded to a multiple of 8 so the data starts aligned)
/// for tensors laid out in the given order.
inline std::string make_header(const std::vector<TensorView>& tensors, const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t at = 0;
  std::set<std::string> names;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__" || !names.insert(t.name).second)
      throw std::invalid_argument("safetensors: tensor name '" + t.name + "' is reserved or repeated");
    uint64_t numel = 1;
    for (auto d : t.shape) numel *= static_cast<uint64_t>(d);
    if (numel * dtype_size(t.dtype) != t.nbytes)
      throw std::invalid_argument("safetensors: tensor '" + t.name + "' has " + std::to_string(t.nbytes) +
                                  " bytes, which does not match its shape and dtype");
    j[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {at, at + t.nbytes}}};
    at += t.nbytes;
  }
  std::string header = j.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  return header;
}

/// Writes a safetensors file atomically (see `atomic_write`).
inline void write_file(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata,
                       const std::function<void(std::FILE*, size_t)>& write_data) {
  const std::string header = make_header(tensors, metadata);
  atomic_write(path, [&](std::FILE* f) {
    uint8_t len[8];
    detail::put_le64(len, header.size());
    write_bytes(f, len, 8, path);
    write_bytes(f, header.data(), header.size(), path);
    for (size_t i = 0; i < tensors.size(); ++i) write_data(f, i);
  });
}

/// The same with each tensor's bytes at its `data`.
inline void write_file(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {}) {
  write_file(path, tensors, metadata, [&](std::FILE* f, size_t i) { write_bytes(f, tensors[i].data, tensors[i].nbytes, path); });
}

}  // namespace safetensors
}  // namespace lora
