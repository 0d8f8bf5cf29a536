"""Tuning on a fleet (lutc.fleet): a TVM tracker and RPC servers on 127.0.0.1."""
import time

import psutil
import pytest

import lutc
from lutc.autotune import tune, tune_spec
from lutc.measure import Bench
from lutc.fleet import Fleet, local_fleet, parse_tracker
from lutc.target import describe, resolve
from lutc.tuner import TuningLog, candidates
from lutc.tuner.records import log_for

pytest.importorskip("tornado")          # TVM's tracker needs it (pyproject: the test extra)

SPEC = lutc.MPGemmSpec(1, 256, 512, wbits=2, group_size=64)


def test_two_servers_share_the_measurements_and_records_name_the_fleet(tmp_path, monkeypatch):
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    log = log_for("cpu", describe(resolve("host")))
    with local_fleet(2, key="lutc-test") as (address, _):
        fleet = Fleet(address, "lutc-test")
        res = tune_spec(SPEC, "host", trials=8, batch=4, pool_mib=8, calls=5, log=log, progress=False,
                        fleet=fleet)
    recs = list(log.records())
    assert res.trials == 8 and res.best_us > 0 and res.default_us > 0
    assert {r["device"] for r in recs} == {"rpc:lutc-test"}
    assert [r["error"] for r in recs if r["error"]] == []            # each checked against float64
    assert len(fleet.stats["measured"]) == 2 and fleet.stats["lost"] == 0   # both servers measured
    assert {r["threads"] for r in recs} == {1}     # the servers' pool (local_fleet: TVM_NUM_THREADS=1)
    # lutc.compile for this target, in a process of that thread count, finds the fleet's records:
    # it builds the confirmed winner (the count is read per lookup; the pool here is unchanged)
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    kernel = lutc.build(SPEC, "host", cache=None)
    assert kernel.tuned is not None and kernel.tuned["device"] == "rpc:lutc-test"
    assert (kernel.schedule, kernel.knobs) == (res.best.schedule, res.best.knob_dict) or not res.best.knobs


def test_a_server_that_dies_costs_only_its_candidate():
    built = [lutc.build(SPEC, "host", schedule=c.schedule, knobs=c.knob_dict, cache=None, tuned=False)
             for c in candidates(SPEC, resolve("host"), "cpu")[:4]]
    events = []
    with local_fleet(2, key="lutc-die") as (address, procs):
        fleet = Fleet(address, "lutc-die")
        fleet.open(Bench(SPEC, pool_mib=8, calls=5, device_type="cpu"), calls=5)
        server = psutil.Process(procs[2].pid)     # the second server dies before measuring (with
        for p in server.children(recursive=True) + [server]:   # the process serving its session)
            p.kill()
        fleet.measure_batch([(i, k) for i, k in enumerate(built)], lambda c, us, err: events.append((c, us, err)))
    lost = [e for e in events if e[2] and "lost with its RPC server" in e[2]]
    assert len(lost) == 1 and fleet.stats["lost"] == 1 and fleet.alive == 1
    # every candidate got a valid time, the lost one from the surviving server
    assert sorted(c for c, us, err in events if us is not None and err is None) == [0, 1, 2, 3]
    time.sleep(0.5)
    assert not _session_workers(), "local_fleet left session workers running"


def test_servers_of_one_key_must_run_one_thread_count(monkeypatch):
    import lutc.fleet as fleet_module
    made = []
    real_init = fleet_module.RemoteBench.__init__

    def init(self, *args, **kwargs):       # the second server reports another pool size
        real_init(self, *args, **kwargs)
        self.threads += len(made)
        made.append(self)

    monkeypatch.setattr(fleet_module.RemoteBench, "__init__", init)
    with local_fleet(2, key="lutc-threads") as (address, _):
        fleet = Fleet(address, "lutc-threads")
        with pytest.raises(ValueError, match=r"key 'lutc-threads' run \[1, 2\] threads"):
            fleet.open(Bench(SPEC, pool_mib=8, calls=5, device_type="cpu"), calls=5)
    assert fleet.alive == 0 and fleet.threads is None


def test_bad_fleet_requests_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_tracker("localhost")
    with pytest.raises(ValueError, match="both rpc_tracker"):
        tune([(1, 256, 512)], rpc_key="k", wbits=2, group_size=64, progress=False)
    with pytest.raises(ConnectionError, match="127.0.0.1:1"):
        tune([(1, 256, 512)], target="host", rpc_tracker="127.0.0.1:1", rpc_key="k", wbits=2, group_size=64,
             log=TuningLog(str(tmp_path / "l.jsonl")), progress=False)
    with pytest.raises(ValueError, match="GPU machine"):
        tune_spec(lutc.MPGemmSpec(1, 256, 512, wbits=2, act_dtype="float16"), "cuda:sm_80",
                  fleet=Fleet("127.0.0.1:1", "k"), progress=False)


def test_the_command_tunes_on_the_fleet(tmp_path):
    from lutc.cli import main
    path = str(tmp_path / "fleet.jsonl")
    with local_fleet(1, key="lutc-cli") as (address, _):
        rc = main(["tune", "--shapes", "1x256x512", "--group-size", "64", "--trials", "4", "--pool-mib", "8",
                   "--rpc-tracker", address, "--rpc-key", "lutc-cli", "--rpc-device", "test box", "--log", path])
    recs = list(TuningLog(path).records())
    assert rc == 0 and len(recs) >= 4 and {r["device"] for r in recs} == {"test box"}
    assert main(["tune", "--shapes", "1x256x512", "--rpc-key", "k"]) == 2        # no tracker named


def _session_workers() -> list:
    """TVM session workers (``tvm.exec.popen_worker``) still running whose parent is gone."""
    return [p for p in psutil.process_iter(["cmdline", "ppid"])
            if "tvm.exec.popen_worker" in " ".join(p.info["cmdline"] or []) and p.info["ppid"] == 1]
