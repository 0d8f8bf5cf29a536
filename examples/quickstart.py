"""Quickstart: compile a 2-bit LUT kernel for this CPU, run it, check it, time it.

    python examples/quickstart.py [--shape 1,4096,4096] [--wbits 2] [--group-size 128]

Prints the kernel, its relative error against the float64 reference of the dequantized
weights, and its median time per call (weights rotating through more memory than the caches).
"""
import argparse
import os
import statistics
import time

import torch

import lutc
from lutc.testing import reference, rel_error


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1,4096,4096", help="M,N,K")
    ap.add_argument("--wbits", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--target", default=None, help="default: this CPU")
    args = ap.parse_args()
    M, N, K = (int(v) for v in args.shape.split(","))

    weight = torch.randn(N, K) * 0.02            # an nn.Linear weight, [out, in]
    x = torch.randn(M, K)
    t0 = time.perf_counter()
    qw = lutc.quantize(weight, wbits=args.wbits, group_size=args.group_size)
    t1 = time.perf_counter()
    kernel = lutc.compile((M, N, K), wbits=args.wbits, group_size=args.group_size, target=args.target)
    t2 = time.perf_counter()
    y = kernel(x, qw)
    err = rel_error(y, reference(x, qw))

    # Rotate through ~512 MiB of weight copies so no cache holds them between calls. Each copy
    # is packed once in the kernel's layout (a weight in another layout is repacked at its
    # first call: fine for a model, not for a timing loop of fresh copies).
    packed = kernel.pack(qw)
    nbytes = sum(t.numel() * t.element_size() for t in packed.tensors())
    copies = max(2, (512 << 20) // nbytes)
    pool = [lutc.PackedWeights(**dict(packed.state(), planes=packed.planes.clone())) for _ in range(copies)]
    times = []
    for i in range(100):
        t = time.perf_counter()
        kernel(x, pool[i % len(pool)])
        times.append(time.perf_counter() - t)

    print(kernel, "(tuned)" if kernel.tuned else "(default schedule)")
    print(f"quantize {t1 - t0:.2f} s, compile {t2 - t1:.2f} s, {qw.bits_per_weight:.3f} bits/weight")
    print(f"relative error vs float64 reference: {err:.2e}")
    print(f"median time per call: {statistics.median(times) * 1e6:.0f} us "
          f"({len(pool)} weight copies rotating, {os.environ['TVM_NUM_THREADS']} threads)")
    # int8 tables (the default where SIMD kernels exist) round each table entry: about 1e-2 of
    # max |y| (bound (4) in lutc/frontend.py); float tables are exact to float rounding.
    limit = 3e-2 if kernel.spec.table_dtype == "int8" else 1e-4
    if err > limit:
        raise SystemExit(f"error {err:.2e} is larger than {limit:.0e}")


if __name__ == "__main__":
    main()
