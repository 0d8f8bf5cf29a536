"""Does the cost model rank a workload's candidates before (and while) it is tuned? Leave-one-workload-out on the committed tuning logs.

For every workload ``W`` that a device ``D`` searched (at least ``--min`` distinct valid
candidates with knobs), the XGBoost cost model (:class:`lutc.tuner.CostModel`) predicts the time
of each of ``W``'s candidates, and Spearman's rank correlation with the measured times says how
well it orders them. Three training sets:

* **informed, cold start**: only what ``D`` logged for the other workloads on the same target
  (:func:`lutc.tuner.log_history`, as a tuning run on a new shape starts), no measurement of ``W``;
* **search only**: ``--seen`` random candidates of ``W`` (what the model had before, after the
  first random batch), predicting the rest;
* **informed + search**: both, predicting the same rest.

A candidate's time is the median of its search measurements (confirmation records left out).
Runs without a GPU or TVM builds.

    python benchmarks/eval_cost_model.py --out benchmarks/results/cost_model_eval.md
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lutc.spec import MPGemmSpec  # noqa: E402
from lutc.tuner import Candidate, CostModel, TuningLog, features, log_history, rank_correlation  # noqa: E402

LOGS = ("cuda.jsonl", "cpu-x86_64.jsonl")
TARGET = 0.7


def searched(records) -> dict:
    """``{(target json, device, workload json): {Candidate: median us}}`` of valid search records."""
    found: dict = {}
    for r in records:
        t = r.get("us")
        if r.get("error") or r.get("confirm") or not r.get("knobs") or not isinstance(t, (int, float)) or t <= 0:
            continue
        key = (json.dumps(r.get("target"), sort_keys=True), r.get("device"), json.dumps(r["workload"], sort_keys=True))
        cand = Candidate(r["schedule"], tuple(sorted(r["knobs"].items())))
        found.setdefault(key, {}).setdefault(cand, []).append(float(t))
    return {k: {c: statistics.median(v) for c, v in cands.items()} for k, cands in found.items()}


def evaluate(path: str, min_cands: int, seen: int, seed: int) -> list:
    """One row per searched workload: its correlations under the three training sets."""
    records = list(TuningLog(path).records())
    groups = searched(records)
    rows = []
    for (tgt, device, wl), cands in sorted(groups.items()):
        if len(cands) < min_cands:
            continue
        target, workload = json.loads(tgt), json.loads(wl)
        same = [c for (t, d, _), cs in groups.items() if t == tgt and d == device for c in cs]
        names = sorted({c.schedule for c in same})
        knob_names = sorted({k for c in same for k, _ in c.knobs})
        spec = MPGemmSpec(**workload)
        feat = {c: features(spec, c, names, knob_names) for c in cands}
        prior_X, prior_us = log_history(records, workload, target, device, names, knob_names)
        order = sorted(cands, key=str)
        random.Random(seed).shuffle(order)
        train, rest = order[:seen], order[seen:]
        row = {"log": os.path.basename(path), "device": device.split(" | ")[0], "M": spec.M, "N": spec.N, "K": spec.K,
               "wbits": spec.wbits, "format": spec.format, "candidates": len(cands), "prior": len(prior_X)}

        def corr(X, us, test) -> float:
            if len(X) < 4 or len(test) < 3:
                return float("nan")
            model = CostModel(seed)
            model.fit(X, us)
            return rank_correlation(model.predict([feat[c] for c in test]), [cands[c] for c in test])

        row["informed"] = corr(prior_X, prior_us, order)
        row["search"] = corr([feat[c] for c in train], [cands[c] for c in train], rest)
        row["both"] = corr(prior_X + [feat[c] for c in train], prior_us + [cands[c] for c in train], rest)
        rows.append(row)
    return rows


def summary(rows: list, column: str) -> str:
    vals = [r[column] for r in rows if r[column] == r[column]]
    if not vals:
        return "-"
    return (f"{statistics.median(vals):.2f} ({sum(v >= TARGET for v in vals)}/{len(vals)} "
            f">= {TARGET})")


def markdown(rows: list, seen: int, min_cands: int) -> str:
    lines = ["| log | device | workloads | informed, cold start | search only (first "
             f"{seen}) | informed + search |", "|---|---|---|---|---|---|"]
    for log in LOGS:
        for device in sorted({r["device"] for r in rows if r["log"] == log}):
            sel = [r for r in rows if r["log"] == log and r["device"] == device]
            lines.append(f"| {log} | {device} | {len(sel)} | {summary(sel, 'informed')} | "
                         f"{summary(sel, 'search')} | {summary(sel, 'both')} |")
    lines += ["", f"Cells: median Spearman rank correlation over the workloads (how many reach {TARGET}). "
              f"Workloads with at least {min_cands} searched candidates.", "",
              "| log | device | M x N x K | W | format | candidates | prior records | informed | search only | both |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v != v else f"{v:.2f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['log']} | {r['device']} | {r['M']}x{r['N']}x{r['K']} | {r['wbits']} | {r['format']} | "
                     f"{r['candidates']} | {r['prior']} | {fmt(r['informed'])} | {fmt(r['search'])} | {fmt(r['both'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logs", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "tuning_logs"))
    ap.add_argument("--min", type=int, default=12, help="searched candidates a workload needs")
    ap.add_argument("--seen", type=int, default=8, help="candidates of the workload in 'search only'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    for log in LOGS:
        path = os.path.join(a.logs, log)
        if os.path.exists(path):
            rows += evaluate(path, a.min, a.seen, a.seed)
    md = markdown(rows, a.seen, a.min)
    print(md)
    if a.out:
        with open(a.out, "w") as f:
            f.write("# The cost model on workloads it has not seen (leave-one-workload-out)\n\n"
                    "`python benchmarks/eval_cost_model.py --out benchmarks/results/cost_model_eval.md`"
                    " (no GPU needed: the logs' own times)\n\n" + md)


if __name__ == "__main__":
    main()
