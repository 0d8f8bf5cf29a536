"""Static estimate of the NEON LUT inner loop with llvm-mca (no ARM hardware needed).

Builds the ARM kernels (``tbl`` LUT, and the ``sdot`` multiply-add alternative) for a spec,
takes the basic block of the generated aarch64 assembly with the most lookup (or dot)
instructions -- the unrolled loop over a block's activation groups -- and runs llvm-mca on it
for a Neoverse-V1 and an Apple M1 core. Reports cycles per iteration of that block and cycles
per 16 lookups (one ``tbl``; for ``sdot``, per 16 weights, i.e. the same 16-weight unit).

    python benchmarks/arm_mca.py            # needs llvm-mca (Debian package llvm)

Writes ``benchmarks/results/arm_mca.md``. These are throughput estimates from LLVM's scheduling
models, steady state, data in L1: no memory-bandwidth effects.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess

import lutc

CPUS = ("neoverse-v1", "apple-m1")


def hottest_block(asm: str, mnemonic: str) -> list:
    """Instructions of the basic block with the most ``mnemonic`` instructions."""
    blocks, current = [], []
    for line in asm.splitlines():
        if re.match(r"^\S.*:", line):                 # a label starts a new block
            blocks.append(current)
            current = []
        elif line.startswith("\t") and not line.strip().startswith((".", "//", "@")):
            current.append(line.strip())
    blocks.append(current)
    return max(blocks, key=lambda b: sum(1 for ins in b if ins.split()[0] == mnemonic))


def mca_cycles(block: list, cpu: str, mca: str) -> tuple:
    """(cycles per iteration, instructions per cycle) of ``block`` on ``cpu``."""
    out = subprocess.run([mca, "-mtriple=aarch64", f"-mcpu={cpu}", "-iterations=200"],
                         input="\n".join(block) + "\n", capture_output=True, text=True, check=True).stdout
    cycles = int(re.search(r"Total Cycles:\s+(\d+)", out).group(1))
    ipc = float(re.search(r"IPC:\s+([\d.]+)", out).group(1))
    return cycles / 200, ipc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "arm_mca.md"))
    args = ap.parse_args()
    mca = shutil.which("llvm-mca") or shutil.which("llvm-mca-14")
    if mca is None:
        raise SystemExit("llvm-mca not found: apt-get install llvm")
    version = subprocess.run([mca, "--version"], capture_output=True, text=True).stdout.split("\n")[1].strip()
    lines = ["# NEON inner loop, llvm-mca estimate", "",
             f"- {version}; lutc {lutc.__version__}; command: `python benchmarks/arm_mca.py`",
             "- block = the hottest basic block of the kernel (the unrolled groups of one block of "
             "activations); steady state, data in L1", "",
             "| kernel | spec | instructions in block | lookups (or weights) in block | CPU | cycles / iteration "
             "| IPC | cycles per 16 lookups |", "|---|---|---|---|---|---|---|---|"]
    for wbits, fmt in ((1, "uniform"), (2, "uniform"), (4, "uniform"), (2, "ternary")):
        spec = lutc.MPGemmSpec(1, 4096, 4096, wbits=wbits, format=fmt, table_dtype="int8")
        for schedule, mnemonic in (("arm", "tbl"), ("dot_mac", "sdot")):
            kernel = lutc.build(spec, target="arm", schedule=schedule)
            block = hottest_block(kernel.executable.mod.inspect_source("asm"), mnemonic)
            count = sum(1 for ins in block if ins.split()[0] == mnemonic)
            # tbl: 16 lookups each; sdot: 4 rows x 4 codes = 16 weights (of one plane set)
            work = count * 16
            for cpu in CPUS:
                cyc, ipc = mca_cycles(block, cpu, mca)
                lines.append(f"| {schedule} ({mnemonic}) | {fmt} W{wbits} | {len(block)} | {work} | {cpu} "
                             f"| {cyc:.1f} | {ipc:.2f} | {cyc / count:.2f} |")
                print(lines[-1], flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
