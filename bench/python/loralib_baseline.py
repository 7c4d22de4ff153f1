#!/usr/bin/env python3
"""The Python side-by-side of lora-bench's layer pairs (a benchmark tool, never a dependency).

A LoRA layer written plainly in PyTorch as microsoft/LoRA's loralib.Linear computes it,
    y = F.linear(x, W0, b) + (dropout(x) @ A.T @ B.T) * (alpha / r),
against a frozen nn.Linear, each training step forward + backward with a dense random
upstream gradient, the two layers interleaved one step each per pair. Prints the median
per-pair ratio (LoRA / frozen) and each median time, like bench/bench_linear.cpp.

DoRA as PEFT's DoraLinearLayer computes it (lora_weight = B(A(eye)).T, the norm of
W0 + s·lora_weight detached, the base result reused without dropout and recomputed on the
dropped-out input with it) is timed against the LoRA layer the same way: the Python side of
BM_DoRAStepVsLoRAStep.

Run with Debian's python3-torch (the same libtorch as the C++ build):
    /usr/bin/python3 bench/python/loralib_baseline.py [--seconds 6] [--tokens 4096]
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoraLinear(nn.Linear):
    """loralib.Linear's forward (fan_in_fan_out=False, not merged)."""

    def __init__(self, d_in, d_out, r, alpha, dropout):
        super().__init__(d_in, d_out)
        self.lora_A = nn.Parameter(self.weight.new_zeros((r, d_in)))
        self.lora_B = nn.Parameter(self.weight.new_zeros((d_out, r)))
        nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)
        nn.init.normal_(self.lora_B)  # non-zero, as in the C++ benchmark (Init::Random)
        self.scaling = alpha / r
        self.lora_dropout = nn.Dropout(p=dropout) if dropout > 0 else (lambda x: x)
        self.weight.requires_grad = False
        self.bias.requires_grad = False

    def forward(self, x):
        result = F.linear(x, self.weight, bias=self.bias)
        return result + (self.lora_dropout(x) @ self.lora_A.transpose(0, 1) @ self.lora_B.transpose(0, 1)) * self.scaling


class DoraLinear(LoraLinear):
    """PEFT's Linear + DoraLinearLayer forward (tuners/lora/dora.py, variants.py), not merged."""

    def __init__(self, d_in, d_out, r, alpha, dropout):
        super().__init__(d_in, d_out, r, alpha, dropout)
        self.dropout_p = dropout
        with torch.no_grad():
            norm = torch.linalg.norm(self.weight + self.scaling * (self.lora_B @ self.lora_A), dim=1)
        self.magnitude = nn.Parameter(norm)

    def forward(self, x):
        result = F.linear(x, self.weight, bias=self.bias)
        if self.dropout_p == 0 or not self.training:
            base_result = result - self.bias
        else:
            x = self.lora_dropout(x)
            base_result = F.linear(x, self.weight)
        eye = torch.eye(self.lora_A.shape[1], dtype=x.dtype)
        lora_weight = ((eye @ self.lora_A.T) @ self.lora_B.T).T
        weight_norm = torch.linalg.norm(self.weight + self.scaling * lora_weight.detach(), dim=1).detach()
        scale = (self.magnitude / weight_norm).view(1, -1)
        lora_result = (x @ self.lora_A.T) @ self.lora_B.T
        return result + (scale - 1) * base_result + scale * lora_result * self.scaling


def pairs(base, lora, seconds):
    base(), lora()  # warm-up
    ratios, tb_all, tl_all = [], [], []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end or i < 5:
        order = (lora, base) if i % 2 else (base, lora)
        t = {}
        for fn in order:
            t0 = time.perf_counter()
            fn()
            t[fn] = time.perf_counter() - t0
        ratios.append(t[lora] / t[base])
        tb_all.append(t[base])
        tl_all.append(t[lora])
        i += 1
    return statistics.median(ratios), 1e3 * statistics.median(tb_all), 1e3 * statistics.median(tl_all), i


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--r", type=int, default=8)
    a = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
          f"d={a.d}, r={a.r}, tokens={a.tokens}, float32")
    plain = nn.Linear(a.d, a.d)
    for p in plain.parameters():
        p.requires_grad = False
    x = torch.randn(a.tokens, a.d, requires_grad=True)
    dy = torch.randn(a.tokens, a.d)

    def base_step():
        x.grad = None
        plain(x).backward(dy)

    for dropout in (0.0, 0.1):
        layer = LoraLinear(a.d, a.d, a.r, 16, dropout).train()

        def lora_step():
            x.grad = None
            layer.lora_A.grad = None
            layer.lora_B.grad = None
            layer(x).backward(dy)

        ratio, tb, tl, n = pairs(base_step, lora_step, a.seconds)
        print(f"python_loralib_step dropout={dropout}: ratio={ratio:.3f} base_ms={tb:.1f} lora_ms={tl:.1f} pairs={n}")

    for dropout in (0.0, 0.1):
        torch.manual_seed(0)
        lora = LoraLinear(a.d, a.d, a.r, 16, dropout).train()
        torch.manual_seed(0)
        dora = DoraLinear(a.d, a.d, a.r, 16, dropout).train()

        def step(layer):
            x.grad = None
            for p in (layer.lora_A, layer.lora_B, getattr(layer, "magnitude", None)):
                if p is not None:
                    p.grad = None
            layer(x).backward(dy)

        ratio, tb, tl, n = pairs(lambda: step(lora), lambda: step(dora), a.seconds)
        print(f"python_peft_dora_step dropout={dropout}: ratio(DoRA/LoRA)={ratio:.3f} lora_ms={tb:.1f} dora_ms={tl:.1f} pairs={n}")

    with torch.no_grad():
        layer = LoraLinear(a.d, a.d, a.r, 16, 0.0).eval()
        xi = torch.randn(a.tokens, a.d)
        ratio, tb, tl, n = pairs(lambda: plain(xi), lambda: layer(xi), a.seconds)
        print(f"python_loralib_inference unmerged: ratio={ratio:.3f} base_ms={tb:.1f} lora_ms={tl:.1f} pairs={n}")


if __name__ == "__main__":
    main()
