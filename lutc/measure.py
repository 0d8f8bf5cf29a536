"""How lutc times a kernel: on shared random data, checked against the float64 reference first,
with the weights rotating through more memory than the caches hold (:class:`Bench`); on CUDA the
kernel time inside a CUDA graph (:func:`graph_time_us`; several graphs side by side in turns,
:func:`interleaved_graph_us`). The tuner measures candidates this way, ``lutc.fleet`` the same on
RPC servers, and the benchmarks time kernels with it; :func:`read_bandwidth_gbs` is the CPU's
streaming read rate they compare decode kernels with.

Example:
    >>> import lutc
    >>> spec = lutc.MPGemmSpec(1, 64, 256, wbits=2, group_size=64)
    >>> us, error = Bench(spec, pool_mib=1, calls=3, device_type="cpu").measure(lutc.build(spec))
    >>> us > 0 and error is None
    True
"""
from __future__ import annotations

import functools
import statistics
import time
from typing import TYPE_CHECKING, Callable

import torch

from .dtypes import TORCH_DTYPES
from .memory import in_huge_pages
from .spec import MPGemmSpec
from .testing import random_weights, rel_error, rotation_copies, tolerance

if TYPE_CHECKING:   # the kernels measured; this module imports nothing that builds them
    from .runtime import Kernel


#: Least time spent timing one CPU kernel (seconds).
MIN_SECONDS = 0.05
#: A CPU candidate whose warm-up calls take more than this many times the best time so far is
#: not timed further (see ``Bench.measure``).
CUTOFF = 4.0


class Bench:
    """Times kernels of one workload on shared data: random weights (:func:`reference_weights`) and
    activations, the float64 reference, and a pool of weight copies per layout. Public: the
    tuner's measurements and ``benchmarks/check_tuned.py`` time kernels the same way.

    Each kernel is first checked against the float64 reference (a wrong result is an error
    record), then timed as a decode step runs it: every call reads a weight copy that was last
    read a whole pool ago (a cursor walks the pool across measurements, so repeated
    measurements never find the weights in cache). On CPUs a time is the median of per-call
    wall times; on CUDA it is the kernel time: a CUDA graph of ``calls`` launches over
    successive copies, replayed, per launch (no host launch gaps; see :func:`graph_time_us`).
    """

    def __init__(self, spec: MPGemmSpec, pool_mib: int, calls: int, device_type: str):
        self.spec, self.calls, self.device_type = spec, calls, device_type
        self.pool_bytes = pool_mib << 20
        self.qw, w64 = reference_weights(spec.N, spec.K, spec.wbits, spec.format, spec.group_size,
                                spec.zero_point, spec.scale_dtype)
        x = torch.randn(spec.M, spec.K, generator=torch.Generator().manual_seed(1))
        x = x.to(TORCH_DTYPES[spec.act_dtype])
        self.ref = x.double() @ w64.T
        self.x = x.to(device_type)
        self.tol = tolerance(spec)      # what the tests accept: a looser tuner could pick a kernel they reject
        self._pools = {}
        self._cursor = 0

    def _pool(self, kernel: Kernel) -> list:
        if kernel.layout not in self._pools:
            packed = kernel.pack(self.qw)
            tensors = packed.tensors()
            self._pools[kernel.layout] = [[t.clone() for t in tensors] for _ in range(self.copies(tensors))]
        return self._pools[kernel.layout]

    def copies(self, tensors: list) -> int:
        """Copies of a weight (its ``tensors``) that fill the pool: at least 2."""
        return rotation_copies(sum(t.numel() * t.element_size() for t in tensors), self.pool_bytes)

    def _next(self, pool: list) -> list:
        self._cursor += 1
        return pool[self._cursor % len(pool)]

    def measure(self, kernel: Kernel, cutoff_us: float = float("inf")):
        """(median us, None) or (None, error message).

        On CPUs a kernel whose warm-up calls already take more than ``cutoff_us`` each gets
        the warm-up median as its time, with no further calls (the tuner passes a multiple of
        the best time so far: such a kernel cannot win, and a generic float-table kernel at
        M = 16 costs tens of ms per call)."""
        try:
            out = torch.full((self.spec.M, self.spec.N), float("nan"), dtype=self.x.dtype, device=self.x.device)
            pool = self._pool(kernel)
            fn, x = kernel.function, self.x
            fn(x, *pool[0], out)
            sync(self.device_type)
            err = rel_error(out.cpu(), self.ref)
            if not err < self.tol:
                return None, f"wrong result: relative error {err:.2e} > {self.tol:.0e}"
            if self.device_type == "cuda":
                return graph_time_us(lambda: fn(x, *self._next(pool), out), self.calls), None
            warm = []
            for _ in range(3):
                w = self._next(pool)
                t0 = time.perf_counter()
                fn(x, *w, out)
                warm.append(time.perf_counter() - t0)
            if statistics.median(warm) * 1e6 > cutoff_us:
                return statistics.median(warm) * 1e6, None
            times = []
            # at least `calls` calls and MIN_SECONDS: a median over a few ms would follow the
            # momentary load of a shared host
            while len(times) < self.calls or (sum(times) < MIN_SECONDS and len(times) < 100 * self.calls):
                w = self._next(pool)
                t0 = time.perf_counter()
                fn(x, *w, out)
                times.append(time.perf_counter() - t0)
            return statistics.median(times) * 1e6, None
        except Exception as e:
            return None, f"run failed: {str(e).splitlines()[-1][:300] if str(e) else type(e).__name__}"

    def compare(self, kernels: list, rounds: int = 7) -> list:
        """Median time of each kernel over ``rounds`` rounds, each round timing every kernel
        once in turn (NaN for one that fails)."""
        times = [[] for _ in kernels]
        for _ in range(rounds):
            for t, k in zip(times, kernels):
                t.append(self.measure(k)[0] or float("nan"))
        return [statistics.median(t) for t in times]


@functools.lru_cache(maxsize=1)
def reference_weights(N: int, K: int, wbits: int, format: str, group_size: int, zero_point: bool,
             scale_dtype: str) -> tuple:
    """Random packed weights of these fields and their float64 dequantization. The explicit
    cache (one entry) serves the next workload too when only M differs (``tune`` runs shapes
    in order): the dequantization of a 28672x8192 weight takes seconds."""
    qw = random_weights(MPGemmSpec.of_weight(N, K, dict(wbits=wbits, format=format, group_size=group_size,
                                                        zero_point=zero_point, scale_dtype=scale_dtype)), seed=1)
    return qw, qw.dequantize()


def graph_time_us(launch: Callable[[], None], calls: int = 30, replays: int = 5) -> float:
    """Kernel time of a CUDA launch, in microseconds: ``calls`` calls of ``launch()`` captured in
    one CUDA graph on a side stream, the graph replayed ``replays`` times (timed with CUDA
    events), median per call. ``launch`` may differ per call (e.g. rotate weight copies): each
    captured call keeps the arguments it had at capture."""
    graph = capture_graph(launch, calls)
    return statistics.median(replay_us(graph, calls) for _ in range(replays))


def capture_graph(launch: Callable[[], None], calls: int) -> "torch.cuda.CUDAGraph":
    """``calls`` calls of ``launch()`` (after two warm-up calls) in one CUDA graph, replayed once."""
    for _ in range(2):
        launch()
    torch.cuda.synchronize()
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        for _ in range(calls):
            launch()
    graph.replay()
    torch.cuda.synchronize()
    return graph


def replay_us(graph: "torch.cuda.CUDAGraph", calls: int) -> float:
    """One timed replay of a graph of ``calls`` calls: microseconds per call."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / calls


def interleaved_graph_us(launches: dict, calls=40, rounds: int = 9) -> dict:
    """:func:`graph_time_us` of several launches (name -> callable) timed in turns: each round
    replays every graph once, starting one further along, and each gets the median of its rounds.
    ``calls``: calls per graph, one count or one per name.
    Timed one after another, a GPU's clock falls as it heats (H200, the same kernel twice in a
    row: 100.8 then 109.5 us at 8192 x 28672, M = 128), which favours whatever runs first.

    Example (GPU)::

        us = interleaved_graph_us({"a": lambda: f(x), "b": lambda: g(x)})
    """
    counts = calls if isinstance(calls, dict) else dict.fromkeys(launches, calls)
    graphs = {name: capture_graph(launch, counts[name]) for name, launch in launches.items()}
    names, times = list(graphs), {name: [] for name in graphs}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(replay_us(graphs[name], counts[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def sync(device_type: str) -> None:
    """Wait for the device's queued work (CUDA; CPU calls return when done)."""
    if device_type == "cuda":
        torch.cuda.synchronize()


def read_bandwidth_gbs(nbytes: int = 1 << 30, threads: int = 1, passes: int = 5,
                       huge_pages: bool = False) -> float:
    """Streaming read rate of this CPU in GB/s: the best of ``passes`` passes of a TVM-compiled
    kernel that XOR-reduces ``nbytes`` of memory in ``threads`` contiguous parts on TVM's thread
    pool (64-byte vector loads into 4 accumulators), what a weight-reading kernel can reach.
    ``huge_pages``: the memory in 2 MiB pages, as lutc holds weights (:mod:`lutc.memory`; on the
    EPYC 38.8 against 38.0 GB/s with 1 thread, 50.4 against 48.6 with 2).

    Why not torch: an fp32 GEMV over 1 GiB read 24 GB/s on the 2-core EPYC where lutc's own
    W2 kernel read its weights at 43.5 GB/s with 2 threads; this probe reads 37-39 GB/s there
    with one thread. Compare kernels to it within one process (``TVM_NUM_THREADS`` >= ``threads``).

    Example:
        >>> read_bandwidth_gbs(1 << 22, threads=1, passes=2) > 0
        True
    """
    import numpy as np
    import tvm
    from tvm.script import tirx as T

    from .target import resolve
    lanes, unroll = 16, 4
    chunk = nbytes // 4 // threads // (lanes * unroll) * (lanes * unroll)   # int32 per part
    n = chunk * threads

    @T.prim_func(s_tir=True)
    def read(a: T.Buffer((n,), "int32"), out: T.Buffer((threads, unroll, lanes), "int32")):
        for p in T.parallel(threads):
            acc = T.alloc_buffer((unroll, lanes), "int32", scope="local")
            for u in T.unroll(unroll):
                for j in T.vectorized(lanes):
                    acc[u, j] = 0
            for i in range(chunk // (lanes * unroll)):
                for u in T.unroll(unroll):
                    for j in T.vectorized(lanes):
                        acc[u, j] = acc[u, j] ^ a[p * chunk + (i * unroll + u) * lanes + j]
            for u in T.unroll(unroll):
                for j in T.vectorized(lanes):
                    out[p, u, j] = acc[u, j]

    fn = tvm.compile(read, target=resolve(None))
    data = np.random.default_rng(0).integers(0, 1 << 30, n, dtype=np.int32)
    a = in_huge_pages(torch.from_numpy(data)) if huge_pages else tvm.runtime.tensor(data)
    out = tvm.runtime.tensor(np.zeros((threads, unroll, lanes), np.int32))
    fn(a, out)
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        fn(a, out)
        best = min(best, time.perf_counter() - t0)
    return n * 4 / best / 1e9
