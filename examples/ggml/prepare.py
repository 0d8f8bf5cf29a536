"""Write what ``lutc_in_ggml`` needs: one weight as ggml blocks and, the same blocks, imported by
lutc with the kernel ``lutc.compile`` picks for it, plus x and the reference output.

    python examples/ggml/prepare.py OUT [--type Q4_0] [--shape 1,4096,4096] [--seed 0]

The weight is a random normal ``[N, K]`` float32 matrix quantized by ggml's Python reference
(``gguf.quants.quantize``: ``Q4_0``, ``Q4_1``, ``TQ1_0``, ``TQ2_0``); ``ggml.bin`` holds its blocks
as a ggml tensor holds them. :func:`lutc.importers.import_ggml_blocks` turns the same bytes into
lutc's packed weights exactly (``Q4_0``: uniform W4, groups of 32, zero point 8; ``TQ2_0``/
``TQ1_0``: W2 with zero point 1, the block's scale on both of its groups of 128), so both
kernels multiply by the same weight and ``ref.bin`` (float64 ``x @ W^T`` of the dequantized
weight) is the reference for both. Also into OUT: ``lutc.export(kernel, OUT, name="kernel")``
(kernel.o/.h, lutc_backend.c, lutc_weights.h, include/), ``weights.lutcw`` (the imported weight
in ``kernel.layout``), ``x.bin`` (float32 ``[M, K]``) and ``meta.txt`` (the ggml type name).
Then ``bash examples/ggml/build.sh OUT`` and ``OUT/lutc_in_ggml OUT``.

Types lutc does not import and Python cannot quantize (:data:`GGML_QUANTIZES`: ``Q2_K``,
``Q1_0``) are baselines: ``w.bin`` (the float weight) replaces ``ggml.bin`` and ``lutc_in_ggml``
quantizes it with ggml's own code, while lutc quantizes the same float weight to its own format
of those bits (:func:`lutc.quantize`); each side is checked against its own dequantized weight.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import lutc  # first: lutc sets OMP_WAIT_POLICY before torch loads OpenMP
import gguf
import numpy as np
import torch

from lutc.importers import import_ggml_blocks
from lutc.testing import reference

#: ggml types whose blocks lutc imports exactly (the same weight on both sides).
IMPORTED = ("Q4_0", "Q4_1", "TQ1_0", "TQ2_0")
#: ggml types quantized by ggml itself in ``lutc_in_ggml``, with lutc's format of the same bits
#: beside them (``Q2_K``: 2-bit codes with a scale and a minimum per 16 weights, 2.625 bits per
#: weight; ``Q1_0``: signs with a scale per block).
GGML_QUANTIZES = {"Q2_K": dict(wbits=2, group_size=128, zero_point=True), "Q1_0": dict(wbits=1, group_size=128)}
TYPES = IMPORTED + tuple(GGML_QUANTIZES)


def prepare(out, qtype: str = "Q4_0", shape=(1, 4096, 4096), seed: int = 0, target=None):
    """Quantize a random weight to ggml's ``qtype``, import it, export lutc's kernel for it;
    returns the kernel."""
    if qtype not in TYPES:
        raise ValueError(f"type {qtype!r}: choose from {TYPES}")
    M, N, K = shape
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K), dtype=np.float32)
    if qtype in GGML_QUANTIZES:
        blocks = None
        qw = lutc.quantize(torch.from_numpy(w), **GGML_QUANTIZES[qtype])
    else:
        blocks = gguf.quants.quantize(w, gguf.GGMLQuantizationType[qtype])
        qw = import_ggml_blocks(blocks, qtype, N, K)
    # lutc.compile resolves what the weight leaves open (the target's table dtype: int8 for SIMD)
    kernel = lutc.compile((M, N, K), wbits=qw.wbits, group_size=qw.group_size, format=qw.format,
                          zero_point=qw.zero_point, scale_dtype=qw.scale_dtype, target=target)
    lutc.export(kernel, out, name="kernel")
    lutc.save_weights(qw, out / "weights.lutcw", layout=kernel.layout)
    for stale in ("ggml.bin", "w.bin"):
        (out / stale).unlink(missing_ok=True)
    if blocks is None:
        w.tofile(out / "w.bin")
    else:
        np.ascontiguousarray(blocks).tofile(out / "ggml.bin")
    x = torch.from_numpy(rng.standard_normal((M, K), dtype=np.float32))
    x.numpy().tofile(out / "x.bin")
    reference(x, qw).numpy().tofile(out / "ref.bin")
    (out / "meta.txt").write_text(qtype + "\n")
    return kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--type", default="Q4_0", choices=TYPES)
    ap.add_argument("--shape", default="1,4096,4096", help="M,N,K")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    kernel = prepare(a.out, a.type, tuple(int(v) for v in a.shape.split(",")), a.seed)
    print(f"wrote {kernel!r} (weights in layout {kernel.layout}) and {a.type} blocks to {a.out}")


if __name__ == "__main__":
    main()
