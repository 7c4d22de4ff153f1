#pragma once
/// \file analysis.hpp
/// The paper's §7 as library functions (Hu et al., 2021): how much two adapters' subspaces
/// overlap (§7.2, Figures 3 and 4) and how an update ΔW relates to the weight W it adapts
/// (§7.3, Table 7). Everything is computed in float64 on the CPU.
///
/// - `subspace_similarity(A1, A2)`: φ(A1, A2, i, j) = ‖U1_iᵀ·U2_j‖²_F / min(i, j) for every i ≤ r1,
///   j ≤ r2, where U_i are the top-i right-singular vectors of A [r, in] (the paper's definition;
///   1 when one subspace contains the other, 0 when they are orthogonal, about max(i, j) / in for
///   random subspaces). `subspace_similarity_B` does the same with B's left-singular vectors.
/// - `weight_alignment(W, ΔW, r)`: ‖UᵀWV‖_F for U, V the top-r singular vectors of ΔW, of W and of
///   a random Gaussian matrix, and the amplification factor ‖ΔW‖_F / ‖UᵀWV‖_F (ΔW's directions):
///   the paper finds ΔW amplifies directions W does not emphasise (21.5 at r = 4, GPT-3's W_q).
/// - `analyze_adapter(model, adapter)`: both per adapted layer, per slice for fused projections
///   (the paper analyses W_q and W_v apart), with ΔW's singular values.
///
/// Example:
/// \code
///   for (const auto& a : lora::analyze_adapter(*model, "default"))
///     std::cout << a.module << " amplification " << a.alignment.amplification() << "\n";
///   auto phi = lora::subspace_similarity(small->lora_A("default"), large->lora_A("default"));  // Figure 3
/// \endcode

#include <lora/walk.hpp>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace lora {

namespace detail {

inline torch::Tensor f64(const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kDouble); }

/// φ for every (i, j) from two orthonormal bases given as columns, [d, r1] and [d, r2].
inline torch::Tensor grassmann_grid(const torch::Tensor& U1, const torch::Tensor& U2) {
  const torch::Tensor overlap = U1.t().mm(U2).pow(2).cumsum(0).cumsum(1);  // [i][j]: ‖U1_iᵀ U2_j‖²_F
  const auto r1 = U1.size(1), r2 = U2.size(1);
  const torch::Tensor i = torch::arange(1, r1 + 1, torch::kDouble).unsqueeze(1), j = torch::arange(1, r2 + 1, torch::kDouble);
  return overlap / torch::minimum(i, j);
}

/// The top-r left-singular vectors of M as columns [rows, r] (r ≤ min(M's dims)).
inline torch::Tensor top_left(const torch::Tensor& M, int64_t r) {
  auto svd = torch::linalg_svd(M, /*full_matrices=*/false);
  return std::get<0>(svd).narrow(1, 0, r);
}

}  // namespace detail

/// φ(A1, A2, i, j) for every i ≤ r1 and j ≤ r2 ([r1, r2] float64), A1 [r1, in] and A2 [r2, in]
/// (two adapters' A of one layer, e.g. r = 8 and r = 64, or two seeds).
inline torch::Tensor subspace_similarity(const torch::Tensor& A1, const torch::Tensor& A2) {
  if (A1.dim() != 2 || A2.dim() != 2 || A1.size(1) != A2.size(1))
    throw std::invalid_argument("subspace_similarity: A1 " + shape_str(A1.sizes()) + " and A2 " + shape_str(A2.sizes()) +
                                " must be [r, in] with the same in: the A of two adapters of one layer");
  const auto r1 = std::min(A1.size(0), A1.size(1)), r2 = std::min(A2.size(0), A2.size(1));
  return detail::grassmann_grid(detail::top_left(detail::f64(A1).t(), r1), detail::top_left(detail::f64(A2).t(), r2));
}

/// The same for B1 [out, r1] and B2 [out, r2], through their left-singular vectors.
inline torch::Tensor subspace_similarity_B(const torch::Tensor& B1, const torch::Tensor& B2) {
  if (B1.dim() != 2 || B2.dim() != 2 || B1.size(0) != B2.size(0))
    throw std::invalid_argument("subspace_similarity_B: B1 " + shape_str(B1.sizes()) + " and B2 " + shape_str(B2.sizes()) +
                                " must be [out, r] with the same out: the B of two adapters of one layer");
  const auto r1 = std::min(B1.size(0), B1.size(1)), r2 = std::min(B2.size(0), B2.size(1));
  return detail::grassmann_grid(detail::top_left(detail::f64(B1), r1), detail::top_left(detail::f64(B2), r2));
}

/// Table 7's numbers for one weight.
struct WeightAlignment {
  int64_t r = 0;
  double weight_norm = 0;          ///< ‖W‖_F
  double delta_norm = 0;           ///< ‖ΔW‖_F
  double on_delta = 0;             ///< ‖UᵀWV‖_F, U and V the top-r singular vectors of ΔW
  double on_weight = 0;            ///< the same with W's own top-r directions
  double on_random = 0;            ///< the same with a random Gaussian matrix's
  /// ‖ΔW‖_F / ‖UᵀWV‖_F in ΔW's directions: how much ΔW amplifies directions already in W.
  double amplification() const { return on_delta > 0 ? delta_norm / on_delta : 0.0; }
};

/// Table 7 for W and ΔW of the same shape [out, in]; the random directions come from `seed`.
inline WeightAlignment weight_alignment(const torch::Tensor& W, const torch::Tensor& dW, int64_t r, uint64_t seed = 0) {
  if (W.dim() != 2 || W.sizes() != dW.sizes())
    throw std::invalid_argument("weight_alignment: W " + shape_str(W.sizes()) + " and ΔW " + shape_str(dW.sizes()) +
                                " must be matrices of one shape");
  if (r < 1 || r > std::min(W.size(0), W.size(1)))
    throw std::invalid_argument("weight_alignment: r = " + std::to_string(r) + " must be in [1, " +
                                std::to_string(std::min(W.size(0), W.size(1))) + "]");
  const torch::Tensor w = detail::f64(W), d = detail::f64(dW);
  auto projected = [&](const torch::Tensor& M) {
    auto svd = torch::linalg_svd(M, /*full_matrices=*/false);
    const torch::Tensor U = std::get<0>(svd).narrow(1, 0, r), V = std::get<2>(svd).narrow(0, 0, r).t();
    return U.t().mm(w).mm(V).norm().item<double>();
  };
  auto gen = at::detail::createCPUGenerator(seed);
  WeightAlignment a;
  a.r = r;
  a.weight_norm = w.norm().item<double>();
  a.delta_norm = d.norm().item<double>();
  a.on_delta = projected(d);
  a.on_weight = projected(w);
  a.on_random = projected(at::normal(0.0, 1.0, w.sizes(), gen, torch::kDouble));
  return a;
}

/// One adapted weight of a model, as analyze_adapter reports it.
struct LayerAnalysis {
  std::string module;           ///< module path
  int64_t slice = -1;           ///< output slice of a fused projection (slice mask), -1 for the whole layer
  torch::Tensor singular_values;  ///< of ΔW (float64, descending)
  WeightAlignment alignment;    ///< Table 7 at the adapter's rank
};

/// ΔW's spectrum and Table 7 for every layer (every enabled slice of a slice-masked layer) that has
/// `adapter`, at the adapter's rank (or `r` when given). Layers must be unmerged (a merged W
/// already holds ΔW). ΔW is `delta_weight`: for DoRA, W' − W0.
inline std::vector<LayerAnalysis> analyze_adapter(torch::nn::Module& model, const std::string& adapter, int64_t r = 0,
                                                  uint64_t seed = 0) {
  std::vector<LayerAnalysis> out;
  for (const auto& [path, layer] : detail::lora_layers(model)) {
    if (!layer->has_adapter(adapter)) continue;
    if (layer->merged())
      throw std::logic_error("analyze_adapter: module '" + path + "' is merged, so its W already holds ΔW: unmerge() first");
    const auto& o = layer->adapter_options(adapter);
    const torch::Tensor W = layer->output_major(detail::f64(layer->base_weight()));
    const torch::Tensor dW = layer->output_major(detail::f64(layer->delta_weight(adapter)));
    const int64_t n = o.enable().empty() ? 1 : static_cast<int64_t>(o.enable().size()), rows = W.size(0) / n;
    for (int64_t j = 0; j < n; ++j) {
      if (!o.enable().empty() && !o.enable()[static_cast<size_t>(j)]) continue;
      LayerAnalysis a;
      a.module = path;
      a.slice = o.enable().empty() ? -1 : j;
      const torch::Tensor w = W.narrow(0, j * rows, rows), d = dW.narrow(0, j * rows, rows);
      a.singular_values = torch::linalg_svdvals(d);
      a.alignment = weight_alignment(w, d, std::min<int64_t>(r > 0 ? r : o.r(), std::min(w.size(0), w.size(1))), seed);
      out.push_back(std::move(a));
    }
  }
  if (out.empty()) throw std::invalid_argument("analyze_adapter: no LoRA layer of the model has adapter '" + adapter + "'");
  return out;
}

}  // namespace lora
