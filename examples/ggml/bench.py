"""lutc inside ggml against ggml's own kernels: same weights, same graph API, same threads, same run.

    python examples/ggml/bench.py [--out benchmarks/results] [--types Q4_0 TQ2_0 TQ1_0 Q2_K Q1_0]
                                  [--shapes 4096x4096 4096x11008] [--ms 1 16] [--threads 1 2]

For each ggml type, N x K and M: ``prepare.py`` (a random weight quantized to the type, the
same blocks imported by lutc, lutc's default kernel exported), ``build.sh`` (ggml's CPU backend
from the llama-cpp-python sdist, cached), then ``lutc_in_ggml`` per thread count: ggml's
``mul_mat`` on the type and lutc's kernel as a ``ggml_custom_4d`` op on ggml's thread pool,
both checked against the float64 reference (rel_err) and timed with the weights rotating through
more than 1 GiB (median of --calls graph computes, microseconds). Writes ``ggml_cpu.md`` and
``ggml_cpu.json`` to --out and prints the table.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import prepare  # noqa: E402  (this folder's prepare.py; imports lutc first)

import lutc.target  # noqa: E402
from lutc.testing import rotation_copies  # noqa: E402

#: One result line of ``lutc_in_ggml``: who, kernel (ggml type or lutc layout), rel_err, us.
LINE = re.compile(r"^(ggml|lutc) (\S+): rel_err (\S+), (\S+) us")


def parse(stdout: str) -> dict:
    """``{"ggml": (type, rel_err, us), "lutc": (layout, rel_err, us)}`` of a run's output
    (a side whose line is missing is absent)."""
    found = {m.group(1): m for m in map(LINE.match, stdout.splitlines()) if m}
    return {who: (m.group(2), float(m.group(3)), float(m.group(4))) for who, m in found.items()}
ROTATE_BYTES = 1 << 30
#: Types that ggml's CPU_REPACK buffer repacks on x86 (Q4_0 with AVX2, Q2_K with AVX-512): timed
#: both ways, as llama.cpp runs them by default and without it.
REPACKED = ("Q4_0", "Q2_K")


def run_case(work: Path, qtype: str, M: int, N: int, K: int, threads: list, calls: int) -> list:
    kernel = prepare.prepare(work, qtype, (M, N, K))
    subprocess.run(["bash", str(HERE / "build.sh"), str(work)], check=True, capture_output=True)
    block, block_bytes = prepare.gguf.GGML_QUANT_SIZES[prepare.gguf.GGMLQuantizationType[qtype]]
    copies = rotation_copies(N * K // block * block_bytes, ROTATE_BYTES)
    rows = []
    for t, repack in itertools.product(threads, (0, 1) if qtype in REPACKED else (0,)):
        run = subprocess.run([str(work / "lutc_in_ggml"), str(work), "--threads", str(t), "--copies",
                              str(copies), "--calls", str(calls), "--repack", str(repack)],
                             capture_output=True, text=True)
        found = parse(run.stdout)
        if run.returncode != 0 or len(found) != 2:
            raise RuntimeError(f"lutc_in_ggml failed for {qtype} {M}x{N}x{K}: {run.stdout}{run.stderr}")
        rows.append({"type": found["ggml"][0], "M": M, "N": N, "K": K, "threads": t, "copies": copies,
                     "lutc_kernel": f"{kernel.schedule} {kernel.layout}" + (
                         "" if qtype in prepare.IMPORTED else f" (W{kernel.spec.wbits} g{kernel.spec.group_size}"
                         f"{' zp' if kernel.spec.zero_point else ''}: lutc's own quantization)"),
                     "ggml_us": found["ggml"][2], "lutc_us": found["lutc"][2],
                     "ggml_rel_err": found["ggml"][1], "lutc_rel_err": found["lutc"][1]})
        print(rows[-1], flush=True)
    return rows


def markdown(rows: list, source: str) -> str:
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {lutc.target.cpu_model()} "
             f"({os.cpu_count()} CPUs), ggml from {source}. Per call, median, us; each weight rotates "
             "through > 1 GiB of copies; both kernels in a ggml graph on ggml's thread pool "
             "(lutc as `ggml_custom_4d`), on the same blocks (Q2_K, Q1_0: ggml quantizes the float "
             "weight with its own code, lutc the same float weight to its format of those bits, named in "
             "the last column); rel_err = max |y - ref| / max |ref| against the float64 product of each "
             "side's dequantized weight.", "",
             "| ggml type | N x K | M | threads | ggml mul_mat | lutc in ggml | lutc speed-up | rel_err ggml / lutc | lutc kernel |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['type']} | {r['N']}x{r['K']} | {r['M']} | {r['threads']} | {r['ggml_us']:.1f} | "
                     f"{r['lutc_us']:.1f} | {r['ggml_us'] / r['lutc_us']:.2f}x | "
                     f"{r['ggml_rel_err']:.1e} / {r['lutc_rel_err']:.1e} | {r['lutc_kernel']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="folder for ggml_cpu.md / ggml_cpu.json")
    ap.add_argument("--types", nargs="*", default=["Q4_0", "TQ2_0", "TQ1_0", "Q2_K", "Q1_0"])
    ap.add_argument("--shapes", nargs="*", default=["4096x4096", "4096x11008"], help="NxK")
    ap.add_argument("--ms", nargs="*", type=int, default=[1, 16])
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--calls", type=int, default=60)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in a.types:
            for shape in a.shapes:
                N, K = (int(v) for v in shape.split("x"))
                for M in a.ms:
                    rows += run_case(Path(tmp) / f"{qtype}-{M}x{N}x{K}", qtype, M, N, K, a.threads, a.calls)
    ggml_dir = subprocess.run(["bash", str(HERE / "build_ggml.sh")], capture_output=True, text=True,
                              check=True).stdout.strip().splitlines()[-1]
    source = " ".join(Path(ggml_dir, "SOURCE").read_text().split())
    md = markdown(rows, source)
    print(md)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        Path(a.out, "ggml_cpu.md").write_text("# lutc inside ggml against ggml's own kernels (CPU)\n\n"
                                              "`python examples/ggml/bench.py --out benchmarks/results`\n\n" + md)
        Path(a.out, "ggml_cpu.json").write_text(json.dumps({"source": source, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
