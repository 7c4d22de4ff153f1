#!/usr/bin/env bash
# gpt2-e2e end to end on a tiny random GPT-2: init -> train 5 steps -> generate 3 MRs -> score
# -> eval -> export; full fine-tuning to model/, checking files and exit codes; then bad inputs must fail with one error line.
set -euo pipefail
bin=$1
data=${LORA_E2E_DIR:-$LORA_SOURCE_DIR/../shared/data/e2e}
vocab=${LORA_GPT2_DIR:-$LORA_SOURCE_DIR/../shared/data/gpt2}
if [ ! -f "$data/train.txt" ] || [ ! -f "$vocab/vocab.json" ]; then
  echo "skipping: E2E data ($data) or GPT-2 tokenizer files ($vocab) not found; set LORA_E2E_DIR / LORA_GPT2_DIR"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/data"
head -n 40 "$data/train.txt" > "$work/data/train.txt"
head -n 16 "$data/valid.txt" > "$work/data/valid.txt"
head -n 30 "$data/test.txt" > "$work/data/test.txt"

"$bin" init --out "$work/model" --layers 1 --embd 32 --heads 2 --vocab "$vocab"
for f in config.json model.safetensors vocab.json merges.txt; do test -f "$work/model/$f"; done

"$bin" train --model "$work/model" --data "$work/data" --out "$work/run" --max-steps 5 --batch-size 4 --warmup 2 --log-every 1
for f in adapter/adapter_model.safetensors adapter/adapter_config.json epoch_1/adapter_config.json train_log.csv; do test -f "$work/run/$f"; done
[ "$(wc -l < "$work/run/train_log.csv")" -eq 6 ]  # header + 5 steps

# Full fine-tuning ends in a whole model folder (HF layout), named model/, with the torch optimizer too.
"$bin" train --model "$work/model" --data "$work/data" --out "$work/full" --method full --optimizer torch --max-steps 2 \
  --batch-size 4 --warmup 1 --model-dropout
for f in model/config.json model/model.safetensors model/trainer_state.pt; do test -f "$work/full/$f"; done
test ! -e "$work/full/adapter"

"$bin" generate --model "$work/model" --adapter "$work/run/adapter" --data "$work/data/test.txt" --out "$work/gen" \
  --limit 3 --beam 2 --max-new-tokens 8
[ "$(wc -l < "$work/gen/hypothesis.txt")" -eq 3 ]
[ "$(grep -c '^$' "$work/gen/references.txt")" -eq 3 ]  # one blank line after each MR's references

# Several adapters on one base, routed per MR: each MR's hypothesis equals its adapter's own run.
"$bin" train --model "$work/model" --data "$work/data" --out "$work/run2" --max-steps 3 --batch-size 4 --warmup 1 --seed 7 --lr 0.05 \
  --lora-dropout 0 > /dev/null 2>&1
gen3() { "$bin" generate --model "$work/model" --data "$work/data/test.txt" --limit 3 --beam 2 --max-new-tokens 8 "$@" > /dev/null 2>&1; }
gen3 --adapter "$work/run/adapter" --out "$work/gen_a"
gen3 --adapter "$work/run2/adapter" --out "$work/gen_b"
second_mr=$(awk -F'[|][|]' '{print $1}' "$work/data/test.txt" | awk '!seen[$0]++' | sed -n 2p)
gen3 --adapter "a=$work/run/adapter" --adapter "b=$work/run2/adapter" --route "b=$second_mr" --out "$work/gen_ab"
{ sed -n 1p "$work/gen_a/hypothesis.txt"; sed -n 2p "$work/gen_b/hypothesis.txt"; sed -n 3p "$work/gen_a/hypothesis.txt"; } \
  | diff - "$work/gen_ab/hypothesis.txt"
if cmp -s "$work/gen_a/hypothesis.txt" "$work/gen_b/hypothesis.txt"; then echo "the two adapters gave the same text: no check"; exit 1; fi

"$bin" score --hyp "$work/gen/hypothesis.txt" --refs "$work/gen/references.txt" --json > "$work/scores.json"
num='[0-9.eE+-]+'
grep -Eq "^\{\"BLEU\":$num,\"NIST\":$num,\"METEOR\":null,\"ROUGE_L\":$num,\"CIDEr\":$num\}$" "$work/scores.json" \
  || { cat "$work/scores.json"; exit 1; }

"$bin" eval --model "$work/model" --adapter "$work/run/adapter" --data "$work/data/valid.txt" --limit 8 | tail -n 1 \
  | grep -Eq '^mean_loss [0-9]+\.[0-9]{9,}$'

"$bin" export --model "$work/model" --adapter "$work/run/adapter" --out "$work/merged"
for f in config.json model.safetensors vocab.json; do test -f "$work/merged/$f"; done

# The paper's section 7: analyze one adapter, then a tiny sweep (Tables 5, 6; Figures 3, 4; Table 7).
"$bin" analyze --model "$work/model" --adapter "$work/run/adapter" --out "$work/analysis" > /dev/null
grep -q '^| layer 0 W_q (r = 4) |' "$work/analysis/analysis.md"
"$bin" sweep --model "$work/model" --data "$work/data" --out "$work/sweep" --ranks 1,2,4 --compare 2,4 --budget-rank 4 \
  --max-steps 2 --valid-limit 4 --batch-size 4 > "$work/sweep.txt"
grep -q '^\[14/14\] ' "$work/sweep.txt"  # 7 + 9 cells, 3 shared, + the second seed
[ "$(grep -c '^| W_' "$work/sweep/sweep.md")" -eq 10 ] || { cat "$work/sweep/sweep.md"; exit 1; }  # Table 5: 7 rows, Table 6: 3
[ "$(grep -c '^| ours, r = ' "$work/sweep/sweep.md")" -eq 3 ]  # Table 7: one row per rank
for f in figure3/analysis.md figure3/phi_layer0_q.svg figure4/phi_layer0_v.svg runs/qkvo_r1_seed110/adapter_config.json; do
  test -f "$work/sweep/$f"
done

# Bad inputs: non-zero exit and a single error line.
expect_fail() {
  if "$@" > "$work/out.txt" 2> "$work/err.txt"; then echo "expected failure: $*"; exit 1; fi
  [ "$(wc -l < "$work/err.txt")" -eq 1 ] || { echo "expected one error line from: $*"; cat "$work/err.txt"; exit 1; }
  grep -q '^gpt2-e2e: error: ' "$work/err.txt"
}
expect_fail "$bin" eval --model "$work/nonexistent" --data "$work/data/valid.txt"
printf 'no separator here\n' > "$work/bad.txt"
expect_fail "$bin" eval --model "$work/model" --data "$work/bad.txt"
mkdir "$work/notok" && cp "$work/model/config.json" "$work/model/model.safetensors" "$work/notok/"
expect_fail "$bin" eval --model "$work/notok" --data "$work/data/valid.txt"
"$bin" init --out "$work/other" --layers 1 --embd 64 --heads 2 --vocab "$vocab" > /dev/null
expect_fail "$bin" train --model "$work/model" --data "$work/data" --out "$work/bad" --method adapter
grep -q -- "--method" "$work/err.txt"
expect_fail "$bin" train --model "$work/model" --data "$work/data" --out "$work/bad" --dtype fp16
expect_fail "$bin" generate --model "$work/model" --data "$work/data/test.txt" --out "$work/bad" --device tpu
expect_fail "$bin" generate --model "$work/model" --data "$work/data/test.txt" --out "$work/bad" --adapter "a=$work/run/adapter" \
  --route "zz=name"
expect_fail "$bin" eval --model "$work/other" --adapter "$work/run/adapter" --data "$work/data/valid.txt"
expect_fail "$bin" sweep --model "$work/model" --data "$work/data" --out "$work/bad" --budget-rank 6
expect_fail "$bin" sweep --model "$work/model" --data "$work/data" --out "$work/bad" --ranks 1,2 --compare 8,64
expect_fail "$bin" train --model "$work/model" --data "$work/data" --out "$work/bad" --weights qz
expect_fail "$bin" analyze --model "$work/model" --adapter "$work/run/adapter" --adapter "$work/run2/adapter" --adapter x --out "$work/bad"
echo "cli smoke test passed"
