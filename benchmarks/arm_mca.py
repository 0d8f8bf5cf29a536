"""Static estimate of the NEON inner loops with llvm-mca (no ARM hardware needed): lutc's
kernels beside ggml's NEON ``vec_dot`` paths for the same bit widths.

lutc: builds the ARM kernels (``tbl`` LUT, and the ``sdot`` multiply-add alternative) for a spec
and takes the basic block of the generated aarch64 assembly with the most lookup (or dot)
instructions -- the unrolled loop over a block's activation groups. ggml: compiles its
``ggml-cpu/arch/arm/quants.c`` (from the llama-cpp-python sdist that ``examples/ggml`` builds)
with ``aarch64-linux-gnu-gcc -O3 -march=armv8.2-a+dotprod`` (its own build's flags) and takes
the block of each ``ggml_vec_dot_<type>_q8`` with the most ``sdot``. llvm-mca estimates cycles
per iteration of each block for Neoverse V1/V2/N2 and Apple M1 (a current LLVM, 19 or newer,
knows V2 and N2). Reported per 16 lookups (one ``tbl``; per 16 weights for ``sdot``) and per 128
weights: a ``tbl`` of ``g = 4`` activations covers ``16 x 4 / planes`` weights, an ``sdot``
16 products (16 weights of one row, or 4 rows x 4 codes).

    python benchmarks/arm_mca.py            # needs llvm-mca (Debian: llvm-19) and gcc-aarch64-linux-gnu

Writes ``benchmarks/results/arm_mca.md``. These are throughput estimates from LLVM's scheduling
models, steady state, data in L1: no memory-bandwidth effects.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile

import lutc
from schedules import dot_mac

CPUS = ("neoverse-v1", "neoverse-v2", "neoverse-n2", "apple-m1")
#: How a row names dot_mac's knob in_place: codes in place in whole bytes (1) or in half bytes (2)
IN_PLACE = {0: "", 1: " in place", 2: " in place, half bytes"}
#: lutc formats and the ggml types of the same bit width (ggml's vec_dot of each against q8).
PAIRS = ((1, "uniform", ("q1_0_q8_0",)), (2, "uniform", ("tq2_0_q8_K", "q2_K_q8_K")),
         (4, "uniform", ("q4_0_q8_0",)), (2, "ternary", ("tq1_0_q8_K", "tq2_0_q8_K")))
HERE = os.path.dirname(os.path.abspath(__file__))


#: Instructions that end a basic block (a branch; the next instruction starts another block).
BRANCHES = ("b", "br", "ret", "cbz", "cbnz", "tbz", "tbnz")


def hottest_block(asm: str, mnemonic: str) -> list:
    """Instructions of the basic block with the most ``mnemonic`` instructions: blocks start at
    labels and end after branches, so a loop's block is its body up to the backward branch."""
    blocks, current = [], []
    for line in asm.splitlines():
        if re.match(r"^\S.*:", line):                 # a label starts a new block
            blocks.append(current)
            current = []
        elif line.startswith("\t") and not line.strip().startswith((".", "//", "@")):
            current.append(line.strip())
            op = current[-1].split()[0]
            if op in BRANCHES or op.startswith("b."):
                blocks.append(current)
                current = []
    blocks.append(current)
    return max(blocks, key=lambda b: sum(1 for ins in b if ins.split()[0] == mnemonic))


def mca_cycles(block: list, cpu: str, mca: str) -> tuple:
    """(cycles per iteration, instructions per cycle) of ``block`` on ``cpu``."""
    out = subprocess.run([mca, "-mtriple=aarch64", f"-mcpu={cpu}", "-iterations=200"],
                         input="\n".join(block) + "\n", capture_output=True, text=True, check=True).stdout
    cycles = int(re.search(r"Total Cycles:\s+(\d+)", out).group(1))
    ipc = float(re.search(r"IPC:\s+([\d.]+)", out).group(1))
    return cycles / 200, ipc


def find_mca() -> str:
    """The newest llvm-mca on PATH (Neoverse V2/N2 need LLVM 19 or newer)."""
    for name in [f"llvm-mca-{v}" for v in range(25, 13, -1)] + ["llvm-mca"]:
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("llvm-mca not found: apt-get install llvm-19")


def ggml_assembly() -> str:
    """ggml's ARM quants.c as aarch64 assembly, compiled as its CPU backend is."""
    ggml_dir = subprocess.run(["bash", os.path.join(HERE, "..", "examples", "ggml", "build_ggml.sh")],
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    src = os.path.join(ggml_dir, "src", "ggml", "src")
    out = os.path.join(tempfile.mkdtemp(), "quants.s")
    subprocess.run(["aarch64-linux-gnu-gcc", "-DGGML_USE_CPU_REPACK", "-D_GNU_SOURCE", "-D_XOPEN_SOURCE=600",
                    f"-I{src}/..", f"-I{src}", f"-I{src}/ggml-cpu", f"-I{src}/../include", "-O3", "-DNDEBUG",
                    "-march=armv8.2-a+dotprod", "-std=gnu11", "-S", "-o", out,
                    os.path.join(src, "ggml-cpu", "arch", "arm", "quants.c")], check=True, capture_output=True)
    with open(out) as f:
        return f.read()


def function_asm(asm: str, name: str) -> str:
    """The assembly of function ``name`` (its label to its ``.size``)."""
    m = re.search(rf"^{name}:\n(.*?)^\s*\.size\s+{name},", asm, re.S | re.M)
    if not m:
        raise KeyError(name)
    return m.group(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "arm_mca.md"))
    args = ap.parse_args()
    mca = find_mca()
    version = next(line.strip() for line in subprocess.run([mca, "--version"], capture_output=True, text=True)
                   .stdout.splitlines() if "LLVM version" in line)
    ggml = ggml_assembly()
    lines = ["# NEON inner loops, llvm-mca estimate: lutc beside ggml", "",
             f"- {version}; lutc {lutc.__version__}; ggml from llama-cpp-python's sdist "
             "(`examples/ggml/build_ggml.sh`), `aarch64-linux-gnu-gcc -O3 -march=armv8.2-a+dotprod`; "
             "command: `python benchmarks/arm_mca.py`",
             "- block = the hottest basic block, from a label to the branch that ends it (lutc: the unrolled "
             "groups of one block of activations; ggml: the loop of its `vec_dot` with the most `sdot`); "
             "steady state, data in L1; inner loops only (lutc's table build and both sides' activation "
             "quantization run outside them)", "",
             "| kernel | weights | instructions in block | weights in block | CPU | cycles / iteration "
             "| IPC | cycles per 16 lookups (or 16 weights) | cycles per 128 weights |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for wbits, fmt, ggml_types in PAIRS:
        spec = lutc.MPGemmSpec(1, 4096, 4096, wbits=wbits, format=fmt, table_dtype="int8")
        planes = spec.planes
        blocks = []
        for schedule, mnemonic, target, knobs in (("arm", "tbl", "arm", {}), ("dot_mac", "sdot", "arm", {}),
                                                  ("dot_mac", "usdot", "arm-i8mm", {"in_place": 1}),
                                                  ("dot_mac", "sdot", "arm", {"in_place": 2})):
            if schedule == "dot_mac" and not dot_mac.worth_tuning(spec, lutc.target.resolve(target), **knobs):
                continue    # (in place in half bytes on 4-bit slots: not a kernel of its own)
            kernel = lutc.build(spec, target=target, schedule=schedule, knobs=knobs)
            block = hottest_block(kernel.executable.mod.inspect_source("asm"), mnemonic)
            count = sum(1 for ins in block if ins.split()[0] == mnemonic)
            # tbl: 16 lookups of g = 4 activations, each one plane: 64 / planes weights; (us)dot: 16
            weights = count * 16 * 4 // planes if mnemonic == "tbl" else count * 16
            name = f"lutc {schedule}{IN_PLACE[knobs.get('in_place', 0)]} ({mnemonic})"
            blocks.append((name, f"{fmt} W{wbits}", block, count, weights))
        for t in ggml_types:
            try:
                block = hottest_block(function_asm(ggml, f"ggml_vec_dot_{t}"), "sdot")
            except KeyError:
                continue
            count = sum(1 for ins in block if ins.split()[0] == "sdot")
            if count:
                blocks.append((f"ggml {t.split('_q8')[0]} (sdot)", f"{fmt} W{wbits}", block, count, count * 16))
        for name, what, block, count, weights in blocks:
            for cpu in CPUS:
                try:
                    cyc, ipc = mca_cycles(block, cpu, mca)
                except subprocess.CalledProcessError:    # an instruction this CPU lacks (M1: usdot)
                    continue
                rows.append(f"| {name} | {what} | {len(block)} | {weights} | {cpu} | {cyc:.1f} | {ipc:.2f} "
                            f"| {cyc / count:.2f} | {cyc * 128 / weights:.2f} |")
                print(rows[-1], flush=True)
    lines += rows
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
