// gpt2-e2e: the paper's GPT-2 recipe on the E2E NLG data (train, generate, eval, export, init).
#include <CLI/CLI.hpp>

#include "data.hpp"
#include "generate.hpp"
#include "hub.hpp"
#include "report.hpp"
#include "model.hpp"
#include "scorer.hpp"
#include "tokenizer.hpp"
#include "trainer.hpp"

#include <algorithm>
#include <chrono>
#include <sstream>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <numeric>
#include <random>

#include <malloc.h>
#include <sys/resource.h>

namespace fs = std::filesystem;

namespace {

struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// --model values: a folder, or a hub model id found in the local HuggingFace cache (gpt2/hub.hpp).
std::string model_folder(const std::string& name_or_path) {
  if (fs::is_directory(name_or_path)) return name_or_path;
  try {
    return gpt2::resolve_pretrained(name_or_path);
  } catch (const std::runtime_error& e) {
    throw Fail(e.what());
  }
}

gpt2::Tokenizer tokenizer_of(const std::string& model) {
  const std::string model_dir = model_folder(model);
  if (!fs::exists(model_dir + "/vocab.json") || !fs::exists(model_dir + "/merges.txt"))
    throw Fail("model directory '" + model_dir + "' has no tokenizer files (vocab.json, merges.txt): copy GPT-2's there");
  return gpt2::Tokenizer::from_dir(model_dir);
}

void copy_tokenizer(const std::string& from, const std::string& to) {
  for (const char* f : {"vocab.json", "merges.txt"})
    fs::copy_file(from + "/" + f, to + "/" + f, fs::copy_options::overwrite_existing);
}

std::shared_ptr<gpt2::GPT2LMHeadModelImpl> load_model(const std::string& dir, const std::string& adapter, torch::Device device) {
  auto model = gpt2::GPT2LMHeadModelImpl::from_pretrained(model_folder(dir));
  if (!adapter.empty()) lora::load_adapter(*model, adapter);
  model->to(device);
  return model;
}

std::vector<e2e::Example> encode_all(const gpt2::Tokenizer& tok, const std::vector<e2e::Pair>& pairs, int64_t max_len, size_t limit = 0) {
  std::vector<e2e::Example> out;
  for (size_t i = 0; i < pairs.size() && (limit == 0 || i < limit); ++i) out.push_back(e2e::encode_example(tok, pairs[i], max_len));
  return out;
}

struct TrainArgs {
  std::string model, data, out, resume;
  int64_t max_len = 512, log_every = 10, valid_limit = 0, threads = 0, save_every = 0;
  e2e::TrainOptions o;
};

struct TrainResult {
  int64_t trainable = 0, total = 0, steps = 0, tokens = 0, total_steps = 0;
  double seconds = 0;
  std::vector<double> losses, valid;
};

TrainResult train(const TrainArgs& a) {
  TrainResult result;
  if (a.threads > 0) torch::set_num_threads(static_cast<int>(a.threads));
  torch::manual_seed(static_cast<uint64_t>(a.o.seed));
  auto tok = tokenizer_of(a.model);
  auto train_set = encode_all(tok, e2e::read_pairs(a.data + "/train.txt"), a.max_len);
  auto valid_set = encode_all(tok, e2e::read_pairs(a.data + "/valid.txt"), a.max_len, static_cast<size_t>(a.valid_limit));
  if (valid_set.empty())  // found now, not after the first epoch's training
    throw std::runtime_error("'" + a.data + "/valid.txt' has no examples: the validation loss after each epoch needs at least one");
  e2e::Trainer trainer(gpt2::GPT2LMHeadModelImpl::from_pretrained(model_folder(a.model)), a.o, train_set.size());
  auto model = trainer.model();
  result.total = trainer.parameter_count();
  result.total_steps = trainer.total_steps();
  result.trainable = trainer.trainable_count();
  std::cout << "trainable params: " << lora::with_commas(result.trainable)
            << " || all params: " << lora::with_commas(result.total) << "\n";
  fs::create_directories(a.out);
  if (!a.resume.empty()) {
    trainer.load_state(a.resume);
    std::cout << "resumed from " << a.resume << " at step " << trainer.position().step << " (epoch "
              << trainer.position().epoch << ", batch " << trainer.position().batch << ")\n";
  }
  // A resumed run appends to the log of the run it continues.
  const bool append = !a.resume.empty() && fs::exists(a.out + "/train_log.csv");
  std::ofstream log(a.out + "/train_log.csv", append ? std::ios::app : std::ios::trunc);
  if (!append) log << "step,epoch,loss,lr,tokens,seconds\n";
  auto save = [&](const std::string& dir) {
    if (a.o.method == "lora")
      lora::save_adapter(*model, dir,
                         lora::SaveAdapterOptions().base_model_name_or_path(a.model).task_type("CAUSAL_LM").fan_in_fan_out(true));
    else
      model->save_pretrained(dir);
    trainer.save_state(dir + "/trainer_state.pt");
  };
  const auto start = std::chrono::steady_clock::now();
  const int64_t first_step = trainer.position().step, first_tokens = trainer.position().tokens;
  const int64_t total = trainer.total_steps();
  while (!trainer.done()) {
    const int64_t epoch = trainer.position().epoch;
    const double lr = trainer.lr_at(trainer.position().step);
    const double loss = trainer.step(e2e::make_batch(train_set, trainer.next_indices(), a.o.pad_to));
    const auto& pos = trainer.position();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double tok_s = double(pos.tokens - first_tokens) / std::max(secs, 1e-9);
    result.losses.push_back(loss);
    log << pos.step << "," << epoch << "," << loss << "," << lr << "," << pos.tokens << "," << secs << "\n";
    if (pos.step % a.log_every == 0 || pos.step == total)
      std::cerr << "\rstep " << pos.step << "/" << total << " | loss " << std::fixed << std::setprecision(4) << loss << " | lr "
                << std::scientific << std::setprecision(2) << lr << std::fixed << " | " << std::setprecision(0) << tok_s
                << " tok/s | ETA " << double(total - pos.step) * secs / double(pos.step - first_step) << " s   " << std::flush;
    if (a.save_every > 0 && pos.step % a.save_every == 0 && !trainer.accumulating()) save(a.out + "/checkpoint");
    if (pos.batch == 0 || trainer.done()) {  // an epoch ended (or the step budget did)
      std::cerr << "\n";
      result.valid.push_back(e2e::mean_loss(*model, valid_set, a.o.batch_size));
      std::cout << "epoch " << epoch << " valid_loss " << std::setprecision(6) << result.valid.back() << "\n";
      save(a.out + "/epoch_" + std::to_string(epoch));
    }
  }
  // The final result: a PEFT adapter folder (lora), or a whole HF model folder (full fine-tuning).
  const std::string final_dir = a.out + (a.o.method == "lora" ? "/adapter" : "/model");
  save(final_dir);
  std::cout << "saved " << final_dir << "\n";
  result.steps = trainer.position().step - first_step;
  result.tokens = trainer.position().tokens - first_tokens;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

struct GenResult {
  std::vector<std::string> hyps;
  std::vector<std::vector<std::string>> refs;
  double seconds = 0;
  int64_t tokens = 0;
};

GenResult generate(const std::string& model_dir, const std::string& adapter, const std::string& data, const std::string& out,
                   int64_t limit, int64_t beams, int64_t max_new, const std::string& device_name) {
  GenResult result;
  const auto start = std::chrono::steady_clock::now();
  const auto device = e2e::device_named(device_name);
  auto tok = tokenizer_of(model_dir);
  auto groups = e2e::group_by_mr(e2e::read_pairs(data));
  if (limit > 0 && static_cast<size_t>(limit) < groups.size()) groups.resize(static_cast<size_t>(limit));
  auto model = load_model(model_dir, adapter, device);
  auto options = gpt2::paper_decoding();
  options.num_beams = beams;
  options.max_new_tokens = max_new;
  fs::create_directories(out);
  std::ofstream hyp(out + "/hypothesis.txt"), refs(out + "/references.txt");
  for (size_t i = 0; i < groups.size(); ++i) {
    auto prompt = tok.encode(groups[i].mr);
    prompt.push_back(tok.eos_id());
    const auto ids = gpt2::generate(*model, {prompt}, options)[0];
    result.tokens += static_cast<int64_t>(ids.size());
    std::string text = gpt2::clean_text(tok.decode(ids));
    std::replace(text.begin(), text.end(), '\n', ' ');
    hyp << text << "\n";
    result.hyps.push_back(text);
    result.refs.push_back(groups[i].refs);
    for (const auto& r : groups[i].refs) refs << r << "\n";
    refs << "\n";
    std::cerr << "\rgenerated " << i + 1 << "/" << groups.size() << std::flush;
  }
  std::cerr << "\n";
  std::cout << "wrote " << out << "/hypothesis.txt and " << out << "/references.txt (" << groups.size() << " MRs)\n";
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}


/// The first folder that holds `file`: the flag, then $env, then ../shared/data/<sub> beside the
/// source checkout or the working directory, then data/<sub> (where scripts/get-data.sh puts it).
std::string find_data(const std::string& flag, const char* env, const std::string& sub, const std::string& file) {
  std::vector<std::string> candidates;
  if (!flag.empty()) {
    if (!fs::exists(flag + "/" + file)) throw Fail("'" + flag + "/" + file + "' not found");
    return flag;
  }
  if (const char* v = std::getenv(env)) candidates.push_back(v);
  candidates.push_back(std::string(LORA_SOURCE_DIR) + "/../shared/data/" + sub);
  candidates.push_back("../shared/data/" + sub);
  candidates.push_back(std::string(LORA_SOURCE_DIR) + "/data/" + sub);
  candidates.push_back("data/" + sub);
  for (const auto& c : candidates)
    if (fs::exists(c + "/" + file)) return c;
  throw Fail(std::string("no ") + file + " found (looked in $" + env + ", ../shared/data/" + sub + ", data/" + sub +
             "): run scripts/get-data.sh to download it, or pass its folder");
}

long peak_rss_mb() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024;
}

struct RunArgs {
  std::string model, data, vocab, out = "runs/e2e", device = "cpu", dtype = "fp32";
  int64_t max_steps = -1, gen_limit = -1, valid_limit = -1, beams = 10, threads = 0, epochs = 5, batch_size = 8, seed = 110;
};

int run(const RunArgs& r) {
  const bool smoke = r.model.empty();
  const auto t0 = std::chrono::steady_clock::now();
  const std::string data = find_data(r.data, "LORA_E2E_DIR", "e2e", "train.txt");
  fs::create_directories(r.out);
  std::string model = r.model;
  if (smoke) {
    std::cout << "SMOKE MODE: no --model given, so a small randomly initialised GPT-2 is trained for a short budget and "
                 "scored on a few test MRs. The numbers mean nothing; pass --model with a real GPT-2 folder for the "
                 "paper's recipe.\n";
    const std::string vocab = find_data(r.vocab, "LORA_GPT2_DIR", "gpt2", "vocab.json");
    model = r.out + "/random-gpt2";
    torch::manual_seed(static_cast<uint64_t>(r.seed));
    gpt2::Config c;
    c.n_layer = 2;
    c.n_embd = 128;
    c.n_head = 2;
    gpt2::GPT2LMHeadModelImpl(c).save_pretrained(model);
    copy_tokenizer(vocab, model);
  }
  TrainArgs t;
  t.model = model;
  t.data = data;
  t.out = r.out + "/train";
  t.o.device = r.device;
  t.o.dtype = r.dtype;
  t.threads = r.threads;
  t.o.epochs = r.epochs;
  t.o.batch_size = r.batch_size;
  t.o.seed = r.seed;
  t.o.max_steps = r.max_steps >= 0 ? r.max_steps : (smoke ? 1000 : 0);
  t.valid_limit = r.valid_limit >= 0 ? r.valid_limit : (smoke ? 200 : 0);
  if (smoke) t.o.warmup = 30;
  const auto tr = train(t);
  const int64_t limit = r.gen_limit >= 0 ? r.gen_limit : (smoke ? 30 : 0);
  const auto gen = generate(model, t.out + "/adapter", data + "/test.txt", r.out + "/generate", limit, r.beams, 64, r.device);
  std::string decoding;
  {
    auto d = gpt2::paper_decoding();
    std::ostringstream text;
    text << "beam " << r.beams << ", length penalty " << d.length_penalty << ", no-repeat " << d.no_repeat_ngram_size
         << "-grams, 64 new tokens, EOS";
    for (int64_t id : d.eos_token_ids) text << " " << id;
    decoding = text.str();
  }
  const auto scores = e2e::score(gen.hyps, gen.refs);
  e2e::write_loss_svg(r.out + "/loss.svg", tr.losses);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  e2e::RunReport rep;
  rep.smoke = smoke;
  rep.model = model;
  rep.data = data;
  rep.options = t.o;
  rep.decoding = decoding;
  rep.trainable = tr.trainable;
  rep.total = tr.total;
  rep.steps = tr.steps;
  rep.total_steps = tr.total_steps;
  rep.tokens = tr.tokens;
  rep.train_seconds = tr.seconds;
  rep.generate_seconds = gen.seconds;
  rep.total_seconds = total;
  rep.mrs = gen.hyps.size();
  rep.peak_rss_mb = peak_rss_mb();
  rep.valid = tr.valid;
  rep.scores = scores;
  e2e::write_report(r.out + "/report.md", rep);
  std::cout << std::setprecision(4) << "BLEU " << scores.bleu << "  NIST " << scores.nist << "  ROUGE_L " << scores.rouge_l
            << "  CIDEr " << scores.cider << "\nwrote " << r.out << "/report.md and " << r.out << "/loss.svg ("
            << std::lround(total) << " s)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Training allocates and frees logits of ~100 MB every step; without this glibc returns them to
  // the kernel each time and the page faults cost more than the arithmetic.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  CLI::App app{"gpt2-e2e: LoRA fine-tuning of GPT-2 on E2E NLG, the paper's recipe"};
  app.require_subcommand(1);

  TrainArgs t;
  auto* train_cmd = app.add_subcommand("train", "LoRA (or full) fine-tuning with the paper's recipe as defaults");
  train_cmd->add_option("--model", t.model,
                        "HF GPT-2 folder (config.json, model.safetensors, vocab.json, merges.txt), or a hub id such as "
                        "gpt2-medium found in the local HuggingFace cache")
      ->required();
  train_cmd->add_option("--data", t.data, "folder with train.txt and valid.txt (mr||ref lines)")->required();
  train_cmd->add_option("--out", t.out, "output folder")->required();
  train_cmd->add_option("--method", t.o.method, "lora or full")->capture_default_str();
  train_cmd->add_option("--epochs", t.o.epochs)->capture_default_str();
  train_cmd->add_option("--max-steps", t.o.max_steps, "stop after this many batches (0: all epochs)")->capture_default_str();
  train_cmd->add_option("--batch-size", t.o.batch_size)->capture_default_str();
  train_cmd->add_option("--grad-accum", t.o.grad_accum)->capture_default_str();
  train_cmd->add_option("--lr", t.o.lr)->capture_default_str();
  train_cmd->add_option("--weight-decay", t.o.weight_decay)->capture_default_str();
  train_cmd->add_option("--warmup", t.o.warmup, "linear warm-up steps")->capture_default_str();
  train_cmd->add_option("--rank", t.o.rank)->capture_default_str();
  train_cmd->add_option("--alpha", t.o.alpha)->capture_default_str();
  train_cmd->add_option("--lora-dropout", t.o.lora_dropout)->capture_default_str();
  train_cmd->add_option("--targets", t.o.targets, "module name suffix to adapt")->capture_default_str();
  train_cmd->add_option("--label-smoothing", t.o.label_smoothing)->capture_default_str();
  train_cmd->add_option("--optimizer", t.o.optimizer,
                        "reference: examples/NLG's AdamW (eps before bias correction, decay after the update); torch: LibTorch's AdamW")
      ->check(CLI::IsMember({"reference", "torch"}))
      ->capture_default_str();
  train_cmd->add_flag("--model-dropout", t.o.model_dropout,
                      "apply config.json's embd/attn/resid dropout (off: the reference model has none; LoRA dropout is --lora-dropout)");
  train_cmd->add_option("--clip", t.o.clip, "gradient-norm clipping (0: off, as in the paper)")->capture_default_str();
  train_cmd->add_option("--seed", t.o.seed)->capture_default_str();
  train_cmd->add_option("--max-len", t.max_len)->capture_default_str();
  train_cmd->add_option("--pad-to", t.o.pad_to, "pad every batch to this length (0: to the batch's longest)")->capture_default_str();
  train_cmd->add_option("--valid-limit", t.valid_limit, "validation examples (0: all)")->capture_default_str();
  train_cmd->add_option("--log-every", t.log_every)->capture_default_str();
  train_cmd->add_option("--threads", t.threads)->capture_default_str();
  train_cmd->add_option("--device", t.o.device, "cpu or cuda")->capture_default_str();
  train_cmd->add_option("--dtype", t.o.dtype, "fp32, or bf16 (bf16 autocast, CUDA only)")->capture_default_str();
  train_cmd->add_option("--resume", t.resume, "continue from a trainer_state.pt (or a folder holding one: checkpoint, epoch_N)");
  train_cmd->add_option("--save-every", t.save_every, "also save adapter + trainer state to OUT/checkpoint every N steps, at optimizer steps (0: off)")
      ->capture_default_str();

  std::string model, adapter, data, out, device = "cpu";
  int64_t limit = 0, beams = 10, max_new = 64;
  auto* gen_cmd = app.add_subcommand("generate", "one prediction per distinct MR, with the paper's beam search");
  gen_cmd->add_option("--model", model)->required();
  gen_cmd->add_option("--adapter", adapter, "PEFT adapter folder");
  gen_cmd->add_option("--data", data, "mr||ref file")->required();
  gen_cmd->add_option("--out", out)->required();
  gen_cmd->add_option("--limit", limit, "first N distinct MRs (0: all)");
  gen_cmd->add_option("--beam", beams)->capture_default_str();
  gen_cmd->add_option("--max-new-tokens", max_new)->capture_default_str();
  gen_cmd->add_option("--device", device)->capture_default_str();

  auto* eval_cmd = app.add_subcommand("eval", "mean per-token cross-entropy over completion tokens");
  eval_cmd->add_option("--model", model)->required();
  eval_cmd->add_option("--adapter", adapter);
  eval_cmd->add_option("--data", data)->required();
  eval_cmd->add_option("--limit", limit, "first N lines (0: all)");
  eval_cmd->add_option("--device", device)->capture_default_str();

  auto* export_cmd = app.add_subcommand("export", "merge an adapter and write a plain HF GPT-2 folder");
  export_cmd->add_option("--model", model)->required();
  export_cmd->add_option("--adapter", adapter)->required();
  export_cmd->add_option("--out", out)->required();

  std::string hyp_file, ref_file;
  bool as_json = false;
  auto* score_cmd = app.add_subcommand("score", "BLEU, NIST, ROUGE-L and CIDEr as the official E2E scorer computes them");
  score_cmd->add_option("--hyp", hyp_file, "one hypothesis per line")->required();
  score_cmd->add_option("--refs", ref_file, "references, one per line, MRs separated by a blank line")->required();
  score_cmd->add_flag("--json", as_json, "print the scores as JSON");

  int64_t layers = 2, embd = 64, heads = 2, positions = 1024, seed = 0;
  std::string vocab;
  auto* init_cmd = app.add_subcommand("init", "write a small randomly initialised GPT-2 in HF layout");
  init_cmd->add_option("--out", out)->required();
  init_cmd->add_option("--layers", layers)->capture_default_str();
  init_cmd->add_option("--embd", embd)->capture_default_str();
  init_cmd->add_option("--heads", heads)->capture_default_str();
  init_cmd->add_option("--positions", positions)->capture_default_str();
  init_cmd->add_option("--seed", seed)->capture_default_str();
  init_cmd->add_option("--vocab", vocab, "folder with GPT-2's vocab.json and merges.txt, copied into --out");

  RunArgs ra;
  auto* run_cmd = app.add_subcommand("run", "train -> generate -> score -> report.md (smoke mode without --model)");
  run_cmd->add_option("--model", ra.model, "real GPT-2 folder; without it: smoke mode on a small random GPT-2");
  run_cmd->add_option("--data", ra.data, "E2E folder (default: $LORA_E2E_DIR, ../shared/data/e2e, data/e2e)");
  run_cmd->add_option("--vocab", ra.vocab, "GPT-2 tokenizer folder for smoke mode (default: $LORA_GPT2_DIR, ../shared/data/gpt2, data/gpt2)");
  run_cmd->add_option("--out", ra.out)->capture_default_str();
  run_cmd->add_option("--max-steps", ra.max_steps, "training steps (default: 1000 in smoke mode, all 5 epochs otherwise)");
  run_cmd->add_option("--gen-limit", ra.gen_limit, "test MRs to generate for (default: 30 in smoke mode, all 630 otherwise)");
  run_cmd->add_option("--valid-limit", ra.valid_limit, "validation examples (default: 200 in smoke mode, all otherwise)");
  run_cmd->add_option("--beam", ra.beams)->capture_default_str();
  run_cmd->add_option("--epochs", ra.epochs)->capture_default_str();
  run_cmd->add_option("--batch-size", ra.batch_size)->capture_default_str();
  run_cmd->add_option("--seed", ra.seed)->capture_default_str();
  run_cmd->add_option("--threads", ra.threads)->capture_default_str();
  run_cmd->add_option("--device", ra.device)->capture_default_str();
  run_cmd->add_option("--dtype", ra.dtype, "fp32, or bf16 (bf16 autocast, CUDA only)")->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  try {
    if (*run_cmd) return run(ra);
    if (*train_cmd) return train(t), 0;
    if (*gen_cmd) return generate(model, adapter, data, out, limit, beams, max_new, device), 0;
    if (*score_cmd) {
      const auto s = e2e::score(e2e::read_hypotheses(hyp_file), e2e::read_references(ref_file));
      std::cout << std::setprecision(4) << std::fixed;
      if (as_json)
        std::cout << "{\"BLEU\": " << s.bleu << ", \"NIST\": " << s.nist << ", \"METEOR\": null, \"ROUGE_L\": " << s.rouge_l
                  << ", \"CIDEr\": " << s.cider << "}\n";
      else
        std::cout << "BLEU: " << s.bleu << "\nNIST: " << s.nist
                  << "\nMETEOR: not computed (needs the METEOR 1.5 jar and its paraphrase tables)\nROUGE_L: " << s.rouge_l
                  << "\nCIDEr: " << s.cider << "\n";
      return 0;
    }
    if (*eval_cmd) {
      auto tok = tokenizer_of(model);
      auto examples = encode_all(tok, e2e::read_pairs(data), 512, static_cast<size_t>(limit));
      auto m = load_model(model, adapter, e2e::device_named(device));
      std::cout << "mean_loss " << std::setprecision(12) << e2e::mean_loss(*m, examples, 8) << "\n";
      return 0;
    }
    if (*export_cmd) {
      auto m = load_model(model, adapter, torch::kCPU);
      lora::merge_and_unload(*m);
      m->save_pretrained(out);
      if (fs::exists(model + "/vocab.json")) copy_tokenizer(model, out);
      std::cout << "wrote " << out << "\n";
      return 0;
    }
    if (*init_cmd) {
      if (embd % heads != 0) throw Fail("--embd must be divisible by --heads");
      torch::manual_seed(static_cast<uint64_t>(seed));
      gpt2::Config c;
      c.n_layer = layers;
      c.n_embd = embd;
      c.n_head = heads;
      c.n_positions = positions;
      gpt2::GPT2LMHeadModelImpl(c).save_pretrained(out);
      if (!vocab.empty()) copy_tokenizer(vocab, out);
      std::cout << "wrote a random GPT-2 (" << layers << " layers, " << embd << " wide) to " << out << "\n";
      return 0;
    }
  } catch (const std::exception& e) {
    std::cerr << "gpt2-e2e: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
