"""CUDA benchmark: lutc's CUDA kernels against the kernels a user would pick today, one run.

For each N x K in SHAPES, M in MS and 2/4-bit weights (group 128, fp16 activations), it times

* **kernel time**: a CUDA graph of many calls, replayed (launch gaps gone), per call;
* **eager time**: the same calls made one after another from Python through each library's
  PyTorch-facing call (for lutc ``kernel(x, qw)``: argument checks, output allocation, launch);

with weights rotating through copies that together exceed twice the L2 (a decode step reads
each layer's weights once), for:

* lutc ``cuda_lut`` (M <= 8) and any other lutc CUDA schedule that supports the shape;
* torch fp16 ``F.linear`` (cuBLAS) on an fp16 weight;
* torch's int4 kernel ``torch._weight_int4pack_mm`` (W4, group 128, bf16 activations);
* gemlite ``A16Wn`` W2 / W4 group 128 (Triton), if importable;
* bitsandbytes NF4 (``matmul_4bit``, blocksize 64), if importable (4-bit rows only);
* Humming (``humming-kernels``, the 2026 vLLM/SGLang mixed-precision backend: wgmma/TMA on
  SM90) ``uint2``/``uint4`` group 128 with zero points, if importable.

The **floor** of a row is the bytes it must move (packed weight bits + one fp16 scale per 128
weights + x + y) over the device-to-device copy bandwidth measured in the same run (bytes read
+ written); ``of floor`` is floor / kernel time. lutc's outputs are checked against an fp32
reference (dequantized on the GPU) before timing. Writes ``bench_cuda.json`` and
``bench_cuda.md`` into ``--out`` and prints the table.

    python benchmarks/bench_cuda.py --out results/          # on a GPU machine
    python benchmarks/bench_cuda.py --precompile             # no GPU: fill lutc's nvcc cache
    python benchmarks/plot_cuda.py results/bench_cuda.json   # the roofline-style PNG
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lutc  # noqa: E402
import schedules  # noqa: E402
from schedules import contract  # noqa: E402
from lutc.measure import graph_time_us, interleaved_graph_us  # noqa: E402
from lutc.formats import PackedWeights  # noqa: E402
from lutc import layouts  # noqa: E402
from lutc.layouts import tc16_codes  # noqa: E402
from lutc.testing import rotation_copies, tolerance  # noqa: E402

SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (28672, 8192), (8192, 28672))
MS = (1, 4, 16, 64, 128, 512, 2048, 4096)
WBITS = (2, 4)
GROUP = 128
LUTC_SCHEDULES = ("cuda_lut", "cuda_stream", "cuda_wgmma", "cuda_mma")


def lutc_specs(N, K, M, wbits):
    return lutc.MPGemmSpec(M, N, K, wbits=wbits, group_size=GROUP, act_dtype="float16")


def lutc_modules(spec):
    """(name, module) of the lutc CUDA schedules that build ``spec``; for the name ``default``
    (module unused): the kernel ``lutc.compile`` picks (tuning log, else ``schedules.default``),
    what a user gets."""
    tgt = lutc.target.resolve("cuda:sm_90a")
    out = []
    for name in LUTC_SCHEDULES:
        module = schedules.named(name)
        if name == "default" or (module is not None and module.supports(spec, tgt)):
            out.append((name, module))
    return out


def lutc_kernel(spec, sname: str, target: str = "cuda"):
    """The kernel of column ``sname`` (a schedule's name, or ``default``: :func:`lutc_modules`)."""
    return lutc.build(spec, target=target, schedule=None if sname == "default" else sname)


# --- timing --------------------------------------------------------------------------------

def copy_bandwidth(nbytes=1 << 30) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written."""
    a = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda").random_(0, 255)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    return nbytes / statistics.median(times)


def time_graph(call, copies: int, target_calls: int = 40, replays: int = 10) -> float:
    """Median per-call time (us) of a CUDA graph of ``call(i)`` over rotating copies (lutc's
    :func:`~lutc.measure.graph_time_us`, after one eager call per copy: first calls prepare)."""
    return graph_time_us(rotating(call, copies), graph_calls(copies, target_calls), replays)


def graph_calls(copies: int, target_calls: int = 40) -> int:
    """Calls captured in one graph: at least ``target_calls``, a whole number of turns over the
    weight copies (each copy read equally often)."""
    return copies * max(1, math.ceil(target_calls / copies))


def rotating(call, copies: int):
    """A launch that calls ``call(i)`` with ``i`` turning over the copies, one eager call per copy
    first (first calls prepare): what :func:`time_graph` captures."""
    for i in range(copies):
        call(i)
    turn = itertools.count()
    return lambda: call(next(turn) % copies)


def time_eager(call, copies: int, n: int = 100, repeats: int = 5) -> float:
    """Median per-call time (us) of ``n`` eager calls back to back (host overhead included)."""
    for i in range(copies):
        call(i)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for j in range(n):
            call(j % copies)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e3 / n)
    return statistics.median(times)


def copies_for(nbytes: int, l2: int) -> int:
    """Weight copies whose total exceeds twice the L2 (at least 2)."""
    return rotation_copies(nbytes, math.ceil(2.2 * l2))


# --- weights -------------------------------------------------------------------------------

def random_packed(layout: str, N, K, wbits, gen) -> PackedWeights:
    """Random uniform-format weights already in a CUDA kernel's layout, on the GPU (``tc16``
    holds 1- and 3-bit codes in 2- and 4-bit slots: the bits above a code are cleared)."""
    spec = lutc.MPGemmSpec(1, N, K, wbits=wbits, group_size=GROUP)
    shapes = layouts.get(layout).shapes(spec)          # [row tiles, ..., rows per tile]
    planes = torch.randint(-2 ** 31, 2 ** 31 - 1, shapes["planes"].shape, dtype=torch.int32, device="cuda",
                           generator=gen)
    slot = layouts.tc16_code_bits(spec) if layout == "tc16" else wbits
    if slot > wbits:
        planes &= sum((2 ** wbits - 1) << i for i in range(0, 32, slot))     # below bit 31: an int32
    scales = (torch.rand(shapes["scales"].shape, device="cuda", generator=gen) * 0.02 + 0.005).half()
    R = scales.shape[-1]
    if N % R:
        scales[-1, :, N % R:] = 0
    return PackedWeights(format="uniform", wbits=wbits, N=N, K=K, group_size=GROUP, zero_point=False,
                         scale_dtype="float16", planes=planes, scales=scales, layout=layout)


def dequant_packed(qw: PackedWeights) -> torch.Tensor:
    """fp32 ``[N, K]`` of a uniform ``warp32``/``tc16`` weight, computed on the GPU (checks)."""
    b = qw.wbits
    if qw.layout == "warp32":
        NT, KU, _, R, _ = qw.planes.shape
        words = qw.planes.permute(0, 3, 1, 4, 2).reshape(NT * R, KU * 4, b)      # [N', K/32, b]
        shifts = torch.arange(32, device=words.device, dtype=torch.int32)
        bits = (words.unsqueeze(-1) >> shifts) & 1                                # [N', K/32, b, 32]
        code = sum(bits[:, :, i, :].float() * (2 ** i) for i in range(b)).reshape(NT * R, -1)
    else:
        NT, R = qw.planes.shape[0], 16
        code = tc16_codes(qw.planes).float()
    scale = qw.scales.permute(0, 2, 1).reshape(NT * R, -1).float().repeat_interleave(GROUP, 1)
    return (scale * (code - qw.weight_spec().code_center))[: qw.N]


# --- peers ---------------------------------------------------------------------------------

def peer_fp16(N, K, M, copies, gen):
    ws = [(torch.randn(N, K, device="cuda", generator=gen) * 0.02).half() for _ in range(copies)]
    x = torch.randn(M, K, device="cuda", generator=gen).half()
    return lambda i: F.linear(x, ws[i])


def peer_int4(N, K, M, copies, gen):
    ws, sz = [], []
    for _ in range(copies):
        q = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, device="cuda", generator=gen)
        ws.append(torch._convert_weight_to_int4pack(q, 8))
        s = torch.rand(K // GROUP, N, 1, device="cuda", generator=gen) * 0.02 + 0.005
        sz.append(torch.cat([s, torch.zeros_like(s)], -1).to(torch.bfloat16).contiguous())
    x = torch.randn(M, K, device="cuda", generator=gen).to(torch.bfloat16)
    return lambda i: torch._weight_int4pack_mm(x, ws[i], GROUP, sz[i])


def peer_gemlite(N, K, M, copies, gen, wbits):
    from gemlite.helper import A16Wn
    mods = []
    for _ in range(copies):
        wq = torch.randint(0, 2 ** wbits, (N, K), dtype=torch.uint8, device="cuda", generator=gen)
        s = (torch.rand(N, K // GROUP, device="cuda", generator=gen) * 0.02 + 0.005).half()
        z = torch.full((N, K // GROUP), (2 ** wbits - 1) / 2, device="cuda").half()
        mods.append(A16Wn(device="cuda", dtype=torch.float16).from_weights(wq, s, z, W_nbits=wbits,
                                                                           group_size=GROUP))
    x = torch.randn(M, K, device="cuda", generator=gen).half()
    return lambda i: mods[i](x)


def peer_bnb(N, K, M, copies, gen):
    import bitsandbytes as bnb
    packs = []
    for _ in range(copies):
        w = (torch.randn(N, K, device="cuda", generator=gen) * 0.02).half()
        packs.append(bnb.functional.quantize_4bit(w, blocksize=64, quant_type="nf4"))
        del w
    x = torch.randn(M, K, device="cuda", generator=gen).half()
    return lambda i: bnb.matmul_4bit(x, packs[i][0].t(), quant_state=packs[i][1])


def peer_humming(N, K, M, copies, gen, wbits):
    from humming.layer import HummingLayer
    layers = []
    for _ in range(copies):
        layer = HummingLayer(shape_n=N, shape_k=K, weight_config={"dtype": f"uint{wbits}", "group_size": GROUP,
                                                                 "has_zero_point": True},
                             torch_dtype=torch.float16).cuda()
        layer.load_from_unquantized((torch.randn(N, K, device="cuda", generator=gen) * 0.02).half())
        layer.transform()
        layers.append(layer)
    x = torch.randn(M, K, device="cuda", generator=gen).half()
    for layer in layers[:1]:
        layer(x)        # JIT-compiles (NVRTC) outside the timed graph
    return lambda i: layers[i](x)


def weight_bytes(N, K, wbits):
    return N * K * wbits // 8 + (N * K // GROUP) * 2


# --- the run -------------------------------------------------------------------------------

def run(args) -> dict:
    props = torch.cuda.get_device_properties(0)
    l2 = props.L2_cache_size
    bw = copy_bandwidth()
    print(f"# {props.name}, {props.multi_processor_count} SMs, L2 {l2 / 2**20:.0f} MiB, "
          f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    result = {"device": props.name, "sms": props.multi_processor_count, "l2_bytes": l2,
              "copy_bw_Bps": bw, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "rows": []}
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    ms = [int(m) for m in args.ms] if args.ms else MS
    for (N, K) in shapes:
        for M in ms:
            row = {"N": N, "K": K, "M": M, "kernel_us": {}, "eager_us": {}, "floor_us": {}, "notes": {}}
            for wbits in WBITS:
                nbytes = weight_bytes(N, K, wbits) + M * K * 2 + M * N * 2
                row["floor_us"][f"W{wbits}"] = nbytes / bw * 1e6
            result["rows"].append(row)

            calls, copies_of = {}, {}

            def measure(name, factory, nbytes):
                """Build ``name``'s rotating call (timed below, with the row's others in turns)."""
                copies = copies_for(nbytes, l2)
                try:
                    calls[name], copies_of[name] = factory(copies), copies
                except Exception as exc:  # a peer that fails is reported, not fatal
                    row["notes"][name] = f"{type(exc).__name__}: {str(exc)[:160]}"
                    if args.verbose:
                        traceback.print_exc()

            for wbits in WBITS:
                spec = lutc_specs(N, K, M, wbits)
                for sname, _ in lutc_modules(spec):
                    kernel = lutc_kernel(spec, sname)

                    def factory(copies, kernel=kernel, wbits=wbits):
                        qws = [random_packed(kernel.layout, N, K, wbits, gen) for _ in range(copies)]
                        x = torch.randn(M, K, device="cuda", generator=gen).half()
                        y = kernel(x, qws[0])
                        ref = x.float() @ dequant_packed(qws[0]).T
                        err = float((y.float() - ref).abs().max() / ref.abs().max())
                        row["notes"][f"lutc {sname} W{wbits} rel_err"] = err
                        if not err < tolerance(spec):
                            raise AssertionError(f"lutc {sname} W{wbits} wrong: rel err {err:.2e}")
                        return lambda i: kernel(x, qws[i])
                    measure(f"lutc {sname} W{wbits}", factory, weight_bytes(N, K, wbits))
                    row["notes"][f"lutc {sname} W{wbits} knobs"] = {"schedule": kernel.schedule,
                                                                    **effective_knobs(spec, kernel)}
            measure("fp16 cuBLAS", lambda c: peer_fp16(N, K, M, c, gen), N * K * 2)
            measure("torch int4 W4", lambda c: peer_int4(N, K, M, c, gen), weight_bytes(N, K, 4))
            if not args.no_gemlite:
                for wbits in WBITS:
                    measure(f"gemlite W{wbits}", lambda c, w=wbits: peer_gemlite(N, K, M, c, gen, w),
                            weight_bytes(N, K, wbits))
            if not args.no_humming:
                for wbits in WBITS:
                    measure(f"humming W{wbits}", lambda c, w=wbits: peer_humming(N, K, M, c, gen, w),
                            weight_bytes(N, K, wbits))
            if not args.no_bnb:
                measure("bnb NF4", lambda c: peer_bnb(N, K, M, c, gen), N * K // 2 + N * K // 64 * 4)
            # kernel time in turns, round by round: timed one after another, the later methods ran on a
            # hotter, slower GPU (the same lutc kernel twice in a row at 8192 x 28672, M = 128: 100.8
            # then 109.5 us), which favoured the first (lutc's kernels); eager times one by one after
            try:
                graph_us = interleaved_graph_us({n: rotating(c, copies_of[n]) for n, c in calls.items()},
                                                calls={n: graph_calls(c) for n, c in copies_of.items()})
            except Exception as exc:  # one method failing in a graph: time them one by one
                row["notes"]["interleaved"] = f"{type(exc).__name__}: {str(exc)[:160]}"
                graph_us = {}
            for name, call in calls.items():
                try:
                    row["kernel_us"][name] = graph_us.get(name) or time_graph(call, copies_of[name])
                    row["eager_us"][name] = time_eager(call, copies_of[name])
                except Exception as exc:
                    row["kernel_us"].pop(name, None)
                    row["notes"][name] = f"{type(exc).__name__}: {str(exc)[:160]}"
            calls.clear()
            torch.cuda.empty_cache()
            print(format_row(row), flush=True)
            if args.out:  # partial results survive a time limit
                os.makedirs(args.out, exist_ok=True)
                with open(os.path.join(args.out, "bench_cuda.json"), "w") as f:
                    json.dump(result, f, indent=1)
    return result


def effective_knobs(spec, kernel) -> dict:
    """The knobs the kernel was built with (its own over the schedule's defaults, where the
    schedule has defaults)."""
    return contract.resolve_knobs(schedules.named(kernel.schedule), spec, **kernel.knobs)


def candidates(sname: str, M: int) -> list:
    """Knob sets tried by ``--sweep`` (those over the shared-memory limit drop)."""
    if sname == "cuda_mma":
        mt = 1 << (min(8, -(-M // 16)) - 1).bit_length()
        if mt == 1:  # (warps, wn, nw, mt, xsm, units)
            sets = ((2, 2, 2, 1, True, 1), (4, 2, 2, 1, True, 1), (2, 2, 2, 1, True, 2), (4, 1, 4, 1, False, 1),
                    (4, 1, 4, 1, False, 2), (2, 2, 2, 1, False, 2), (4, 2, 2, 1, False, 2), (2, 4, 2, 1, False, 2))
        else:
            sets = ((1, 4, 2, mt, True, 1), (1, 4, 2, mt, False, 2), (1, 4, 2, min(mt, 4), True, 1),
                    (1, 4, 2, min(mt, 4), False, 2), (2, 2, 2, min(mt, 4), False, 1), (1, 4, 2, 2, True, 2),
                    (2, 2, 2, 2, False, 2))
            if mt >= 8:   # prefill: bigger weight tiles per block reuse each dequantized weight more
                sets += ((1, 4, 4, mt, True, 1), (1, 8, 2, mt, True, 1), (1, 8, 1, mt, True, 1),
                         (1, 2, 4, mt, True, 1), (1, 8, 2, 4, True, 1), (1, 4, 4, 4, True, 1),
                         (2, 4, 2, mt, True, 1), (1, 4, 1, mt, True, 1), (1, 2, 2, 2, True, 2))
        cands = [dict(warps=w, wn=n, nw=t, mt=m, xsm=x, units=u) for (w, n, t, m, x, u) in sets]
    elif sname == "cuda_stream":   # (warps, wn, nw, stages)
        cands = [dict(warps=w, wn=n, nw=t, stages=p) for (w, n, t, p) in (
            (4, 1, 2, 4), (4, 1, 2, 6), (4, 1, 2, 8), (4, 1, 4, 3), (4, 1, 4, 4), (4, 2, 1, 4), (4, 2, 1, 6),
            (4, 2, 2, 3), (2, 2, 2, 4), (2, 2, 2, 6), (2, 1, 4, 4), (4, 1, 1, 8), (1, 4, 1, 6), (2, 4, 1, 4))]
    elif sname == "cuda_wgmma":   # (wg, wn, bm, stages, ws: copying warpgroups)
        cands = [dict(wg=g, wn=n, bm=m, stages=p, ws=w) for (g, n, m, p, w) in (
            (2, 1, 128, 4, True), (2, 1, 128, 4, 2), (2, 2, 64, 4, True), (2, 2, 64, 4, 2), (3, 1, 128, 4, True),
            (2, 1, 256, 3, True), (2, 1, 64, 4, 2), (2, 1, 64, 4, True), (1, 1, 64, 4, True), (1, 1, 128, 4, 2),
            (3, 1, 64, 4, 2))]
    else:
        cands = [dict(warps=w, tiles=t, rows=r, units=u) for (w, t, r, u) in (
            (4, 2, 1, 2), (4, 1, 1, 2), (8, 1, 1, 1), (4, 2, 1, 1), (4, 1, 2, 1), (2, 4, 1, 2),
            (2, 4, 1, 1), (2, 2, 2, 1), (1, 4, 1, 2), (2, 2, 1, 1))]
    spec = lutc.MPGemmSpec(M, 4096, 4096, wbits=2, group_size=GROUP, act_dtype="float16")
    module = schedules.named(sname)
    # cuda_wgmma: a token tile past M's is the same kernel again (its worth_tuning)
    return [k for k in cands if _builds(module, spec, k)
            and (sname != "cuda_wgmma" or schedules.contract.worth_tuning(module, spec, None, **k))]


def _builds(module, spec, knobs: dict) -> bool:
    """Whether the schedule accepts these knobs for ``spec`` (e.g. its shared memory fits)."""
    try:
        contract.resolve_knobs(module, spec, **knobs)
        return True
    except ValueError:
        return False


def sweep(args) -> dict:
    """Time knob sets of ``--sweep`` (a lutc CUDA schedule) per shape (kernel time in a CUDA
    graph): the tuner's input."""
    props = torch.cuda.get_device_properties(0)
    l2 = props.L2_cache_size
    gen = torch.Generator(device="cuda").manual_seed(1)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    ms = [int(m) for m in args.ms] if args.ms else (1, 4)
    sname = args.sweep
    out = {"device": props.name, "schedule": sname, "records": []}
    for (N, K) in shapes:
        for M in ms:
            for wbits in WBITS:
                spec = lutc_specs(N, K, M, wbits)
                copies = copies_for(weight_bytes(N, K, wbits), l2)
                layout = schedules.named(sname).layout(spec, None)
                qws = [random_packed(layout, N, K, wbits, gen) for _ in range(copies)]
                x = torch.randn(M, K, device="cuda", generator=gen).half()
                ref = x.float() @ dequant_packed(qws[0]).T
                line = []
                for knobs in candidates(sname, M):
                    try:
                        kernel = lutc.build(spec, target="cuda", schedule=sname, knobs=knobs)
                        y = kernel(x, qws[0])
                        err = float((y.float() - ref).abs().max() / ref.abs().max())
                        t = time_graph(lambda i: kernel(x, qws[i]), copies) if err < tolerance(spec) else float("nan")
                    except Exception as exc:
                        err, t = repr(exc)[:100], float("nan")
                    out["records"].append({"N": N, "K": K, "M": M, "wbits": wbits, "knobs": knobs,
                                           "kernel_us": t, "rel_err": err})
                    line.append(f"{'/'.join(str(v) for v in knobs.values())}:{t:.1f}")
                print(f"{N}x{K} M={M} W{wbits} {sname} ({'/'.join(candidates(sname, M)[0])}:us) "
                      + " ".join(line), flush=True)
                if args.out:  # partial results survive a time limit
                    os.makedirs(args.out, exist_ok=True)
                    with open(os.path.join(args.out, f"sweep_{sname}.json"), "w") as f:
                        json.dump(out, f, indent=1)
                del qws
                torch.cuda.empty_cache()
    return out


def format_row(row) -> str:
    parts = [f"{row['N']}x{row['K']} M={row['M']}"]
    parts += [f"floor W{w} {row['floor_us'][f'W{w}']:.1f}" for w in WBITS]
    parts += [f"{k}: {v:.1f}/{row['eager_us'].get(k, float('nan')):.1f}" for k, v in row["kernel_us"].items()]
    fails = [k for k, v in row["notes"].items() if isinstance(v, str)]
    if fails:
        parts.append("failed: " + ", ".join(fails))
    return " | ".join(parts)


def columns() -> list:
    """The table's columns, in order: lutc's (per schedule and bit width), then the peers'."""
    per_bits = lambda name: [f"{name} W{w}" for w in WBITS]    # noqa: E731
    return ([c for s in ("default",) + LUTC_SCHEDULES for c in per_bits(f"lutc {s}")] + ["fp16 cuBLAS", "torch int4 W4"]
            + per_bits("humming") + per_bits("gemlite") + ["bnb NF4"])


def markdown(result) -> str:
    cols = [c for c in dict.fromkeys(columns()) if any(c in r["kernel_us"] for r in result["rows"])]
    head = (f"Measured {result['date']} on {result['device']} ({result['sms']} SMs, L2 "
            f"{result['l2_bytes'] / 2**20:.0f} MiB), torch {result['torch']}; copy bandwidth "
            f"{result['copy_bw_Bps'] / 1e12:.2f} TB/s (read + write). Each cell: kernel time in a CUDA "
            "graph / eager call time, us (median); weights rotate through > 2x L2. Floors: bytes moved "
            "/ copy bandwidth. `of floor` = floor / kernel time for lutc's best kernel of that bit width.\n")
    lines = [head, "| N x K | M | " + " | ".join(f"W{w} floor" for w in WBITS) + " | " + " | ".join(cols) + " | "
             + " | ".join(f"lutc W{w} of floor" for w in WBITS) + " |",
             "|" + "---|" * (len(cols) + 2 + 2 * len(WBITS))]
    for r in result["rows"]:
        cells = [f"{r['N']}x{r['K']}", str(r["M"])] + [f"{r['floor_us'][f'W{w}']:.1f}" for w in WBITS]
        for c in cols:
            if c in r["kernel_us"]:
                cells.append(f"{r['kernel_us'][c]:.1f} / {r['eager_us'][c]:.1f}")
            elif isinstance(r["notes"].get(c), str):
                cells.append("failed")
            else:
                cells.append("-")
        for w in WBITS:
            best = [v for k, v in r["kernel_us"].items() if k.startswith("lutc") and k.endswith(f"W{w}")]
            cells.append(f"{r['floor_us'][f'W{w}'] / min(best):.0%}" if best else "-")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['N']}x{r['K']} M={r['M']} {k}: {v}" for r in result["rows"]
             for k, v in r["notes"].items() if isinstance(v, str)]
    if notes:
        lines += ["", "Failures:"] + notes
    return "\n".join(lines) + "\n"


def precompile(args) -> None:
    """Build every lutc kernel this benchmark (and tests/test_cuda_gpu.py) uses, for sm_90a,
    into lutc's nvcc cache, on a machine without a GPU."""
    from lutc.build import precompile as pc
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    ms = [int(m) for m in args.ms] if args.ms else MS
    kernels = []
    for (N, K) in shapes:
        for M in ms:
            for wbits in WBITS:
                spec = lutc_specs(N, K, M, wbits)
                for sname, _ in lutc_modules(spec):
                    kernels.append(lutc_kernel(spec, sname, target="cuda:sm_90a"))
    if args.tests:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        import test_cuda_gpu as t
        for p in t.schedule_params():
            spec, sname = p.values
            kernels.append(lutc.build(spec, target="cuda:sm_90a", schedule=sname))
        for knobs in t.LUT_KNOBS:
            kernels.append(lutc.build(t.KNOB_SPEC, target="cuda:sm_90a", schedule="cuda_lut", knobs=knobs))
        for knobs in t.MMA_KNOBS:
            kernels.append(lutc.build(t.MMA_SPEC, target="cuda:sm_90a", schedule="cuda_mma", knobs=knobs))
        for spec, knobs in t.STREAM_CASES:
            kernels.append(lutc.build(spec, target="cuda:sm_90a", schedule="cuda_stream", knobs=knobs))
        for spec, knobs in t.WGMMA_CASES + t.STREAM_K_CASES:
            kernels.append(lutc.build(spec, target="cuda:sm_90a", schedule="cuda_wgmma", knobs=knobs))
        for spec in t.GENERIC_SPECS + [t.RUNTIME_SPEC]:
            kernels.append(lutc.build(spec, target="cuda:sm_90a"))
    if args.sweep:
        for (N, K) in shapes:
            for M in (int(m) for m in args.ms) if args.ms else (1, 4):
                for wbits in WBITS:
                    spec = lutc_specs(N, K, M, wbits)
                    for knobs in candidates(args.sweep, M):
                        if _builds(schedules.named(args.sweep), spec, knobs):
                            kernels.append(lutc.build(spec, target="cuda:sm_90a", schedule=args.sweep,
                                                      knobs=knobs))
    from concurrent.futures import ThreadPoolExecutor
    from lutc.cache import cache_root
    t0 = time.time()
    with ThreadPoolExecutor(max(1, len(os.sched_getaffinity(0)))) as pool:
        list(pool.map(pc, kernels))
    print(f"{len(kernels)} kernels in {cache_root()} ({time.time() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="folder for bench_cuda.json / bench_cuda.md")
    ap.add_argument("--shapes", nargs="*", help="NxK ... (default: the issue's five)")
    ap.add_argument("--ms", nargs="*", help="M values (default 1 4 16 64 128)")
    ap.add_argument("--no-gemlite", action="store_true")
    ap.add_argument("--no-bnb", action="store_true")
    ap.add_argument("--no-humming", action="store_true")
    ap.add_argument("--precompile", action="store_true", help="no GPU: fill lutc's nvcc cache")
    ap.add_argument("--tests", action="store_true", help="with --precompile: the GPU tests' kernels too")
    ap.add_argument("--sweep", default=None, help="a lutc CUDA schedule: time its knob sets instead")
    ap.add_argument("--schedules", nargs="*", help="lutc schedules to time (default: all four; 'default': "
                    "the kernel lutc.compile picks)")
    ap.add_argument("--wbits", nargs="*", help="bit widths (default 2 4)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    global LUTC_SCHEDULES, WBITS   # a script's settings: every table and sweep reads them
    LUTC_SCHEDULES = tuple(args.schedules) if args.schedules else LUTC_SCHEDULES
    WBITS = tuple(int(b) for b in args.wbits) if args.wbits else WBITS
    if args.precompile:
        precompile(args)
        return
    if args.sweep:
        result = sweep(args)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, f"sweep_{args.sweep}.json"), "w") as f:
                json.dump(result, f, indent=1)
        return
    result = run(args)
    md = markdown(result)
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_cuda.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(args.out, "bench_cuda.md"), "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
