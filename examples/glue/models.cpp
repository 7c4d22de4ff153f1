#include "models.hpp"

#include "checkpoint.hpp"

#include <filesystem>
#include <iostream>

namespace glue {

namespace fs = std::filesystem;

torch::Device Model::device() const {
  for (const auto& p : module->parameters()) return p.device();
  return torch::kCPU;
}

std::string Model::adapted(const std::string& separator) const {
  std::string out;
  for (const auto& t : lora.target_modules()) out += (out.empty() ? "" : separator) + t.substr(t.rfind('.') + 1);
  return out;
}

Model wrap(std::shared_ptr<roberta::RobertaForSequenceClassificationImpl> m) {
  Model out;
  out.arch = "roberta";
  out.module = m;
  out.forward = [m](const torch::Tensor& ids, const torch::Tensor& mask) { return m->forward(ids, mask); };
  out.num_labels = m->config.num_labels;
  out.head = {"classifier"};  // RobertaClassificationHead: dense + out_proj
  out.lora = roberta::paper_lora_config();
  return out;
}

Model wrap(std::shared_ptr<deberta::DebertaV2ForSequenceClassificationImpl> m) {
  Model out;
  out.arch = "deberta-v2";
  out.module = m;
  out.forward = [m](const torch::Tensor& ids, const torch::Tensor& mask) { return m->forward(ids, mask); };
  out.num_labels = m->config.num_labels;
  out.head = {"pooler", "classifier"};  // the reference trains every parameter outside "deberta."
  out.lora = deberta::paper_lora_config();
  out.lora_A_std = 0.02;  // DebertaV2PreTrainedModel._init_weights redraws lora_A from N(0, initializer_range)
  return out;
}

std::string arch_of(const std::string& model_dir) {
  const auto j = hf::read_config_json(model_dir + "/config.json", "model");
  const std::string type = j.value("model_type", "");
  if (type != "roberta" && type != "deberta-v2")
    throw std::runtime_error("'" + model_dir + "/config.json' has model_type '" + type +
                             "': glue trains \"roberta\" and \"deberta-v2\" (also DeBERTa-v3) models");
  return type;
}

Model load_model(const std::string& dir, int64_t num_labels, double cls_dropout) {
  const std::string arch = arch_of(dir);
  std::vector<std::string> fresh;
  Model m;
  if (arch == "roberta") {
    if (cls_dropout >= 0) throw std::invalid_argument("--cls-dropout is DeBERTa's: RoBERTa's head uses hidden_dropout_prob");
    m = wrap(roberta::RobertaForSequenceClassificationImpl::from_pretrained(dir, &fresh, num_labels));
  } else {
    m = wrap(deberta::DebertaV2ForSequenceClassificationImpl::from_pretrained(dir, &fresh, num_labels, cls_dropout));
  }
  if (!fresh.empty()) std::cerr << "glue: '" << dir << "' has no classifier: the head starts fresh (as transformers does)\n";
  return m;
}

PairTokenizer tokenizer_for(const std::string& arch, const std::string& tokenizer_dir, const std::string& model_dir) {
  if (arch == "deberta-v2") {
    if (!tokenizer_dir.empty()) return deberta::Tokenizer::from_dir(tokenizer_dir);
    if (fs::exists(model_dir + "/spm.model")) return deberta::Tokenizer::from_dir(model_dir);
    throw std::invalid_argument("'" + model_dir + "' has no spm.model: pass --tokenizer with DeBERTa's SentencePiece model folder");
  }
  if (!tokenizer_dir.empty()) return roberta::Tokenizer::from_dir(tokenizer_dir);
  if (fs::exists(model_dir + "/vocab.json") && fs::exists(model_dir + "/merges.txt")) return roberta::Tokenizer::from_dir(model_dir);
  throw std::invalid_argument("'" + model_dir + "' has no vocab.json and merges.txt: pass --tokenizer with RoBERTa's "
                              "(../shared/data/roberta beside the checkout has roberta-base's)");
}

namespace {

/// BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms.
void bert_init(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  for (auto& p : model.named_parameters()) {
    if (p.key().find("LayerNorm.weight") != std::string::npos) p.value().fill_(1.0);
    else if (p.key().find("bias") != std::string::npos) p.value().zero_();
    else p.value().normal_(0.0, 0.02);
  }
}

/// A model of `c`'s form at the given sizes (both families' configs name these fields alike),
/// initialised as BERT, written as an HF folder.
template <class Impl, class Config>
void write_random(Config c, const std::string& dir, int64_t layers, int64_t hidden, int64_t num_labels, int64_t vocab_size) {
  c.num_hidden_layers = layers;
  c.hidden_size = hidden;
  c.num_attention_heads = std::max<int64_t>(1, hidden / 32);
  c.intermediate_size = 4 * hidden;
  c.num_labels = num_labels;
  if (vocab_size > 0) c.vocab_size = vocab_size;
  Impl model(c);
  bert_init(model);
  model.save_pretrained(dir);
}

}  // namespace

void init_model(const std::string& dir, int64_t layers, int64_t hidden, int64_t num_labels, uint64_t seed, const std::string& arch,
                int64_t vocab_size) {
  torch::manual_seed(seed);
  if (arch == "roberta") {
    write_random<roberta::RobertaForSequenceClassificationImpl>(roberta::Config{}, dir, layers, hidden, num_labels, vocab_size);
  } else if (arch == "deberta-v2") {  // deberta-v2-xxlarge's form, narrower
    write_random<deberta::DebertaV2ForSequenceClassificationImpl>(deberta::Config::xxlarge(), dir, layers, hidden, num_labels, vocab_size);
  } else {
    throw std::invalid_argument("unknown --arch '" + arch + "': roberta or deberta-v2");
  }
}

}  // namespace glue
