"""Quantize a small decoder-only transformer with ``lutc.quantize_model`` and compare it with the
float model: output error and greedy-decoding speed, measured in the same run.

    python examples/quantize_transformer.py [--layers 2] [--dim 1024] [--ffn 4096] [--new-tokens 32]
                                            [--configs w4g128,w2g128] [--torch-threads N] [--compile]

The model is built here (no downloads): token embedding, ``--layers`` pre-norm blocks (causal
self-attention with its own ``nn.Linear`` q/k/v/o projections and a KV cache, a GELU MLP with
``nn.Linear`` up/down projections), a final norm and an ``lm_head``. Weights are random with a
fixed seed, drawn like a GPT-2 initialization (normal, std 0.02, output projections scaled down
by depth). It is not trained, so the error numbers say how far the quantized network's outputs
move from the float network's, not how a trained model's quality would change.

Every ``nn.Linear`` except ``lm_head`` becomes a ``LUTLinear`` (``exclude="lm_head"``). For each
configuration the script reports, against the float32 model:

* ``rel err``: ``||logits_q - logits_f|| / ||logits_f||`` over the prompt (prefill, M = prompt
  length, so the M = 32 kernel bucket), ``top-1``: how often the next-token argmax agrees, and
  ``same tok``: the fraction of the greedy continuation equal to the float model's;
* ``W err``: ``||W_q - W|| / ||W||`` of block 0's weights (the quantization itself) and
  ``kernel err``: ``max |y - y_ref| / max |y_ref|`` of block 0's LUTLinear outputs during the
  prefill against the float64 product with their dequantized weights (int8 tables: ~1e-2);
* ``prefill ms`` and ``decode tok/s``: the prompt pass, then greedy decoding of ``--new-tokens``
  tokens one at a time (M = 1) with a KV cache; best of ``--reps`` runs after a warm-up (the
  first lutc generation compiles the kernels for the M buckets in use: ``compile s``).

Results (2026-11-29) on the 2-core AMD EPYC VM (znver5, AVX-512), quiet (load average 0.3):
Python 3.11.7, torch 2.13.0+cpu (2 threads), TVM_NUM_THREADS=2, lutc 0.1.0 with the default
CPU kernel behind ``LUTLinear`` (the x86 SIMD LUT kernel, int8 tables, weights held in its
``ptiles64`` layout); ``python examples/quantize_transformer.py`` (14 s with the imports)::

    model            rel err top-1 same tok  W err kernel err prefill ms decode tok/s quant s compile s
    float32            0.000  1.00     1.00  0.000    0.0e+00       21.6        151.5     0.0       0.0
    w4g128             0.231  0.50     0.22  0.100    1.0e-02        7.6        521.5     4.1       1.7
    w2g128             0.724  0.06     0.16  0.341    8.3e-03        8.4        666.4     3.6       1.4

Decode runs at 3.4x (W4) and 4.4x (W2) the float model's tokens/s and prefill (M = 32) takes
0.35-0.39x its time; an earlier run in the same session, with another process busy, gave 2.8x /
4.2x and 0.27-0.36x. Until 2026-11-28 ``LUTLinear`` ran the generic scalar-gather kernel with
float tables: W4 decoded at 0.5-0.9x and W2 at 0.9-1.4x the float speed, and prefill was 4-14x
slower than fp32.

Reading: the logits error comes from the quantization (``W err``: 10% of the weight at 4 bits,
34% at 2 bits, round-to-nearest codes with a searched clip range, no outlier handling); the
kernels add about 1e-2 of each layer's max output (int8 tables, bound (4) of
``lutc/frontend.py``; ``table_dtype="float32"`` makes that ~1e-7 at the generic kernel's speed).
With ``OMP_WAIT_POLICY=ACTIVE`` (torch's OpenMP workers spin between parallel regions, as they
do by default) the spinning workers starve TVM's thread pool in the lutc models on 2 cores.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import time

# torch's OpenMP workers spin-wait after every parallel region by default. On 2 cores the spin
# takes the CPU from TVM's worker thread: on a quiet VM w4g128 decoded at 30-37 tok/s instead of
# 55-86 and w2g128 at 32-55 instead of 119-133 (float: 132-135 instead of 95); with another
# process running it also stalls torch's own workers (all models 6-13 tok/s). Passive waiting
# must be set before torch loads; OMP_WAIT_POLICY=ACTIVE to compare.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import lutc  # noqa: E402


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x, cache: dict):
        B, T, D = x.shape
        split = lambda t: t.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        prefill = "k" not in cache
        if not prefill:
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
        cache["k"], cache["v"] = k, v
        # The prompt is causal; a decoded token sees the whole cache (the past). An if, not
        # is_causal=<expression>: under torch.compile's dynamic shapes that would be a SymBool.
        if prefill and T > 1:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v)
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
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--configs", default="w4g128,w2g128")
    ap.add_argument("--reps", type=int, default=3, help="timed generations per model (best counts)")
    ap.add_argument("--torch-threads", type=int, default=None, help="default: torch's own")
    ap.add_argument("--compile", action="store_true",
                    help="also time the quantized models under torch.compile(fullgraph=True)")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    t_start = time.perf_counter()
    model = build_model(vocab=args.vocab, dim=args.dim, heads=args.heads, ffn=args.ffn, layers=args.layers)
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    nq = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head")
    print(f"model: {args.layers} layers, d={args.dim}, ffn={args.ffn}, vocab={args.vocab}, "
          f"{nq / 1e6:.1f} M weights in quantized layers; prompt {args.prompt}, {args.new_tokens} new tokens")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load average "
          f"{os.getloadavg()[0]:.1f}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"TVM threads {os.environ.get('TVM_NUM_THREADS')}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')!r}")

    def timed(m):
        """Best prefill seconds and decode tokens/s of ``--reps`` generations, after a warm-up."""
        generate(m, prompt, 4)  # warm-up (for lutc: compiles the kernels of the M buckets in use)
        runs = [generate(m, prompt, args.new_tokens) for _ in range(args.reps)]
        return min(r[2] for r in runs), (args.new_tokens - 1) / min(r[3] for r in runs)

    ref_logits, ref_tokens, _, _ = generate(model, prompt, args.new_tokens)
    pre, tps = timed(model)
    rows = [("float32", 0.0, 1.0, 1.0, 0.0, 0.0, pre, tps, 0.0, 0.0)]
    for text in args.configs.split(","):
        cfg = parse_config(text)
        t0 = time.perf_counter()
        qmodel = lutc.quantize_model(copy.deepcopy(model), exclude="lm_head", **cfg)
        t1 = time.perf_counter()
        logits, tokens, _, _ = generate(qmodel, prompt, args.new_tokens)  # compiles the kernels
        t2 = time.perf_counter()
        err = float((logits - ref_logits).norm() / ref_logits.norm())
        top1 = float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean())
        same = float((tokens == ref_tokens).float().mean())
        w_err, k_err = block0_errors(model, qmodel, prompt)
        pre, tps = timed(qmodel)
        rows.append((text, err, top1, same, w_err, k_err, pre, tps, t1 - t0, t2 - t1))
        if args.compile:
            cmodel = torch.compile(qmodel, fullgraph=True, dynamic=True)
            t3 = time.perf_counter()
            generate(cmodel, prompt, args.new_tokens)
            t4 = time.perf_counter()
            pre, tps = timed(cmodel)
            rows.append((text + "+compile", err, top1, same, w_err, k_err, pre, tps, 0.0, t4 - t3))

    print(f"\n{'model':<16} {'rel err':>7} {'top-1':>5} {'same tok':>8} {'W err':>6} {'kernel err':>10} "
          f"{'prefill ms':>10} {'decode tok/s':>12} {'quant s':>7} {'compile s':>9}")
    for name, err, top1, same, w_err, k_err, pre, tps, qs, cs in rows:
        print(f"{name:<16} {err:7.3f} {top1:5.2f} {same:8.2f} {w_err:6.3f} {k_err:10.1e} "
              f"{pre * 1e3:10.1f} {tps:12.1f} {qs:7.1f} {cs:9.1f}")
    print(f"(same tok: fraction of the {args.new_tokens} greedy tokens equal to the float model's; "
          f"best of {args.reps} timed runs; total {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
