"""Sustained runs of lutc's ``cuda_wgmma`` kernel beside Humming and cuBLAS at one shape, with the
SM clock and board power sampled: where a prefill GEMM is bound by the GPU's power limit, the
kernel that spends less energy per product runs at a higher clock, and per-cycle profiles
(Nsight Compute locks the clock) do not show it.

    python benchmarks/power_cuda.py 512x28672x8192 2                       # M x N x K, bits
    python benchmarks/power_cuda.py 512x28672x8192 2 '{"sk": {"streamk": 132}}'   # more knob sets

Each method's CUDA graph (weights rotating past L2, ``bench_cuda``'s harness) is replayed for
about 2 s while ``nvidia-smi`` samples every 100 ms; printed: us per call, and the median SM clock,
power and temperature of the last two thirds of the samples; two rounds. Every lutc kernel's
output is checked first against the fp32 product of its dequantized weights (its relative error
printed). Results:
``benchmarks/results/cuda_prefill_power_h200.log``.
"""
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cuda as B  # noqa: E402
import lutc  # noqa: E402
from lutc.measure import capture_graph  # noqa: E402
from lutc.testing import tolerance  # noqa: E402

SECONDS = 2.0


def lutc_call(spec, knobs, x, copies, gen):
    """A rotating call of ``cuda_wgmma`` with ``knobs``, checked once against the reference."""
    N, K, w = spec.N, spec.K, spec.wbits
    kernel = lutc.build(spec, target="cuda", schedule="cuda_wgmma", knobs=knobs)
    qws = [B.random_packed("tc16", N, K, w, gen) for _ in range(copies)]
    ref = x.float() @ B.dequant_packed(qws[0]).T
    err = float((kernel(x, qws[0]).float() - ref).abs().max() / ref.abs().max())
    if not err < tolerance(spec):
        raise SystemExit(f"cuda_wgmma {kernel.knobs}: relative error {err:.2e}")
    print(f"{knobs} err {err:.2e}", flush=True)
    out = torch.empty(spec.M, N, device="cuda", dtype=torch.float16)
    return lambda i: kernel(x, qws[i], out=out)


def sample(stop: threading.Event, rows: list) -> None:
    """Append ``[SM MHz, W, C]`` rows from ``nvidia-smi`` every 100 ms until ``stop``."""
    query = ["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu", "--format=csv,noheader,nounits",
             "-lms", "100"]
    proc = subprocess.Popen(query, stdout=subprocess.PIPE, text=True)
    while not stop.is_set():
        line = proc.stdout.readline()
        if line:
            rows.append([float(v) for v in line.split(",")])
    proc.kill()


def sustained(graph, calls: int) -> tuple:
    """Replay ``graph`` (``calls`` calls) for :data:`SECONDS`: us per call and the median
    ``(MHz, W, C)`` of the later samples."""
    stop, rows = threading.Event(), []
    thread = threading.Thread(target=sample, args=(stop, rows))
    thread.start()
    time.sleep(0.3)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    replays, t0 = 0, time.time()
    start.record()
    while time.time() - t0 < SECONDS:
        graph.replay()
        replays += 1
        if replays % 5 == 0:
            torch.cuda.synchronize()
    end.record()
    end.synchronize()
    stop.set()
    thread.join()
    late = rows[len(rows) // 3:] or rows
    return start.elapsed_time(end) * 1e3 / (replays * calls), [statistics.median(c) for c in zip(*late)]


def main() -> None:
    M, N, K = (int(v) for v in sys.argv[1].split("x"))
    wbits = int(sys.argv[2])
    variants = {"default": {}, **(json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})}
    gen = torch.Generator(device="cuda").manual_seed(1)
    spec = B.lutc_specs(N, K, M, wbits)
    copies = B.copies_for(B.weight_bytes(N, K, wbits), torch.cuda.get_device_properties(0).L2_cache_size)
    x = torch.randn(M, K, device="cuda", generator=gen).half()
    calls = {name: (lutc_call(spec, knobs, x, copies, gen), copies) for name, knobs in variants.items()}
    calls["humming"] = (B.peer_humming(N, K, M, copies, gen, wbits), copies)
    calls["cublas"] = (B.peer_fp16(N, K, M, 3, gen), 3)
    for rnd in range(2):
        for name, (call, n) in calls.items():
            graph = capture_graph(B.rotating(call, n), B.graph_calls(n))
            time.sleep(1.0)    # each run starts from the same idle state
            us, (mhz, watts, temp) = sustained(graph, B.graph_calls(n))
            print(f"round {rnd} {M}x{N}x{K} W{wbits} {name:10s} {us:8.1f} us/call  SM {mhz:.0f} MHz  {watts:.0f} W  "
                  f"{temp:.0f} C", flush=True)


if __name__ == "__main__":
    main()
