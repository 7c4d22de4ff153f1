#!/usr/bin/env bash
# Makes sure the E2E NLG data (mr||ref files) and GPT-2's tokenizer files are at hand. Where neither
# $LORA_E2E_DIR / $LORA_GPT2_DIR nor ../shared/data beside the checkout has them, downloads them from
# their public sources into data/ (git-ignored): the E2E files as microsoft/LoRA ships them, GPT-2's
# vocab.json and merges.txt from the HuggingFace hub. With --challenge it also fetches what the
# scorer's validation test reads: the official test CSV with references (tuetschek/e2e-dataset)
# and two primary systems' outputs from the challenge (tuetschek/e2e-eval) into data/e2e-eval.
set -euo pipefail
cd "$(dirname "$0")/.."

find_dir() {  # find_dir FILE DIR... : the first DIR holding FILE
  local file=$1; shift
  for d in "$@"; do
    if [ -n "$d" ] && [ -f "$d/$file" ]; then echo "$d"; return 0; fi
  done
  return 1
}
fetch() {  # fetch URL FILE
  if command -v curl > /dev/null; then curl -fsSL --retry 3 -o "$2.part" "$1"; else wget -q -O "$2.part" "$1"; fi
  mv "$2.part" "$2"
}

if e2e=$(find_dir test.txt "${LORA_E2E_DIR:-}" ../shared/data/e2e data/e2e); then
  echo "get-data: E2E data in $e2e"
else
  echo "get-data: downloading the E2E data (microsoft/LoRA examples/NLG/data/e2e) into data/e2e"
  mkdir -p data/e2e
  for f in train valid test; do
    fetch "https://raw.githubusercontent.com/microsoft/LoRA/main/examples/NLG/data/e2e/$f.txt" "data/e2e/$f.txt"
  done
fi
if gpt2=$(find_dir vocab.json "${LORA_GPT2_DIR:-}" ../shared/data/gpt2 data/gpt2); then
  echo "get-data: GPT-2 tokenizer files in $gpt2"
else
  echo "get-data: downloading GPT-2's vocab.json and merges.txt (HuggingFace hub, model gpt2) into data/gpt2"
  mkdir -p data/gpt2
  for f in vocab.json merges.txt; do fetch "https://huggingface.co/gpt2/resolve/main/$f" "data/gpt2/$f"; done
fi
if [ "${1:-}" = "--challenge" ]; then
  if [ -f "$e2e/csv/testset_w_refs.csv" ] || [ -f data/e2e-eval/testset_w_refs.csv ]; then
    echo "get-data: official test CSV at hand"
  else
    echo "get-data: downloading the official test references (tuetschek/e2e-dataset) into data/e2e-eval"
    mkdir -p data/e2e-eval
    fetch "https://raw.githubusercontent.com/tuetschek/e2e-dataset/master/testset_w_refs.csv" data/e2e-eval/testset_w_refs.csv
  fi
  mkdir -p data/e2e-eval/system_outputs/primary
  for s in tgen slug; do
    f=data/e2e-eval/system_outputs/primary/$s.tsv
    [ -f "$f" ] || fetch "https://raw.githubusercontent.com/tuetschek/e2e-eval/master/system_outputs/primary/$s.tsv" "$f"
  done
  echo "get-data: challenge system outputs in data/e2e-eval"
fi
