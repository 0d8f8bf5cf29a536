"""Quickstart: compile lutc's 2-bit kernel for this CPU (the SIMD LUT kernel, or the int8
multiply-add kernel where the CPU has AVX-512 VNNI), run it, check it, time it, and the same
weight as a ``LUTLinear`` layer (what ``quantize_model`` puts in a model).

    python examples/quickstart.py [--shape 1,4096,4096] [--wbits 2] [--group-size 128]

Prints the kernel, its relative error against the float64 reference of the dequantized
weights, and the median time per call of the kernel and of the layer (weights rotating through
more memory than the caches).
"""
import copy
import argparse
import os
import statistics
import time

# lutc before torch: it sets OMP_WAIT_POLICY=PASSIVE while torch is not loaded yet, so that
# torch's OpenMP threads do not busy-wait on the cores lutc's kernels need (lutc's docstring)
import lutc
import torch
from lutc.testing import reference, rel_error, rotation_copies, tolerance


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
    copies = rotation_copies(nbytes, 512 << 20)
    pool = [lutc.PackedWeights(**dict(packed.state(), planes=packed.planes.clone())) for _ in range(copies)]
    times = []
    for i in range(100):
        t = time.perf_counter()
        kernel(x, pool[i % len(pool)])
        times.append(time.perf_counter() - t)

    # The front door: the same weight in an nn.Module, held in the layout of this CPU's kernels.
    layer = lutc.LUTLinear.from_packed(qw)
    layers = [copy.deepcopy(layer) for _ in range(len(pool))]
    layer_times = []
    with torch.inference_mode():
        layer_err = rel_error(layer(x), reference(x, qw))
        for i in range(100):
            t = time.perf_counter()
            layers[i % len(layers)](x)
            layer_times.append(time.perf_counter() - t)

    print(kernel, "(tuned)" if kernel.tuned else "(default schedule)")
    print(f"quantize {t1 - t0:.2f} s, compile {t2 - t1:.2f} s, {qw.bits_per_weight:.3f} bits/weight")
    print(f"relative error vs float64 reference: {err:.2e}")
    print(f"median time per call: {statistics.median(times) * 1e6:.0f} us "
          f"({len(pool)} weight copies rotating, {os.environ['TVM_NUM_THREADS']} threads)")
    print(f"LUTLinear (layout {'+'.join(layer.layouts)}): median {statistics.median(layer_times) * 1e6:.0f} us "
          f"per call, relative error {layer_err:.2e}")
    # int8 tables (the default where SIMD kernels exist) round each table entry: about 1e-2 of
    # max |y| (bound (4) in lutc/frontend.py); float tables are exact to float rounding.
    limit = tolerance(kernel.spec)
    if max(err, layer_err) > limit:
        raise SystemExit(f"error {max(err, layer_err):.2e} is larger than {limit:.0e}")


if __name__ == "__main__":
    main()
