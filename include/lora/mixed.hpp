#pragma once
/// \file mixed.hpp
/// How a LoRA layer computes a batch whose rows use different adapters (`lora::AdapterPerRow`).
/// The base projection runs once for the whole batch; the adapters' updates are then added in
/// place into its output by one of two algorithms, picked per layer and batch by their cost:
///
/// - **Stacked**: the adapters the rows ask for, stacked once per scope (cached, rebuilt when an
///   adapter changes) as A_cat [Σr, in] and (s·B)ᵀ_cat [Σr, out]; then hᵀ = A_cat·xᵀ for every
///   token, each row's columns of other adapters zeroed, and y += h·(s·B)ᵀ_cat. Four operations
///   whatever the number of adapters, but every token pays for every adapter's rank (Σr).
/// - **Segmented** (Punica's SGMV written with LibTorch ops): each adapter's own rows get their own
///   two thin products. Rows that sit together (a run of consecutive rows with one adapter, as
///   the beams of a prompt) are computed on views and added into their rows of y in place; an
///   adapter whose rows are scattered in many runs has them gathered and added back
///   (`index_select` / `index_add_`, the loop PEFT runs). Each token pays for its own rank only,
///   plus two operations per run or four per gathered adapter.
///
/// `MixedStrategy::Auto` estimates both from the shapes (each product's arithmetic at a rate that
/// falls with its thinnest dimension, the bytes it and a gather move, a fixed cost per operation)
/// and takes the cheaper; the constants were fitted on this project's CPU machine to the sweep of
/// bench_multi.cpp (docs/guide.md).

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace lora {

/// Which algorithm a mixed-adapter batch uses (see mixed.hpp); `Auto` picks by cost.
enum class MixedStrategy { Auto, Stacked, Segmented };

namespace detail {

/// The adapters of one layer that a mixed batch uses, stacked in the compute dtype: adapter k
/// owns rows [offset[k], offset[k] + rank[k]) of A_cat [Σr, a_cols] and of BT_cat [Σr, b_cols]
/// (its B transposed and multiplied by its scaling). `key` says which tensors, at which version,
/// it was built from, so a changed adapter is never read stale.
struct AdapterStack {
  struct Source {
    const void* impl;
    const void* data;
    int64_t version;
    double scale;
    bool operator==(const Source& o) const {
      return impl == o.impl && data == o.data && version == o.version && scale == o.scale;
    }
  };
  std::vector<Source> key;
  torch::ScalarType dtype = torch::kFloat;
  torch::Device device = torch::kCPU;
  torch::Tensor A_cat, BT_cat;
  std::vector<int64_t> offset, rank;
  int64_t total_rank() const { return offset.empty() ? 0 : offset.back() + rank.back(); }
};

/// Which stacked adapter each row of the batch uses (-1: none), after AdapterPerRow's choices
/// were expanded over groups of rows and mapped to the adapters this layer has.
struct RowSlots {
  std::vector<int64_t> slot;          ///< per row of the input's first dimension
  std::vector<std::string> present;   ///< the layer's adapters some row uses, in slot order
  bool empty() const { return present.empty(); }
};

/// Maximal runs of consecutive rows with the same slot k ≥ 0: (first row, rows, k).
struct RowRun {
  int64_t first, rows, slot;
};
inline std::vector<RowRun> row_runs(const std::vector<int64_t>& slot) {
  std::vector<RowRun> runs;
  for (int64_t i = 0; i < static_cast<int64_t>(slot.size()); ++i) {
    const int64_t k = slot[static_cast<size_t>(i)];
    if (k < 0) continue;
    if (!runs.empty() && runs.back().slot == k && runs.back().first + runs.back().rows == i)
      ++runs.back().rows;
    else
      runs.push_back({i, 1, k});
  }
  return runs;
}

/// The cost model of the rule, in seconds: a product of an [m, k] and a [k, n] matrix costs its
/// arithmetic at a rate that falls with its smallest dimension w (peak · w / (w + w_half): thin
/// products run below the GEMM rate), plus its operands and result moved once, plus a fixed cost
/// per operation. Fitted to bench_multi.cpp's sweep on the 2-core CPU machine (2026-12-03: the
/// forced algorithms side by side at every shape, docs/guide.md); the CUDA constants are
/// estimates, never measured here.
struct MixedCosts {
  double flops, w_half, per_op, bytes;
  static MixedCosts for_device(const torch::Device& d) {
    if (d.is_cpu()) return {40e9, 8.0, 4e-6, 20e9};
    return {50e12, 64.0, 8e-6, 2e12};
  }
  double mm(int64_t m, int64_t n, int64_t k, int64_t elem) const {
    const double w = static_cast<double>(std::min({m, n, k}));
    const double fm = static_cast<double>(m), fn = static_cast<double>(n), fk = static_cast<double>(k);
    return 2.0 * fm * fn * fk / (flops * w / (w + w_half)) + (fm * fk + fk * fn + 2.0 * fm * fn) * static_cast<double>(elem) / bytes +
           per_op;
  }
};

/// The plan of a segmented pass: for each slot, whether its rows are gathered (else run by run).
struct SegmentPlan {
  std::vector<RowRun> runs;
  std::vector<bool> gather;  ///< per slot
  double cost = 0;
};

/// Plans the segmented pass and estimates its cost, for T tokens per row.
inline SegmentPlan plan_segments(const RowSlots& rows, const AdapterStack& s, int64_t T, int64_t in, int64_t out,
                                 int64_t elem, const MixedCosts& c) {
  SegmentPlan p;
  p.runs = row_runs(rows.slot);
  const auto n = rows.present.size();
  std::vector<double> by_runs(n, 0.0);
  std::vector<int64_t> rows_of(n, 0);
  for (const auto& r : p.runs) {
    const auto k = static_cast<size_t>(r.slot);
    const int64_t tokens = r.rows * T, rank = s.rank[k];
    by_runs[k] += c.mm(rank, tokens, in, elem) + c.mm(tokens, out, rank, elem);
    rows_of[k] += r.rows;
  }
  p.gather.assign(n, false);
  for (size_t k = 0; k < n; ++k) {
    const int64_t tokens = rows_of[k] * T, rank = s.rank[k];
    const double by_gather = c.mm(rank, tokens, in, elem) + c.mm(tokens, out, rank, elem) + 3.0 * c.per_op +
                             static_cast<double>(tokens * (in + 2 * out) * elem) / c.bytes;
    p.gather[k] = by_gather < by_runs[k];
    p.cost += std::min(by_runs[k], by_gather);
  }
  return p;
}

/// The stacked pass's estimated cost, for `tokens` tokens in all.
inline double stacked_cost(const AdapterStack& s, int64_t tokens, int64_t in, int64_t out, int64_t elem, const MixedCosts& c) {
  const int64_t R = s.total_rank();
  return c.mm(R, tokens, in, elem) + c.mm(tokens, out, R, elem) + 2.0 * c.per_op + static_cast<double>(R * tokens * elem) / c.bytes;
}

/// The mask of the stacked pass: [Σr, rows, 1], 1 where column j belongs to row i's adapter.
inline torch::Tensor stacked_mask(const RowSlots& rows, const AdapterStack& s) {
  const auto batch = static_cast<int64_t>(rows.slot.size());
  std::vector<float> m(static_cast<size_t>(s.total_rank() * batch), 0.0f);
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t k = rows.slot[static_cast<size_t>(i)];
    if (k < 0) continue;
    for (int64_t j = 0; j < s.rank[static_cast<size_t>(k)]; ++j)
      m[static_cast<size_t>((s.offset[static_cast<size_t>(k)] + j) * batch + i)] = 1.0f;
  }
  return torch::tensor(m).view({s.total_rank(), batch, 1}).to(s.device, s.dtype);
}

/// What `Auto` picks for a batch of `tokens` tokens through an in → out layer, given the
/// segmented pass's plan for the same batch.
inline MixedStrategy pick_mixed_strategy(const SegmentPlan& seg, const AdapterStack& s, int64_t tokens, int64_t in,
                                         int64_t out, int64_t elem, const MixedCosts& c) {
  return stacked_cost(s, tokens, in, out, elem, c) <= seg.cost ? MixedStrategy::Stacked : MixedStrategy::Segmented;
}

/// y2d [rows·T, out] += each row's adapter update for x2d [rows·T, in] (both in the stack's
/// dtype), by `strategy` (Auto: the cheaper by the estimate).
inline void add_mixed_linear(torch::Tensor& y2d, const torch::Tensor& x2d, const RowSlots& rows, const AdapterStack& s,
                             MixedStrategy strategy) {
  const auto batch = static_cast<int64_t>(rows.slot.size());
  const int64_t T = x2d.size(0) / batch, in = x2d.size(1), out = y2d.size(1), elem = x2d.element_size();
  const auto costs = MixedCosts::for_device(x2d.device());
  SegmentPlan seg;  // planned once: Auto's estimate and the segmented pass both use it
  if (strategy != MixedStrategy::Stacked) seg = plan_segments(rows, s, T, in, out, elem, costs);
  if (strategy == MixedStrategy::Auto) strategy = pick_mixed_strategy(seg, s, x2d.size(0), in, out, elem, costs);
  if (strategy == MixedStrategy::Stacked) {
    torch::Tensor ht = torch::mm(s.A_cat, x2d.t());  // [Σr, rows·T]
    ht.view({s.total_rank(), batch, T}).mul_(stacked_mask(rows, s));
    y2d.addmm_(ht.t(), s.BT_cat);
    return;
  }
  std::vector<std::vector<int64_t>> gathered(rows.present.size());
  for (const auto& r : seg.runs) {
    const auto k = static_cast<size_t>(r.slot);
    if (seg.gather[k]) {
      for (int64_t t = r.first * T; t < (r.first + r.rows) * T; ++t) gathered[k].push_back(t);
      continue;
    }
    const torch::Tensor A = s.A_cat.narrow(0, s.offset[k], s.rank[k]), BT = s.BT_cat.narrow(0, s.offset[k], s.rank[k]);
    torch::Tensor dst = y2d.narrow(0, r.first * T, r.rows * T);
    dst.addmm_(torch::mm(A, x2d.narrow(0, r.first * T, r.rows * T).t()).t(), BT);
  }
  for (size_t k = 0; k < gathered.size(); ++k) {
    if (gathered[k].empty()) continue;
    const torch::Tensor A = s.A_cat.narrow(0, s.offset[k], s.rank[k]), BT = s.BT_cat.narrow(0, s.offset[k], s.rank[k]);
    const torch::Tensor idx = torch::tensor(gathered[k], torch::kLong).to(x2d.device());
    const torch::Tensor ht = torch::mm(A, x2d.index_select(0, idx).t());
    y2d.index_add_(0, idx, torch::mm(ht.t(), BT));
  }
}

}  // namespace detail
}  // namespace lora
