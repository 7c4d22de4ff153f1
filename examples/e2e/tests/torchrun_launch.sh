#!/usr/bin/env bash
# The README's torchrun launch, run as written with the torchrun this machine has (Debian's
# python3-torch 1.13, or a 2.x one): 2 ranks of `gpt2-e2e train` must give the adapter that one
# process gives (every tensor to 1e-5 relative, read back from the safetensors files by the
# torchrun's own Python with numpy, not by our loader). Skips (77) without torchrun or data.
set -euo pipefail
bin=$1
src=$LORA_SOURCE_DIR
launch='torchrun --nproc_per_node 2 --redirects 2 --tee 2 --no_python ./build/examples/e2e/gpt2-e2e train'
for doc in README.md docs/distributed.md; do
  grep -qF -- "$launch" "$src/$doc" || { echo "$doc no longer shows the launch this test runs: $launch"; exit 1; }
done
torchrun=$(command -v torchrun || true)
if [ -z "$torchrun" ]; then
  echo "skipping: no torchrun on PATH (Debian: apt-get install python3-torch; .ci/run installs it)"
  exit 77
fi
data=${LORA_E2E_DIR:-$src/../shared/data/e2e}
vocab=${LORA_GPT2_DIR:-$src/../shared/data/gpt2}
if [ ! -f "$data/train.txt" ] || [ ! -f "$vocab/vocab.json" ]; then
  echo "skipping: E2E data ($data) or GPT-2 tokenizer files ($vocab) not found; set LORA_E2E_DIR / LORA_GPT2_DIR"
  exit 77
fi
python=$(head -n 1 "$torchrun" | sed -e 's/^#! *//' -e 's/ .*//')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/data"
head -n 24 "$data/train.txt" > "$work/data/train.txt"
head -n 8 "$data/valid.txt" > "$work/data/valid.txt"
"$bin" init --out "$work/model" --layers 1 --embd 32 --heads 2 --vocab "$vocab" > /dev/null

# The documented command from a checkout-like folder (./build/examples/e2e/gpt2-e2e), dropout off:
# the ranks draw other dropout masks than one process does.
mkdir -p "$work/checkout/build/examples/e2e"
ln -s "$bin" "$work/checkout/build/examples/e2e/gpt2-e2e"
args=(--model "$work/model" --data "$work/data" --max-steps 4 --batch-size 4 --warmup 1 --lr 0.05 --lora-dropout 0 --threads 1)
"$bin" train "${args[@]}" --out "$work/single" > "$work/single.log" 2>&1 || { cat "$work/single.log"; exit 1; }
# torchrun takes any of its options from PET_<NAME>: a port of our own, not the default 29500.
(cd "$work/checkout" && PET_MASTER_PORT=$(( 20000 + RANDOM % 20000 )) $launch "${args[@]}" --out "$work/dp") \
  > "$work/dp.log" 2>&1 || { cat "$work/dp.log"; exit 1; }

"$python" "$(dirname "$0")/compare_adapters.py" "$work/single/adapter/adapter_model.safetensors" \
  "$work/dp/adapter/adapter_model.safetensors" "torchrun 2 ranks vs 1 process"
echo "torchrun launch test passed"
