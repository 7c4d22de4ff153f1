#include "finetune.hpp"

#include "checkpoint.hpp"
#include "loralib_checkpoint.hpp"
#include "plots.hpp"
#include "progress.hpp"

#include <lora/lora.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

namespace glue {

namespace fs = std::filesystem;

std::vector<Encoded> encode_all(const PairTokenizer& tok, const std::vector<Example>& examples, int64_t max_len) {
  std::vector<Encoded> out;
  out.reserve(examples.size());
  for (const auto& e : examples) out.push_back({tok.encode_example(e.text_a, e.text_b, max_len), e.label, e.score});
  return out;
}

Batch make_batch(const std::vector<Encoded>& examples, const std::vector<size_t>& indices, int64_t pad_id, bool regression,
                 int64_t pad_to) {
  Batch b;
  const auto n = static_cast<int64_t>(indices.size());
  int64_t len = pad_to;
  for (size_t i : indices) len = std::max<int64_t>(len, static_cast<int64_t>(examples.at(i).ids.size()));
  b.input_ids = torch::full({n, len}, pad_id, torch::kLong);
  b.attention_mask = torch::zeros({n, len}, torch::kLong);
  b.labels = regression ? torch::zeros({n}, torch::kFloat) : torch::zeros({n}, torch::kLong);
  auto ids = b.input_ids.accessor<int64_t, 2>();
  auto mask = b.attention_mask.accessor<int64_t, 2>();
  for (int64_t r = 0; r < n; ++r) {
    const auto& e = examples[indices[static_cast<size_t>(r)]];
    for (size_t t = 0; t < e.ids.size(); ++t) {
      ids[r][static_cast<int64_t>(t)] = e.ids[t];
      mask[r][static_cast<int64_t>(t)] = 1;
    }
    if (regression) b.labels[r] = e.score;
    else b.labels[r] = e.label;
  }
  return b;
}

training::LossSums sequence_loss(const Model& model, const Batch& batch) {
  const auto device = model.device();
  auto logits = model.forward(batch.input_ids.to(device), batch.attention_mask.to(device)).to(torch::kFloat);
  auto labels = batch.labels.to(device);
  torch::Tensor per_example;
  if (model.num_labels == 1)  // HF: MSELoss on logits.view(-1)
    per_example = (logits.view({-1}) - labels).pow(2);
  else
    per_example = torch::nn::functional::cross_entropy(
        logits, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  return {per_example.sum(), torch::tensor(static_cast<double>(batch.size()), torch::kDouble).to(device)};
}

torch::Tensor predict_logits(const Model& model, const std::vector<Encoded>& examples, int64_t batch_size, int64_t pad_id,
                             int64_t pad_to) {
  torch::NoGradGuard no_grad;
  model->eval();
  const auto device = model.device();
  std::vector<torch::Tensor> parts;
  for (size_t at = 0; at < examples.size(); at += static_cast<size_t>(batch_size)) {
    std::vector<size_t> idx;
    for (size_t i = at; i < std::min(examples.size(), at + static_cast<size_t>(batch_size)); ++i) idx.push_back(i);
    auto b = make_batch(examples, idx, pad_id, model.num_labels == 1, pad_to);
    parts.push_back(model.forward(b.input_ids.to(device), b.attention_mask.to(device)).to(torch::kCPU, torch::kFloat));
  }
  if (parts.empty()) return torch::zeros({0, model.num_labels});
  return torch::cat(parts);
}

std::map<std::string, double> score_logits(const Task& task, const torch::Tensor& logits, const std::vector<Encoded>& examples) {
  if (logits.size(0) != static_cast<int64_t>(examples.size()))
    throw std::invalid_argument("score_logits: " + std::to_string(logits.size(0)) + " rows of logits for " +
                                std::to_string(examples.size()) + " examples");
  if (task.regression()) {
    std::vector<double> pred, gold;
    for (int64_t i = 0; i < logits.size(0); ++i) {
      pred.push_back(logits[i][0].item<double>());
      gold.push_back(examples[static_cast<size_t>(i)].score);
    }
    return compute_metrics(task, {}, {}, pred, gold);
  }
  const auto arg = logits.argmax(1);
  std::vector<int64_t> pred, gold;
  for (int64_t i = 0; i < logits.size(0); ++i) {
    pred.push_back(arg[i].item<int64_t>());
    gold.push_back(examples[static_cast<size_t>(i)].label);
  }
  return compute_metrics(task, pred, gold);
}

bool decays(const std::string& name) {
  return name.find("bias") == std::string::npos && name.find("LayerNorm.") == std::string::npos;
}

namespace {

/// The head's parameters (the modules named in model.head) train in full.
void train_head(const Model& model) {
  for (const auto& name : model.head)
    for (auto& p : model->named_children()[name]->parameters()) p.set_requires_grad(true);
}

}  // namespace

void prepare_for_lora(const Model& model, int64_t rank, double alpha) {
  lora::inject_lora(*model.module, lora::LoRAConfig(model.lora).r(rank).alpha(alpha));
  if (model.lora_A_std > 0) {  // the family's reference redraws A (DeBERTa's _init_weights)
    torch::NoGradGuard no_grad;
    for (const auto& [path, layer] : lora::detail::lora_layers(*model.module))
      if (layer->has_adapter("default")) layer->lora_A("default").normal_(0.0, model.lora_A_std);
  }
  train_head(model);
}

namespace {

std::vector<Example> first_n(std::vector<Example> v, int64_t n) {
  if (n > 0 && static_cast<int64_t>(v.size()) > n) v.resize(static_cast<size_t>(n));
  return v;
}

/// "dev" for dev.tsv, "dev_mismatched" for dev_mismatched.tsv.
std::string stem(const std::string& file) { return file.substr(0, file.find('.')); }

using EvalSets = std::vector<std::pair<std::string, std::vector<Encoded>>>;

/// The task's eval files (the first `max_eval` examples of each), encoded, by stem.
EvalSets eval_sets(const Task& task, const PairTokenizer& tok, const std::string& data, int64_t max_eval, int64_t max_len) {
  EvalSets sets;
  for (const auto& f : task.eval_files)
    sets.emplace_back(stem(f), encode_all(tok, first_n(read_tsv(task, task_file(task, data, f)), max_eval), max_len));
  return sets;
}

/// The adapter with its head, as PEFT saves a sequence-classification adapter.
void save_with_head(const Model& model, const std::string& dir) {
  lora::save_adapter(*model.module, dir, lora::SaveAdapterOptions().task_type("SEQ_CLS").modules_to_save(model.head));
}

std::map<std::string, double> eval_files(const Task& task, const Model& model,
                                         const EvalSets& sets, int64_t batch,
                                         int64_t pad_id, int64_t pad_to, std::vector<torch::Tensor>* logits = nullptr) {
  std::map<std::string, double> out;
  for (const auto& [name, examples] : sets) {
    auto l = predict_logits(model, examples, batch, pad_id, pad_to);
    for (const auto& [k, v] : score_logits(task, l, examples)) out[name + "/" + k] = v;
    if (logits) logits->push_back(l);
  }
  return out;
}

}  // namespace

std::string preset_name(const TrainArgs& a) { return a.preset_model.empty() ? default_preset(a.arch) : a.preset_model; }

Preset resolved_preset(const TrainArgs& a) {
  Preset p = preset(preset_name(a), task_named(a.task));
  if (a.lr > 0) p.lr = a.lr;
  if (a.epochs > 0) p.epochs = a.epochs;
  if (a.batch_size > 0) {
    p.per_device_batch = a.batch_size;
    p.devices = 1;
  }
  if (a.max_len > 0) p.max_len = a.max_len;
  if (a.rank > 0) p.rank = a.rank;
  if (a.alpha > 0) p.alpha = a.alpha;
  if (a.weight_decay >= 0) p.weight_decay = a.weight_decay;
  if (a.warmup_ratio >= 0) {
    p.warmup_ratio = a.warmup_ratio;
    p.warmup_steps = 0;
  }
  if (a.warmup_steps >= 0) p.warmup_steps = a.warmup_steps;  // HF: warmup_steps > 0 wins over the ratio
  if (a.cls_dropout >= 0) p.cls_dropout = a.cls_dropout;
  return p;
}

training::Options loop_options(const TrainArgs& a, const Preset& p) {
  training::Options o;
  o.lr = p.lr;
  o.weight_decay = p.weight_decay;
  o.eps = a.eps;
  o.clip = a.clip;
  o.optimizer = training::UpdateRule::Reference;  // transformers 4.4's AdamW: the same rule as examples/NLG's
  o.epochs = p.epochs;
  o.batch_size = p.global_batch();
  o.max_steps = a.max_steps;
  o.seed = a.seed;
  o.device = a.device;
  if (p.warmup_steps > 0) o.warmup = p.warmup_steps;
  else o.warmup_ratio = p.warmup_ratio;  // the Trainer takes ceil(T · ratio) of its T steps, as HF does
  // The scripts' fp16 (Apex/AMP) becomes bf16 autocast where it exists (CUDA); CPUs train in fp32.
  if (p.fp16 && training::device_named(a.device).is_cuda()) o.dtype = training::Precision::BF16;
  return o;
}

TrainResult train(const TrainArgs& args) {
  TrainArgs a = args;
  a.arch = arch_of(a.model);
  const Task& task = task_named(a.task);
  TrainResult r;
  r.preset = resolved_preset(a);
  r.arch = a.arch;
  r.preset_model = preset_name(a);
  const Preset& p = r.preset;
  if (!a.init_adapter.empty() && !a.init_loralib.empty())
    throw std::invalid_argument("--init-adapter and --init-loralib both given: start from one MNLI adapter");

  auto group = lora::dist::ProcessGroup::from_env(
      lora::dist::ProcessGroupOptions().timeout(std::chrono::milliseconds(1000 * a.dist_timeout)));
  const bool lead = group.rank() == 0;
  const auto tok = tokenizer_for(a.arch, a.tokenizer, a.model);
  const auto train_set = encode_all(tok, first_n(read_tsv(task, task_file(task, a.data, "train.tsv")), a.max_train), p.max_len);
  const EvalSets evals = eval_sets(task, tok, a.data, a.max_eval, p.max_len);
  r.train_examples = static_cast<int64_t>(train_set.size());

  const Model model = load_model(a.model, task.num_labels(), p.cls_dropout);
  if (!a.init_loralib.empty()) {  // the released MNLI adapter at its own rank; the head stays fresh
    auto* rob = dynamic_cast<roberta::RobertaForSequenceClassificationImpl*>(model.module.get());
    if (!rob)
      throw std::invalid_argument("--init-loralib reads microsoft/LoRA's RoBERTa checkpoints; start a " + a.arch +
                                  " run from a PEFT folder with --init-adapter");
    roberta::apply_loralib_checkpoint(*rob, roberta::read_loralib_checkpoint(a.init_loralib), /*with_head=*/false, "default");
  } else {
    prepare_for_lora(model, p.rank, p.alpha);
  }
  if (!a.init_adapter.empty()) {  // A and B of the MNLI adapter; the head stays fresh (the reference drops it by shape)
    lora::load_adapter(*model.module, a.init_adapter,
                       lora::LoadAdapterOptions().if_exists(lora::IfExists::Replace).trainable(true).load_modules_to_save(false));
  }
  train_head(model);  // the head trains in full, however the adapter began
  r.adapted = model.adapted(", ");
  for (const auto& h : model.head) r.head += (r.head.empty() ? "" : ", ") + h;

  const training::Options o = loop_options(a, p);
  std::vector<training::StateTag> tags{{"task", task.name, [name = task.name](const std::string& saved) {
                                       return "was saved by a --task " + saved + " run; this run is --task " + name;
                                     }},
                                    {"adapted", model.adapted(",") + " r=" + std::to_string(p.rank),
                                     [rank = p.rank](const std::string& saved) {
                                       return "was saved by a run adapting " + saved + "; this run has --rank " + std::to_string(rank);
                                     }}};
  const int64_t pad_id = tok.pad_id;
  training::Trainer trainer(model.module, o, train_set.size(), std::move(group), {}, tags, decays);
  r.trainable = trainer.trainable_count();
  r.total = trainer.parameter_count();
  r.steps = trainer.total_steps();
  if (!a.resume.empty()) trainer.load_state(a.resume);
  const bool regression = task.regression();
  if (lead) fs::create_directories(a.out);
  training::Progress progress(trainer.position(), trainer.total_steps(), a.out + "/train_log.csv",
                              !a.resume.empty() && fs::exists(a.out + "/train_log.csv"), a.log_every, lead, "examples");
  double loss_sum = 0;
  int64_t loss_n = 0;
  while (!trainer.done()) {
    const int64_t epoch = trainer.position().epoch;
    const double lr = trainer.lr_at(trainer.position().step);
    const auto idx = trainer.next_indices();
    const auto batch = make_batch(train_set, idx, pad_id, regression, a.pad_to);
    const double loss = trainer.step([&] { return sequence_loss(model, batch); }, idx.empty(), static_cast<int64_t>(idx.size()));
    progress.record(epoch, loss, lr, trainer.position());
    r.losses.push_back(loss);
    loss_sum += loss;
    ++loss_n;
    const bool epoch_end = trainer.position().batch == 0;
    if (!epoch_end && !trainer.done()) continue;
    progress.newline();
    EpochResult e;
    e.epoch = epoch;  // the epoch of the batch just trained
    e.train_loss = loss_sum / static_cast<double>(std::max<int64_t>(1, loss_n));
    loss_sum = 0;
    loss_n = 0;
    if (lead) {
      e.metrics = eval_files(task, model, evals, a.eval_batch, pad_id, a.pad_to);
      std::map<std::string, double> first;
      const std::string prefix = evals.front().first + "/";
      for (const auto& [k, v] : e.metrics)
        if (k.rfind(prefix, 0) == 0) first[k.substr(prefix.size())] = v;
      e.headline = headline(task, first);
      const std::string dir = a.out + "/epoch_" + std::to_string(e.epoch);
      save_with_head(model, dir);
      trainer.save_state(dir + "/trainer_state.pt");
      r.epochs.push_back(e);
      if (r.epochs.size() == 1 || e.headline > r.epochs[r.best].headline) {
        r.best = r.epochs.size() - 1;
        save_with_head(model, a.out + "/best");
      }
      std::cout << "epoch " << e.epoch << ": train loss " << std::fixed << std::setprecision(4) << e.train_loss;
      for (const auto& [k, v] : e.metrics) std::cout << ", " << k << " " << v;
      std::cout << std::endl;
    } else {
      r.epochs.push_back(e);
    }
  }
  r.seconds = progress.seconds();
  if (lead) {
    nlohmann::ordered_json j;
    j["task"] = task.name;
    j["best_epoch"] = r.epochs.empty() ? 0 : r.epochs[r.best].epoch;
    for (const auto& e : r.epochs) {
      nlohmann::ordered_json row;
      row["epoch"] = e.epoch;
      row["train_loss"] = e.train_loss;
      for (const auto& [k, v] : e.metrics) row[k] = v;
      j["epochs"].push_back(row);
    }
    lora::write_text_file(a.out + "/metrics.json", j.dump(2) + "\n");
    if (!r.losses.empty()) training::write_loss_svg(a.out + "/loss.svg", r.losses);
  }
  return r;
}

std::map<std::string, double> evaluate(const EvalArgs& a) {
  const Task& task = task_named(a.task);
  const Model model = load_model(a.model, task.num_labels());
  const auto tok = tokenizer_for(model.arch, a.tokenizer, a.model);
  if (!a.adapter.empty()) lora::load_adapter(*model.module, a.adapter);
  model->to(training::device_named(a.device));
  const EvalSets sets = eval_sets(task, tok, a.data, a.max_eval, a.max_len);
  std::vector<torch::Tensor> logits;
  auto metrics = eval_files(task, model, sets, a.batch_size, tok.pad_id, a.pad_to, &logits);
  if (!a.logits_out.empty()) {
    std::string text;
    for (const auto& l : logits)
      for (int64_t i = 0; i < l.size(0); ++i) {
        nlohmann::json row = nlohmann::json::array();
        for (int64_t k = 0; k < l.size(1); ++k) row.push_back(l[i][k].item<double>());
        text += row.dump() + "\n";
      }
    lora::write_text_file(a.logits_out, text);
  }
  return metrics;
}

std::string default_data_dir() {
  if (const char* env = std::getenv("LORA_DATA_DIR")) return env;
  return std::string(LORA_SOURCE_DIR) + "/../shared/data";
}

void init_smoke_model(TrainArgs& a) {
  const Task& task = task_named(a.task);
  a.model = a.out + "/random-" + a.arch;
  int64_t vocab = 0;
  if (a.arch == "deberta-v2") {  // no DeBERTa spm.model at hand: a small one learnt from the task's text
    fs::create_directories(a.model);
    std::string text;
    for (const auto& e : read_tsv(task, task_file(task, a.data, "train.tsv"))) text += e.text_a + "\n" + (e.text_b.empty() ? "" : e.text_b + "\n");
    lora::write_text_file(a.model + "/spm_corpus.txt", text);
    deberta::train_sentencepiece(a.model + "/spm_corpus.txt", a.model + "/spm", 2000);
    fs::remove(a.model + "/spm_corpus.txt");
    vocab = deberta::Tokenizer::from_dir(a.model).vocab_size();
    a.tokenizer = a.model;
  }
  init_model(a.model, 2, 64, task.num_labels(), static_cast<uint64_t>(a.seed), a.arch, vocab);
}

void convert_loralib(const std::string& checkpoint, const std::string& out, const std::string& model_dir) {
  const auto ckpt = roberta::read_loralib_checkpoint(checkpoint);
  const int64_t labels = ckpt.classifier.contains("classifier.out_proj.weight") ? ckpt.classifier["classifier.out_proj.weight"].size(0) : 2;
  std::shared_ptr<roberta::RobertaForSequenceClassificationImpl> model;
  if (model_dir.empty()) {
    roberta::Config c;  // roberta-base's shapes: only names and shapes matter, the base weights are not written
    c.num_labels = labels;
    model = std::make_shared<roberta::RobertaForSequenceClassificationImpl>(c);
  } else {
    model = roberta::RobertaForSequenceClassificationImpl::from_pretrained(model_dir, nullptr, labels);
  }
  roberta::apply_loralib_checkpoint(*model, ckpt, /*with_head=*/!ckpt.classifier.is_empty(), "default");
  lora::save_adapter(*model, out,
                     lora::SaveAdapterOptions().task_type("SEQ_CLS").base_model_name_or_path(model_dir.empty() ? "roberta-base" : model_dir)
                         .modules_to_save(ckpt.classifier.is_empty() ? std::vector<std::string>{} : std::vector<std::string>{"classifier"}));
}

void write_report(const std::string& path, const TrainArgs& a, const TrainResult& r, bool smoke) {
  const Task& task = task_named(a.task);
  const Preset& p = r.preset;
  std::ostringstream s;
  s << std::fixed;
  const std::string family = r.arch == "deberta-v2" ? "DeBERTa-v2" : "RoBERTa";
  s << "# GLUE " << task.name << ": " << family << " + LoRA"
    << (smoke ? " (smoke run: a small random " + family + ", numbers mean nothing)" : "") << "\n\n| setting | value |\n|---|---|\n"
    << "| model | " << a.model << " |\n"
    << "| adapter | LoRA r = " << p.rank << ", alpha = " << std::defaultfloat << p.alpha << std::fixed << " on " << r.adapted << "; "
    << r.head << " trained in full" << (p.cls_dropout >= 0 ? ", classifier dropout " + std::to_string(p.cls_dropout).substr(0, 4) : "")
    << " |\n"
    << "| trainable / all parameters | " << r.trainable << " / " << r.total << " |\n"
    << "| optimiser | AdamW (transformers 4.4's rule) lr " << std::setprecision(1) << std::scientific << p.lr << std::fixed
    << ", eps " << std::scientific << a.eps << std::fixed << std::setprecision(2) << ", weight decay " << p.weight_decay
    << " (not biases, LayerNorm) |\n"
    << "| schedule | linear, warm-up "
    << (p.warmup_steps > 0 ? std::to_string(p.warmup_steps) + " steps" : "ratio " + std::to_string(p.warmup_ratio).substr(0, 4)) << ", "
    << r.steps << " steps; clip " << a.clip << " |\n"
    << "| batch / epochs / max length | " << p.global_batch() << " / " << p.epochs << " / " << p.max_len
    << (a.pad_to > 0 ? " (padded to " + std::to_string(a.pad_to) + ")" : " (padded to each batch's longest)") << " |\n"
    << "| training examples | " << r.train_examples << " |\n"
    << "| seed | " << a.seed << " |\n"
    << "| time | " << std::setprecision(1) << r.seconds << " s |\n\n"
    << (r.losses.empty() ? "" : "![training loss](loss.svg)\n\n");
  s << "## Epochs\n\n| epoch | train loss |";
  std::vector<std::string> keys;
  if (!r.epochs.empty())
    for (const auto& [k, v] : r.epochs.front().metrics) keys.push_back(k);
  for (const auto& k : keys) s << " " << k << " |";
  s << "\n|---|---|";
  for (size_t i = 0; i < keys.size(); ++i) s << "---|";
  s << "\n";
  for (size_t i = 0; i < r.epochs.size(); ++i) {
    const auto& e = r.epochs[i];
    s << "| " << e.epoch << (i == r.best ? " (best)" : "") << " | " << std::setprecision(4) << e.train_loss << " |";
    for (const auto& k : keys) s << " " << (e.metrics.count(k) ? e.metrics.at(k) : 0.0) << " |";
    s << "\n";
  }
  const auto paper = paper_table2(r.preset_model, task);
  s << "\n## Table 2 (" << r.preset_model << ", LoRA)\n\n| task | metric | ours (best epoch) | paper (median of 5 seeds) |\n|---|---|---|---|\n"
    << "| " << task.name << " | "
    << (task.metric == Metric::Matthews ? "MCC" : task.metric == Metric::PearsonSpearman ? "Pearson" : "accuracy") << " | "
    << std::setprecision(1) << (r.epochs.empty() ? 0.0 : 100.0 * r.epochs[r.best].headline) << (smoke ? " (smoke)" : "") << " | "
    << (paper.value.empty() ? "n/a" : paper.value + " " + paper.spread) << " |\n";
  lora::write_text_file(path, s.str());
}

}  // namespace glue
