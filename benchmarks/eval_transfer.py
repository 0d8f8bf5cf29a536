"""How good is a transferred tuning record? Leave-one-out on the committed tuning logs.

For every workload ``W`` that a device ``D`` tuned to a confirmation, this asks what
``lutc.compile`` would build for ``W`` if the log had no record of it
(:func:`lutc.tuner.records.nearest_for`, the path of a shape nobody tuned), and looks up how fast
that kernel ran on ``D`` for ``W`` in ``W``'s own records:

* **held-out shape**: the log without any record of ``W`` (every device), so the choice comes
  from the nearest other shapes;
* **other device**: only the other devices' records (H100 <-> H200; among the x86 VMs: a Rocket
  Lake, an EPYC, an Emerald Rapids), ``W`` included: the log of another GPU of the same
  architecture, or of another CPU.

Only records of kernels this lutc still builds count (:func:`load`). Compared with the full tune
(the best of ``W``'s confirmation on ``D``) and with the default
of the log's time (the confirmation's ``knobs = {}`` record of the default schedule); a workload
tuned before its default last changed (``schedules.contract.default_changed``), or whose run's
default was another schedule than today's, is listed but not counted, since its log timed
another kernel than today's default. A
candidate's time is its confirmation time where it was a finalist, else the median of its
search measurements (one setting each; the confirmation re-times finalists alternately, so
the two phases can differ by a few percent); a candidate ``D`` never measured for ``W`` is
counted apart. Runs without a GPU or TVM builds (it only asks each schedule whether the
record builds for ``W``).

    python benchmarks/eval_transfer.py --out benchmarks/results/transfer_eval.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lutc  # noqa: E402
from lutc import target as targets  # noqa: E402
from lutc.build import logged_record, record_layout, timed_current_default  # noqa: E402
from lutc.tuner.records import TuningLog, best, confirmed_default  # noqa: E402
from lutc.tuner.space import default_candidate  # noqa: E402
import schedules  # noqa: E402
from schedules import contract  # noqa: E402

LOGS = ("cuda.jsonl", "cpu-x86_64.jsonl")


def load(path: str) -> list:
    """The log's records of kernels this lutc still builds: a record of an older weight-layout
    version (``lutc.build.record_layout``; the ``tc16`` v1 records of ``cuda_mma`` and
    ``cuda_stream``) timed a kernel that no longer exists, so it is neither a full tune nor a
    default to compare a transfer with."""
    return [r for r in TuningLog(path).records() if current(r)]


def current(record: dict) -> bool:
    tgt = targets.resolve(record["target"])
    try:
        return record_layout(record, targets.kind(tgt), lutc.MPGemmSpec(**record["workload"]), tgt) is not None
    except (ValueError, TypeError):   # knobs or a workload this lutc no longer builds
        return False


def groups(records: list) -> dict:
    """(device, workload json) -> that device's records of the workload."""
    out: dict = {}
    for r in records:
        out.setdefault((r.get("device"), json.dumps(r["workload"], sort_keys=True)), []).append(r)
    return out


def same_kernel(record: dict, schedule: str, knobs: dict) -> bool:
    """Whether ``record`` measured the kernel ``schedule`` builds with ``knobs`` (knobs added after
    either was written count at their old value: :func:`schedules.contract.recorded_knobs`)."""
    module = schedules.named(schedule)
    return (record["schedule"] == schedule
            and contract.recorded_knobs(module, record["knobs"]) == contract.recorded_knobs(module, knobs))


def time_of(recs: list, schedule: str, knobs: dict):
    """(us, phase) of a candidate in one workload's records on one device, or (None, None)."""
    final = best(recs)
    if final is not None:
        for r in recs:
            if (r.get("confirm") == final["confirm"] and same_kernel(r, schedule, knobs)
                    and not r.get("error") and r.get("us")):
                return r["us"], "confirm"
    search = [r["us"] for r in recs if not r.get("confirm") and same_kernel(r, schedule, knobs)
              and not r.get("error") and r.get("us")]
    return (statistics.median(search), "search") if search else (None, None)


def today(workload: dict, target: dict) -> str:
    """The schedule ``lutc.compile`` builds for ``workload`` on ``target`` when nothing is tuned."""
    tgt = targets.resolve(target)
    return default_candidate(lutc.MPGemmSpec(**workload), tgt, targets.kind(tgt)).schedule


def choose_from(records: list, workload: dict, target: dict, device: str, default_schedule: str):
    """What ``lutc.compile`` builds for ``workload`` on ``device`` from a log of ``records``
    (:func:`lutc.build.logged_record`: the same lookup): ``(record, origin)`` or None."""
    spec = lutc.MPGemmSpec(**workload)
    tgt = targets.resolve(target)
    with tempfile.TemporaryDirectory() as d:
        log = TuningLog(os.path.join(d, "log.jsonl"))
        with open(log.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        return logged_record(log, spec, tgt, default_schedule, device=device)


def evaluate(records: list, mode: str) -> list:
    rows = []
    by = groups(records)
    devices = sorted({d for d, _ in by})
    for (device, wkey), recs in sorted(by.items()):
        final = best(recs)
        if final is None:
            continue
        default = confirmed_default(recs, final["confirm"])
        if default is None:
            continue
        workload, target = recs[0]["workload"], recs[0]["target"]
        if mode == "held-out shape":
            pool = [r for r in records if json.dumps(r["workload"], sort_keys=True) != wkey]
        else:
            others = [d for d in devices if d != device]
            if not others:
                continue
            pool = [r for r in records if r.get("device") in others]
        found = choose_from(pool, workload, target, device, default["schedule"])
        if found is None:
            schedule, knobs, source = default["schedule"], {}, "default"
        else:
            chosen, origin = found
            schedule, knobs = chosen["schedule"], chosen["knobs"]
            w = chosen["workload"]
            source = f"{origin}: M={w['M']} {w['N']}x{w['K']} W{w['wbits']} on {chosen['device'].split(' |')[0]}"
        us, phase = time_of(recs, schedule, knobs)
        rows.append({"device": device.split(" |")[0], "workload": workload, "best_us": final["us"],
                     "default_us": default["us"], "chosen": f"{schedule} {knobs}", "source": source,
                     "us": us, "phase": phase,
                     "stale": not timed_current_default(default) or default["schedule"] != today(workload, target)})
    return rows


def summary(rows: list) -> str:
    n, within, safe = counts(rows)
    stale = sum(r["stale"] for r in rows)
    return (f"{len(rows)} workloads, {stale} of them not counted (their run timed another default than "
            f"today's: before its rule changed, or another schedule); chosen kernel timed for {n}: within 10% of the full tune "
            f"{within}/{n} ({within / max(1, n):.0%}), at most 5% slower than the default {safe}/{n} "
            f"({safe / max(1, n):.0%})")


def counts(rows: list) -> tuple:
    """(timed, within 10% of the full tune, at most 5% slower than the default), over the rows
    whose log timed today's default (``lutc.build.timed_current_default``)."""
    timed = [r for r in rows if r["us"] is not None and not r["stale"]]
    return (len(timed), sum(r["us"] <= 1.10 * r["best_us"] for r in timed),
            sum(r["us"] <= 1.05 * r["default_us"] for r in timed))


def markdown(results: dict) -> str:
    lines = ["# Transferred tuning records against a full tune (leave-one-out on `tuning_logs/`)", "",
             "`python benchmarks/eval_transfer.py --out benchmarks/results/transfer_eval.md` (its docstring "
             "gives the method). Times in us, from the logs' own measurements: `(search)` is a single search "
             "measurement, `(confirm)` the alternating re-timing of the finalists, so a search-timed row can be "
             "off by a few percent. A transfer needs records that pin every knob of their kernel; knobs "
             "added after a record count at the value its kernel had (`ADDED_KNOBS`: the Xeon's `dot_mac` "
             "records predate `rows`, one row of x per pass).", "",
             "Issue #15's bar: within 10% of a full tune on >= 80% of cases, never more than 5% slower than "
             "the default.", "",
             "| log | case | within 10% of full tune | at most 5% slower than default |", "|---|---|---|---|"]
    for (log, mode), rows in results.items():
        n, within, safe = counts(rows)
        lines.append(f"| {log} | {mode} | {within}/{n} ({within / max(1, n):.0%}) | {safe}/{n} ({safe / max(1, n):.0%}) |")
    lines.append("")
    for (log, mode), rows in results.items():
        lines += [f"## {log}: {mode}", "", summary(rows), "",
                  "| device | M | N x K | W | full tune | default | transferred | from | chosen | x full tune | x default |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            w = r["workload"]
            t = "not measured" if r["us"] is None else f"{r['us']:.1f} ({r['phase']})"
            ratio = lambda ref: "-" if r["us"] is None else f"{r['us'] / ref:.2f}"  # noqa: E731
            lines.append(f"| {r['device']} | {w['M']} | {w['N']}x{w['K']} | {w['wbits']}{' ' + w['format'] if w['format'] != 'uniform' else ''} "
                         f"| {r['best_us']:.1f} | {r['default_us']:.1f}{' (another default then)' if r['stale'] else ''} | {t} | {r['source']} | {r['chosen']} "
                         f"| {ratio(r['best_us'])} | {ratio(r['default_us'])} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--logs", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "tuning_logs"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = {}
    for name in LOGS:
        path = os.path.join(args.logs, name)
        if not os.path.exists(path):
            continue
        records = load(path)
        for mode in ("held-out shape", "other device"):
            if mode == "other device" and len({r.get("device") for r in records}) < 2:
                continue
            rows = evaluate(records, mode)
            results[(name, mode)] = rows
            print(f"{name} {mode}: {summary(rows)}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(markdown(results))


if __name__ == "__main__":
    main()
