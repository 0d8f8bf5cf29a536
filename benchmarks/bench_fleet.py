"""Tuning throughput on a fleet of 1 and 2 RPC servers (lutc.fleet), all on this machine.

For each server count, a TVM tracker and that many servers (one TVM thread each) start on
127.0.0.1 (:func:`lutc.fleet.local_fleet`), and ``lutc.tune`` tunes the same workloads with the
same trials, builds here, measurements there. Reported: wall seconds, measurements (search,
default and confirmation), measurements per second, and how the measurements split over the
servers. Builds and servers share this machine's cores, so the fleet speeds up only the
measuring half of each round; on real devices the builder is another machine.

    python benchmarks/bench_fleet.py --out benchmarks/results/fleet_cpu.md
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lutc  # noqa: E402
from lutc.autotune import tune_spec  # noqa: E402
from lutc.fleet import Fleet, local_fleet  # noqa: E402
from lutc.tuner import TuningLog  # noqa: E402


def run(servers: int, shapes: list, trials: int, calls: int, pool_mib: int) -> dict:
    log = TuningLog(os.path.join(tempfile.mkdtemp(), "fleet.jsonl"))
    with local_fleet(servers, key=f"bench{servers}") as (address, _):
        fleet = Fleet(address, f"bench{servers}")
        t0 = time.time()
        for shape in shapes:
            tune_spec(lutc.MPGemmSpec(*shape, wbits=2, group_size=128), "host", trials=trials, batch=8,
                      pool_mib=pool_mib, calls=calls, log=log, progress=False, fleet=fleet)
        wall = time.time() - t0
    records = list(log.records())
    return {"servers": servers, "wall_s": wall, "measurements": len(records),
            "errors": sum(1 for r in records if r["error"]), "per_s": len(records) / wall,
            "split": dict(fleet.stats["measured"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1x2048x2048,1x4096x4096,16x2048x2048")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--pool-mib", type=int, default=64)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    rows = [run(n, shapes, a.trials, a.calls, a.pool_mib) for n in (1, 2)]
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {lutc.target.cpu_model()} ({os.cpu_count()} CPUs): "
             f"tracker, servers and builder on this machine; shapes {a.shapes} W2 g128, {a.trials} trials "
             f"each, batches of 8, {a.calls} timed calls per measurement, weights rotating through "
             f"{a.pool_mib} MiB per server.", "",
             "| servers | wall s | measurements | errors | measurements / s | per server |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['servers']} | {r['wall_s']:.1f} | {r['measurements']} | {r['errors']} | "
                     f"{r['per_s']:.2f} | {', '.join(f'{k}: {v}' for k, v in sorted(r['split'].items()))} |")
    lines.append("")
    lines.append(f"2 servers against 1: {rows[1]['per_s'] / rows[0]['per_s']:.2f}x the measurements per second.")
    md = "\n".join(lines) + "\n"
    print(md)
    if a.out:
        with open(a.out, "w") as f:
            f.write("# Tuning on a fleet of RPC servers (CPU, localhost)\n\n"
                    "`python benchmarks/bench_fleet.py --out benchmarks/results/fleet_cpu.md`\n\n" + md)


if __name__ == "__main__":
    main()
