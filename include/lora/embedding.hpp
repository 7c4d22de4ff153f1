#pragma once
/// \file embedding.hpp
/// `lora::LoRAEmbedding`: a drop-in for `torch::nn::Embedding` that can carry adapters.

#include <lora/layer.hpp>

#include <ostream>

namespace lora {

/// A `torch::nn::Embedding` with LoRA adapters (loralib / PEFT semantics):
///
///     y = E[ids] + Σ_active  s · (Aᵀ[ids]) Bᵀ,   ΔE = s · (B A)ᵀ  [num_embeddings, embedding_dim]
///
/// Same constructors, `weight` [num, dim] and initialisation as `torch::nn::Embedding`.
/// Adapters live in `lora_embedding_A.<name>.weight` [r, num_embeddings] and
/// `lora_embedding_B.<name>.weight` [embedding_dim, r] (PEFT's shapes; PEFT keeps
/// them in a ParameterDict, hence no ".weight" in its files). A starts at zero and B
/// normal, as in PEFT, so an injected model again starts equal to its base.
/// Dropout does not apply to embeddings; slice masks are for Linear layers only.
///
/// Example:
/// \code
///   lora::LoRAEmbedding wte(50257, 768);
///   wte->add_adapter("default", lora::AdapterOptions(8));
///   wte->set_active_adapters({"default"});
///   auto h = wte(torch::tensor({{15496, 11}}));  // [1, 2, 768]
/// \endcode
class LoRAEmbeddingImpl : public LoRAModule<LoRAEmbeddingImpl> {
 public:
  LoRAEmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim)
      : LoRAEmbeddingImpl(torch::nn::EmbeddingOptions(num_embeddings, embedding_dim)) {}
  explicit LoRAEmbeddingImpl(torch::nn::EmbeddingOptions options_) : options(std::move(options_)) {
    // A weight passed through the options is registered once and then dropped from
    // them, so clone() copies it instead of aliasing the original.
    pending_weight_ = options._weight();
    options._weight(torch::Tensor());
    reset();
  }
  /// Wraps an existing Embedding: E is the same tensor as `base`'s (shared, not copied).
  explicit LoRAEmbeddingImpl(const torch::nn::Embedding& base)
      : LoRAEmbeddingImpl(torch::nn::EmbeddingOptions(base->options)._weight(base->weight)) {}

  void reset() override {
    auto& pad = options.padding_idx();
    if (pad && *pad < 0) pad = *pad + options.num_embeddings();
    if (pending_weight_.defined()) {
      TORCH_CHECK(pending_weight_.sizes() == torch::IntArrayRef({options.num_embeddings(), options.embedding_dim()}),
                  "LoRAEmbedding: the weight given has shape ", pending_weight_.sizes(), ", expected [",
                  options.num_embeddings(), ", ", options.embedding_dim(), "]");
      weight = register_parameter("weight", pending_weight_, pending_weight_.requires_grad());
      pending_weight_ = torch::Tensor();
    } else {
      weight = register_parameter("weight", torch::empty({options.num_embeddings(), options.embedding_dim()}));
      reset_parameters();
    }
    register_adapter_dicts("lora_embedding_A", "lora_embedding_B");
  }

  /// Initialises E exactly as `torch::nn::Embedding` does (N(0, 1), padding row zero).
  void reset_parameters() {
    torch::nn::init::normal_(weight);
    if (options.padding_idx()) {
      torch::NoGradGuard no_grad;
      weight[*options.padding_idx()].fill_(0);
    }
  }

  torch::Tensor forward(const torch::Tensor& input) {
    torch::Tensor result = torch::nn::functional::detail::embedding(
        input, weight, options.padding_idx(), options.max_norm(), options.norm_type(),
        options.scale_grad_by_freq(), options.sparse());
    if (row_adapters()) return mixed_forward(input, result);
    // The update is added out of place: an in-place add into a view of `result` would make
    // autograd clone the whole output gradient (CopySlices) in the backward.
    torch::Tensor update;
    for (const auto& name : active_adapters()) {
      if (is_merged(name)) {
        check_not_training_merged(name);
        continue;
      }
      torch::Tensor u = adapter_update(input, name);
      if (AdapterVariant* v = variant(name)) {  // active alone: the base lookup plus its update, rescaled
        VariantTerms t;
        t.fused = result + u.view(result.sizes()).to(result.scalar_type());
        t.weight = weight.t();
        t.delta = lora_delta(name).t();
        return v->forward(t);
      }
      update = update.defined() ? update + u : u;
    }
    if (!update.defined()) return result;
    return result + update.view(result.sizes()).to(result.scalar_type());
  }

  /// s·Aᵀ[ids]·Bᵀ of adapter `name`, [ids, embedding_dim].
  torch::Tensor adapter_update(const torch::Tensor& input, const std::string& name) {
    const torch::Tensor& A = lora_A(name);  // [r, num]
    const int64_t pad = options.padding_idx() ? *options.padding_idx() : -1;
    torch::Tensor rows = torch::embedding(A.t(), input.reshape({-1}), pad, options.scale_grad_by_freq());
    return torch::mm(rows.mul_(scaling(name)), lora_B(name).t());
  }

  /// A batch whose rows use different adapters (lora::AdapterPerRow): the ids look up the columns
  /// of every adapter the rows ask for in the stacked A (mixed.hpp), each row keeps its own
  /// adapter's, and one GEMM with the stacked B adds the updates into the base lookup `result`.
  torch::Tensor mixed_forward(const torch::Tensor& input, torch::Tensor result) {
    if (input.dim() < 1) throw std::invalid_argument(describe() + ": a mixed-adapter batch needs ids of shape [batch, ...]");
    const auto rows = row_slots(input.size(0));
    if (rows.empty()) return result;
    const auto& stack = adapter_stack(
        rows, result.scalar_type(), result.device(), [&](const std::string& n) { return lora_A(n); },
        [&](const std::string& n) { return lora_B(n); });
    const auto batch = input.size(0);
    torch::Tensor ht = stack.A_cat.index_select(1, input.reshape({-1}));  // [Σr, batch·T]
    ht.view({stack.total_rank(), batch, -1}).mul_(detail::stacked_mask(rows, stack));
    result.view({-1, options.embedding_dim()}).addmm_(ht.t(), stack.BT_cat);
    return result;
  }

  torch::Tensor lora_delta(const std::string& name) override {
    const auto dtype = torch::promote_types(torch::kFloat32, weight.scalar_type());
    torch::Tensor A = lora_A(name).detach().to(dtype), B = lora_B(name).detach().to(dtype);
    return torch::mm(B, A).t().mul(scaling(name));
  }

  torch::Tensor& base_weight() override { return weight; }
  torch::Tensor base_bias() override { return torch::Tensor(); }

  int64_t output_features() const override { return options.embedding_dim(); }
  /// Output-major E is Eᵀ [embedding_dim, num_embeddings]: DoRA's norm runs over the vocabulary.
  torch::Tensor output_major(const torch::Tensor& w) const override { return w.t(); }

  std::string peft_key_form() const override { return "Embedding"; }
  std::string peft_key(const std::string& which) const override { return "lora_embedding_" + which; }
  std::vector<int64_t> file_shape(const std::string& which, int64_t r) const override {
    return which == "A" ? std::vector<int64_t>{r, options.num_embeddings()} : std::vector<int64_t>{options.embedding_dim(), r};
  }

  std::string describe() const override {
    return "LoRAEmbedding(num_embeddings=" + std::to_string(options.num_embeddings()) +
           ", embedding_dim=" + std::to_string(options.embedding_dim()) + ")";
  }

  void pretty_print(std::ostream& stream) const override {
    stream << "lora::LoRAEmbedding(num_embeddings=" << options.num_embeddings()
           << ", embedding_dim=" << options.embedding_dim();
    if (options.padding_idx()) stream << ", padding_idx=" << *options.padding_idx();
    if (options.max_norm()) stream << ", max_norm=" << *options.max_norm();
    if (options.norm_type() != 2.0) stream << ", norm_type=" << options.norm_type();
    if (options.scale_grad_by_freq()) stream << ", scale_grad_by_freq=" << std::boolalpha << options.scale_grad_by_freq();
    if (options.sparse()) stream << ", sparse=" << std::boolalpha << options.sparse();
    print_adapters(stream);
    stream << ")";
  }

  torch::nn::EmbeddingOptions options;
  torch::Tensor weight;

 protected:
  void create_adapter(const std::string& name) override {
    const auto& o = adapter_options(name);
    auto A = make_holder(o.r(), options.num_embeddings());
    auto B = make_holder(options.embedding_dim(), o.r());
    torch::NoGradGuard no_grad;
    if (o.init() != Init::Random) A->weight.zero_();
    else A->weight.normal_();
    B->weight.normal_();
    insert_adapter(name, A, B);
  }

  void rebuild_adapter_dicts() override { register_adapter_dicts("lora_embedding_A", "lora_embedding_B"); }

  void validate_options(const std::string& name, const AdapterOptions& o) const override {
    if (!o.enable().empty())
      throw std::invalid_argument(describe() + ": adapter '" + name +
                                  "' has a slice mask, but slice masks apply to Linear layers only");
  }

 private:
  torch::Tensor pending_weight_;  // consumed by reset()
};

/// A `ModuleHolder` for `LoRAEmbeddingImpl`, as `torch::nn::Embedding` is for `EmbeddingImpl`.
TORCH_MODULE(LoRAEmbedding);

}  // namespace lora
