"""Time one CPU schedule's knob sets (or several schedules) against each other, interleaved, same process.

    python benchmarks/bench_cpu_knobs.py --schedule dot_mac --knob prefetch --values 0 16 64 \
        [--shapes 4096x4096:2 4096x11008:2 11008x4096:4 4096x4096:4] [--out FILE.md]
    python benchmarks/bench_cpu_knobs.py --knob-sets '{}' '{"row_tiles": 1, "chains": 4}'
    python benchmarks/bench_cpu_knobs.py --knob-sets '{}' '{"schedule": "amx"}' --ms 1 16 128

Each shape (``NxK:bits``, group 128; ``NxK:t`` ternary, one scale) is built once per value; the packed weight is cloned into
copies totalling 1 GiB that every call rotates through (a decode step reads each weight once);
three interleaved rounds of 200 calls per value (30 from M = 64), the best median kept (us), with the weight
bytes per second it implies and the streaming read rate measured in the same process
(``lutc.measure.read_bandwidth_gbs``). ``--knob-sets`` times whole knob sets (JSON, over the
defaults) instead of one knob's values; a set's ``"schedule"`` names another schedule (its defaults
under the other knobs given; sets reading different weight layouts rotate through a GiB of each).
``--ms``: the batch sizes (rows of x), M = 1 by default. ``--target``: a lutc target, by name or
as TVM's JSON (``'{"kind": "llvm", "mcpu": "haswell"}'``: AVX2 code on an AVX-512 host). Threads:
lutc's (``LUTC_NUM_THREADS``, default every core this process may run on; ``LUTC_NUM_THREADS=1``
for one).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import median_us, packed_bytes, packed_copies  # noqa: E402

import lutc  # noqa: E402
from lutc.measure import read_bandwidth_gbs  # noqa: E402
from lutc.testing import random_case  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--schedule", default="dot_mac")
    ap.add_argument("--knob", default="prefetch")
    ap.add_argument("--values", nargs="+", type=int, default=[0, 16, 64])
    ap.add_argument("--shapes", nargs="+", default=["4096x4096:2", "4096x11008:2", "11008x4096:4", "4096x4096:4"])
    ap.add_argument("--knob-sets", nargs="+", type=json.loads, default=None)
    ap.add_argument("--ms", nargs="+", type=int, default=[1], help="rows of x (M) to time each shape at")
    ap.add_argument("--target", type=lambda t: json.loads(t) if t.startswith("{") else t, default=None,
                    help="lutc target: a name, or TVM's JSON (see above)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    threads = int(os.environ["TVM_NUM_THREADS"])    # lutc's pool (set on import from LUTC_NUM_THREADS)
    torch.set_num_threads(threads)
    sets = args.knob_sets or [{args.knob: v} for v in args.values]
    names = [json.dumps(kn) if args.knob_sets else f"{args.knob} = {kn[args.knob]}" for kn in sets]
    command = (f"--knob-sets {' '.join(repr(n) for n in names)}" if args.knob_sets
               else f"--knob {args.knob} --values {' '.join(map(str, args.values))}")
    command += f" --ms {' '.join(map(str, args.ms))} --shapes {' '.join(args.shapes)}"
    target = lutc.target.resolve(args.target)
    if args.target is not None:
        named = f"'{json.dumps(args.target)}'" if isinstance(args.target, dict) else args.target
        command += f" --target {named}"
    lines = [f"`python benchmarks/bench_cpu_knobs.py --schedule {args.schedule} {command}`; "
             f"{target.attrs.get('mcpu', '')}, {threads} thread(s) (TVM_NUM_THREADS), read rate "
             f"{read_bandwidth_gbs(threads=threads):.1f} GB/s (same process). us per call (GB/s of weights).", "",
             "| N x K | W | M | " + " | ".join(names) + " | best / first |",
             "|---|---|---|" + "---|" * (len(sets) + 1)]
    for item in args.shapes:
        shape, bits = item.split(":")
        N, K = (int(v) for v in shape.split("x"))
        for M in args.ms:
            weights = (dict(wbits=2, format="ternary", group_size=-1) if bits == "t"
                       else dict(wbits=int(bits), group_size=128))
            spec = lutc.MPGemmSpec(M, N, K, table_dtype="int8", **weights)
            x, qw = random_case(spec, seed=1)
            kernels = [lutc.build(spec, target, schedule=kn.get("schedule", args.schedule),
                                  knobs={k: v for k, v in kn.items() if k != "schedule"}) for kn in sets]
            packed = {k.layout: k.pack(qw) for k in kernels}     # one rotation per weight layout read
            nbytes = {layout: packed_bytes(p) for layout, p in packed.items()}
            copies = {layout: packed_copies(p) for layout, p in packed.items()}
            best = [float("inf")] * len(sets)
            for _ in range(3):                    # interleaved rounds against drift
                for j, k in enumerate(kernels):
                    mine = copies[k.layout]
                    best[j] = min(best[j], median_us(lambda i: k(x, mine[i]), len(mine), calls=200 if M < 64 else 30))
            cells = [f"{t:.0f} ({nbytes[k.layout] / t / 1e3:.1f})" for t, k in zip(best, kernels)]
            lines.append(f"| {N}x{K} | {bits} | {M} | " + " | ".join(cells) + f" | {best[0] / min(best):.2f}x |")
            print(lines[-1], flush=True)
            del copies
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
