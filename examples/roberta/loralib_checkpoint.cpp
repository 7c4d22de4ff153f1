#include "loralib_checkpoint.hpp"

#include <caffe2/serialize/inline_container.h>

#include <cstdio>
#include <cstring>
#include <fstream>

namespace roberta {

namespace {

/// A value of the pickle machine: just what torch.save writes for a state dict.
struct PValue {
  enum Kind { None, Mark, Int, Float, Str, Tuple, Dict, Global, Storage, Tensor } kind = None;
  int64_t i = 0;
  double f = 0;
  std::string s, s2;  // Str; Global: module, name; Storage: key
  std::vector<PValue> items;  // Tuple; Dict: key, value, key, value, ...
  torch::Dtype dtype = torch::kFloat;
  torch::Tensor tensor;
};

/// The tensors of a torch.save'd {name: tensor} dict (zip format; protocol 2 pickle with
/// persistent storages), mapped to the CPU. Hand-written because LibTorch 1.13's unpickler turns
/// the state dict's collections.OrderedDict into None.
std::vector<std::pair<std::string, torch::Tensor>> read_torch_save(const std::string& path) {
  caffe2::serialize::PyTorchStreamReader zip(path);
  auto [pkl, pkl_size] = zip.getRecord("data.pkl");
  const auto* p = static_cast<const uint8_t*>(pkl.get());
  const uint8_t* const end = p + pkl_size;
  auto fail = [&](const std::string& what) -> std::runtime_error {
    return std::runtime_error("'" + path + "' data.pkl at byte " + std::to_string(p - static_cast<const uint8_t*>(pkl.get())) + ": " + what);
  };
  auto take = [&](size_t n) {
    if (static_cast<size_t>(end - p) < n) throw fail("truncated");
    const uint8_t* at = p;
    p += n;
    return at;
  };
  auto le = [&](size_t n) {
    const uint8_t* b = take(n);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= uint64_t(b[k]) << (8 * k);
    return v;
  };
  auto line = [&] {
    std::string out;
    for (char c; (c = static_cast<char>(*take(1))) != '\n';) out += c;
    return out;
  };
  std::vector<PValue> stack;
  std::map<uint64_t, PValue> memo;
  auto pop = [&] {
    if (stack.empty()) throw fail("stack underflow");
    PValue v = std::move(stack.back());
    stack.pop_back();
    return v;
  };
  auto pop_to_mark = [&] {
    std::vector<PValue> out;
    while (!stack.empty() && stack.back().kind != PValue::Mark) out.insert(out.begin(), pop());
    if (stack.empty()) throw fail("no MARK");
    stack.pop_back();
    return out;
  };
  auto tuple = [](std::vector<PValue> items) {
    PValue v;
    v.kind = PValue::Tuple;
    v.items = std::move(items);
    return v;
  };
  static const std::map<std::string, torch::Dtype> storages = {{"FloatStorage", torch::kFloat},   {"HalfStorage", torch::kHalf},
                                                               {"BFloat16Storage", torch::kBFloat16}, {"DoubleStorage", torch::kDouble},
                                                               {"LongStorage", torch::kLong},     {"IntStorage", torch::kInt}};
  while (true) {
    const uint8_t op = *take(1);
    PValue v;
    switch (op) {
      case 0x80: take(1); break;                              // PROTO
      case 0x95: take(8); break;                              // FRAME
      case '(': v.kind = PValue::Mark; stack.push_back(v); break;
      case ')': stack.push_back(tuple({})); break;            // EMPTY_TUPLE
      case '}': v.kind = PValue::Dict; stack.push_back(v); break;
      case 'N': stack.push_back(v); break;
      case 0x88: case 0x89: v.kind = PValue::Int; v.i = op == 0x88; stack.push_back(v); break;  // NEWTRUE, NEWFALSE
      case 'K': v.kind = PValue::Int; v.i = static_cast<int64_t>(le(1)); stack.push_back(v); break;
      case 'M': v.kind = PValue::Int; v.i = static_cast<int64_t>(le(2)); stack.push_back(v); break;
      case 'J': v.kind = PValue::Int; v.i = static_cast<int32_t>(le(4)); stack.push_back(v); break;
      case 0x8a: {  // LONG1: little-endian two's complement of n bytes
        const size_t n = le(1);
        if (n > 8) throw fail("integer too long");
        uint64_t u = le(n);
        if (n > 0 && n < 8 && (u >> (8 * n - 1)) & 1) u |= ~uint64_t(0) << (8 * n);
        v.kind = PValue::Int;
        v.i = static_cast<int64_t>(u);
        stack.push_back(v);
        break;
      }
      case 'G': {  // BINFLOAT, big-endian
        uint64_t u = 0;
        for (const uint8_t* b = take(8), *e = b + 8; b < e; ++b) u = (u << 8) | *b;
        v.kind = PValue::Float;
        std::memcpy(&v.f, &u, 8);
        stack.push_back(v);
        break;
      }
      case 'X': case 0x8c: {  // BINUNICODE, SHORT_BINUNICODE
        const size_t n = le(op == 'X' ? 4 : 1);
        v.kind = PValue::Str;
        v.s.assign(reinterpret_cast<const char*>(take(n)), n);
        stack.push_back(v);
        break;
      }
      case 'c': v.kind = PValue::Global; v.s = line(); v.s2 = line(); stack.push_back(v); break;
      case 'q': memo[le(1)] = stack.empty() ? PValue() : stack.back(); break;
      case 'r': memo[le(4)] = stack.empty() ? PValue() : stack.back(); break;
      case 0x94: memo[memo.size()] = stack.empty() ? PValue() : stack.back(); break;  // MEMOIZE
      case 'h': case 'j': {
        const auto it = memo.find(le(op == 'h' ? 1 : 4));
        if (it == memo.end()) throw fail("memo entry not found");
        stack.push_back(it->second);
        break;
      }
      case 't': stack.push_back(tuple(pop_to_mark())); break;
      case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
        std::vector<PValue> items(op - 0x84);
        for (size_t k = items.size(); k-- > 0;) items[k] = pop();
        stack.push_back(tuple(std::move(items)));
        break;
      }
      case 'Q': {  // BINPERSID: ('storage', <Global torch XStorage>, key, location, numel)
        const PValue id = pop();
        if (id.kind != PValue::Tuple || id.items.size() < 5 || id.items[0].s != "storage" || id.items[1].kind != PValue::Global)
          throw fail("a persistent id that is not a tensor storage");
        const auto dt = storages.find(id.items[1].s2);
        if (dt == storages.end()) throw fail("storage type " + id.items[1].s2 + " is not supported");
        v.kind = PValue::Storage;
        v.dtype = dt->second;
        v.s = id.items[2].s;
        v.i = id.items[4].i;
        stack.push_back(v);
        break;
      }
      case 'R': {  // REDUCE
        const PValue args = pop(), fn = pop();
        if (fn.kind == PValue::Global && fn.s == "collections" && fn.s2 == "OrderedDict") {
          v.kind = PValue::Dict;
        } else if (fn.kind == PValue::Global && fn.s == "torch._utils" && fn.s2 == "_rebuild_tensor_v2") {
          // (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
          if (args.items.size() < 4 || args.items[0].kind != PValue::Storage) throw fail("_rebuild_tensor_v2 with unexpected arguments");
          const PValue& st = args.items[0];
          auto [data, bytes] = zip.getRecord("data/" + st.s);
          const int64_t element = static_cast<int64_t>(c10::elementSize(st.dtype));
          if (static_cast<int64_t>(bytes) != st.i * element) throw fail("storage " + st.s + " has " + std::to_string(bytes) + " bytes");
          std::vector<int64_t> size, stride;
          for (const auto& x : args.items[2].items) size.push_back(x.i);
          for (const auto& x : args.items[3].items) stride.push_back(x.i);
          // Every element the view reaches must lie in the storage (a bad file must not read past it).
          int64_t last = args.items[1].i;
          bool empty = false;
          if (size.size() != stride.size() || last < 0) throw fail("tensor with a bad size, stride or offset");
          for (size_t k = 0; k < size.size(); ++k) {
            if (size[k] < 0 || stride[k] < 0) throw fail("tensor with a negative size or stride");
            empty = empty || size[k] == 0;
            if (size[k] > 0) last += (size[k] - 1) * stride[k];
          }
          if (!empty && last >= st.i) throw fail("tensor reaches element " + std::to_string(last) + " of a storage of " + std::to_string(st.i));
          const torch::Tensor storage = torch::from_blob(data.get(), {st.i}, torch::TensorOptions().dtype(st.dtype));
          v.kind = PValue::Tensor;
          v.tensor = storage.as_strided(size, stride, args.items[1].i).clone();  // owns its bytes
        } else {
          throw fail("call of " + fn.s + "." + fn.s2 + ": not part of a tensor state dict");
        }
        stack.push_back(v);
        break;
      }
      case 'u': case 's': {  // SETITEMS, SETITEM
        std::vector<PValue> kv = op == 'u' ? pop_to_mark() : std::vector<PValue>{};
        if (op == 's') {
          kv.resize(2);
          kv[1] = pop();
          kv[0] = pop();
        }
        if (stack.empty() || stack.back().kind != PValue::Dict || kv.size() % 2) throw fail("SETITEMS outside a dict");
        for (auto& x : kv) stack.back().items.push_back(std::move(x));
        break;
      }
      case 'b': pop(); break;  // BUILD: a state dict's _metadata, not needed
      case '.': {
        const PValue top = pop();
        if (top.kind != PValue::Dict) throw fail("the pickled object is not a dict");
        std::vector<std::pair<std::string, torch::Tensor>> out;
        for (size_t k = 0; k + 1 < top.items.size(); k += 2) {
          if (top.items[k].kind != PValue::Str || top.items[k + 1].kind != PValue::Tensor) throw fail("entries must be name -> tensor");
          out.emplace_back(top.items[k].s, top.items[k + 1].tensor);
        }
        return out;
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        throw fail(std::string("pickle opcode ") + hex + " is not supported");
      }
    }
  }
}

}  // namespace

LoralibCheckpoint read_loralib_checkpoint(const std::string& path) {
  if (!std::ifstream(path, std::ios::binary)) throw std::runtime_error("cannot read loralib checkpoint '" + path + "'");
  std::vector<std::pair<std::string, torch::Tensor>> entries;
  try {
    entries = read_torch_save(path);
  } catch (const c10::Error& e) {
    throw std::runtime_error("loralib checkpoint '" + path + "' cannot be read (" + e.what_without_backtrace() +
                             "): is it a state dict saved by torch.save (zip format)?");
  }
  LoralibCheckpoint ckpt;
  std::map<std::string, torch::Tensor> as, bs;
  for (const auto& [key, t] : entries) {
    const auto dot = key.rfind('.');
    const std::string module = key.substr(0, dot), leaf = dot == std::string::npos ? key : key.substr(dot + 1);
    if (leaf == "lora_A")
      as[module] = t;
    else if (leaf == "lora_B")
      bs[module] = t;
    else if (key.rfind("classifier.", 0) == 0)
      ckpt.classifier.insert(key, t);
    else
      throw std::runtime_error("loralib checkpoint '" + path + "': tensor '" + key +
                               "' is neither a LoRA A/B nor part of the classifier: is it a loralib adapter checkpoint?");
  }
  for (const auto& [module, A] : as) {
    const auto b = bs.find(module);
    if (b == bs.end()) throw std::runtime_error("loralib checkpoint '" + path + "': '" + module + ".lora_A' has no lora_B");
    if (A.dim() != 2 || b->second.dim() != 2 || A.size(0) != b->second.size(1))
      throw std::runtime_error("loralib checkpoint '" + path + "': '" + module + "' has A " + lora::shape_str(A.sizes()) + " and B " +
                               lora::shape_str(b->second.sizes()) + ": expected [r, in] and [out, r]");
    if (ckpt.rank != 0 && A.size(0) != ckpt.rank)
      throw std::runtime_error("loralib checkpoint '" + path + "': '" + module + "' has rank " + std::to_string(A.size(0)) +
                               ", other modules " + std::to_string(ckpt.rank));
    ckpt.rank = A.size(0);
    ckpt.lora[module] = {A, b->second};
    bs.erase(b);
  }
  if (!bs.empty()) throw std::runtime_error("loralib checkpoint '" + path + "': '" + bs.begin()->first + ".lora_B' has no lora_A");
  if (ckpt.lora.empty()) throw std::runtime_error("loralib checkpoint '" + path + "' has no LoRA tensors");
  return ckpt;
}

void apply_loralib_checkpoint(RobertaForSequenceClassificationImpl& model, const LoralibCheckpoint& ckpt, bool with_head,
                              const std::string& name) {
  std::vector<std::string> modules;
  for (const auto& [module, ab] : ckpt.lora) modules.push_back(module);
  lora::inject_lora(model, paper_lora_config().r(ckpt.rank).target_modules(modules), name);
  auto layers = lora::detail::lora_layers(model);
  torch::NoGradGuard no_grad;
  for (const auto& [path, layer] : layers) {
    const auto it = ckpt.lora.find(path);
    if (it == ckpt.lora.end() || !layer->has_adapter(name)) continue;
    if (it->second.first.sizes() != layer->lora_A(name).sizes() || it->second.second.sizes() != layer->lora_B(name).sizes())
      throw std::runtime_error("loralib checkpoint: '" + path + "' has A " + lora::shape_str(it->second.first.sizes()) + ", the model's is " +
                               lora::shape_str(layer->lora_A(name).sizes()) + ": was it trained on a RoBERTa of another size?");
    layer->lora_A(name).copy_(it->second.first);
    layer->lora_B(name).copy_(it->second.second);
  }
  if (!with_head) return;
  if (ckpt.classifier.is_empty()) throw std::runtime_error("loralib checkpoint: no classifier tensors to load");
  auto params = model.named_parameters();
  for (const auto& item : ckpt.classifier) {
    if (!params.contains(item.key()) || params[item.key()].sizes() != item.value().sizes())
      throw std::runtime_error("loralib checkpoint: '" + item.key() + "' " + lora::shape_str(item.value().sizes()) +
                               " does not fit the model's classifier (num_labels " + std::to_string(model.config.num_labels) +
                               "): load the adapter without its head for another task");
    params[item.key()].copy_(item.value());
  }
}

}  // namespace roberta
