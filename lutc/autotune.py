"""The autotuner: search each workload's space of (schedule, knobs), guided by a cost model.

For one workload on one target (:func:`tune_spec`):

1. the space is every valid candidate of every schedule that supports the spec (LUT and
   multiply-add kernels alike: :mod:`lutc.tuner.space`); candidates already in the tuning log
   for this workload, target and device are not measured again (resume);
2. the default kernel (what ``lutc.compile`` builds untuned) is measured first, then what it
   would build from the nearest tuned workload (:func:`transferred_candidate`), if anything;
3. then batches: the predicted-fastest unmeasured candidates, plus a fraction ``epsilon`` at
   random to keep exploring, by the XGBoost cost model trained on all valid measurements so
   far and on this device's measurements of other workloads on this target in the log
   (:func:`lutc.tuner.model.log_history`; only where those are fewer than 4 is the first batch
   random). Before each batch is measured, the model's
   predictions for it are kept: comparing them with the measurements gives the rank
   correlation on candidates the model never trained on;
4. each batch is built in a thread pool (TVM's compiler releases the GIL; CUDA builds are
   nvcc processes), then each candidate is checked against the float64 reference (a wrong
   result is an error record) and timed with the weights rotating through ``pool_mib`` of
   copies (a decode step reads each layer once, so cached weights would flatter): on CPUs the
   median per-call wall time, on CUDA the kernel time inside a CUDA graph (:class:`lutc.measure.Bench`);
5. every measurement, valid or not, is appended to the log at once (kill-safe); the search
   stops at ``trials`` measurements, after ``seconds``, when the space is exhausted, or when
   ``patience`` batches in a row found nothing faster;
6. the default and the ``finalists`` fastest candidates are timed again, in turns, and those
   medians are the reported default and tuned times (the machine's speed drifts, and a search
   time can be a lucky draw; only a same-setting comparison makes a speedup). They are logged
   as a confirmation, which ``lutc.compile`` trusts over the search's records; if the default
   wins it, the default is what gets built.

``lutc.compile`` then builds the best record for the workload with no tuning; the winner is
also put in the kernel cache (:mod:`lutc.cache`), so a later process loads it in milliseconds.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
import tvm

import schedules
from schedules import contract

from . import layouts
from . import target as targets
from .build import build, default_knobs_of, kernel_layout, record_layout, spec_for, timed_current_default, transferred_record
from .fleet import Fleet, compiler_for
from .measure import CUTOFF, Bench, reference_weights
from .runtime import Kernel
from .spec import MPGemmSpec
from .tuner import CostModel, TuningLog, best, candidates, default_candidate, features, log_history, rank_correlation
from .tuner.records import confirmed_default, log_for, same_threads
from .tuner.space import Candidate


@dataclass
class TuneResult:
    """What tuning one workload found (times in microseconds)."""

    spec: MPGemmSpec
    default_us: float
    best_us: float
    best: Optional[Candidate]
    trials: int
    invalid: int
    wall_s: float
    rank_corr: float                # Spearman, model predictions vs measurements, unseen candidates
    space: int
    history: list = field(default_factory=list)   # (candidate, us or None, error)

    @property
    def speedup(self) -> float:
        return self.default_us / self.best_us if self.best_us else float("nan")


def tune(workloads: Iterable, target: targets.TargetLike = None, trials: int = 64,
         seconds: Optional[float] = None, log: Optional[TuningLog] = None, progress: bool = True,
         rpc_tracker: Optional[str] = None, rpc_key: Optional[str] = None, rpc_device: Optional[str] = None,
         total_seconds: Optional[float] = None, **options) -> list:
    """Tune several workloads; returns one :class:`TuneResult` each.

    Args:
        workloads: :class:`~lutc.spec.MPGemmSpec` objects, or ``(M, N, K)`` shapes (then the
            other spec fields come from ``options``: wbits, group_size, format, ...).
        trials: measurements per workload (the default kernel counts as one).
        seconds: wall-clock budget per workload (None: no limit).
        total_seconds: wall-clock budget for the whole run: a workload starts only if the longest
            one so far (or ``seconds``) still fits in what is left; the rest are named on stderr and
            left for a later run (their records stay as they were).
        log: where records go; default: ``tuning_logs/<family>.jsonl`` (see
            :func:`lutc.tuner.records.log_dir`).
        rpc_tracker, rpc_key: measure on the RPC servers registered under ``rpc_key`` at the TVM
            tracker ``"HOST:PORT"``, in parallel, building here for ``target`` (:mod:`lutc.fleet`);
            ``rpc_device`` names their hardware in the records (default ``"rpc:KEY"``).
        options: spec fields for shapes, and :func:`tune_spec` options (batch, epsilon, ...).

    Example:
        >>> res = lutc.tune([(1, 4096, 4096)], wbits=2, trials=16)    # doctest: +SKIP
        >>> print(lutc.autotune.report(res))                          # doctest: +SKIP
    """
    spec_fields = {k: options.pop(k) for k in list(options) if k in MPGemmSpec.__dataclass_fields__}
    tgt = targets.resolve(target)
    if (rpc_tracker is None) != (rpc_key is None):
        raise ValueError("RPC tuning needs both rpc_tracker (HOST:PORT) and rpc_key")
    fleet = Fleet(rpc_tracker, rpc_key, device=rpc_device) if rpc_tracker else None
    results, started, workloads = [], time.monotonic(), list(workloads)
    try:
        for i, w in enumerate(workloads):
            spec = w if isinstance(w, MPGemmSpec) else spec_for(w, tgt, **spec_fields)
            if not fits_budget(time.monotonic() - started, [r.wall_s for r in results], seconds, total_seconds):
                left = ", ".join(_shape(x) for x in workloads[i:])
                print(f"lutc tune: the {total_seconds:g} s budget is spent; {len(workloads) - i} workload(s) "
                      f"left untuned: {left}", file=sys.stderr, flush=True)
                break
            results.append(tune_spec(spec, tgt, trials=trials, seconds=seconds, log=log,
                                     progress=progress, fleet=fleet, **options))
            if progress:   # each row as it comes: a long run that gets cut off still says something
                print(report(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    finally:
        if fleet is not None:   # a run that fails still frees the servers it held
            fleet.close()
    reference_weights.cache_clear()
    return results


def fits_budget(elapsed: float, walls: list, seconds: Optional[float], total_seconds: Optional[float]) -> bool:
    """Whether another workload fits a run's ``total_seconds`` after ``elapsed`` seconds, judged by
    the longest workload so far (``walls``) or, before the first, by its own budget ``seconds``.

    Example:
        >>> fits_budget(500.0, [20.0, 31.0], 16, 540), fits_budget(500.0, [20.0, 41.0], 16, 540)
        (True, False)
        >>> fits_budget(0.0, [], None, 10), fits_budget(1e9, [1.0], None, None)
        (True, True)
    """
    if total_seconds is None:
        return True
    return elapsed + max(walls, default=seconds or 0.0) <= total_seconds


def _shape(w) -> str:
    """``MxNxK`` of a spec or shape triple (for messages)."""
    return "x".join(str(v) for v in ((w.M, w.N, w.K) if isinstance(w, MPGemmSpec) else w))


def tune_spec(spec: MPGemmSpec, target: targets.TargetLike = None, trials: int = 64,
              seconds: Optional[float] = None, log: Optional[TuningLog] = None,
              batch: Optional[int] = None, jobs: Optional[int] = None, epsilon: float = 0.25,
              patience: int = 4, finalists: int = 3, pool_mib: int = 512, calls: int = 30,
              seed: int = 0, progress: bool = True, fleet: Optional[Fleet] = None) -> TuneResult:
    """Tune one workload (module docstring). Returns a :class:`TuneResult`.

    ``jobs`` builds run at once (default: the usable cores; CUDA builds are mostly nvcc
    processes), ``batch`` candidates are chosen per round (default: ``max(8, jobs)``);
    ``finalists`` fastest candidates are confirmed against the default at the end; ``fleet``
    measures on RPC servers instead of this process (:mod:`lutc.fleet`)."""
    facts = targets.facts(target)
    tgt, kind = facts.target, facts.kind
    jobs = jobs or len(os.sched_getaffinity(0))
    batch = batch or max(8, jobs)
    if kind == "cpu-cross" and fleet is None:
        raise ValueError("cannot tune a cross-compiled target here: tune on the machine itself, or "
                         "measure on RPC servers there (rpc_tracker=HOST:PORT, rpc_key=KEY)")
    if kind == "cuda" and fleet is not None:
        raise ValueError("RPC tuning measures CPU kernels: tune a CUDA target on the GPU machine")
    if kind == "cuda" and not torch.cuda.is_available():
        # every candidate would fail to run and be logged as invalid, never to be tried again
        raise ValueError("cannot tune a CUDA target without a visible GPU: tune on the GPU machine")
    described = facts.described
    device = fleet.device if fleet is not None else facts.device
    log = log or log_for(kind, described)
    t_start = time.time()
    rng = random.Random(seed)
    space = candidates(spec, tgt, kind)
    schedule_names = sorted({c.schedule for c in space})
    knob_names = sorted({k for c in space for k, _ in c.knobs})
    featurize = lambda c: features(spec, c, schedule_names, knob_names)  # noqa: E731

    bench = Bench(spec, pool_mib, calls, device_type="cuda" if kind == "cuda" else "cpu")
    if fleet is not None:      # one session per server, for this workload's data
        fleet.open(bench, calls, compiler_for(tgt))
    # a CPU record names the threads it was timed with (this process's, or the fleet's servers')
    threads = (fleet.threads if fleet is not None else targets.cpu_threads()) if kind == "cpu" else None
    done = {}          # candidate -> us (None when invalid)
    history = []
    for rec in log.matching(spec.key(), described):   # resume (a failure stays tried; a time of
        # an older layout version's kernel is measured again)
        if (rec.get("device") == device and same_threads(rec, threads)
                and (rec.get("error") or record_layout(rec, kind, spec, tgt))):
            cand = Candidate(rec["schedule"], tuple(sorted(rec["knobs"].items())))
            done[cand] = None if rec.get("error") else rec["us"]

    def record(cand: Candidate, us: Optional[float], error: Optional[str], confirm: Optional[str] = None) -> None:
        rec = {"workload": spec.key(), "target": described, "device": device, "versions": _versions(),
               "schedule": cand.schedule, "knobs": cand.knob_dict, "us": us, "error": error,
               "time": utc_now()}
        if threads is not None:
            rec["threads"] = threads
        known = None if cand.knob_dict else default_knobs_of(cand.schedule, spec)
        if known:       # the default, and which kernel it was (lutc.build.timed_current_default)
            rec["default_knobs"] = known
        layout = kernel_layout(rec, kind, spec, tgt)
        if layout is not None:
            rec["layout_version"] = layouts.get(layout).version
        if confirm:
            rec["confirm"] = confirm
        else:
            done[cand] = us
            history.append((cand, us, error))
        log.append(rec)

    default = default_candidate(spec, tgt, kind)
    if default not in done:
        record(default, *(fleet or bench).measure(_builder(spec, tgt, default)()))
    measured_here = 1 if history else 0
    transferred = transferred_candidate(log, spec, tgt, default.schedule, device)
    if transferred is not None and transferred not in done:
        record(transferred, *(fleet or bench).measure(_builder(spec, tgt, transferred)()))
        measured_here += 1

    model = CostModel(seed)
    # what this device measured for other shapes on this target: the model's start
    prior_X, prior_us = log_history(log.records(), spec.key(), described, device, schedule_names, knob_names)
    held_out_pred, held_out_meas = [], []
    best_so_far = min((u for u in done.values() if u), default=float("inf"))
    stale = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        while measured_here < trials:
            if seconds is not None and time.time() - t_start > seconds:
                break
            todo = [c for c in space if c not in done]
            if not todo:
                break
            valid = [(c, u) for c, u in done.items() if u is not None and c.knobs]
            n = min(batch, trials - measured_here, len(todo))
            if len(prior_X) + len(valid) >= 4:
                model.fit(prior_X + [featurize(c) for c, _ in valid], prior_us + [u for _, u in valid])
                pred = model.predict([featurize(c) for c in todo])
                ranked = [c for _, c in sorted(zip(pred, range(len(todo))), key=lambda t: t[0])]
                n_explore = int(round(epsilon * n))
                chosen_idx = ranked[: n - n_explore]
                rest = [i for i in range(len(todo)) if i not in set(chosen_idx)]
                chosen_idx += rng.sample(rest, min(n_explore, len(rest)))
                chosen = [todo[i] for i in chosen_idx]
                predictions = {todo[i]: pred[i] for i in chosen_idx}
            else:
                chosen, predictions = rng.sample(todo, n), {}
            builds = [pool.submit(_builder(spec, tgt, c)) for c in chosen]
            # Measure only once the whole batch is built: builds running beside a CPU
            # measurement would share its cores and skew it.
            concurrent.futures.wait(builds)
            improved = False

            def finish(cand: Candidate, us: Optional[float], err: Optional[str]) -> None:
                nonlocal measured_here, best_so_far, improved
                record(cand, us, err)
                measured_here += 1
                if us is not None and cand in predictions:
                    held_out_pred.append(predictions[cand])
                    held_out_meas.append(us)
                if us is not None and us < best_so_far:
                    best_so_far, improved = us, True
                if progress:
                    _progress(spec, measured_here, trials, best_so_far, time.time() - t_start)

            built = []
            for cand, fut in zip(chosen, builds):
                if fut.exception() is not None:   # build failure: recorded, never chosen
                    e = fut.exception()
                    finish(cand, None, f"build failed: {str(e).splitlines()[-1][:300] if str(e) else type(e).__name__}")
                else:
                    built.append((cand, fut.result()))
            if fleet is not None:   # every server at once; a lost attempt is an error record
                fleet.measure_batch(built, finish)
            else:
                for cand, kernel in built:
                    finish(cand, *bench.measure(kernel, cutoff_us=CUTOFF * best_so_far))
            stale = 0 if improved else stale + 1
            if stale >= patience:
                break
    if progress:
        print(file=sys.stderr)
    # Confirm in one setting: the default and the fastest few, timed alternately, so drift in
    # the machine's speed or a lucky draw during the search cannot make up a speedup. These
    # records outrank the search's (lutc.tuner.records.best).
    searched = sorted((u, i, c) for i, (c, u) in enumerate(done.items()) if u is not None and c != default)
    final = [default] + [c for _, _, c in searched[:finalists]]
    default_us = best_us = done.get(default) or float("nan")
    winner = default if default_us == default_us else None
    confirmed = _confirm(spec, tgt, fleet or bench, final, jobs) if len(final) > 1 else {}
    if default in confirmed and len(confirmed) > 1:     # only a comparison with the default counts
        run_id = f"{utc_now()}/{os.getpid()}"
        for cand, us in confirmed.items():
            record(cand, us, None, confirm=run_id)
        default_us = confirmed[default]
        winner = min(confirmed, key=confirmed.get)
        best_us = confirmed[winner]
    if fleet is not None:
        fleet.close()
    if winner is not None:
        # into the kernel cache ($LUTC_CACHE_DIR, unless LUTC_CACHE=0): the next process's
        # lutc.compile of this workload finds the record and loads the built kernel
        build(spec, tgt, schedule=winner.schedule, knobs=winner.knob_dict)
    return TuneResult(spec=spec, default_us=default_us, best_us=best_us, best=winner,
                      trials=measured_here, invalid=sum(1 for _, u, _ in history if u is None),
                      wall_s=time.time() - t_start, rank_corr=rank_correlation(held_out_pred, held_out_meas),
                      space=len(space), history=history)


def transferred_candidate(log: TuningLog, spec: MPGemmSpec, tgt, default_schedule: str,
                          device: Optional[str] = None) -> Optional[Candidate]:
    """The candidate ``lutc.compile`` would build for ``spec`` from the nearest tuned workload
    (:func:`lutc.build.transferred_record`), as the tuner's space spells it, or None. The tuner
    times it right after the default (step 2 of the module docstring), so that a search whose
    model looks elsewhere cannot end slower than the transfer it replaces: on the H200, 16 x
    18944 x 3584 W2 was tuned to 18.5 us in 24 trials, where the knobs transferred before (64-row
    tiles in 4 slices without a copying warpgroup) had run 14.7
    (``benchmarks/results/tuning_h200_qwen25_7b_llama3_8b.md``).

    Example: with the committed H200 log, ``transferred_candidate(log, MPGemmSpec(128, 5120, 27648,
    wbits=4, act_dtype="float16"), resolve("cuda:sm_90a"), "cuda_wgmma", "NVIDIA H200 | sm_90")``
    is ``cuda_wgmma(ak=8, bm=128, late_scale=0, splits=4, stages=4, streamk=0, wg=3, wn=1, ws=True)``
    (the W2 weight's best)."""
    rec = transferred_record(log, spec, tgt, default_schedule, device=device)
    if rec is None:
        return None
    module = schedules.named(rec["schedule"])
    return Candidate(rec["schedule"], tuple(sorted(contract.recorded_knobs(module, rec["knobs"]).items())))


def utc_now() -> str:
    """The time a record is written, in UTC to the second (``2026-12-02T14:42:26``): the clock
    that schedules date their default rules by (``schedules.contract.default_changed``)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


def stale_workloads(target: targets.TargetLike = None, log: Optional[TuningLog] = None,
                    device: Optional[str] = None) -> list[MPGemmSpec]:
    """The workloads this device tuned on ``target`` (its latest confirmation in ``log``; on a CPU,
    with this process's thread count) whose run did not time today's default: another default
    schedule, or this one before its rule last changed (:func:`lutc.build.timed_current_default`),
    as :class:`~lutc.spec.MPGemmSpec` objects in log order. Their records beat a kernel the default
    no longer builds and may now lose to it: on the H200, five of six M = 1 records built kernels
    up to 1.68x slower than the default that replaced the one they beat
    (``benchmarks/results/tuning_h200_qwen3_8b_qwen25_32b.md``). ``lutc tune --stale`` tunes
    them again.

    Example:
        >>> [s.M for s in stale_workloads("cuda:sm_90a", device="NVIDIA H200 | sm_90")][:3]  # doctest: +SKIP
        [1, 1, 1]
    """
    facts = targets.facts(target)
    log = log or log_for(facts.kind, facts.described)
    device = device or facts.device
    threads = targets.cpu_threads() if facts.kind == "cpu" else None
    runs: dict = {}
    for r in log.records():
        if r.get("target") == facts.described and r.get("device") == device and same_threads(r, threads):
            runs.setdefault(json.dumps(r["workload"], sort_keys=True), []).append(r)
    stale = []
    for recs in runs.values():
        final = best(recs)
        try:
            spec = MPGemmSpec(**recs[0]["workload"])
        except (TypeError, ValueError):     # a workload this lutc no longer describes
            continue
        if final is None:
            continue
        today = default_candidate(spec, facts.target, facts.kind).schedule
        default = confirmed_default(recs, final["confirm"], today)
        if default is None or not timed_current_default(default):
            stale.append(spec)
    return stale


def report(results: list) -> str:
    """A Markdown table: default vs tuned time, speedup, trials, wall time, rank correlation."""
    lines = ["| M x N x K | weights | default µs | tuned µs | speedup | best candidate | trials (invalid) / space "
             "| wall s | rank corr. |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r.spec
        fmt = f"{s.format} W{s.wbits} g{s.group_size}" + (" zp" if s.zero_point else "")
        corr = "-" if r.rank_corr != r.rank_corr else f"{r.rank_corr:.2f}"
        lines.append(f"| {s.M}x{s.N}x{s.K} | {fmt} | {r.default_us:.1f} | {r.best_us:.1f} | {r.speedup:.2f}x "
                     f"| {r.best} | {r.trials} ({r.invalid}) / {r.space} | {r.wall_s:.0f} | {corr} |")
    return "\n".join(lines)


def _confirm(spec: MPGemmSpec, tgt, bench, finalists: list, jobs: int) -> dict:
    """Candidate -> median time over rounds in which every finalist is timed in turn; those
    that fail to build or run are left out."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        builds = [pool.submit(_builder(spec, tgt, c)) for c in finalists]
    built = [(c, f.result()) for c, f in zip(finalists, builds) if f.exception() is None]
    times = bench.compare([k for _, k in built])
    return {c: us for (c, _), us in zip(built, times) if us == us}


def _builder(spec: MPGemmSpec, tgt, cand: Candidate) -> Callable[[], Kernel]:
    # the default candidate has no knobs: the schedule's own defaults, what lutc.compile builds untuned
    return lambda: build(spec, tgt, schedule=cand.schedule, knobs=cand.knob_dict, cache=None, tuned=False)


def _progress(spec, done: int, total: int, best_us: float, elapsed: float) -> None:
    width = 24
    filled = int(width * done / max(total, 1))
    bar = "#" * filled + "." * (width - filled)
    print(f"\r{spec.M}x{spec.N}x{spec.K} W{spec.wbits} [{bar}] {done}/{total} best {best_us:8.1f} us "
          f"{elapsed:5.0f} s", end="", file=sys.stderr, flush=True)


def _versions() -> dict:
    from . import __version__
    return {"lutc": __version__, "tvm": tvm.__version__}




def linear_shapes(model, ms: Iterable[int]) -> list:
    """``(M, N, K)`` for every distinct ``nn.Linear`` of ``model`` and each M in ``ms``."""
    import torch.nn as nn
    nk = sorted({(m.out_features, m.in_features) for m in model.modules() if isinstance(m, nn.Linear)})
    return [(M, N, K) for N, K in nk for M in ms]


__all__ = ["tune", "tune_spec", "report", "TuneResult", "linear_shapes"]
