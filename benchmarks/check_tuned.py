"""Check that tuned shapes are reused: a fresh process compiles each from the tuning logs and the
kernel cache, fast, and runs at the tuned speed.

For each shape: ``lutc.compile`` in this (new) process, timed; whether the kernel came from the
tuning log (``kernel.tuned``) and from the on-disk cache (``kernel.from_cache``); then the
kernel's time measured as the tuner measures it (weights rotating, CUDA graph on GPUs)
against the time the log's confirmation recorded for that kernel.

    python benchmarks/check_tuned.py --target cuda --act-dtype float16 --wbits 2 \\
        --shapes 16x4096x11008,1x28672x8192
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lutc  # noqa: E402
from lutc import target as targets  # noqa: E402
from lutc.measure import Bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", required=True, help="comma-separated MxNxK")
    ap.add_argument("--target", default=None)
    ap.add_argument("--wbits", type=int, default=2)
    ap.add_argument("--act-dtype", default="float32")
    ap.add_argument("--pool-mib", type=int, default=512)
    args = ap.parse_args()
    kind = targets.kind(targets.resolve(args.target))
    print("| M x N x K | compile s | from tuning log | from kernel cache | kernel | logged µs | measured µs |")
    print("|---|---|---|---|---|---|---|")
    for text in args.shapes.split(","):
        M, N, K = (int(v) for v in text.lower().split("x"))
        t0 = time.perf_counter()
        kernel = lutc.compile((M, N, K), wbits=args.wbits, act_dtype=args.act_dtype, target=args.target)
        compile_s = time.perf_counter() - t0
        bench = Bench(kernel.spec, args.pool_mib, calls=30, device_type="cuda" if kind == "cuda" else "cpu")
        times = [bench.measure(kernel) for _ in range(5)]
        errors = [e for _, e in times if e]
        measured = sorted(us for us, _ in times if us)[len(times) // 2] if not errors else float("nan")
        logged = kernel.tuned["us"] if kernel.tuned else float("nan")
        print(f"| {text} | {compile_s:.3f} | {kernel.tuned is not None} | {getattr(kernel, 'from_cache', False)} "
              f"| {kernel.schedule}{kernel.knobs} | {logged:.1f} | {measured:.1f} |" + (f" {errors[0]}" if errors else ""),
              flush=True)


if __name__ == "__main__":
    main()
