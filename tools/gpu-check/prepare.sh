#!/usr/bin/env bash
# Prepares .device/ (git-ignored) for tools/gpu-check/run.sh on a machine without network access:
# Debian packages the build needs that a CUDA image may lack (unpacked there into /tmp/deps, not
# installed), and the tokenizer files and E2E data (never committed: copied from where the tests
# find them). Run here, then call the device tool with carry [".device"] and
# `bash tools/gpu-check/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
e2e=${LORA_E2E_DIR:-../shared/data/e2e}
gpt2=${LORA_GPT2_DIR:-../shared/data/gpt2}
for f in "$e2e/train.txt" "$e2e/valid.txt" "$e2e/test.txt" "$gpt2/vocab.json" "$gpt2/merges.txt"; do
  [ -f "$f" ] || { echo "prepare.sh: $f not found (set LORA_E2E_DIR / LORA_GPT2_DIR, or run scripts/get-data.sh)" >&2; exit 1; }
done
mkdir -p .device/debs .device/data/e2e .device/data/gpt2
cp "$e2e"/{train,valid,test}.txt .device/data/e2e/
cp "$gpt2"/{vocab.json,merges.txt} .device/data/gpt2/
(cd .device/debs && apt-get download nlohmann-json3-dev libcli11-dev libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 \
  libpcre2-posix3 libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian libssl-dev libssl3 \
  libsentencepiece-dev libsentencepiece0)
du -sh .device
