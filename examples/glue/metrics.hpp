#pragma once
// GLUE's metrics as HF's glue_compute_metrics (sklearn and scipy) computes them. No torch here.

#include "data.hpp"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace glue {

/// The share of predictions equal to the gold labels.
double accuracy(const std::vector<int64_t>& pred, const std::vector<int64_t>& gold);
/// F1 of class 1 (sklearn's f1_score, binary): 2·tp / (2·tp + fp + fn); 0 when there is no tp.
double f1_binary(const std::vector<int64_t>& pred, const std::vector<int64_t>& gold);
/// Matthews correlation coefficient over any number of classes (sklearn's matthews_corrcoef);
/// 0 when a marginal is constant.
double matthews(const std::vector<int64_t>& pred, const std::vector<int64_t>& gold);
/// Pearson's r (scipy.stats.pearsonr); 0 for a constant input.
double pearson(const std::vector<double>& x, const std::vector<double>& y);
/// Spearman's rho (scipy.stats.spearmanr): Pearson's r of the ranks, ties given their average rank.
double spearman(const std::vector<double>& x, const std::vector<double>& y);

/// The task's metrics by HF's names: "accuracy"; "f1", "accuracy", "acc_and_f1"; "mcc";
/// "pearson", "spearmanr", "corr". Classification tasks read `pred`/`gold`, STS-B the scores.
std::map<std::string, double> compute_metrics(const Task& task, const std::vector<int64_t>& pred, const std::vector<int64_t>& gold,
                                              const std::vector<double>& pred_scores = {}, const std::vector<double>& gold_scores = {});

/// The metric the paper's Table 2 reports for the task (accuracy; MCC for CoLA; Pearson for
/// STS-B; accuracy for MRPC and QQP as the paper's footnote says).
double headline(const Task& task, const std::map<std::string, double>& metrics);

}  // namespace glue
