// GLUE's metrics against the definitions computed another way here: MCC from the binary
// confusion matrix, F1 from precision and recall, Spearman from ranks counted pair by pair,
// Pearson from the covariance formula in two passes.
#include <gtest/gtest.h>

#include "metrics.hpp"

#include <cmath>
#include <random>

namespace {

/// MCC of binary labels: (tp·tn − fp·fn) / √((tp+fp)(tp+fn)(tn+fp)(tn+fn)).
double binary_mcc(const std::vector<int64_t>& p, const std::vector<int64_t>& g) {
  double tp = 0, tn = 0, fp = 0, fn = 0;
  for (size_t i = 0; i < p.size(); ++i) (p[i] ? (g[i] ? tp : fp) : (g[i] ? fn : tn)) += 1;
  return (tp * tn - fp * fn) / std::sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn));
}

/// The rank of v[i]: 1 + (how many are smaller) + (how many others are equal) / 2.
std::vector<double> ranks_by_counting(const std::vector<double>& v) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    double smaller = 0, equal = 0;
    for (size_t j = 0; j < v.size(); ++j) smaller += v[j] < v[i], equal += j != i && v[j] == v[i];
    r[i] = 1 + smaller + equal / 2;
  }
  return r;
}

double covariance_r(const std::vector<double>& x, const std::vector<double>& y) {
  const size_t n = x.size();
  double mx = 0, my = 0;
  for (size_t i = 0; i < n; ++i) mx += x[i] / n, my += y[i] / n;
  double c = 0, vx = 0, vy = 0;
  for (size_t i = 0; i < n; ++i) c += (x[i] - mx) * (y[i] - my), vx += (x[i] - mx) * (x[i] - mx), vy += (y[i] - my) * (y[i] - my);
  return c / std::sqrt(vx) / std::sqrt(vy);
}

}  // namespace

TEST(GlueMetrics, MatthewsMatchesTheBinaryFormulaAndSklearnsExample) {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<int64_t> p(50), g(50);
    for (size_t i = 0; i < 50; ++i) p[i] = rng() % 2, g[i] = (rng() % 4 == 0) ? 1 - p[i] : p[i];
    EXPECT_NEAR(glue::matthews(p, g), binary_mcc(p, g), 1e-12);
  }
  // sklearn's docstring: matthews_corrcoef([+1, +1, +1, -1], [+1, -1, +1, +1]) = -0.333...
  EXPECT_NEAR(glue::matthews({1, 1, 1, 0}, {1, 0, 1, 1}), -1.0 / 3.0, 1e-12);
  EXPECT_EQ(glue::matthews({1, 1, 1}, {1, 0, 1}), 0.0);  // a constant prediction: 0, not NaN
  EXPECT_NEAR(glue::matthews({0, 1, 2, 2}, {0, 1, 2, 2}), 1.0, 1e-12);  // multiclass, perfect
}

TEST(GlueMetrics, F1AndAccuracyFollowTheirDefinitions) {
  const std::vector<int64_t> p = {1, 1, 0, 1, 0, 0, 1, 1}, g = {1, 0, 0, 1, 1, 0, 1, 0};
  const double tp = 3, precision = tp / 5, recall = tp / 4;
  EXPECT_NEAR(glue::f1_binary(p, g), 2 * precision * recall / (precision + recall), 1e-12);
  EXPECT_NEAR(glue::accuracy(p, g), 5.0 / 8.0, 1e-12);
  EXPECT_EQ(glue::f1_binary({0, 0}, {1, 0}), 0.0);
  EXPECT_THROW(glue::accuracy({1}, {1, 0}), std::invalid_argument);
  const auto m = glue::compute_metrics(glue::task_named("mrpc"), p, g);
  EXPECT_NEAR(m.at("acc_and_f1"), (m.at("accuracy") + m.at("f1")) / 2, 1e-15);
  EXPECT_EQ(glue::headline(glue::task_named("mrpc"), m), m.at("accuracy"));  // Table 2 reports accuracy for MRPC
}

TEST(GlueMetrics, SpearmanGivesTiesTheirAverageRank) {
  const std::vector<double> x = {1, 2, 2, 3, 5, 5, 5, 0.5}, y = {2, 1, 4, 4, 3, 6, 6, 0};
  EXPECT_NEAR(glue::spearman(x, y), covariance_r(ranks_by_counting(x), ranks_by_counting(y)), 1e-12);
  EXPECT_NEAR(glue::pearson(x, y), covariance_r(x, y), 1e-12);
  EXPECT_NEAR(glue::spearman({1, 2, 3, 4}, {10, 20, 30, 1000}), 1.0, 1e-12);  // monotone: 1
  EXPECT_EQ(glue::pearson({1, 1, 1}, {1, 2, 3}), 0.0);
  const auto m = glue::compute_metrics(glue::task_named("stsb"), {}, {}, x, y);
  EXPECT_EQ(glue::headline(glue::task_named("sts-b"), m), m.at("pearson"));
  EXPECT_NEAR(m.at("corr"), (m.at("pearson") + m.at("spearmanr")) / 2, 1e-15);
}
