// GLUE's TSV files: each task's columns and labels on rows written here, the files in
// ../shared/data/glue (counts from its README), and the errors for bad rows.
#include <gtest/gtest.h>

#include "data.hpp"
#include "recipe.hpp"

#include <lora_test/errors.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <unistd.h>

namespace fs = std::filesystem;
using lora_test::error_of;

namespace {

std::string glue_root() {
  if (const char* v = std::getenv("LORA_GLUE_DIR")) return v;
  return std::string(LORA_SOURCE_DIR) + "/../shared/data/glue";
}

fs::path write(const std::string& name, const std::string& text) {
  auto p = fs::temp_directory_path() / ("glue_test_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(p, std::ios::binary) << text;
  return p;
}

}  // namespace

TEST(GlueData, EachTaskReadsItsColumnsAndLabels) {
  const auto rte = glue::read_tsv(glue::task_named("RTE"), write("rte.tsv", "index\tsentence1\tsentence2\tlabel\n"
                                                                              "0\tA \"quoted\" premise.\tA hypothesis.\tnot_entailment\r\n"
                                                                              "1\tP\tH\tentailment\n").string());
  ASSERT_EQ(rte.size(), 2u);
  EXPECT_EQ(rte[0].text_a, "A \"quoted\" premise.");  // no quoting: quotes are text
  EXPECT_EQ(rte[0].text_b, "A hypothesis.");
  EXPECT_EQ(rte[0].label, 1);  // HF: entailment 0, not_entailment 1
  EXPECT_EQ(rte[1].label, 0);
  const auto cola = glue::read_tsv(glue::task_named("cola"), write("cola.tsv", "gj04\t1\t\tFirst.\ngj04\t0\t*\tSecond.").string());
  ASSERT_EQ(cola.size(), 2u);  // no header, no final newline
  EXPECT_EQ(cola[1].text_a, "Second.");
  EXPECT_EQ(cola[1].label, 0);
  EXPECT_TRUE(cola[1].text_b.empty());
  const auto sts = glue::read_tsv(glue::task_named("sts-b"),
                                  write("sts.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                                                   "0\tg\tf\ty\t0\tnone\tnone\tA plane.\tAn air plane.\t3.800\n").string());
  EXPECT_EQ(sts[0].text_b, "An air plane.");
  EXPECT_DOUBLE_EQ(sts[0].score, 3.8);
  const auto mnli = glue::read_tsv(glue::task_named("mnli"),
                                   write("mnli.tsv", "h\n0\t1\t2\tg\tb1\tb2\tp1\tp2\tPremise.\tHypothesis.\tneutral\tcontradiction\t"
                                                     "neutral\tneutral\tneutral\tneutral\n").string());
  EXPECT_EQ(mnli[0].text_a, "Premise.");
  EXPECT_EQ(mnli[0].label, 1);  // gold_label, the last column
  const auto mrpc = glue::read_tsv(glue::task_named("mrpc"), write("mrpc.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                                                                "1\t11\t22\tOne.\tTwo.\n").string());
  EXPECT_EQ(mrpc[0].text_a, "One.");
  EXPECT_EQ(mrpc[0].label, 1);
  EXPECT_EQ(glue::task_named("mnli").eval_files, (std::vector<std::string>{"dev_matched.tsv", "dev_mismatched.tsv"}));
}

TEST(GlueData, BadRowsNameTheFileAndLine) {
  const auto missing = write("missing.tsv", "index\tsentence1\tsentence2\tlabel\n0\tP\tH\tentailment\n1\tonly two\n");
  auto msg = error_of([&] { glue::read_tsv(glue::task_named("rte"), missing.string()); });
  EXPECT_NE(msg.find("'" + missing.string() + "', line 3: 2 tab-separated columns, expected at least 4"), std::string::npos) << msg;
  const auto unknown = write("unknown.tsv", "index\tsentence1\tsentence2\tlabel\n0\tP\tH\tmaybe\n");
  msg = error_of([&] { glue::read_tsv(glue::task_named("rte"), unknown.string()); });
  EXPECT_NE(msg.find("line 2: unknown label 'maybe' (expected entailment, not_entailment)"), std::string::npos) << msg;
  const auto score = write("score.tsv", "h\n0\tg\tf\ty\t0\tn\tn\tA\tB\tfive\n");
  EXPECT_NE(error_of([&] { glue::read_tsv(glue::task_named("stsb"), score.string()); }).find("score 'five' is not a number"),
            std::string::npos);
  EXPECT_NE(error_of([] { glue::task_named("squad"); }).find("expected one of cola, sst-2"), std::string::npos);
  EXPECT_NE(error_of([] { glue::task_file(glue::task_named("mrpc"), "/nonexistent", "train.tsv"); }).find("download_glue_data.py"),
            std::string::npos);
  for (const auto& p : {missing, unknown, score}) fs::remove(p);
}

TEST(GlueData, SharedFilesHaveTheirDocumentedRows) {
  const std::string root = glue_root();
  if (!fs::exists(root + "/RTE/train.tsv")) GTEST_SKIP() << "GLUE data not found at " << root << " (set LORA_GLUE_DIR)";
  // Row counts from ../shared/data/README.md (they match the HF GLUE card).
  const std::pair<const char*, size_t> files[] = {{"rte/train.tsv", 2490}, {"rte/dev.tsv", 277},   {"cola/train.tsv", 8551},
                                                  {"cola/dev.tsv", 1043},   {"sts-b/dev.tsv", 1500}, {"sst-2/dev.tsv", 872},
                                                  {"wnli/dev.tsv", 71},     {"qnli/dev.tsv", 5463}};
  for (const auto& [spec, rows] : files) {
    const std::string s = spec;
    const auto& task = glue::task_named(s.substr(0, s.find('/')));
    const auto examples = glue::read_tsv(task, glue::task_file(task, root, s.substr(s.find('/') + 1)));
    EXPECT_EQ(examples.size(), rows) << spec;
  }
  const auto rte = glue::read_tsv(glue::task_named("rte"), root + "/RTE/dev.tsv");
  EXPECT_EQ(rte[0].text_b, "Christopher Reeve had an accident.");
  EXPECT_EQ(rte[0].label, 1);
}

TEST(GlueRecipe, PresetsFollowTheScriptsConventions) {
  // What the scripts' names and flags imply, not their numbers again: the global batch is the
  // per-device batch times the GPUs; the three small tasks start from MNLI; WNLI has no recipe.
  const auto cola = glue::preset("roberta-base", glue::task_named("cola"));
  EXPECT_EQ(cola.global_batch(), 64);  // 32 × 2 GPUs: the one base script on two GPUs
  for (const char* t : {"mrpc", "rte", "sts-b"}) EXPECT_TRUE(glue::preset("FacebookAI/roberta-large", glue::task_named(t)).from_mnli) << t;
  for (const char* t : {"mnli", "sst-2", "cola", "qnli", "qqp"}) EXPECT_FALSE(glue::preset("roberta-base", glue::task_named(t)).from_mnli) << t;
  EXPECT_NE(error_of([] { glue::preset("roberta-base", glue::task_named("wnli")); }).find("no recipe for wnli"), std::string::npos);
  EXPECT_NE(error_of([] { glue::preset("bert-base-uncased", glue::task_named("rte")); }).find("roberta-base, roberta-large and deberta-v2-xxlarge"),
            std::string::npos);
  for (const char* t : {"mrpc", "rte", "sts-b"}) EXPECT_TRUE(glue::preset("microsoft/deberta-v2-xxlarge", glue::task_named(t)).from_mnli) << t;
  for (const char* t : {"mnli", "sst-2", "cola", "qnli", "qqp"}) {  // DeBERTa: warm-up steps, r 16, alpha 32, fp16
    const auto p = glue::preset("deberta-v2-xxlarge", glue::task_named(t));
    EXPECT_FALSE(p.from_mnli) << t;
    EXPECT_GT(p.warmup_steps, 0) << t;
    EXPECT_EQ(p.rank, 16);
    EXPECT_EQ(p.alpha, 32);
    EXPECT_TRUE(p.fp16);
  }
  EXPECT_EQ(glue::default_preset("deberta-v2"), "deberta-v2-xxlarge");
  EXPECT_EQ(glue::default_preset("roberta"), "roberta-base");
  EXPECT_EQ(glue::paper_table2("roberta-base", glue::task_named("rte")).value, "86.6");
  EXPECT_TRUE(glue::paper_table2("roberta-base", glue::task_named("wnli")).value.empty());
}
