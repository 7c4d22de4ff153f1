// libFuzzer target for the torch-free safetensors parser: any input must either parse
// into views that lie inside the input, or throw std::runtime_error; never crash.
#include <lora/safetensors.hpp>

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto parsed = lora::safetensors::parse(data, size, "fuzz-input");
    uint8_t sum = 0;
    for (const auto& t : parsed.tensors) {
      if (t.data < data || t.data + t.nbytes > data + size) std::abort();  // a view outside the input
      for (size_t i = 0; i < t.nbytes; ++i) sum ^= t.data[i];           // touch every byte (ASan checks)
    }
    for (const auto& kv : parsed.metadata) sum ^= static_cast<uint8_t>(kv.first.size() + kv.second.size());
    volatile uint8_t sink = sum;
    (void)sink;
  } catch (const std::runtime_error&) {
  }
  return 0;
}
