"""Bytes against time for lutc's default CPU kernel across group sizes and zero points (M = 1).

    python benchmarks/bench_cpu_groups.py [--shape 4096x4096] [--wbits 4] [--threads 1 2]

For each (group size, zero points): the default kernel, its packed weight cloned into copies that
total 1 GiB and rotate per call, the best of two medians of 200 calls (us), the weight bytes per
call (planes, scales, zero points) and the rate they imply (GB/s). Why: a GGUF ``Q4_0`` import is
W4 g32 with an fp16 zero point (8) per group, 5.0 bits per weight where ggml reads 4.5; if both
kernels read at the same rate, the extra bytes are the gap (``benchmarks/results/ggml_cpu_repack.md``).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import median_us, packed_bytes, packed_copies  # noqa: E402

import lutc  # noqa: E402
from lutc.testing import random_case  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="4096x4096", help="NxK")
    ap.add_argument("--wbits", type=int, default=4)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    args = ap.parse_args()
    N, K = (int(v) for v in args.shape.split("x"))
    print("| threads | group | zero points | kernel | us | weight bytes | GB/s |\n|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for group, zp in ((32, True), (128, True), (32, False), (128, False)):
            spec = lutc.MPGemmSpec(1, N, K, wbits=args.wbits, group_size=group, zero_point=zp, table_dtype="int8")
            x, qw = random_case(spec, seed=1)
            kernel = lutc.build(spec)
            packed = kernel.pack(qw)
            nbytes, copies = packed_bytes(packed), packed_copies(packed)
            pool = len(copies)
            us = min(median_us(lambda i: kernel(x, copies[i]), pool, calls=200) for _ in range(2))
            print(f"| {threads} | {group} | {zp} | {kernel.schedule} | {us:.0f} | {nbytes / 1e6:.2f} MB | "
                  f"{nbytes / us / 1e3:.1f} |", flush=True)
            del copies


if __name__ == "__main__":
    main()
