"""W1, W3 and ternary batches on a GPU: ``cuda_generic`` (what ``lutc.compile`` ran for them until
2026-11-30) against the tensor-core kernel it picks now, with fp16 cuBLAS beside them. Kernel us in
CUDA graphs, timed in turns (``lutc.measure.interleaved_graph_us``); every output is checked
against the float64 reference first. Weights do not rotate: batches of M >= 16 are bound by
compute, not by reading the weights. Writes the rows as JSON.

    python benchmarks/bench_cuda_formats.py OUT.json
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lutc  # noqa: E402
from lutc.measure import interleaved_graph_us  # noqa: E402
from lutc.testing import random_weights, reference, rel_error, tolerance  # noqa: E402

#: (format, wbits, N, K, M): W3 batches on a square layer, W1 and ternary at M = 128, and
#: all-MiniLM-L6-v2's FFN input projection on 64 texts (1101 tokens)
CASES = [("uniform", 3, 4096, 4096, 16), ("uniform", 3, 4096, 4096, 128), ("uniform", 3, 4096, 4096, 512),
         ("uniform", 1, 4096, 4096, 128), ("ternary", 2, 4096, 4096, 128), ("uniform", 3, 1536, 384, 1101)]


def row(fmt: str, wbits: int, N: int, K: int, M: int) -> dict:
    """One case: both kernels checked, then timed in turns with cuBLAS."""
    spec = lutc.MPGemmSpec(M, N, K, wbits=wbits, format=fmt, act_dtype="float16",
                           group_size=-1 if fmt == "ternary" else 128)
    qw = random_weights(spec, seed=1)
    x = torch.randn(M, K).half()
    ref = reference(x, qw)
    calls, out = {}, {"format": fmt, "wbits": wbits, "N": N, "K": K, "M": M}
    for name, sched in (("generic", "cuda_generic"), ("default", None)):
        k = lutc.build(spec, target="cuda", schedule=sched)
        w = lutc.repack(qw, k.layout).to("cuda")
        xc = x.cuda()
        y = k(xc, w)
        out[f"{name} schedule"] = k.schedule
        out[f"{name} err"] = err = float(rel_error(y.cpu(), ref))
        assert err < tolerance(spec), (name, err)
        calls[name] = (lambda k=k, w=w, xc=xc: k(xc, w))
    wf = torch.randn(N, K, device="cuda").half() * 0.02
    xf = x.cuda()
    calls["cublas fp16"] = lambda: torch.nn.functional.linear(xf, wf)
    us = interleaved_graph_us(calls, calls={"generic": 5, "default": 40, "cublas fp16": 40}, rounds=5)
    out.update({f"{n} us": round(v, 1) for n, v in us.items()})
    return out


def main() -> None:
    rows = []
    for case in CASES:
        rows.append(row(*case))
        print(json.dumps(rows[-1]), flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
