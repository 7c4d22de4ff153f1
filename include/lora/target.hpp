#pragma once
/// \file target.hpp
/// `lora::TargetSelector`: which modules an adapter applies to, by PEFT's rule, compiled once.
/// `inject_lora`, `save_adapter` (to shorten `target_modules`) and `load_adapter` (to check a
/// file's config) all use it, so the three can never disagree.
///
/// A module path is selected when
///  1. it matches the targets, which are either a list of names — an entry matches the whole
///     path or a dotted suffix of it: "q" selects "blocks.0.attn.q", never "blocks.0.attn.qq"
///     nor "seq" — or one regex that must match the whole path (PEFT's string form of
///     `target_modules`), never both;
///  2. no `exclude_modules` entry matches it (the same rule as names);
///  3. with `layers_to_transform` (names only: with a regex, as in PEFT, it is an error), its
///     layer index is listed: the number after `<layers_pattern>.`, or without a pattern after
///     the last `<name>.` followed by `<N>.`.
///
/// `rank_pattern` / `alpha_pattern` keys use PEFT's other rule: the regex `(.*\.)?key` must match
/// the whole path (`KeyPattern`).
///
/// Example:
/// \code
///   lora::TargetSelector s({"q", "v"}, "", {"blocks.0.attn.v"});
///   s.selects("blocks.1.attn.q");  // true
///   s.selects("blocks.0.attn.v");  // false: excluded
/// \endcode

#include <lora/config.hpp>

#include <algorithm>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

namespace lora {

namespace detail {

/// The list rule: `name` is `key` or ends with "." + key.
inline bool name_matches(const std::string& name, const std::string& key) {
  if (name == key) return true;
  return name.size() > key.size() && name.compare(name.size() - key.size(), key.size(), key) == 0 &&
         name[name.size() - key.size() - 1] == '.';
}

inline std::regex compile_regex(const std::string& pattern, const std::string& what) {
  try {
    return std::regex(pattern);
  } catch (const std::regex_error& e) {
    throw std::invalid_argument(what + " '" + pattern + "' is not a valid regex: " + e.what());
  }
}

}  // namespace detail

/// A `rank_pattern` / `alpha_pattern` key, compiled: matches paths by the regex `(.*\.)?key`.
class KeyPattern {
 public:
  explicit KeyPattern(std::string key)
      : key_(std::move(key)), re_(detail::compile_regex("(.*\\.)?" + key_, "pattern key")) {}
  bool matches(const std::string& name) const { return std::regex_match(name, re_); }
  const std::string& key() const { return key_; }

 private:
  std::string key_;
  std::regex re_;
};

/// `rank_pattern` or `alpha_pattern`, compiled, with PEFT's precedence (`get_pattern_key`): the
/// value of the first key, in the order given, that matches the path. `inject_lora` and
/// `load_adapter` both resolve per-module ranks and alphas through it (`save_adapter` writes each
/// module's own values under its full path). A key given twice is an error (a JSON object or a
/// Python dict cannot hold it twice either).
template <class V>
class PatternMap {
 public:
  PatternMap() = default;
  /// `what` names the field in errors, e.g. "rank_pattern".
  PatternMap(const std::vector<std::pair<std::string, V>>& keys, const std::string& what) {
    for (const auto& [key, value] : keys) add(key, value, what);
  }
  void add(const std::string& key, V value, const std::string& what) {
    for (const auto& e : entries_)
      if (e.first.key() == key) throw std::invalid_argument(what + " key '" + key + "' is given twice");
    entries_.emplace_back(KeyPattern(key), std::move(value));
  }
  /// The value of the first key that matches `path`, else `fallback`.
  V value_for(const std::string& path, V fallback) const {
    for (const auto& e : entries_)
      if (e.first.matches(path)) return e.second;
    return fallback;
  }
  const std::vector<std::pair<KeyPattern, V>>& entries() const { return entries_; }

 private:
  std::vector<std::pair<KeyPattern, V>> entries_;
};

class TargetSelector {
 public:
  TargetSelector() = default;
  /// `names` or `regex` (not both); errors (`std::invalid_argument`) for both, a bad regex or
  /// layers_pattern, or a layers_pattern without layers.
  TargetSelector(std::vector<std::string> names, const std::string& regex, std::vector<std::string> exclude = {},
                 std::vector<int64_t> layers = {}, const std::string& layers_pattern = "")
      : names_(std::move(names)), regex_text_(regex), exclude_(std::move(exclude)), layers_(std::move(layers)) {
    if (!names_.empty() && !regex.empty())
      throw std::invalid_argument("target selection: set target_modules (names) or target_regex, not both; PEFT's "
                                  "target_modules is either a list of names or one regex string");
    if (!regex.empty()) regex_.emplace(detail::compile_regex(regex, "target_regex (target_modules as one string)"));
    if (regex_ && (!layers_.empty() || !layers_pattern.empty()))
      throw std::invalid_argument("target selection: layers_to_transform / layers_pattern cannot be combined with a "
                                  "target regex (PEFT refuses it too); put the layer numbers in the regex");
    if (!layers_pattern.empty() && layers_.empty())
      throw std::invalid_argument("target selection: layers_pattern is set but layers_to_transform is empty");
    layer_re_ = layers_pattern.empty()
                    ? std::regex(R"(^(?:.*\.)?[^.]*\.(\d+)\..*$)")
                    : detail::compile_regex("^(?:.*\\.)?(?:" + layers_pattern + R"()\.(\d+)\..*$)", "layers_pattern");
  }

  /// The selector of a LoRAConfig's target_modules / target_regex / exclude_modules /
  /// layers_to_transform / layers_pattern.
  static TargetSelector from_config(const LoRAConfig& c) {
    return TargetSelector(c.target_modules(), c.target_regex(), c.exclude_modules(), c.layers_to_transform(),
                          c.layers_pattern());
  }

  /// Rule 1 alone. With `entries`, the list entries that match `name` are appended to it.
  bool matches_targets(const std::string& name, std::vector<std::string>* entries = nullptr) const {
    if (regex_) return std::regex_match(name, *regex_);
    bool hit = false;
    for (const auto& t : names_)
      if (detail::name_matches(name, t)) {
        hit = true;
        if (entries) entries->push_back(t);
      }
    return hit;
  }
  /// Rule 2: an exclude_modules entry matches.
  bool excluded(const std::string& name) const {
    return std::any_of(exclude_.begin(), exclude_.end(), [&](const std::string& e) { return detail::name_matches(name, e); });
  }
  /// Rule 3: no layers_to_transform, or the path's layer index is listed.
  bool in_layers(const std::string& name) const {
    if (layers_.empty()) return true;
    const auto idx = layer_index(name);
    return idx && std::find(layers_.begin(), layers_.end(), *idx) != layers_.end();
  }
  bool selects(const std::string& name) const { return matches_targets(name) && !excluded(name) && in_layers(name); }

  /// The layer index of a path (see rule 3), if it has one.
  std::optional<int64_t> layer_index(const std::string& name) const {
    std::smatch m;
    if (std::regex_match(name, m, layer_re_)) return std::stoll(m[1].str());
    return std::nullopt;
  }

  bool empty() const { return names_.empty() && !regex_; }
  bool is_regex() const { return regex_.has_value(); }
  const std::vector<std::string>& names() const { return names_; }
  const std::string& regex() const { return regex_text_; }

 private:
  std::vector<std::string> names_;
  std::string regex_text_;
  std::optional<std::regex> regex_;
  std::vector<std::string> exclude_;
  std::vector<int64_t> layers_;
  std::regex layer_re_;
};

}  // namespace lora
