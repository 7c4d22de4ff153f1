// gpt2-e2e: the paper's GPT-2 recipe on the E2E NLG data (train, generate, eval, export, init).
#include <CLI/CLI.hpp>

#include "data.hpp"
#include "generate.hpp"
#include "model.hpp"
#include "scorer.hpp"
#include "tokenizer.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <numeric>
#include <random>

namespace fs = std::filesystem;

namespace {

struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

gpt2::Tokenizer tokenizer_of(const std::string& model_dir) {
  if (!fs::exists(model_dir + "/vocab.json") || !fs::exists(model_dir + "/merges.txt"))
    throw Fail("model directory '" + model_dir + "' has no tokenizer files (vocab.json, merges.txt): copy GPT-2's there");
  return gpt2::Tokenizer::from_dir(model_dir);
}

void copy_tokenizer(const std::string& from, const std::string& to) {
  for (const char* f : {"vocab.json", "merges.txt"})
    fs::copy_file(from + "/" + f, to + "/" + f, fs::copy_options::overwrite_existing);
}

torch::Device device_of(const std::string& name) {
  if (name == "cuda" && !torch::cuda::is_available()) throw Fail("--device cuda: no CUDA device is available");
  return name == "cuda" ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
}

std::shared_ptr<gpt2::GPT2LMHeadModelImpl> load_model(const std::string& dir, const std::string& adapter, torch::Device device) {
  auto model = gpt2::GPT2LMHeadModelImpl::from_pretrained(dir);
  if (!adapter.empty()) lora::load_adapter(*model, adapter);
  model->to(device);
  return model;
}

/// Mean per-token cross-entropy over all completion tokens (no label smoothing).
double mean_loss(gpt2::GPT2LMHeadModelImpl& model, const std::vector<e2e::Example>& examples, int64_t batch_size,
                 torch::Device device) {
  torch::NoGradGuard no_grad;
  model.eval();
  double total = 0, count = 0;
  for (size_t at = 0; at < examples.size(); at += static_cast<size_t>(batch_size)) {
    std::vector<size_t> idx;
    for (size_t i = at; i < std::min(examples.size(), at + static_cast<size_t>(batch_size)); ++i) idx.push_back(i);
    auto batch = e2e::make_batch(examples, idx);
    auto [sums, counts] = e2e::masked_loss(model.forward(batch.input.to(device)), batch, 0.0);
    total += sums.sum().to(torch::kDouble).item<double>();
    count += counts.sum().item<double>();
  }
  return total / count;
}

std::vector<e2e::Example> encode_all(const gpt2::Tokenizer& tok, const std::vector<e2e::Pair>& pairs, int64_t max_len, size_t limit = 0) {
  std::vector<e2e::Example> out;
  for (size_t i = 0; i < pairs.size() && (limit == 0 || i < limit); ++i) out.push_back(e2e::encode_example(tok, pairs[i], max_len));
  return out;
}

struct TrainArgs {
  std::string model, data, out, method = "lora", device = "cpu", targets = "c_attn";
  int64_t epochs = 5, max_steps = 0, batch_size = 8, rank = 4, warmup = 500, max_len = 512, seed = 110, grad_accum = 1;
  int64_t pad_to = 0, log_every = 10, valid_limit = 0, threads = 0;
  double lr = 2e-4, weight_decay = 0.01, alpha = 32, lora_dropout = 0.1, label_smoothing = 0.1, clip = 0;
  bool qv_only = true;
};

int train(const TrainArgs& a) {
  if (a.threads > 0) torch::set_num_threads(static_cast<int>(a.threads));
  torch::manual_seed(static_cast<uint64_t>(a.seed));
  const auto device = device_of(a.device);
  auto tok = tokenizer_of(a.model);
  auto train_set = encode_all(tok, e2e::read_pairs(a.data + "/train.txt"), a.max_len);
  auto valid_set = encode_all(tok, e2e::read_pairs(a.data + "/valid.txt"), a.max_len, static_cast<size_t>(a.valid_limit));
  auto model = gpt2::GPT2LMHeadModelImpl::from_pretrained(a.model);
  std::vector<torch::Tensor> params;
  if (a.method == "lora") {
    auto cfg = lora::LoRAConfig().r(a.rank).alpha(a.alpha).dropout(a.lora_dropout).target_modules({a.targets});
    if (a.qv_only && a.targets == "c_attn") cfg.enable_lora({{"c_attn", {true, false, true}}});
    std::cout << lora::inject_lora(*model, cfg) << "\n";
    params = lora::lora_parameters(*model);
  } else if (a.method == "full") {
    params = model->parameters();
  } else {
    throw Fail("--method must be lora or full");
  }
  model->to(device);
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(a.lr).weight_decay(a.weight_decay).betas({0.9, 0.999}).eps(1e-6));
  const int64_t per_epoch = (static_cast<int64_t>(train_set.size()) + a.batch_size - 1) / a.batch_size;
  const int64_t total = a.max_steps > 0 ? std::min(a.max_steps, per_epoch * a.epochs) : per_epoch * a.epochs;
  auto lr_at = [&](int64_t step) {  // linear warm-up, then linear decay to 0 (the paper's schedule)
    if (step < a.warmup) return a.lr * double(step + 1) / double(a.warmup);
    return a.lr * std::max(0.0, double(total - step) / double(std::max<int64_t>(1, total - a.warmup)));
  };
  fs::create_directories(a.out);
  std::ofstream log(a.out + "/train_log.csv");
  log << "step,epoch,loss,lr,tokens,seconds\n";
  std::mt19937_64 rng(static_cast<uint64_t>(a.seed));
  const auto start = std::chrono::steady_clock::now();
  int64_t step = 0, tokens = 0;
  auto save = [&](const std::string& dir) {
    if (a.method != "lora") return model->save_pretrained(dir);
    lora::save_adapter(*model, dir, lora::SaveAdapterOptions().base_model_name_or_path(a.model).task_type("CAUSAL_LM").fan_in_fan_out(true));
  };
  for (int64_t epoch = 1; epoch <= a.epochs && step < total; ++epoch) {
    std::vector<size_t> order(train_set.size());
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    model->train();
    for (int64_t b = 0; b < per_epoch && step < total; ++b) {
      const size_t begin = static_cast<size_t>(b * a.batch_size);
      std::vector<size_t> idx(order.begin() + static_cast<long>(begin),
                              order.begin() + static_cast<long>(std::min(order.size(), begin + static_cast<size_t>(a.batch_size))));
      auto batch = e2e::make_batch(train_set, idx, a.pad_to);
      auto [sums, counts] = e2e::masked_loss(model->forward(batch.input.to(device)), batch, a.label_smoothing);
      auto loss = sums.sum() / (counts.sum() + 1e-4);
      (loss / static_cast<double>(a.grad_accum)).backward();
      tokens += static_cast<int64_t>(batch.mask.sum().item<float>());
      if ((b + 1) % a.grad_accum == 0 || b + 1 == per_epoch) {
        for (auto& group : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr_at(step));
        if (a.clip > 0) torch::nn::utils::clip_grad_norm_(params, a.clip);
        opt.step();
        opt.zero_grad();
      }
      ++step;
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      log << step << "," << epoch << "," << loss.item<double>() << "," << lr_at(step - 1) << "," << tokens << "," << secs << "\n";
      if (step % a.log_every == 0 || step == total)
        std::cerr << "\rstep " << step << "/" << total << " | loss " << std::fixed << std::setprecision(4) << loss.item<double>()
                  << " | lr " << std::scientific << std::setprecision(2) << lr_at(step - 1) << std::fixed << " | "
                  << std::setprecision(0) << tokens / std::max(secs, 1e-9) << " tok/s | ETA "
                  << (total - step) * secs / double(step) << " s   " << std::flush;
    }
    std::cerr << "\n";
    std::cout << "epoch " << epoch << " valid_loss " << std::setprecision(6) << mean_loss(*model, valid_set, a.batch_size, device) << "\n";
    save(a.out + "/epoch_" + std::to_string(epoch));
  }
  save(a.out + "/adapter");
  std::cout << "saved " << a.out << "/adapter\n";
  return 0;
}

int generate(const std::string& model_dir, const std::string& adapter, const std::string& data, const std::string& out,
             int64_t limit, int64_t beams, int64_t max_new, const std::string& device_name) {
  const auto device = device_of(device_name);
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
    prompt.push_back(50256);
    std::string text = gpt2::clean_text(tok.decode(gpt2::generate(*model, {prompt}, options)[0]));
    std::replace(text.begin(), text.end(), '\n', ' ');
    hyp << text << "\n";
    for (const auto& r : groups[i].refs) refs << r << "\n";
    refs << "\n";
    std::cerr << "\rgenerated " << i + 1 << "/" << groups.size() << std::flush;
  }
  std::cerr << "\n";
  std::cout << "wrote " << out << "/hypothesis.txt and " << out << "/references.txt (" << groups.size() << " MRs)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gpt2-e2e: LoRA fine-tuning of GPT-2 on E2E NLG, the paper's recipe"};
  app.require_subcommand(1);

  TrainArgs t;
  auto* train_cmd = app.add_subcommand("train", "LoRA (or full) fine-tuning with the paper's recipe as defaults");
  train_cmd->add_option("--model", t.model, "HF GPT-2 folder (config.json, model.safetensors, vocab.json, merges.txt)")->required();
  train_cmd->add_option("--data", t.data, "folder with train.txt and valid.txt (mr||ref lines)")->required();
  train_cmd->add_option("--out", t.out, "output folder")->required();
  train_cmd->add_option("--method", t.method, "lora or full")->capture_default_str();
  train_cmd->add_option("--epochs", t.epochs)->capture_default_str();
  train_cmd->add_option("--max-steps", t.max_steps, "stop after this many batches (0: all epochs)")->capture_default_str();
  train_cmd->add_option("--batch-size", t.batch_size)->capture_default_str();
  train_cmd->add_option("--grad-accum", t.grad_accum)->capture_default_str();
  train_cmd->add_option("--lr", t.lr)->capture_default_str();
  train_cmd->add_option("--weight-decay", t.weight_decay)->capture_default_str();
  train_cmd->add_option("--warmup", t.warmup, "linear warm-up steps")->capture_default_str();
  train_cmd->add_option("--rank", t.rank)->capture_default_str();
  train_cmd->add_option("--alpha", t.alpha)->capture_default_str();
  train_cmd->add_option("--lora-dropout", t.lora_dropout)->capture_default_str();
  train_cmd->add_option("--targets", t.targets, "module name suffix to adapt")->capture_default_str();
  train_cmd->add_option("--label-smoothing", t.label_smoothing)->capture_default_str();
  train_cmd->add_option("--clip", t.clip, "gradient-norm clipping (0: off, as in the paper)")->capture_default_str();
  train_cmd->add_option("--seed", t.seed)->capture_default_str();
  train_cmd->add_option("--max-len", t.max_len)->capture_default_str();
  train_cmd->add_option("--pad-to", t.pad_to, "pad every batch to this length (0: to the batch's longest)")->capture_default_str();
  train_cmd->add_option("--valid-limit", t.valid_limit, "validation examples (0: all)")->capture_default_str();
  train_cmd->add_option("--log-every", t.log_every)->capture_default_str();
  train_cmd->add_option("--threads", t.threads)->capture_default_str();
  train_cmd->add_option("--device", t.device, "cpu or cuda")->capture_default_str();

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

  CLI11_PARSE(app, argc, argv);
  try {
    if (*train_cmd) return train(t);
    if (*gen_cmd) return generate(model, adapter, data, out, limit, beams, max_new, device);
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
      auto m = load_model(model, adapter, device_of(device));
      std::cout << "mean_loss " << std::setprecision(12) << mean_loss(*m, examples, 8, device_of(device)) << "\n";
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
