"""The tuner: logs that survive concurrency, kills and corruption; compile from logs and cache."""
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

import lutc
import schedules
from lutc.autotune import tune
from lutc import layouts
from lutc.build import choose, kernel_layout
from lutc.cache import KernelCache
from lutc.target import describe, device_name, resolve
from lutc.tuner import Candidate, CostModel, TuningLog, best, candidates, features, log_history, rank_correlation
from lutc.tuner.records import best_for, log_for, nearest_for
from schedules import contract

SPEC = lutc.MPGemmSpec(1, 256, 512, wbits=2, group_size=64, table_dtype="int8")


def _record(us, knobs=None, error=None, schedule="x86", spec=SPEC, device=None, confirm="run"):
    """A record of a confirmation round (``confirm=None``: a single search measurement)."""
    tgt = resolve("host")
    rec = {"workload": spec.key(), "target": describe(tgt), "device": device or device_name(tgt),
           "versions": {}, "schedule": schedule, "knobs": knobs or {}, "us": us, "error": error}
    return rec if confirm is None else dict(rec, confirm=confirm)


def _append_many(path, tag, n):
    log = TuningLog(path)
    for i in range(n):
        log.append(_record(float(i), knobs={"unroll": 4}, schedule=f"{tag}"))


def test_concurrent_appends_lose_nothing(tmp_path):
    path = str(tmp_path / "log.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, f"p{p}", 150)) for p in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    recs = list(TuningLog(path).records())
    assert len(recs) == 450
    assert sorted({r["schedule"] for r in recs}) == ["p0", "p1", "p2"]


def test_a_killed_writer_loses_only_its_line(tmp_path):
    path = tmp_path / "log.jsonl"
    log = TuningLog(str(path))
    log.append(_record(10.0))
    with open(path, "ab") as f:                  # what kill -9 mid-write leaves behind
        f.write(b'{"workload": {"M": 1}, "knobs": {"un')
    log.append(_record(5.0))
    with pytest.warns(UserWarning, match="log.jsonl:2: skipping a corrupt tuning record"):
        recs = list(log.records())
    assert [r["us"] for r in recs] == [10.0, 5.0]


def test_corrupt_lines_are_skipped_and_kept(tmp_path):
    path = tmp_path / "log.jsonl"
    log = TuningLog(str(path))
    log.append(_record(7.0))
    with open(path, "a") as f:
        f.write("not json at all\n[1, 2]\n")
    before = path.read_bytes()
    with pytest.warns(UserWarning, match="corrupt"):
        assert [r["us"] for r in log.records()] == [7.0]
    assert path.read_bytes() == before           # nothing on disk is lost or rewritten


def test_invalid_records_are_never_chosen():
    recs = [_record(None, error="build failed: x"), _record(3.0, error="wrong result"), _record(9.0)]
    assert best(recs)["us"] == 9.0
    assert best([_record(None, error="x")]) is None


def test_the_newest_confirmation_outranks_search_times():
    search = [_record(5.0, {"unroll": 4}, confirm=None), _record(9.0, {"unroll": 8}, confirm=None)]
    first = [_record(7.0, {"unroll": 4}, confirm="a"), _record(6.0, {}, confirm="a")]
    second = [_record(8.0, {"unroll": 8}, confirm="b"), _record(8.5, {}, confirm="b")]
    assert best(search) is None        # a run killed before its confirmation: the default is built
    assert best(search + first)["knobs"] == {}               # the default won its confirmation
    assert best(search + first + second)["knobs"] == {"unroll": 8}
    assert best([_record(None, {}, error="wrong result", confirm="c")] + search) is None


def test_unusable_records_are_skipped_with_a_warning(tmp_path, monkeypatch):
    """Valid JSON that this lutc cannot build (a newer lutc's schedule, bad knobs, another
    target's schedule, NaN or negative times) is skipped, naming the log; the next best wins."""
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    tgt = resolve("host")
    log = log_for("cpu", describe(tgt))
    for rec in (_record(1.0, schedule="x86_v9"), _record(1.1, knobs="abc"), _record(1.2, knobs={"vector_bytes": 128}),
                _record(1.3, schedule="cuda_lut"), _record(float("nan")), _record(-5.0),
                _record(1.4, knobs={"unroll": True}), _record(20.0, knobs={"unroll": 2, "paired": False}),
                _record(40.0, schedule=lutc.build(SPEC, tuned=False, cache=None).schedule, knobs={})):
        log.append(rec)
    with pytest.warns(UserWarning, match=r"cpu-.*\.jsonl: skipped 5 tuning record\(s\) .* cannot build"):
        kernel = lutc.compile((1, 256, 512), wbits=2, group_size=64, cache=None)
    assert kernel.knobs == {"unroll": 2, "paired": False} and kernel.tuned["us"] == 20.0


@pytest.mark.parametrize("name,kind", [("cuda.jsonl", "cuda"), ("cpu-x86_64.jsonl", "cpu")])
def test_every_shipped_record_still_builds(name, kind):
    """The committed logs hold no record this lutc cannot build: a record that pins only some knobs
    is built with today's defaults for the rest, so a default that moves can strand it (cuda_stream's
    ``warp_sync`` default once put 23 records over the shared memory limit, 6 of them 16 x 28672 x 8192 W2), and
    every user compiling that workload would see the skip warning."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tuning_logs", name)
    stranded = []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["error"] is None and kernel_layout(rec, kind, lutc.MPGemmSpec(**rec["workload"]),
                                                      resolve(rec["target"])) is None:
                stranded.append((rec["schedule"], rec["knobs"], rec["workload"]))
    assert not stranded, f"{len(stranded)} records of {name} no longer build, e.g. {stranded[:3]}"


def test_a_log_decides_only_among_the_kernels_it_measured(tmp_path, monkeypatch):
    """Records of M = 2 made before ``dot_mac`` became the batch default measured only the LUT
    kernel: the default is built until the log has a record of it, then the best record wins."""
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    spec = SPEC.with_(M=2)
    log = log_for("cpu", describe(resolve("host")))
    log.append(_record(20.0, knobs={"unroll": 2}, spec=spec))
    default = lutc.build(spec, tuned=False, cache=None).schedule
    assert default != "x86", "this host's default for M = 2 is the LUT kernel: nothing to test"
    kernel = lutc.build(spec, cache=None)
    assert kernel.schedule == default and kernel.tuned is None
    log.append(_record(30.0, schedule=default, knobs={}, spec=spec))
    kernel = lutc.build(spec, cache=None)
    assert kernel.schedule == "x86" and kernel.knobs == {"unroll": 2} and kernel.tuned["us"] == 20.0


def test_records_of_an_older_layout_version_are_not_used(tmp_path, monkeypatch):
    """tc16 v2 changed how the tensor-core kernels read x: a record timed with v1 (no
    ``layout_version``) describes a kernel lutc no longer builds. It is skipped without a
    warning, and while the default kernel has no current record the log does not decide (the
    LUT kernel's record, still current, is not built in its place)."""
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    tgt = resolve("cuda:sm_90a")
    spec = lutc.MPGemmSpec(4, 256, 512, wbits=2, group_size=128, act_dtype="float16")
    log = log_for("cuda", describe(tgt))

    def rec(us, schedule, knobs, **extra):
        return {"workload": spec.key(), "target": describe(tgt), "device": device_name(tgt), "versions": {},
                "schedule": schedule, "knobs": knobs, "us": us, "error": None, "confirm": "run", **extra}

    log.append(rec(10.0, "cuda_stream", {"stages": 3}))           # tc16 v1
    log.append(rec(30.0, "cuda_lut", {"warps": 2}))                 # warp32 v1: current
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice = choose(spec, tgt)
    assert (choice.schedule, choice.knobs, choice.origin) == ("cuda_stream", {}, "default")
    log.append(rec(12.0, "cuda_stream", {"stages": 4}, layout_version=2))
    choice = choose(spec, tgt)
    assert (choice.schedule, choice.knobs, choice.origin) == ("cuda_stream", {"stages": 4}, "tuned")
    assert choice.record["us"] == 12.0


def test_compile_builds_the_best_tuned_record(tmp_path, monkeypatch):
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    tgt = resolve("host")
    log = log_for("cpu", describe(tgt))
    log.append(_record(50.0, knobs={"unroll": 4, "paired": False}))
    log.append(_record(20.0, knobs={"unroll": 2, "paired": True, "vector_bytes": 32}))
    log.append(_record(1.0, knobs={"unroll": 8}, error="wrong result: relative error 1e+00"))
    log.append(_record(30.0, schedule="dot_mac", knobs={"row_tiles": 2}))
    kernel = lutc.compile((1, 256, 512), wbits=2, group_size=64, cache=None)
    # (it pins every knob the x86 kernel had then: the knobs added since take their old values)
    assert kernel.schedule == "x86"
    assert kernel.knobs == dict({"unroll": 2, "paired": True, "vector_bytes": 32}, **schedules.x86.ADDED_KNOBS)
    assert kernel.tuned["us"] == 20.0
    assert lutc.compile((1, 256, 512), wbits=2, group_size=64, cache=None, tuned=False).tuned is None
    # a record from another device with the same target is used when this device has none
    other = lutc.MPGemmSpec(1, 128, 512, wbits=2, group_size=64, table_dtype="int8")
    log.append(_record(40.0, knobs={"row_tiles": 1}, schedule="dot_mac", spec=other, device="elsewhere"))
    log.append(_record(45.0, spec=other, device="elsewhere"))   # the default was measured there too
    assert lutc.compile((1, 128, 512), wbits=2, group_size=64, cache=None).schedule == "dot_mac"
    assert best_for(log, other.key(), describe(tgt), device_name(tgt))["device"] == "elsewhere"


def test_cpu_records_name_their_threads_and_this_count_is_preferred(tmp_path, monkeypatch):
    """A CPU record names the threads it was timed with, and only records of this count (or of
    none: written before records named it) are used: another count's knobs lost to the default
    (``cpu_splits_emr16.md``). ``lutc tune`` writes the count."""
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    tgt = resolve("host")
    log = log_for("cpu", describe(tgt))
    many = dict(_record(10.0, schedule="dot_mac", knobs={"splits": 2, "row_tiles": 2}), threads=16)
    few = dict(_record(30.0, schedule="dot_mac", knobs={"row_tiles": 1}), threads=2)
    legacy = _record(25.0, schedule="dot_mac", knobs={"row_tiles": 4})
    for rec in (many, few):
        log.append(rec)
    find = lambda threads: best_for(log, SPEC.key(), describe(tgt), device_name(tgt), threads=threads)  # noqa: E731
    assert find(2)["knobs"] == few["knobs"] and find(16)["knobs"] == many["knobs"]
    assert find(4) is None                        # no record of 4 threads: the default
    # a transfer to a shape nobody tuned takes only records of this count too
    log.append(dict(_record(20.0, schedule="dot_mac"), threads=16))     # the default, in many's run
    near = lambda threads: nearest_for(  # noqa: E731
        log, lutc.MPGemmSpec(1, 128, 512, wbits=2, group_size=64, table_dtype="int8").key(), describe(tgt),
        device_name(tgt), lambda r: True, lambda r: False, "dot_mac", threads=threads)
    assert near(16)["knobs"] == many["knobs"] and near(2) is None
    log.append(legacy)
    assert find(2)["knobs"] == legacy["knobs"] and find(4)["knobs"] == legacy["knobs"]
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    assert lutc.target.cpu_threads() == 2
    # (these records time dot_mac as the default: on a Zen 4 host the W2 decode default is the LUT kernel)
    monkeypatch.setattr(schedules.x86, "half_rate_lut", lambda spec, target: False)
    kernel = lutc.compile((1, 256, 512), wbits=2, group_size=64, cache=None)
    assert (kernel.schedule, kernel.knobs["row_tiles"], kernel.tuned["us"]) == ("dot_mac", 4, 25.0)
    tune([lutc.MPGemmSpec(1, 64, 256, wbits=2, group_size=64, table_dtype="int8")], trials=2, progress=False,
         pool_mib=1)
    tuned = [r for r in log.records() if r["workload"]["N"] == 64]
    assert tuned and all(r["threads"] == 2 for r in tuned)


def test_a_shape_nobody_tuned_takes_the_nearest_tuned_shapes_record(tmp_path, monkeypatch):
    """A workload with no record builds the best record of the nearest tuned workload that
    builds for it (same format fields, decode with decode); the kernel says so."""
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    log = log_for("cpu", describe(resolve("host")))
    near = SPEC.with_(N=1024)                       # 2 N of the asked N = 512: distance 1
    far = SPEC.with_(N=4096, K=4096)
    default = lutc.build(SPEC.with_(N=512), tuned=False, cache=None).schedule
    pinned = {"unroll": 2, "paired": False, "vector_bytes": 32}      # every knob x86 had (ADDED_KNOBS: the rest)
    for spec, us in ((near, 20.0), (far, 10.0)):
        log.append(_record(us, knobs=dict(pinned, unroll=2 if spec is near else 8), spec=spec))
        log.append(_record(us * 2, schedule=default, knobs={}, spec=spec))   # the default, slower
    kernel = lutc.build(SPEC.with_(N=512), cache=None)
    assert kernel.origin == "transferred" and kernel.schedule == "x86"
    assert kernel.knobs == dict(pinned, **schedules.x86.ADDED_KNOBS)
    assert kernel.tuned["workload"] == near.key()
    # a record that leaves knobs to the defaults of the lutc reading it, or one that won by less
    # than MARGIN, does not transfer
    for knobs, us in (({"unroll": 2}, 20.0), (pinned, 39.0)):
        lone = tmp_path / f"lone{us}"
        monkeypatch.setenv("LUTC_TUNING_LOGS", str(lone))
        one = log_for("cpu", describe(resolve("host")))
        one.append(_record(us, knobs=knobs, spec=near))
        one.append(_record(40.0, schedule=default, knobs={}, spec=near))
        assert lutc.build(SPEC.with_(N=512), cache=None).origin == "default"
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    # an exact record outranks any transfer; no record of the format (bcq) or of M > 1: default
    log.append(_record(30.0, knobs={"unroll": 4}, spec=SPEC.with_(N=512)))
    log.append(_record(60.0, schedule=default, knobs={}, spec=SPEC.with_(N=512)))
    exact = lutc.build(SPEC.with_(N=512), cache=None)
    assert exact.origin == "tuned" and exact.knobs == {"unroll": 4}
    assert lutc.build(SPEC.with_(N=512, M=16), cache=None).origin == "default"
    assert lutc.build(SPEC.with_(N=512, format="bcq"), cache=None).origin == "default"


def test_tuning_a_shape_times_its_transfer_right_after_the_default(tmp_path, monkeypatch):
    """The tuner times what ``lutc.compile`` would transfer from the nearest tuned shape right
    after the default, so a search whose model looks elsewhere cannot end slower than the
    transfer it replaces (16 x 18944 x 3584 W2 on the H200: tuned to 18.5 us where the transfer
    it replaced had run 14.7)."""
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    log = log_for("cpu", describe(resolve("host")))
    spec, near = SPEC.with_(N=512), SPEC.with_(N=1024)
    default = lutc.build(spec, tuned=False, cache=None).schedule
    pinned = {"unroll": 2, "paired": False, "vector_bytes": 32}
    log.append(_record(20.0, knobs=pinned, spec=near))
    log.append(_record(40.0, schedule=default, knobs={}, spec=near))
    tune([spec], trials=2, progress=False, pool_mib=1)
    searched = [r for r in log.records() if r["workload"] == spec.key() and not r.get("confirm")]
    assert [(r["schedule"], r["knobs"]) for r in searched] == [
        (default, {}), ("x86", dict(pinned, **schedules.x86.ADDED_KNOBS))]
    assert all(r["error"] is None and 0 < r["us"] < 1e6 for r in searched)
    # resumed: both are in the log, so a second run's 2 measurements are other candidates
    tune([spec], trials=2, progress=False, pool_mib=1)
    again = [r for r in log.records() if r["workload"] == spec.key() and not r.get("confirm")]
    assert len(again) == 4 and all(r["knobs"] not in ({}, dict(pinned, **schedules.x86.ADDED_KNOBS))
                                   for r in again[2:])


def test_cuda_wgmma_records_transfer_only_where_their_grid_fits(tmp_path, monkeypatch):
    """A tile and K slices tuned for a wide N (8192 x 28672 at M = 64: 256-row tiles in 4 slices,
    128 blocks) transfer where they still fill most of a wave (7168 x 28672: 112 blocks), not to
    a narrow N where they would leave most SMs idle (3584 x 18944: 56 blocks against the
    default's 224; on the H200 38.4 us against 28.0)."""
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    tgt = resolve("cuda:sm_90a")
    log = log_for("cuda", describe(tgt))
    source = lutc.MPGemmSpec(64, 8192, 28672, wbits=4, group_size=128, act_dtype="float16")
    knobs = {"wg": 2, "wn": 2, "bm": 64, "ws": True, "splits": 4, "stages": 4, "streamk": 0, "late_scale": 0, "ak": 8}
    for us, kn in ((60.0, knobs), (78.0, {})):
        log.append(dict(_record(us, knobs=kn, schedule="cuda_wgmma", spec=source), target=describe(tgt),
                        device=device_name(tgt), layout_version=layouts.get("tc16").version))
    wide = choose(source.with_(N=7168), tgt)
    assert (wide.origin, wide.knobs) == ("transferred", knobs)
    assert not schedules.cuda_wgmma.transfers(source.with_(N=3584, K=18944), **knobs)
    # past M = 64 the tensor cores set the time and fewer, larger blocks may win: not checked
    assert schedules.cuda_wgmma.transfers(source.with_(M=128, N=3584, K=18944), **knobs)
    narrow = choose(source.with_(N=3584, K=18944), tgt)
    assert (narrow.origin, narrow.knobs) == ("default", {})


def test_a_transfer_is_judged_only_by_a_margin_over_todays_default(tmp_path, monkeypatch):
    """A source's win counts only where its run timed the default as it is today
    (``default_changed``: cuda_wgmma's to M = 32 changed on 2026-12-02) and that default builds
    the kernel this shape's default builds: a win over another kernel says little here (on the
    H200 128 x 5120 x 27648's 1.34x win lost 1.23x to 128 x 4096 x 12288's own default)."""
    from lutc.build import timed_current_default
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    tgt = resolve("cuda:sm_90a")
    log = log_for("cuda", describe(tgt))
    source = lutc.MPGemmSpec(16, 8192, 28672, wbits=4, group_size=128, act_dtype="float16")
    changed = schedules.cuda_wgmma.default_changed(source)
    knobs = {"wg": 1, "wn": 2, "bm": 64, "ws": False, "splits": 4, "stages": 4, "streamk": 0, "late_scale": 1, "ak": 8}

    def run(time, confirm, spec=source):
        for us, kn in ((33.0, knobs), (47.0, {})):
            log.append(dict(_record(us, knobs=kn, schedule="cuda_wgmma", spec=spec, confirm=confirm), time=time,
                            target=describe(tgt), device=device_name(tgt), layout_version=layouts.get("tc16").version))
    run("2026-12-01T00:00:00", "before")
    before = list(log.records())[-1]
    assert not timed_current_default(before) and timed_current_default(dict(before, time=changed))
    assert timed_current_default(dict(before, workload=source.with_(M=512).key()))   # unchanged there
    # a record that stored the knobs its default built is judged by them, not by its time
    today = schedules.cuda_wgmma.default_knobs(source)
    assert timed_current_default(dict(before, default_knobs=today))
    assert not timed_current_default(dict(before, time="2026-12-03T00:00:00", default_knobs=dict(today, splits=1)))
    wide = source.with_(N=7168)      # the same default kernel as the source's
    assert contract.resolve_knobs(schedules.cuda_wgmma, wide) == contract.resolve_knobs(schedules.cuda_wgmma, source)
    assert choose(wide, tgt).origin == "default"
    run("2026-12-03T00:00:00", "after")
    assert (choose(wide, tgt).origin, choose(wide, tgt).knobs) == ("transferred", knobs)
    narrow = source.with_(N=6144)    # its default is another tile (one warpgroup, no copying warps)
    assert contract.resolve_knobs(schedules.cuda_wgmma, narrow) != contract.resolve_knobs(schedules.cuda_wgmma, source)
    assert schedules.cuda_wgmma.transfers(narrow, **knobs) and choose(narrow, tgt).origin == "default"


def test_tune_stale_finds_the_workloads_tuned_before_their_default_changed(tmp_path, monkeypatch, capsys):
    """``lutc tune --stale`` re-tunes this device's workloads whose tuning run did not time
    today's default: one timed before its schedule's ``default_changed``, or another schedule
    as the default; and only those."""
    from lutc.autotune import stale_workloads
    from lutc.cli import main
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    tgt = resolve("host")
    log = log_for("cpu", describe(tgt))
    default = lutc.build(SPEC, tuned=False, cache=None).schedule
    other_schedule = "cpu_generic" if default != "cpu_generic" else "x86"
    monkeypatch.setattr(schedules.named(default), "default_changed",
                        lambda spec: "2026-12-01T00:00:00" if spec.N == SPEC.N else None, raising=False)
    before, after = "2026-11-30T00:00:00", "2026-12-02T00:00:00"
    runs = [(SPEC, before, None, default),                                  # stale: the rule changed since
            (SPEC.with_(K=2 * SPEC.K), after, None, default),               # timed today's default
            (SPEC.with_(N=2 * SPEC.N), before, None, default),              # no change there
            (SPEC.with_(K=4 * SPEC.K), before, "another machine", default),  # not this device's
            (SPEC.with_(K=8 * SPEC.K), after, None, other_schedule)]        # stale: another default then
    for spec, time, device, default_schedule in runs:
        for us, knobs, schedule in ((10.0, {"row_tiles": 1}, default), (12.0, {}, default_schedule)):
            log.append(dict(_record(us, knobs=knobs, schedule=schedule, spec=spec, device=device), time=time))
    stale = [SPEC.key(), SPEC.with_(K=8 * SPEC.K).key()]
    assert [s.key() for s in stale_workloads()] == stale
    seen = []
    monkeypatch.setattr("lutc.autotune.tune", lambda shapes, **kw: seen.extend(shapes) or [])
    monkeypatch.setattr("lutc.autotune.report", lambda results: "")
    assert main(["tune", "--stale"]) == 0 and [s.key() for s in seen] == stale
    assert "2 workload(s) whose tuning run did not time today's default" in capsys.readouterr().err
    # a record without a time (or a null one) counts as older than any change, not as an error
    from lutc.build import timed_current_default
    assert not timed_current_default(dict(_record(12.0, schedule=default), time=None))


def test_distance_keeps_formats_and_decode_apart():
    from lutc.tuner.records import workload_distance
    a = SPEC.key()
    assert workload_distance(a, a) == 0
    assert workload_distance(a, SPEC.with_(N=512).key()) == pytest.approx(1.0)           # N x 2
    assert workload_distance(a, SPEC.with_(M=2).key()) is None          # decode vs batch
    assert workload_distance(SPEC.with_(M=2).key(), SPEC.with_(M=8).key()) == pytest.approx(4.0)
    assert workload_distance(a, SPEC.with_(table_dtype="float32").key()) is None


def test_records_of_another_cpu_of_the_same_isa_lend_only_their_knobs(tmp_path, monkeypatch):
    """A log keyed by another LLVM CPU name (the committed one says ``rocketlake``) serves a host
    with the same SIMD features: its knobs for this host's default kernel, not its choice of
    kernel (which differs between machines), and nothing from a CPU of another ISA."""
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    tgt = resolve("host")
    log = log_for("cpu", describe(tgt))
    default = lutc.build(SPEC, tuned=False, cache=None)
    other_knobs = ({"row_tiles": 1, "rows": 1} if default.schedule == "dot_mac"
                   else {"unroll": 1, "paired": False, "vector_bytes": 32})
    theirs = dict(describe(tgt), mcpu="some-other-cpu")
    for rec in (_record(5.0, knobs={"unroll": 32}, schedule="x86" if default.schedule != "x86" else "cpu_generic"),
                _record(9.0, knobs=other_knobs, schedule=default.schedule),
                _record(12.0, knobs={}, schedule=default.schedule)):
        log.append(dict(rec, target=theirs))
    kernel = lutc.build(SPEC, cache=None)
    assert kernel.origin == "transferred" and kernel.schedule == default.schedule
    # (a knob added since, dot_mac's prefetch, at the value the record's kernel had)
    assert kernel.knobs == contract.recorded_knobs(schedules.named(default.schedule), other_knobs)
    # the same records from a CPU without this host's SIMD features: not used
    alien = tmp_path / "alien"
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(alien))
    log = log_for("cpu", describe(tgt))
    for rec in (_record(9.0, knobs=other_knobs, schedule=default.schedule), _record(12.0, schedule=default.schedule)):
        log.append(dict(rec, target=theirs, device="Some CPU | avx,fma"))
    assert lutc.build(SPEC, cache=None).origin == "default"


def test_gpu_records_transfer_within_one_architecture():
    from lutc.target import transferable
    h100 = {"target": {"kind": "cuda", "arch": "sm_90a"}, "device": "NVIDIA H100 80GB HBM3 | sm_90"}
    assert transferable(resolve("cuda:sm_90a"))(h100) and not transferable(resolve("cuda:sm_80"))(h100)
    assert not transferable(resolve("host"))(h100)


def test_model_shapes_name_the_linear_layers_of_known_models(monkeypatch):
    from lutc.cli import main
    from lutc.model_shapes import MODELS, linear_shapes
    assert linear_shapes("llama-3-8b", [1, 16]) == [
        (1, 4096, 4096), (16, 4096, 4096), (1, 1024, 4096), (16, 1024, 4096),
        (1, 14336, 4096), (16, 14336, 4096), (1, 4096, 14336), (16, 4096, 14336)]
    assert all(K % 128 == 0 for name in MODELS for _, _, K in linear_shapes(name, [1]))   # g128 fits
    with pytest.raises(ValueError, match="unknown model 'llama-9'.*llama-3-8b"):
        linear_shapes("llama-9", [1])
    seen = []    # the CLI tunes exactly those shapes
    monkeypatch.setattr("lutc.autotune.tune", lambda shapes, **kw: seen.extend(shapes) or [])
    monkeypatch.setattr("lutc.autotune.report", lambda results: "")
    assert main(["tune", "--model-shapes", "bitnet-2b", "--m", "1,16", "--wbits", "2"]) == 0
    assert seen == linear_shapes("bitnet-2b", [1, 16])


def test_second_process_compiles_from_cache_in_under_a_second(tmp_path):
    script = textwrap.dedent(f"""
        import os, time, json
        os.environ["LUTC_CACHE"] = "1"
        os.environ["LUTC_CACHE_DIR"] = {str(tmp_path / "cache")!r}
        os.environ["LUTC_TUNING_LOGS"] = {str(tmp_path / "logs")!r}
        import lutc, torch
        from lutc.testing import random_case, reference, rel_error
        t0 = time.perf_counter()
        k = lutc.compile((1, 1024, 2048), wbits=2, group_size=128)
        dt = time.perf_counter() - t0
        x, qw = random_case(k.spec, seed=3)
        print(json.dumps({{"s": dt, "cached": k.from_cache, "err": rel_error(k(x, qw), reference(x, qw)),
                          "tol": lutc.testing.tolerance(k.spec), "schedule": k.schedule, "layout": k.layout}}))
    """)
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1]) for _ in range(2)]
    assert not runs[0]["cached"] and runs[1]["cached"]
    assert runs[1]["s"] < 1.0, runs
    assert runs[1]["err"] < runs[1]["tol"] and runs[1]["schedule"] == runs[0]["schedule"]
    assert runs[1]["layout"] == runs[0]["layout"]


def test_corrupt_cache_entry_is_rebuilt(tmp_path):
    cache = KernelCache(str(tmp_path))
    spec = lutc.MPGemmSpec(1, 64, 256, wbits=2, group_size=64)
    k = lutc.build(spec, cache=cache, tuned=False)
    lib = [f for f in os.listdir(tmp_path) if f.endswith(".so")][0]
    (tmp_path / lib).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        again = lutc.build(spec, cache=cache, tuned=False)
    assert not again.from_cache and again.schedule == k.schedule


def test_space_respects_the_target():
    avx2 = resolve({"kind": "llvm", "mcpu": "x86-64-v3"})
    space = candidates(SPEC, avx2, "cpu")
    assert space and all(dict(c.knobs).get("vector_bytes", 32) == 32 for c in space)
    assert not any(c.schedule == "dot_mac" for c in space)          # no VNNI on x86-64-v3
    odd = lutc.MPGemmSpec(1, 256, 512, wbits=3, group_size=64, table_dtype="int8")
    assert not any(dict(c.knobs).get("paired") for c in candidates(odd, resolve("host"), "cpu"))


def test_cost_model_and_rank_correlation():
    X = [[float(i), float(i % 3)] for i in range(30)]
    us = [10.0 * (1 + i) for i in range(30)]
    model = CostModel()
    model.fit(X, us)
    assert rank_correlation(model.predict(X), us) > 0.95
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_the_model_starts_from_the_logs_other_workloads():
    """log_history takes this device's valid knob records of other workloads on this target, and
    a model trained on them alone ranks a new workload's candidates (time = shape x knob effect)."""
    target, names, knob_names = {"kind": "llvm"}, ["x86", "dot_mac"], ["rows", "unroll"]
    effect = {(s, r, u): (1.0 if s == "x86" else 0.6) * (1 + abs(r - 4) / 4) * (1 + 0.3 * (u == 1))
              for s in names for r in (1, 2, 4, 8) for u in (1, 2)}

    def recs(shape, device="epyc", **extra):
        spec = lutc.MPGemmSpec(*shape, wbits=2)
        return [dict({"workload": spec.key(), "target": target, "device": device, "schedule": s,
                      "knobs": {"rows": r, "unroll": u}, "us": spec.N * spec.K / 1e5 * e, "error": None}, **extra)
                for (s, r, u), e in effect.items()]

    new = lutc.MPGemmSpec(1, 4096, 11008, wbits=2)
    log = recs((1, 4096, 4096)) + recs((1, 11008, 4096)) + recs((1, 4096, 11008))   # the last is `new`
    noise = (recs((1, 2048, 2048), device="other") + recs((1, 2048, 2048), error="build failed")
             + [dict(r, knobs={}) for r in recs((1, 2048, 2048))]
             + [dict(r, knobs={"tiles": 2}) for r in recs((1, 2048, 2048))]
             + [dict(r, target={"kind": "cuda"}) for r in recs((1, 2048, 2048))])
    X, us = log_history(log + noise, new.key(), target, "epyc", names, knob_names)
    assert len(X) == 2 * len(effect)            # the two other shapes; none of the noise, not `new`
    model = CostModel()
    model.fit(X, us)
    cands = [Candidate(s, (("rows", r), ("unroll", u))) for (s, r, u) in effect]
    pred = model.predict([features(new, c, names, knob_names) for c in cands])
    assert rank_correlation(pred, [effect[(c.schedule, *c.knob_dict.values())] for c in cands]) > 0.9


def test_tune_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    log = log_for("cpu", describe(resolve("host")))
    (res,) = tune([(1, 256, 512)], wbits=2, group_size=64, trials=6, batch=3, pool_mib=8, calls=5,
                  log=log, progress=False)
    recs = [r for r in log.records() if "confirm" not in r]
    confirmed = [r for r in log.records() if "confirm" in r]
    assert res.trials == 6 and len(recs) == 6 and res.best is not None
    assert [r["error"] for r in recs] == [None] * 6      # every candidate of this CPU is valid
    # each record names the version of the layout its kernel read
    assert all(r["layout_version"] == layouts.get(kernel_layout(r, "cpu", lutc.MPGemmSpec(**r["workload"]),
                                                                resolve("host"))).version for r in recs)
    # the default and the 3 fastest others were timed again; the result is their best
    assert len(confirmed) == 4 and confirmed[0]["knobs"] == {}
    assert res.best_us == min(r["us"] for r in confirmed) and res.default_us == confirmed[0]["us"]
    assert res.best_us > 0 and res.default_us > 0 and res.space >= 20
    (res2,) = tune([(1, 256, 512)], wbits=2, group_size=64, trials=4, batch=2, pool_mib=8, calls=5,
                   log=log, progress=False)
    recs2 = [r for r in log.records() if "confirm" not in r]
    keys = [(r["schedule"], json.dumps(r["knobs"], sort_keys=True)) for r in recs2]
    assert len(recs2) == 10 and len(set(keys)) == 10      # resumed: nothing measured twice
    kernel = lutc.compile((1, 256, 512), wbits=2, group_size=64, cache=None)
    assert (kernel.schedule, kernel.knobs) == (res2.best.schedule, res2.best.knob_dict)


def test_lutc_tune_command(tmp_path, monkeypatch, capsys):
    from lutc.cli import main
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    report = tmp_path / "report.md"
    assert main(["tune", "--shapes", "1x128x256", "--wbits", "2", "--group-size", "64", "--trials", "3",
                 "--pool-mib", "4", "--report", str(report)]) == 0
    assert "| 1x128x256 | uniform W2 g64 |" in report.read_text()
    recs = list(log_for("cpu", describe(resolve("host"))).records())
    assert len([r for r in recs if "confirm" not in r]) == 3
    with pytest.raises(SystemExit):
        main(["tune", "--shapes", "1x128"])


def test_lutc_tune_stops_at_its_total_budget(tmp_path, monkeypatch, capsys):
    """--total-seconds: the first shape runs, a second that the first's wall time says would
    overrun the budget is not started, and is named for a later run."""
    from lutc.cli import main
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    report = tmp_path / "report.md"
    assert main(["tune", "--shapes", "1x128x256,1x256x256", "--wbits", "2", "--group-size", "64", "--trials", "2",
                 "--pool-mib", "4", "--total-seconds", "0.5", "--report", str(report)]) == 0
    rows = [line for line in report.read_text().splitlines() if line.startswith("| 1x")]
    assert rows and rows[0].startswith("| 1x128x256 |") and len(rows) == 1
    assert "1 workload(s) left untuned: 1x256x256" in capsys.readouterr().err
    workloads = {json.dumps(r["workload"]["N"]) for r in log_for("cpu", describe(resolve("host"))).records()}
    assert workloads == {"128"}


@pytest.mark.parametrize("fields", [dict(wbits=2), dict(wbits=3, zero_point=True), dict(wbits=2, format="bcq"),
                                    dict(wbits=2, format="ternary")])
def test_bench_checks_then_times_random_weights(fields):
    """The tuner's random weights are valid inputs (the kernel matches their float64 reference),
    and a wrong result is reported as an error, not a time."""
    from lutc.measure import Bench
    spec = lutc.MPGemmSpec(2, 96, 512, table_dtype="int8", **fields)
    bench = Bench(spec, pool_mib=4, calls=3, device_type="cpu")
    kernel = lutc.build(spec, cache=None, tuned=False)
    us, err = bench.measure(kernel)
    assert err is None and us > 0
    us_cut, err = bench.measure(kernel, cutoff_us=0.0)    # slower than the cutoff: warm-up time only
    assert err is None and us_cut > 0
    bench.ref = bench.ref * 1.5
    us, err = bench.measure(kernel)
    assert us is None and err.startswith("wrong result")


def test_builds_from_many_threads_at_once():
    """The tuner builds a batch in threads: writing TensorIR parses TVMScript, which CPython 3.11
    cannot do from two threads at once (lutc.build serializes it; lowering stays parallel)."""
    import concurrent.futures
    tgt = resolve("host")
    space = [c for c in candidates(SPEC, tgt, "cpu") if c.schedule == "x86"][:8]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        kernels = list(pool.map(lambda c: lutc.build(SPEC, tgt, schedule=c.schedule, knobs=c.knob_dict,
                                                     cache=None), space))
    assert [(k.schedule, k.knobs) for k in kernels] == [(c.schedule, c.knob_dict) for c in space]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU refusal")
def test_tuning_cuda_without_a_gpu_is_refused_and_logs_nothing(tmp_path):
    log = TuningLog(str(tmp_path / "cuda.jsonl"))
    with pytest.raises(ValueError, match="without a visible GPU"):
        tune([(1, 256, 512)], target="cuda", wbits=2, act_dtype="float16", trials=2, log=log, progress=False)
    assert not os.path.exists(log.path)


def test_lutc_tune_takes_a_models_linear_layers(tmp_path, monkeypatch):
    from lutc.autotune import linear_shapes
    from lutc.cli import main
    (tmp_path / "tiny_model.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def build():
            return nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 256), nn.Linear(256, 128))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    import tiny_model
    assert linear_shapes(tiny_model.build(), [1, 4]) == [(1, 128, 256), (4, 128, 256), (1, 256, 128), (4, 256, 128)]
    assert main(["tune", "--model", "tiny_model:build", "--wbits", "2", "--group-size", "64", "--trials", "2",
                 "--pool-mib", "4"]) == 0
    recs = [r for r in log_for("cpu", describe(resolve("host"))).records() if "confirm" not in r]
    assert sorted({(r["workload"]["N"], r["workload"]["K"]) for r in recs}) == [(128, 256), (256, 128)]


def test_a_record_that_predates_a_knob_builds_the_kernel_it_measured():
    """``ADDED_KNOBS``: a dot_mac record written before ``rows``, ``prefetch``, ``chains``,
    ``in_place`` and ``splits`` existed measured one row of x per pass, no prefetch, one accumulator
    chain, codes shifted down and K in one slice; it pins every knob and builds that kernel, not
    the defaults of today. A record that leaves knobs to the defaults (``{}``) stays as it is."""
    module = schedules.dot_mac
    assert contract.pins_every_knob(module, {"row_tiles": 2})
    assert contract.recorded_knobs(module, {"row_tiles": 2}) == {"row_tiles": 2, "rows": 1, "prefetch": 0, "chains": 1,
                                                                 "in_place": 0, "splits": 1}
    assert contract.recorded_knobs(module, {"row_tiles": 1, "rows": 4}) == {"row_tiles": 1, "rows": 4, "prefetch": 0,
                                                                           "chains": 1, "in_place": 0, "splits": 1}
    assert not contract.pins_every_knob(module, {}) and contract.recorded_knobs(module, {}) == {}
    assert not contract.pins_every_knob(schedules.x86, {"unroll": 4})   # no added knobs: all must be there


def test_the_models_history_features_a_record_that_predates_a_knob_as_its_kernel():
    """A logged ``{"row_tiles": 2}`` of dot_mac (before ``rows`` and ``prefetch``) is the kernel
    ``row_tiles=2, rows=1, prefetch=0`` of today's space, and the model's history says so."""
    spec, other = lutc.MPGemmSpec(1, 64, 256, table_dtype="int8"), lutc.MPGemmSpec(1, 128, 256, table_dtype="int8")
    rec = {"workload": other.key(), "target": {"kind": "llvm"}, "device": "cpu", "schedule": "dot_mac",
           "knobs": {"row_tiles": 2}, "us": 5.0, "error": None}
    names, knob_names = ["dot_mac"], ["prefetch", "row_tiles", "rows"]
    X, us = log_history([rec], spec.key(), {"kind": "llvm"}, "cpu", names, knob_names)
    today = Candidate("dot_mac", (("prefetch", 0), ("row_tiles", 2), ("rows", 1)))
    assert us == [5.0] and X == [features(other, today, names, knob_names)]
