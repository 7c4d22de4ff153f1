#pragma once
// The GLUE tasks (Wang et al., 2019) as microsoft/LoRA's examples/NLU trains them: each task's TSV
// layout (download_glue_data.py's files), its label names in HF `datasets` order, and its metric.
// No torch here.

#include <cstdint>
#include <string>
#include <vector>

namespace glue {

/// How a task is scored (HF's glue_compute_metrics).
enum class Metric {
  Accuracy,         ///< RTE, QNLI, SST-2, WNLI, MNLI (matched and mismatched)
  F1AndAccuracy,    ///< MRPC, QQP: F1 of class 1, and accuracy
  Matthews,         ///< CoLA: Matthews correlation coefficient
  PearsonSpearman,  ///< STS-B (a regression on 0-5): Pearson and Spearman correlations
};

/// One GLUE task: where its files are and how their rows read.
struct Task {
  std::string name;    ///< command-line name: "rte", "mnli", "sts-b", ...
  std::string folder;  ///< folder under the GLUE root: "RTE", "MNLI", "STS-B", ...
  std::vector<std::string> labels;  ///< label names in id order (HF `datasets`); empty: regression
  Metric metric = Metric::Accuracy;
  std::vector<std::string> eval_files;  ///< {"dev.tsv"}; MNLI: dev_matched.tsv, dev_mismatched.tsv
  bool header = true;                   ///< CoLA's train/dev files have none
  int first_text = 0, second_text = -1;  ///< columns of the texts (-1: single sentence)
  int label_column = -1;                 ///< column of the label; -1: the last one
  int min_columns = 0;                   ///< rows with fewer columns are an error
  bool regression() const { return labels.empty(); }
  int64_t num_labels() const { return regression() ? 1 : static_cast<int64_t>(labels.size()); }
};

/// All tasks: cola, sst-2, mrpc, sts-b, qqp, mnli, qnli, rte, wnli.
const std::vector<Task>& tasks();
/// The task named `name` (case-insensitive; "sst2", "stsb" also accepted); an error lists them.
const Task& task_named(const std::string& name);

/// One example: one or two texts and a label id (classification) or a score (regression).
struct Example {
  std::string text_a, text_b;  ///< text_b empty for single-sentence tasks
  int64_t label = -1;
  double score = 0;
};

/// Reads a task's labelled TSV file (train.tsv, dev.tsv, ...): tab-separated, no quoting. A row
/// with too few columns or an unknown label is an error naming the file, the line and the fix.
std::vector<Example> read_tsv(const Task& task, const std::string& path);

/// The folder of `task` under `root` holding `file`, or an error saying where to get it (the
/// GLUE tasks ../shared lacks are for users to bring: download_glue_data.py's layout).
std::string task_file(const Task& task, const std::string& root, const std::string& file);

}  // namespace glue
