"""CPU benchmark: lutc's default (untuned) LUT kernel against the baselines, measured in one run.

For each N x K at M = 1 (a decode step) it times, in microseconds (median of per-call times):

* lutc, default schedule, W2 and W4 (group 128), called as users call it (``kernel(x, qw)``,
  argument checks included);
* torch fp32 ``F.linear`` on the dequantized weight;
* numpy dequantize-then-matmul: unpack the same bit planes, scale, ``x @ W.T``, every call.

Weights rotate through at least ``--pool-gib`` GiB of copies (default 1 GiB, more than this
machine's 480 MiB L3): a decode step reads each layer's weights once, so a weight that stays in
cache between calls would flatter every method. The read bandwidth measured in the same run
gives each method's weight-read rate as a fraction of it. Writes a Markdown table to
``--out`` (default ``benchmarks/results/cpu.md``) and prints it.

    python benchmarks/bench_cpu.py            # about 3 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import lutc
from lutc.testing import reference, rel_error

SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))
GIB = 1 << 30


def median_us(call, pool: int, calls: int) -> float:
    """Median wall time of ``call(i)`` in microseconds, ``i`` rotating over ``pool`` copies."""
    for i in range(min(pool, 3)):
        call(i)
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        call(i % pool)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def read_bandwidth_gbs(nbytes: int = GIB) -> float:
    """Streaming read rate (GB/s): the best of 5 fp32 GEMVs over a ``nbytes`` matrix.

    A BLAS GEMV is the fastest plain read torch does here (``sum`` reads ~10% slower), so
    this is the practical ceiling for a weight-reading kernel on this machine.
    """
    a = torch.ones(nbytes // 4 // 4096, 4096)
    v = torch.ones(4096)
    torch.mv(a, v)
    t = min(_timed(lambda: torch.mv(a, v)) for _ in range(5))
    return nbytes / t / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def numpy_dequant_matmul(x: np.ndarray, qw: lutc.PackedWeights, planes: np.ndarray,
                         scales: np.ndarray) -> np.ndarray:
    """The baseline: unpack the uniform symmetric codes to float32, then one matmul."""
    bits = np.unpackbits(planes, axis=-1, bitorder="little").astype(np.float32)
    code = sum(bits[i] * (1 << i) for i in range(qw.wbits))
    gs = qw.K if qw.group_size == -1 else qw.group_size
    w = (code.reshape(qw.N, -1, gs) - (2 ** qw.wbits - 1) / 2) * scales[:, :, None]
    return x @ w.reshape(qw.N, qw.K).T


def bench_shape(N: int, K: int, pool_bytes: int, calls: int) -> list:
    rows = []
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=gen) * 0.02
    x = torch.randn(1, K, generator=gen)

    wf = w.contiguous()
    copies = max(2, -(-pool_bytes // (wf.numel() * 4)))
    pool = [wf.clone() for _ in range(copies)]
    rows.append(("torch fp32 F.linear", 32.0, median_us(lambda i: F.linear(x, pool[i]), copies, calls), None))
    del pool

    for wbits in (2, 4):
        qw = lutc.quantize(w, wbits=wbits, group_size=128)
        kernel = lutc.compile((1, N, K), wbits=wbits, group_size=128)
        err = rel_error(kernel(x, qw), reference(x, qw))
        copies = max(2, -(-pool_bytes // sum(t.numel() * t.element_size() for t in qw.tensors())))
        pool = [lutc.PackedWeights(**dict(qw.state(), planes=qw.planes.clone(), scales=qw.scales.clone()))
                for _ in range(copies)]
        rows.append((f"lutc LUT W{wbits} g128 (default schedule)", qw.bits_per_weight,
                     median_us(lambda i: kernel(x, pool[i]), copies, calls), err))
        if wbits == 2:
            xn = x.numpy()
            npool = [(p.planes.numpy(), p.scales.float().numpy()) for p in pool]
            ref = numpy_dequant_matmul(xn, qw, *npool[0])
            err_np = rel_error(ref, reference(x, qw))
            rows.append((f"numpy dequant+matmul W{wbits} g128", qw.bits_per_weight,
                         median_us(lambda i: numpy_dequant_matmul(xn, qw, *npool[i]), len(npool),
                                   max(5, calls // 10)), err_np))
        del pool
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool-gib", type=float, default=1.0, help="weight bytes rotated per method")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cpu.md"))
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    pool_bytes = int(args.pool_gib * GIB)

    bw = read_bandwidth_gbs()
    threads = os.environ.get("TVM_NUM_THREADS")
    lines = [f"# lutc CPU benchmark (M = 1)", "",
             f"- machine: {_cpu_name()}, {os.cpu_count()} cores, lutc threads {threads}, "
             f"torch threads {torch.get_num_threads()}",
             f"- {datetime.date.today()}, lutc {lutc.__version__}, torch {torch.__version__}, "
             f"numpy {np.__version__}",
             f"- weights rotate through {args.pool_gib:g} GiB per method; median of {args.calls} calls "
             "(numpy: a tenth of that); rel err = max|y - ref| / max|ref| against the float64 reference",
             f"- read bandwidth measured in this run: **{bw:.1f} GB/s** (best fp32 GEMV over a 1 GiB matrix)",
             f"- command: `python benchmarks/bench_cpu.py`", "",
             "| N x K | method | bits/weight | µs | weight GB/s | % of read bw | vs fp32 F.linear | rel err |",
             "|---|---|---|---|---|---|---|---|"]
    for N, K in shapes:
        rows = bench_shape(N, K, pool_bytes, args.calls)
        fp32_us = rows[0][2]
        for name, bpw, us, err in rows:
            gbs = N * K * bpw / 8 / (us * 1e-6) / 1e9
            lines.append(f"| {N}x{K} | {name} | {bpw:.3g} | {us:.0f} | {gbs:.1f} | {100 * gbs / bw:.0f}% "
                         f"| {fp32_us / us:.2f}x | {'-' if err is None else f'{err:.1e}'} |")
        print("\n".join(lines[-len(rows):]), flush=True)
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
