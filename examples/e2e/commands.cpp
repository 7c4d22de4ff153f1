#include "commands.hpp"

#include "data.hpp"
#include "generate.hpp"
#include "hub.hpp"
#include "model.hpp"
#include "progress.hpp"
#include "report.hpp"
#include "tokenizer.hpp"

#include <lora/lora.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>

#include <sys/resource.h>

namespace e2e::cli {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

gpt2::Tokenizer tokenizer_of(const std::string& model) {
  const std::string dir = hf::resolve_pretrained(model, gpt2::checkpoint_files());
  if (!fs::exists(dir + "/vocab.json") || !fs::exists(dir + "/merges.txt"))
    throw std::runtime_error("model directory '" + dir + "' has no tokenizer files (vocab.json, merges.txt): copy GPT-2's there");
  return gpt2::Tokenizer::from_dir(dir);
}

void copy_tokenizer(const std::string& from, const std::string& to) {
  for (const char* f : {"vocab.json", "merges.txt"})
    fs::copy_file(from + "/" + f, to + "/" + f, fs::copy_options::overwrite_existing);
}

std::shared_ptr<gpt2::GPT2LMHeadModelImpl> load_model(const std::string& model, const std::string& adapter, torch::Device device) {
  auto m = gpt2::GPT2LMHeadModelImpl::from_pretrained(hf::resolve_pretrained(model, gpt2::checkpoint_files()));
  if (!adapter.empty()) lora::load_adapter(*m, adapter);
  m->to(device);
  return m;
}

gpt2::GPT2LMHeadModelImpl random_gpt2(int64_t layers, int64_t embd, int64_t heads, int64_t positions, int64_t seed) {
  if (layers < 1 || heads < 1 || embd < 1 || embd % heads != 0)
    throw std::invalid_argument("init: --embd (" + std::to_string(embd) + ") must be a positive multiple of --heads (" +
                                std::to_string(heads) + "), --layers at least 1");
  torch::manual_seed(static_cast<uint64_t>(seed));
  gpt2::Config c;
  c.n_layer = layers;
  c.n_embd = embd;
  c.n_head = heads;
  c.n_positions = positions;
  return gpt2::GPT2LMHeadModelImpl(c);
}

/// Where the other ranks' output goes.
std::ostream& null_stream() {
  static std::ofstream none;  // never opened: writes fail silently
  return none;
}

long peak_rss_mb() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024;
}

}  // namespace

TrainResult train(const TrainArgs& a) {
  TrainResult result;
  if (a.threads > 0) torch::set_num_threads(static_cast<int>(a.threads));
  torch::manual_seed(static_cast<uint64_t>(a.o.seed));
  auto tok = tokenizer_of(a.model);
  auto train_set = encode_all(tok, read_pairs(a.data + "/train.txt"), a.max_len);
  auto valid_set = encode_all(tok, read_pairs(a.data + "/valid.txt"), a.max_len, static_cast<size_t>(a.valid_limit));
  if (valid_set.empty())  // found now, not after the first epoch's training
    throw std::runtime_error("'" + a.data + "/valid.txt' has no examples: the validation loss after each epoch needs at least one");
  auto group = lora::dist::ProcessGroup::from_env(
      lora::dist::ProcessGroupOptions().timeout(std::chrono::milliseconds(1000 * a.dist_timeout)));
  const bool lead = group.rank() == 0;  // rank 0 prints, logs and saves
  std::ostream& out = lead ? std::cout : null_stream();
  Trainer trainer(gpt2::GPT2LMHeadModelImpl::from_pretrained(hf::resolve_pretrained(a.model, gpt2::checkpoint_files())), a.o, train_set, group);
  auto model = trainer.model();
  result.total = trainer.parameter_count();
  result.total_steps = trainer.total_steps();
  result.trainable = trainer.trainable_count();
  out << "trainable params: " << lora::with_commas(result.trainable) << " || all params: " << lora::with_commas(result.total) << "\n";
  if (group.world_size() > 1)
    out << "data parallel: " << group.world_size() << " ranks (" << group.env().source << "), each "
        << a.o.batch_size / group.world_size() << "-" << (a.o.batch_size + group.world_size() - 1) / group.world_size()
        << " examples of every batch of " << a.o.batch_size << "\n";
  if (lead) fs::create_directories(a.out);
  if (!a.resume.empty()) {
    trainer.load_state(a.resume);
    out << "resumed from " << a.resume << " at step " << trainer.position().step << " (epoch " << trainer.position().epoch
        << ", batch " << trainer.position().batch << ")\n";
  }
  // A resumed run appends to the log of the run it continues.
  const bool append = !a.resume.empty() && fs::exists(a.out + "/train_log.csv");
  training::Progress progress(trainer.position(), trainer.total_steps(), a.out + "/train_log.csv", append, a.log_every, lead,
                              "tokens");
  auto save = [&](const std::string& dir) {
    if (!lead) return;
    if (a.o.method == Method::LoRA)
      lora::save_adapter(*model, dir, lora::SaveAdapterOptions().base_model_name_or_path(a.model).task_type("CAUSAL_LM").fan_in_fan_out(true));
    else
      model->save_pretrained(dir);
    trainer.save_state(dir + "/trainer_state.pt");
  };
  const auto start = Clock::now();
  const int64_t first_step = trainer.position().step, first_tokens = trainer.position().tokens;
  while (!trainer.done()) {
    const int64_t epoch = trainer.position().epoch;
    const double lr = trainer.lr_at(trainer.position().step);
    const double loss = trainer.step(make_batch(train_set, trainer.next_indices(), a.o.pad_to));
    const auto& pos = trainer.position();
    result.losses.push_back(loss);
    progress.record(epoch, loss, lr, pos);
    if (a.save_every > 0 && pos.step % a.save_every == 0 && !trainer.accumulating()) save(a.out + "/checkpoint");
    if (pos.batch == 0 || trainer.done()) {  // an epoch ended (or the step budget did)
      progress.newline();
      result.valid.push_back(mean_loss(*model, valid_set, a.o.batch_size, &group));
      out << "epoch " << epoch << " valid_loss " << std::setprecision(6) << result.valid.back() << "\n";
      save(a.out + "/epoch_" + std::to_string(epoch));
    }
  }
  // The final result: a PEFT adapter folder (lora), or a whole HF model folder (full fine-tuning).
  const std::string final_dir = a.out + (a.o.method == Method::LoRA ? "/adapter" : "/model");
  save(final_dir);
  out << "saved " << final_dir << "\n";
  if (group.world_size() > 1)
    out << "all-reduced " << std::fixed << std::setprecision(2) << double(group.bytes_moved()) / 1e6 << " MB per rank ("
        << double(group.bytes_moved()) / 1e6 / double(std::max<int64_t>(1, trainer.position().step - first_step))
        << " MB per step), " << group.collective_seconds() << " s in collectives of " << seconds_since(start) << " s\n";
  group.barrier();  // no rank leaves before rank 0 has saved
  result.steps = trainer.position().step - first_step;
  result.tokens = trainer.position().tokens - first_tokens;
  result.seconds = seconds_since(start);
  return result;
}

std::pair<std::string, std::string> name_value(const std::string& s, const std::string& fallback, const char* option) {
  const size_t eq = s.find('=');
  if (eq == std::string::npos) return {fallback, s};
  if (eq == 0 || eq + 1 == s.size())
    throw std::invalid_argument(std::string(option) + " '" + s + "': expected NAME=VALUE with both parts non-empty");
  return {s.substr(0, eq), s.substr(eq + 1)};
}

GenerateResult generate(const GenerateArgs& a) {
  GenerateResult result;
  const auto start = Clock::now();
  const auto device = device_named(a.device);
  auto tok = tokenizer_of(a.model);
  auto groups = group_by_mr(read_pairs(a.data));
  if (a.limit > 0 && static_cast<size_t>(a.limit) < groups.size()) groups.resize(static_cast<size_t>(a.limit));
  auto model = load_model(a.model, "", device);
  std::vector<std::string> names;
  for (const auto& entry : a.adapters) {
    const auto [name, dir] = name_value(entry, "default", "--adapter");
    if (std::find(names.begin(), names.end(), name) != names.end())
      throw std::invalid_argument("--adapter: the name '" + name + "' is given twice");
    lora::load_adapter(*model, dir, lora::LoadAdapterOptions().adapter_name(name).activate(names.empty()));
    names.push_back(name);
  }
  std::vector<std::pair<std::string, std::string>> routes;
  for (const auto& r : a.routes) {
    routes.push_back(name_value(r, "", "--route"));
    if (routes.back().first.empty()) throw std::invalid_argument("--route '" + r + "': expected NAME=TEXT");
    if (std::find(names.begin(), names.end(), routes.back().first) == names.end())
      throw std::invalid_argument("--route '" + r + "': no --adapter is named '" + routes.back().first + "'");
  }
  model->eval();
  auto adapter_of = [&](const std::string& mr) {
    for (const auto& [name, text] : routes)
      if (mr.find(text) != std::string::npos) return name;
    return names.empty() ? std::string() : names.front();
  };
  auto options = gpt2::paper_decoding();
  options.num_beams = a.beams;
  options.max_new_tokens = a.max_new_tokens;
  fs::create_directories(a.out);
  std::ofstream hyp(a.out + "/hypothesis.txt"), refs(a.out + "/references.txt");
  const auto decoding = Clock::now();
  for (size_t i = 0; i < groups.size(); ++i) {
    auto prompt = tok.encode(groups[i].mr);
    prompt.push_back(tok.eos_id());
    std::optional<lora::AdapterPerRow> route;  // several adapters: this MR's; one (active) or none: the plain forward
    if (names.size() > 1) route.emplace(*model, std::vector<std::string>{adapter_of(groups[i].mr)});
    const std::vector<int64_t> ids = gpt2::generate(*model, {prompt}, options)[0];
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
  const double decode_s = seconds_since(decoding);
  std::cout << "wrote " << a.out << "/hypothesis.txt and " << a.out << "/references.txt (" << groups.size() << " MRs)\n"
            << "decoding: " << result.tokens << " new tokens in " << decode_s << " s ("
            << static_cast<double>(result.tokens) / std::max(decode_s, 1e-9) << " tokens/s)\n";
  result.seconds = seconds_since(start);
  return result;
}

double eval(const EvalArgs& a) {
  auto tok = tokenizer_of(a.model);
  auto examples = encode_all(tok, read_pairs(a.data), 512, static_cast<size_t>(a.limit));
  auto m = load_model(a.model, a.adapter, device_named(a.device));
  return mean_loss(*m, examples, 8);
}

void export_merged(const ExportArgs& a) {
  auto m = load_model(a.model, a.adapter, torch::kCPU);
  lora::merge_and_unload(*m);
  m->save_pretrained(a.out);
  const std::string dir = hf::resolve_pretrained(a.model, gpt2::checkpoint_files());
  if (fs::exists(dir + "/vocab.json")) copy_tokenizer(dir, a.out);
}

std::string score(const ScoreArgs& a) {
  const auto s = e2e::score(read_hypotheses(a.hyp), read_references(a.refs));
  std::ostringstream out;
  if (a.json) {
    nlohmann::ordered_json j;
    j["BLEU"] = s.bleu;
    j["NIST"] = s.nist;
    j["METEOR"] = nullptr;
    j["ROUGE_L"] = s.rouge_l;
    j["CIDEr"] = s.cider;
    out << j.dump() << "\n";
  } else {
    out << std::setprecision(4) << std::fixed << "BLEU: " << s.bleu << "\nNIST: " << s.nist
        << "\nMETEOR: not computed (needs the METEOR 1.5 jar and its paraphrase tables)\nROUGE_L: " << s.rouge_l
        << "\nCIDEr: " << s.cider << "\n";
  }
  return out.str();
}

void init(const InitArgs& a) {
  random_gpt2(a.layers, a.embd, a.heads, a.positions, a.seed).save_pretrained(a.out);
  if (!a.vocab.empty()) copy_tokenizer(a.vocab, a.out);
}

std::string find_data(const std::string& flag, const char* env, const std::string& sub, const std::string& file) {
  if (!flag.empty()) {
    if (!fs::exists(flag + "/" + file)) throw std::runtime_error("'" + flag + "/" + file + "' not found");
    return flag;
  }
  std::vector<std::string> candidates;
  if (const char* v = std::getenv(env)) candidates.push_back(v);
  candidates.push_back("../shared/data/" + sub);
  candidates.push_back("data/" + sub);
  for (const auto& c : candidates)
    if (fs::exists(c + "/" + file)) return c;
  throw std::runtime_error(std::string("no ") + file + " found (looked in $" + env + ", ../shared/data/" + sub + " and data/" +
                           sub + " under " + fs::current_path().string() +
                           "): run scripts/get-data.sh in the checkout (or run from it), or pass the folder");
}

void run(const RunArgs& r) {
  const bool smoke = r.model.empty();
  const auto t0 = Clock::now();
  const std::string data = find_data(r.data, "LORA_E2E_DIR", "e2e", "train.txt");
  fs::create_directories(r.out);
  std::string model = r.model;
  if (smoke) {
    std::cout << "SMOKE MODE: no --model given, so a small randomly initialised GPT-2 is trained for a short budget and "
                 "scored on a few test MRs. The numbers mean nothing; pass --model with a real GPT-2 folder for the "
                 "paper's recipe.\n";
    model = r.out + "/random-gpt2";
    init(InitArgs{model, find_data(r.vocab, "LORA_GPT2_DIR", "gpt2", "vocab.json"), 2, 128, 2, 1024, r.seed});
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
  GenerateArgs g;
  g.model = model;
  g.adapters = {t.out + "/adapter"};
  g.data = data + "/test.txt";
  g.out = r.out + "/generate";
  g.device = r.device;
  g.limit = r.gen_limit >= 0 ? r.gen_limit : (smoke ? 30 : 0);
  g.beams = r.beams;
  const auto gen = generate(g);
  std::ostringstream decoding;
  const auto d = gpt2::paper_decoding();
  decoding << "beam " << g.beams << ", length penalty " << d.length_penalty << ", no-repeat " << d.no_repeat_ngram_size << "-grams, "
           << g.max_new_tokens << " new tokens, EOS";
  for (int64_t id : d.eos_token_ids) decoding << " " << id;
  const auto scores = e2e::score(gen.hyps, gen.refs);
  write_loss_svg(r.out + "/loss.svg", tr.losses);
  const double total = seconds_since(t0);

  RunReport rep;
  rep.smoke = smoke;
  rep.model = model;
  rep.data = data;
  rep.options = t.o;
  rep.decoding = decoding.str();
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
  write_report(r.out + "/report.md", rep);
  std::cout << std::setprecision(4) << "BLEU " << scores.bleu << "  NIST " << scores.nist << "  ROUGE_L " << scores.rouge_l
            << "  CIDEr " << scores.cider << "\nwrote " << r.out << "/report.md and " << r.out << "/loss.svg ("
            << std::lround(total) << " s)\n";
}

}  // namespace e2e::cli
