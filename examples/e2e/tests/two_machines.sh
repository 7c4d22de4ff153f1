#!/usr/bin/env bash
# docs/distributed.md's two-machine launch, as far as one machine allows: two network namespaces
# joined by a veth pair stand for two machines (10.199.<n>.1 and .2, no other route, each with
# its own loopback), one torchrun agent in each (--nnodes 2 --node_rank K --master_addr <first>),
# no GLOO_SOCKET_IFNAME. The adapter must equal a single process's (1e-5 relative). Skips (77)
# without root, iproute2, torchrun or the data.
set -euo pipefail
bin=$1
src=$LORA_SOURCE_DIR
torchrun=$(command -v torchrun || true)
[ -n "$torchrun" ] || { echo "skipping: no torchrun on PATH (Debian: apt-get install python3-torch)"; exit 77; }
command -v ip > /dev/null || { echo "skipping: no 'ip' (iproute2) to make network namespaces"; exit 77; }
data=${LORA_E2E_DIR:-$src/../shared/data/e2e}
vocab=${LORA_GPT2_DIR:-$src/../shared/data/gpt2}
if [ ! -f "$data/train.txt" ] || [ ! -f "$vocab/vocab.json" ]; then
  echo "skipping: E2E data ($data) or GPT-2 tokenizer files ($vocab) not found; set LORA_E2E_DIR / LORA_GPT2_DIR"
  exit 77
fi
tag=lt$$
n=$(( $$ % 250 + 1 ))
if ! ip netns add "${tag}a" 2> /dev/null; then
  echo "skipping: cannot create network namespaces here (needs root / CAP_NET_ADMIN)"
  exit 77
fi
work=$(mktemp -d)
cleanup() {
  ip netns del "${tag}a" 2> /dev/null || true
  ip netns del "${tag}b" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "${tag}b"
ip link add "${tag}x" type veth peer name "${tag}y"
ip link set "${tag}x" netns "${tag}a"
ip link set "${tag}y" netns "${tag}b"
ip -n "${tag}a" addr add "10.199.$n.1/24" dev "${tag}x"
ip -n "${tag}b" addr add "10.199.$n.2/24" dev "${tag}y"
for ns in a b; do
  ip -n "${tag}$ns" link set lo up
done
ip -n "${tag}a" link set "${tag}x" up
ip -n "${tag}b" link set "${tag}y" up

mkdir "$work/data"
head -n 24 "$data/train.txt" > "$work/data/train.txt"
head -n 8 "$data/valid.txt" > "$work/data/valid.txt"
"$bin" init --out "$work/model" --layers 1 --embd 32 --heads 2 --vocab "$vocab" > /dev/null
args=(--model "$work/model" --data "$work/data" --max-steps 4 --batch-size 4 --warmup 1 --lr 0.05 --lora-dropout 0 --threads 1
      --dist-timeout 60)
"$bin" train "${args[@]}" --out "$work/single" > "$work/single.log" 2>&1 || { cat "$work/single.log"; exit 1; }
pids=()
for k in 0 1; do
  ns=$([ $k -eq 0 ] && echo a || echo b)
  ip netns exec "${tag}$ns" env -u GLOO_SOCKET_IFNAME timeout 240 torchrun --nnodes 2 --node_rank $k --nproc_per_node 1 \
    --master_addr "10.199.$n.1" --master_port 29500 --redirects 2 --tee 2 --no_python "$bin" train "${args[@]}" \
    --out "$work/dp" > "$work/node$k.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ $status -eq 0 ] || { tail -n 20 "$work/node0.log" "$work/node1.log"; exit 1; }

python=$(head -n 1 "$torchrun" | sed -e 's/^#! *//' -e 's/ .*//')
"$python" "$(dirname "$0")/compare_adapters.py" "$work/single/adapter/adapter_model.safetensors" \
  "$work/dp/adapter/adapter_model.safetensors" "two namespaces, one torchrun each, vs 1 process"
echo "two-machine launch test passed"
