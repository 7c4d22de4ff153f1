#pragma once
// The test helper every test binary of this project uses to check an error's message: the
// library's tests (tests/common.hpp) and the examples' (examples/test_util.hpp) alike.

#include <exception>
#include <string>

namespace lora_test {

/// Runs `fn` and returns the message of the exception of type E it throws ("" if none).
template <class E = std::exception, class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

}  // namespace lora_test
