#!/bin/bash
# The GPU check, for the device machine (CUDA image with PyTorch 2.x, no network): builds against
# the machine's LibTorch (python3's torch), runs the test suite (CUDA variants included), proves
# PEFT interop with the real transformers + peft, times the GPU benchmarks and runs the main job
# on CUDA in bf16. Needs .device/ from tools/gpu-check/prepare.sh (carry it). Every step logs
# under $OUT; a failing step does not stop the later ones; BUDGET (seconds) bounds the whole run.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.txt"; }
left() { echo $(( ${BUDGET:-540} - ($(date +%s) - T0) )); }

say "host: $(uname -r); $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
say "$(g++ --version | head -1); $(cmake --version | head -1); nvcc: $(nvcc --version 2>&1 | tail -1)"
mkdir -p /tmp/deps && for f in .device/debs/*.deb; do dpkg -x "$f" /tmp/deps; done
export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export PKG_CONFIG_SYSROOT_DIR=/tmp/deps PKG_CONFIG_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu/pkgconfig:/tmp/deps/usr/share/pkgconfig
TP=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
say "python torch: $(python3 -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"

if ! cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORA_BUILD_FUZZER=OFF -DLORA_INSTALL=OFF \
     "-DCMAKE_CXX_FLAGS=-isystem /tmp/deps/usr/include/x86_64-linux-gnu" -DOPENSSL_ROOT_DIR=/tmp/deps/usr \
     "-DCMAKE_PREFIX_PATH=$TP;/tmp/deps/usr" > "$OUT/configure.log" 2>&1; then
  say "configure FAILED"; tail -n 30 "$OUT/configure.log"; exit 1
fi
TARGETS="lora_tests gpt2_tests e2e_tests deberta_tests glue_train_tests gpt2-e2e gpt2-tokenize e2e-bench lora-bench"
timeout $(( $(left) - 200 )) cmake --build build-gpu -j16 --target $TARGETS -- -k 0 > "$OUT/build.log" 2>&1
say "build rc=$? ($(grep -c 'error:' "$OUT/build.log") error lines, $(grep -c 'warning:' "$OUT/build.log") warnings)"
grep -m 12 -B2 -A6 'error:' "$OUT/build.log" >> "$OUT/summary.txt"

export LORA_E2E_DIR=$PWD/.device/data/e2e LORA_GPT2_DIR=$PWD/.device/data/gpt2
timeout 150 ctest --test-dir build-gpu -j8 --timeout 110 --output-on-failure -E "Fuzz" > "$OUT/ctest.log" 2>&1
say "ctest rc=$?: $(grep -E 'tests passed|tests failed' "$OUT/ctest.log")"
grep -E "^\s+[0-9]+ - .*(Failed|SEGFAULT|Timeout)" "$OUT/ctest.log" | head -20 >> "$OUT/summary.txt"
say "CUDA tests that ran: $(grep -cE 'Test +#[0-9]+: .*([Cc]uda|Bf16).* Passed' "$OUT/ctest.log") passed"

PYTHONUNBUFFERED=1 timeout 120 python3 tools/gpu-check/peft_check.py build-gpu /tmp/peftwork .device/data > "$OUT/peft.log" 2>&1
say "PEFT interop rc=$?"
grep -E "PASS|FAIL|ERROR|transformers" "$OUT/peft.log" | tail -n 9 >> "$OUT/summary.txt"

if [ "$(left)" -gt 200 ]; then  # HF transformers + PEFT on the recipe's GPT-2 medium shape, for the ratio below
  PYTHONUNBUFFERED=1 timeout 100 python3 tools/gpu-check/peft_speed.py build-gpu .device/data > "$OUT/peft_speed.log" 2>&1
  say "PEFT speed rc=$?: $(grep -E 'PEFT_SPEED|Error' "$OUT/peft_speed.log" | tail -n 2)"
fi
if [ "$(left)" -gt 90 ]; then
  timeout $(( $(left) - 60 )) build-gpu/examples/e2e/e2e-bench --benchmark_filter='dev:[12]' > "$OUT/bench_train.txt" 2>&1
  say "e2e-bench rc=$?"
  grep BM_ "$OUT/bench_train.txt" >> "$OUT/summary.txt"
  say "ours, same shape as peft_speed.py: $(grep 'medium:1/pad:0/dev:2/grouped:0' "$OUT/bench_train.txt" | grep -o 'tok/s=[0-9.k]*')"
fi
if [ "$(left)" -gt 45 ]; then
  timeout 40 build-gpu/bench/lora-bench --benchmark_filter='dev:1' --benchmark_min_time=0.5 > "$OUT/bench_linear.txt" 2>&1
  say "lora-bench rc=$?"
  grep BM_ "$OUT/bench_linear.txt" >> "$OUT/summary.txt"
fi
if [ "$(left)" -gt 40 ]; then
  timeout $(( $(left) - 10 )) build-gpu/examples/e2e/gpt2-e2e run --device cuda --dtype bf16 --max-steps 300 --gen-limit 10 \
    --valid-limit 100 --out /tmp/run --data .device/data/e2e --vocab .device/data/gpt2 > "$OUT/run.log" 2>&1
  say "gpt2-e2e run (cuda, bf16) rc=$?"
  tail -n 3 "$OUT/run.log" >> "$OUT/summary.txt"
fi
say "done"
cat "$OUT/summary.txt"
