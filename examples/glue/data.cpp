#include "data.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace glue {

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t tab; (tab = line.find('\t', start)) != std::string::npos; start = tab + 1) out.push_back(line.substr(start, tab - start));
  out.push_back(line.substr(start));
  return out;
}

}  // namespace

const std::vector<Task>& tasks() {
  // Columns as download_glue_data.py writes the files (see ../shared/data/README.md).
  static const std::vector<Task> all = [] {
    std::vector<Task> t;
    auto add = [&](std::string name, std::string folder, std::vector<std::string> labels, Metric metric, int a, int b, int label,
                   int min_columns) {
      Task task;
      task.name = std::move(name);
      task.folder = std::move(folder);
      task.labels = std::move(labels);
      task.metric = metric;
      task.eval_files = {"dev.tsv"};
      task.first_text = a;
      task.second_text = b;
      task.label_column = label;
      task.min_columns = min_columns;
      t.push_back(task);
      return &t.back();
    };
    add("cola", "CoLA", {"0", "1"}, Metric::Matthews, 3, -1, 1, 4)->header = false;  // source, label, mark, sentence
    add("sst-2", "SST-2", {"0", "1"}, Metric::Accuracy, 0, -1, 1, 2);
    add("mrpc", "MRPC", {"0", "1"}, Metric::F1AndAccuracy, 3, 4, 0, 5);  // Quality, #1 ID, #2 ID, #1 String, #2 String
    add("sts-b", "STS-B", {}, Metric::PearsonSpearman, 7, 8, -1, 10);
    add("qqp", "QQP", {"0", "1"}, Metric::F1AndAccuracy, 3, 4, 5, 6);   // id, qid1, qid2, question1, question2, is_duplicate
    add("mnli", "MNLI", {"entailment", "neutral", "contradiction"}, Metric::Accuracy, 8, 9, -1, 11)->eval_files = {
        "dev_matched.tsv", "dev_mismatched.tsv"};  // ... sentence1, sentence2, label1 [.. label5], gold_label
    add("qnli", "QNLI", {"entailment", "not_entailment"}, Metric::Accuracy, 1, 2, 3, 4);
    add("rte", "RTE", {"entailment", "not_entailment"}, Metric::Accuracy, 1, 2, 3, 4);
    add("wnli", "WNLI", {"0", "1"}, Metric::Accuracy, 1, 2, 3, 4);
    return t;
  }();
  return all;
}

const Task& task_named(const std::string& name) {
  std::string key = lower(name);
  if (key == "sst2") key = "sst-2";
  if (key == "stsb") key = "sts-b";
  std::string known;
  for (const auto& t : tasks()) {
    if (t.name == key) return t;
    known += (known.empty() ? "" : ", ") + t.name;
  }
  throw std::invalid_argument("unknown GLUE task '" + name + "': expected one of " + known);
}

std::vector<Example> read_tsv(const Task& task, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read GLUE file '" + path + "'");
  std::vector<Example> out;
  std::string line;
  for (size_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (number == 1 && task.header) continue;
    if (line.empty()) continue;
    const auto cols = split_tabs(line);
    const auto where = [&] { return "GLUE " + task.folder + " file '" + path + "', line " + std::to_string(number) + ": "; };
    if (static_cast<int>(cols.size()) < task.min_columns)
      throw std::runtime_error(where() + std::to_string(cols.size()) + " tab-separated columns, expected at least " +
                               std::to_string(task.min_columns) + ": is this " + task.folder +
                               "'s file as download_glue_data.py writes it (tabs, no quoting)?");
    Example e;
    e.text_a = cols[static_cast<size_t>(task.first_text)];
    if (task.second_text >= 0) e.text_b = cols[static_cast<size_t>(task.second_text)];
    const std::string& value = task.label_column >= 0 ? cols[static_cast<size_t>(task.label_column)] : cols.back();
    if (task.regression()) {
      size_t used = 0;
      try {
        e.score = std::stod(value, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != value.size())
        throw std::runtime_error(where() + "score '" + value + "' is not a number: is this a labelled file (train or dev, not test)?");
    } else {
      const auto it = std::find(task.labels.begin(), task.labels.end(), value);
      if (it == task.labels.end()) {
        std::string names;
        for (const auto& l : task.labels) names += (names.empty() ? "" : ", ") + l;
        throw std::runtime_error(where() + "unknown label '" + value + "' (expected " + names +
                                 "): is this a labelled file (train or dev, not test)?");
      }
      e.label = it - task.labels.begin();
    }
    out.push_back(std::move(e));
  }
  if (out.empty()) throw std::runtime_error("GLUE file '" + path + "' has no examples");
  return out;
}

std::string task_file(const Task& task, const std::string& root, const std::string& file) {
  const std::string path = root + "/" + task.folder + "/" + file;
  if (!std::filesystem::exists(path))
    throw std::runtime_error("GLUE file '" + path + "' not found: put the GLUE data in download_glue_data.py's layout under " + root +
                             " (" + task.folder + "/train.tsv, " + task.folder + "/" + task.eval_files.front() +
                             "; the script ships in microsoft/LoRA's examples/NLU/utils)");
  return path;
}

}  // namespace glue
