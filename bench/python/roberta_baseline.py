#!/usr/bin/env python3
"""The Python side-by-side of glue-bench's BM_RobertaBaseLoRAStep (a benchmark tool, never a dependency).

A roberta-base-shaped RoBERTa (12 layers, width 768, 12 heads, 3072; random weights) written
plainly in PyTorch as HF's modeling_roberta computes it, with loralib-style LoRA (r = 8,
alpha = 16, no dropout) on query and value and the classification head trained; everything
else frozen. One training step = forward on 8 sequences of 128 tokens, mean cross-entropy,
backward, clipping to 1.0, AdamW (eps 1e-8, weight decay 0.1 except biases and LayerNorm
weights), zero_grad(set_to_none=True): what the C++ step does. Prints the median step time and
tokens/s. Model dropout 0.1 is on in both.

Run with Debian's python3-torch (the same libtorch as the C++ build):
    /usr/bin/python3 bench/python/roberta_baseline.py [--steps 5]
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

H, HEADS, INTER, LAYERS, VOCAB, POS = 768, 12, 3072, 12, 50265, 514


class LoraLinear(nn.Linear):
    def __init__(self, d_in, d_out, r=8, alpha=16):
        super().__init__(d_in, d_out)
        self.lora_A = nn.Parameter(torch.empty(r, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / r

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value = LoraLinear(H, H), nn.Linear(H, H), LoraLinear(H, H)
        self.attn_out, self.attn_ln = nn.Linear(H, H), nn.LayerNorm(H, eps=1e-5)
        self.inter, self.out, self.out_ln = nn.Linear(H, INTER), nn.Linear(INTER, H), nn.LayerNorm(H, eps=1e-5)
        self.drop = nn.Dropout(0.1)

    def forward(self, x, mask):
        b, t, _ = x.shape
        split = lambda y: y.view(b, t, HEADS, H // HEADS).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(H // HEADS) + mask
        ctx = (self.drop(scores.softmax(-1)) @ v).transpose(1, 2).reshape(b, t, H)
        a = self.attn_ln(self.drop(self.attn_out(ctx)) + x)
        return self.out_ln(self.drop(self.out(F.gelu(self.inter(a)))) + a)


class Roberta(nn.Module):
    def __init__(self):
        super().__init__()
        self.word, self.pos, self.token_type = nn.Embedding(VOCAB, H, padding_idx=1), nn.Embedding(POS, H, padding_idx=1), nn.Embedding(1, H)
        self.emb_ln, self.drop = nn.LayerNorm(H, eps=1e-5), nn.Dropout(0.1)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.dense, self.out_proj = nn.Linear(H, H), nn.Linear(H, 2)

    def forward(self, ids, attention):
        positions = torch.cumsum(attention, 1) * attention + 1
        x = self.drop(self.emb_ln(self.word(ids) + self.pos(positions) + self.token_type(torch.zeros_like(ids))))
        mask = (1.0 - attention[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.layers:
            x = layer(x, mask)
        h = self.drop(x[:, 0])
        return self.out_proj(self.drop(torch.tanh(self.dense(h))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(2)
    model = Roberta()
    for n, p in model.named_parameters():
        p.requires_grad = "lora_" in n or n.startswith(("dense.", "out_proj."))
    decay = [p for n, p in model.named_parameters() if p.requires_grad and "bias" not in n and "ln" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and ("bias" in n or "ln" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=5e-4, eps=1e-8)
    ids = torch.randint(3, 50000, (8, 128))
    attention = torch.ones_like(ids)
    labels = ids[:, 1] % 2
    model.train()

    def step():
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(ids, attention), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step()  # warm-up: the optimizer's moments
    times = [step() for _ in range(args.steps)]
    med = statistics.median(times)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}: step {1e3 * med:.1f} ms, {8 * 128 / med:.0f} tokens/s")


if __name__ == "__main__":
    main()
