"""Write what the C host needs: an exported kernel, packed weights, x and the reference output.

    python examples/c_host/prepare.py OUT [--shape 4,512,1024] [--wbits 2] [--group-size 128]
                                          [--format uniform] [--zero-point]

Into ``OUT``: ``lutc.export(kernel, OUT, name="kernel")`` (kernel.o/.so/.c/.h/.json,
lutc_backend.c, lutc_weights.h, include/), ``weights.lutcw`` (:func:`lutc.exporter.save_weights`),
``x.bin`` (float32 ``[M, K]``) and ``ref.bin`` (float32 ``[M, N]``: lutc's float64 reference
``x @ W^T`` of the dequantized weights). Then ``bash examples/c_host/build.sh OUT`` and
``OUT/c_host OUT``; ``python examples/c_host/run_so.py OUT`` runs the .so through tvm-ffi alone.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import lutc
from lutc.exporter import save_weights
from lutc.testing import random_case, reference


def prepare(out, shape=(4, 512, 1024), wbits=2, group_size=128, format="uniform",
            zero_point=False, seed=0, emit=None, target=None):
    """Export the kernel of this workload and write its inputs into ``out``; returns the spec.

    ``target``: e.g. ``"arm"`` to cross-compile (then build with ``CC=aarch64-linux-gnu-gcc
    LDFLAGS=-static bash build.sh OUT`` and run ``qemu-aarch64 OUT/c_host OUT``).
    """
    out = Path(out)
    M, N, K = shape
    spec = lutc.MPGemmSpec(M, N, K, wbits=wbits, format=format, group_size=group_size,
                           zero_point=zero_point)
    x, qw = random_case(spec, seed=seed)
    lutc.export(lutc.build(spec, target=target), out, name="kernel", emit=emit)
    save_weights(qw, out / "weights.lutcw")
    x.numpy().tofile(out / "x.bin")
    reference(x, qw).float().numpy().tofile(out / "ref.bin")
    return spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--shape", default="4,512,1024", help="M,N,K")
    ap.add_argument("--wbits", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--format", default="uniform")
    ap.add_argument("--zero-point", action="store_true")
    ap.add_argument("--target", default=None, help="default: this CPU; 'arm' cross-compiles")
    a = ap.parse_args()
    spec = prepare(a.out, tuple(int(v) for v in a.shape.split(",")), a.wbits, a.group_size,
                   a.format, a.zero_point, target=a.target)
    print(f"wrote kernel, weights, x and reference for {spec} to {a.out}")


if __name__ == "__main__":
    main()
