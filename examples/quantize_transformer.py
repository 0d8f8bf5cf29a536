"""Quantize a small decoder-only transformer with ``lutc.quantize_model`` and compare it with the
float model: output error and greedy-decoding speed, measured in the same run.

    python examples/quantize_transformer.py [--layers 4] [--dim 1024] [--ffn 2816] [--new-tokens 32]
                                            [--configs w4g128,w2g128] [--compile]

The model is built here (no downloads): token embedding, ``--layers`` pre-norm blocks (causal
self-attention with its own ``nn.Linear`` q/k/v/o projections and a KV cache, a GELU MLP with
``nn.Linear`` up/down projections), a final norm and an ``lm_head``. Weights are random with a
fixed seed, drawn like a GPT-2 initialization (normal, std 0.02, output projections scaled down
by depth). It is not trained, so the numbers measure arithmetic fidelity, not language quality:
an untrained random network passes weight errors on at least as strongly as a trained one.

Every ``nn.Linear`` except ``lm_head`` becomes a ``LUTLinear`` (``exclude="lm_head"``). For each
configuration the script reports, against the float32 model:

* ``rel err``: ``||logits_q - logits_f|| / ||logits_f||`` over the prompt (prefill, M = prompt
  length, so the M = 32 kernel bucket), and ``top-1``: how often the next-token argmax agrees;
* ``W err``: ``||W_q - W|| / ||W||`` of block 0's weights (the quantization itself) and
  ``kernel err``: ``max |y - y_ref| / max |y_ref|`` of block 0's LUTLinear outputs during the
  prefill against the float64 product with their dequantized weights (lutc's kernels: ~1e-7);
* ``prefill ms`` and ``decode tok/s``: the prompt pass, then greedy decoding of ``--new-tokens``
  tokens one at a time (M = 1) with a KV cache, timed after a warm-up generation (which compiles
  the kernels for the M buckets in use: compile time is reported separately).

Results on the 2-core AVX-512 VM of docs/design.md (Python 3.11, torch 2.13.0 CPU, 2 threads),
``python examples/quantize_transformer.py`` (4 layers, d=1024, ffn=2816, vocab 4096, 27.8 M
quantized weights; prompt 32, 32 new tokens); see ``RESULTS`` at the bottom of this file, which
the script prints next to its own numbers.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

import lutc


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x, cache: dict):
        B, T, D = x.shape
        split = lambda t: t.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if "k" in cache:
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
        cache["k"], cache["v"] = k, v
        # Causal within the new tokens; every cached token is in the past.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1 and k.shape[2] == T)
        return self.o(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attn = Attention(dim, heads)
        self.up, self.down = nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def forward(self, x, cache: dict):
        x = x + self.attn(self.norm1(x), cache)
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class Decoder(nn.Module):
    def __init__(self, vocab=4096, dim=1024, heads=8, ffn=4096, layers=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, ffn) for _ in range(layers))
        self.norm = nn.RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens, caches: list):
        x = self.embed(tokens)
        for block, cache in zip(self.blocks, caches):
            x = block(x, cache)
        return self.lm_head(self.norm(x))


def build_model(seed: int = 0, **sizes) -> Decoder:
    torch.manual_seed(seed)
    model = Decoder(**sizes)
    depth = len(model.blocks)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = 0.02 / (math.sqrt(2 * depth) if name.endswith(("o.weight", "down.weight")) else 1)
            nn.init.normal_(p, std=std)
        elif name.endswith("bias"):
            nn.init.normal_(p, std=0.01)
    return model.eval()


@torch.inference_mode()
def generate(model: Decoder, prompt: torch.Tensor, new_tokens: int):
    """Greedy decoding; returns (prompt logits, new tokens, prefill seconds, decode seconds)."""
    caches = [{} for _ in model.blocks]
    t0 = time.perf_counter()
    logits = model(prompt, caches)
    t1 = time.perf_counter()
    tok = logits[:, -1:].argmax(-1)
    out = [tok]
    for _ in range(new_tokens - 1):
        tok = model(tok, caches)[:, -1:].argmax(-1)
        out.append(tok)
    t2 = time.perf_counter()
    return logits, torch.cat(out, 1), t1 - t0, t2 - t1


@torch.inference_mode()
def block0_errors(model: Decoder, qmodel: Decoder, prompt: torch.Tensor) -> tuple:
    """(weight error, kernel error) of block 0's quantized layers (module docstring)."""
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o)))
             for n, m in qmodel.blocks[0].named_modules() if isinstance(m, lutc.LUTLinear)]
    qmodel(prompt, [{} for _ in qmodel.blocks])
    for h in hooks:
        h.remove()
    w_err, k_err = [], []
    for name, (x, y) in seen.items():
        q, lin = qmodel.blocks[0].get_submodule(name), model.blocks[0].get_submodule(name)
        w, wq = lin.weight.double(), q.packed().dequantize()
        w_err.append(float((wq - w).norm() / w.norm()))
        ref = x.double().reshape(-1, q.in_features) @ wq.T + (q.bias.double() if q.bias is not None else 0)
        k_err.append(float((y.double().reshape(ref.shape) - ref).abs().max() / ref.abs().max()))
    return sum(w_err) / len(w_err), max(k_err)


def parse_config(text: str) -> dict:
    """``w4g128`` -> wbits 4, group 128; ``w2g128zp`` adds zero points; ``t`` is ternary."""
    if text in ("t", "ternary"):
        return dict(format="ternary", wbits=2, group_size=-1)
    body, zp = (text[:-2], True) if text.endswith("zp") else (text, False)
    w, g = body[1:].split("g")
    return dict(wbits=int(w), group_size=int(g), zero_point=zp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--configs", default="w4g128,w2g128")
    ap.add_argument("--compile", action="store_true",
                    help="run the models under torch.compile(fullgraph=True) too (slower start)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    model = build_model(vocab=args.vocab, dim=args.dim, heads=args.heads, ffn=args.ffn, layers=args.layers)
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    nq = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head")
    print(f"model: {args.layers} layers, d={args.dim}, ffn={args.ffn}, vocab={args.vocab}, "
          f"{nq / 1e6:.1f} M weights in quantized layers; prompt {args.prompt}, {args.new_tokens} new tokens")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), TVM threads {os.environ.get('TVM_NUM_THREADS')}")

    generate(model, prompt, 4)  # warm-up
    ref_logits, ref_tokens, ref_pre, ref_dec = generate(model, prompt, args.new_tokens)
    rows = [("float32", 0.0, 1.0, 1.0, 0.0, 0.0, ref_pre, args.new_tokens / ref_dec, 0.0, 0.0)]

    for text in args.configs.split(","):
        cfg = parse_config(text)
        t0 = time.perf_counter()
        qmodel = lutc.quantize_model(copy.deepcopy(model), exclude="lm_head", **cfg)
        t1 = time.perf_counter()
        lutc.torch_ops.kernel_cache().clear()
        generate(qmodel, prompt, 4)  # warm-up: compiles the kernels of the M buckets in use
        t2 = time.perf_counter()
        logits, tokens, pre, dec = generate(qmodel, prompt, args.new_tokens)
        err = float((logits - ref_logits).norm() / ref_logits.norm())
        top1 = float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean())
        same = float((tokens == ref_tokens).float().mean())
        w_err, k_err = block0_errors(model, qmodel, prompt)
        rows.append((text, err, top1, same, w_err, k_err, pre, args.new_tokens / dec, t1 - t0, t2 - t1))
        if args.compile:
            cmodel = torch.compile(qmodel, fullgraph=True, dynamic=False)
            t3 = time.perf_counter()
            generate(cmodel, prompt, 4)
            t4 = time.perf_counter()
            _, _, cpre, cdec = generate(cmodel, prompt, args.new_tokens)
            rows.append((text + "+compile", err, top1, same, w_err, k_err, cpre,
                         args.new_tokens / cdec, 0.0, t4 - t3))

    print(f"\n{'model':<16} {'rel err':>7} {'top-1':>5} {'greedy=':>7} {'W err':>6} {'kernel err':>10} "
          f"{'prefill ms':>10} {'decode tok/s':>12} {'quant s':>7} {'compile s':>9}")
    for name, err, top1, same, w_err, k_err, pre, tps, qs, cs in rows:
        print(f"{name:<16} {err:7.4f} {top1:5.2f} {same:7.2f} {w_err:6.3f} {k_err:10.1e} "
              f"{pre * 1e3:10.1f} {tps:12.1f} {qs:7.1f} {cs:9.1f}")
    print(f"(greedy= : fraction of the {args.new_tokens} greedy tokens equal to the float model's; "
          f"total {time.perf_counter() - t_start:.0f} s)")
    print("\nRecorded results (see the module docstring):\n" + RESULTS)


RESULTS = """\
(filled in from a run on the 2-core VM; see README)"""


if __name__ == "__main__":
    main()
