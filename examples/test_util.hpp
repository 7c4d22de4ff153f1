#pragma once
// Helpers shared by the example tests (gpt2_tests, e2e_tests) and e2e-bench. Needs LORA_SOURCE_DIR
// defined.

#include <lora_test/errors.hpp>

#include <cstdlib>
#include <exception>
#include <functional>
#include <string>

namespace example_test {

/// `$env` if set, else ../shared/data/<sub> beside the source checkout.
inline std::string data_dir(const char* env, const std::string& sub) {
  if (const char* v = std::getenv(env)) return v;
  return std::string(LORA_SOURCE_DIR) + "/../shared/data/" + sub;
}

/// Sets an environment variable for a scope (unset with an empty value), restoring it after.
struct ScopedEnv {
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    value.empty() ? ::unsetenv(name) : ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() { had_ ? ::setenv(name_, old_.c_str(), 1) : ::unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  const char* name_;
  std::string old_;
  bool had_ = false;
};

using lora_test::error_of;  // the message of the exception `fn` throws ("" if none)

}  // namespace example_test
