"""CPU benchmark: lutc's kernels against torch and numpy baselines, measured in one run.

For M = 1 (a decode step) at 4096x4096, 11008x4096 and 4096x11008, with 1 and 2 threads:

* lutc ``x86``: the SIMD LUT kernel (int8 tables, vpshufb), the default on x86;
* lutc ``dot_mac``: the multiply-add alternative (int8 activations, VNNI vpdpbusd);
* lutc ``cpu_generic``: the portable schedule with float tables (W2 only, for reference);
* torch ``F.linear`` in fp32 and bf16 on a dense weight of the same shape;
* numpy dequantize-then-matmul of the W2 weight (unpack the bit planes and scale every call);

for W1, W2, W4 (uniform codes, group 128) and ternary (BitNet b1.58), each called as users call
it (``kernel(x, qw)``, argument checks included). Times are medians of per-call wall times in
microseconds. Weights rotate through at least ``--pool-gib`` GiB of copies per method (more
than the L3 of the machines measured: 32 MiB on the EPYC, 480 MiB on the Xeon VM of
``cpu.md``): a decode step reads each layer's weights once. The read bandwidth
(``lutc.measure.read_bandwidth_gbs``: a TVM-compiled streaming read of 1 GiB on the same number
of threads) is measured in the same process, so each method's weight-read rate is also given as
a fraction of it. (Tables before 2026-11-30 divided by the best fp32 GEMV instead, which reads
far below the memory's rate: 24 GB/s where lutc's kernels read 43.5; their "% bw" past 100% is
that error.) The host's bandwidth drifts
between runs; compare ratios within one run.

    python benchmarks/bench_cpu.py             # ~10 minutes on 2 cores; writes results/cpu.md

Each thread count runs in its own process (TVM_NUM_THREADS is read when TVM's pool starts);
the weights are quantized once, by the parent, and shared through a temporary directory.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

GIB = 1 << 30
SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))
FORMATS = (("W1", dict(wbits=1)), ("W2", dict(wbits=2)), ("W4", dict(wbits=4)),
           ("ternary", dict(wbits=2, format="ternary")))


def median_us(call, pool: int, calls: int = 30, min_seconds: float = 0.0) -> float:
    """Median wall time of ``call(i)`` in microseconds, ``i`` rotating over ``pool`` copies: at
    least ``calls`` calls and ``min_seconds`` in all, after one warm-up call per copy (up to 3)."""
    for i in range(min(pool, 3)):
        call(i)
    times, i = [], 0
    while len(times) < calls or sum(times) < min_seconds:
        t0 = time.perf_counter()
        call(i % pool)
        times.append(time.perf_counter() - t0)
        i += 1
    return statistics.median(times) * 1e6


def packed_bytes(packed) -> int:
    """Bytes a kernel reads of a packed weight: planes, scales and zero points."""
    return sum(t.numel() * t.element_size() for t in packed.tensors())


def packed_copies(packed, pool_bytes: int = GIB) -> list:
    """Copies of a packed weight, every tensor cloned, together at least ``pool_bytes`` (and at
    least 2): a call per copy in turn reads weights that no cache still holds."""
    import lutc
    from lutc.testing import rotation_copies
    copies = rotation_copies(packed_bytes(packed), pool_bytes)
    names = ("planes", "scales", "zeros")
    return [lutc.PackedWeights(**dict(packed.state(), **{n: t.clone() for n, t in zip(names, packed.tensors())}))
            for _ in range(copies)]


def numpy_dequant_matmul(x: np.ndarray, planes: np.ndarray, scales: np.ndarray, wbits: int,
                         N: int, K: int, gs: int) -> np.ndarray:
    """The baseline: unpack uniform symmetric codes to float32, then one matmul."""
    bits = np.unpackbits(planes, axis=-1, bitorder="little").astype(np.float32)
    code = sum(bits[i] * (1 << i) for i in range(wbits))
    w = (code.reshape(N, -1, gs) - (2 ** wbits - 1) / 2) * scales[:, :, None]
    return x @ w.reshape(N, K).T


def quantize_all(workdir: str, shapes) -> None:
    """Quantize every (shape, format) once; save ``PackedWeights.state()`` per file."""
    import lutc
    for N, K in shapes:
        w = torch.randn(N, K, generator=torch.Generator().manual_seed(N + K)) * 0.02
        for name, kw in FORMATS:
            torch.save(lutc.quantize(w, **kw).state(), os.path.join(workdir, f"{N}x{K}-{name}.pt"))


def child(workdir: str, shapes, pool_bytes: int, calls: int) -> dict:
    """Measure everything at this process's thread count; returns rows and the bandwidth."""
    import lutc
    from lutc.measure import read_bandwidth_gbs
    from lutc.testing import reference, rel_error, rotation_copies
    threads = int(os.environ["TVM_NUM_THREADS"])
    torch.set_num_threads(threads)
    bw = read_bandwidth_gbs(threads=threads)
    rows = []
    for N, K in shapes:
        x = torch.randn(1, K, generator=torch.Generator().manual_seed(1))

        def dense(dtype):
            w = torch.randn(N, K, dtype=dtype)
            copies = rotation_copies(w.numel() * w.element_size(), pool_bytes)
            pool = [w.clone() for _ in range(copies)]
            xd = x.to(dtype)
            return median_us(lambda i: F.linear(xd, pool[i]), copies, calls), w.element_size() * 8

        for dtype, label in ((torch.float32, "torch fp32 F.linear"), (torch.bfloat16, "torch bf16 F.linear")):
            us, bits = dense(dtype)
            rows.append(dict(shape=f"{N}x{K}", fmt="-", method=label, bpw=bits, us=us, err=None))
        for name, _ in FORMATS:
            qw = lutc.PackedWeights.from_state(torch.load(os.path.join(workdir, f"{N}x{K}-{name}.pt")))
            ref = reference(x, qw)
            methods = [("lutc LUT (x86 vpshufb)", "x86"), ("lutc multiply-add (VNNI)", "dot_mac")]
            if name == "W2":
                methods.append(("lutc generic (float tables)", "cpu_generic"))
            for label, schedule in methods:
                table = "float32" if schedule == "cpu_generic" else "int8"
                kernel = lutc.compile((1, N, K), wbits=qw.wbits, group_size=qw.group_size,
                                      format=qw.format, table_dtype=table, schedule=schedule)
                packed = kernel.pack(qw)
                pool = packed_copies(packed, pool_bytes)
                copies = len(pool)
                err = rel_error(kernel(x, pool[0]), ref)
                n = calls if schedule != "cpu_generic" else max(20, calls // 5)
                rows.append(dict(shape=f"{N}x{K}", fmt=name, method=label, us=median_us(
                    lambda i: kernel(x, pool[i]), copies, n), err=err, bpw=8 * packed_bytes(packed) / (N * K)))
                del pool
            if name == "W2":
                pl, sc = qw.planes.numpy(), qw.scales.float().numpy()
                xn = x.numpy()
                f = lambda i: numpy_dequant_matmul(xn, pl, sc, 2, N, K, qw.group_size)  # noqa: E731
                err = rel_error(f(0), ref)
                rows.append(dict(shape=f"{N}x{K}", fmt=name, method="numpy dequant+matmul", err=err,
                                 bpw=qw.bits_per_weight, us=median_us(f, 1, 5)))
            print(f"[{threads} thread(s)] {N}x{K} {name} done", file=sys.stderr, flush=True)
    # the VM's bandwidth drifts with its neighbours' load: measured again at the end, the
    # fractions use the larger (the rate the memory showed it can give this process)
    bw_end = read_bandwidth_gbs(threads=threads)
    return dict(threads=threads, bandwidth=max(bw, bw_end), bandwidth_start_end=[bw, bw_end], rows=rows)


def table(results: list, shapes, pool_gib: float, calls: int) -> str:
    import lutc
    lines = ["# lutc CPU benchmark (M = 1, weights not in cache)", "",
             f"- machine: {_cpu_name()}, {os.cpu_count()} cores; {datetime.date.today()}; lutc "
             f"{lutc.__version__}, torch {torch.__version__}, numpy {np.__version__}",
             f"- weights rotate through {pool_gib:g} GiB per method; median of {calls} calls "
             "(numpy: 5, generic: a fifth); `rel err` = max|y - ref| / max|ref| against the float64 "
             "reference of the dequantized weight (int8 tables / int8 activations: ~1e-2 by design)",
             "- `weight GB/s` = bytes of the packed weight (with scales) per call / time; `% bw` = that "
             "over the read bandwidth measured in the same process (lutc.measure.read_bandwidth_gbs: a streaming read of 1 GiB on as many threads)",
             "- command: `python benchmarks/bench_cpu.py`", ""]
    for res in results:
        bw, threads = res["bandwidth"], res["threads"]
        ends = res.get("bandwidth_start_end")
        drift = f" (at the start {ends[0]:.1f}, at the end {ends[1]:.1f})" if ends else ""
        lines += [f"## {threads} thread(s): read bandwidth {bw:.1f} GB/s{drift}", "",
                  "| N x K | weights | method | bits/weight | µs | weight GB/s | % bw | vs fp32 F.linear | rel err |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for N, K in shapes:
            rows = [r for r in res["rows"] if r["shape"] == f"{N}x{K}"]
            fp32 = next(r["us"] for r in rows if r["method"] == "torch fp32 F.linear")
            for r in rows:
                gbs = N * K * r["bpw"] / 8 / (r["us"] * 1e-6) / 1e9
                err = "-" if r["err"] is None else f"{r['err']:.1e}"
                lines.append(f"| {N}x{K} | {r['fmt']} | {r['method']} | {r['bpw']:.3g} | {r['us']:.0f} | "
                             f"{gbs:.1f} | {100 * gbs / bw:.0f}% | {fp32 / r['us']:.2f}x | {err} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool-gib", type=float, default=1.0, help="weight bytes rotated per method")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cpu.md"))
    ap.add_argument("--child", help=argparse.SUPPRESS)   # internal: workdir of a child run
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    pool_bytes = int(args.pool_gib * GIB)
    if args.child:
        print(json.dumps(child(args.child, shapes, pool_bytes, args.calls)))
        return
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        quantize_all(workdir, shapes)
        for threads in (int(t) for t in args.threads.split(",")):
            env = dict(os.environ, TVM_NUM_THREADS=str(threads))
            out = subprocess.run([sys.executable, __file__, "--child", workdir, "--shapes", args.shapes,
                                  "--pool-gib", str(args.pool_gib), "--calls", str(args.calls)],
                                 env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    text = table(results, shapes, args.pool_gib, args.calls)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


def _cpu_name() -> str:
    import lutc.target
    return f"{lutc.target.cpu_model()} ({platform.machine()})"


if __name__ == "__main__":
    main()
