"""PEFT interop, for real: our adapter files read by HF PEFT, PEFT's read by us, our merged export
read by transformers. Same random GPT-2 on both sides; the metric is the mean per-token
cross-entropy over the completion tokens of E2E lines (gpt2-e2e eval), computed independently
in Python with transformers + peft, on token ids from our gpt2-tokenize (the tokenizer is checked
against OpenAI's encoder.py by the test suite).
usage: peft_check.py BUILD_DIR WORKDIR DATADIR   (DATADIR holds e2e/ and gpt2/, as .device/data)"""
import os, subprocess, sys, json
import torch
import transformers, peft
from transformers import GPT2LMHeadModel
from peft import PeftModel, LoraConfig, get_peft_model

BUILD, W, D = sys.argv[1], sys.argv[2], sys.argv[3]
B = BUILD + "/examples/e2e/gpt2-e2e"
os.makedirs(W + "/data", exist_ok=True)
print("transformers", transformers.__version__, "peft", peft.__version__, "torch", torch.__version__, flush=True)
train = open(D + "/e2e/train.txt").read().splitlines()[:64]
valid = open(D + "/e2e/valid.txt").read().splitlines()[:16]
open(W + "/data/train.txt", "w").write("\n".join(train) + "\n")
open(W + "/data/valid.txt", "w").write("\n".join(valid) + "\n")


def sh(*args):
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode:
        print("FAILED:", " ".join(args), "\n", r.stdout[-3000:], r.stderr[-3000:], flush=True)
        raise SystemExit(1)
    return r.stdout


sh(B, "init", "--out", W + "/model", "--layers", "2", "--embd", "64", "--heads", "4", "--vocab", D + "/gpt2")
sh(B, "train", "--model", W + "/model", "--data", W + "/data", "--out", W + "/run", "--max-steps", "6",
   "--batch-size", "8", "--warmup", "1", "--lr", "0.05", "--lora-dropout", "0")


def tokenize(texts):
    r = subprocess.run([BUILD + "/examples/gpt2/gpt2-tokenize", D + "/gpt2"], input="\n".join(texts) + "\n",
                       capture_output=True, text=True, check=True)
    return [list(map(int, l.split())) for l in r.stdout.splitlines()]


pairs = [line.strip().split("||") for line in valid]
IDS = list(zip(tokenize([mr for mr, _ in pairs]), tokenize([" " + ref for _, ref in pairs])))


def ours(adapter=None, model=None):
    args = [B, "eval", "--model", model or W + "/model", "--data", W + "/data/valid.txt", "--limit", "16"]
    if adapter:
        args += ["--adapter", adapter]
    return float(sh(*args).strip().splitlines()[-1].split()[1])


def theirs(model):
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for mr_ids, ref_ids in IDS:
            ctx = mr_ids + [50256]
            ids = ctx + ref_ids + [50256]
            logits = model(torch.tensor([ids])).logits[0].double()
            nll = -logits[:-1].log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
            total += nll[len(ctx) - 1:].sum().item()
            n += len(ids) - len(ctx)
    return total / n


def base():
    return GPT2LMHeadModel.from_pretrained(W + "/model").float()




rows, ok = [], True


def check(name, a, b, tol=2e-5):
    global ok
    rel = abs(a - b) / abs(b)
    good = rel < tol
    ok &= good
    rows.append(f"{name:58s} ours {a:.8f}  theirs {b:.8f}  rel {rel:.1e}  {'PASS' if good else 'FAIL'}")
    print(rows[-1], flush=True)


def guarded(name, fn):
    global ok
    try:
        fn()
    except Exception as e:  # one failing direction must not hide the others
        ok = False
        rows.append(f"{name:58s} ERROR {type(e).__name__}: {e}")
        print(rows[-1], flush=True)


guarded("base model (our HF checkpoint in transformers)", lambda: check("base model (our HF checkpoint in transformers)", ours(), theirs(base())))


def ours_to_peft():
    with_adapter = theirs(PeftModel.from_pretrained(base(), W + "/run/adapter"))
    check("our adapter (q,v slices of c_attn, r=4) loaded by PEFT", ours(W + "/run/adapter"), with_adapter)
    if abs(with_adapter - theirs(base())) < 1e-3:
        raise RuntimeError("the trained adapter does not change the loss: the check would prove nothing")


guarded("our adapter loaded by PEFT", ours_to_peft)


def peft_to_ours(name, **kw):
    torch.manual_seed(1)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, fan_in_fan_out=True, init_lora_weights=False, **kw)
    pm = get_peft_model(base(), cfg)
    pm.save_pretrained(W + "/" + name)
    print(name, json.load(open(W + "/" + name + "/adapter_config.json")).get("target_modules"), flush=True)
    check(f"PEFT adapter '{name}' loaded by us", ours(W + "/" + name), theirs(pm))


guarded("PEFT plain", lambda: peft_to_ours("peft_plain", target_modules=["c_attn", "c_proj"]))
guarded("PEFT patterns", lambda: peft_to_ours("peft_patterns", target_modules=["c_attn", "c_proj", "c_fc"],
                                              rank_pattern={"mlp.c_proj": 4}, alpha_pattern={"mlp.c_proj": 32}))
guarded("PEFT rslora", lambda: peft_to_ours("peft_rslora", target_modules=["c_attn"], use_rslora=True))
guarded("PEFT embedding", lambda: peft_to_ours("peft_embedding", target_modules=["wte", "c_attn"]))


def export():
    sh(B, "export", "--model", W + "/model", "--adapter", W + "/run/adapter", "--out", W + "/merged")
    merged = GPT2LMHeadModel.from_pretrained(W + "/merged").float()
    peft_merged = PeftModel.from_pretrained(base(), W + "/run/adapter").merge_and_unload()
    check("our merged export (transformers) vs PEFT merge_and_unload", theirs(merged), theirs(peft_merged))


guarded("export", export)
print("\n".join(rows))
print("PEFT INTEROP", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
