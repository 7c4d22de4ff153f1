"""Training speed of HF transformers + PEFT on the recipe's shape, for the side-by-side with
e2e-bench's BM_TrainStep/medium:1/pad:0/dev:2 (ours: GPT-2 medium, LoRA r = 4, bf16 autocast,
batches of 8 E2E examples padded to the batch's longest). Same here: a random GPT2LMHeadModel
from GPT-2 medium's config (no weights, no network), PEFT LoRA r = 4, alpha = 32, dropout 0.1 on
c_attn (PEFT has no per-slice mask, so it adapts q, k and v where we adapt q and v: 1.5x the
adapter, a negligible share of the step), torch.optim.AdamW (fused where this torch has it), the
loss over completion tokens with label smoothing 0.1, bf16 autocast. Token ids come from our
gpt2-tokenize. Prints tok/s (non-padding input tokens per second, as e2e-bench counts them).
usage: peft_speed.py BUILD_DIR DATADIR [STEPS]   (DATADIR holds e2e/ and gpt2/, as .device/data)"""
import random, subprocess, sys, time
import torch
import torch.nn.functional as F
import transformers, peft
from transformers import GPT2Config, GPT2LMHeadModel
from peft import LoraConfig, get_peft_model

BUILD, D = sys.argv[1], sys.argv[2]
STEPS = int(sys.argv[3]) if len(sys.argv) > 3 else 40
WARMUP = 5
print("transformers", transformers.__version__, "peft", peft.__version__, "torch", torch.__version__, flush=True)

lines = open(D + "/e2e/train.txt").read().splitlines()
random.Random(0).shuffle(lines)
pairs = [l.strip().split("||") for l in lines[: 8 * (STEPS + WARMUP)]]


def tokenize(texts):
    r = subprocess.run([BUILD + "/examples/gpt2/gpt2-tokenize", D + "/gpt2"], input="\n".join(texts) + "\n",
                       capture_output=True, text=True, check=True)
    return [list(map(int, l.split())) for l in r.stdout.splitlines()]


examples = []  # (tokens, context length) as e2e::encode_example builds them
for mr, ref in zip(tokenize([p[0] for p in pairs]), tokenize([" " + p[1] for p in pairs])):
    ctx = mr + [50256]
    examples.append(((ctx + ref + [50256])[:512], len(ctx)))

dev = torch.device("cuda")
config = GPT2Config(n_layer=24, n_embd=1024, n_head=16, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
torch.manual_seed(0)
model = GPT2LMHeadModel(config).to(dev)
model = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, lora_dropout=0.1, target_modules=["c_attn"],
                                         fan_in_fan_out=True, task_type="CAUSAL_LM"))
params = [p for p in model.parameters() if p.requires_grad]
try:
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01, eps=1e-6, fused=True)
except (TypeError, RuntimeError):
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01, eps=1e-6)
model.train()


def batch(i):
    part = examples[8 * i: 8 * i + 8]
    L = max(len(t) for t, _ in part)
    inp = torch.zeros(len(part), L, dtype=torch.long)
    tgt = torch.zeros(len(part), L, dtype=torch.long)
    mask = torch.zeros(len(part), L)
    for r, (t, c) in enumerate(part):
        inp[r, : len(t)] = torch.tensor(t)
        tgt[r, : len(t) - 1] = torch.tensor(t[1:])
        mask[r, c - 1: len(t) - 1] = 1.0  # position p predicts token p + 1: completion tokens from c
    return inp.to(dev), tgt.to(dev), mask.to(dev), sum(len(t) - 1 for t, _ in part)


def step(i):
    inp, tgt, mask, n = batch(i)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(input_ids=inp).logits
    logp = F.log_softmax(logits.float(), -1)
    nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    loss = 0.9 * nll - 0.1 * logp.mean(-1)
    loss = (loss * mask).sum() / (mask.sum() + 1e-4)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return n


for i in range(WARMUP):
    step(i)
torch.cuda.synchronize()
start, tokens = time.perf_counter(), 0
for i in range(WARMUP, WARMUP + STEPS):
    tokens += step(i)
torch.cuda.synchronize()
secs = time.perf_counter() - start
print(f"PEFT_SPEED gpt2-medium bf16 lora: tok/s={tokens / secs:.1f} step_ms={1e3 * secs / STEPS:.1f} steps={STEPS}", flush=True)
