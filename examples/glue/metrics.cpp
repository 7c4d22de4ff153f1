#include "metrics.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace glue {

namespace {

template <class T>
void check_sizes(const char* what, const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size() || a.empty())
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(a.size()) + " predictions and " + std::to_string(b.size()) +
                                " gold values: both must be the same non-zero length");
}

/// 1-based ranks, ties given the mean of the ranks they span (scipy.stats.rankdata "average").
std::vector<double> average_ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> rank(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    const double mean = (static_cast<double>(i) + static_cast<double>(j)) / 2.0 + 1.0;
    for (size_t k = i; k <= j; ++k) rank[order[k]] = mean;
    i = j + 1;
  }
  return rank;
}

}  // namespace

double accuracy(const std::vector<int64_t>& pred, const std::vector<int64_t>& gold) {
  check_sizes("accuracy", pred, gold);
  size_t right = 0;
  for (size_t i = 0; i < pred.size(); ++i) right += pred[i] == gold[i];
  return static_cast<double>(right) / static_cast<double>(pred.size());
}

double f1_binary(const std::vector<int64_t>& pred, const std::vector<int64_t>& gold) {
  check_sizes("f1", pred, gold);
  double tp = 0, fp = 0, fn = 0;
  for (size_t i = 0; i < pred.size(); ++i) {
    tp += pred[i] == 1 && gold[i] == 1;
    fp += pred[i] == 1 && gold[i] != 1;
    fn += pred[i] != 1 && gold[i] == 1;
  }
  return tp > 0 ? 2 * tp / (2 * tp + fp + fn) : 0.0;
}

double matthews(const std::vector<int64_t>& pred, const std::vector<int64_t>& gold) {
  check_sizes("matthews", pred, gold);
  // sklearn's multiclass form: (c·s − Σ_k p_k·t_k) / √((s² − Σ p_k²)(s² − Σ t_k²)), with p_k and
  // t_k the predicted and true counts of class k, c the correct ones, s the samples.
  std::vector<int64_t> classes(pred);
  classes.insert(classes.end(), gold.begin(), gold.end());
  std::sort(classes.begin(), classes.end());
  classes.erase(std::unique(classes.begin(), classes.end()), classes.end());
  const double s = static_cast<double>(pred.size());
  double c = 0, pt = 0, pp = 0, tt = 0;
  for (size_t i = 0; i < pred.size(); ++i) c += pred[i] == gold[i];
  for (int64_t k : classes) {
    const double p = static_cast<double>(std::count(pred.begin(), pred.end(), k));
    const double t = static_cast<double>(std::count(gold.begin(), gold.end(), k));
    pt += p * t, pp += p * p, tt += t * t;
  }
  const double denominator = std::sqrt((s * s - pp) * (s * s - tt));
  return denominator > 0 ? (c * s - pt) / denominator : 0.0;
}

double pearson(const std::vector<double>& x, const std::vector<double>& y) {
  check_sizes("pearson", x, y);
  const double n = static_cast<double>(x.size());
  const double mx = std::accumulate(x.begin(), x.end(), 0.0) / n, my = std::accumulate(y.begin(), y.end(), 0.0) / n;
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  return sxx > 0 && syy > 0 ? sxy / std::sqrt(sxx * syy) : 0.0;
}

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  check_sizes("spearman", x, y);
  return pearson(average_ranks(x), average_ranks(y));
}

std::map<std::string, double> compute_metrics(const Task& task, const std::vector<int64_t>& pred, const std::vector<int64_t>& gold,
                                              const std::vector<double>& pred_scores, const std::vector<double>& gold_scores) {
  switch (task.metric) {
    case Metric::Matthews:
      return {{"mcc", matthews(pred, gold)}};
    case Metric::F1AndAccuracy: {
      const double acc = accuracy(pred, gold), f1 = f1_binary(pred, gold);
      return {{"accuracy", acc}, {"f1", f1}, {"acc_and_f1", (acc + f1) / 2}};
    }
    case Metric::PearsonSpearman: {
      const double p = pearson(pred_scores, gold_scores), s = spearman(pred_scores, gold_scores);
      return {{"pearson", p}, {"spearmanr", s}, {"corr", (p + s) / 2}};
    }
    case Metric::Accuracy:
      break;
  }
  return {{"accuracy", accuracy(pred, gold)}};
}

double headline(const Task& task, const std::map<std::string, double>& metrics) {
  const char* key = task.metric == Metric::Matthews ? "mcc" : task.metric == Metric::PearsonSpearman ? "pearson" : "accuracy";
  const auto it = metrics.find(key);
  if (it == metrics.end()) throw std::invalid_argument("headline: task " + task.name + " has no '" + key + "' among the metrics given");
  return it->second;
}

}  // namespace glue
