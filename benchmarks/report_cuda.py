"""Markdown report of a ``bench_cuda.py`` result: the table, and the issue's H100 targets
(28672x8192 and 8192x28672, kernel time in CUDA graphs) against lutc's best kernel.

    python benchmarks/report_cuda.py benchmarks/results/bench_cuda_h100.json > benchmarks/results/cuda_h100.md
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cuda import markdown  # noqa: E402

#: (M, bits) -> target kernel time in us on an H100 (issue 4)
TARGETS = {(1, 2): 24, (1, 4): 47, (16, 2): 40, (16, 4): 60, (128, 2): 130, (128, 4): 130}


def targets(res) -> str:
    lines = ["| N x K | M | W | target us | lutc best us (kernel) | which | eager us | eager - kernel | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if (r["N"], r["K"]) not in ((28672, 8192), (8192, 28672)):
            continue
        for (M, w), goal in TARGETS.items():
            if r["M"] != M:
                continue
            cands = {k: v for k, v in r["kernel_us"].items() if k.startswith("lutc") and k.endswith(f"W{w}")}
            if not cands:
                continue
            best = min(cands, key=cands.get)
            t, e = cands[best], r["eager_us"][best]
            lines.append(f"| {r['N']}x{r['K']} | {M} | {w} | {goal} | {t:.1f} | {best.split()[1]} | {e:.1f} | "
                         f"{e - t:+.1f} | {'yes' if t <= goal else 'no'} |")
    return "\n".join(lines) + "\n"


def main():
    res = json.load(open(sys.argv[1]))
    print("# lutc CUDA kernels on an H100: measured\n")
    print("Made by `python benchmarks/bench_cuda.py --out DIR` (one run) on the lent GPU machine, "
          "plot by `benchmarks/plot_cuda.py` ([cuda_h100.png](cuda_h100.png)), this file by "
          "`benchmarks/report_cuda.py`. Raw numbers: `bench_cuda_h100.json`; knob sweeps: "
          "`sweep_cuda_*_h100.json`.\n")
    print("## The issue's targets (kernel time, CUDA graph of many calls, weights rotating > 2x L2)\n")
    print(targets(res))
    print("## All shapes\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
