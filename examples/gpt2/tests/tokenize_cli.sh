#!/usr/bin/env bash
# gpt2-tokenize on lines whose ids microsoft/LoRA's encoder.py printed (see test_tokenizer.cpp);
# a folder without tokenizer files is one error line and exit status 1.
set -euo pipefail
bin=$1
vocab=${LORA_GPT2_DIR:-$LORA_SOURCE_DIR/../shared/data/gpt2}
if [ ! -f "$vocab/vocab.json" ]; then
  echo "skipping: GPT-2 tokenizer files not found in $vocab (set LORA_GPT2_DIR)"
  exit 77
fi
got=$(printf "Hello world\nCAPS DON'T CONTRACT\n\nx  \t y\n" | "$bin" "$vocab" | tr '\n' '|')
want="15496 995|33177 50 23917 6 51 27342 10659||87 220 220 197 331|"
[ "$got" = "$want" ] || { echo "got  '$got'"; echo "want '$want'"; exit 1; }
err=$(mktemp)
trap 'rm -f "$err"' EXIT
if "$bin" /nonexistent < /dev/null 2> "$err"; then echo "expected a failure"; exit 1; fi
[ "$(wc -l < "$err")" -eq 1 ] && grep -q "^gpt2-tokenize: error: .*vocab.json" "$err"
echo "gpt2-tokenize test passed"
