"""Tuning on a fleet: candidates built here, measured on the RPC servers registered at a TVM tracker.

TVM's RPC tracker is the engine (what T-MAC tunes phones with): run a tracker, and on each
device a server under a key for that kind of device,

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190
    python -m tvm.exec.rpc_server --tracker HOST:9190 --key rk3588

then ``lutc tune --target TARGET --rpc-tracker HOST:9190 --rpc-key rk3588 ...`` (or
``lutc.tune(..., rpc_tracker="HOST:9190", rpc_key="rk3588")``). This process builds each
candidate for ``TARGET`` (cross-compiling and linking with ``<triple>-gcc`` where the triple is
not this machine's, :func:`lutc.target.c_compiler`) and a :class:`Fleet` measures them:

* one session per server registered under the key, each measuring one candidate at a time, all
  in parallel (:meth:`Fleet.measure_batch`);
* a measurement is what :class:`lutc.measure.Bench` does in-process, on the server: the kernel
  (exported as a shared library, uploaded, loaded) is checked against the float64 reference
  once, then timed call by call with ``time_evaluator`` (one call per timing, on the server's
  clock) while the weight copies rotate through ``pool_mib`` of the server's memory
  (:class:`RemoteBench`);
* a server that dies or drops its session costs only the candidate it was measuring: that
  attempt is reported as an error (and logged as one) and the candidate goes back to the queue
  for a live server, once; the dead session is not used again.

Records are keyed by ``TARGET``'s description and the device name ``rpc:KEY`` (or ``device=``),
and name the servers' thread count (their TVM pool's, asked over RPC; servers of one key must
agree), so ``lutc.compile`` / ``lutc.export`` for ``TARGET`` here find them when this process
runs that many threads (:func:`lutc.tuner.records.same_threads`: set ``LUTC_NUM_THREADS`` to
the devices' count when building for them).
"""
from __future__ import annotations

import contextlib
import gc
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from . import target as targets
from .runtime import Kernel
from .testing import rel_error

#: Attempts per candidate: a candidate whose server died is tried once more elsewhere.
ATTEMPTS = 2


def parse_tracker(address: str) -> tuple:
    """``"HOST:PORT"`` -> ``(host, port)``; ValueError naming the problem otherwise.

    Example:
        >>> parse_tracker("127.0.0.1:9190")
        ('127.0.0.1', 9190)
    """
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"RPC tracker {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


class RemoteBench:
    """:class:`lutc.measure.Bench`'s data (weights, activations, float64 reference, tolerance)
    measured on one RPC session's CPU. The weight pool is uploaded once per layout."""

    def __init__(self, bench, session, calls: int, compiler: Optional[str] = None):
        self.bench, self.session, self.calls = bench, session, calls
        self.dev = session.cpu(0)
        # the server's TVM thread pool, as it runs the kernels (TVM_NUM_THREADS, capped at its cores)
        self.threads = int(session.get_function("runtime.NumThreads")())
        self.compiler = compiler
        self._pools: dict = {}
        self._x = self._tensor(bench.x)
        self._count = 0
        self._cursor = 0           # walks the pool across measurements, as Bench's does

    def _tensor(self, t: torch.Tensor):
        import tvm
        if t.dtype == torch.bfloat16:
            raise ValueError("bfloat16 activations cannot be sent over RPC (numpy has no bfloat16): "
                             "tune with act_dtype float32 or float16 there")
        return tvm.runtime.tensor(np.ascontiguousarray(t.detach().cpu().numpy()), self.dev)

    def _pool(self, kernel: Kernel) -> list:
        if kernel.layout not in self._pools:
            tensors = kernel.pack(self.bench.qw).tensors()
            self._pools[kernel.layout] = [[self._tensor(t) for t in tensors] for _ in range(self.bench.copies(tensors))]
        return self._pools[kernel.layout]

    def _load(self, kernel: Kernel):
        from tvm.support import cc as tvm_cc
        self._count += 1
        name = f"lutc_candidate_{os.getpid()}_{id(self)}_{self._count}.so"
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, name)
            fcompile = tvm_cc.cross_compiler(self.compiler) if self.compiler else None
            kernel.executable.export_library(path, fcompile=fcompile)
            self.session.upload(path)
        return self.session.load_module(name)

    def measure(self, kernel: Kernel) -> tuple:
        """``(median us, None)`` or ``(None, error)`` for a wrong result. Connection errors
        propagate: the caller decides what a dead server costs."""
        import tvm
        module = self._load(kernel)
        pool = self._pool(kernel)
        spec = self.bench.spec
        out = tvm.runtime.tensor(np.full((spec.M, spec.N), np.nan, dtype=spec.act_dtype), self.dev)
        module["main"](self._x, *pool[0], out)
        err = rel_error(torch.from_numpy(out.numpy()), self.bench.ref)
        if not err < self.bench.tol:
            return None, f"wrong result: relative error {err:.2e} > {self.bench.tol:.0e}"
        timer = module.time_evaluator("main", self.dev, number=1, repeat=1)
        times = []
        for _ in range(max(self.calls, 3)):
            self._cursor += 1
            times.append(timer(self._x, *pool[self._cursor % len(pool)], out).mean)
        return statistics.median(times) * 1e6, None


def fleet_device(key: str, device: Optional[str] = None) -> str:
    """The device name a fleet's tuning records carry: ``device``, else ``"rpc:KEY"``.

    Example:
        >>> fleet_device("pixel8"), fleet_device("pixel8", "Pixel 8 | neon")
        ('rpc:pixel8', 'Pixel 8 | neon')
    """
    return device or f"rpc:{key}"


@dataclass
class Fleet:
    """The servers registered under ``key`` at the tracker ``address`` (``"HOST:PORT"``).

    ``sessions`` caps how many servers are used (default: all registered at the start).
    ``device`` names the hardware in the tuning records (default ``"rpc:KEY"``).
    ``stats`` counts measurements per server and lost sessions, for reports and tests.

    Example:
        >>> Fleet("127.0.0.1:9190", "pixel8")       # doctest: +SKIP
    """

    address: str
    key: str
    sessions: Optional[int] = None
    device: Optional[str] = None
    session_timeout: float = 0
    stats: dict = field(default_factory=lambda: {"measured": {}, "lost": 0})

    def __post_init__(self):
        self.host, self.port = parse_tracker(self.address)
        self.device = fleet_device(self.key, self.device)
        self._benches: list = []
        self._lock = threading.Lock()

    def servers(self) -> int:
        """Servers registered under the key now (free or busy), from the tracker's summary."""
        from tvm import rpc
        if not _reachable(self.port, self.host):      # TVM's own connect retries for a minute
            raise ConnectionError(f"cannot reach the RPC tracker at {self.address}: nothing listens there")
        try:
            summary = rpc.connect_tracker(self.host, self.port).summary()
        except Exception as e:
            raise ConnectionError(f"cannot reach the RPC tracker at {self.address}: {e}") from e
        return sum(1 for s in summary.get("server_info", []) if s.get("key") == f"server:{self.key}")

    def open(self, bench, calls: int, compiler: Optional[str] = None) -> None:
        """Open one session per server (up to ``sessions``) for ``bench``'s workload."""
        from tvm import rpc
        self.close()                    # the previous workload's sessions hold the servers
        n = self.servers()
        if self.sessions:
            n = min(n, self.sessions)
        if n == 0:
            raise ConnectionError(f"no RPC server is registered under key {self.key!r} at {self.address}")
        tracker = rpc.connect_tracker(self.host, self.port)
        self._benches = [RemoteBench(bench, tracker.request(self.key, session_timeout=self.session_timeout),
                                     calls, compiler) for _ in range(n)]
        counts = sorted({rb.threads for rb in self._benches})
        if len(counts) > 1:     # one key, one kind of device: the records name one count
            self.close()
            raise ValueError(f"the RPC servers under key {self.key!r} run {counts} threads: register "
                             "servers with the same TVM_NUM_THREADS (and device) under one key")

    @property
    def threads(self) -> Optional[int]:
        """Threads the open sessions' servers run kernels on (their records name it), or None
        before :meth:`open`."""
        return self._benches[0].threads if self._benches else None

    def close(self) -> None:
        """Drop the sessions (a server returns to the tracker when its session is freed)."""
        self._benches = []
        gc.collect()

    @property
    def alive(self) -> int:
        return len(self._benches)

    def measure_batch(self, jobs: list, on_result: Callable[[object, Optional[float], Optional[str]], None]) -> None:
        """Measure ``jobs`` (``(candidate, built kernel)``) on every live session at once;
        ``on_result(candidate, us, error)`` is called once per attempt, in completion order (an
        attempt lost with its server is an error; the candidate is tried again elsewhere)."""
        todo: queue.Queue = queue.Queue()
        for cand, kernel in jobs:
            todo.put((cand, kernel, 1))
        pending = [todo.qsize()]

        def worker(rb: RemoteBench) -> None:
            name = f"{self.key}#{self._benches.index(rb)}"
            while True:
                with self._lock:
                    if pending[0] == 0:
                        return
                try:
                    cand, kernel, attempt = todo.get(timeout=0.05)
                except queue.Empty:
                    continue
                try:
                    us, err = rb.measure(kernel)
                except ValueError as e:           # this candidate cannot be measured there
                    us, err = None, f"run failed: {e}"
                except Exception as e:            # the server or its session is gone
                    with self._lock:
                        self.stats["lost"] += 1
                        retry = attempt < ATTEMPTS and len(self._benches) > 1
                        if rb in self._benches:
                            self._benches.remove(rb)
                        if not retry:
                            pending[0] -= 1
                    on_result(cand, None, f"lost with its RPC server ({type(e).__name__}: "
                                          f"{str(e).splitlines()[0][:200] if str(e) else ''})")
                    if retry:
                        todo.put((cand, kernel, attempt + 1))
                    return
                with self._lock:
                    self.stats["measured"][name] = self.stats["measured"].get(name, 0) + 1
                    pending[0] -= 1
                on_result(cand, us, err)

        threads = [threading.Thread(target=worker, args=(rb,), daemon=True) for rb in list(self._benches)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        while not todo.empty():                   # every server died: what is left is lost
            cand, _, _ = todo.get()
            on_result(cand, None, "lost: no RPC server left")
        if not self._benches:
            raise ConnectionError(f"every RPC server under key {self.key!r} was lost")

    def measure(self, kernel: Kernel) -> tuple:
        """One kernel on the first live session: ``(us, None)`` or ``(None, error)``."""
        results = []
        self.measure_batch([(None, kernel)], lambda c, us, err: results.append((us, err)))
        return next(((us, err) for us, err in results if us is not None), results[-1])

    def compare(self, kernels: list, rounds: int = 7) -> list:
        """Median time of each kernel over ``rounds`` rounds in turn on one server (NaN where
        one fails), as :meth:`lutc.measure.Bench.compare` does here."""
        times = [[] for _ in kernels]
        for _ in range(rounds):
            for t, k in zip(times, kernels):
                us, _ = self.measure(k)
                t.append(us if us is not None else float("nan"))
        return [statistics.median(t) for t in times]


def compiler_for(tgt) -> Optional[str]:
    """The C compiler that links a kernel for ``tgt`` into a shared library (None: TVM's
    default, this machine's); ValueError when a cross target has none installed."""
    if targets.kind(tgt) != "cpu-cross":
        return None
    cc = targets.c_compiler(tgt)
    if cc is None:
        raise ValueError(f"no C compiler for {tgt.attrs.get('mtriple')} (install "
                         f"{tgt.attrs.get('mtriple')}-gcc) to link kernels for the RPC servers")
    return cc


@contextlib.contextmanager
def local_fleet(servers: int = 2, key: str = "local", threads: int = 1, port: int = 9190):
    """A tracker and ``servers`` RPC servers on 127.0.0.1, as subprocesses (for trying the fleet
    on one machine, the tests and ``benchmarks/bench_fleet.py``); yields ``(address, procs)``
    with ``procs[0]`` the tracker, and stops them all on exit. ``threads``: TVM_NUM_THREADS of
    each server. Needs ``tornado`` (TVM's tracker).

    Example:
        >>> with local_fleet(2, key="demo") as (address, _):      # doctest: +SKIP
        ...     lutc.tune([(1, 4096, 4096)], rpc_tracker=address, rpc_key="demo")
    """
    env = dict(os.environ, TVM_NUM_THREADS=str(threads))
    port = _free_port(port)
    address = f"127.0.0.1:{port}"
    # each in its own process group: a server forks a worker per session, which must go with it
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(port), "--port-end", str(port + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)]
    try:
        _wait(lambda: _reachable(port), procs[0], "the RPC tracker")
        for i in range(servers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", address, "--key", key,
                 "--host", "127.0.0.1", "--port", str(_free_port(port + 10 + 10 * i)), "--port-end",
                 str(port + 2000)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                start_new_session=True))
        fleet = Fleet(address, key)
        _wait(lambda: fleet.servers() >= servers, procs[0], f"{servers} RPC servers to register")
        yield address, procs
    finally:
        for p in procs[::-1]:
            _kill_group(p)


def _kill_group(proc) -> None:
    """Kill ``proc`` and every process of its group (a server's session workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _free_port(start: int) -> int:
    for port in range(start, start + 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise OSError(f"no free port from {start}")


def _reachable(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


def _wait(ready: Callable[[], bool], proc, what: str, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
            raise RuntimeError(f"could not start {what}: {err}")
        try:
            if ready():
                return
        except (ConnectionError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"waited {seconds:.0f} s for {what}")
