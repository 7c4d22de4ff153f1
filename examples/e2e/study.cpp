// gpt2-e2e analyze and sweep: the paper's §7 (Hu et al., 2021) on GPT-2 adapters, written as
// report pages with figures. The measurements are lora/analysis.hpp's; the training is e2e::Trainer.
#include "commands.hpp"

#include "data.hpp"
#include "hub.hpp"
#include "model.hpp"
#include "report.hpp"
#include "tokenizer.hpp"

#include <lora/lora.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <regex>
#include <sstream>
#include <tuple>

namespace e2e::cli {

namespace fs = std::filesystem;

namespace {

/// An adapted weight of GPT-2 as the paper names it: layer 3's "q" for transformer.h.3.attn.c_attn
/// slice 0, "o" for attn.c_proj; other modules keep their name (and slice).
struct WeightName {
  int64_t layer = -1;
  std::string type;
  std::string label() const { return (layer >= 0 ? "layer " + std::to_string(layer) + " " : "") + (type.size() == 1 ? "W_" + type : type); }
  std::string stem() const {
    std::string t = type;
    for (char& c : t)
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    return (layer >= 0 ? "layer" + std::to_string(layer) + "_" : "") + t;
  }
};

WeightName weight_name(const std::string& module, int64_t slice) {
  static const std::regex layer_re(R"((?:^|\.)h\.(\d+)\.(.*)$)");
  WeightName w;
  std::smatch m;
  std::string rest = module;
  if (std::regex_search(module, m, layer_re)) {
    w.layer = std::stoll(m[1].str());
    rest = m[2].str();
  }
  if (rest == "attn.c_attn" && slice >= 0 && slice < 3)
    w.type = std::string(1, "qkv"[slice]);
  else if (rest == "attn.c_proj" && slice < 0)
    w.type = "o";
  else
    w.type = rest + (slice >= 0 ? "[" + std::to_string(slice) + "]" : "");
  return w;
}

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

/// The mean of the top-left [rows, cols] block of a φ grid.
double block_mean(const torch::Tensor& phi, int64_t rows, int64_t cols) {
  return phi.narrow(0, 0, std::min(rows, phi.size(0))).narrow(1, 0, std::min(cols, phi.size(1))).mean().item<double>();
}

const char* kTable7Paper =
    "| paper: GPT-3 175B, layer 48, W_q, r = 4 | 61.95 | 6.91 | 0.32 | 21.67 | 0.02 | 21.5 |\n"
    "| paper: GPT-3 175B, layer 48, W_q, r = 64 | 61.95 | 3.57 | 1.90 | 37.71 | 0.33 | 1.9 |\n";

const char* kTable7Head =
    "| weight | ‖W‖_F | ‖ΔW‖_F | ‖UᵀWV‖_F, U, V of ΔW | of W | of a random matrix | amplification ‖ΔW‖_F / first |\n"
    "|---|---|---|---|---|---|---|\n";

std::string table7_row(const std::string& label, const lora::WeightAlignment& a) {
  return "| " + label + " | " + fixed(a.weight_norm, 2) + " | " + fixed(a.delta_norm, 3) + " | " + fixed(a.on_delta, 3) + " | " +
         fixed(a.on_weight, 2) + " | " + fixed(a.on_random, 3) + " | " + fixed(a.amplification(), 2) + " |\n";
}

}  // namespace

AnalyzeResult analyze(const AnalyzeArgs& a) {
  if (a.adapters.empty() || a.adapters.size() > 2)
    throw std::invalid_argument("analyze: give one --adapter (its spectra and Table 7) or two (also their subspace similarity, "
                                "Figures 3 and 4), not " + std::to_string(a.adapters.size()));
  if (a.max_i < 1 || a.max_j < 1) throw std::invalid_argument("analyze: --max-i and --max-j must be at least 1");
  AnalyzeResult result;
  auto model = gpt2::GPT2LMHeadModelImpl::from_pretrained(hf::resolve_pretrained(a.model, gpt2::checkpoint_files()));
  result.n_layer = model->config.n_layer;
  std::vector<std::string> dirs;
  for (size_t k = 0; k < a.adapters.size(); ++k) {
    auto [name, dir] = name_value(a.adapters[k], k == 0 ? "A" : "B", "--adapter");
    if (!result.names.empty() && name == result.names[0]) throw std::invalid_argument("--adapter: the name '" + name + "' is given twice");
    lora::load_adapter(*model, dir, lora::LoadAdapterOptions().adapter_name(name).activate(k == 0));
    result.names.push_back(name);
    dirs.push_back(dir);
  }
  fs::create_directories(a.out);
  std::ostringstream md;
  md << "# What the adapters learned: the paper's §7\n\nBase model `" << a.model << "`. Computed in float64 by `lora/analysis.hpp`; "
     << "docs/analysis.md explains each number.\n\n";
  for (size_t k = 0; k < result.names.size(); ++k) {
    const std::string& name = result.names[k];
    result.layers.push_back(lora::analyze_adapter(*model, name, 0, static_cast<uint64_t>(a.seed), gpt2::fused_projections()));
    const auto& rows = result.layers.back();
    md << "## Adapter " << name << " (`" << dirs[k] << "`)\n\n### Table 7: how ΔW relates to W (r = the adapter's rank)\n\n" << kTable7Head;
    std::vector<Series> spectra;
    std::ostringstream csv;
    csv << "module,slice,weight,i,singular_value\n";
    for (const auto& r : rows) {
      const WeightName w = weight_name(r.module, r.slice);
      md << table7_row(w.label() + " (r = " + std::to_string(r.alignment.r) + ")", r.alignment);
      Series s{w.label(), w.type, {}};
      const auto sv = r.singular_values.contiguous();
      const double top = sv.numel() > 0 ? sv[0].item<double>() : 0.0;
      const int64_t shown = std::min<int64_t>(sv.numel(), std::max<int64_t>(r.alignment.r, 1));
      for (int64_t i = 0; i < sv.numel(); ++i) {
        const double v = sv[i].item<double>();
        if (i < std::max<int64_t>(2 * r.alignment.r, 8)) csv << r.module << "," << r.slice << "," << w.type << "," << i + 1 << "," << std::setprecision(9) << v << "\n";
        if (i < shown) s.values.push_back(top > 0 ? v / top : 0.0);
      }
      spectra.push_back(std::move(s));
    }
    md << kTable7Paper << "\n";
    write_lines_svg(a.out + "/spectra_" + name + ".svg", spectra, "adapter " + name + ": singular values of ΔW, each over its largest",
                    "i (up to the rank r; ΔW = s·B·A has rank r at most)", "σ_i / σ_1");
    lora::write_text_file(a.out + "/spectra_" + name + ".csv", csv.str());
    md << "### Spectra\n\n![singular values of ΔW](spectra_" << name << ".svg)\n\nAll values: [spectra_" << name << ".csv](spectra_" << name
       << ".csv) (the first max(2r, 8) of each weight).\n\n";
  }
  if (result.names.size() == 2) {
    const std::string &na = result.names[0], &nb = result.names[1];
    result.comparisons = lora::compare_adapters(*model, na, nb, gpt2::fused_projections());
    // Two random Gaussian matrices of the first weight's shapes: φ without anything learned (the
    // paper's Figure 4, right).
    const auto& first = result.comparisons.front();
    auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(a.seed));
    int64_t in = 0;
    for (const auto& f : lora::adapter_factors(*model, na, gpt2::fused_projections()))
      if (f.module == first.module && f.slice == first.slice) in = f.A.size(1);
    const torch::Tensor random_phi = lora::subspace_similarity(at::normal(0.0, 1.0, {first.phi_A.size(0), in}, gen, torch::kDouble),
                                                               at::normal(0.0, 1.0, {first.phi_A.size(1), in}, gen, torch::kDouble));
    const int64_t I = std::min(a.max_i, first.phi_A.size(0)), J = std::min(a.max_j, first.phi_A.size(1));
    const std::string rows_axis = "i (" + na + ")", cols_axis = "j (" + nb + ")";
    write_heatmap_svg(a.out + "/phi_random.svg", random_phi.narrow(0, 0, I).narrow(1, 0, J),
                      "φ(i, j) of two random Gaussian matrices [" + std::to_string(random_phi.size(0)) + ", " + std::to_string(in) + "] and [" +
                          std::to_string(random_phi.size(1)) + ", " + std::to_string(in) + "]",
                      "i", "j");
    md << "## Subspace similarity of " << na << " and " << nb << " (Figures 3 and 4)\n\n"
       << "φ(i, j) = ‖U_iᵀ V_j‖²_F / min(i, j), U and V the right-singular vectors of " << na << "'s and " << nb
       << "'s A: 1 where one subspace holds the other, 0 where they are orthogonal. Shown for i ≤ " << a.max_i << ", j ≤ " << a.max_j
       << "; the mean is over that block. Random: two Gaussian matrices of the first weight's shapes (mean "
       << fixed(block_mean(random_phi, a.max_i, a.max_j), 3) << ", φ(1, 1) = " << fixed(random_phi[0][0].item<double>(), 3)
       << ", [figure](phi_random.svg)).\n\n| weight | φ(1, 1) | mean φ | mean φ of B (left-singular vectors) | figure |\n|---|---|---|---|---|\n";
    const int64_t middle = result.n_layer / 2;
    std::vector<std::string> shown;
    for (const auto& c : result.comparisons) {
      const WeightName w = weight_name(c.module, c.slice);
      const std::string file = "phi_" + w.stem() + ".svg";
      const int64_t i_max = std::min(a.max_i, c.phi_A.size(0)), j_max = std::min(a.max_j, c.phi_A.size(1));
      write_heatmap_svg(a.out + "/" + file, c.phi_A.narrow(0, 0, i_max).narrow(1, 0, j_max),
                        "φ(" + na + ", " + nb + ", i, j) of A, " + w.label(), rows_axis, cols_axis);
      md << "| " << w.label() << " | " << fixed(c.phi_A[0][0].item<double>(), 3) << " | " << fixed(block_mean(c.phi_A, a.max_i, a.max_j), 3)
         << " | " << fixed(block_mean(c.phi_B, a.max_i, a.max_j), 3) << " | [" << file << "](" << file << ") |\n";
      if (w.layer == middle) shown.push_back(file);
    }
    md << "\nLayer " << middle << " (the middle one, as the paper shows GPT-3's 48th of 96):\n\n";
    for (const auto& f : shown) md << "![" << f << "](" << f << ")\n";
    md << "![random](phi_random.svg)\n";
  }
  lora::write_text_file(a.out + "/analysis.md", md.str());
  return result;
}

namespace {

/// One trained adapter of the sweep: which attention weights, which rank, which seed.
struct Cell {
  std::string weights;
  int64_t rank = 0, seed = 0;
  bool operator<(const Cell& o) const { return std::tie(weights, rank, seed) < std::tie(o.weights, o.rank, o.seed); }
  std::string dir() const { return weights + "_r" + std::to_string(rank) + "_seed" + std::to_string(seed); }
};
struct Outcome {
  double valid = 0, seconds = 0;
  int64_t trainable = 0;
  std::string adapter;  ///< the PEFT adapter folder
};

/// Table 5 and 6 of the paper (validation accuracy, %), GPT-3 175B.
const std::map<std::string, std::pair<const char*, const char*>> kTable5Paper = {
    {"q", {"70.4", "91.0"}}, {"k", {"70.0", "90.8"}},  {"v", {"73.0", "91.0"}},     {"o", {"73.2", "91.3"}},
    {"qk", {"71.4", "91.3"}}, {"qv", {"73.7", "91.3"}}, {"qkvo", {"73.7", "91.7"}}};
const char* kTable6Paper =
    "| paper (GPT-3 175B) | r = 1 | r = 2 | r = 4 | r = 8 | r = 64 |\n|---|---|---|---|---|---|\n"
    "| WikiSQL (±0.5%), W_q | 68.8 | 69.6 | 70.5 | 70.4 | 70.0 |\n"
    "| WikiSQL, W_q, W_v | 73.4 | 73.3 | 73.7 | 73.8 | 73.5 |\n"
    "| WikiSQL, W_q, W_k, W_v, W_o | 74.1 | 73.7 | 74.0 | 74.0 | 73.9 |\n"
    "| MultiNLI (±0.1%), W_q | 90.7 | 90.9 | 91.1 | 90.7 | 90.7 |\n"
    "| MultiNLI, W_q, W_v | 91.3 | 91.4 | 91.3 | 91.6 | 91.4 |\n"
    "| MultiNLI, W_q, W_k, W_v, W_o | 91.2 | 91.7 | 91.7 | 91.5 | 91.4 |\n";

}  // namespace

void sweep(const SweepArgs& a) {
  const bool smoke = a.model.empty();
  if (a.budget_rank < 4 || a.budget_rank % 4 != 0)
    throw std::invalid_argument("sweep: --budget-rank " + std::to_string(a.budget_rank) +
                                " must be a positive multiple of 4 (Table 5 gives r/2 to each of two weight types, r/4 to each of four)");
  if (a.ranks.empty()) throw std::invalid_argument("sweep: --ranks is empty");
  for (int64_t r : a.ranks)
    if (r < 1) throw std::invalid_argument("sweep: --ranks holds " + std::to_string(r) + ": ranks must be at least 1");
  if (a.compare.size() != 2 || std::count(a.ranks.begin(), a.ranks.end(), a.compare[0]) == 0 ||
      std::count(a.ranks.begin(), a.ranks.end(), a.compare[1]) == 0 || a.compare[0] >= a.compare[1])
    throw std::invalid_argument("sweep: --compare takes two ranks of --ranks, the smaller first (Figure 3 compares r = 8 with r = 64)");
  const auto t0 = std::chrono::steady_clock::now();
  if (a.threads > 0) torch::set_num_threads(static_cast<int>(a.threads));
  const std::string data = find_data(a.data, "LORA_E2E_DIR", "e2e", "train.txt");
  fs::create_directories(a.out);
  std::string model = a.model;
  if (smoke) {
    std::cout << "SMOKE MODE: no --model given, so each cell trains a small randomly initialised GPT-2 for a short budget. The numbers "
                 "mean nothing; pass --model with a real GPT-2 folder for the paper's study.\n";
    model = a.out + "/random-gpt2";
    init(InitArgs{model, find_data(a.vocab, "LORA_GPT2_DIR", "gpt2", "vocab.json"), 2, 128, 2, 1024, a.seed});
  }
  TrainOptions base;
  base.device = a.device;
  base.epochs = a.epochs;
  base.batch_size = a.batch_size;
  base.max_steps = a.max_steps >= 0 ? a.max_steps : (smoke ? 60 : 0);
  if (smoke) base.warmup = 10;
  const std::string dir = hf::resolve_pretrained(model, gpt2::checkpoint_files());
  const auto tok = gpt2::Tokenizer::from_dir(dir);
  const int64_t valid_limit = a.valid_limit >= 0 ? a.valid_limit : (smoke ? 100 : 0);
  const auto train_set = encode_all(tok, read_pairs(data + "/train.txt"), 512);
  const auto valid_set = encode_all(tok, read_pairs(data + "/valid.txt"), 512, static_cast<size_t>(valid_limit));
  if (valid_set.empty()) throw std::runtime_error("'" + data + "/valid.txt' has no examples: the sweep scores each cell on them");

  const std::vector<std::pair<std::string, int64_t>> table5 = {{"q", a.budget_rank},      {"k", a.budget_rank},      {"v", a.budget_rank},
                                                               {"o", a.budget_rank},      {"qk", a.budget_rank / 2}, {"qv", a.budget_rank / 2},
                                                               {"qkvo", a.budget_rank / 4}};
  const std::vector<std::string> table6 = {"q", "qv", "qkvo"};
  std::vector<Cell> cells;
  auto want = [&](Cell c) {
    if (std::find_if(cells.begin(), cells.end(), [&](const Cell& x) { return !(x < c) && !(c < x); }) == cells.end()) cells.push_back(c);
  };
  for (const auto& [w, r] : table5) want({w, r, a.seed});
  for (const auto& w : table6)
    for (int64_t r : a.ranks) want({w, r, a.seed});
  const Cell small{"qv", a.compare[0], a.seed}, large{"qv", a.compare[1], a.seed}, reseeded{"qv", a.compare[1], a.seed + 1};
  want(reseeded);

  std::map<Cell, Outcome> done;
  for (size_t k = 0; k < cells.size(); ++k) {
    const Cell& c = cells[k];
    const auto start = std::chrono::steady_clock::now();
    TrainOptions o = base;
    o.weights = c.weights;
    o.rank = c.rank;
    o.seed = c.seed;
    torch::manual_seed(static_cast<uint64_t>(c.seed));
    Trainer trainer(gpt2::GPT2LMHeadModelImpl::from_pretrained(dir), o, train_set);
    while (!trainer.done()) trainer.step(make_batch(train_set, trainer.next_indices(), o.pad_to));
    Outcome out;
    out.valid = mean_loss(*trainer.model(), valid_set, o.batch_size);
    out.trainable = trainer.trainable_count();
    out.adapter = a.out + "/runs/" + c.dir();
    lora::save_adapter(*trainer.model(), out.adapter,
                       lora::SaveAdapterOptions().base_model_name_or_path(model).task_type("CAUSAL_LM").fan_in_fan_out(true));
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "[" << k + 1 << "/" << cells.size() << "] " << weight_types(c.weights) << ", r = " << c.rank << ", seed " << c.seed
              << ": " << lora::with_commas(out.trainable) << " trainable, " << trainer.position().step << " steps, valid loss "
              << fixed(out.valid, 4) << " (" << fixed(out.seconds, 1) << " s)" << std::endl;  // progress, even into a pipe
    done[c] = out;
  }

  std::ostringstream md;
  md << "# The paper's §7 on GPT-2 + E2E NLG\n\n";
  if (smoke)
    md << "**Smoke mode**: a small randomly initialised GPT-2 (2 layers, 128 wide), " << base.max_steps
       << " training steps per cell. The numbers mean nothing; they show the study runs.\n\n";
  md << "Each cell trains one adapter with the E2E recipe (`gpt2-e2e train`'s defaults: alpha = " << fixed(base.alpha, 0)
     << " for every rank, as the paper keeps alpha fixed; " << (base.max_steps > 0 ? std::to_string(base.max_steps) + " steps" : std::to_string(base.epochs) + " epochs")
     << ", batch " << base.batch_size << ", seed " << a.seed << ") on `" << model << "` and scores it by the mean cross-entropy of the "
     << valid_set.size() << " validation examples' completions (lower is better). The paper's numbers are validation accuracy (%, "
     << "higher is better) of GPT-3 175B on WikiSQL and MultiNLI: compare the orderings, not the values.\n\n";
  md << "## Table 5: which weights, at an equal budget\n\n| weight type | r | trainable parameters | validation loss (ours) | WikiSQL (paper) | MultiNLI (paper) |\n"
        "|---|---|---|---|---|---|\n";
  for (const auto& [w, r] : table5) {
    const Outcome& o = done.at({w, r, a.seed});
    const auto& paper = kTable5Paper.at(w);
    md << "| " << weight_types(w) << " | " << r << " | " << lora::with_commas(o.trainable) << " | " << fixed(o.valid, 4) << " | "
       << paper.first << " | " << paper.second << " |\n";
  }
  md << "\n## Table 6: which rank\n\n| validation loss (ours) |";
  for (int64_t r : a.ranks) md << " r = " << r << " |";
  md << "\n|---|";
  for (size_t k = 0; k < a.ranks.size(); ++k) md << "---|";
  md << "\n";
  for (const auto& w : table6) {
    md << "| " << weight_types(w) << " |";
    for (int64_t r : a.ranks) md << " " << fixed(done.at({w, r, a.seed}).valid, 4) << " |";
    md << "\n";
  }
  md << "\n" << kTable6Paper << "\n";

  // Figures 3 and 4 and Table 7, from the W_q, W_v adapters.
  const std::string small_name = "r" + std::to_string(small.rank), large_name = "r" + std::to_string(large.rank);
  const auto fig3 = analyze({model, a.out + "/figure3", {small_name + "=" + done.at(small).adapter, large_name + "=" + done.at(large).adapter}});
  const auto fig4 = analyze({model, a.out + "/figure4",
                             {"seed" + std::to_string(a.seed) + "=" + done.at(large).adapter,
                              "seed" + std::to_string(a.seed + 1) + "=" + done.at(reseeded).adapter}});
  const int64_t middle = fig3.n_layer / 2;
  auto figures = [&](const std::string& folder, const AnalyzeResult& r) {
    std::string out;
    for (const auto& c : r.comparisons) {
      const WeightName w = weight_name(c.module, c.slice);
      if (w.layer == middle) out += "![" + w.label() + "](" + folder + "/phi_" + w.stem() + ".svg)\n";
    }
    return out + "![random](" + folder + "/phi_random.svg)\n";
  };
  md << "## Figure 3: the r = " << small.rank << " and r = " << large.rank << " adapters (W_q, W_v), layer " << middle << "\n\n"
     << "φ(i, j) between the top-i directions of the r = " << small.rank << " adapter's A and the top-j of the r = " << large.rank
     << " one's; the last map is two random matrices. The paper (GPT-3, layer 48) finds φ > 0.5 for i = 1 and little overlap beyond. "
     << "Every layer: [figure3/analysis.md](figure3/analysis.md).\n\n"
     << figures("figure3", fig3) << "\n## Figure 4: two seeds at r = " << large.rank << ", layer " << middle << "\n\n"
     << "The same between seeds " << a.seed << " and " << a.seed + 1 << ". Every layer: [figure4/analysis.md](figure4/analysis.md).\n\n"
     << figures("figure4", fig4) << "\n## Table 7: how ΔW relates to W (W_q of layer " << middle << ", the W_q, W_v adapters)\n\n" << kTable7Head;
  auto model_for_table7 = gpt2::GPT2LMHeadModelImpl::from_pretrained(dir);
  for (int64_t r : a.ranks) {
    const std::string name = "r" + std::to_string(r);
    lora::load_adapter(*model_for_table7, done.at({"qv", r, a.seed}).adapter, lora::LoadAdapterOptions().adapter_name(name));
    for (const auto& l : lora::analyze_adapter(*model_for_table7, name, 0, 0, gpt2::fused_projections())) {
      const WeightName w = weight_name(l.module, l.slice);
      if (w.layer == middle && w.type == "q") md << table7_row("ours, r = " + std::to_string(r), l.alignment);
    }
  }
  md << kTable7Paper << "\n";
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  md << "Total time: " << fixed(total, 0) << " s for " << cells.size() << " adapters.\n";
  lora::write_text_file(a.out + "/sweep.md", md.str());
  std::cout << "wrote " << a.out << "/sweep.md (" << fixed(total, 0) << " s)\n";
}

}  // namespace e2e::cli
