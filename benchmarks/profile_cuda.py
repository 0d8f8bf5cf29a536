"""Run one lutc CUDA kernel a few times on random weights, for a profiler.

Nsight Compute sees only the kernel (the weights are built in the kernel's layout directly on
the GPU, the output is checked once against an fp32 reference before the profiled calls):

    ncu -k main_kernel -c 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \\
        python benchmarks/profile_cuda.py 128x28672x8192 --wbits 2 --knobs wg=2,wn=2,bm=64

Knobs not given take the schedule's defaults; ``--schedule`` picks another lutc CUDA schedule.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cuda import dequant_packed, lutc_specs, random_packed  # noqa: E402

import lutc  # noqa: E402
import schedules  # noqa: E402
from lutc.testing import tolerance  # noqa: E402


def parse_knobs(text: str) -> dict:
    """``wg=2,ws=true`` -> ``{"wg": 2, "ws": True}``."""
    knobs = {}
    for item in filter(None, text.split(",")):
        name, value = item.split("=")
        knobs[name] = {"true": True, "false": False}.get(value.lower(), None)
        if knobs[name] is None:
            knobs[name] = int(value)
    return knobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shape", help="MxNxK")
    ap.add_argument("--wbits", type=int, default=2)
    ap.add_argument("--schedule", default="cuda_wgmma")
    ap.add_argument("--knobs", default="", help="name=value,... (default: the schedule's defaults)")
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    M, N, K = (int(v) for v in args.shape.split("x"))
    spec = lutc_specs(N, K, M, args.wbits)
    kernel = lutc.build(spec, target="cuda", schedule=args.schedule, knobs=parse_knobs(args.knobs))
    gen = torch.Generator(device="cuda").manual_seed(1)
    qw = random_packed(schedules.named(args.schedule).layout(spec, None), N, K, args.wbits, gen)
    x = torch.randn(M, K, device="cuda", generator=gen).half()
    ref = x.float() @ dequant_packed(qw).T
    y = kernel(x, qw)
    err = float((y.float() - ref).abs().max() / ref.abs().max())
    if not err < tolerance(spec):
        raise SystemExit(f"{args.schedule} {kernel.knobs}: relative error {err:.2e} over {tolerance(spec):.2e}")
    for _ in range(args.calls):
        kernel(x, qw, out=y)
    torch.cuda.synchronize()
    print(f"{args.schedule} {kernel.knobs} {M}x{N}x{K} W{args.wbits}: relative error {err:.2e}")


if __name__ == "__main__":
    main()
