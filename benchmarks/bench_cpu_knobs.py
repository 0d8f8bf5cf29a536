"""Time one CPU schedule's knob sets against each other at M = 1, interleaved, same process.

    python benchmarks/bench_cpu_knobs.py --schedule dot_mac --knob prefetch --values 0 16 64 \
        [--shapes 4096x4096:2 4096x11008:2 11008x4096:4 4096x4096:4] [--out FILE.md]

Each shape (``NxK:bits``, group 128) is built once per value; the packed weight is cloned into
copies totalling 1 GiB that every call rotates through (a decode step reads each weight once);
three interleaved rounds of 200 calls per value, the best median kept (us), with the weight
bytes per second it implies and the streaming read rate measured in the same process
(``lutc.measure.read_bandwidth_gbs``). 2 threads.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import median_us, packed_bytes, packed_copies  # noqa: E402

import lutc  # noqa: E402
from lutc.measure import read_bandwidth_gbs  # noqa: E402
from lutc.testing import random_case  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--schedule", default="dot_mac")
    ap.add_argument("--knob", default="prefetch")
    ap.add_argument("--values", nargs="+", type=int, default=[0, 16, 64])
    ap.add_argument("--shapes", nargs="+", default=["4096x4096:2", "4096x11008:2", "11008x4096:4", "4096x4096:4"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    lines = [f"`python benchmarks/bench_cpu_knobs.py --schedule {args.schedule} --knob {args.knob} --values "
             f"{' '.join(map(str, args.values))}`; {lutc.target.resolve('cpu').attrs.get('mcpu', '')}, 2 threads, "
             f"read rate {read_bandwidth_gbs(threads=2):.1f} GB/s (same process). us per call (GB/s of weights).", "",
             "| N x K | W | " + " | ".join(f"{args.knob} = {v}" for v in args.values) + " | best / first |",
             "|---|---|" + "---|" * (len(args.values) + 1)]
    for item in args.shapes:
        shape, bits = item.split(":")
        N, K = (int(v) for v in shape.split("x"))
        spec = lutc.MPGemmSpec(1, N, K, wbits=int(bits), group_size=128, table_dtype="int8")
        x, qw = random_case(spec, seed=1)
        kernels = {v: lutc.build(spec, schedule=args.schedule, knobs={args.knob: v}) for v in args.values}
        packed = kernels[args.values[0]].pack(qw)
        nbytes, copies = packed_bytes(packed), packed_copies(packed)
        pool = len(copies)
        best = {v: float("inf") for v in args.values}
        for _ in range(3):                    # interleaved rounds against drift
            for v, k in kernels.items():
                best[v] = min(best[v], median_us(lambda i: k(x, copies[i]), pool, calls=200))
        cells = [f"{best[v]:.0f} ({nbytes / best[v] / 1e3:.1f})" for v in args.values]
        lines.append(f"| {N}x{K} | {bits} | " + " | ".join(cells)
                     + f" | {best[args.values[0]] / min(best.values()):.2f}x |")
        print(lines[-1], flush=True)
        del copies
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
