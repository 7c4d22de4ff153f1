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
/// - `compare_adapters(model, a, b)`: φ of two adapters loaded on one model (r = 8 against r = 64,
///   or two seeds), per weight they share; `adapter_factors` gives each weight's A and B.
/// - `FusedSlices`: read a fused projection (GPT-2's c_attn) slice by slice even when its adapter
///   came from a PEFT file as the equivalent whole-layer adapter.
///
/// Example:
/// \code
///   for (const auto& a : lora::analyze_adapter(*model, "default"))
///     std::cout << a.module << " amplification " << a.alignment.amplification() << "\n";
///   auto phi = lora::subspace_similarity(small->lora_A("default"), large->lora_A("default"));  // Figure 3
/// \endcode

#include <lora/walk.hpp>

#include <algorithm>
#include <map>
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

/// Fused projections to read slice by slice when their adapter has no slice mask: module-name
/// suffix (as in `target_modules`) → number of equal output slices, e.g. {{"attn.c_attn", 3}}
/// for GPT-2's q, k, v. Needed for adapters loaded from PEFT files, which store a per-slice
/// adapter as the equivalent whole-layer one (B zero outside each slice's column block).
using FusedSlices = std::map<std::string, int64_t>;

/// One adapter's factors for one adapted weight: a whole layer, or one slice of a fused
/// projection (`slice` its index among all the layer's slices). That weight's update is
/// scaling·B·A (the transpose for an Embedding, as PEFT stores it).
struct WeightFactors {
  std::string module;  ///< module path
  int64_t slice = -1;  ///< output slice of a fused projection, -1 for the whole layer
  torch::Tensor A;     ///< [r, in]: the adapter's A, its rows for this slice
  torch::Tensor B;     ///< [out of the slice, r]
};

namespace detail {

/// The factors of `adapter` on one layer, per slice: by the slice mask when it has one (block g
/// of A and B for the g-th enabled slice); by `fused` for a whole-layer adapter on a fused
/// projection (a slice's factors: the columns of B non-zero on its rows, and those rows of A;
/// slices with none are not adapted; a B of zeros leaves the whole layer); else the whole layer.
inline std::vector<WeightFactors> layer_factors(const std::string& path, LoRALayer& layer, const std::string& adapter,
                                                const FusedSlices& fused) {
  const auto& o = layer.adapter_options(adapter);
  const torch::Tensor A = layer.lora_A(adapter).detach(), B = layer.lora_B(adapter).detach();
  std::vector<WeightFactors> out;
  if (!o.enable().empty()) {
    const int64_t k = std::count(o.enable().begin(), o.enable().end(), true), rows = B.size(0) / k;
    int64_t g = 0;
    for (size_t j = 0; j < o.enable().size(); ++j)
      if (o.enable()[j]) {
        out.push_back({path, static_cast<int64_t>(j), A.narrow(0, g * o.r(), o.r()), B.narrow(0, g * rows, rows)});
        ++g;
      }
    return out;
  }
  for (const auto& [key, n] : fused) {
    if (!name_matches(path, key)) continue;
    if (n < 1 || B.size(0) % n != 0)
      throw std::invalid_argument("analysis: module '" + path + "' has " + std::to_string(B.size(0)) + " output features, which " +
                                  std::to_string(n) + " fused slices (key '" + key + "') do not divide evenly");
    const int64_t rows = B.size(0) / n;
    for (int64_t j = 0; j < n; ++j) {
      const torch::Tensor Bj = B.narrow(0, j * rows, rows);
      const torch::Tensor cols = Bj.abs().sum(0).nonzero().flatten();
      if (cols.numel() > 0) out.push_back({path, j, A.index_select(0, cols), Bj.index_select(1, cols)});
    }
    if (!out.empty()) return out;
    break;  // B is zero (an untrained adapter): no slice can be told apart, so the whole layer
  }
  out.push_back({path, -1, A, B});
  return out;
}

}  // namespace detail

/// A and B of `adapter` per adapted weight of the model, in model order, slices apart.
inline std::vector<WeightFactors> adapter_factors(torch::nn::Module& model, const std::string& adapter, const FusedSlices& fused = {}) {
  std::vector<WeightFactors> out;
  for (const auto& [path, layer] : detail::lora_layers(model))
    if (layer->has_adapter(adapter))
      for (auto& f : detail::layer_factors(path, *layer, adapter, fused)) out.push_back(std::move(f));
  if (out.empty()) throw std::invalid_argument("adapter_factors: no LoRA layer of the model has adapter '" + adapter + "'");
  return out;
}

/// Figures 3 and 4 for one weight that two adapters both adapt.
struct SubspaceComparison {
  std::string module;
  int64_t slice = -1;
  torch::Tensor phi_A;  ///< subspace_similarity of the two A: [r1, r2]
  torch::Tensor phi_B;  ///< subspace_similarity_B of the two B: [r1, r2]
};

/// φ between adapters `a` and `b` (say r = 8 and r = 64, or two seeds) for every weight both adapt,
/// in model order. Load both onto one base model under two names (load_adapter's adapter_name).
inline std::vector<SubspaceComparison> compare_adapters(torch::nn::Module& model, const std::string& a, const std::string& b,
                                                        const FusedSlices& fused = {}) {
  const auto fa = adapter_factors(model, a, fused), fb = adapter_factors(model, b, fused);
  std::vector<SubspaceComparison> out;
  for (const auto& x : fa)
    for (const auto& y : fb)
      if (x.module == y.module && x.slice == y.slice)
        out.push_back({x.module, x.slice, subspace_similarity(x.A, y.A), subspace_similarity_B(x.B, y.B)});
  if (out.empty())
    throw std::invalid_argument("compare_adapters: adapters '" + a + "' and '" + b +
                                "' adapt no weight in common (the same module and slice): were they trained on other target modules?");
  return out;
}

/// One adapted weight of a model, as analyze_adapter reports it.
struct LayerAnalysis {
  std::string module;             ///< module path
  int64_t slice = -1;             ///< output slice of a fused projection, -1 for the whole layer
  torch::Tensor singular_values;  ///< of ΔW (float64, descending)
  WeightAlignment alignment;      ///< Table 7 at the adapter's rank
};

/// ΔW's spectrum and Table 7 for every weight that has `adapter` (every adapted slice of a fused
/// projection, see adapter_factors), at the rank of its factors (or `r` when given). Layers must
/// be unmerged (a merged W already holds ΔW). ΔW is the slice's rows of `delta_weight`: for DoRA,
/// W' − W0.
inline std::vector<LayerAnalysis> analyze_adapter(torch::nn::Module& model, const std::string& adapter, int64_t r = 0,
                                                  uint64_t seed = 0, const FusedSlices& fused = {}) {
  std::vector<LayerAnalysis> out;
  for (const auto& [path, layer] : detail::lora_layers(model)) {
    if (!layer->has_adapter(adapter)) continue;
    if (layer->merged())
      throw std::logic_error("analyze_adapter: module '" + path + "' is merged, so its W already holds ΔW: unmerge() first");
    const torch::Tensor W = layer->output_major(detail::f64(layer->base_weight()));
    const torch::Tensor dW = layer->output_major(detail::f64(layer->delta_weight(adapter)));
    for (const auto& f : detail::layer_factors(path, *layer, adapter, fused)) {
      const int64_t rows = f.slice < 0 ? W.size(0) : f.B.size(0);
      const int64_t first = f.slice < 0 ? 0 : f.slice * rows;
      const torch::Tensor w = W.narrow(0, first, rows), d = dW.narrow(0, first, rows);
      LayerAnalysis a;
      a.module = path;
      a.slice = f.slice;
      a.singular_values = torch::linalg_svdvals(d);
      a.alignment = weight_alignment(w, d, std::min<int64_t>(r > 0 ? r : f.A.size(0), std::min(w.size(0), w.size(1))), seed);
      out.push_back(std::move(a));
    }
  }
  if (out.empty()) throw std::invalid_argument("analyze_adapter: no LoRA layer of the model has adapter '" + adapter + "'");
  return out;
}

}  // namespace lora
