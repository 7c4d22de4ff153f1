#pragma once
/// \file linear.hpp
/// `lora::LoRALinear`: a drop-in for `torch::nn::Linear` that can carry adapters.

#include <lora/layer.hpp>
#include <lora/linear_function.hpp>

#include <ostream>

namespace lora {

namespace detail {

inline int64_t count_enabled(const std::vector<bool>& enable) {
  return static_cast<int64_t>(std::count(enable.begin(), enable.end(), true));
}

}  // namespace detail

/// A `torch::nn::Linear` with LoRA adapters:
///
///     y = x W0ᵀ + b + Σ_active  s · dropout(x) Aᵀ Bᵀ,   s = alpha / r  (alpha / sqrt(r) with rsLoRA)
///
/// Input (..., in_features), output (..., out_features). Same constructors, same
/// `weight` [out, in] and `bias` [out] parameters (same names, same initialisation
/// and RNG use) as `torch::nn::Linear`, so a base checkpoint loads unchanged and,
/// with no adapter, the output is bit for bit that of `torch::nn::Linear`.
/// Adapters live in `lora_A.<name>.weight` [r, in] and `lora_B.<name>.weight`
/// [out, r], as in PEFT. A starts kaiming-uniform (a = sqrt(5)), B at zero.
///
/// Slice masks (loralib's MergedLinear): for a fused projection such as GPT-2's
/// c_attn (q, k, v stacked on the output axis), `AdapterOptions::enable({true,false,true})`
/// splits the output into n equal slices and adapts only the enabled ones.
/// Then A is [k·r, in] and B is [k·out/n, r] for k enabled slices (loralib's
/// shapes): slice i of A and of B form the i-th enabled slice's update, and the
/// rows of ΔW for disabled slices are exactly zero.
///
/// Merging adds s·B·A into `weight`; while merged the forward does not add the
/// adapter again. A forward in training mode with gradients enabled on a merged,
/// trainable adapter is an error (the adapter would get no gradient).
///
/// Example:
/// \code
///   lora::LoRALinear proj(768, 2304);                     // as torch::nn::Linear(768, 2304)
///   proj->add_adapter("default", lora::AdapterOptions(8).alpha(16));
///   proj->set_active_adapters({"default"});
///   auto y = proj(torch::randn({4, 768}));                // [4, 2304]
/// \endcode
class LoRALinearImpl : public LoRAModule<LoRALinearImpl> {
 public:
  LoRALinearImpl(int64_t in_features, int64_t out_features)
      : LoRALinearImpl(torch::nn::LinearOptions(in_features, out_features)) {}
  explicit LoRALinearImpl(const torch::nn::LinearOptions& options_) : options(options_) { reset(); }
  /// Wraps an existing Linear: W0 and b are the same tensors as `base`'s (shared, not copied).
  explicit LoRALinearImpl(const torch::nn::Linear& base)
      : options(base->options), pending_weight_(base->weight), pending_bias_(base->bias) {
    reset();
  }

  void reset() override {
    const bool shared = pending_weight_.defined();
    weight = shared ? register_parameter("weight", pending_weight_, pending_weight_.requires_grad())
                    : register_parameter("weight", torch::empty({options.out_features(), options.in_features()}));
    if (!options.bias())
      bias = register_parameter("bias", {}, /*requires_grad=*/false);
    else if (shared && pending_bias_.defined())
      bias = register_parameter("bias", pending_bias_, pending_bias_.requires_grad());
    else
      bias = register_parameter("bias", torch::empty(options.out_features()));
    if (!shared) reset_parameters();
    pending_weight_ = pending_bias_ = torch::Tensor();
    register_adapter_dicts("lora_A", "lora_B");
  }

  /// Initialises W0 and b exactly as `torch::nn::Linear` does.
  void reset_parameters() {
    torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
    if (bias.defined()) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(options.in_features()));
      torch::nn::init::uniform_(bias, -bound, bound);
    }
  }

  /// y = x W0ᵀ + b + Σ_active s · dropout(x) Aᵀ Bᵀ (merged adapters are already in W0).
  /// With adapters, one autograd node computes it (linear_function.hpp): the backward does
  /// the adapter's arithmetic only and keeps x, h = dropout(x)·Aᵀ and a dropout seed or mask.
  torch::Tensor forward(const torch::Tensor& input) {
    if (row_adapters()) return mixed_forward(input);
    detail::LinearPlan plan;
    std::vector<std::pair<torch::Tensor, torch::Tensor>> adapters;
    for (const auto& name : active_adapters()) {
      if (is_merged(name)) {
        check_not_training_merged(name);
        continue;
      }
      if (AdapterVariant* v = variant(name)) return variant_forward(input, name, *v);  // active alone
      const auto& o = adapter_options(name);
      plan.terms.push_back({o.scaling(), o.dropout(), o.enable()});
      adapters.emplace_back(lora_A(name), lora_B(name));
    }
    if (adapters.empty()) return torch::nn::functional::linear(input, weight, bias);
    check_input(input);
    plan.has_bias = bias.defined();
    plan.train = is_training();
    torch::Tensor y = detail::lora_linear(input.reshape({-1, options.in_features()}), weight, bias, adapters, plan);
    return y.view(output_sizes(input));
  }

  /// The forward of a variant adapter (DoRA): the plain-LoRA pieces, which `variant` combines.
  /// Without dropout one lean node computes x·W0ᵀ + s·x·Aᵀ·Bᵀ; with dropout in training the
  /// pieces go through stock autograd (x'·W0ᵀ is a second base-sized product).
  torch::Tensor variant_forward(const torch::Tensor& input, const std::string& name, AdapterVariant& variant) {
    check_input(input);
    const auto& o = adapter_options(name);
    const torch::Tensor x = input.reshape({-1, options.in_features()});
    const torch::Tensor& A = lora_A(name);
    VariantTerms t;
    t.bias = bias;
    t.weight = weight;
    t.delta = lora_delta(name);
    if (is_training() && o.dropout() > 0) {
      t.base = torch::nn::functional::linear(x, weight, bias);
      const torch::Tensor xd = torch::dropout(x, o.dropout(), /*train=*/true);
      t.plain = torch::nn::functional::linear(xd, weight);
      const torch::Tensor B = detail::full_B(lora_B(name), o.enable(), options.out_features());
      t.update = torch::mm(torch::mm(xd.to(A.scalar_type()), A.t()), B.t()).mul(o.scaling()).to(t.base.scalar_type());
    } else {
      detail::LinearPlan plan;
      plan.terms.push_back({o.scaling(), 0.0, o.enable()});
      t.fused = detail::lora_linear(x, weight, torch::Tensor(), {{A, lora_B(name)}}, plan);
    }
    return variant.forward(t).view(output_sizes(input));
  }

  /// A batch whose rows use different adapters (lora::AdapterPerRow): the base GEMM once for all
  /// rows, then each row's own adapter added in place, stacked or segmented by cost (mixed.hpp).
  /// Inference only: no dropout.
  torch::Tensor mixed_forward(const torch::Tensor& input) {
    if (input.dim() < 2) throw std::invalid_argument(describe() + ": a mixed-adapter batch needs inputs of shape [batch, ..., in]");
    torch::Tensor y = torch::nn::functional::linear(input, weight, bias);
    const auto rows = row_slots(input.size(0));
    if (rows.empty()) return y;
    const auto& stack = adapter_stack(
        rows, y.scalar_type(), y.device(), [&](const std::string& n) { return lora_A(n); },
        [&](const std::string& n) { return detail::full_B(lora_B(n), adapter_options(n).enable(), options.out_features()); });
    torch::Tensor y2d = y.view({-1, options.out_features()});
    detail::add_mixed_linear(y2d, input.reshape({-1, options.in_features()}).to(y.scalar_type()), rows, stack,
                             row_adapters()->strategy);
    return y;
  }

  torch::Tensor lora_delta(const std::string& name) override {
    const auto& o = adapter_options(name);
    const auto dtype = torch::promote_types(torch::kFloat32, weight.scalar_type());
    torch::Tensor A = lora_A(name).detach().to(dtype), B = lora_B(name).detach().to(dtype);
    return torch::mm(detail::full_B(B, o.enable(), options.out_features()), A).mul_(o.scaling());
  }

  torch::Tensor& base_weight() override { return weight; }
  torch::Tensor base_bias() override { return bias; }

  int64_t output_features() const override { return options.out_features(); }

  std::string peft_key_form() const override { return "Linear"; }
  std::string peft_key(const std::string& which) const override { return "lora_" + which + ".weight"; }
  std::vector<int64_t> file_shape(const std::string& which, int64_t r) const override {
    return which == "A" ? std::vector<int64_t>{r, options.in_features()} : std::vector<int64_t>{options.out_features(), r};
  }
  /// With a slice mask, the exact whole-layer equivalent: B expanded to [out, k·r] with its
  /// blocks on their output slices (zero elsewhere), rank k·r and alpha·k (alpha·√k under
  /// rsLoRA) so that the scaling stays the same.
  WholeLayerForm lora_whole_layer_form(const std::string& name) override {
    const auto& o = adapter_options(name);
    torch::Tensor A = lora_A(name).detach(), B = lora_B(name).detach();
    if (o.enable().empty()) return {A, B, o.r(), o.alpha(), {}};
    const int64_t k = detail::count_enabled(o.enable());
    const torch::Tensor full = detail::full_B(B, o.enable(), options.out_features());
    const double factor = o.use_rslora() ? std::sqrt(double(k)) : double(k);
    return {A, full, k * o.r(), o.alpha() * factor, {}};
  }

  std::string describe() const override {
    return "LoRALinear(in_features=" + std::to_string(options.in_features()) +
           ", out_features=" + std::to_string(options.out_features()) + ")";
  }

  /// `lora::LoRALinear(in_features=768, out_features=2304, bias=true, adapters=[default: r=4, alpha=32])`
  void pretty_print(std::ostream& stream) const override {
    stream << std::boolalpha << "lora::LoRALinear(in_features=" << options.in_features()
           << ", out_features=" << options.out_features() << ", bias=" << options.bias();
    print_adapters(stream);
    stream << ")";
  }

  torch::nn::LinearOptions options;
  /// W0 [out, in] and b [out], the names torch::nn::Linear uses.
  torch::Tensor weight;
  torch::Tensor bias;

 protected:
  void create_adapter(const std::string& name) override {
    const auto& o = adapter_options(name);
    const int64_t n = o.enable().empty() ? 1 : static_cast<int64_t>(o.enable().size());
    const int64_t k = o.enable().empty() ? 1 : detail::count_enabled(o.enable());
    auto A = make_holder(k * o.r(), options.in_features());  // kaiming_uniform(a = sqrt(5))
    auto B = make_holder(k * (options.out_features() / n), o.r());
    torch::NoGradGuard no_grad;
    if (o.init() == Init::Gaussian) A->weight.normal_(0.0, 1.0 / static_cast<double>(o.r()));
    if (o.init() != Init::Random) B->weight.zero_();
    insert_adapter(name, A, B);
  }

  void rebuild_adapter_dicts() override { register_adapter_dicts("lora_A", "lora_B"); }

  /// With a slice mask, the output features of the enabled slices.
  std::vector<int64_t> adapted_features(const std::string& name) const override {
    const auto& enable = adapter_options(name).enable();
    std::vector<int64_t> rows;
    if (enable.empty()) return rows;
    const int64_t slice = options.out_features() / static_cast<int64_t>(enable.size());
    for (int64_t j = 0; j < static_cast<int64_t>(enable.size()); ++j)
      if (enable[static_cast<size_t>(j)])
        for (int64_t i = j * slice; i < (j + 1) * slice; ++i) rows.push_back(i);
    return rows;
  }

  void validate_options(const std::string& name, const AdapterOptions& o) const override {
    if (o.enable().empty()) return;
    const auto n = static_cast<int64_t>(o.enable().size());
    if (detail::count_enabled(o.enable()) == 0)
      throw std::invalid_argument(describe() + ": adapter '" + name + "' has a slice mask that enables no slice");
    if (options.out_features() % n != 0)
      throw std::invalid_argument(describe() + ": adapter '" + name + "' splits out_features=" +
                                  std::to_string(options.out_features()) + " into " + std::to_string(n) +
                                  " slices, which does not divide evenly: check the slice mask's length");
  }

 private:
  void check_input(const torch::Tensor& input) const {
    if (input.dim() == 0 || input.size(-1) != options.in_features())
      throw std::invalid_argument(describe() + ": input of shape " + detail::shape_str(input.sizes()) + " does not end in in_features=" +
                                  std::to_string(options.in_features()));
  }
  std::vector<int64_t> output_sizes(const torch::Tensor& input) const {
    auto sizes = input.sizes().vec();
    sizes.back() = options.out_features();
    return sizes;
  }

  torch::Tensor pending_weight_, pending_bias_;  // set by the wrapping constructor, consumed by reset()
};

/// A `ModuleHolder` for `LoRALinearImpl`, as `torch::nn::Linear` is for `LinearImpl`.
TORCH_MODULE(LoRALinear);

}  // namespace lora
