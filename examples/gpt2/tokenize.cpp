// gpt2-tokenize DIR: GPT-2 token ids of each line of stdin (vocab.json + merges.txt from DIR),
// space-separated, one output line per input line. The line's own newline is not encoded.
#include "tokenizer.hpp"

#include <iostream>
#include <stdexcept>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: gpt2-tokenize DIR < lines.txt   (DIR holds vocab.json and merges.txt)\n";
    return 2;
  }
  try {
    const auto tok = gpt2::Tokenizer::from_dir(argv[1]);
    std::string line;
    while (std::getline(std::cin, line)) {
      const auto ids = tok.encode(line);
      for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
      std::cout << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "gpt2-tokenize: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
