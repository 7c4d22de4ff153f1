#!/usr/bin/env bash
# glue end to end on a small random RoBERTa and a slice of RTE: init -> train 2 epochs (evaluated
# after each) -> eval and predict with the best adapter -> resume from epoch 1 (bit-identical) ->
# the smoke runs (RoBERTa, DeBERTa-v2) -> convert the released loralib checkpoint; then bad inputs
# fail with one error line.
set -euo pipefail
bin=$1
data=${LORA_DATA_DIR:-$LORA_SOURCE_DIR/../shared/data}
if [ ! -f "$data/glue/RTE/train.tsv" ] || [ ! -f "$data/roberta/vocab.json" ]; then
  echo "skipping: RTE ($data/glue/RTE) or RoBERTa's tokenizer ($data/roberta) not found; set LORA_DATA_DIR"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/glue/RTE"
head -n 33 "$data/glue/RTE/train.tsv" > "$work/glue/RTE/train.tsv"  # header + 32 examples
head -n 17 "$data/glue/RTE/dev.tsv" > "$work/glue/RTE/dev.tsv"      # header + 16
tok=$data/roberta

"$bin" init --out "$work/model" --layers 1 --hidden 32
for f in config.json model.safetensors; do test -f "$work/model/$f"; done

common=(--model "$work/model" --tokenizer "$tok" --data "$work/glue" --task rte --batch-size 8 --max-len 64)
"$bin" train "${common[@]}" --out "$work/run" --epochs 2
for f in epoch_1/adapter_config.json epoch_2/trainer_state.pt best/adapter_model.safetensors metrics.json report.md train_log.csv loss.svg; do
  test -f "$work/run/$f"
done
grep -q '"task_type": "SEQ_CLS"' "$work/run/best/adapter_config.json"
tr -d ' \n' < "$work/run/best/adapter_config.json" | grep -q '"modules_to_save":\["classifier"\]'
[ "$(wc -l < "$work/run/train_log.csv")" -eq 9 ]  # header + 2 epochs of 4 steps
head -n 1 "$work/run/train_log.csv" | grep -q '^step,epoch,loss,lr,examples,seconds$'

# The best adapter (with its head) scores what training reported for the best epoch.
best=$(tr -d ' \n' < "$work/run/metrics.json" | sed 's/.*"best_epoch":\([0-9]*\).*/\1/')
want=$(tr -d ' \n' < "$work/run/metrics.json" | grep -o "{\"epoch\":$best,[^}]*}" | sed 's/.*"dev\/accuracy":\([0-9.e-]*\).*/\1/')
got=$("$bin" eval --model "$work/model" --tokenizer "$tok" --data "$work/glue" --task rte --max-len 64 --adapter "$work/run/best" \
  | awk '$1 == "dev/accuracy" {print $2}')
awk -v a="$want" -v b="$got" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-9) }' || { echo "eval $got != trained $want"; exit 1; }

"$bin" predict --model "$work/model" --tokenizer "$tok" --data "$work/glue" --task rte --max-len 64 --adapter "$work/run/best" \
  --logits "$work/logits.jsonl" > /dev/null
[ "$(wc -l < "$work/logits.jsonl")" -eq 16 ]
head -n 1 "$work/logits.jsonl" | grep -Eq '^\[[-0-9.e]+,[-0-9.e]+\]$'

# Resumed from epoch 1's state, epoch 2 ends with the same adapter, bit for bit.
"$bin" train "${common[@]}" --out "$work/resumed" --epochs 2 --resume "$work/run/epoch_1" > /dev/null
cmp "$work/run/epoch_2/adapter_model.safetensors" "$work/resumed/epoch_2/adapter_model.safetensors"

# The smoke run (the README's command, shortened): a random RoBERTa on RTE from ../shared, report.md.
"$bin" run --out "$work/smoke" --epochs 1 --max-train 32 --max-eval 16 > /dev/null
grep -q "Table 2" "$work/smoke/report.md"
grep -q "smoke" "$work/smoke/report.md"

# The DeBERTa smoke run (`glue run --arch deberta-v2`): a random xxlarge-shaped DeBERTa-v2 with a
# SentencePiece model learnt from RTE; its best adapter carries the pooler and classifier and
# scores, through `glue eval`, what training reported.
"$bin" run --arch deberta-v2 --out "$work/dsmoke" --epochs 1 --max-train 32 --max-eval 16 > /dev/null
grep -q "DeBERTa-v2 + LoRA" "$work/dsmoke/report.md"
grep -q "deberta-v2-xxlarge, LoRA" "$work/dsmoke/report.md"
test -f "$work/dsmoke/random-deberta-v2/spm.model"
tr -d ' \n' < "$work/dsmoke/best/adapter_config.json" | grep -q '"modules_to_save":\["pooler","classifier"\]'
tr -d ' \n' < "$work/dsmoke/best/adapter_config.json" | grep -q '"r":16,"lora_alpha":32'
want=$(tr -d ' \n' < "$work/dsmoke/metrics.json" | sed 's/.*"dev\/accuracy":\([0-9.e-]*\).*/\1/')
got=$("$bin" eval --model "$work/dsmoke/random-deberta-v2" --data "$data/glue" --task rte --max-len 128 --max-eval 16 \
  --adapter "$work/dsmoke/best" | awk '$1 == "dev/accuracy" {print $2}')
awk -v a="$want" -v b="$got" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-9) }' || { echo "deberta eval $got != trained $want"; exit 1; }

# The paper's released MNLI checkpoint as a PEFT folder.
if [ -f "$data/loralib/roberta_base_lora_mnli.bin" ]; then
  "$bin" convert --checkpoint "$data/loralib/roberta_base_lora_mnli.bin" --out "$work/mnli" > /dev/null
  tr -d ' \n' < "$work/mnli/adapter_config.json" | grep -q '"r":8,"lora_alpha":16'
  tr -d ' \n' < "$work/mnli/adapter_config.json" | grep -q '"modules_to_save":\["classifier"\]'
fi

# Bad inputs: exit 1 and one line naming the cause.
expect_error() {
  local want=$1
  shift
  if "$bin" "$@" > "$work/out" 2> "$work/err"; then echo "expected failure: $*"; exit 1; fi
  [ "$(wc -l < "$work/err")" -eq 1 ] || { echo "not one line:"; cat "$work/err"; exit 1; }
  grep -q "$want" "$work/err" || { echo "expected '$want' in:"; cat "$work/err"; exit 1; }
}
expect_error "unknown GLUE task 'nosuch'" train --model "$work/model" --tokenizer "$tok" --data "$work/glue" --task nosuch --out "$work/x"
expect_error "init-loralib reads microsoft/LoRA's RoBERTa checkpoints" train --model "$work/dsmoke/random-deberta-v2" --data "$work/glue" \
  --task rte --out "$work/x" --init-loralib "$work/run/best/adapter_model.safetensors"
expect_error "MRPC" train --model "$work/model" --tokenizer "$tok" --data "$work/glue" --task mrpc --out "$work/x"
printf 'index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n' > "$work/glue/RTE/dev.tsv"
expect_error "dev.tsv" eval --model "$work/model" --tokenizer "$tok" --data "$work/glue" --task rte
echo "glue CLI smoke: ok"
