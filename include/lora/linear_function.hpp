#pragma once
/// \file linear_function.hpp
/// The autograd function behind `LoRALinear`'s forward: the base projection and every
/// active adapter in one node, with a hand-written backward that does the adapter's
/// arithmetic and nothing else. For input x [N, in], frozen or trainable W0 [out, in],
/// bias b and adapters (A [r, in], B [out, r], scale s, dropout p):
///
///     forward   h = drop(x)·Aᵀ              [N, r]     saved (small)
///               y = x·W0ᵀ + b + s·h·Bᵀ                 written once, no in-place view ops
///     backward  g = s·dy·B                  [N, r]
///               dB = s·dyᵀ·h,  dA = gᵀ·drop(x)
///               dx = dy·W0 + mask ⊙ (g·A)/(1−p)
///
/// The thin products are computed transposed, as hᵀ = A·drop(x)ᵀ, gᵀ = s·Bᵀ·dyᵀ and
/// dBᵀ = hᵀ·dy: with r rows and N columns OpenBLAS runs them 1.5–2.9× faster when timed alone
/// than with N rows and r columns (this project's CPU machine, N = 4096, d = 1024, r = 8; inside
/// a whole step the difference shrinks to about 1%), and hᵀ, gᵀ are then contiguous operands
/// of the products that read them.
///
/// Saved for backward: x (which the layer below usually holds anyway), W0 (a parameter), A,
/// B, hᵀ, and with dropout its mask: one bit per element of x on the CPU (dropout.hpp), one
/// byte on other devices. Autograd never sees a view written in
/// place, so there is no CopySlices node cloning the [N, out] gradient.
///
/// Slice masks (GPT-2's fused c_attn): adapter i of k enabled slices owns rows
/// [i·r, (i+1)·r) of A and rows [i·out/n, (i+1)·out/n) of B, and touches only its output
/// slice j; the forward adds each block into its column slice, the backward reads it.
///
/// Mixed precision: under autocast (CUDA or CPU) the function computes in the autocast
/// dtype, as torch::nn::functional::linear would, and returns gradients in each input's
/// own dtype. An adapter stored in another dtype than the layer (AdapterOptions::dtype)
/// computes in its own dtype; its update is cast to the output's.

#include <lora/dropout.hpp>

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <tuple>
#include <vector>

namespace lora {
namespace detail {

/// The autocast dtype in force for tensors on `device`, if autocast is on there.
inline c10::optional<at::ScalarType> autocast_dtype(const torch::Device& device) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  if (at::autocast::is_autocast_enabled(device.type())) return at::autocast::get_autocast_dtype(device.type());
#else
  if (device.is_cuda() && at::autocast::is_enabled()) return at::autocast::get_autocast_gpu_dtype();
  if (device.is_cpu() && at::autocast::is_cpu_enabled()) return at::autocast::get_autocast_cpu_dtype();
#endif
  return c10::nullopt;
}

/// One active adapter as the function sees it.
struct AdapterTerm {
  double scale = 1.0;
  double dropout = 0.0;       ///< applied when the plan says train
  std::vector<bool> enable;   ///< slice mask, empty for the whole layer
};

/// What a LoRALinear forward computes: the tensors travel separately as
/// [x2d, W0, (b), A_0, B_0, A_1, B_1, ...].
struct LinearPlan {
  bool has_bias = false;
  bool train = false;  ///< adapters' dropout active
  std::vector<AdapterTerm> terms;
};

/// (index of the adapter block, index of the output slice) for each enabled slice.
inline std::vector<std::pair<int64_t, int64_t>> slice_blocks(const std::vector<bool>& enable) {
  if (enable.empty()) return {{0, 0}};
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t j = 0; j < static_cast<int64_t>(enable.size()); ++j)
    if (enable[j]) out.emplace_back(static_cast<int64_t>(out.size()), j);
  return out;
}

/// B of a slice-masked adapter as the dense [out, k·r] matrix it stands for: block i of B on its
/// output slice j, zero elsewhere (so ΔW = s·full_B·A). Without a mask, B itself.
inline torch::Tensor full_B(const torch::Tensor& B, const std::vector<bool>& enable, int64_t out) {
  if (enable.empty()) return B;
  const auto blocks = slice_blocks(enable);
  const int64_t r = B.size(1), slice = out / static_cast<int64_t>(enable.size());
  torch::Tensor full = torch::zeros({out, static_cast<int64_t>(blocks.size()) * r}, B.options());
  for (const auto& [bi, j] : blocks)
    full.narrow(0, j * slice, slice).narrow(1, bi * r, r).copy_(B.narrow(0, bi * slice, slice));
  return full;
}

class LoRALinearFunction : public torch::autograd::Function<LoRALinearFunction> {
 public:
  /// Everything the backward needs of one adapter, filled by `run`.
  struct TermState {
    torch::Tensor ht;      ///< hᵀ = A·drop(x)ᵀ [k·r, N], in the adapter's compute dtype
    torch::Tensor mask;    ///< dropout mask: packed bits (kByte, CPU) or kBool (other devices)
  };

  /// The forward without autograd bookkeeping; fills `states` (one per term) and hands out x and
  /// W0 in the compute dtype (the same tensors when no cast was needed) when asked.
  static torch::Tensor run(torch::TensorList t, const LinearPlan& plan, std::vector<TermState>* states,
                           torch::Tensor* x_used = nullptr, torch::Tensor* w_used = nullptr) {
    const torch::Tensor& x = t[0];
    const auto cd = compute_dtype(x);
    const torch::Tensor xc = x.to(cd);
    const torch::Tensor W = t[1].to(cd);
    const size_t first = plan.has_bias ? 3 : 2;
    // With or without autograd the same operations run, so a model's output does not depend on
    // whether its adapters require gradients (merge them for inference at a plain Linear's cost).
    std::vector<TermState> local;
    std::vector<torch::Tensor> Bs;
    for (size_t i = 0; i < plan.terms.size(); ++i) {
      const AdapterTerm& term = plan.terms[i];
      const torch::Tensor A = t[first + 2 * i].to(adapter_dtype(x, t[first + 2 * i]));
      Bs.push_back(t[first + 2 * i + 1].to(A.scalar_type()));
      torch::Tensor xa = xc.to(A.scalar_type());
      TermState st;
      if (plan.train && term.dropout > 0.0) {
        if (xa.device().is_cpu()) {
          std::tie(xa, st.mask) = bit_dropout(xa, term.dropout, draw_seed());
        } else {
          st.mask = torch::empty(xa.sizes(), xa.options().dtype(torch::kBool)).bernoulli_(1.0 - term.dropout);
          xa = xa.mul(st.mask).mul_(1.0 / (1.0 - term.dropout));
        }
      }
      st.ht = torch::mm(A, xa.t());
      local.push_back(std::move(st));
    }
    torch::Tensor y = plan.has_bias ? torch::addmm(t[2].to(cd), xc, W.t()) : torch::mm(xc, W.t());
    for (size_t i = 0; i < plan.terms.size(); ++i) add_update(y, local[i].ht, Bs[i], plan.terms[i]);
    if (states) *states = std::move(local);
    if (x_used) *x_used = xc;
    if (w_used) *w_used = W;
    return y;
  }

  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::TensorList t, const LinearPlan& plan) {
    std::vector<TermState> states;
    torch::Tensor xc, W;  // under autocast, the casts the forward made (saved, not made again)
    torch::Tensor y = run(t, plan, &states, &xc, &W);
    std::vector<torch::Tensor> saved{xc, W};
    std::vector<double> scales, dropouts;
    std::vector<int64_t> enables;  // per term, its length then its flags
    const size_t first = plan.has_bias ? 3 : 2;
    for (size_t i = 0; i < plan.terms.size(); ++i) {
      saved.insert(saved.end(), {t[first + 2 * i], t[first + 2 * i + 1], states[i].ht, states[i].mask});
      scales.push_back(plan.terms[i].scale);
      dropouts.push_back(plan.train ? plan.terms[i].dropout : 0.0);
      enables.push_back(static_cast<int64_t>(plan.terms[i].enable.size()));
      for (bool e : plan.terms[i].enable) enables.push_back(e ? 1 : 0);
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["has_bias"] = plan.has_bias;
    ctx->saved_data["scales"] = scales;
    ctx->saved_data["dropouts"] = dropouts;
    ctx->saved_data["enables"] = enables;
    ctx->saved_data["dtypes"] = std::vector<int64_t>{static_cast<int64_t>(t[0].scalar_type()),
                                                     static_cast<int64_t>(t[1].scalar_type())};
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const auto scales = ctx->saved_data["scales"].toDoubleVector();
    const auto dropouts = ctx->saved_data["dropouts"].toDoubleVector();
    const auto enables = ctx->saved_data["enables"].toIntVector();
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    const torch::Tensor& xc = saved[0];
    const torch::Tensor& W = saved[1];
    const torch::Tensor dy = grads[0].to(xc.scalar_type());
    const size_t first = has_bias ? 3 : 2, n_terms = scales.size();

    torch::autograd::variable_list out(first + 2 * n_terms + 1);  // + the plan's slot
    const bool need_x = ctx->needs_input_grad(0);
    // dx = dy·W0 + Σ adapter parts g·A: the masked parts (dropout) are summed first and the GEMM
    // adds into them; unmasked parts are added in place after it (no [N, in] temporary).
    torch::Tensor dx;
    std::vector<std::pair<torch::Tensor, torch::Tensor>> unmasked;  // (gᵀ, A)
    size_t e = 0;
    for (size_t i = 0; i < n_terms; ++i) {
      const torch::Tensor& A0 = saved[2 + 4 * i];
      const torch::Tensor& B0 = saved[3 + 4 * i];
      const torch::Tensor& ht = saved[4 + 4 * i];
      const torch::Tensor& mask = saved[5 + 4 * i];
      std::vector<bool> enable(static_cast<size_t>(enables[e]));
      for (size_t k = 0; k < enable.size(); ++k) enable[k] = enables[e + 1 + k] != 0;
      e += 1 + enable.size();
      const bool need_A = ctx->needs_input_grad(first + 2 * i), need_B = ctx->needs_input_grad(first + 2 * i + 1);
      if (!need_A && !need_B && !need_x) continue;
      const auto ad = ht.scalar_type();
      const torch::Tensor A = A0.to(ad), B = B0.to(ad);
      const torch::Tensor dya = dy.to(ad);
      const double s = scales[i];
      const auto blocks = slice_blocks(enable);
      const int64_t r = B.size(1), slice = enable.empty() ? dy.size(1) : dy.size(1) / static_cast<int64_t>(enable.size());
      if (need_B) {
        torch::Tensor dB = torch::empty_like(B);  // block i: (hᵀ_i·dy_j)ᵀ
        for (const auto& [bi, j] : blocks)
          dB.narrow(0, bi * slice, slice).copy_(torch::mm(ht.narrow(0, bi * r, r), dya.narrow(1, j * slice, slice)).t());
        out[first + 2 * i + 1] = dB.mul_(s).to(B0.scalar_type());
      }
      if (!need_A && !need_x) continue;
      torch::Tensor gt;  // gᵀ = s·Bᵀ·dyᵀ [k·r, N]
      if (enable.empty()) {
        gt = torch::mm(B.t(), dya.t());
      } else {
        gt = torch::empty({static_cast<int64_t>(blocks.size()) * r, dy.size(0)}, ht.options());
        for (const auto& [bi, j] : blocks) {
          torch::Tensor dst = gt.narrow(0, bi * r, r);  // whole rows: contiguous
          torch::mm_out(dst, B.narrow(0, bi * slice, slice).t(), dya.narrow(1, j * slice, slice).t());
        }
      }
      gt.mul_(s);
      torch::Tensor t;  // the adapter's part of dx, when it is masked or in another dtype
      if (need_x && dropouts[i] == 0.0 && ad == xc.scalar_type())
        unmasked.emplace_back(gt, A);
      else if (need_x)
        t = torch::mm(gt.t(), A);
      torch::Tensor xa = xc.to(ad), xd = xa;
      if (dropouts[i] > 0.0) {
        if (mask.scalar_type() == torch::kByte) {  // CPU: the bit mask, applied to x and t in one pass
          xd = masked_scale(xa, mask, dropouts[i], t);
        } else {
          const double c = 1.0 / (1.0 - dropouts[i]);
          xd = xa.mul(mask).mul_(c);
          if (t.defined()) t.mul_(mask).mul_(c);
        }
      }
      if (need_A) out[first + 2 * i] = torch::mm(gt, xd).to(A0.scalar_type());
      if (t.defined()) {
        t = t.to(xc.scalar_type());
        dx = dx.defined() ? dx.add_(t) : t;
      }
    }
    if (need_x) {
      dx = dx.defined() ? dx.addmm_(dy, W) : torch::mm(dy, W);
      for (const auto& [gt, A] : unmasked) dx.addmm_(gt.t(), A);
      out[0] = dx.to(static_cast<at::ScalarType>(dtypes[0]));
    }
    if (ctx->needs_input_grad(1)) out[1] = torch::mm(dy.t(), xc).to(static_cast<at::ScalarType>(dtypes[1]));
    if (has_bias && ctx->needs_input_grad(2)) out[2] = dy.sum(0);
    return out;
  }

 private:
  static at::ScalarType compute_dtype(const torch::Tensor& x) {
    const auto ac = autocast_dtype(x.device());
    return ac && x.scalar_type() != torch::kDouble ? *ac : x.scalar_type();
  }
  static at::ScalarType adapter_dtype(const torch::Tensor& x, const torch::Tensor& A) {
    const auto ac = autocast_dtype(x.device());
    return ac && A.scalar_type() != torch::kDouble ? *ac : A.scalar_type();
  }

  /// y[:, slice j] += s·h_block·B_blockᵀ for every enabled slice, in y's dtype (ht = hᵀ).
  static void add_update(torch::Tensor& y, const torch::Tensor& ht, const torch::Tensor& B, const AdapterTerm& term) {
    const auto blocks = slice_blocks(term.enable);
    const int64_t r = B.size(1);
    const int64_t slice = term.enable.empty() ? y.size(1) : y.size(1) / static_cast<int64_t>(term.enable.size());
    for (const auto& [bi, j] : blocks) {
      torch::Tensor dst = y.narrow(1, j * slice, slice);
      const torch::Tensor hb = ht.narrow(0, bi * r, r).t(), Bb = B.narrow(0, bi * slice, slice);
      if (y.scalar_type() == B.scalar_type())
        dst.addmm_(hb, Bb.t(), /*beta=*/1, /*alpha=*/term.scale);
      else
        dst.add_(torch::mm(hb, Bb.t()).mul_(term.scale).to(y.scalar_type()));
    }
  }
};

/// y = x·W0ᵀ + b + Σ s·drop(x)·Aᵀ·Bᵀ for x [N, in]: through the autograd function when a
/// gradient is wanted, directly otherwise.
inline torch::Tensor lora_linear(const torch::Tensor& x2d, const torch::Tensor& W, const torch::Tensor& b,
                                 const std::vector<std::pair<torch::Tensor, torch::Tensor>>& adapters,
                                 const LinearPlan& plan) {
  std::vector<torch::Tensor> t{x2d, W};
  if (plan.has_bias) t.push_back(b);
  bool grad = false;
  for (const auto& ab : adapters) {
    t.push_back(ab.first);
    t.push_back(ab.second);
  }
  if (torch::GradMode::is_enabled())
    for (const auto& v : t) grad = grad || v.requires_grad();
  if (!grad) {
    torch::NoGradGuard no_grad;
    return LoRALinearFunction::run(t, plan, nullptr);
  }
  return LoRALinearFunction::apply(torch::TensorList(t), plan);
}

}  // namespace detail
}  // namespace lora
