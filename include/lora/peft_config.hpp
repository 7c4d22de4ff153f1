#pragma once
/// \file peft_config.hpp
/// `lora::PeftConfig`: PEFT's `adapter_config.json` as this library reads and writes it, with the
/// key policy of both directions in one place (docs/adapters.md, "Config keys policy").
///
/// Written: only keys every PEFT version knows. Read: the keys that set a trained adapter's
/// arithmetic and module selection; keys that cannot change it are ignored knowingly; any other
/// key is accepted only at its default (null, false, {} or []), so a file that asks for
/// something this library does not implement is refused, never half-read.
///
/// Example:
/// \code
///   auto cfg = lora::PeftConfig::read("out/adapter/adapter_config.json");
///   int64_t r = cfg.rank_for("transformer.h.0.attn.c_attn");
/// \endcode

#include <lora/config.hpp>
#include <lora/safetensors.hpp>
#include <lora/target.hpp>

#include <nlohmann/json.hpp>

#include <fstream>
#include <iterator>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace lora {

namespace detail {

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read '" + path + "'");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace detail

/// The keys of a LoRA adapter's adapter_config.json.
struct PeftConfig {
  // The arithmetic.
  int64_t r = 8;
  double alpha = 8;
  double dropout = 0;
  bool use_rslora = false;
  bool use_dora = false;  ///< DoRA: every adapted module has a lora_magnitude_vector tensor
  Bias bias = Bias::None;
  RankPattern rank_pattern;  ///< per-module overrides, in the file's order (the first matching key wins)
  AlphaPattern alpha_pattern;
  // The module selection (target_modules is a list of names or one regex string).
  bool has_targets = false;  ///< target_modules present (not null)
  std::vector<std::string> target_modules;
  std::string target_regex;
  std::vector<std::string> exclude_modules;
  std::vector<int64_t> layers_to_transform;
  std::string layers_pattern;
  /// PEFT ties the adapters of tied layers (embedding + head); load_adapter refuses it on a tied layer.
  bool ensure_weight_tying = false;
  /// Modules trained in full beside the adapter (e.g. a classification head, "classifier"): a module
  /// matches a name when its path equals it or ends with "." + name; the file holds their tensors as
  /// `base_model.model.<module path>.<parameter>`, as PEFT saves them.
  std::vector<std::string> modules_to_save;
  // Written for PEFT; read back but not needed for the arithmetic.
  std::string base_model_name_or_path, task_type;
  bool fan_in_fan_out = false;
  Init init = Init::KaimingUniform;

  /// A module's rank and alpha: the first pattern key that matches it, else r / alpha.
  int64_t rank_for(const std::string& path) const { return rank_keys_.value_for(path, r); }
  double alpha_for(const std::string& path) const { return alpha_keys_.value_for(path, alpha); }
  /// Whether module `path` (as named in the file) is one of modules_to_save (PEFT's rule).
  bool saves_module(const std::string& path) const { return saves_module(modules_to_save, path); }
  static bool saves_module(const std::vector<std::string>& names, const std::string& path) {
    for (const auto& n : names)
      if (path == n || (path.size() > n.size() && path.compare(path.size() - n.size(), n.size(), n) == 0 &&
                        path[path.size() - n.size() - 1] == '.'))
        return true;
    return false;
  }
  /// target_modules / exclude_modules / layers_to_transform as the rule inject_lora uses.
  const TargetSelector& selector() const { return selector_; }

  /// Reads and checks `path`; errors name the file and the key.
  static PeftConfig read(const std::string& path) {
    nlohmann::ordered_json j;  // keys in the file's order: rank_pattern / alpha_pattern precedence depends on it
    try {
      j = nlohmann::ordered_json::parse(detail::read_text(path));
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error("'" + path + "' is not valid JSON: " + e.what());
    }
    if (!j.is_object()) throw std::runtime_error("'" + path + "' is not a JSON object");
    auto bad = [&](const std::string& key, const std::string& why) {
      return std::runtime_error("'" + path + "': key '" + key + "' " + why);
    };
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (harmless_keys().count(it.key()) || is_default_value(it.value())) continue;
      if (it.key() == "ensure_weight_tying" && it.value().is_boolean()) continue;  // checked per layer by load_adapter
      throw bad(it.key(), "has a non-default value (" + it.value().dump() +
                              ") that changes the adapter's arithmetic, which this loader does not implement");
    }
    if (!j.contains("peft_type") || j["peft_type"] != "LORA") throw bad("peft_type", "must be \"LORA\": this is not a LoRA adapter");
    PeftConfig c;
    auto given = [&](const char* key) { return j.contains(key) && !j[key].is_null(); };
    try {
      if (!j.contains("r") || !j["r"].is_number_integer() || j["r"].get<int64_t>() <= 0) throw bad("r", "must be a positive integer");
      c.r = j["r"].get<int64_t>();
      c.alpha = given("lora_alpha") ? j["lora_alpha"].get<double>() : 8.0;
      c.dropout = given("lora_dropout") ? j["lora_dropout"].get<double>() : 0.0;
      c.use_rslora = given("use_rslora") && j["use_rslora"].get<bool>();
      c.use_dora = given("use_dora") && j["use_dora"].get<bool>();
      c.ensure_weight_tying = given("ensure_weight_tying") && j["ensure_weight_tying"].get<bool>();
      const std::string bias = given("bias") && j["bias"].is_string() ? j["bias"].get<std::string>() : "none";
      if (bias == "all") c.bias = Bias::All;
      else if (bias == "lora_only") c.bias = Bias::LoraOnly;
      else if (bias != "none") throw bad("bias", "must be none, all or lora_only");
      if (given("rank_pattern"))
        for (auto it = j["rank_pattern"].begin(); it != j["rank_pattern"].end(); ++it) c.rank_pattern.emplace_back(it.key(), it.value().get<int64_t>());
      if (given("alpha_pattern"))
        for (auto it = j["alpha_pattern"].begin(); it != j["alpha_pattern"].end(); ++it) c.alpha_pattern.emplace_back(it.key(), it.value().get<double>());
      auto strings = [&](const char* key) {
        std::vector<std::string> out;
        if (given(key) && j[key].is_array())
          for (const auto& s : j[key]) out.push_back(s.get<std::string>());
        return out;
      };
      if (given("target_modules")) {
        c.has_targets = true;
        if (j["target_modules"].is_string()) c.target_regex = j["target_modules"].get<std::string>();
        else c.target_modules = strings("target_modules");
      }
      if (given("exclude_modules") && j["exclude_modules"].is_string())
        throw bad("exclude_modules", "as a regex string is not supported; list the module names");
      c.exclude_modules = strings("exclude_modules");
      if (given("layers_to_transform")) {
        if (j["layers_to_transform"].is_number_integer()) c.layers_to_transform.push_back(j["layers_to_transform"].get<int64_t>());
        else for (const auto& v : j["layers_to_transform"]) c.layers_to_transform.push_back(v.get<int64_t>());
      }
      if (given("modules_to_save") && !j["modules_to_save"].is_array())
        throw bad("modules_to_save", "must be a list of module names");
      c.modules_to_save = strings("modules_to_save");
      if (given("layers_pattern") && j["layers_pattern"].is_string()) c.layers_pattern = j["layers_pattern"].get<std::string>();
      if (given("base_model_name_or_path")) c.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();
      if (given("task_type")) c.task_type = j["task_type"].get<std::string>();
      c.fan_in_fan_out = given("fan_in_fan_out") && j["fan_in_fan_out"].get<bool>();
      c.compile();
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error("'" + path + "': a value has the wrong type: " + e.what());
    } catch (const std::invalid_argument& e) {  // a bad regex in target_modules, a pattern key or layers_pattern
      throw std::runtime_error("'" + path + "': " + e.what());
    }
    return c;
  }

  /// The file's text, as PEFT writes it (keys every PEFT version knows).
  std::string dump() const {
    auto string_or_null = [](const std::string& s) { return s.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(s); };
    nlohmann::ordered_json j;
    j["peft_type"] = "LORA";
    j["base_model_name_or_path"] = string_or_null(base_model_name_or_path);
    j["task_type"] = string_or_null(task_type);
    j["inference_mode"] = true;
    j["r"] = r;
    j["lora_alpha"] = alpha;
    j["lora_dropout"] = dropout;
    j["use_rslora"] = use_rslora;
    j["use_dora"] = use_dora;
    j["target_modules"] = target_regex.empty() ? nlohmann::ordered_json(target_modules) : nlohmann::ordered_json(target_regex);
    j["bias"] = bias == Bias::All ? "all" : bias == Bias::LoraOnly ? "lora_only" : "none";
    j["fan_in_fan_out"] = fan_in_fan_out;
    j["init_lora_weights"] = init == Init::Gaussian ? nlohmann::ordered_json("gaussian") : nlohmann::ordered_json(init != Init::Random);
    j["rank_pattern"] = nlohmann::ordered_json::object();
    for (const auto& [key, value] : rank_pattern) j["rank_pattern"][key] = value;
    j["alpha_pattern"] = nlohmann::ordered_json::object();
    for (const auto& [key, value] : alpha_pattern) j["alpha_pattern"][key] = value;
    j["modules_to_save"] = modules_to_save.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(modules_to_save);
    j["layers_to_transform"] = nullptr;
    return j.dump(2) + "\n";
  }

  /// Compiles the patterns and the selector from the fields (read() does it; call it after
  /// changing them). Throws std::invalid_argument for a bad key or regex.
  void compile() {
    rank_keys_ = PatternMap<int64_t>(rank_pattern, "rank_pattern");
    alpha_keys_ = PatternMap<double>(alpha_pattern, "alpha_pattern");
    selector_ = TargetSelector(target_modules, target_regex, exclude_modules, layers_to_transform, layers_pattern);
  }

 private:
  /// Keys that do not change the arithmetic of a trained adapter: read above, or ignored knowingly.
  static const std::set<std::string>& harmless_keys() {
    static const std::set<std::string> keys = {
        "peft_type", "base_model_name_or_path", "task_type", "inference_mode", "revision", "peft_version",
        "auto_mapping", "r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora", "bias", "target_modules",
        "exclude_modules", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern",
        "fan_in_fan_out", "init_lora_weights", "modules_to_save", "megatron_config", "megatron_core", "eva_config", "corda_config",
        "qalora_group_size"};
    return keys;
  }
  static bool is_default_value(const nlohmann::ordered_json& v) {
    return v.is_null() || (v.is_boolean() && !v.get<bool>()) || (v.is_object() && v.empty()) || (v.is_array() && v.empty());
  }

  PatternMap<int64_t> rank_keys_;
  PatternMap<double> alpha_keys_;
  TargetSelector selector_;
};

}  // namespace lora
