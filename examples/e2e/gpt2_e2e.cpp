// gpt2-e2e: the paper's GPT-2 recipe on the E2E NLG data. This file maps the command line onto
// the subcommands' options (commands.hpp) and prints errors; the work is in e2e::cli.
#include <CLI/CLI.hpp>

#include "commands.hpp"

#include <iomanip>
#include <iostream>

#include <malloc.h>

namespace {

using namespace e2e::cli;

const char* kModelHelp =
    "HF GPT-2 folder (config.json, model.safetensors, vocab.json, merges.txt), or a hub id such as gpt2-medium "
    "(the local HuggingFace cache, else downloaded into it)";

/// An enum option: the value must be one of `names`, checked at parse time and shown in --help.
template <class E>
CLI::Option* add_enum(CLI::App* cmd, const std::string& flag, E& value, const std::map<std::string, E>& names,
                      const std::string& help) {
  std::string choices;
  for (const auto& [name, v] : names) choices += (choices.empty() ? "" : "|") + name;
  // A CheckedTransformer whose messages list the names only (CLI11's own also offers the numbers).
  CLI::Validator to_enum(
      [names, choices](std::string& in) -> std::string {
        const auto it = names.find(in);
        if (it == names.end()) return "'" + in + "' is not one of " + choices;
        in = std::to_string(static_cast<int>(it->second));
        return "";
      },
      "{" + choices + "}");
  return cmd->add_option(flag, value, help)->transform(to_enum)->type_name("NAME")->default_str(e2e::name_of(value));
}

CLI::App* add_train(CLI::App& app, TrainArgs& t) {
  auto* cmd = app.add_subcommand("train", "LoRA (or full) fine-tuning with the paper's recipe as defaults");
  cmd->add_option("--model", t.model, kModelHelp)->required();
  cmd->add_option("--data", t.data, "folder with train.txt and valid.txt (mr||ref lines)")->required();
  cmd->add_option("--out", t.out, "output folder")->required();
  add_enum(cmd, "--method", t.o.method, e2e::method_names(), "lora, or full (full fine-tuning)");
  cmd->add_option("--epochs", t.o.epochs)->capture_default_str();
  cmd->add_option("--max-steps", t.o.max_steps, "stop after this many batches (0: all epochs)")->capture_default_str();
  cmd->add_option("--batch-size", t.o.batch_size)->capture_default_str();
  cmd->add_option("--grad-accum", t.o.grad_accum)->capture_default_str();
  cmd->add_option("--lr", t.o.lr)->capture_default_str();
  cmd->add_option("--weight-decay", t.o.weight_decay)->capture_default_str();
  cmd->add_option("--warmup", t.o.warmup, "linear warm-up steps")->capture_default_str();
  cmd->add_option("--rank", t.o.rank)->capture_default_str();
  cmd->add_option("--alpha", t.o.alpha)->capture_default_str();
  cmd->add_option("--lora-dropout", t.o.lora_dropout)->capture_default_str();
  cmd->add_flag("--dora", t.o.dora,
                "DoRA adapters: a trainable magnitude per output feature rescales W0 + s*B*A (PEFT's use_dora; not the paper's recipe)");
  auto* weights = cmd->add_option("--weights", t.o.weights,
                                  "attention weights to adapt, the paper's notation: any of q, k, v (slices of c_attn) and o (attn.c_proj)")
                      ->capture_default_str();
  cmd->add_option("--targets", t.o.targets, "instead of --weights: adapt whole modules with this name suffix (e.g. c_fc)")
      ->excludes(weights);
  cmd->add_option("--label-smoothing", t.o.label_smoothing)->capture_default_str();
  add_enum(cmd, "--optimizer", t.o.optimizer, e2e::update_rule_names(),
           "reference: examples/NLG's AdamW (eps before bias correction, decay after the update); torch: LibTorch's AdamW");
  cmd->add_flag("--model-dropout", t.o.model_dropout,
                "apply config.json's embd/attn/resid dropout (off: the reference model has none; LoRA dropout is --lora-dropout)");
  cmd->add_option("--clip", t.o.clip, "gradient-norm clipping (0: off, as in the paper)")->capture_default_str();
  cmd->add_option("--seed", t.o.seed)->capture_default_str();
  cmd->add_option("--max-len", t.max_len)->capture_default_str();
  cmd->add_option("--pad-to", t.o.pad_to, "pad every batch to this length (0: to the batch's longest)")->capture_default_str();
  cmd->add_flag("--group-by-length", t.o.group_by_length,
                "batches of examples of similar lengths (HF's group_by_length): less padding, not the reference's order");
  cmd->add_option("--valid-limit", t.valid_limit, "validation examples (0: all)")->capture_default_str();
  cmd->add_option("--log-every", t.log_every)->capture_default_str();
  cmd->add_option("--threads", t.threads)->capture_default_str();
  cmd->add_option("--device", t.o.device, "cpu, cuda or cuda:N")->capture_default_str();
  add_enum(cmd, "--dtype", t.o.dtype, e2e::precision_names(), "fp32, or bf16 (bf16 autocast, CUDA only)");
  cmd->add_option("--resume", t.resume, "continue from a trainer_state.pt (or a folder holding one: checkpoint, epoch_N)");
  cmd->add_option("--dist-timeout", t.dist_timeout,
                  "data parallel (torchrun): seconds a rank waits for the others before it exits with an error")
      ->capture_default_str();
  cmd->add_option("--save-every", t.save_every,
                  "also save adapter + trainer state to OUT/checkpoint every N steps, at optimizer steps (0: off)")
      ->capture_default_str();
  return cmd;
}

CLI::App* add_generate(CLI::App& app, GenerateArgs& g) {
  auto* cmd = app.add_subcommand("generate", "one prediction per distinct MR, with the paper's beam search");
  cmd->add_option("--model", g.model, kModelHelp)->required();
  cmd->add_option("--adapter", g.adapters,
                  "PEFT adapter folder, or NAME=DIR; repeat it to load several adapters on one base model");
  cmd->add_option("--route", g.routes,
                  "NAME=TEXT: MRs containing TEXT use adapter NAME (first match; others use the first adapter); repeatable");
  cmd->add_option("--data", g.data, "mr||ref file")->required();
  cmd->add_option("--out", g.out)->required();
  cmd->add_option("--limit", g.limit, "first N distinct MRs (0: all)");
  cmd->add_option("--beam", g.beams)->capture_default_str();
  cmd->add_option("--max-new-tokens", g.max_new_tokens)->capture_default_str();
  cmd->add_option("--device", g.device, "cpu, cuda or cuda:N")->capture_default_str();
  return cmd;
}

CLI::App* add_eval(CLI::App& app, EvalArgs& e) {
  auto* cmd = app.add_subcommand("eval", "mean per-token cross-entropy over completion tokens");
  cmd->add_option("--model", e.model, kModelHelp)->required();
  cmd->add_option("--adapter", e.adapter, "PEFT adapter folder");
  cmd->add_option("--data", e.data, "mr||ref file")->required();
  cmd->add_option("--limit", e.limit, "first N lines (0: all)");
  cmd->add_option("--device", e.device, "cpu, cuda or cuda:N")->capture_default_str();
  return cmd;
}

CLI::App* add_export(CLI::App& app, ExportArgs& x) {
  auto* cmd = app.add_subcommand("export", "merge an adapter and write a plain HF GPT-2 folder");
  cmd->add_option("--model", x.model, kModelHelp)->required();
  cmd->add_option("--adapter", x.adapter, "PEFT adapter folder")->required();
  cmd->add_option("--out", x.out)->required();
  return cmd;
}

CLI::App* add_score(CLI::App& app, ScoreArgs& s) {
  auto* cmd = app.add_subcommand("score", "BLEU, NIST, ROUGE-L and CIDEr as the official E2E scorer computes them");
  cmd->add_option("--hyp", s.hyp, "one hypothesis per line")->required();
  cmd->add_option("--refs", s.refs, "references, one per line, MRs separated by a blank line")->required();
  cmd->add_flag("--json", s.json, "print the scores as JSON");
  return cmd;
}

CLI::App* add_init(CLI::App& app, InitArgs& i) {
  auto* cmd = app.add_subcommand("init", "write a small randomly initialised GPT-2 in HF layout");
  cmd->add_option("--out", i.out)->required();
  cmd->add_option("--layers", i.layers)->capture_default_str();
  cmd->add_option("--embd", i.embd)->capture_default_str();
  cmd->add_option("--heads", i.heads)->capture_default_str();
  cmd->add_option("--positions", i.positions)->capture_default_str();
  cmd->add_option("--seed", i.seed)->capture_default_str();
  cmd->add_option("--vocab", i.vocab, "folder with GPT-2's vocab.json and merges.txt, copied into --out");
  return cmd;
}

CLI::App* add_run(CLI::App& app, RunArgs& r) {
  auto* cmd = app.add_subcommand("run", "train -> generate -> score -> report.md (smoke mode without --model)");
  cmd->add_option("--model", r.model, "real GPT-2 folder or hub id; without it: smoke mode on a small random GPT-2");
  cmd->add_option("--data", r.data, "E2E folder (default: $LORA_E2E_DIR, ../shared/data/e2e, data/e2e)");
  cmd->add_option("--vocab", r.vocab, "GPT-2 tokenizer folder for smoke mode (default: $LORA_GPT2_DIR, ../shared/data/gpt2, data/gpt2)");
  cmd->add_option("--out", r.out)->capture_default_str();
  cmd->add_option("--max-steps", r.max_steps, "training steps (default: 1000 in smoke mode, all 5 epochs otherwise)");
  cmd->add_option("--gen-limit", r.gen_limit, "test MRs to generate for (default: 30 in smoke mode, all 630 otherwise)");
  cmd->add_option("--valid-limit", r.valid_limit, "validation examples (default: 200 in smoke mode, all otherwise)");
  cmd->add_option("--beam", r.beams)->capture_default_str();
  cmd->add_option("--epochs", r.epochs)->capture_default_str();
  cmd->add_option("--batch-size", r.batch_size)->capture_default_str();
  cmd->add_option("--seed", r.seed)->capture_default_str();
  cmd->add_option("--threads", r.threads)->capture_default_str();
  cmd->add_option("--device", r.device, "cpu, cuda or cuda:N")->capture_default_str();
  add_enum(cmd, "--dtype", r.dtype, e2e::precision_names(), "fp32, or bf16 (bf16 autocast, CUDA only)");
  return cmd;
}

CLI::App* add_analyze(CLI::App& app, AnalyzeArgs& a) {
  auto* cmd = app.add_subcommand("analyze", "the paper's section 7 on one or two adapters: Table 7, spectra, subspace similarity (Figures 3, 4)");
  cmd->add_option("--model", a.model, kModelHelp)->required();
  cmd->add_option("--adapter", a.adapters, "PEFT adapter folder, or NAME=DIR; twice to compare two (e.g. r = 8 and r = 64, or two seeds)")
      ->required();
  cmd->add_option("--out", a.out, "folder for analysis.md and its figures")->required();
  cmd->add_option("--max-i", a.max_i, "heat-map rows: the first adapter's top-i directions")->capture_default_str();
  cmd->add_option("--max-j", a.max_j, "heat-map columns: the second adapter's top-j directions")->capture_default_str();
  cmd->add_option("--seed", a.seed, "seed of the random matrices (Table 7's random row, the random heat map)")->capture_default_str();
  return cmd;
}

CLI::App* add_sweep(CLI::App& app, SweepArgs& s) {
  auto* cmd = app.add_subcommand("sweep", "the paper's Tables 5 and 6 (which weights, which rank), then Figures 3, 4 and Table 7: sweep.md");
  cmd->add_option("--model", s.model, "real GPT-2 folder or hub id; without it: smoke mode on a small random GPT-2");
  cmd->add_option("--data", s.data, "E2E folder (default: $LORA_E2E_DIR, ../shared/data/e2e, data/e2e)");
  cmd->add_option("--vocab", s.vocab, "GPT-2 tokenizer folder for smoke mode (default: $LORA_GPT2_DIR, ../shared/data/gpt2, data/gpt2)");
  cmd->add_option("--out", s.out)->capture_default_str();
  cmd->add_option("--ranks", s.ranks, "Table 6's ranks")->delimiter(',')->capture_default_str();
  cmd->add_option("--budget-rank", s.budget_rank, "Table 5's budget: this rank on one weight type, half on two, a quarter on four")
      ->capture_default_str();
  cmd->add_option("--compare", s.compare, "Figure 3's two ranks (of --ranks); Figure 4 retrains the larger at seed + 1")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--max-steps", s.max_steps, "training steps per cell (default: 60 in smoke mode, all epochs otherwise)");
  cmd->add_option("--valid-limit", s.valid_limit, "validation examples scored (default: 100 in smoke mode, all otherwise)");
  cmd->add_option("--epochs", s.epochs)->capture_default_str();
  cmd->add_option("--batch-size", s.batch_size)->capture_default_str();
  cmd->add_option("--seed", s.seed)->capture_default_str();
  cmd->add_option("--threads", s.threads)->capture_default_str();
  cmd->add_option("--device", s.device, "cpu, cuda or cuda:N")->capture_default_str();
  return cmd;
}

}  // namespace

int main(int argc, char** argv) {
  // Training allocates and frees logits of ~100 MB every step; without this glibc returns them to
  // the kernel each time and the page faults cost more than the arithmetic.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  CLI::App app{"gpt2-e2e: LoRA fine-tuning of GPT-2 on E2E NLG, the paper's recipe"};
  app.require_subcommand(1);
  TrainArgs train_args;
  GenerateArgs gen_args;
  EvalArgs eval_args;
  ExportArgs export_args;
  ScoreArgs score_args;
  InitArgs init_args;
  RunArgs run_args;
  auto* train_cmd = add_train(app, train_args);
  auto* gen_cmd = add_generate(app, gen_args);
  auto* eval_cmd = add_eval(app, eval_args);
  auto* export_cmd = add_export(app, export_args);
  auto* score_cmd = add_score(app, score_args);
  auto* init_cmd = add_init(app, init_args);
  auto* run_cmd = add_run(app, run_args);
  AnalyzeArgs analyze_args;
  SweepArgs sweep_args;
  auto* analyze_cmd = add_analyze(app, analyze_args);
  auto* sweep_cmd = add_sweep(app, sweep_args);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {  // one line, like every other error
    std::cerr << "gpt2-e2e: error: " << e.what() << " (see --help)\n";
    return e.get_exit_code();
  }
  try {
    if (*run_cmd) run(run_args);
    if (*sweep_cmd) sweep(sweep_args);
    if (*analyze_cmd) {
      analyze(analyze_args);
      std::cout << "wrote " << analyze_args.out << "/analysis.md\n";
    }
    if (*train_cmd) train(train_args);
    if (*gen_cmd) generate(gen_args);
    if (*score_cmd) std::cout << score(score_args);
    if (*eval_cmd) {
      const double loss = eval(eval_args);
      std::cout << "mean_loss " << std::setprecision(12) << loss << "\n";
    }
    if (*export_cmd) {
      export_merged(export_args);
      std::cout << "wrote " << export_args.out << "\n";
    }
    if (*init_cmd) {
      init(init_args);
      std::cout << "wrote a random GPT-2 (" << init_args.layers << " layers, " << init_args.embd << " wide) to " << init_args.out << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "gpt2-e2e: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
