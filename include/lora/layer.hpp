#pragma once
/// \file layer.hpp
/// `lora::LoRALayer`: what every LoRA-capable layer shares: named adapters,
/// the active set, merge / unmerge of the base weight. Layers (`LoRALinear`,
/// `LoRAEmbedding`) add their own forward, shapes and initialisation.
///
/// Adapters are stored as PEFT stores them: two `torch::nn::ModuleDict`s keyed by
/// adapter name ("default" unless told otherwise), each entry a bias-free
/// `torch::nn::Linear` whose `weight` is A or B, so parameter names read
/// `<layer>.lora_A.<adapter>.weight` and `<layer>.lora_B.<adapter>.weight`. An adapter of a
/// variant (DoRA) also has its variant module, in a third dict (variant.hpp).

#include <lora/config.hpp>
#include <lora/dora.hpp>
#include <lora/mixed.hpp>
#include <lora/variant.hpp>

#include <algorithm>
#include <memory>
#include <ostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace lora {

/// The adapter-facing interface of a LoRA-capable layer. Model-level functions
/// (`inject_lora`, `merge`, ...) find layers by `dynamic_cast` to this type.
class LoRALayer {
 public:
  virtual ~LoRALayer() = default;

  /// Throws `std::invalid_argument` if `add_adapter(name, options)` would be refused.
  void check_adapter(const std::string& name, const AdapterOptions& options) const {
    check_adapter_name(name);
    if (has_adapter(name))
      throw std::invalid_argument(describe() + ": adapter '" + name + "' already exists; pick another name or delete_adapter(\"" + name + "\") first");
    if (options.r() <= 0)
      throw std::invalid_argument(describe() + ": adapter '" + name + "' needs r > 0, got r=" + std::to_string(options.r()));
    if (options.dropout() < 0.0 || options.dropout() >= 1.0)
      throw std::invalid_argument(describe() + ": adapter '" + name + "' needs 0 <= dropout < 1, got " + std::to_string(options.dropout()));
    validate_options(name, options);
  }

  /// Adds (but does not activate) an adapter, initialised as `options.init()` says.
  void add_adapter(const std::string& name, const AdapterOptions& options) {
    check_adapter(name, options);
    options_.emplace(name, options);
    names_.push_back(name);
    create_adapter(name);
  }

  /// Removes an adapter (unmerge first if it is merged).
  void delete_adapter(const std::string& name) {
    require_adapter(name);
    if (is_merged(name))
      throw std::logic_error(describe() + ": adapter '" + name + "' is merged into the weight; unmerge() before deleting it");
    options_.erase(name);
    names_.erase(std::find(names_.begin(), names_.end(), name));
    active_.erase(std::remove(active_.begin(), active_.end(), name), active_.end());
    rebuild_adapter_dicts();
  }

  bool has_adapter(const std::string& name) const { return options_.count(name) > 0; }
  /// Adapter names in insertion order.
  const std::vector<std::string>& adapter_names() const { return names_; }
  const AdapterOptions& adapter_options(const std::string& name) const {
    require_adapter(name);
    return options_.at(name);
  }
  double scaling(const std::string& name) const { return adapter_options(name).scaling(); }

  /// Chooses which adapters the forward applies (their updates are summed).
  void set_active_adapters(const std::vector<std::string>& names) {
    check_active_adapters(names);
    active_ = names;
  }
  /// Throws what `set_active_adapters(names)` would throw, changing nothing.
  void check_active_adapters(const std::vector<std::string>& names) const {
    for (const auto& n : names) require_adapter(n);
    if (names.size() > 1)
      for (const auto& n : names)
        if (const AdapterVariant* v = variant(n))
          throw std::invalid_argument(describe() + ": adapter '" + n + "' is a " + v->variant_name() + " adapter, which must be "
                                      "the only active adapter of its layer (its magnitude rescales the whole weight, so a "
                                      "sum with " + join(names) + " has no single meaning); activate it alone");
    if (!merged_.empty() && names != active_)
      throw std::logic_error(describe() + ": cannot switch adapters while merged; unmerge() first");
  }
  const std::vector<std::string>& active_adapters() const { return active_; }

  /// The A weight ([r, in] for Linear) of adapter `name`.
  torch::Tensor& lora_A(const std::string& name) {
    require_adapter(name);
    return adapter_weight(dict_A(), name);
  }
  /// The B weight ([out, r] for Linear) of adapter `name`.
  torch::Tensor& lora_B(const std::string& name) {
    require_adapter(name);
    return adapter_weight(dict_B(), name);
  }

  /// The dense update of adapter `name` in the layout of the base weight and in the wider of
  /// float32 and the base weight's dtype: s·B·A for plain LoRA, W' − W0 for a variant (DoRA).
  /// Only merge and tests build it: the forward never does.
  torch::Tensor delta_weight(const std::string& name) {
    torch::Tensor d = lora_delta(name);
    if (!variant(name)) return d;
    return effective_weight(name, d).sub_(base_weight().detach().to(d.scalar_type()));
  }

  /// s·B·A of adapter `name` (slice masks expanded), detached, in the layout of the base weight and
  /// in the wider of float32 and the base weight's dtype: the plain-LoRA update, whatever the variant.
  virtual torch::Tensor lora_delta(const std::string& name) = 0;

  /// The variant of adapter `name` (DoRA), or nullptr for a plain LoRA adapter.
  virtual AdapterVariant* variant(const std::string& name) const = 0;

  /// The number of output features (Linear: out_features; Embedding: embedding_dim).
  virtual int64_t output_features() const = 0;
  /// `w` (the base weight's layout) as [output_features, ...], the layout variants see: the
  /// identity for Linear, the transpose for Embedding. Its own inverse.
  virtual torch::Tensor output_major(const torch::Tensor& w) const { return w; }

  /// The adapter of each row of the coming inputs, for a batch that mixes adapters (set for a
  /// scope by lora::AdapterPerRow): row i of the input's first dimension uses `names[index[i]]`, or
  /// no adapter where index[i] < 0 or this layer has no adapter of that name. An input of k times
  /// as many rows gives each choice to k consecutive rows (the beams of a prompt).
  struct RowAdapters {
    std::vector<std::string> names;
    std::vector<int64_t> index;
    MixedStrategy strategy = MixedStrategy::Auto;  ///< how layers compute the batch (mixed.hpp)
  };
  /// Setting or clearing the choices also drops the layer's stacked copy of its adapters.
  void set_row_adapters(std::shared_ptr<const RowAdapters> rows) {
    rows_ = std::move(rows);
    stack_.reset();
  }
  const std::shared_ptr<const RowAdapters>& row_adapters() const { return rows_; }

  /// Marks the base weight as also read by `user`, something that is not this layer (GPT-2's
  /// output head reads wte's weight: "lm_head"). An adapter here then changes only this layer's
  /// output while unmerged, but both once merged; `merge` warns about it (as PEFT does,
  /// huggingface/peft#2018), and `load_adapter` refuses a PEFT file that ties the adapters of
  /// tied layers (`ensure_weight_tying`) for this layer. Empty: not tied.
  void set_tied_to(std::string user) { tied_to_ = std::move(user); }
  const std::string& tied_to() const { return tied_to_; }

  /// Adds every active, not yet merged adapter into the base weight. Merging an
  /// already merged layer does nothing. With `safe`, nothing is written if the
  /// result would hold NaN or Inf. A copy of the unmerged weight is kept (outside
  /// the registered buffers) so that `unmerge()` restores it bit for bit; pass
  /// `keep_copy = false` when the merge is final (merge_and_unload).
  void merge(bool safe = false, bool keep_copy = true) {
    PendingMerge pending = prepare_merge();
    if (safe && !pending.finite())
      throw std::runtime_error(describe() + ": merging adapter(s) " + join(pending.names) +
                               " would put NaN/Inf into the weight; the weight was left untouched");
    commit_merge(pending, keep_copy);
  }

  /// A merge in two steps, so that a model-level safe merge checks every layer before writing
  /// any, building each merged weight once: the weight merging the active, not yet merged
  /// adapters gives (`weight` undefined when there are none), then `commit_merge` writes it.
  struct PendingMerge {
    std::vector<std::string> names;
    torch::Tensor weight;
    bool finite() const { return !weight.defined() || torch::isfinite(weight).all().item<bool>(); }
  };
  PendingMerge prepare_merge() {
    PendingMerge p;
    for (const auto& n : active_)
      if (!is_merged(n)) p.names.push_back(n);
    if (p.names.empty()) return p;
    torch::NoGradGuard no_grad;
    p.weight = merged_weight(p.names);
    return p;
  }
  void commit_merge(const PendingMerge& p, bool keep_copy) {
    if (!p.weight.defined()) return;
    torch::NoGradGuard no_grad;
    torch::Tensor& w = base_weight();
    if (!tied_to_.empty())
      TORCH_WARN(describe(), ": its weight is tied to '", tied_to_, "', so merging adapter(s) ", join(p.names),
                 " changes '", tied_to_, "' too, which the unmerged adapter does not: the merged model's outputs "
                 "differ from the adapter's (see huggingface/peft#2018)");
    if (keep_copy && !unmerged_weight_.defined()) unmerged_weight_ = w.detach().clone();
    w.copy_(p.weight);
    merged_.insert(merged_.end(), p.names.begin(), p.names.end());
  }

  /// Restores the weight saved by `merge()` exactly. Unmerging an unmerged layer does nothing.
  void unmerge() {
    if (merged_.empty()) return;
    if (!unmerged_weight_.defined())
      throw std::logic_error(describe() + ": the merge was final (merge_and_unload or keep_copy=false); nothing to restore");
    torch::NoGradGuard no_grad;
    base_weight().copy_(unmerged_weight_);
    unmerged_weight_ = torch::Tensor();
    merged_.clear();
  }

  bool merged() const { return !merged_.empty(); }
  bool is_merged(const std::string& name) const {
    return std::find(merged_.begin(), merged_.end(), name) != merged_.end();
  }

  /// Drops every adapter; a merged weight stays merged (merge_and_unload).
  /// Afterwards the parameter names are exactly those of the base layer.
  void unload() {
    options_.clear();
    names_.clear();
    active_.clear();
    merged_.clear();
    unmerged_weight_ = torch::Tensor();
    rebuild_adapter_dicts();
  }

  /// The frozen base weight W0 and bias (undefined when the layer has none).
  virtual torch::Tensor& base_weight() = 0;
  virtual torch::Tensor base_bias() = 0;
  /// e.g. "LoRALinear(in_features=768, out_features=2304)", used in errors.
  virtual std::string describe() const = 0;

  // ---- how PEFT files hold this layer's adapters (adapter_io.hpp asks, never casts) ----

  /// Which of PEFT's two key forms this layer's tensors take: "Linear" (`lora_A.weight`) or
  /// "Embedding" (`lora_embedding_A`).
  virtual std::string peft_key_form() const = 0;
  /// The key suffix of tensor `which` ("A" or "B") after the module path, e.g. "lora_A.weight"
  /// (Linear) or "lora_embedding_A" (Embedding).
  virtual std::string peft_key(const std::string& which) const = 0;
  /// The shape tensor `which` has in a file for rank r, e.g. A [r, in] and B [out, r] for Linear.
  virtual std::vector<int64_t> file_shape(const std::string& which, int64_t r) const = 0;
  /// Adapter `name` as a whole-layer adapter (what PEFT files hold and what add_weighted_adapter
  /// combines): A, B, rank and alpha, and a variant's own tensors by key suffix (DoRA:
  /// "lora_magnitude_vector"). Layers whose in-memory form differs (slice masks) give the exact
  /// whole-layer equivalent.
  struct WholeLayerForm {
    torch::Tensor A, B;
    int64_t r;
    double alpha;
    std::vector<std::pair<std::string, torch::Tensor>> extra;
  };
  WholeLayerForm whole_layer_form(const std::string& name) {
    WholeLayerForm f = lora_whole_layer_form(name);
    if (AdapterVariant* v = variant(name))
      f.extra = v->file_tensors(output_major(base_weight().detach()), output_major(lora_delta(name)));
    return f;
  }

 protected:
  virtual torch::nn::ModuleDict& dict_A() = 0;
  virtual torch::nn::ModuleDict& dict_B() = 0;
  /// Creates and registers A and B for `name` (options already stored).
  virtual void create_adapter(const std::string& name) = 0;
  /// Unregisters and re-registers the dicts from the current adapter set.
  virtual void rebuild_adapter_dicts() = 0;
  /// Layer-specific checks of new adapter options (slice masks, ...).
  virtual void validate_options(const std::string& name, const AdapterOptions& options) const = 0;
  /// A, B, rank and alpha of adapter `name` in PEFT's whole-layer form (see whole_layer_form).
  virtual WholeLayerForm lora_whole_layer_form(const std::string& name) {
    const auto& o = adapter_options(name);
    return {lora_A(name).detach(), lora_B(name).detach(), o.r(), o.alpha(), {}};
  }
  /// The output features adapter `name` adapts (a slice mask's enabled slices), empty for all.
  virtual std::vector<int64_t> adapted_features(const std::string& name) const {
    (void)name;
    return {};
  }

  /// The weight adapter `name` (a variant's) makes of W0, given its s·B·A `delta`, in the layout of
  /// the base weight and in `delta`'s dtype.
  torch::Tensor effective_weight(const std::string& name, const torch::Tensor& delta) {
    AdapterVariant* v = variant(name);
    torch::NoGradGuard no_grad;
    const torch::Tensor w = base_weight().detach();
    if (!v) return w.to(delta.scalar_type()) + delta;
    return output_major(v->effective_weight(output_major(w), output_major(delta)));
  }

  /// Merge errors name the adapter, so error texts need the list.
  static std::string join(const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "'" : ", '") + n + "'";
    return out;
  }

  void require_adapter(const std::string& name) const {
    if (!has_adapter(name))
      throw std::invalid_argument(describe() + ": no adapter named '" + name + "' (adapters: " +
                                  (names_.empty() ? std::string("none") : join(names_)) + ")");
  }

  static void check_adapter_name(const std::string& name) {
    if (name.empty() || name.find('.') != std::string::npos)
      throw std::invalid_argument("adapter name '" + name + "' is invalid: it must be non-empty and contain no '.'");
  }

  static torch::Tensor& adapter_weight(torch::nn::ModuleDict& dict, const std::string& name) {
    return dict->at<torch::nn::LinearImpl>(name).weight;
  }

  /// W0 + sum of the updates, computed in the wider of float32 and W0's dtype (a variant adapter,
  /// always alone: its effective weight).
  torch::Tensor merged_weight(const std::vector<std::string>& names) {
    if (names.size() == 1 && variant(names[0])) return effective_weight(names[0], lora_delta(names[0]));
    torch::Tensor w = base_weight();
    auto dtype = torch::promote_types(torch::kFloat32, w.scalar_type());
    torch::Tensor sum = w.to(dtype, /*non_blocking=*/false, /*copy=*/true);
    for (const auto& n : names) sum.add_(delta_weight(n).to(dtype));
    return sum;
  }

  /// Which of this layer's adapters each of the `batch` rows of a mixed batch uses (AdapterPerRow's
  /// choices expanded over groups of consecutive rows; -1 where the row has none or this layer
  /// lacks its adapter). Throws when the rows do not match the choices or the layer is merged.
  detail::RowSlots row_slots(int64_t batch) const {
    const RowAdapters& rows = *rows_;
    const auto choices = static_cast<int64_t>(rows.index.size());
    if (choices == 0 || batch % choices != 0)
      throw std::invalid_argument(describe() + ": the input has " + std::to_string(batch) + " rows but lora::AdapterPerRow " +
                                  "was given " + std::to_string(choices) + " adapter choices, one per row (or per group of " +
                                  "consecutive rows, such as the beams of a prompt)");
    const int64_t group = batch / choices;  // beam search: k rows per prompt, prompt-major
    if (!merged_.empty())
      throw std::logic_error(describe() + ": a batch that mixes adapters needs the adapters unmerged; unmerge() first");
    std::vector<int64_t> layer_slot(rows.names.size(), -1);
    detail::RowSlots out;
    out.slot.assign(static_cast<size_t>(batch), -1);
    for (int64_t i = 0; i < batch; ++i) {
      const int64_t k = rows.index[static_cast<size_t>(i / group)];
      if (k < 0 || !has_adapter(rows.names[static_cast<size_t>(k)])) continue;
      auto& ls = layer_slot[static_cast<size_t>(k)];
      if (ls < 0) {
        ls = static_cast<int64_t>(out.present.size());
        out.present.push_back(rows.names[static_cast<size_t>(k)]);
      }
      out.slot[static_cast<size_t>(i)] = ls;
    }
    return out;
  }

  /// The adapters `rows.present` stacked in `dtype` on `device` (mixed.hpp): `a_of(name)` gives A
  /// [r, a_cols] and `b_of(name)` the dense B [b_rows, r] (slice masks expanded). Built once and
  /// kept while the AdapterPerRow scope lives; rebuilt when an adapter's tensors change.
  template <class AOf, class BOf>
  const detail::AdapterStack& adapter_stack(const detail::RowSlots& rows, torch::ScalarType dtype, torch::Device device,
                                            AOf&& a_of, BOf&& b_of) {
    std::vector<detail::AdapterStack::Source> key;
    for (const auto& name : rows.present)
      for (const torch::Tensor* t : {&lora_A(name), &lora_B(name)})
        key.push_back({t->unsafeGetTensorImpl(), t->data_ptr(), static_cast<int64_t>(t->_version()), scaling(name)});
    if (stack_ && stack_->key == key && stack_->dtype == dtype && stack_->device == device) return *stack_;
    torch::NoGradGuard no_grad;
    auto s = std::make_shared<detail::AdapterStack>();
    s->key = std::move(key);
    s->dtype = dtype;
    s->device = device;
    std::vector<torch::Tensor> As, BTs;
    int64_t total = 0;
    for (const auto& name : rows.present) {
      As.push_back(a_of(name).detach().to(device, dtype));
      BTs.push_back((b_of(name).detach().to(device, dtype) * scaling(name)).t());
      s->offset.push_back(total);
      s->rank.push_back(As.back().size(0));
      total += As.back().size(0);
    }
    s->A_cat = torch::cat(As, 0);
    s->BT_cat = torch::cat(BTs, 0);
    stack_ = std::move(s);
    return *stack_;
  }

  /// ", adapters=[default: r=4, alpha=32]" (and ", merged=true"), for pretty_print.
  void print_adapters(std::ostream& stream) const {
    if (names_.empty()) return;
    stream << ", adapters=[";
    for (size_t i = 0; i < names_.size(); ++i) {
      const auto& o = options_.at(names_[i]);
      stream << (i ? ", " : "") << names_[i] << ": r=" << o.r() << ", alpha=" << o.alpha();
      if (const AdapterVariant* v = variant(names_[i])) stream << ", " << v->variant_name();
    }
    stream << "]" << (merged() ? ", merged=true" : "");
  }

  /// W0 as it was before the first merge (undefined when not merged); not a registered buffer,
  /// so it stays out of state dicts; the layer's to() and clone() carry it along.
  torch::Tensor& unmerged_weight() { return unmerged_weight_; }
  const torch::Tensor& unmerged_weight() const { return unmerged_weight_; }

 private:
  /// Adapter options by name, names in insertion order, the active and the merged ones.
  std::map<std::string, AdapterOptions> options_;
  std::vector<std::string> names_;
  std::vector<std::string> active_;
  std::vector<std::string> merged_;
  torch::Tensor unmerged_weight_;
  std::string tied_to_;
  std::shared_ptr<const RowAdapters> rows_;
  std::shared_ptr<detail::AdapterStack> stack_;  // the mixed batch's stacked adapters, for the scope
};

/// "[2304,8]": a shape as this library's error messages print it.
inline std::string shape_str(torch::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out + "]";
}

namespace detail {
using lora::shape_str;
}  // namespace detail

/// The base a LoRA-capable layer type derives from (docs/guide.md, "Adding a layer type"):
/// `torch::nn::Cloneable<Derived>` plus `LoRALayer`, with the Module plumbing they share:
/// `clone()` and `to()` overrides that keep requires_grad flags and the saved unmerged weight,
/// the adapter dicts, and the adapters' variants.
template <class Derived>
class LoRAModule : public torch::nn::Cloneable<Derived>, public LoRALayer {
 public:
  std::shared_ptr<torch::nn::Module> clone(
      const c10::optional<torch::Device>& device = c10::nullopt) const override {
    auto copy = std::dynamic_pointer_cast<Derived>(torch::nn::Cloneable<Derived>::clone(device));
    // Cloneable::clone re-registers parameters with requires_grad = true, which would
    // unfreeze W0 (it does so for a plain torch::nn::Linear too): mirror our flags.
    auto dst = copy->named_parameters(/*recurse=*/true);
    for (const auto& p : this->named_parameters(/*recurse=*/true))
      dst[p.key()].requires_grad_(p.value().requires_grad());
    if (unmerged_weight().defined())
      copy->unmerged_weight() = device ? unmerged_weight().to(*device, false, true) : unmerged_weight().clone();
    return copy;
  }

  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override {
    torch::nn::Module::to(device, dtype, non_blocking);
    if (unmerged_weight().defined()) unmerged_weight() = unmerged_weight().to(device, dtype, non_blocking);
  }
  void to(torch::Dtype dtype, bool non_blocking = false) override {
    torch::nn::Module::to(dtype, non_blocking);
    if (unmerged_weight().defined()) unmerged_weight() = unmerged_weight().to(dtype, non_blocking);
  }
  void to(torch::Device device, bool non_blocking = false) override {
    torch::nn::Module::to(device, non_blocking);
    if (unmerged_weight().defined()) unmerged_weight() = unmerged_weight().to(device, non_blocking);
  }

  AdapterVariant* variant(const std::string& name) const override {
    for (const auto& [dict_name, dict] : V_)
      if (dict->contains(name)) return dynamic_cast<AdapterVariant*>((*dict)[name].get());
    return nullptr;
  }

 protected:
  /// Registers the two adapter dicts (named as PEFT names them) and fills them from
  /// the stored options; called from the layer's reset() and after delete_adapter().
  /// Adapters that were already registered keep their holders (and so their trained values and
  /// storage); only new names are created.
  /// Variants' dicts (one per variant kind, registered while an adapter uses it) are rebuilt alike.
  void register_adapter_dicts(const char* name_A, const char* name_B) {
    auto& self = static_cast<Derived&>(*this);
    std::map<std::string, std::shared_ptr<torch::nn::Module>> kept_A, kept_B, kept_V;
    if (self.named_children().contains(name_A)) {
      for (const auto& item : A_->items()) kept_A[item.first] = item.second;
      for (const auto& item : B_->items()) kept_B[item.first] = item.second;
      self.unregister_module(name_A);
      self.unregister_module(name_B);
    }
    for (const auto& [dict_name, dict] : V_)  // after clone()'s copy, V_ names the original's dicts: none is a child
      if (self.named_children().contains(dict_name)) {
        for (const auto& item : dict->items()) kept_V[item.first] = item.second;
        self.unregister_module(dict_name);
      }
    V_.clear();
    A_ = self.register_module(name_A, torch::nn::ModuleDict());
    B_ = self.register_module(name_B, torch::nn::ModuleDict());
    for (const auto& n : adapter_names()) {
      if (kept_A.count(n) && kept_B.count(n)) {
        A_->update({{n, kept_A[n]}});
        B_->update({{n, kept_B[n]}});
        if (kept_V.count(n)) variant_dict(dynamic_cast<AdapterVariant&>(*kept_V[n]).dict_name())->update({{n, kept_V[n]}});
      } else {
        create_adapter(n);
      }
    }
  }

  /// A bias-free Linear whose weight [rows, cols] holds an adapter matrix; its own
  /// initialisation is kaiming_uniform(a = sqrt(5)), which is LoRA's init for A.
  static torch::nn::Linear make_holder(int64_t rows, int64_t cols) {
    return torch::nn::Linear(torch::nn::LinearOptions(cols, rows).bias(false));
  }

  /// Moves A and B to the base weight's device and the adapter's dtype, then registers them.
  void insert_adapter(const std::string& name, torch::nn::Linear A, torch::nn::Linear B) {
    const auto device = this->base_weight().device();
    const auto dtype = adapter_options(name).dtype();
    A->to(device, dtype);
    B->to(device, dtype);
    A_->update({{name, A.ptr()}});
    B_->update({{name, B.ptr()}});
    const auto& o = adapter_options(name);
    std::shared_ptr<torch::nn::Module> module;
    if (o.use_dora()) module = std::make_shared<DoRAImpl>(output_features(), adapted_features(name));
    // A new variant is wired in here (and in AdapterOptions, LoRAConfig and the PEFT config reader).
    if (!module) return;
    module->to(device, dtype);
    auto& v = dynamic_cast<AdapterVariant&>(*module);
    v.init(output_major(this->base_weight().detach()), output_major(lora_delta(name)));
    variant_dict(v.dict_name())->update({{name, module}});
  }

  /// The layer's dict for variants of kind `dict_name`, registered on first use.
  torch::nn::ModuleDict& variant_dict(const std::string& dict_name) {
    auto it = V_.find(dict_name);
    if (it == V_.end())
      it = V_.emplace(dict_name, static_cast<Derived&>(*this).register_module(dict_name, torch::nn::ModuleDict())).first;
    return it->second;
  }

  /// A forward in training mode, with gradients on, through a merged trainable adapter would
  /// train nothing (the adapter is inside W0): every LoRA layer refuses it.
  void check_not_training_merged(const std::string& name) {
    if (this->is_training() && torch::GradMode::is_enabled() && lora_A(name).requires_grad())
      throw std::logic_error(describe() + ": adapter '" + name +
                             "' is merged into the weight, so training it now would give it no gradient; "
                             "call lora::unmerge(model) before training, or eval() for inference");
  }

  torch::nn::ModuleDict& dict_A() override { return A_; }
  torch::nn::ModuleDict& dict_B() override { return B_; }

  torch::nn::ModuleDict A_{nullptr}, B_{nullptr};
  std::map<std::string, torch::nn::ModuleDict> V_;  // variants' dicts by name ("lora_magnitude_vector")
};

}  // namespace lora
