#!/usr/bin/env bash
# Installs the Debian 12 packages lora needs to build, test and benchmark
# (with --fuzz: also clang and its libFuzzer runtime, for the safetensors fuzzer; with --torchrun:
# Debian's python3-torch, whose torchrun the E2ETorchrunLaunch test launches the README's command with).
# Does nothing when they are all present; needs root (or sudo) otherwise.
set -euo pipefail
packages=(
  g++ cmake ninja-build
  libtorch-dev          # LibTorch 1.13 (CPU), CMake package "Torch"
  libopenblas0-pthread  # without it torch falls back to reference BLAS: matmuls ~50x slower
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev
  libpcre2-dev          # GPT-2's Unicode pre-tokenizer regex
  libssl-dev pkg-config # SHA-256 in the tokenizer parity test; finding PCRE2
  libcurl4-openssl-dev  # downloading hub models (gpt2-medium) into the HuggingFace cache
  libgloo-dev           # Gloo's headers, which LibTorch's c10d headers include (lora/distributed.hpp)
  libsentencepiece-dev  # DeBERTa-v2's tokenizer (spm.model), and training small models in its tests
  curl ca-certificates  # scripts/get-data.sh, only where the data is not at hand
)
[ "${1:-}" = "--fuzz" ] && packages+=(clang-14 libclang-rt-14-dev)
[ "${1:-}" = "--torchrun" ] && packages+=(python3-torch)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "setup: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
