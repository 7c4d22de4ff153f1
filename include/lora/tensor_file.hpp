#pragma once
/// \file tensor_file.hpp
/// Named tensors to and from safetensors files: the thin torch layer over
/// `lora/safetensors.hpp`.

#include <lora/safetensors.hpp>

#include <torch/torch.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "lora's safetensors I/O copies tensor bytes as they are: it needs a little-endian machine"
#endif

namespace lora {

using NamedTensors = torch::OrderedDict<std::string, torch::Tensor>;

namespace detail {

inline torch::Dtype to_torch(safetensors::Dtype d) {
  using D = safetensors::Dtype;
  switch (d) {
    case D::F64: return torch::kFloat64;
    case D::F32: return torch::kFloat32;
    case D::F16: return torch::kFloat16;
    case D::BF16: return torch::kBFloat16;
    case D::I64: return torch::kInt64;
    case D::I32: return torch::kInt32;
    case D::I16: return torch::kInt16;
    case D::I8: return torch::kInt8;
    case D::U8: return torch::kUInt8;
    case D::BOOL: return torch::kBool;
  }
  return torch::kFloat32;
}

inline safetensors::Dtype from_torch(torch::Dtype d, const std::string& name) {
  using D = safetensors::Dtype;
  switch (d) {
    case torch::kFloat64: return D::F64;
    case torch::kFloat32: return D::F32;
    case torch::kFloat16: return D::F16;
    case torch::kBFloat16: return D::BF16;
    case torch::kInt64: return D::I64;
    case torch::kInt32: return D::I32;
    case torch::kInt16: return D::I16;
    case torch::kInt8: return D::I8;
    case torch::kUInt8: return D::U8;
    case torch::kBool: return D::BOOL;
    default: throw std::invalid_argument("safetensors: tensor '" + name + "' has a dtype safetensors cannot store");
  }
}

}  // namespace detail

/// One tensor's bytes copied into a fresh CPU tensor (which also fixes alignment).
inline torch::Tensor to_tensor(const safetensors::TensorView& t) {
  torch::Tensor cpu = torch::empty(t.shape, torch::TensorOptions().dtype(detail::to_torch(t.dtype)));
  if (t.nbytes) std::memcpy(cpu.data_ptr(), t.data, t.nbytes);
  return cpu;
}

/// The tensor's bytes where they lie, without a copy, for reading while the file is open (the
/// mapping is read-only: never write to it). A file need not align its tensors; a misaligned
/// one is copied (to_tensor).
inline torch::Tensor borrow_tensor(const safetensors::TensorView& t) {
  const auto dtype = detail::to_torch(t.dtype);
  if (t.nbytes == 0 || reinterpret_cast<uintptr_t>(t.data) % c10::elementSize(dtype) != 0) return to_tensor(t);
  return torch::from_blob(const_cast<uint8_t*>(t.data), t.shape, torch::TensorOptions().dtype(dtype));
}

/// Tensors of a parsed file, each copied once from the file's bytes into a fresh CPU
/// tensor (which also fixes alignment: offsets in a file need not be aligned), then
/// moved to `device`.
inline NamedTensors load_safetensors(const safetensors::File& file, torch::Device device = torch::kCPU) {
  NamedTensors out;
  for (const auto& t : file.tensors()) out.insert(t.name, to_tensor(t).to(device));
  return out;
}

/// Reads every tensor of `path` (validated; see `lora/safetensors.hpp`).
inline NamedTensors load_safetensors(const std::string& path, torch::Device device = torch::kCPU) {
  return load_safetensors(safetensors::File(path), device);
}

/// Writes `tensors` (any device, any layout) to `path` atomically, in the given order. Each
/// tensor is made a contiguous CPU tensor only while its bytes are written, so saving a model
/// whose weights are stored transposed never holds a second copy of all of them.
inline void save_safetensors(const std::string& path, const NamedTensors& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  std::vector<safetensors::TensorView> views;  // the header's entries
  for (const auto& item : tensors) {
    const torch::Tensor& t = item.value();
    views.push_back({item.key(), detail::from_torch(t.scalar_type(), item.key()),
                     std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), nullptr,
                     static_cast<size_t>(t.numel()) * t.element_size()});
  }
  safetensors::write_file(path, views, metadata, [&](std::FILE* f, size_t i) {
    const torch::Tensor t = tensors.items()[i].value().detach().to(torch::kCPU).contiguous();
    write_bytes(f, t.data_ptr(), views[i].nbytes, path);
  });
}

}  // namespace lora
