"""Front doors against the kernel they should run: ``LUTLinear``, the torch op and ``lutc.compile``.

For each N x K, bit width (uniform, group 128) and M, one run times, as users call them:

* **kernel**: ``kernel(x, qw)`` of ``lutc.compile((M, N, K), ...)`` (whatever it picks for this
  shape, target and tuning log), weights packed once in its layout;
* **LUTLinear**: ``module(x)`` of ``LUTLinear.from_packed(qw)``
  (the weights held in the layout its plan chose, ``M`` bucketed by the op's kernel cache);
* **op**: ``torch.ops.lutc.mpgemm`` on the module's buffers (the dispatcher path that
  ``torch.compile`` traces);
* **dense**: ``F.linear`` on a dense weight of the same shape (fp32 on CPUs, fp16 on GPUs), for
  context;
* **custom_op**: the op's body (:func:`lutc.torch_ops.mpgemm_kernel`: its checks, then the kernel
  cache) registered as a ``torch.library.custom_op``, as lutc's op was before 2026-12: the baseline of
  the op's own registration (``lutc.torch_ops``' docstring), timed in the same run;

all under ``torch.no_grad()`` (what ``transformers``' ``generate`` runs in; ``--grad-mode
inference_mode`` for ``torch.inference_mode()``, where torch dispatches ops with less work), each
with its own pool of weight copies rotating through ``--pool-mib`` MiB (more than the
caches hold: a decode step reads every layer's weights once). CPU times are medians of per-call
wall times, the methods timed in turns, 5 rounds of at least 30 calls and 20 ms each (the median
of the rounds' medians). On CUDA every method is timed twice, as
``bench_cuda.py`` times its rows: kernel time in a CUDA graph of rotating calls and eager time
(back-to-back calls, host overhead included); the four graphs are timed in turns, round by round
(``lutc.measure.interleaved_graph_us``). The targets of the front-door issue are checked per row:
CPU ``LUTLinear <= 1.15 x kernel + 15 us`` at M = 1 and ``<= 1.15 x kernel`` at larger M; CUDA
``LUTLinear (graph) <= 1.1 x kernel (graph)`` and ``LUTLinear (eager) <= kernel (graph) + 15 us``.

    python benchmarks/bench_front_doors.py                       # this CPU, ~5 min on 2 cores
    python benchmarks/bench_front_doors.py --device cuda --shapes 4096x4096,28672x8192
    python benchmarks/bench_front_doors.py --out benchmarks/results/front_doors_cpu.md
    python benchmarks/bench_front_doors.py --device cuda --decode-layers 8   # + a decode step
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import sys
from typing import Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lutc  # noqa: E402
from bench_cpu import median_us, packed_copies  # noqa: E402
from bench_cuda import graph_calls, rotating, time_eager as cuda_eager_us, time_graph as cuda_graph_us  # noqa: E402
from lutc.measure import interleaved_graph_us  # noqa: E402
from lutc.testing import random_weights, reference, rel_error, rotation_copies, tolerance  # noqa: E402


def custom_op_baseline():
    """``lutc_bench::mpgemm``: the op's body (checks, then the kernel cache) registered with
    ``torch.library.custom_op``, once per process."""
    if not hasattr(torch.ops.lutc_bench, "mpgemm"):
        @torch.library.custom_op("lutc_bench::mpgemm", mutates_args=())
        def mpgemm(x: torch.Tensor, planes: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                   wbits: int, group_size: int, format: str, g: int, symmetrize: bool,
                   table_dtype: Optional[str], layout: str, N: int) -> torch.Tensor:
            return lutc.torch_ops.mpgemm_kernel(x, planes, scales, zeros, wbits, group_size, format, g, symmetrize,
                                                table_dtype, layout, N)
    return torch.ops.lutc_bench.mpgemm


def in_turns_us(fns: dict, pool: int, rounds: int = 5) -> dict:
    """Median per-call time of each of ``fns`` (``fn(i)``, ``i`` rotating over ``pool``), the
    methods timed one after another, round by round; the median of each method's rounds."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_us(fn, pool, min_seconds=0.02))
    return {name: statistics.median(t) for name, t in times.items()}


GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def measure(N: int, K: int, wbits: int, M: int, device: str, pool_bytes: int, grad_mode: str = "no_grad") -> dict:
    act = torch.float32 if device == "cpu" else torch.float16
    act_name = str(act).removeprefix("torch.")
    spec = lutc.MPGemmSpec(1, N, K, wbits=wbits, group_size=128)
    qw = random_weights(spec, seed=N + K + wbits)
    gen = torch.Generator().manual_seed(M)
    x = torch.randn(M, K, generator=gen).to(act)
    ref = reference(x, qw)

    kernel = lutc.compile((M, N, K), wbits=wbits, group_size=128, act_dtype=act_name,
                          target=None if device == "cpu" else "cuda")
    packed = kernel.pack(qw)
    kpool = packed_copies(packed, pool_bytes)
    copies = len(kpool)
    module = lutc.LUTLinear.from_packed(qw, device=device, dtype=act)
    mpool = [copy.deepcopy(module) for _ in range(copies)]
    dense = [torch.randn(N, K, generator=gen).to(act).to(device)
             for _ in range(rotation_copies(N * K * act.itemsize, pool_bytes))]
    xd = x.to(device)
    plan = module.plan
    layout_i = plan.layout_for(M)
    op_args = [[getattr(m, n) for n in (("planes", "scales", "zeros") if layout_i == 0 else
                                        ("batch_planes", "batch_scales", "batch_zeros"))] for m in mpool]

    def run_kernel(i):
        return kernel(xd, kpool[i])

    def run_module(i):
        return mpool[i](xd)

    def run_op(i):
        p, s, z = op_args[i]
        return torch.ops.lutc.mpgemm(xd, p, s, z, wbits, 128, "uniform", 4, True, plan.table_dtype,
                                     plan.layouts[layout_i], N)

    def run_custom_op(i):
        p, s, z = op_args[i]
        return custom_op_baseline()(xd, p, s, z, wbits, 128, "uniform", 4, True, plan.table_dtype,
                                    plan.layouts[layout_i], N)

    def run_dense(i):
        return F.linear(xd, dense[i % len(dense)])

    with GRAD_MODES[grad_mode]():
        tol = tolerance(kernel.spec)
        errors = {name: rel_error(fn(0).cpu(), ref) for name, fn in
                  (("kernel", run_kernel), ("LUTLinear", run_module), ("op", run_op),
                   ("custom_op", run_custom_op))}
        bad = {k: v for k, v in errors.items() if not v < tol}
        if bad:
            raise SystemExit(f"{N}x{K} W{wbits} M={M}: wrong results {bad} (bound {tol})")
        row = {"N": N, "K": K, "wbits": wbits, "M": M, "kernel_schedule": kernel.schedule,
               "kernel_layout": kernel.layout, "module_layouts": list(plan.layouts), "copies": copies,
               "max_rel_error": max(errors.values())}
        fns = {"kernel": run_kernel, "LUTLinear": run_module, "op": run_op, "custom_op": run_custom_op,
               "dense": run_dense}
        if device == "cpu":
            row.update(in_turns_us(fns, copies))
        else:
            # in turns: timed one after another, the later ones ran on a hotter, slower GPU
            graph_us = interleaved_graph_us({name: rotating(fn, copies) for name, fn in fns.items()},
                                            calls=graph_calls(copies))
            for name, fn in fns.items():
                row[name + "_graph"] = graph_us[name]
                row[name + "_eager"] = cuda_eager_us(fn, copies, n=200)
        used = {k.schedule for k in lutc.torch_ops.kernel_cache().kernels()
                if k.spec.N == N and k.spec.K == K and k.spec.wbits == wbits}
        row["module_schedules"] = sorted(used)
    row["target_met"] = target_met(row, device)
    return row


class LinearStack(torch.nn.Module):
    """The Linear layers of ``layers`` Llama-7B-sized blocks (q, k, v, o: 4096x4096; gate, up:
    11008x4096; down: 4096x11008) applied in sequence at M = 1: the weight-reading part of a
    decode step, which is what low-bit weights change (attention over the KV cache at M = 1 is
    the same for both models)."""

    def __init__(self, layers: int, dim: int = 4096, ffn: int = 11008):
        super().__init__()
        shapes = [(dim, dim)] * 4 + [(dim, ffn), (dim, ffn), (ffn, dim)]
        self.blocks = torch.nn.ModuleList(torch.nn.ModuleList(torch.nn.Linear(k, n, bias=False) for k, n in shapes)
                                          for _ in range(layers))

    def forward(self, x):
        for block in self.blocks:
            q, k, v, o, gate, up, down = block
            h = o(q(x) + k(x) + v(x))
            x = x + down(torch.nn.functional.silu(gate(h)) * up(h))
        return x


def decode_step(layers: int, wbits: int, device: str) -> dict:
    """Time of one decode step (:class:`LinearStack`, M = 1) of the float model (fp32 on CPUs,
    fp16 on GPUs) and of its lutc-quantized copy, as users run it (eager; and on CUDA in a graph)."""
    act = torch.float32 if device == "cpu" else torch.float16
    torch.manual_seed(0)
    model = LinearStack(layers).to(act).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    # Empty (zero) quantized layers: a kernel's time does not depend on the weight values, and
    # quantizing 7 x layers Llama-sized weights would take minutes (the kernels' results are
    # checked in the per-shape rows above).
    quantized = lutc.quantize_model(copy.deepcopy(model), wbits=wbits, group_size=128, empty=True)
    model, quantized = model.to(device), quantized.to(device=device, dtype=act)
    x = torch.randn(1, 4096, dtype=act, device=device)
    row = {"decode_step": f"{layers} x Llama-7B linear layers", "wbits": wbits,
           "layouts": sorted({m.layouts for m in quantized.modules() if isinstance(m, lutc.LUTLinear)})}
    with torch.inference_mode():
        for name, m in (("float", model), ("lutc", quantized)):
            if device == "cpu":
                row[name] = median_us(lambda i: m(x), 1, calls=10, min_seconds=0.05)
            else:
                row[name + "_graph"] = cuda_graph_us(lambda i: m(x), 1, target_calls=5)
                row[name + "_eager"] = cuda_eager_us(lambda i: m(x), 1, n=20)
    return row


def target_met(row: dict, device: str) -> bool:
    if device == "cpu":
        slack = 15.0 if row["M"] == 1 else 0.0
        return row["LUTLinear"] <= 1.15 * row["kernel"] + slack
    return (row["LUTLinear_graph"] <= 1.1 * row["kernel_graph"]
            and row["LUTLinear_eager"] <= row["kernel_graph"] + 15.0)


def markdown(rows: list, device: str, machine: str, args) -> str:
    lines = [f"# Front doors vs the kernel: {machine}", "",
             f"`python benchmarks/bench_front_doors.py {' '.join(sys.argv[1:])}`, "
             f"{datetime.date.today()}, lutc {lutc.__version__}, torch {torch.__version__}, "
             f"{os.environ.get('TVM_NUM_THREADS')} TVM threads, weights rotating through "
             f"{args.pool_mib} MiB per method, under torch.{args.grad_mode}(). Times in us (median per call).", ""]
    if device == "cpu":
        lines += ["| N x K | W | M | kernel (lutc.compile) | LUTLinear | op | op as custom_op | dense fp32 | "
                  "LUTLinear / kernel | op / kernel | target | kernel schedule, layout | LUTLinear layout, schedules |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['N']}x{r['K']} | {r['wbits']} | {r['M']} | {r['kernel']:.0f} | {r['LUTLinear']:.0f} | "
                         f"{r['op']:.0f} | {r['custom_op']:.0f} | {r['dense']:.0f} | "
                         f"{r['LUTLinear'] / r['kernel']:.2f} | "
                         f"{r['op'] / r['kernel']:.2f} | "
                         f"{'met' if r['target_met'] else 'missed'} | {r['kernel_schedule']}, {r['kernel_layout']} | "
                         f"{'+'.join(r['module_layouts'])}, {'/'.join(r['module_schedules'])} |")
    else:
        lines += ["| N x K | W | M | kernel graph | LUTLinear graph | op graph | kernel eager | LUTLinear eager | "
                  "op eager | op as custom_op eager | cuBLAS fp16 graph | LUTLinear / kernel (graph) | target | "
                  "kernel | LUTLinear layouts |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['N']}x{r['K']} | {r['wbits']} | {r['M']} | {r['kernel_graph']:.1f} | "
                         f"{r['LUTLinear_graph']:.1f} | {r['op_graph']:.1f} | {r['kernel_eager']:.1f} | "
                         f"{r['LUTLinear_eager']:.1f} | {r['op_eager']:.1f} | {r['custom_op_eager']:.1f} | "
                         f"{r['dense_graph']:.1f} | "
                         f"{r['LUTLinear_graph'] / r['kernel_graph']:.2f} | {'met' if r['target_met'] else 'missed'} | "
                         f"{r['kernel_schedule']} ({r['kernel_layout']}) | {'+'.join(r['module_layouts'])} |")
    met = sum(r["target_met"] for r in rows)  # (decode steps are appended after this table)
    lines += ["", f"Targets met on {met} of {len(rows)} rows."]
    return "\n".join(lines) + "\n"


def machine_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{lutc.target.cpu_model()}, {len(os.sched_getaffinity(0))} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shapes", default=None, help="NxK list (default: 4096x4096,4096x11008 on CPU; "
                                                   "4096x4096,28672x8192 on CUDA; none: no rows)")
    ap.add_argument("--wbits", default="2,4")
    ap.add_argument("--m", default="1,16,128")
    ap.add_argument("--pool-mib", type=int, default=None, help="default 1024 (CPU), 512 (CUDA)")
    ap.add_argument("--out", default=None, help="write the Markdown table (and .json beside it) here")
    ap.add_argument("--grad-mode", default="no_grad", choices=sorted(GRAD_MODES),
                    help="the context every method runs in (default: torch.no_grad(), as transformers' generate)")
    ap.add_argument("--decode-layers", type=int, default=0,
                    help="also time a decode step of this many Llama-7B-sized blocks' Linear layers")
    args = ap.parse_args()
    shapes = args.shapes or ("4096x4096,4096x11008" if args.device == "cpu" else "4096x4096,28672x8192")
    args.pool_mib = args.pool_mib or (1024 if args.device == "cpu" else 512)
    rows = []
    for shape in (s for s in shapes.split(",") if s != "none"):
        N, K = (int(v) for v in shape.lower().split("x"))
        for wbits in (int(w) for w in args.wbits.split(",")):
            for M in (int(m) for m in args.m.split(",")):
                row = measure(N, K, wbits, M, args.device, args.pool_mib << 20, args.grad_mode)
                rows.append(row)
                print(json.dumps(row), flush=True)
    text = markdown(rows, args.device, machine_name(args.device), args)
    steps = [decode_step(args.decode_layers, w, args.device) for w in (int(w) for w in args.wbits.split(","))
             if args.decode_layers]
    if steps:
        key = "" if args.device == "cpu" else "_graph"
        text += (f"\nDecode step ({steps[0]['decode_step']}, M = 1, {'fp32' if args.device == 'cpu' else 'fp16'} "
                 "model vs its `lutc.quantize_model` copy; us):\n\n| W | float | lutc | speedup | lutc layouts |"
                 + ("" if key == "" else " float eager | lutc eager |") + "\n|---|---|---|---|---|"
                 + ("" if key == "" else "---|---|") + "\n")
        for st in steps:
            text += (f"| {st['wbits']} | {st['float' + key]:.0f} | {st['lutc' + key]:.0f} | "
                     f"{st['float' + key] / st['lutc' + key]:.2f}x | {st['layouts']} |"
                     + ("" if key == "" else f" {st['float_eager']:.0f} | {st['lutc_eager']:.0f} |") + "\n")
        rows.extend(steps)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
