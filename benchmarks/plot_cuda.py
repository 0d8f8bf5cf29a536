"""Roofline-style plot of a ``bench_cuda.py`` result (needs matplotlib; runs without a GPU).

For each shape, x = arithmetic intensity of the method's own weight format (FLOPs per byte it
must move: packed weights, one fp16 scale per 128 weights, x and y; fp16 weights for cuBLAS), y =
achieved TFLOP/s from the kernel time (CUDA graph). The diagonal is the measured copy bandwidth
times intensity (the memory roof): a point on it moves its bytes at copy speed. Points are labelled
by M.

    python benchmarks/plot_cuda.py benchmarks/results/bench_cuda_h100.json -o benchmarks/results/cuda_h100.png
"""
from __future__ import annotations

import argparse
import json

GROUP = 128


def method_bytes(name: str, N: int, K: int, M: int) -> float:
    act = M * K * 2 + M * N * 2
    if name == "fp16 cuBLAS":
        return N * K * 2 + act
    if name == "bnb NF4":
        return N * K / 2 + N * K / 64 * 4 + act
    bits = 2 if name.endswith("W2") else 4
    return N * K * bits / 8 + N * K / GROUP * 2 + act


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("result")
    ap.add_argument("-o", "--out", default="cuda_roofline.png")
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.load(open(args.result))
    shapes = sorted({(r["N"], r["K"]) for r in res["rows"]}, key=lambda s: -s[0] * s[1])
    cols = min(3, len(shapes))
    nrows = -(-len(shapes) // cols)
    fig, grid = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.3 * nrows), sharey=True, squeeze=False)
    axes = [a for row in grid for a in row]
    for extra in axes[len(shapes):]:
        extra.axis("off")
    methods = sorted({k for r in res["rows"] for k in r["kernel_us"]})
    style = {m: (f"C{i % 10}", "o" if m.startswith("lutc") else "s^vD<>p"[i % 7]) for i, m in enumerate(methods)}
    bw = res["copy_bw_Bps"]
    for ax, (N, K) in zip(axes, shapes):
        rows = [r for r in res["rows"] if (r["N"], r["K"]) == (N, K)]
        xs = []
        for m in methods:
            pts = [(2 * r["M"] * N * K / method_bytes(m, N, K, r["M"]),
                    2 * r["M"] * N * K / (r["kernel_us"][m] * 1e-6) / 1e12, r["M"])
                   for r in rows if m in r["kernel_us"]]
            if not pts:
                continue
            color, marker = style[m]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=m,
                    lw=1.8 if m.startswith("lutc") else 0.8, ms=5, alpha=0.95)
            if m.startswith("lutc"):
                for p in pts:
                    ax.annotate(f"M{p[2]}", (p[0], p[1]), fontsize=6, xytext=(2, 2), textcoords="offset points")
            xs += [p[0] for p in pts]
        lo, hi = min(xs) / 1.5, max(xs) * 1.5
        ax.plot([lo, hi], [bw * lo / 1e12, bw * hi / 1e12], "k--", lw=1,
                label=f"copy bandwidth {bw / 1e12:.2f} TB/s")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"N x K = {N} x {K}", fontsize=9)
        ax.set_xlabel("FLOP / byte moved (method's own format)")
        ax.grid(True, which="both", alpha=0.3)
    for row in grid:
        row[0].set_ylabel("TFLOP/s (kernel time, CUDA graph)")
    handles, labels = axes[0].get_legend_handles_labels()
    if len(axes) > len(shapes):
        axes[-1].legend(handles, labels, loc="center", fontsize=8)
    else:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    fig.suptitle(f"lutc CUDA kernels and peers on {res['device']} ({res['date']}), fp16 activations, "
                 "group 128, weights rotating > 2x L2", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(args.out, dpi=130)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
