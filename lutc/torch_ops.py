r"""The PyTorch op ``torch.ops.lutc.mpgemm`` and the kernel cache behind it.

``torch.ops.lutc.mpgemm(x, planes, scales, zeros, wbits, group_size, format="uniform", g=4,
symmetrize=True, table_dtype=None, layout="bitplane", N=-1, perm=None)`` computes ``y[M, N] = x[M, K] @
W[N, K]^T`` for the weight packed in ``planes``/``scales``/``zeros`` (the tensors of a
:class:`lutc.PackedWeights`) in ``layout`` (:mod:`lutc.layouts`; ``N`` is needed for every layout
but ``bitplane``, whose tiles pad the rows). For each ``M`` it runs the kernel
:func:`lutc.compile` would pick for that ``M``, target and tuning log *among the kernels that
read ``layout``* (tuned records apply), so weights packed in a kernel's layout
(``LUTLinear`` keeps them so; ``lutc.repack(qw, layout)`` makes them) reach lutc's fast
kernels (``perm``: the column order of an act-order weight, applied to ``x``'s features). No
kernel is swapped silently: a layout no kernel of this device reads for the spec
raises, naming the layout. ``table_dtype=None`` is the device's default
(:func:`lutc.build.spec_for`, as ``lutc.compile`` resolves it: int8 on SIMD CPUs, float32 on
CUDA).

It is a ``torch.library.custom_op``, so it runs in eager mode, traces as one node under
``torch.compile(fullgraph=True)`` (its ``register_fake`` gives the output shape and dtype,
``[M, N]`` in ``x``'s dtype, and checks the arguments at trace time) and inside CUDA graph
capture. It takes tensors and plain values only (custom ops cannot take Python objects): the
weight format travels as ints and strings, and ``scale_dtype``/``zero_point``/``K`` are read from
the tensors themselves.

    >>> import torch, lutc, lutc.torch_ops
    >>> qw = lutc.quantize(torch.randn(64, 256), wbits=2, group_size=64)
    >>> x = torch.randn(3, 256)
    >>> y = torch.ops.lutc.mpgemm(x, qw.planes, qw.scales, qw.zeros, 2, 64)        # bitplane
    >>> t = lutc.repack(qw, "tiles128")
    >>> y2 = torch.ops.lutc.mpgemm(x, t.planes, t.scales, t.zeros, 2, 64, layout="tiles128", N=64)
    >>> y.shape, y2.shape
    (torch.Size([3, 64]), torch.Size([3, 64]))

Arguments are checked against the layout (:meth:`lutc.layouts.Layout.shapes`) with the
runtime's checks (:func:`lutc.runtime.check_tensor`); a wrong dtype, device, shape, contiguity,
bit width or layout raises an error that names the argument and says what was expected. Unlike
:class:`~lutc.runtime.Kernel`, the op refuses non-contiguous inputs instead of copying them: a
copy should be visible in the caller's code (and graph), not hidden in the op. Inputs that are
contiguous but not 64-byte aligned (row slices) are still copied safely, and a chunk of ``y``
that would start misaligned is written through a copy.

**M buckets.** A compiled kernel has a static ``M``; the op's ``M`` is known only at run time.
:class:`OpKernels` maps ``M`` to a *bucket*: the next of ``1, 2, 4, ..., 64, 96, 128, 192, 256``
(:data:`DEFAULT_BUCKETS`); the rows are zero-padded to the bucket and the padding rows of ``y`` dropped, and an
``M`` above the largest bucket runs in chunks of it. The largest bucket of a layout is the
largest whose kernels read it (``cuda_lut``, the only CUDA kernel reading ``warp32``, builds
``M <= 8``: such weights run larger ``M`` in chunks of 8). Why not a kernel per exact ``M``: a
model sees many ``M`` (every prompt length), each compile costs ~0.1 s and a kernel, and at
small ``M`` a LUT GEMM's time is reading the weights (the same for 3 rows or 4) plus building
one table per row (cheap), so padding at most doubles the cheap part; at large ``M`` the
chunks keep the table workspace (``8 M K`` bytes for ``g=4``) and the number of kernels bounded
(11 per layer shape). Past 64 rows the tensor-core kernels' time grows with the rows, so the
buckets step by 1.5x there: on the H200, 28672 x 8192 W2, ``LUTLinear`` takes 89.0 us for 96 rows
with their own bucket (``benchmarks/results/front_doors_h200_buckets.md``) where padded to 128 it
took 110.2 (``front_doors_h200_batch_tile.md``); a batch of 192 rows' kernel took 150.5 us where
256 rows' took 191.5 (``cuda_m192_bm256_h200.log``, ``cuda_m192_h200.log``).
``OpKernels(buckets="exact")`` compiles one kernel per ``M`` instead (decode-only serving with a
few fixed batch sizes).

**Layout plans.** :meth:`OpKernels.layout_plan` says in which layout(s) a weight should be held
on a device so that every bucket runs its fastest kernel: the layout of the ``M = 1`` (decode)
kernel, and on CUDA a second copy where the batch kernels read another (``cuda_lut``'s
``warp32`` for decode at W1, ``tc16`` (``cuda_stream`` to M = 8, ``cuda_wgmma`` on Hopper and
``cuda_mma`` beyond) from the first bucket it is chosen for): see
:class:`LayoutPlan`. ``LUTLinear`` holds its weights by that plan.

CUDA graphs: the op allocates its output (and any padding) with torch on ``x``'s device, never
synchronizes, and TVM launches on torch's current stream (tvm-ffi reads it from the tensors).
Kernels are compiled on first use, so run the model once before capturing (as for any lazily
initialized CUDA code).

No gradient: the op is for inference (``torch.no_grad()``/``inference_mode()``). Called in grad
mode on an input that wants a gradient it still computes the product, and a backward through it
raises, naming the op.

Eager cost: the op is defined with ``torch.library.Library`` and its own Autograd kernel, which
sends plain CPU/CUDA tensors straight to the kernel cache, not with ``torch.library.custom_op``,
whose Python autograd wrapper and aliasing check run on every call outside
``torch.inference_mode()`` (an empty op: 24 us per call as a ``custom_op``, 6.6 us so, on a
2-core x86). Under ``torch.no_grad()``, the op's body registered both ways in one run: on the
H200 machine an eager 4096 x 4096 call took 26.8-31.1 us against 39.4-43.5
(``benchmarks/results/front_doors_cuda_op_dispatch.md``), on its 16-core host CPU at 2 threads
a decode 19-31 us less (4096 x 4096 W2: 204 against 223 us,
``front_doors_cpu_op_dispatch_host.md``). What is left over ``LUTLinear``'s own path (about
16 us per call on the 2-core x86) is the dispatcher and the argument checks (:func:`check_args`,
4.4 us there; 0.60x the time of the checks before they compared each tensor's shape and dtype
once, timed in turns in one process).
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

import schedules

from . import layouts
from .build import build, choose, spec_for
from .dtypes import TORCH_DTYPES
from .formats import LAYOUT, PackedWeights
from .runtime import ALIGN, Kernel, check_contiguous, check_tensor
from .spec import ACT_DTYPES, SCALE_DTYPES, MPGemmSpec

#: Row counts lutc compiles kernels for by default (see the module docstring): powers of two, and
#: from 64 on steps of 1.5x (96, 192), where a kernel's time grows with the rows (the tensor
#: cores' on GPUs, the dot products' of ``dot_mac`` on CPUs).
DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256)
_ACT_DTYPES = {TORCH_DTYPES[n]: n for n in ACT_DTYPES}   # torch dtype -> name, activations only
_SCALE_DTYPES = {TORCH_DTYPES[n]: n for n in SCALE_DTYPES}
_LOG = logging.getLogger("lutc")


@functools.lru_cache(maxsize=None)
def _warn_busy_openmp_once() -> None:
    """At the first CPU kernel build of the process (lutc's docstring says why)."""
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        _LOG.warning("lutc: torch's OpenMP threads busy-wait between ops on the cores lutc's kernels "
                     "need (a whole model ran 7x slower); export OMP_WAIT_POLICY=PASSIVE before torch "
                     "is imported (lutc docstring)")


#: How much faster (by the tuning log's times at M = 1) a CPU's decode kernel must be than the
#: best kernel reading the batch kernel's layout for a weight to be held in both layouts: a
#: second copy doubles the memory held, so a gain within the tuner's noise (1-5%) does not buy it.
SECOND_COPY_GAIN = 1.1


def second_copy_pays(decode, other, wbits: int = 1) -> bool:
    """Whether a CPU weight is worth a decode copy beside its batch copy. ``decode`` is the M = 1
    :class:`lutc.build.Choice`, ``other`` the M = 1 choice among kernels reading the batch layout.
    With tuning records of one workload timed on one device for both, ``decode`` must have taken
    at most ``1 / SECOND_COPY_GAIN`` of ``other``'s time; with neither (both the untuned defaults)
    the schedules' own measurements, which made the M = 1 default read another layout, decide
    for one bit per weight (W1 in quads on VBMI + VNNI CPUs, 1.02-1.30x: ``schedules.x86.preferred``),
    not for ``wbits`` more (Zen 4's W2 LUT kernel, 0.95-1.31x, does not pay for doubling the
    memory held: ``schedules.x86.half_rate_lut``); a record on one side only leaves one copy.

    Example:
        >>> from types import SimpleNamespace as C
        >>> run = lambda us: C(record={"workload": {"M": 1}, "device": "cpu0", "us": us})
        >>> second_copy_pays(run(104.4), run(132.0)), second_copy_pays(run(167.6), run(171.8))
        (True, False)
        >>> second_copy_pays(C(record=None), C(record=None)), second_copy_pays(C(record=None), run(50.0))
        (True, False)
        >>> second_copy_pays(C(record=None), C(record=None), wbits=2)
        False
    """
    mine, theirs = decode.record, other.record if other is not None else None
    if mine is None and theirs is None:
        return other is not None and wbits == 1
    if not (mine and theirs and mine.get("us") and theirs.get("us")):
        return False
    same = all(mine.get(k) == theirs.get(k) for k in ("workload", "device"))
    return same and theirs["us"] >= SECOND_COPY_GAIN * mine["us"]


@dataclass(frozen=True)
class LayoutPlan:
    """How a weight is held on one device: ``layouts[0]`` serves ``M <= split`` (every ``M`` when
    ``split`` is None), ``layouts[1]`` (if any) the larger ``M``.

    A second copy is planned on CUDA where the decode kernel (``cuda_lut``, ``warp32``) and
    the batch kernels (``cuda_stream``, ``cuda_wgmma``, ``cuda_mma``: ``tc16``) read different layouts: fp16 W1,
    where on an H200 at 28672x8192 the LUT kernel takes 23.5 us at M = 1 and ``cuda_stream``
    29.3 (it reads a 2-bit slot), and the LUT kernel builds one table per row of x (W2 M = 4:
    127.3 us against 39.9). At W2 and ternary ``cuda_stream`` is also the M = 1 kernel since
    its late scale (W2 29.9 against 30.0 us, ternary 30.0 against 32.4), at W4 (43.6 against 54.6)
    and at W3 (41.0 against 44.5): one ``tc16`` copy. The copy costs W1 2 more bits per weight
    (its ``tc16`` slot). CPUs hold one copy, and where the
    decode and batch kernels read different layouts it is the batch kernel's: on the EPYC a
    tuned LUT kernel beat ``dot_mac`` at M = 1 by 1.08x (4096 x 4096 W2, 123.8 against 133.6 us,
    ``benchmarks/results/tuning_cpu_epyc_llama3_8b.md``), where at M = 16 the LUT kernel takes
    1.9x ``dot_mac``'s time (797 against 414 us, ``front_doors_cpu_batches.md``). Every bucket
    then runs the fastest kernel that reads the held layout. The exceptions
    (:func:`second_copy_pays`): where the tuning log timed the decode kernel at least
    :data:`SECOND_COPY_GAIN` times faster than the best kernel reading the batch layout, or where
    the untuned defaults differ (W1 looked up in quads on VBMI + VNNI CPUs, 1.02-1.30x
    ``dot_mac``), a CPU holds the decode copy too (on the Emerald Rapids VM W1's tuned LUT kernel,
    1.25-1.27x ``dot_mac`` at 4096 x 4096 and 14336 x 4096: 1.125 more bits per weight held, none
    more read per token).
    """

    layouts: tuple
    split: Optional[int]
    table_dtype: str

    def layout_for(self, M: int) -> int:
        """Index into :attr:`layouts` of the copy that serves ``M`` rows."""
        return 0 if self.split is None or M <= self.split else 1


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``rows`` (a bucket's kernel reads them: zero rows give
    all-zero tables and outputs, which the op drops).

    Example:
        >>> pad_rows(torch.ones(3, 2), 4).tolist()
        [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    """
    return F.pad(x, (0, 0, 0, rows - x.shape[0]))


class OpKernels:
    """Compiled kernels keyed by (spec, M bucket, device type -> target, layout), with the op's
    bucketing.

    Args:
        buckets: sorted row counts to compile kernels for (default :data:`DEFAULT_BUCKETS`);
            an ``M`` is padded up to the next bucket, and an ``M`` above the last bucket runs in
            chunks of that size. ``"exact"``: one kernel per distinct ``M``, no padding.
        targets: device type -> lutc target, e.g. ``{"cpu": "x86", "cuda": "cuda:sm_80"}``;
            default: this CPU, and the visible GPU's architecture.
        schedule, knobs: passed to :func:`lutc.build` (default: the fastest kernel that reads
            the weights' layout).

    The op uses the process-wide :func:`kernel_cache`. Example:

        >>> cache = OpKernels()
        >>> [cache.bucket(m) for m in (1, 3, 16, 17, 300)]
        [1, 4, 16, 32, 256]
        >>> cache.plan(300)          # (first row, rows, bucket) per kernel call
        [(0, 256, 256), (256, 44, 64)]
        >>> cache.plan(20, limit=8)  # a layout whose kernels build at most 8 rows
        [(0, 8, 8), (8, 8, 8), (16, 4, 4)]
    """

    def __init__(self, buckets: Union[Sequence[int], str] = DEFAULT_BUCKETS,
                 targets: Optional[dict] = None, schedule=None, knobs: Optional[dict] = None):
        if buckets == "exact":
            self.buckets = None
        else:
            self.buckets = tuple(sorted(int(b) for b in buckets))
            if not self.buckets or self.buckets[0] < 1:
                raise ValueError(f"buckets must be positive row counts, got {buckets!r}")
        self.targets = dict(targets or {})
        self.schedule = schedule
        self.knobs = dict(knobs or {})
        self._kernels: dict = {}
        self._limits: dict = {}
        self._plans: dict = {}
        self._whole: dict = {}    # (spec, M, device, layout) -> kernel, for M that needs no padding
        self._lock = threading.RLock()

    # --- buckets ---
    def bucket(self, M: int, limit: Optional[int] = None) -> int:
        """The kernel ``M`` that ``M`` rows run with (``M`` up to the largest bucket or ``limit``)."""
        if self.buckets is None:
            return M
        for b in self.buckets:
            if b >= M and (limit is None or b <= limit):
                return b
        return self.buckets[-1] if limit is None else max(b for b in self.buckets if b <= limit)

    def plan(self, M: int, limit: Optional[int] = None) -> list:
        """``(first row, rows, bucket)`` for each kernel call that ``M`` rows take, when the
        kernels build at most ``limit`` rows (None: the largest bucket)."""
        top = self.buckets[-1] if self.buckets is not None else M
        if limit is not None:
            top = min(top, limit) if self.buckets is None else self.bucket(limit, limit)
        calls, start = [], 0
        while start < M:
            rows = min(top, M - start)
            calls.append((start, rows, self.bucket(rows, limit)))
            start += rows
        return calls

    def _ladder(self) -> tuple:
        return self.buckets if self.buckets is not None else DEFAULT_BUCKETS

    # --- targets and layouts ---
    def target(self, dev: str):
        """The lutc target kernels for device type ``dev`` are built for."""
        if dev in self.targets:
            return self.targets[dev]
        if dev == "cpu":
            return None
        if dev == "cuda":
            return "cuda"
        raise ValueError(f"lutc kernels run on cpu or cuda, not {dev}")

    def rows_limit(self, spec: MPGemmSpec, dev: str, layout: str) -> int:
        """The largest bucket whose kernels read ``layout`` for ``spec`` on ``dev``; larger ``M``
        runs in chunks of it. ``ValueError`` if no kernel reads ``layout`` at all."""
        key = (spec, dev, layout)
        limit = self._limits.get(key)
        if limit is None:
            tgt = self.target(dev)
            limit = next((b for b in reversed(self._ladder())
                          if self._choice(spec.with_(M=b), tgt, layout) is not None), None)
            if limit is None:
                raise ValueError(
                    f"no lutc kernel for {dev} reads weights in layout {layout!r} for {_describe(spec)}: "
                    f"repack the weight (lutc.repack(qw, layout)) into the layout of this device's "
                    f"kernels (LUTLinear does so on .to(device))")
            self._limits[key] = limit
        return limit

    def _choice(self, spec: MPGemmSpec, tgt, layout: Optional[str]):
        try:
            return choose(spec, tgt, self.schedule, self.knobs or None, layout=layout)
        except ValueError:      # a named schedule that cannot build this M or reads another layout
            return None

    def layout_plan(self, spec: MPGemmSpec, device: Union[str, torch.device], single: bool = False) -> LayoutPlan:
        """The layout(s) to hold a weight of ``spec`` in on ``device`` (:class:`LayoutPlan`).

        ``spec.table_dtype`` and ``act_dtype`` are taken as given (the op resolves a None table
        dtype with :func:`lutc.build.default_table_dtype`). ``single``: one copy wherever a second
        would be planned (on CUDA the decode kernel's layout, on a CPU the batch kernel's).

        Example:
            >>> spec = MPGemmSpec(1, 4096, 4096, wbits=2, table_dtype="int8")
            >>> kernel_cache().layout_plan(spec, "cpu").layouts[0] in ("dot16", "ptiles64", "ptiles32", "tiles64", "tiles128", "gtiles32")
            True
        """
        dev = torch.device(device).type
        key = (spec.with_(M=1), dev, bool(single))
        plan = self._plans.get(key)
        if plan is None:
            tgt = self.target(dev)
            picks = [(b, c) for b in self._ladder() if (c := self._choice(spec.with_(M=b), tgt, None)) is not None]
            if not picks or picks[0][0] != 1:
                raise ValueError(f"no lutc kernel for {dev} builds {_describe(spec)} at M = 1"
                                 + (f" with schedule {self.schedule}" if self.schedule else ""))
            decode, batch = picks[0][1], picks[-1][1]      # the M = 1 kernel, the largest bucket's
            differ = batch.layout != decode.layout and batch.module not in schedules.GENERIC
            two = differ and not single and (
                dev == "cuda" or second_copy_pays(decode, self._choice(spec, tgt, batch.layout), spec.wbits))
            if differ and not two and dev != "cuda":
                # one CPU copy: the batch kernel's layout (M = 1 then runs the best kernel reading it)
                plan = LayoutPlan((batch.layout,), None, spec.table_dtype)
            elif not two:
                plan = LayoutPlan((decode.layout,), None, spec.table_dtype)
            else:   # the decode layout serves the buckets before the first that reads the batch layout
                first_batch = next(b for b, c in picks if c.layout == batch.layout)
                split = max(b for b, _ in picks if b < first_batch)
                plan = LayoutPlan((decode.layout, batch.layout), split, spec.table_dtype)
            self._plans[key] = plan
        return plan

    # --- kernels ---
    def get(self, spec: MPGemmSpec, device: Union[str, torch.device] = "cpu", layout: str = LAYOUT) -> Kernel:
        """The kernel for ``spec`` (its ``M`` as given) reading ``layout`` on ``device``'s type,
        compiled on first use."""
        return self._get(spec, spec.M, torch.device(device).type, layout)

    def _get(self, spec: MPGemmSpec, M: int, dev: str, layout: str) -> Kernel:
        # Keyed by (spec, M, device type, layout) so a hit costs no new MPGemmSpec (run() passes
        # the M = 1 spec of the op and the bucket).
        key = (spec, M, dev, layout)
        kernel = self._kernels.get(key)
        if kernel is None:
            with self._lock:  # one compile per key even when threads race
                kernel = self._kernels.get(key)
                if kernel is None:
                    kernel = build(spec.with_(M=M), self.target(dev), self.schedule, self.knobs or None,
                                   layout=layout)
                    if not kernel.runnable:
                        raise RuntimeError(f"lutc built {kernel!r} for {dev} but cannot run it in "
                                           "this process (no GPU driver?)")
                    if not self._kernels:   # said once: the first forward of a model waits here
                        _LOG.warning("lutc: compiling kernels on first use, per layer shape and M bucket "
                                     "(0.1-1 s each, then cached on disk); run the model once to warm up")
                    if str(dev).startswith("cpu"):
                        _warn_busy_openmp_once()
                    _LOG.info("lutc: compiled %r for M = %d (first use of this bucket)", kernel, M)
                    self._kernels[key] = kernel
        return kernel

    def run(self, spec: MPGemmSpec, x: torch.Tensor, layout: str, *weights: torch.Tensor) -> torch.Tensor:
        """``y = x @ W^T`` for any number of rows of ``x`` (``spec.M`` is ignored).

        ``weights``: ``planes, scales[, zeros]`` in ``layout``. The arguments must have passed
        :func:`check_args` (this is the op's fast path: the kernels skip their own checks).
        """
        M, N = x.shape[0], spec.N
        dev = x.device.type
        whole = self._whole.get((spec, M, dev, layout))
        if whole is None:
            limit = self.rows_limit(spec, dev, layout)
            if M and M <= limit and self.bucket(M, limit) == M:
                whole = self._whole[(spec, M, dev, layout)] = self._get(spec, M, dev, layout)
        if whole is not None:   # M is a bucket its kernels build (decode: M = 1): one call
            y = torch.empty((M, N), dtype=x.dtype, device=x.device)
            whole.launch(x, *weights, y)
            return y
        if 0 < M < limit:
            # one padded call, and the first M rows of the bucket's output returned as they are:
            # H200, 28672 x 8192 W2 at M = 5, 32.5 us in a CUDA graph against 34.8 with y's rows
            # copied out (benchmarks/results/front_doors_cuda_padding.md)
            bucket = self.bucket(M, limit)
            padded = torch.empty((bucket, N), dtype=x.dtype, device=x.device)
            self._get(spec, bucket, dev, layout).launch(pad_rows(x, bucket), *weights, padded)
            return padded[:M]
        y = torch.empty((M, N), dtype=x.dtype, device=x.device)
        for start, rows, bucket in self.plan(M, limit):
            kernel = self._get(spec, bucket, dev, layout)
            out = y[start:start + rows]
            if rows == bucket and out.data_ptr() % ALIGN == 0:   # a whole chunk, written in place (x is copied if misaligned)
                kernel.launch(x[start:start + rows], *weights, out)
                continue
            yp = torch.empty((bucket, N), dtype=x.dtype, device=x.device)
            kernel.launch(pad_rows(x[start:start + rows], bucket), *weights, yp)
            y[start:start + rows] = yp[:rows]
        return y

    def kernels(self) -> list:
        """The kernels compiled so far."""
        return list(self._kernels.values())

    def clear(self) -> None:
        with self._lock:
            self._kernels.clear()
            self._limits.clear()
            self._plans.clear()
            self._whole.clear()

    def __len__(self) -> int:
        return len(self._kernels)


_CACHE = OpKernels()


def kernel_cache() -> OpKernels:
    """The process-wide cache the op compiles into."""
    return _CACHE


def set_kernel_cache(cache: OpKernels) -> OpKernels:
    """Replace the process-wide cache (e.g. other buckets or targets); returns the old one."""
    global _CACHE
    if not isinstance(cache, OpKernels):
        raise TypeError(f"cache must be a lutc.torch_ops.OpKernels, got {type(cache).__name__}")
    old, _CACHE = _CACHE, cache
    weight_spec.cache_clear()     # default table dtypes follow the new cache's targets
    return old


@functools.lru_cache(maxsize=4096)
def weight_spec(N: int, K: int, wbits: int, format: str, group_size: int, zero_point: bool,
                act_dtype: str, scale_dtype: str, g: int, symmetrize: bool, table_dtype: Optional[str],
                device_type: str) -> MPGemmSpec:
    """The ``M = 1`` spec of a packed weight and the LUT knobs (the op's arguments), with a None
    ``table_dtype`` resolved for ``device_type`` (:func:`lutc.build.spec_for`, the rule
    ``lutc.compile`` follows; float32 for shapes only, on "meta"). Validation raises
    :class:`lutc.SpecError` naming the field; cached, so a call costs a lookup."""
    weight = dict(wbits=wbits, format=format, group_size=group_size, zero_point=zero_point, scale_dtype=scale_dtype)
    knobs = dict(act_dtype=act_dtype, g=g, symmetrize=symmetrize)
    if table_dtype is None and device_type != "meta":
        return spec_for((1, N, K), _CACHE.target(device_type), **weight, **knobs)
    return MPGemmSpec.of_weight(N, K, weight, table_dtype=table_dtype or "float32", **knobs)


@functools.lru_cache(maxsize=4096)
def _shapes(spec: MPGemmSpec, layout: str) -> dict:
    """name -> (shape, torch dtype) of the packed tensors of ``spec`` in ``layout``."""
    return {name: (want.shape, TORCH_DTYPES[want.dtype]) for name, want in layouts.get(layout).shapes(spec).items()}


def check_args(x: torch.Tensor, planes: torch.Tensor, scales: torch.Tensor,
               zeros: Optional[torch.Tensor], wbits: int, group_size: int, format: str = "uniform",
               g: int = 4, symmetrize: bool = True, table_dtype: Optional[str] = None,
               layout: str = LAYOUT, N: int = -1, perm: Optional[torch.Tensor] = None) -> MPGemmSpec:
    """Check the op's arguments (no data is read) and return their spec (with ``M = 1``).

    Raises ``TypeError`` (dtype), ``ValueError`` (shape, device, contiguity, bit planes, layout)
    or :class:`lutc.SpecError` (an unsupported format), each naming the argument.

    Example:
        >>> import lutc
        >>> qw = lutc.quantize(torch.randn(64, 256), wbits=2, group_size=64)
        >>> check_args(torch.randn(3, 256), qw.planes, qw.scales, None, wbits=3, group_size=64)
        Traceback (most recent call last):
        ...
        ValueError: planes has shape (2, 64, 32), expected (3, 64, 32) (layout 'bitplane', uniform w3)
    """
    if x.dim() != 2:
        raise ValueError(f"x has shape {tuple(x.shape)}, expected 2-D [M, K] (reshape leading "
                         "dimensions into M, as lutc.LUTLinear does)")
    if x.dtype not in _ACT_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}, expected one of "
                        f"{', '.join(str(d) for d in _ACT_DTYPES)}")
    lay = layouts.get(layout)   # ValueError naming the known layouts
    if scales.dtype not in _SCALE_DTYPES:
        raise TypeError(f"scales has dtype {scales.dtype}, expected torch.float16 or torch.float32")
    dev = x.device
    named = [("planes", planes), ("scales", scales)] + ([("zeros", zeros)] if zeros is not None else [])
    for name, t in named:
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device}, expected {dev} (the device of x): move the "
                             "packed weights with .to() (LUTLinear: module.to(device))")
    dev_type = dev.type
    if dev_type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"x is on {dev}: lutc kernels run on cpu or cuda")
    # int() specializes symbolic K/N under torch.compile: kernels are compiled per K and N anyway.
    K = int(x.shape[1])
    if N == -1 and lay.name == LAYOUT and planes.dim() == 3:
        N = int(planes.shape[1])
    if isinstance(N, bool) or int(N) < 1:
        raise ValueError(f"N={N!r}: pass the weight's row count N for layout {layout!r} (its tiles pad the rows)")
    spec = weight_spec(int(N), K, int(wbits), str(format), int(group_size), zeros is not None,
                       _ACT_DTYPES[x.dtype], _SCALE_DTYPES[scales.dtype], int(g), bool(symmetrize),
                       None if table_dtype is None else str(table_dtype), dev_type)
    expected = _shapes(spec, lay.name)
    for name, t in named:
        shape, dtype = expected[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape} "
                             f"(layout {layout!r}, {format} w{wbits})")
        if t.dtype != dtype:      # (the device matched x's above)
            check_tensor(name, t, shape, dtype, dev_type)     # raises, worded as the runtime's
    if perm is not None:           # act-order: the weight's columns are x's features in this order
        check_tensor("perm", perm, (K,), torch.int64, dev_type)
        named.append(("perm", perm))
    for name, t in [("x", x)] + named:
        check_contiguous(name, t)
    return spec


#: The op's schema: the arguments of :func:`mpgemm` in ``torch.library``'s spelling.
SCHEMA = ("mpgemm(Tensor x, Tensor planes, Tensor scales, Tensor? zeros, int wbits, int group_size, "
          "str format='uniform', int g=4, bool symmetrize=True, str? table_dtype=None, "
          "str layout='bitplane', int N=-1, Tensor? perm=None) -> Tensor")

# torch.library.Library rather than custom_op: its eager calls cost less (module docstring).
_LIB = torch.library.Library("lutc", "DEF")
_LIB.define(SCHEMA)


def mpgemm(x: torch.Tensor, planes: torch.Tensor, scales: torch.Tensor,
           zeros: Optional[torch.Tensor], wbits: int, group_size: int, format: str = "uniform",
           g: int = 4, symmetrize: bool = True, table_dtype: Optional[str] = None,
           layout: str = "bitplane", N: int = -1, perm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``y[M, N] = x[M, K] @ W[N, K]^T`` for packed ``W`` (module docstring); ``y`` in x's dtype.
    ``perm``: the weight's column order (act-order checkpoints), applied to ``x``'s features.
    The same as ``torch.ops.lutc.mpgemm``.

    Example:
        >>> import lutc
        >>> qw = lutc.quantize(torch.randn(64, 256), wbits=2, group_size=64)
        >>> mpgemm(torch.randn(3, 256), qw.planes, qw.scales, qw.zeros, 2, 64).shape
        torch.Size([3, 64])
    """
    return torch.ops.lutc.mpgemm.default(x, planes, scales, zeros, wbits, group_size, format, g, symmetrize,
                                         table_dtype, layout, N, perm)


def mpgemm_kernel(x: torch.Tensor, planes: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                  wbits: int, group_size: int, format: str = "uniform", g: int = 4, symmetrize: bool = True,
                  table_dtype: Optional[str] = None, layout: str = "bitplane", N: int = -1,
                  perm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The op's CPU and CUDA kernel, without the dispatcher: check (:func:`check_args`), then run the
    bucket's kernel. Public so that ``benchmarks/bench_front_doors.py`` can time the same body
    registered another way.

    Example:
        >>> import lutc
        >>> qw = lutc.quantize(torch.randn(64, 256), wbits=2, group_size=64)
        >>> mpgemm_kernel(torch.randn(3, 256), qw.planes, qw.scales, qw.zeros, 2, 64).shape
        torch.Size([3, 64])
    """
    spec = check_args(x, planes, scales, zeros, wbits, group_size, format, g, symmetrize, table_dtype,
                      layout, N, perm)
    if perm is not None:
        x = x.index_select(1, perm)
    return _CACHE.run(spec, x, layout, planes, scales, *([zeros] if zeros is not None else []))


def _below_autograd(*args):
    """The op dispatched past its Autograd kernel: to the CPU/CUDA kernel, the fake kernel under
    torch.compile, or a tensor subclass's handler."""
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.lutc.mpgemm.default(*args)


class _NoBackward(torch.autograd.Function):
    """The op where a gradient was asked for: the forward runs, a backward raises."""

    @staticmethod
    def forward(ctx, *args):
        return _below_autograd(*args)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("lutc::mpgemm has no backward: lutc's kernels are for inference; run the "
                           "model under torch.no_grad() or torch.inference_mode()")


def _mpgemm_autograd(*args):
    """The op's Autograd kernel: plain CPU/CUDA tensors go straight to the kernel (one dispatch),
    unless an input wants a gradient; other tensors, and any call under a TorchDispatchMode
    (which must see the op), are dispatched on below autograd."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _NoBackward.apply(*args)
    if not torch._C._len_torch_dispatch_stack() and all(type(t) is torch.Tensor and not t.is_meta for t in tensors):
        return mpgemm_kernel(*args)
    return _below_autograd(*args)


_LIB.impl("mpgemm", mpgemm_kernel, "CPU")
_LIB.impl("mpgemm", mpgemm_kernel, "CUDA")
_LIB.impl("mpgemm", _mpgemm_autograd, "Autograd")


@torch.library.register_fake("lutc::mpgemm", lib=_LIB)
def _mpgemm_fake(x, planes, scales, zeros, wbits, group_size, format="uniform", g=4,
                 symmetrize=True, table_dtype=None, layout="bitplane", N=-1, perm=None):
    # Same checks at trace time, so torch.compile reports a bad argument before running anything.
    spec = check_args(x, planes, scales, zeros, wbits, group_size, format, g, symmetrize, table_dtype,
                      layout, N, perm)
    return x.new_empty((x.shape[0], spec.N))


def linear(x: torch.Tensor, qw: PackedWeights, bias: Optional[torch.Tensor] = None, g: int = 4,
           symmetrize: bool = True, table_dtype: Optional[str] = None) -> torch.Tensor:
    """``F.linear`` for a packed weight in any layout: ``x [..., K]`` -> ``[..., N]`` (plus ``bias``).

    Leading dimensions are flattened into ``M`` (copied if that needs a copy), then the op runs.

    Example:
        >>> import lutc
        >>> qw = lutc.quantize(torch.randn(64, 256), wbits=4, group_size=64)
        >>> linear(torch.randn(2, 3, 256), qw).shape
        torch.Size([2, 3, 64])
    """
    return linear_packed(x, qw.planes, qw.scales, qw.zeros, qw.N, qw.K, qw.wbits, qw.group_size,
                         qw.format, bias, g, symmetrize, table_dtype, qw.layout, qw.perm)


def linear_packed(x: torch.Tensor, planes: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                  N: int, K: int, wbits: int, group_size: int, format: str, bias: Optional[torch.Tensor],
                  g: int = 4, symmetrize: bool = True, table_dtype: Optional[str] = None,
                  layout: str = LAYOUT, perm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`linear` on the packed tensors themselves (``LUTLinear.forward`` holds buffers)."""
    if x.shape[-1] != K:
        # Checked here: a reshape to [-1, K] would otherwise silently regroup the numbers.
        raise ValueError(f"x has shape {tuple(x.shape)}, expected last dimension in_features={K}")
    y = torch.ops.lutc.mpgemm(x.reshape(-1, K).contiguous(), planes, scales, zeros, wbits, group_size,
                              format, g, symmetrize, table_dtype, layout, N, perm)
    y = y.reshape(*x.shape[:-1], N)
    return y if bias is None else y + bias.to(y.dtype)


def _describe(spec: MPGemmSpec) -> str:
    return (f"{spec.format} w{spec.wbits} g{spec.group_size} [N={spec.N}, K={spec.K}], "
            f"{spec.act_dtype} activations, {spec.table_dtype} tables")


__all__ = ["mpgemm", "mpgemm_kernel", "linear", "linear_packed", "check_args", "weight_spec", "OpKernels",
           "LayoutPlan", "kernel_cache", "set_kernel_cache", "DEFAULT_BUCKETS"]
