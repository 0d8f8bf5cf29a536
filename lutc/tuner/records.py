"""Tuning logs: one JSON line per measured candidate, append-only, safe for concurrent tuners.

A record::

    {"workload": {...MPGemmSpec.key()...}, "target": {...lutc.target.describe()...},
     "device": "Intel(R) Xeon(R) ... | avx512bw,avx512vnni,..." or "NVIDIA H100 80GB HBM3 | sm_90",
     "versions": {"lutc": "0.1.0", "tvm": "0.27.0.post1"},
     "schedule": "x86", "knobs": {"vector_bytes": 64, ...}, "layout_version": 1,
     "us": 231.4 | null, "error": null | "build failed: ...", "time": "2026-11-21T20:30:00"}

``layout_version`` is the version of the layout the kernel read (absent: 1); a record of an older
version timed a kernel that no longer exists and is not used (``lutc.build.record_layout``).

``us`` is the median kernel time in microseconds; a record with ``error`` set (build failure,
wrong result) is kept so the tuner never tries that candidate again, and never chosen.

A tuning run ends by timing its finalists (the default and the fastest few) again, alternately,
in one setting; those records carry ``"confirm": "<run id>"``. Only they decide: :func:`best`
picks from the newest confirmation, and a workload whose run never reached its confirmation
(killed, out of time) keeps the default, so a candidate whose search time was a lucky draw is
never what ``lutc.compile`` builds.

Durability: each record is one ``write`` of one line to a file opened with ``O_APPEND``, under
an exclusive ``flock``; two tuners appending at once interleave whole lines and lose nothing,
and a process killed mid-write leaves at most one partial last line. Reading skips any line
that is not a complete JSON object (with a warning naming the file and line) and leaves it in
the file: nothing on disk is ever rewritten or truncated by lutc.
"""
from __future__ import annotations

import copy
import fcntl
import json
import math
import os
import warnings
from typing import Callable, Iterable, Iterator, Optional

from ..cpu_arch import machine


class TuningLog:
    """The JSON-lines tuning log at ``path`` (created on first append).

    Example:
        >>> import tempfile, os
        >>> log = TuningLog(os.path.join(tempfile.mkdtemp(), "cpu.jsonl"))
        >>> log.append({"workload": {"M": 1}, "target": {"kind": "llvm"}, "schedule": "x86",
        ...             "knobs": {}, "us": 10.0, "error": None})
        >>> [r["us"] for r in log.records()]
        [10.0]
    """

    def __init__(self, path: str):
        self.path = path

    def append(self, record: dict) -> None:
        """Append one record atomically (one line, one write, under an exclusive lock)."""
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A previous writer killed mid-line left no newline: start on a fresh line so that
            # only its partial record is lost, not ours.
            if os.fstat(fd).st_size and _last_byte(self.path) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def records(self) -> Iterator[dict]:
        """Every complete record; corrupt lines are skipped with a warning (and kept). The
        records are shared with the parse cache (:data:`_PARSED`): copy one before changing it."""
        parsed = _parse(self.path)
        if parsed is None:
            return
        records, problems = parsed
        for problem in problems:
            warnings.warn(problem, stacklevel=2)
        yield from records

    def matching(self, workload: dict, target: dict) -> list:
        """Records of this workload on this target (any lutc/TVM version)."""
        return [r for r in self.records() if r["workload"] == workload and r.get("target") == target]

    def schedules(self, workload: dict, target: dict) -> set:
        """Names of the schedules measured for this workload on this target (errors included:
        the tuner tried them)."""
        return {r.get("schedule") for r in self.matching(workload, target)}


#: The explicit cache of parsed logs: path -> ((mtime_ns, size), records, warnings). Every
#: untuned ``lutc.compile`` looks its workload up; parsing a 4000-line log costs ~30 ms, a
#: lookup in an unchanged file (same modification time and size) nothing.
_PARSED: dict = {}


def _parse(path: str) -> Optional[tuple]:
    """(records, warnings) of the log at ``path``, or None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _PARSED.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1], hit[2]
    with open(path, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        try:
            data = f.read()
            stamp = (os.fstat(f.fileno()).st_mtime_ns, len(data))
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    records, problems = [], []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict) or "workload" not in rec or "knobs" not in rec:
                raise ValueError("not a tuning record")
        except ValueError as e:
            problems.append(f"{path}:{number}: skipping a corrupt tuning record ({e})")
            continue
        records.append(rec)
    _PARSED[path] = (stamp, records, problems)
    return records, problems


def log_dir() -> str:
    """Where tuning logs live: ``$LUTC_TUNING_LOGS``, else the ``tuning_logs/`` directory of
    this checkout (the committed reference logs), else ``~/.cache/lutc/tuning_logs``."""
    if os.environ.get("LUTC_TUNING_LOGS"):
        return os.environ["LUTC_TUNING_LOGS"]
    repo = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "tuning_logs")
    if os.path.isdir(repo):
        return repo
    return os.path.join(os.path.expanduser("~"), ".cache", "lutc", "tuning_logs")


def log_for(target_kind: str, target_attrs: dict, directory: Optional[str] = None) -> TuningLog:
    """The log file for a target family: ``cuda.jsonl``, ``cpu-x86_64.jsonl``, ``cpu-aarch64.jsonl``."""
    name = "cuda" if target_kind == "cuda" else "cpu-" + machine(str(target_attrs.get("mtriple") or ""))
    return TuningLog(os.path.join(directory or log_dir(), name + ".jsonl"))


def same_threads(record: dict, threads: Optional[int] = None) -> bool:
    """Whether ``record`` was timed with ``threads`` threads. A CPU record names its thread count
    (``"threads"``), and one of another count is not used: on the 2-core Emerald Rapids VM the
    knobs tuned on a 16-core host of the same model took 1.04-1.29x the default's time
    (``benchmarks/results/cpu_splits_emr16.md``). A record that names none (a GPU's, or a CPU's
    written before records named it) counts as any; ``threads`` None (a GPU, or a caller that
    names no count) takes only those."""
    return record.get("threads", threads) == threads


def best_for(log: TuningLog, workload: dict, target: dict, device: str,
             usable: Optional[Callable[[dict], bool]] = None,
             where: Optional[Callable[[dict], bool]] = None, threads: Optional[int] = None) -> Optional[dict]:
    """The best valid record for this workload and target, timed with ``threads`` threads
    (:func:`same_threads`): measured on this device if any, else on any device with the same
    target. ``usable`` (the builder's check that it can build the record: a known schedule,
    knobs in their domains) filters first, and a record it refuses is skipped with one warning
    naming the log; ``where`` then narrows the choice (e.g. to kernels reading one weight
    layout)."""
    records = [r for r in log.matching(workload, target) if same_threads(r, threads)]
    if usable is not None:
        kept = [r for r in records if usable(r)]
        if len(kept) < len(records):
            _warn_once(log.path, f"{log.path}: skipped {len(records) - len(kept)} tuning record(s) of "
                                 f"this workload that this lutc cannot build (unknown schedule or bad knobs)")
        records = kept
    if where is not None:
        records = [r for r in records if where(r)]
    found = best(r for r in records if r.get("device") == device) or best(records)
    return copy.deepcopy(found)     # the caller's own: records are shared with the parse cache


#: Workload fields that change what is computed or how it is represented: a record transfers
#: only between workloads that agree on all of them.
SAME_FIELDS = ("format", "zero_point", "act_dtype", "table_dtype", "scale_dtype", "g", "symmetrize")
#: Fields a transfer measures distance in, on a log2 scale, with their weights: M and the bit
#: width count double (on the H100/H200 logs the best kernel at M = 1 changes between W2 and
#: W4, less between shapes: ``benchmarks/results/transfer_eval.md``), group size half.
DISTANCE = {"M": 2.0, "N": 1.0, "K": 1.0, "wbits": 2.0, "group": 0.5}
#: A source's tuned record transfers only where it beat the source's own default by this
#: factor: a narrow win there is as likely a loss here. Leave-one-out on the committed logs
#: (``benchmarks/results/transfer_eval.md``; chosen on the data it is reported on): 0.8 kept
#: all but 1 of 34 held-out CPU shapes and 2 of 55 GPU ones within 5% of the default; 0.9 let 8
#: GPU shapes lose up to 1.34x (a W4 shape's win at M = 1 carried to W2, or 4096 to 11008).
MARGIN = 0.8


def workload_distance(a: dict, b: dict) -> Optional[float]:
    """How far workload ``b`` is from ``a`` (``MPGemmSpec.key()`` dicts) for transferring a
    tuning record: the weighted sum of |log2| ratios of :data:`DISTANCE`'s fields (group size
    -1 counts as K), or None where they differ in a :data:`SAME_FIELDS` field or one is a
    decode (M = 1: a GEMV, whose best kernel says nothing about a GEMM's) and the other not.

    Example:
        >>> a = dict(M=1, N=11008, K=4096, wbits=2, group_size=128, format="uniform")
        >>> round(workload_distance(a, dict(a, N=11008 * 2)), 3), workload_distance(a, dict(a, format="bcq"))
        (1.0, None)
    """
    if any(a.get(f) != b.get(f) for f in SAME_FIELDS) or (a["M"] == 1) != (b["M"] == 1):
        return None

    def value(w: dict, field: str) -> float:
        if field == "group":
            return w["K"] if w.get("group_size", -1) == -1 else w["group_size"]
        return w[field]
    return sum(weight * abs(math.log2(value(a, f) / value(b, f))) for f, weight in DISTANCE.items())


def nearest_for(log: TuningLog, workload: dict, target: dict, device: str,
                usable: Callable[[dict], bool], transferable: Callable[[dict], bool],
                default_schedule: Optional[str] = None,
                where: Optional[Callable[[dict], bool]] = None, threads: Optional[int] = None,
                default_current: Optional[Callable[[dict], bool]] = None) -> Optional[dict]:
    """The record to build for a workload that the log has no record of on this target: the
    best record of the nearest tuned workload (:func:`workload_distance`), this workload
    included where another target measured it. Sources rank by: this target before others
    (those ``transferable`` accepts: a CPU of the same ISA, a GPU of the same architecture;
    from them only records of ``default_schedule`` count, since which kernel is fastest
    differs between machines of one ISA: on a Rocket Lake the LUT kernel beat ``dot_mac`` at
    M = 1 W2, on an EPYC they tie), this device before others, then distance; only records timed
    with ``threads`` threads count (:func:`same_threads`). A source whose
    measurements do not include ``default_schedule`` (a kernel newer than the log) is passed
    over, as for an exact match;
    ``usable`` (the record builds for ``workload``) and ``where`` filter its records. The
    nearest source that has a usable record and whose confirmation timed ``default_schedule``
    with its default knobs, as they are today (``default_current`` of that record: a default
    re-ruled since, e.g. ``cuda_wgmma``'s at M = 16 on 2026-12-02, leaves a margin measured
    against a kernel the default no longer builds), decides: its best record if that beat the
    default there by :data:`MARGIN`, else None (build the default). Returns a copy of the
    record, or None."""
    ranked = []
    for recs in _by_workload(log):
        first = recs[0]
        same_target = first.get("target") == target
        if (same_target and first["workload"] == workload) or not (same_target or transferable(first)):
            continue
        recs = [r for r in recs if same_threads(r, threads)]
        if not recs:
            continue
        if not same_target:     # another machine: its knobs for our default kernel, not its choice of kernel
            recs = [r for r in recs if default_schedule is not None and r.get("schedule") == default_schedule]
            if not recs:
                continue
        d = workload_distance(workload, first["workload"])
        if d is not None:
            ranked.append((not same_target, not any(r.get("device") == device for r in recs), d, len(ranked), recs))
    for *_, recs in sorted(ranked):
        if default_schedule is not None and default_schedule not in {r.get("schedule") for r in recs}:
            continue
        if default_current is not None and not any(r.get("knobs") == {} and r.get("schedule") == default_schedule
                                                   and default_current(r) for r in recs):
            continue    # (before the costly usable check of its records: most sources end here)
        mine = [r for r in recs if r.get("device") == device] or recs
        found = best(r for r in mine if usable(r) and (where is None or where(r)))
        if found is not None:
            default = confirmed_default(recs, found["confirm"], default_schedule)
            if default is None or (default_current is not None and not default_current(default)):
                continue        # its run did not time our default (as it is now): no margin to judge by
            if found["us"] > MARGIN * default["us"]:
                return None     # the nearest tuned shape says: the default
            return copy.deepcopy(found)
    return None


#: The explicit cache of records grouped by (target, workload): log path -> (the parsed record
#: list the groups were made from, groups). The parse cache hands out the same list until the
#: file changes.
_GROUPED: dict = {}


def _by_workload(log: TuningLog) -> list:
    """The log's records, one list per (target, workload)."""
    parsed = _parse(log.path)
    if parsed is None:
        return []
    records = parsed[0]
    hit = _GROUPED.get(log.path)
    if hit is not None and hit[0] is records:
        return hit[1]
    groups: dict = {}
    for r in records:
        groups.setdefault(json.dumps([r.get("target"), r["workload"]], sort_keys=True), []).append(r)
    _GROUPED[log.path] = (records, list(groups.values()))
    return _GROUPED[log.path][1]


_WARNED: set = set()


def _warn_once(path: str, message: str) -> None:
    if (path, message) not in _WARNED:
        _WARNED.add((path, message))
        warnings.warn(message, stacklevel=3)


def best(records: Iterable[dict]) -> Optional[dict]:
    """The fastest valid record (``error`` unset, ``us`` a positive finite number) of the newest
    confirmation among ``records`` (module docstring); None if there is none. Search records
    alone never win: a run killed before its confirmation leaves only single measurements, one
    of which may be a lucky draw, so the default is built until a confirmation exists."""
    valid = [r for r in records if not r.get("error") and _finite_time(r.get("us"))]
    confirms = [r["confirm"] for r in valid if r.get("confirm")]
    if not confirms:
        return None
    valid = [r for r in valid if r.get("confirm") == confirms[-1]]   # file order: newest last
    return min(valid, key=lambda r: r["us"])


def confirmed_default(records: Iterable[dict], confirm, schedule: Optional[str] = None) -> Optional[dict]:
    """The record of the default kernel (``knobs`` ``{}``, of ``schedule`` if given) timed with a
    measured time in the confirmation ``confirm`` (the margin a run's choice is judged by); None
    where that run did not time it.

    Example:
        >>> recs = [{"confirm": "c1", "knobs": {}, "schedule": "x86", "us": 9.0},
        ...         {"confirm": "c1", "knobs": {"unroll": 4}, "schedule": "x86", "us": 7.0}]
        >>> confirmed_default(recs, "c1")["us"], confirmed_default(recs, "c1", "dot_mac")
        (9.0, None)
    """
    return next((r for r in records if r.get("confirm") == confirm and r.get("knobs") == {}
                 and (schedule is None or r.get("schedule") == schedule) and _finite_time(r.get("us"))), None)


def _finite_time(us) -> bool:
    """A measured time: a positive finite number (not a bool, NaN, inf or negative)."""
    return isinstance(us, (int, float)) and not isinstance(us, bool) and 0 < us < float("inf")


def _last_byte(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)
