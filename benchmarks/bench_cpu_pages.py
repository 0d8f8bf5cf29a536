"""LUTLinear decode on a CPU with its weights in 4 KiB pages and in 2 MiB pages (lutc.memory).

Two pools of the same ``LUTLinear`` layers (same packed weights), one built with
``LUTC_HUGE_PAGES=0``, one without; each pool rotates through ``--pool-mib`` MiB (more than the
caches hold: a decode step reads every layer's weights once), and the pools are timed in
alternating rounds in one process, so that machine noise hits both alike. Per-call wall time,
median over rounds, M = 1, float32 activations (what a CPU user runs). Each thread count runs in
its own process (TVM reads TVM_NUM_THREADS when its pool starts). The read bandwidth
(``lutc.measure.read_bandwidth_gbs``, 1 GiB, same threads) is measured in the same process at the
start and the end, in each page size; ``% bw`` = the layer's bytes per call / time against the
larger of the two probes of its page size.

    python benchmarks/bench_cpu_pages.py --out benchmarks/results/cpu_huge_pages_epyc.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


PAGES = {"4 KiB pages": False, "2 MiB pages": True}


def probes(threads: int) -> dict:
    from lutc.measure import read_bandwidth_gbs
    return {name: read_bandwidth_gbs(1 << 30, threads, huge_pages=huge) for name, huge in PAGES.items()}


def child(N: int, K: int, wbits: int, pool_mib: int, rounds: int) -> dict:
    import torch
    import lutc
    from lutc import memory
    from lutc.testing import rotation_copies
    threads = int(os.environ["TVM_NUM_THREADS"])
    torch.set_num_threads(threads)
    bw_start = probes(threads)
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(K, N)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=gen) * 0.02)
    first = lutc.LUTLinear.from_linear(lin, wbits=wbits, group_size=128)
    qw = first.packed()
    nbytes = sum(b.numel() * b.element_size() for b in first.buffers())
    copies = rotation_copies(nbytes, pool_mib << 20)
    pools = {}
    for name, huge in PAGES.items():
        os.environ["LUTC_HUGE_PAGES"] = "1" if huge else "0"
        # a fresh copy of the packed weight per layer (from_packed keeps tensors already in its layout)
        pools[name] = [lutc.LUTLinear.from_packed(lutc.PackedWeights(**{k: v.clone() if isinstance(v, torch.Tensor) else v
                                                                        for k, v in qw.state().items()}), lin.bias)
                       for _ in range(copies)]
    os.environ.pop("LUTC_HUGE_PAGES")
    huge = {name: sum(memory.huge_page_bytes(m.planes) for m in ms[:4]) for name, ms in pools.items()}
    assert len({m.planes.data_ptr() for ms in pools.values() for m in ms}) == 2 * copies   # no layer shares
    x = torch.randn(1, K, generator=gen)
    with torch.inference_mode():
        ref = pools["4 KiB pages"][0](x)
        assert all(torch.equal(ms[0](x), ref) for ms in pools.values())
        times = {name: [] for name in pools}
        for r in range(rounds):
            for name in (list(pools) if r % 2 == 0 else list(pools)[::-1]):
                t0 = time.perf_counter()
                for m in pools[name]:
                    m(x)
                times[name].append((time.perf_counter() - t0) / copies * 1e6)
    bw_end = probes(threads)
    us = {n: statistics.median(v) for n, v in times.items()}
    bw = {n: max(bw_start[n], bw_end[n]) for n in PAGES}
    return {"N": N, "K": K, "wbits": wbits, "threads": threads,
            "copies": copies, "layer_bytes": nbytes, "huge_page_bytes_first4": huge,
            "kernel": first.plan.layouts, "us": us, "rounds": rounds,
            "read_gbs_start": bw_start, "read_gbs_end": bw_end,
            "pct_bw": {n: nbytes / (us[n] * 1e-6) / 1e9 / bw[n] for n in PAGES}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4096x4096,4096x11008,11008x4096")
    ap.add_argument("--wbits", default="2,4")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--pool-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        N, K, w = (int(v) for v in args.child.split(","))
        print(json.dumps(child(N, K, w, args.pool_mib, args.rounds)))
        return
    rows = []
    for shape in args.shapes.split(","):
        N, K = (int(v) for v in shape.split("x"))
        for w in (int(v) for v in args.wbits.split(",")):
            for t in (int(v) for v in args.threads.split(",")):
                env = dict(os.environ, TVM_NUM_THREADS=str(t), OMP_WAIT_POLICY="PASSIVE")
                out = subprocess.run([sys.executable, __file__, "--child", f"{N},{K},{w}", "--pool-mib",
                                      str(args.pool_mib), "--rounds", str(args.rounds)],
                                     env=env, capture_output=True, text=True, check=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                rows.append(row)
                us = row["us"]
                pct = row["pct_bw"]
                print(f"{N}x{K} W{w} {t} thread(s): 4 KiB {us['4 KiB pages']:.1f} us ({pct['4 KiB pages']:.0%} bw), "
                      f"2 MiB {us['2 MiB pages']:.1f} us ({pct['2 MiB pages']:.0%} bw), "
                      f"{us['4 KiB pages'] / us['2 MiB pages']:.3f}x", flush=True)
    if args.out:
        lines = [f"`python benchmarks/bench_cpu_pages.py{' --out ' + args.out}`, {time.strftime('%Y-%m-%d')}, "
                 f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; `LUTLinear` decode (M = 1, "
                 f"float32 activations, group 128), weights rotating through {args.pool_mib} MiB per pool, "
                 f"median of {args.rounds} alternating rounds, us per call.", "",
                 "| N x K | W | threads | layout | MB per call | read GB/s 4 KiB (start / end) | 4 KiB pages us | % bw | "
                 "read GB/s 2 MiB (start / end) | 2 MiB pages us | % bw | speed-up |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            us, pct, s, e = r["us"], r["pct_bw"], r["read_gbs_start"], r["read_gbs_end"]
            cells = [f"{r['N']}x{r['K']}", str(r["wbits"]), str(r["threads"]), "+".join(r["kernel"]),
                     f"{r['layer_bytes'] / 1e6:.2f}"]
            for n in PAGES:
                cells += [f"{s[n]:.1f} / {e[n]:.1f}", f"{us[n]:.1f}", f"{pct[n]:.0%}"]
            cells.append(f"{us['4 KiB pages'] / us['2 MiB pages']:.2f}x")
            lines.append("| " + " | ".join(cells) + " |")
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
