"""Write what the C host needs: an exported kernel, packed weights, x and the reference output.

    python examples/c_host/prepare.py OUT [--shape 4,512,1024] [--wbits 2] [--group-size 128]
                                          [--format uniform] [--zero-point] [--target arm]
                                          [--table-dtype int8|float32] [--schedule NAME]

The kernel is the one ``lutc.compile`` picks for the workload and target (on x86 the SIMD LUT
kernel, int8 tables, weights in ``ptiles64``/``tiles128``; ``--target arm``: the NEON kernel,
``tiles32``). Into ``OUT``: ``lutc.export(kernel, OUT, name="kernel")`` (kernel.o/.so/.h/.json,
kernel.c where the schedule has no SIMD intrinsics, lutc_backend.c, lutc_weights.h, include/),
``weights.lutcw`` (:func:`lutc.save_weights` in ``kernel.layout``, the arrays the kernel reads),
``x.bin`` (float32 ``[M, K]``) and ``ref.bin`` (float64 ``[M, N]``: lutc's reference ``x @ W^T``
of the dequantized weight). Then ``bash examples/c_host/build.sh OUT`` and ``OUT/c_host OUT``;
``python examples/c_host/run_so.py OUT`` runs the .so through tvm-ffi alone;
``python examples/c_host/bench.py`` times the C host against the same kernel called from Python.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import lutc
from lutc.dtypes import torch_dtype
from lutc.testing import random_case, random_weights, reference


def prepare(out, shape=(4, 512, 1024), wbits=2, group_size=128, format="uniform", zero_point=False,
            seed=0, emit=None, target=None, table_dtype=None, schedule=None, quantized=True):
    """Export the kernel ``lutc.compile`` picks for this workload and write its inputs into
    ``out``; returns the kernel.

    ``target``: e.g. ``"arm"`` to cross-compile (then build with ``CC=aarch64-linux-gnu-gcc
    LDFLAGS=-static bash build.sh OUT`` and run ``qemu-aarch64 OUT/c_host OUT``).
    ``quantized=False`` packs random bits and coefficients (:func:`lutc.testing.random_weights`)
    instead of quantizing a random weight: the same kernel work, without the minute that
    quantizing a 4096 x 4096 weight takes.
    """
    out = Path(out)
    kernel = lutc.compile(tuple(shape), wbits=wbits, group_size=group_size, format=format,
                          zero_point=zero_point, table_dtype=table_dtype, target=target,
                          schedule=schedule)
    if quantized:
        x, qw = random_case(kernel.spec, seed=seed)
    else:
        qw = random_weights(kernel.spec, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(kernel.spec.M, kernel.spec.K, generator=gen).to(torch_dtype(kernel.spec.act_dtype))
    lutc.export(kernel, out, name="kernel", emit=emit)
    lutc.save_weights(qw, out / "weights.lutcw", layout=kernel.layout)
    x.numpy().tofile(out / "x.bin")
    reference(x, qw).numpy().tofile(out / "ref.bin")
    return kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--shape", default="4,512,1024", help="M,N,K")
    ap.add_argument("--wbits", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--format", default="uniform")
    ap.add_argument("--zero-point", action="store_true")
    ap.add_argument("--target", default=None, help="default: this CPU; 'arm' cross-compiles")
    ap.add_argument("--table-dtype", default=None, choices=lutc.spec.TABLE_DTYPES,
                    help="default: the target's (int8 where a SIMD kernel exists)")
    ap.add_argument("--schedule", default=None, help="e.g. dot_mac (default: the target's)")
    a = ap.parse_args()
    kernel = prepare(a.out, tuple(int(v) for v in a.shape.split(",")), a.wbits, a.group_size,
                     a.format, a.zero_point, target=a.target, table_dtype=a.table_dtype,
                     schedule=a.schedule)
    print(f"wrote {kernel!r} (weights in layout {kernel.layout}), weights, x and reference to {a.out}")


if __name__ == "__main__":
    main()
