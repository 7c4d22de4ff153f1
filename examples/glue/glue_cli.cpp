// glue: RoBERTa or DeBERTa-v2 + LoRA on GLUE with the paper's recipe (microsoft/LoRA examples/NLU). This file
// maps the command line onto glue::train / evaluate / init / convert and prints errors.
#include <CLI/CLI.hpp>

#include "finetune.hpp"

#include <filesystem>
#include <iostream>

namespace {

namespace fs = std::filesystem;

const char* kModelHelp =
    "HF RoBERTa or DeBERTa-v2/v3 folder (config.json, model.safetensors; vocab.json + merges.txt or spm.model unless --tokenizer)";
const char* kTokenizerHelp = "folder with RoBERTa's vocab.json and merges.txt, or DeBERTa's spm.model (default: the model's)";

void add_train_options(CLI::App* cmd, glue::TrainArgs& t) {
  cmd->add_option("--task", t.task, "cola, sst-2, mrpc, sts-b, qqp, mnli, qnli, rte")->capture_default_str();
  cmd->add_option("--data", t.data, "GLUE root (download_glue_data.py's layout: RTE/train.tsv, ...)");
  cmd->add_option("--tokenizer", t.tokenizer, kTokenizerHelp);
  cmd->add_option("--preset", t.preset_model, "whose preset table: roberta-base, roberta-large, deberta-v2-xxlarge (default: the family's)");
  cmd->add_option("--lr", t.lr, "learning rate (default: the preset's)");
  cmd->add_option("--epochs", t.epochs, "epochs (default: the preset's)");
  cmd->add_option("--batch-size", t.batch_size, "global batch (default: the preset's batch per GPU x GPUs)");
  cmd->add_option("--max-len", t.max_len, "tokens per example, truncated longest first (default: the preset's, 512)");
  cmd->add_option("--pad-to", t.pad_to, "pad every batch to this length (the reference pads to 512; 0: to the batch's longest)")
      ->capture_default_str();
  cmd->add_option("--rank", t.rank, "LoRA r (default: the preset's, 8 RoBERTa, 16 DeBERTa)");
  cmd->add_option("--alpha", t.alpha, "LoRA alpha (default: the preset's, 16 RoBERTa, 32 DeBERTa)");
  cmd->add_option("--warmup-ratio", t.warmup_ratio, "warm-up as a fraction of the steps (default: the preset's)");
  cmd->add_option("--warmup-steps", t.warmup_steps, "warm-up steps, instead of a ratio (default: the preset's)");
  cmd->add_option("--weight-decay", t.weight_decay, "(default: the preset's)");
  cmd->add_option("--cls-dropout", t.cls_dropout, "DeBERTa's classifier dropout (default: the preset's)");
  cmd->add_option("--clip", t.clip, "max gradient norm (0: off)")->capture_default_str();
  cmd->add_option("--seed", t.seed)->capture_default_str();
  cmd->add_option("--max-steps", t.max_steps, "stop after this many steps (0: all epochs)")->capture_default_str();
  cmd->add_option("--max-train", t.max_train, "use the first N training examples (0: all)")->capture_default_str();
  cmd->add_option("--max-eval", t.max_eval, "evaluate on the first N examples of each eval file (0: all)")->capture_default_str();
  cmd->add_option("--init-adapter", t.init_adapter, "PEFT adapter whose A and B start training (MNLI start; its head is not used)");
  cmd->add_option("--init-loralib", t.init_loralib, "the same from a loralib checkpoint (roberta_base_lora_mnli.bin)");
  cmd->add_option("--resume", t.resume, "trainer_state.pt (or an epoch_N folder) to continue from");
  cmd->add_option("--device", t.device)->capture_default_str();
  cmd->add_option("--log-every", t.log_every, "a progress line every N steps (train_log.csv has every step)")->capture_default_str();
}

int run_main(int argc, char** argv) {
  CLI::App app{"glue: RoBERTa or DeBERTa-v2 + LoRA on GLUE with the paper's recipe (Hu et al., 2021, Table 2)"};
  app.require_subcommand(1);

  glue::TrainArgs t;
  auto* train = app.add_subcommand("train", "LoRA fine-tuning with the task's preset; evaluates after every epoch");
  train->add_option("--model", t.model, kModelHelp)->required();
  train->add_option("--out", t.out, "output folder (epoch_N/, best/, metrics.json, report.md)")->required();
  add_train_options(train, t);

  glue::TrainArgs s;
  auto* run = app.add_subcommand("run", "train + report.md; without --model the smoke mode: a small random model on RTE");
  run->add_option("--model", s.model, kModelHelp + std::string("; without it: smoke mode"));
  run->add_option("--arch", s.arch, "the smoke model's family: roberta or deberta-v2")->capture_default_str();
  run->add_option("--out", s.out, "output folder")->default_val("glue_run");
  add_train_options(run, s);

  glue::EvalArgs e;
  auto* eval = app.add_subcommand("eval", "metrics of a model (with an adapter) on the task's dev files");
  auto* predict = app.add_subcommand("predict", "logits of every dev example, one JSON array per line, in input order");
  for (auto* cmd : {eval, predict}) {
    cmd->add_option("--model", e.model, kModelHelp)->required();
    cmd->add_option("--adapter", e.adapter, "PEFT adapter folder (with the classifier in modules_to_save)");
    cmd->add_option("--task", e.task)->capture_default_str();
    cmd->add_option("--data", e.data, "GLUE root")->required();
    cmd->add_option("--tokenizer", e.tokenizer, kTokenizerHelp);
    cmd->add_option("--max-len", e.max_len)->capture_default_str();
    cmd->add_option("--max-eval", e.max_eval, "the first N examples of each file (0: all)")->capture_default_str();
    cmd->add_option("--pad-to", e.pad_to)->capture_default_str();
    cmd->add_option("--device", e.device)->capture_default_str();
  }
  predict->add_option("--logits", e.logits_out, "output file")->required();

  std::string init_out;
  std::string init_arch = "roberta";
  int64_t init_layers = 2, init_hidden = 64, init_labels = 2, init_vocab = 0;
  uint64_t init_seed = 0;
  auto* init = app.add_subcommand("init", "write a small random model folder (RoBERTa, or DeBERTa-v2 shaped as xxlarge)");
  init->add_option("--arch", init_arch, "roberta or deberta-v2")->capture_default_str();
  init->add_option("--vocab-size", init_vocab, "(default: the family's, 50265 or 128100)")->capture_default_str();
  init->add_option("--out", init_out)->required();
  init->add_option("--layers", init_layers)->capture_default_str();
  init->add_option("--hidden", init_hidden)->capture_default_str();
  init->add_option("--num-labels", init_labels)->capture_default_str();
  init->add_option("--seed", init_seed)->capture_default_str();

  std::string conv_in, conv_out, conv_model;
  auto* convert = app.add_subcommand("convert", "microsoft/LoRA's loralib checkpoint (.bin) to a PEFT SEQ_CLS adapter folder");
  convert->add_option("--checkpoint", conv_in, "e.g. roberta_base_lora_mnli.bin")->required();
  convert->add_option("--out", conv_out)->required();
  convert->add_option("--model", conv_model, "RoBERTa folder of the checkpoint's size (default: roberta-base's shapes)");

  CLI11_PARSE(app, argc, argv);

  if (*train) {
    auto r = glue::train(t);
    glue::write_report(t.out + "/report.md", t, r, false);
  } else if (*run) {
    const bool smoke = s.model.empty();
    if (smoke) {
      const std::string data = glue::default_data_dir();
      const bool deberta = s.arch == "deberta-v2";
      if (s.data.empty()) s.data = data + "/glue";
      if (s.tokenizer.empty() && !deberta) s.tokenizer = data + "/roberta";
      if (!fs::exists(s.data + "/RTE/train.tsv") || (!deberta && !fs::exists(s.tokenizer + "/vocab.json")))
        throw std::runtime_error("smoke mode reads RTE (and RoBERTa's tokenizer) from '" + data +
                                 "' (../shared/data beside the checkout, or $LORA_DATA_DIR), which lacks them: pass --model, "
                                 "--data and --tokenizer");
      // Small enough for a few minutes on 2 cores; options given on the command line win.
      if (s.epochs < 0) s.epochs = 2;
      if (s.batch_size < 0) s.batch_size = 16;
      if (s.max_len < 0) s.max_len = 128;
      if (s.max_train == 0) s.max_train = 256;
      if (s.max_eval == 0) s.max_eval = 128;
      glue::init_smoke_model(s);
      std::cout << "smoke mode: a random 2-layer, 64-wide " << s.arch << " in " << s.model
                << (deberta ? " (its SentencePiece model learnt from the task's training text)" : "") << "\n";
    }
    auto r = glue::train(s);
    glue::write_report(s.out + "/report.md", s, r, smoke);
    std::cout << "report: " << s.out << "/report.md\n";
  } else if (*eval || *predict) {
    for (const auto& [k, v] : glue::evaluate(e)) std::cout << k << " " << v << "\n";
  } else if (*init) {
    glue::init_model(init_out, init_layers, init_hidden, init_labels, init_seed, init_arch, init_vocab);
  } else if (*convert) {
    glue::convert_loralib(conv_in, conv_out, conv_model);
    std::cout << "wrote " << conv_out << "/adapter_config.json and adapter_model.safetensors\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run_main(argc, argv);
  } catch (const std::exception& ex) {
    std::cerr << "glue: error: " << ex.what() << "\n";
    return 1;
  }
}
