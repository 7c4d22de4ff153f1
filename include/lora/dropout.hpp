#pragma once
/// \file dropout.hpp
/// The dropout of a LoRA adapter's input on the CPU, with a mask of one bit per element.
///
/// LibTorch's CPU dropout draws every element serially from its generator and keeps a
/// full-size copy of the noise; for a LoRA layer that made dropout cost more than the rest
/// of the adapter. Here the keep/drop decision of element i is a pure function of
/// (seed, i), so the mask is computed in parallel with the same result whatever the thread
/// count, the backward pass reads a packed bit mask (N·in / 8 bytes) instead of a
/// dropped-out copy of x, and `torch::manual_seed` still decides everything (the seed is
/// drawn from the default generator).
///
/// The random words are the SplitMix64 stream (Steele, Lea and Flood, OOPSLA 2014; it passes
/// BigCrush) evaluated at counter i / 4: each 64-bit output gives four 16-bit lanes, one per
/// element. An element is kept when its lane is below the top 16 bits of the 32-bit
/// threshold round((1 − p)·2³²); on a tie (one draw in 65,536) a further 16 bits from an
/// independent SplitMix64 stream decide against the low 16 bits. So elements are kept with
/// probability 1 − p to 2⁻³², at a quarter of a 64-bit hash per element, and kept elements
/// are scaled by 1 / (1 − p).
///
/// Example:
/// \code
///   auto [xd, bits] = lora::detail::bit_dropout(x, 0.1, lora::detail::draw_seed());
///   auto again = lora::detail::masked_scale(x, bits, 0.1, {});   // equal to xd
/// \endcode

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace lora {
namespace detail {

/// Output k of the SplitMix64 stream seeded with `seed` (k = 0 is the first value the
/// reference implementation returns).
inline uint64_t splitmix64(uint64_t seed, uint64_t k) {
  uint64_t z = seed + (k + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// A 63-bit seed drawn from the default CPU generator (so `torch::manual_seed` and saved
/// generator states govern the masks).
inline uint64_t draw_seed() {
  return static_cast<uint64_t>(torch::empty({1}, torch::kLong).random_().item<int64_t>());
}

/// The arithmetic type of a kernel over scalar_t (float for the 16-bit types).
template <class T>
using acc_type = std::conditional_t<std::is_same<T, double>::value, double, float>;

/// Elements per parallel chunk: a multiple of 8 so that threads never share a mask byte.
constexpr int64_t kDropoutGrain = 1 << 15;

/// The keep bits of the four 16-bit lanes of `w` (bit j for lane j): lane < hi, computed for
/// all lanes at once (each lane gets a 32-bit slot with a guard bit, so no borrow crosses).
inline uint32_t keep_nibble(uint64_t w, uint64_t hi) {
  constexpr uint64_t kLanes = 0x0000FFFF0000FFFFull, kGuard = 0x0001000000010000ull;
  const uint64_t h = hi | (hi << 32);
  const uint64_t ge_even = ~(((w & kLanes) | kGuard) - h) & kGuard;  // guard kept: lane >= hi
  const uint64_t ge_odd = ~((((w >> 16) & kLanes) | kGuard) - h) & kGuard;
  return static_cast<uint32_t>(((ge_even >> 16) & 1u) | ((ge_odd >> 15) & 2u) | ((ge_even >> 46) & 4u) |
                               ((ge_odd >> 45) & 8u));
}

/// The keep bits of elements 8·byte .. 8·byte + 7 (bit j for element 8·byte + j).
inline uint32_t keep_byte(uint64_t seed, int64_t byte, uint64_t threshold) {
  const uint64_t hi = threshold >> 16, lo = threshold & 0xFFFFu;
  const uint64_t words[2] = {splitmix64(seed, static_cast<uint64_t>(2 * byte)),
                             splitmix64(seed, static_cast<uint64_t>(2 * byte + 1))};
  uint32_t m = 0;
  for (uint32_t k = 0; k < 2; ++k) {
    m |= keep_nibble(words[k], hi) << (4 * k);
    const uint64_t x = words[k] ^ (hi * 0x0001000100010001ull);
    if (((x - 0x0001000100010001ull) & ~x & 0x8000800080008000ull) == 0) continue;  // no lane equals hi
    for (uint32_t j = 0; j < 4; ++j)  // a tie on the top 16 bits (1 in 65,536): the next 16 bits decide
      if (((words[k] >> (16 * j)) & 0xFFFFu) == hi &&
          (splitmix64(~seed, static_cast<uint64_t>(8 * byte + 4 * k + j)) & 0xFFFFu) < lo)
        m |= 1u << (4 * k + j);
  }
  return m;
}

/// dropout(x) for a CPU tensor, and its mask: bit (i mod 8) of byte i / 8 is set when
/// element i (in row-major order) is kept. Returns {dropout(x) (contiguous), mask}.
inline std::pair<torch::Tensor, torch::Tensor> bit_dropout(const torch::Tensor& x, double p, uint64_t seed) {
  TORCH_CHECK(x.device().is_cpu(), "lora: bit_dropout runs on the CPU; got a tensor on ", x.device());
  TORCH_CHECK(p >= 0.0 && p < 1.0, "lora: dropout probability must be in [0, 1), got ", p);
  const torch::Tensor in = x.contiguous();
  torch::Tensor out = torch::empty_like(in);
  const int64_t n = in.numel();
  torch::Tensor bits = torch::empty({(n + 7) / 8}, in.options().dtype(torch::kByte));
  const auto threshold = static_cast<uint64_t>(std::llround((1.0 - p) * 4294967296.0));
  uint8_t* mask = bits.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "lora_bit_dropout", [&] {
    using acc = acc_type<scalar_t>;
    const acc scale = static_cast<acc>(1.0 / (1.0 - p));
    const scalar_t* src = in.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, (n + 7) / 8, kDropoutGrain / 8, [&](int64_t begin, int64_t end) {
      for (int64_t byte = begin; byte < end; ++byte) {
        const uint32_t m = keep_byte(seed, byte, threshold);
        mask[byte] = static_cast<uint8_t>(m);
        const int64_t first = 8 * byte;
        if (first + 8 <= n) {  // a whole byte: a fixed trip count the compiler unrolls
          for (int64_t j = 0; j < 8; ++j)
            dst[first + j] = static_cast<scalar_t>(static_cast<acc>(src[first + j]) * (scale * static_cast<acc>((m >> j) & 1u)));
        } else {
          for (int64_t j = 0; j < n - first; ++j)
            dst[first + j] = static_cast<scalar_t>(static_cast<acc>(src[first + j]) * (scale * static_cast<acc>((m >> j) & 1u)));
        }
      }
    });
  });
  return {out, bits};
}

/// x ⊙ mask / (1 − p) with a mask from `bit_dropout` (x contiguous, on the CPU); if `grad` is
/// defined (contiguous, x's shape and dtype), the same mask and scale are applied to it in
/// place in the same pass (the adapter part of the input gradient).
inline torch::Tensor masked_scale(const torch::Tensor& x, const torch::Tensor& bits, double p, torch::Tensor grad) {
  const torch::Tensor in = x.contiguous();
  const int64_t n = in.numel();
  TORCH_CHECK(bits.scalar_type() == torch::kByte && bits.numel() == (n + 7) / 8,
              "lora: dropout mask of ", bits.numel(), " bytes does not fit a tensor of ", n, " elements");
  TORCH_CHECK(!grad.defined() || (grad.is_contiguous() && grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type()),
              "lora: masked_scale needs a contiguous gradient of the input's shape and dtype");
  torch::Tensor out = torch::empty_like(in);
  const uint8_t* mask = bits.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "lora_masked_scale", [&] {
    using acc = acc_type<scalar_t>;
    const acc scale = static_cast<acc>(1.0 / (1.0 - p));
    const scalar_t* src = in.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    scalar_t* g = grad.defined() ? grad.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, (n + 7) / 8, kDropoutGrain / 8, [&](int64_t begin, int64_t end) {
      for (int64_t byte = begin; byte < end; ++byte) {
        const uint32_t m = mask[byte];
        const int64_t first = 8 * byte, count = std::min<int64_t>(8, n - first);
        for (int64_t j = 0; j < count; ++j) {
          const acc f = scale * static_cast<acc>((m >> j) & 1u);
          dst[first + j] = static_cast<scalar_t>(static_cast<acc>(src[first + j]) * f);
          if (g) g[first + j] = static_cast<scalar_t>(static_cast<acc>(g[first + j]) * f);
        }
      }
    });
  });
  return out;
}

}  // namespace detail
}  // namespace lora
