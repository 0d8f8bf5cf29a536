"""Time the exported default kernel from C against the same kernel called from Python, in one run.

    python examples/c_host/bench.py [--shape 1,4096,4096] [--wbits 2,4] [--pool-mib 256]
                                    [--calls 50] [--rounds 3] [--threads 2] [--report FILE]

For each bit width (uniform codes, group 128): :func:`prepare.prepare` exports the kernel
``lutc.compile`` picks on this CPU (on x86 the SIMD LUT kernel, int8 tables) with random packed
weights in its layout, and ``build.sh`` links the C host (``main.c``, the kernel object,
``lutc_backend.c``). Then, alternating, ``--rounds`` times:

* C: ``OUT/c_host OUT --copies N --calls C``: ``kernel_run()`` on raw pointers, lutc_backend.c's
  thread pool; c_host prints the median time per call;
* Python: ``kernel(x, qw_i)``, the lutc :class:`~lutc.runtime.Kernel` (argument checks, TVM's
  thread pool) with the ``N`` weights pre-packed in ``kernel.layout``;

both rotating through the same ``N`` copies of the weights, at least ``--pool-mib`` MiB (more
than the last-level cache: a decode step reads each layer's weights once). Reported: the median
over rounds of the per-round median per call, and the best round, in microseconds; ratios C / Python.
Both sides use ``--threads`` threads (``LUTC_NUM_THREADS``, which lutc_backend.c and lutc read).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIB = 1 << 20
#: Seconds to wait before each C round: TVM's pool (like lutc_backend.c's) spins for a while
#: after a call, and its spinning workers would take the cores from the C host's threads.
IDLE_S = 1.0


def median_us(call, copies: int, calls: int) -> float:
    """Median wall time of ``call(i)`` in microseconds, ``i`` rotating over ``copies``."""
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        call(i % copies)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def c_host_us(out: Path, copies: int, calls: int, env: dict) -> float:
    """The median per call that ``c_host`` prints (it also checks the result: exit 1 otherwise)."""
    run = subprocess.run([str(out / "c_host"), str(out), "--copies", str(copies), "--calls", str(calls)],
                         capture_output=True, text=True, env=env, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"c_host failed ({run.returncode}): {run.stdout}{run.stderr}")
    return float(re.search(r"median ([\d.]+) us/call", run.stdout).group(1))


def bench(shape, wbits: int, pool_mib: int, calls: int, rounds: int, threads: int, work: Path) -> dict:
    """C and Python medians (us per call) of the default kernel for ``shape`` and ``wbits``."""
    import torch
    import lutc
    sys.path.insert(0, str(HERE))
    from prepare import prepare

    out = work / f"w{wbits}"
    kernel = prepare(out, shape=shape, wbits=wbits, group_size=128, quantized=False)
    build = subprocess.run(["bash", str(HERE / "build.sh"), str(out)], capture_output=True, text=True)
    if build.returncode != 0:
        raise RuntimeError(f"build.sh failed: {build.stderr}")
    qw = lutc.load_weights(out / "weights.lutcw")                      # in kernel.layout already
    nbytes = sum(t.numel() * t.element_size() for t in qw.tensors())
    copies = max(1, -(-pool_mib * MIB // nbytes))
    state = qw.state()
    pool = [lutc.PackedWeights(**{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()})
            for _ in range(copies)]
    x = torch.from_numpy(__import__("numpy").fromfile(out / "x.bin", "float32").reshape(shape[0], shape[2]))
    for w in pool:                                                      # checks done once per weight
        kernel(x, w)
    env = dict(os.environ, LUTC_NUM_THREADS=str(threads))
    c, py = [], []
    for _ in range(rounds):
        time.sleep(IDLE_S)   # TVM's workers in this process spin after a call: let them sleep first
        c.append(c_host_us(out, copies, calls, env))
        py.append(median_us(lambda i: kernel(x, pool[i]), copies, calls))
    c_us, py_us = statistics.median(c), statistics.median(py)
    return {"wbits": wbits, "schedule": kernel.schedule, "layout": kernel.layout, "copies": copies,
            "pool_mib": copies * nbytes / MIB, "c_us": c_us, "py_us": py_us, "ratio": c_us / py_us,
            "c_rounds": c, "py_rounds": py}


def machine(threads: int) -> str:
    """CPU model (``/proc/cpuinfo``), LLVM's name for it, and the threads used."""
    import lutc.target
    return f"{lutc.target.cpu_model()} ({lutc.target.host_cpu()['mcpu']}), {len(os.sched_getaffinity(0))} cores, {threads} threads"


def report(rows: list, shape, calls: int, rounds: int, threads: int, command: str) -> str:
    """The Markdown table of :func:`bench` rows, with the command and the machine."""
    lines = ["# Exported default kernel: C host vs the same kernel from Python", "",
             f"`{command}`", "",
             f"Machine: {machine(threads)}. Shape M,N,K = {','.join(map(str, shape))}, uniform codes, "
             f"group 128, weights rotating through the copies. Per round, the median of {calls} calls; "
             f"over {rounds} alternating rounds, their median and their best (this shared VM's memory "
             "bandwidth drifts, at times by 2x for seconds: the best round is the quiet machine), in "
             "microseconds per call.", "",
             "| weights | kernel (layout) | copies (MiB) | C host (c_host) | Python (`kernel(x, qw)`) "
             "| C / Python | best C | best Python | best C / best Python |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best_c, best_py = min(r["c_rounds"]), min(r["py_rounds"])
        lines.append(f"| W{r['wbits']} | {r['schedule']} ({r['layout']}) | {r['copies']} ({r['pool_mib']:.0f}) | "
                     f"{r['c_us']:.1f} | {r['py_us']:.1f} | {r['ratio']:.2f} | {best_c:.1f} | {best_py:.1f} | "
                     f"{best_c / best_py:.2f} |")
    lines += [""] + [f"W{r['wbits']} rounds, C: {', '.join(f'{v:.1f}' for v in r['c_rounds'])}; "
                     f"Python: {', '.join(f'{v:.1f}' for v in r['py_rounds'])}." for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1,4096,4096", help="M,N,K")
    ap.add_argument("--wbits", default="2,4", help="comma list of bit widths")
    ap.add_argument("--pool-mib", type=int, default=256, help="weight copies rotated, in MiB (at least)")
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--report", default=None, help="also write the table (Markdown) here")
    a = ap.parse_args()
    os.environ["LUTC_NUM_THREADS"] = str(a.threads)   # before lutc (and TVM's pool) start
    os.environ.setdefault("TVM_NUM_THREADS", str(a.threads))
    shape = tuple(int(v) for v in a.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(shape, int(b), a.pool_mib, a.calls, a.rounds, a.threads, Path(tmp))
                for b in a.wbits.split(",")]
    command = "python examples/c_host/bench.py " + " ".join(sys.argv[1:])
    text = report(rows, shape, a.calls, a.rounds, a.threads, command.strip())
    print(text)
    if a.report:
        Path(a.report).write_text(text + "\n")


if __name__ == "__main__":
    main()
