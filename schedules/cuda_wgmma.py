"""CUDA batch and prefill kernel for Hopper (sm_90a): ``tc16`` weights dequantized in registers
as the register operand A of ``wgmma``, activations in shared memory as its operand B, fed by a
copying warpgroup through mbarriers.

Why a third tensor-core kernel: from M = 17 on the product is bound by the tensor cores and the
issue slots, not by the weight bytes (28672 x 8192 at M = 128: 60 GFLOP against 59 MB of W2),
and ``mma.sync`` reaches only part of what Hopper's tensor cores do. ``wgmma`` multiplies a
64 x N x 16 tile per warpgroup (4 warps) asynchronously: the warps issue it and go on
dequantizing the next K unit while the tensor cores work.

Which operand is which (the "swap AB" of Machete and Humming). ``wgmma`` takes A from registers
or shared memory and B only from shared memory. Weight rows are its M (64 per warpgroup and
tile), tokens its N (``8 .. 256``), so the dequantized weights never touch shared memory: each
lane dequantizes its ``tc16`` codes exactly as ``cuda_mma`` does
(:func:`schedules.cuda_ptx.dequant_tc16`, ``(q - c) s``, one rounding) straight into the four
registers of its A fragment. The previous version of this kernel kept x in registers and stored
the dequantized weights into shared memory as B: up to 1.7x slower than this one, and as fast
on one row of twelve (``benchmarks/results/cuda_wgmma_h200.md``).

The k order. ``tc16`` (version 2) holds k in the fragments' own order: in k16 step ``s`` lane
``c`` of a quad dequantizes k ``16 s + 2 c`` (+ 1, + 8, + 9) of the unit, exactly the A slots
``2 c + 8 h`` of ``wgmma``. So x goes into B in its own order, 16 bytes at a time
(:func:`schedules.cuda_ptx.cp16`): a warp's 32 copies are two token rows' 256 contiguous bytes
each, into the 128-byte-swizzled B layout (:func:`x_byte`). ``tc16`` version 1 gave each lane 32
contiguous k (16-byte loads of x for ``mma.sync``, which ``ldmatrix`` now does as well) and x had
to be scattered into B in 4-byte pieces, 64 ``cp.async`` per copying thread and unit: with 16-byte
copies the kernel took 0.83-0.88x the time on the H200 (28672 x 8192 W2 at M = 128: 98.5
against 119.4 us; 8192 x 28672 at M = 512: 393 against 468). A second weight layout in natural
k order would have cost the front doors a second copy of the weights.

Loops: block ``(m, n)`` computes ``bm`` tokens by ``64 wn wg`` weight rows (blockIdx.x walks M,
so the blocks that share a weight tile run together and read it from DRAM once); computing
warpgroup ``q`` owns ``wn`` tiles of 64 rows, warp ``w`` of it the 16 rows ``16 w ..`` of each. K
goes in 128-weight units through a ring of ``stages`` stages holding x, the packed weights,
scales and zero points. A computing warpgroup, in iteration ``i``: issue unit ``i``'s ``8 wn``
wgmma from A buffer ``i % 2`` (one group); while they run, wait for unit ``i + 1``'s stage and
dequantize it into A buffer ``(i + 1) % 2``; ``wgmma.wait_group 0``; release unit ``i``'s stage.
The K loop is unrolled by two so that the A buffers have static register names. Nothing stays in
flight across iterations: a group left pending over the loop's back edge made ptxas serialize
every wgmma (C7514).

Who copies (knob ``ws``: copying warpgroups, 0/False, 1/True or 2). With ``ws`` (the default) a
warpgroup after the computing ones only copies (with 2, two share the copies): it waits on
the stage's "empty" mbarrier, starts its ``cp.async`` copies and arms the "full" mbarrier with
``cp.async.mbarrier.arrive``; the computing warps wait on "full" and arrive on "empty", and no
block barrier is left in the K loop. Without it every warp copies its share and a block barrier
per unit publishes the copies (``stages >= 3``). Why: Nsight Compute on the non-``ws`` kernel
(28672 x 8192 W2, M = 128, 2 x 2 x 64 tile) showed the tensor pipe 36% busy and the issue slots
32%, with 2 warps per scheduler stalled 5.2 cycles per instruction, the largest part at the
block barrier (1.2); each warp issued about 460 instructions per unit (2 x 64 half2 of
dequantization at 4 instructions, 16 x copies with their addresses). Two changes followed: the
dequantization's AND and OR became one ``LOP3`` (:func:`schedules.cuda_ptx.lop3_src`), and the
copies and the barrier moved to the copying warpgroup: 1.1-1.35x faster at M >= 64
(``benchmarks/results/sweep_cuda_wgmma_h200_ws.json``).

How many warps copy and compute (``ws = 2``, ``wg = 3``). Nsight Compute on that kernel at
M = 512 showed the tensor pipe 60% busy, 7 cycles between a warp's instructions, about 200
instructions per computing warp and 250 per copying warp (64 4-byte copies with their 64-bit
addresses) per unit: either needs more than the 1024 tensor cycles of one unit. A second copying
warpgroup halves the copier's share; a third computing warpgroup gives each copied x tile 1.5x the
wgmma and each scheduler three dequantizing warps; 256 rows x 64 tokens (``wn = 2``) halves x per
row at small M. Their accumulators and A buffers exceed an even share of the SM's registers, so the
copying warpgroups keep 32 each and give the rest to the computing ones (``setmaxnreg``,
:func:`computing_registers`; ``__launch_bounds__(threads, 1)`` tells ptxas the count at entry).
(The L2 was not the bound: halving the x traffic from L2 left the time unchanged.)

A buffers of part of a unit (knob ``ak``: k16 steps per A buffer, 8 = a whole unit). A buffer
of a whole unit costs 32 registers per 64-row tile, two buffers 64, which leaves no room for two
tiles of 128 tokens beside their 128 accumulators. With ``ak < 8`` a unit runs as ``8 / ak``
chunks: issue chunk ``c``'s wgmma, dequantize chunk ``c + 1`` (the next unit's first, after
waiting for its stage, at the unit's end), ``wgmma.wait_group 0``; the unit's codes and
coefficients are read with its first chunk. Two computing warpgroups of two 64-row tiles then
take 256 weight rows x 128 tokens with ``ak = 2`` (:data:`BATCH_TILE`, the default at
M = 65..128 where it gives its blocks, and stream-K's tile): each x tile copied serves twice the
rows, and on the H200 28672 x 8192 at M = 96 took 89.2 / 97.1 us (W2 / W4) against 129.9 / 137.9
with 128-row tiles (Humming 92.3 / 100.4, in turns). The tile that fits whole units measured the same with
``ak = 2`` (28672 x 8192 W2 at M = 512: 388.4 against 388.6 us), so the tuner tries ``ak < 8``
only where whole units do not fit (:func:`worth_tuning`).

Where prefill stands, and why (``benchmarks/results/cuda_prefill_h200.md``). At M = 512 on
28672 x 8192 Nsight Compute (clock locked at 1.34-1.36 GHz) shows this kernel's tensor pipe 89.7%
busy while the SMs are active, Humming's 86.5% (442 against 403 us: 448 blocks are 3.39 waves, so
the SMs are active 84% of the time, where Humming's persistent stream-K grid keeps them busy 97%).
At the full clock both run at the H200's 690 W limit, and there the energy per product decides:
sustained, this kernel ran at 1575 MHz (411.7 us), its stream-K grid at 1455 MHz (399.1), Humming
at 1710 (354.9), cuBLAS at 1320 (391.8) (``benchmarks/results/cuda_prefill_power_h200.log``). 256-row
tiles (half the x copied from L2) did not speed it up (412-429 us), so the bytes of x copied are
not what costs. What else differs, untested: Humming loads x with TMA (one instruction per tile,
multicast to the two blocks of a cluster) where this kernel issues 16-byte ``cp.async``, and it
stores the output through shared memory with TMA where this kernel stores from registers.

Split-K (knob ``splits``, for few blocks). Where M is small (to 64) and N narrow, the tiles give
fewer blocks than SMs (8192 x 28672 at M = 16: 128 blocks of one warpgroup, each walking all of
K's 224 units), so SMs idle while the weights stream. With ``splits = s`` block ``(m, n, z)``
takes K's ``z``-th slice of ``KU / s`` units and stores fp32 partial sums into a workspace
``[s, M, N]`` (TVM's, allocated per call from its pool), and a second kernel adds the slices in
order (deterministic) and rounds once to the output type. On the H200: 8192 x 28672 W2 at M = 16
51.6 against 71.2 us unsplit, 4096 x 4096 7.4 against 12.1; at M = 128 it lost (the tensor
cores, not idle SMs, set the time there): :func:`default_splits`. Where no tile gives its
blocks alone, the 256-row tile of two computing warpgroups in K slices that fill one wave beats
64-row tiles in twice the slices (:func:`one_wave_split`: one warpgroup per SM dequantizes in
those), and to M = 32 the 64-row tiles in two waves of slices or more do without the copying
warpgroup (:func:`split_ws`: two blocks share an SM). The workspace comes from TVM's
per-thread pool, so two calls of one kernel on different CUDA streams at the same time would
share it (as ``cuda_generic``'s table workspaces would): one stream per thread is the supported
use.

Stream-K (knob ``streamk``: the grid's block count, 0 for a block per tile;
:mod:`schedules.stream_k`). The grid is one block per SM; block ``c`` runs its even share of the
(tile, K unit) iterations in tile-major order, across tile edges: the copying warpgroups copy unit
after unit as before (the ring's phases run on), and the computing ones, where a tile's units end,
store it (whole into ``out``, cut into the block's workspace slot, fp32) and start the next from
zero. A second kernel adds each cut tile's partial sums in block order, four neighbouring rows per
thread (16-byte loads, all of a tile's partials in flight: with the first version, one element and
one load at a time per thread, 28672 x 8192 at M = 128 took 140.1 us where it now takes 110.7). On
the H200 (``benchmarks/results/cuda_stream_k_h200.md``) it pays where the block count forced small
token tiles: 8192 x 28672 at M = 96..128 (64 tiles of 128 rows) in 128-token tiles on 132 blocks,
85.9 against 125.2 us at M = 96 (W2, Humming 87.6 in turns in the same run) and 100.8 against 130.3
at M = 128 (the main kernel 96.1 us, the fix-up 3.8): every weight is dequantized once, where
64-token tiles did it twice. It does not pay where the tiles already fill the GPU (28672 x 8192 at
M = 128: 110.7 against 100.7; M = 512: 382.8 against 388.3) or at small M (8192 x 28672 at M = 16:
85.4 against split-K's 52.9): the dequantization and tensor cores bound the time, and a GPU busy on
every SM runs hotter and slower. :func:`default_streamk` takes it only for the first case.

Where it stands, newest (``benchmarks/results/cuda_h200_retuned.md``, H200, in turns, with the
re-tuned log): faster than Humming at every M <= 128 but two cells (1-2% behind: 28672 x 8192
W2 at M = 128, 8192 x 28672 W4 at M = 64), on 4096 x 4096 at every M and on 8192 x 28672 at
M = 512; behind by 1.07-1.21x at M = 2048 and on 28672 x 8192 at M = 512. Earlier
(``benchmarks/results/cuda_h200_x16.md``, H200, same hour, lutc timed first): faster than
Humming at M = 64 on 28672 x 8192 (59.1 against 72.5 us, W2), at M = 128..512 on 4096 x 4096 and
at M = 512 on 8192 x 28672 (342.4 against 361.4); 0.70-0.99x of it elsewhere (28672 x 8192 at
M = 128: 99.9 against 92.0); faster than cuBLAS fp16 to M = 128 and 0.91-1.06x of it from M = 512
on the large shapes; from M = 9 (``benchmarks/results/cuda_small_m_h200.md``) 28672 x 8192 at
M = 16 40.8 against Humming's 49.5; with the tuned 256-row tiles (``tuning_logs/cuda.jsonl``)
8192 x 28672 at M = 16 37.9 / 40.0 us (W2 / W4) against Humming's 48.9 / 50.4, in turns. (Those
tables timed lutc first; see ``lutc.measure.interleaved_graph_us`` for why that favoured lutc by
up to 5-10% at M >= 96.) Fewer instructions per dequantized pair: the knob ``late_scale``
(:func:`wgmma_kernel`), the default up to M = 32 (28672 x 8192 W2 at M = 16: 36.8 us against
40.4, ``benchmarks/results/cuda_late_scale_h200.md``). ``cuda_stream``'s raw codes (one ``LOP3`` a
pair, the offsets times x off the sums) were tried here with one more wgmma per k16 step for the
offsets and removed: slower in every cell timed (28672 x 8192 W2 at M = 16: 40.3 against 35.4 us;
2x with one tile per warp), the extra wgmma lengthen the chain each unit waits on before its
scale (``benchmarks/results/cuda_wgmma_raw_codes_h200.md``). So was a late scale over A buffers of
part of a unit (``ak`` 2 or 4: 60-111 registers per thread instead of 168, four computing
warpgroups or two blocks per SM): 41.3-64.1 us against 35.6 there, each chunk's wgmma waited
for (``benchmarks/results/cuda_wgmma_late_ak_h200.md``).

Limits (``supports``): sm_90a, fp16 or bf16 activations (the weights are dequantized to the
activations' type; bf16 rounds the scale to bf16 first, except with the late scale, which
multiplies fp32 sums), the formats ``tc16`` holds (uniform W1-W4, ternary), K % 128 == 0
(``splits`` must divide K / 128; ``streamk`` at most the tile units, and not with ``splits``), any
M and N (tokens and rows past M and N are computed from stale shared memory and never stored).
fp16 results equal ``cuda_mma``'s up to the order of the fp32 sums (and, with the late scale,
one rounding fewer).
"""
from __future__ import annotations

from typing import Optional

from tvm import IRModule, s_tir
from tvm.script import tirx as T

from lutc.layouts import tc16_code_bits, tc16_vectors

from . import stream_k
from .common import SMS, cuda_arch, drop_param, merge_knobs, weight_buffers
from .cuda_lut import PASS_CONFIG  # noqa: F401  (TVM cannot see reads made by inline PTX)
from .cuda_ptx import (cp16, cp_commit, cp_mbar_arrive, cp_wait, groups_per_unit, lds128, lds_scale_f32, lds_scale_h2,
                       mbar_arrive, mbar_init, mbar_wait, proxy_fence_async, setmaxnreg, wgmma_commit, wgmma_fence,
                       reads_tc16, tc16_fragment, wgmma_fence_acc, wgmma_m64k16, wgmma_wait)
from .cuda_stream import eight_slices, scale_size

#: Writes its kernel itself; the front end's function is only its reference (schedules.contract).
TEMPLATE = True
#: The weight layout it reads (:mod:`lutc.layouts`), whatever the knobs.
LAYOUTS = ("tc16",)
KNOBS = {"wg": (1, 2, 3, 4), "wn": (1, 2), "bm": (64, 128, 176, 256), "stages": (3, 4),
         "ws": (False, True, 2), "splits": (1, 2, 4), "streamk": (0, 78, 114, SMS), "late_scale": (0, 1),
         "ak": (8, 4, 2, 1)}
#: Knobs added after tuning logs were written, at the value their kernels had (``late_scale``: the
#: scales multiplied the dequantized weights).
ADDED_KNOBS = {"late_scale": 0, "ak": 8}
#: Most tokens of a block with a late scale: each unit's sums need as many accumulators again.
LATE_MAX_TOKENS = 64
#: The late scale is the default up to this M (H200, ``benchmarks/results/cuda_wgmma_late_scale_h200.log``:
#: 28672 x 8192 W2 at M = 16 36.8 us against 40.4, W4 41.6 against 43.3; 4096 x 4096 7.0 against
#: 7.3; at M = 32 1.00-0.98x; at M = 64 slower, 11.2 against 9.5 on 4096 x 4096: past the weights'
#: bound the extra FMAs and the unit's wait cost more than the multiplies saved; the same at M = 48
#: and 64 once its sums were no longer zeroed, 1.15-1.22x: ``cuda_wgmma_late_scale_m48_m64_h200.log``).
LATE_MAX_M = 32
#: Stream-K grids (knob ``streamk``, :mod:`schedules.stream_k`): one block per SM of the Hopper
#: parts, H20 (78 SMs), H100 PCIe (114), H100 SXM, H200 and GH200 (132, the default's ``SMS``); 0 is
#: a block per tile.
#: Dynamic shared memory of one block on sm_90 (227 KB, the opt-in maximum).
SMEM_LIMIT = 227 * 1024
#: Alignment of each stage's x (the 128-byte swizzle repeats every 1024 bytes).
ALIGN = 1024
#: From this M on the kernel is the default (to M = 8 ``cuda_stream``'s transposed product).
MIN_M = 9
#: Split-K (knob ``splits``) is the default up to this M, where the weights, not the tensor
#: cores, set the time: blocks that walk all of K alone leave SMs idle when there are few.
SPLIT_MAX_M = 64
#: Registers a thread may spend on accumulators and A fragments (of 255, the rest addresses).
REG_BUDGET = 200
#: Registers a thread spends besides them (addresses, codes, coefficients: ptxas measured 30-60).
REG_OTHER = 32
#: Registers of an SM (and so of a block, whose threads share them).
SM_REGISTERS = 65536
#: Registers a copying thread keeps when the computing warps need more than an even share: it
#: holds addresses and a loop counter (``setmaxnreg`` gives the rest to the computing warpgroups).
COPIER_REGS = 32
#: Most registers a thread can own (255 rounded down to ``setmaxnreg``'s multiples of 8).
MAX_REGS = 248


def supports(spec, target) -> bool:
    arch = cuda_arch(target)
    return arch == "sm_90a" and spec.act_dtype in ("float16", "bfloat16") and reads_tc16(spec)


def preferred(spec, target) -> bool:
    """From M = 9 (:data:`MIN_M`), and from M = :func:`wide_min_m` where :data:`WIDE_TILE` alone
    fills the GPU and scales late (:func:`fits_wide_batch`). On the H200
    (``benchmarks/results/cuda_small_m_h200.md``, W2 us at M = 16, this kernel with its default
    split-K / ``cuda_stream`` / ``cuda_mma``): 28672 x 8192 40.8 / 60.9 / 51.6, 57344 x 8192 78.1 /
    101.7 / 96.8, 8192 x 28672 51.6 / 62.1 / 64.0, 4096 x 4096 7.4 / 11.0 / 11.2. Below M = 9
    (``benchmarks/results/cuda_cliff_wide_wgmma_h200.log``, both kernels' defaults timed in turns):
    on 28672 x 8192 W4 36.0 / 36.4 / 36.8 us against ``cuda_stream``'s 39.7 / 39.4 / 44.9 at
    M = 2 / 4 / 8, W2 32.4 / 32.4 against 34.7 / 36.0 at M = 4 / 8 (but 33.2 against 30.3 at
    M = 2), ternary 31.6 / 32.9 against 34.3 / 34.2 at M = 4 / 8; on 8192 x 28672 and 4096 x 4096,
    whose tiles need split-K, ``cuda_stream`` is faster at every M <= 8 (W4 at M = 8: 41.2 against
    46.9 us). An earlier run of the same pairs (``cuda_raw_codes_stream_h200.log``) agrees. Those
    were ``cuda_stream``'s 4-warp defaults; with K in 8 slices it keeps 2-bit slots to M = 4 on a
    long K (:func:`wide_min_m`)."""
    return spec.M >= MIN_M or (spec.M >= wide_min_m(spec) and fits_wide_batch(spec))


#: The tile (wg, wn, bm, ws) of a decode batch on a wide weight, and the blocks it must give
#: (:data:`TILES`' 256 rows of 64 tokens).
WIDE_TILE = (2, 2, 64, True, 100)


def wide_min_m(spec) -> int:
    """Fewest tokens from which this kernel beats ``cuda_stream`` on a wide weight: 2 for 4-bit
    slots (W3, W4), 4 for 2-bit ones (W1, W2, ternary), whose dequantization costs less per
    weight, so that ``cuda_stream``'s transposed product stays ahead longer; :data:`MIN_M` (none
    of M = 2..8) where ``cuda_stream`` splits a long K in 8 slices
    (:func:`schedules.cuda_stream.eight_slices`) and reads its 2-bit slots raw: on the H200, two
    runs in turns (``benchmarks/results/cuda_stream_m5_m8_h200.log``), 28672 x 8192 W2 at M = 5 /
    6 / 7 / 8 took 27.5-27.7 / 31.8-32.0 / 31.3-31.7 / 31.2-31.5 us against this kernel's 32.2-32.5
    / 32.1-32.4 / 31.6-32.3 / 32.0-32.4, and W1 and ternary likewise (M = 8: 30.1-30.3 against
    32.0-33.0). Before the raw codes ``cuda_stream`` led to M = 4 only (M = 8: 38.0 against 32.2,
    ``benchmarks/results/cuda_stream_batches_h200.md``)."""
    if tc16_code_bits(spec) == 4:
        return 2
    return MIN_M if eight_slices(spec.with_(M=8)) else 4


def fits_wide_batch(spec) -> bool:
    """Whether :data:`WIDE_TILE` gives its blocks without split-K (at M <= 64: N over 25344) and
    can scale late (no zero points, groups of 128 or more: where ``cuda_stream`` does too, as
    measured)."""
    wg, wn, bm, ws, min_blocks = WIDE_TILE
    return blocks(spec, wg, wn, bm) >= min_blocks and can_scale_late(spec, wn, bm, wg, ws)


def layout(spec, target, **knobs) -> str:
    if knobs:
        resolve_knobs(spec, **knobs)    # refuses impossible combinations
    return "tc16"


def tokens(spec, bm: int) -> int:
    """Tokens per block, the wgmma N: ``bm``, or M rounded up to 8 where M is smaller."""
    return min(bm, -(-spec.M // 8) * 8)


#: The tile (wg, wn, bm, ws, ak) of a batch of 65..128 tokens (:func:`fits_batch`) and of stream-K
#: there (:func:`streamk_tile`): 256 weight rows x 128 tokens, two 64-row
#: tiles per computing warpgroup, whose accumulators fit beside A buffers of two k16 steps (eight,
#: a whole unit, would not), two copying warpgroups. Each x tile copied serves twice the rows of a
#: 128-row tile. On the
#: H200, in turns (``benchmarks/results/cuda_wgmma_ak_m96_m256_h200.log``, W2 / W4 us): 28672 x 8192
#: at M = 96 89.2 / 97.1 against 129.9 / 137.9 for 224 blocks of 128 rows x 128 tokens (Humming
#: 92.3 / 100.4), at M = 128 105.0 / 110.4 against 111.2 / 117.9 (Humming 105.1 / 118.7); 8192 x
#: 28672 (stream-K) at M = 96 84.8 / 92.3 against 94.0 / 105.3 with 128-row tiles (Humming 95.7 /
#: 106.2), at M = 128 104.2 against 109.2 (W2). At M = 256 it lost (28672 x 8192: 208.7 against
#: 192.4 for 256-token tiles), and on 4096 x 4096 (16 blocks: 46.8 against 14.3).
BATCH_TILE = (2, 2, 128, 2, 2)
#: Fewest blocks :data:`BATCH_TILE` must give to be the default without stream-K (28672 x 8192
#: gives 112).
BATCH_MIN_BLOCKS = 100
#: Stream-K's tile past :data:`BATCH_TILE`'s 128 tokens, as it was timed before that tile existed
#: (:func:`default_streamk`).
STREAMK_TILE = (2, 1, 128, 2, 8)
#: Fewest K units of a 128-row tile per stream-K block worth it (a unit of a 256-row tile counts
#: twice): each block pays a pipeline fill and up to two partial-sum stores (4096 x 4096 at
#: M = 128, 8 units per block: 23-49 us against 14 unsplit; 8192 x 28672 at M = 96 in
#: :data:`BATCH_TILE`, 54 units of 256 rows per block, paid).
STREAMK_MIN_UNITS = 64
#: Blocks that split-K aims at (:func:`default_splits`), and from which it is not worth tuning:
#: about two waves of the H200's 132 SMs keep every SM busy; more splits only add partial sums.
SPLIT_BLOCKS = 256


def worth_tuning(spec, target, bm: int = 128, wg: int = 2, wn: int = 1, splits: int = 1, streamk: int = 0,
                 ak: int = 8, ws=True, **_) -> bool:
    """False for a token tile past the one that already holds all of M (the same kernel), for
    split-K or stream-K where the tile alone gives :data:`SPLIT_BLOCKS` blocks, for stream-K
    shares under :data:`STREAMK_MIN_UNITS` units, and for A buffers of part of a unit where whole
    units fit (the same tile measured the same: 28672 x 8192 W2 at M = 512 388.4 us with ``ak = 2``
    against 388.6, ``benchmarks/results/cuda_wgmma_ak_w2_h200.log``)."""
    smaller = KNOBS["bm"][:KNOBS["bm"].index(bm)]
    new_tile = not smaller or tokens(spec, bm) > tokens(spec, smaller[-1])
    few = blocks(spec, wg, wn, bm) < SPLIT_BLOCKS
    return (new_tile and (splits == 1 or few)
            and (not streamk or (few and long_shares(spec, wg, wn, bm, streamk)))
            and (ak == 8 or registers(spec, wn, bm) > register_limit(wg, ws)))


#: Tiles (wg, wn, bm, ws) from the most work per block down, each with the blocks it must give to
#: be the default (:func:`default_knobs`): 256 tokens per block (each dequantized weight serves
#: twice the tokens) and three computing warpgroups pay from about one and four waves of the
#: H200's 132 SMs on (fewer leave the last wave's SMs idle), the others from 3/4 of one wave.
#: From the H200 sweeps of 16-byte x copies (``benchmarks/results/sweep_cuda_wgmma_h200_x16.json``:
#: W2, M = 128..2048 on 28672 x 8192, 8192 x 28672 and 4096 x 4096, 10-11 knob sets each) this
#: rule picks the fastest knob set in 6 of the 8 rows, is within 3.7% in a seventh and 9.6% in the
#: eighth (8192 x 28672 at M = 128, where one warpgroup with two copying ones was faster).
#: Past :data:`BATCH_TILE`'s 128 tokens a 256-token tile that M does not fill still ranks first,
#: with two copying warpgroups where one wgmma's registers fit (to 192 tokens): on the H200
#: (``benchmarks/results/cuda_m192_bm256_h200.log``, W2 / W4 us) 28672 x 8192 at M = 160 took
#: 127.4 / 132.1 against 212.7 / 224.9 for two 128-token tiles, at M = 192 150.5 / 155.9 against
#: 215.0 / 228.4 (Humming 179.3 / 179.8 in another run, ``cuda_m192_h200.log``); on 8192 x 28672
#: (64 such blocks) the 128-token tiles are chosen (173.2 against 235.1 at M = 192), and then
#: replaced by stream-K's grid over the 256-token tile (:func:`streamk_tile`).
TILES = ((2, 1, 256, 2, 100), (2, 1, 256, True, 100), (3, 1, 128, True, 500), (2, 1, 128, 2, 100), WIDE_TILE,
         (2, 1, 64, True, 100), (1, 1, 64, True, 0))


def blocks(spec, wg: int, wn: int, bm: int) -> int:
    """Thread blocks of the kernel: token tiles x weight-row tiles."""
    return -(-spec.M // tokens(spec, bm)) * -(-spec.N // (64 * wn * wg))


def iterations(spec, wg: int, wn: int, bm: int) -> int:
    """Stream-K's iterations: (tile, 128-weight K unit) pairs of the product."""
    return blocks(spec, wg, wn, bm) * (spec.K // 128)


def long_shares(spec, wg: int, wn: int, bm: int, grid: int) -> bool:
    """Whether each of ``grid`` stream-K blocks gets :data:`STREAMK_MIN_UNITS` units of a 128-row
    tile's work or more."""
    return iterations(spec, wg, wn, bm) * wg * wn >= 2 * STREAMK_MIN_UNITS * grid


def launch_registers(wg: int, ws: int = 0) -> int:
    """Registers each thread of the block owns at launch: an even share of the SM's (one block
    per SM), in the hardware's units of 8."""
    return min(MAX_REGS, SM_REGISTERS // (128 * (wg + ws)) // 8 * 8)


def computing_registers(wg: int, ws: int = 0) -> int:
    """Registers each computing thread owns: its even share, or with ``ws`` copying warpgroups
    the share plus what they give up (``setmaxnreg``: the block's registers are fixed at launch and
    only move between its warpgroups)."""
    launch = launch_registers(wg, ws)
    if not ws:
        return launch
    return min(MAX_REGS, ((wg + ws) * launch - ws * COPIER_REGS) // wg // 8 * 8)


def register_limit(wg: int, ws: int = 0) -> int:
    """Registers a thread of a block of ``wg`` computing warpgroups (and ``ws`` copying ones) may
    spend on accumulators and A fragments."""
    return min(REG_BUDGET, computing_registers(wg, ws) - REG_OTHER)


def moves_registers(spec, wg: int, wn: int, bm: int, ws: int, late_scale: int = 0, ak: int = 8) -> bool:
    """Whether the kernel moves registers from the copying warpgroup to the computing ones: only
    a tile that does not fit the even share does, a late scale's accumulators counted (the others
    keep the code they were timed with)."""
    return bool(ws) and (registers(spec, wn, bm, ak) + late_registers(spec, wn, bm, late_scale)
                         > launch_registers(wg, ws) - REG_OTHER)


def fits(spec, wg: int, wn: int, bm: int, stages: int = 3, ws: int = 0, ak: int = 8) -> bool:
    """Whether the tile fits a block's registers (:func:`register_limit`, :func:`wgmma_fits`) and
    shared memory."""
    return (registers(spec, wn, bm, ak) <= register_limit(wg, ws) and wgmma_fits(spec, wg, bm, ws)
            and smem_bytes(spec, wg, wn, bm, stages) <= SMEM_LIMIT)


def wgmma_fits(spec, wg: int, bm: int, ws: int = 0) -> bool:
    """Whether one wgmma's accumulators and two A buffers fit the registers at launch: ptxas
    compiles each instruction within them even where ``setmaxnreg`` adds more (C7602 for
    256 tokens with two copying warpgroups)."""
    return tokens(spec, bm) // 2 + 32 <= launch_registers(wg, ws)


def default_knobs(spec) -> dict:
    """The first tile of :data:`TILES` that fits, gives its blocks and is not cut down to M (to
    :data:`BATCH_TILE`'s 128 tokens, a tile of more than 64 tokens that M does not fill is left
    to the smaller tiles), else the one that gives the most blocks (unless stream-K takes the
    product: first the split tile of :func:`one_wave_split` to M = 64 or of :func:`batch_split`
    to M = 128; the last tile in :func:`default_splits`' slices, with the copying warpgroups of
    :func:`split_ws`); 4 stages where they fit, else 3. To M = 32 the last tile in K slices takes
    the place of the 64-row tile of two warpgroups (``TILES[-2]``), whose 100 blocks or more on N
    = 12800..25343 leave a wave part-empty: on the H200 18944 x 3584 at M = 16 took 13.8 / 17.6 us
    (W2 / W4) against 25.3 / 27.1 in its 148 blocks, in turns
    (``benchmarks/results/cuda_wave_quantization_h200.log``), and the tuner timed 14336 x 4096
    at 13.7 / 15.0 against 15.0 / 16.4 (``benchmarks/results/tuning_h200_qwen25_7b_llama3_8b.md``)."""
    tiles = [t for t in TILES if fits(spec, t[0], t[1], t[2], ws=t[3])]
    chosen = next((t for t in tiles if blocks(spec, *t[:3]) >= t[4]
                   and (t[2] == 64 or tokens(spec, t[2]) == t[2] or spec.M > BATCH_TILE[2])),
                  max(tiles, key=lambda t: blocks(spec, *t[:3])))
    wave_split = chosen == TILES[-1]
    if chosen == TILES[-2] and spec.M <= SPLIT_WS_MAX_M:    # the last tile in K slices instead (default_splits)
        chosen, wave_split = TILES[-1], False
    streamk, batch = default_streamk(spec, chosen), fits_batch(spec)
    split_tile = None
    if not streamk and not batch:
        split_tile = (one_wave_split(spec) if wave_split else None) or batch_split(spec, chosen)
    splits = 1
    if split_tile:
        (wg, wn, bm, ws, splits), ak = split_tile, 8
    elif streamk:
        wg, wn, bm, ws, ak = streamk_tile(spec)
    elif batch:
        wg, wn, bm, ws, ak = BATCH_TILE
    else:
        (wg, wn, bm, ws), ak = chosen[:4], 8
        if chosen == TILES[-1]:
            splits = default_splits(spec, blocks(spec, wg, wn, bm))
            ws = split_ws(spec, blocks(spec, wg, wn, bm) * splits, ws)
    return {"wg": wg, "wn": wn, "bm": bm, "stages": 4 if fits(spec, wg, wn, bm, 4, ws=ws, ak=ak) else 3, "ws": ws,
            "splits": splits, "streamk": streamk, "late_scale": default_late_scale(spec, wn, bm, wg, ws, ak), "ak": ak}


#: Tiles (wg, wn, bm, ws) that split-K may fill one wave with (:func:`one_wave_split`), and the
#: least part of the SMs that wave must cover. (``(2, 1, 64, True)`` too lost on 4096 x 4096 at
#: M = 64 in the log: 9.9 / 10.6 us W2 / W4 against 9.5 / 9.9 for the 64-row tiles in 4 slices.)
SPLIT_WAVE_TILES = (WIDE_TILE[:4],)
SPLIT_WAVE_MIN = 0.75


def one_wave_split(spec) -> Optional[tuple]:
    """``(wg, wn, bm, ws, splits)``: where M <= :data:`SPLIT_MAX_M` leaves no tile of
    :data:`TILES` its blocks (:func:`default_knobs`), the first of :data:`SPLIT_WAVE_TILES` whose
    blocks times the fewest slices of K fill one wave (from :data:`SPLIT_WAVE_MIN` of the SMs to
    all), else None. Why: two computing warpgroups keep 8 warps per SM dequantizing, where the last
    tile of :data:`TILES` (one warpgroup; its registers leave room for one block per SM) keeps 4
    and needs twice the slices. On the H200, in turns, W2 / W4 us, this tile in 4 slices against
    64-row tiles in 2 (``benchmarks/results/cuda_wgmma_split_wave_h200.log``): 8192 x 28672 at
    M = 16 33.1 / 38.5 against 46.5 / 52.3, at M = 64 63.0 / 60.0 against 78.5 / 76.9; 8192 x 8192
    at M = 16 13.1 / 14.9 against 16.1 / 17.9; 7168 x 18432 (against 4 slices) at M = 16 22.9 /
    25.9 against 31.7 / 35.3; 0.68-0.89x the time in all 24 rows (M = 12, 16, 32, 64). On 4096 x
    4096 (16 such tiles) no split fills a wave and the 64-row tiles stay.
    Example: ``one_wave_split(MPGemmSpec(16, 8192, 28672, act_dtype="float16"))`` is
    ``(2, 2, 64, True, 4)``: 32 tiles of 256 rows in 4 slices, 128 blocks."""
    if spec.M > SPLIT_MAX_M:
        return None
    usable = usable_splits(spec)
    for wg, wn, bm, ws in SPLIT_WAVE_TILES:
        if fits(spec, wg, wn, bm, ws=ws):
            s = next((s for s in usable if SPLIT_WAVE_MIN * SMS <= blocks(spec, wg, wn, bm) * s <= SMS), None)
            if s:
                return wg, wn, bm, ws, s
    return None


#: The tile (wg, wn, bm, ws) that :func:`batch_split` cuts along K: 128 weight rows x 128 tokens,
#: two computing and two copying warpgroups (the fourth of :data:`TILES`).
BATCH_SPLIT_TILE = TILES[3][:4]
#: The least part of the SMs that :func:`batch_split`'s blocks must cover.
BATCH_SPLIT_MIN = 0.5
#: What each K slice past the first costs (:func:`split_cost`), in runs of the unsplit K loop.
SLICE_COST = 0.1


def split_cost(tile_blocks: int, splits: int) -> float:
    """Time of ``tile_blocks`` tiles in ``splits`` K slices, in runs of one tile's whole K loop:
    the waves of :data:`SMS` blocks, each ``1 / splits`` of the loop, plus :data:`SLICE_COST` per
    slice past the first (partial sums written and added, a pipeline filled per block). On the
    H200 (``tuning_logs/cuda.jsonl``) 11008 x 4096 W4 at M = 128 in :data:`BATCH_SPLIT_TILE` took
    27.2 us unsplit (86 blocks: cost 1.0), 34.3 in 2 slices (1.1) and 33.0 in 4 (1.05); 8192 x 8192
    31.1 in 2 slices (0.6) against 37.6 for the 64-token tiles.
    Example: ``split_cost(32, 4)`` is 0.55: 128 blocks in one wave of a quarter of the loop."""
    return -(-tile_blocks * splits // SMS) / splits + SLICE_COST * (splits - 1)


def default_changed(spec) -> Optional[str]:
    """When :func:`default_knobs` last changed for ``spec``'s shapes (``schedules.contract``), on
    2026-12-02: to M = :data:`SPLIT_WS_MAX_M` the last tile in K slices (commit ec79324); at M =
    65..128 :func:`batch_split` (fb92c81). Move it with the rule."""
    if spec.M <= SPLIT_WS_MAX_M:
        return "2026-12-02T12:14:26"
    return "2026-12-02T11:25:24" if SPLIT_MAX_M < spec.M <= BATCH_TILE[2] else None


def batch_split(spec, tile) -> Optional[tuple]:
    """``(wg, wn, bm, ws, splits)``: at M = 65..128 (past :data:`SPLIT_MAX_M`, to
    :data:`BATCH_TILE`'s tokens) where the tile the block count chose (``tile`` of :data:`TILES`)
    takes fewer tokens than M and neither stream-K nor :data:`BATCH_TILE` takes the product
    (:func:`default_knobs`), :data:`BATCH_SPLIT_TILE` in the K slices that :func:`split_cost`
    ranks first, where their blocks cover :data:`BATCH_SPLIT_MIN` of the SMs; else None (the last
    tile of :data:`TILES` then takes :func:`default_splits`' slices). Why: one block of 128 tokens
    dequantizes each weight once where 64-token blocks do it twice, and the slices give it the SMs
    that its few row tiles would leave idle. On the H200 the tuner timed it
    (``benchmarks/results/tuning_h200_qwen25_7b_llama3_8b.md``, ``tuning_logs/cuda.jsonl``) at M = 128 on 4096 x
    14336 27.7 / 28.1 us W2 / W4 against the unsplit 64-row tiles' 43.1 / 44.0, on 3584 x 18944
    32.6 / 33.0 against 55.6 / 57.0, on 8192 x 8192 (2 slices) 31.1 / 31.4 against 37.6 / 39.4: the
    fastest of the 14-22 candidates timed in each of those and of 3584 x 3584 and 4096 x 4096.
    Example: ``batch_split(MPGemmSpec(128, 4096, 14336, act_dtype="float16"), TILES[-1])`` is
    ``(2, 1, 128, 2, 4)``: 32 tiles in 4 slices, 128 blocks."""
    wg, wn, bm, ws = BATCH_SPLIT_TILE
    if not (SPLIT_MAX_M < spec.M <= BATCH_TILE[2] and tokens(spec, tile[2]) < tokens(spec, bm)
            and fits(spec, wg, wn, bm, ws=ws)):
        return None
    tile_blocks = blocks(spec, wg, wn, bm)
    s = min(usable_splits(spec), key=lambda s: split_cost(tile_blocks, s))
    return (wg, wn, bm, ws, s) if tile_blocks * s >= BATCH_SPLIT_MIN * SMS else None


#: To this M the last tile of :data:`TILES`, split into :data:`SPLIT_BLOCKS` blocks or more,
#: computes without a copying warpgroup (:func:`split_ws`; at M = 64 it was 0.98-1.04x the time).
SPLIT_WS_MAX_M = 32


def split_ws(spec, grid: int, ws):
    """The copying warpgroups of the last tile of :data:`TILES` in a split-K grid of ``grid``
    blocks: none to M = :data:`SPLIT_WS_MAX_M` where the grid reaches :data:`SPLIT_BLOCKS` (two
    waves), else ``ws``. Why: without it a block is one warpgroup of 4 warps whose registers and
    shared memory leave room for a second block per SM, so two waves of blocks keep 8 warps per
    SM dequantizing and one block's barrier per unit is covered by the other's work; with it, one
    block of 4 computing warps holds the SM. Under two waves an SM holds one block either way and
    the copying warpgroup pays. On the H200, in turns, M = 9..32, W2 and W4
    (``benchmarks/results/cuda_wgmma_split_ws_h200.log``) without it the kernel took 0.76-0.81x
    the time with it on 11008 x 4096 and 5120 x 5120 (W2 at M = 16: 11.9 against 15.1 us, 9.0 against 11.4),
    0.94-0.98x on 4096 x 4096, 4096 x 14336 and 14336 x 4096; under two waves (4096 x 11008 in
    128 blocks, 1024 x 8192 in 64) 1.02-1.11x, so those keep it.
    Example: ``split_ws(MPGemmSpec(16, 11008, 4096, act_dtype="float16"), 344, True)`` is False."""
    return False if spec.M <= SPLIT_WS_MAX_M and grid >= SPLIT_BLOCKS else ws


def grid(spec, knobs: dict) -> int:
    """Thread blocks of the main kernel built with resolved ``knobs``: the stream-K grid, else
    tiles x K slices."""
    return knobs["streamk"] or blocks(spec, knobs["wg"], knobs["wn"], knobs["bm"]) * knobs["splits"]


def transfers(spec, **knobs) -> bool:
    """Whether ``knobs`` tuned on another shape (a transferred record) suit ``spec``: they
    build, and to M = :data:`SPLIT_MAX_M` (where the weights, not the tensor cores, set the time)
    their :func:`grid` reaches the default's or :data:`SPLIT_WAVE_MIN` of the SMs, whichever is
    fewer. Why: a tile and K slices tuned for a wider N leave most SMs idle on a narrower one. On
    the H200 (``benchmarks/results/cuda_model_shapes_h200.log``) 3584 x 18944 W4 at M = 64 took
    38.4 us with 8192 x 28672's record (256-row tiles in 4 slices: 56 blocks) against the
    default's 28.0 (224 blocks). At M = 128 fewer blocks of larger tiles can win: leave-one-out
    on the H200 log (``benchmarks/eval_transfer.py``) chose 1.17x slower kernels for 8192 x 8192
    with the grid checked there, and with it checked to M = 64 its table is unchanged.
    Example: ``transfers(MPGemmSpec(64, 3584, 18944, wbits=4, act_dtype="float16"), wg=2, wn=2,
    bm=64, splits=4)`` is False."""
    try:
        resolved = resolve_knobs(spec, **knobs)
    except ValueError:
        return False
    enough = min(grid(spec, resolve_knobs(spec)), SPLIT_WAVE_MIN * SMS)
    return spec.M > SPLIT_MAX_M or grid(spec, resolved) >= enough


def fits_batch(spec) -> bool:
    """Whether :data:`BATCH_TILE` is the default without stream-K: M = 65..128 (from
    :data:`SPLIT_MAX_M`, where the weights set the time; to its 128 tokens) and at least
    :data:`BATCH_MIN_BLOCKS` blocks."""
    wg, wn, bm, ws, ak = BATCH_TILE
    return (SPLIT_MAX_M < spec.M <= bm and blocks(spec, wg, wn, bm) >= BATCH_MIN_BLOCKS
            and fits(spec, wg, wn, bm, ws=ws, ak=ak))


def default_ak(spec, wg: int, wn: int, bm: int, ws) -> int:
    """A buffers of a whole unit (8) where they fit, else of two k16 steps (as :data:`BATCH_TILE`,
    timed as fast as one step), else one."""
    return next((ak for ak in (8, 2, 1) if registers(spec, wn, bm, ak) <= register_limit(wg, ws)), 8)


def default_late_scale(spec, wn: int, bm: int, wg: int, ws, ak: int = 8) -> int:
    """1 up to :data:`LATE_MAX_M` where the tile can scale late (:func:`can_scale_late`), else 0."""
    return int(spec.M <= LATE_MAX_M and can_scale_late(spec, wn, bm, wg, ws, ak))


def can_scale_late(spec, wn: int, bm: int, wg: int, ws, ak: int = 8) -> bool:
    """Whether the ``late_scale`` knob can be 1 (:func:`wgmma_kernel`): one scale group per K unit
    (groups of 128 weights or more), the format's constant zero (no zero points), at most
    :data:`LATE_MAX_TOKENS` tokens, A buffers of whole units (``ak = 8``: the unit's sums are
    scaled once its wgmma are done) and room for the unit's accumulators beside the others
    (:func:`late_registers`)."""
    return (groups_per_unit(spec) == 1 and not spec.zero_point and tokens(spec, bm) <= LATE_MAX_TOKENS and ak == 8
            and registers(spec, wn, bm) + late_registers(spec, wn, bm, 1) <= register_limit(wg, ws))


def late_registers(spec, wn: int, bm: int, late_scale: int) -> int:
    """Registers a thread spends on a unit's own accumulators with a late scale (as many again as
    its accumulators), 0 without."""
    return wn * tokens(spec, bm) // 2 if late_scale else 0


def streamk_tile(spec) -> tuple:
    """Stream-K's tile (wg, wn, bm, ws, ak): :data:`BATCH_TILE` to its 128 tokens (8192 x 28672 at
    M = 96: 84.8 / 92.3 us W2 / W4 against 94.0 / 105.3 in :data:`STREAMK_TILE`); past them the
    first of :data:`TILES`, one 256-token tile for all of M, where it fits (to 192 tokens): every
    weight is dequantized once, where the two 128-token tiles that gave their blocks did it twice.
    On the H200, in turns (``benchmarks/results/cuda_m160_m256_streamk_h200.log``, W2 / W4 us),
    8192 x 28672 at M = 160 took 123.1 / 132.5 against 191.4 / 203.1 (Humming 123.1 / 127.7),
    at M = 192 143.0 / 152.5 against 189.4 / 206.0 (Humming 185.5 / 187.2). Else
    :data:`STREAMK_TILE`, as timed before."""
    if spec.M <= BATCH_TILE[2]:
        return BATCH_TILE
    wg, wn, bm, ws = TILES[0][:4]
    if fits(spec, wg, wn, bm, ws=ws):
        return wg, wn, bm, ws, 8
    return STREAMK_TILE


def default_streamk(spec, tile) -> int:
    """Stream-K's grid (:data:`SMS` blocks, :func:`streamk_tile`) where the tile the block count
    chose (``tile`` of :data:`TILES`) takes fewer tokens than the stream-K tile, gives at most one
    wave, and the shares are long (:func:`long_shares`); else 0. Past M = 64: below, the weights
    set the time and split-K serves (8192 x 28672 at M = 16: 85.4 us with stream-K against 52.9
    with split-K). On the H200 (W2, with :data:`STREAMK_TILE`): 8192 x 28672 at M = 128 in
    128-token tiles on 132 blocks 100.6 us against 131.2 for 64-token tiles on 128 blocks (each
    weight dequantized once, not twice); 28672 x 8192 kept its 224 blocks of 128 tokens (100.7
    against 110.7 stream-K): the tensor cores and dequantization, not the last wave, set the time
    there."""
    wg, wn, bm, ws, ak = streamk_tile(spec)
    if (spec.M > SPLIT_MAX_M and tokens(spec, tile[2]) < tokens(spec, bm) and blocks(spec, *tile[:3]) <= SMS
            and long_shares(spec, wg, wn, bm, SMS) and fits(spec, wg, wn, bm, ws=ws, ak=ak)):
        return SMS
    return 0


def usable_splits(spec) -> list:
    """The values of ``KNOBS["splits"]`` that divide K's 128-weight units (each slice whole units)."""
    return [s for s in KNOBS["splits"] if (spec.K // 128) % s == 0]


def default_splits(spec, tile_blocks: int) -> int:
    """K slices for the last tile of :data:`TILES` (the one taken when no larger tile gives its
    blocks) with ``tile_blocks`` blocks: to M = 32 (:data:`SPLIT_WS_MAX_M`) the most of
    ``KNOBS["splits"]`` that divide K's units, then up to M = 128 (:data:`BATCH_TILE`'s tokens)
    the fewest that reach :data:`SPLIT_BLOCKS` blocks (or the most that divide K's units). At
    M = 16 the tuner timed 11008 x 4096 in 4 slices at 12.0 / 13.0 us (W2 / W4) against 15.1 /
    16.2 in 2 (``benchmarks/results/tuning_h200_4096_11008.md``'s run: more blocks per SM hide
    more of each one's latency while the weights stream). On the H200
    (``cuda_small_m_h200.md``) 8192 x 28672 W2 at M = 64 took 71.3 us with 2
    slices against 85.6 without, 4096 x 4096 9.8 with 4 against 14.1; at M = 128, where
    :func:`batch_split` finds no wave, 1024 x 8192 10.1 / 10.3 us (W2 / W4, 4 slices) against 25.3
    / 26.3 unsplit, 512 x 3584 5.5 / 6.2 against 12.1 / 12.4 (the tuner's times,
    ``tuning_logs/cuda.jsonl``). (With 64-token tiles on 8192 x 28672 at M = 128 slices lost,
    135.2 against 132.7 us: stream-K takes that product now.) Larger tiles keep none (28672 x
    8192 at M = 16: 40.8 us unsplit), but for :func:`one_wave_split`'s and :func:`batch_split`'s."""
    if spec.M > BATCH_TILE[2]:
        return 1
    usable = usable_splits(spec)
    if spec.M <= SPLIT_WS_MAX_M:
        return usable[-1]
    return next((s for s in usable if tile_blocks * s >= SPLIT_BLOCKS), usable[-1])


def resolve_knobs(spec, **given) -> dict:
    """The knobs a kernel is built with: ``given`` (None = default) over :func:`default_knobs`
    (``ws`` off where the given tile leaves no registers for the copying warpgroup; 3 stages
    where 4 do not fit). Raises ValueError for a value outside ``KNOBS``, or a tile over the
    register budget or the shared memory of a block."""
    knobs = merge_knobs("cuda_wgmma", KNOBS, default_knobs(spec), given)
    if given.get("streamk") and given.get("splits") is None:
        knobs["splits"] = 1            # stream-K given: no default split-K beside it
    if (given.get("ws") is None
            and registers(spec, knobs["wn"], knobs["bm"], knobs["ak"]) > register_limit(knobs["wg"], True)):
        knobs["ws"] = False            # a tile asked for without ws that the copying warpgroup would not fit
    if given.get("stages") is None and not fits(spec, knobs["wg"], knobs["wn"], knobs["bm"], knobs["stages"],
                                                 ak=knobs["ak"]):
        knobs["stages"] = 3
    if given.get("ak") is None and any(given.get(k) is not None for k in ("wg", "wn", "bm", "ws")):
        knobs["ak"] = default_ak(spec, knobs["wg"], knobs["wn"], knobs["bm"], knobs["ws"])   # for the tile given
    if given.get("late_scale") is None:    # the default for the tile given, not the default tile's
        knobs["late_scale"] = default_late_scale(spec, knobs["wn"], knobs["bm"], knobs["wg"], knobs["ws"], knobs["ak"])
    regs, limit = registers(spec, knobs["wn"], knobs["bm"], knobs["ak"]), register_limit(knobs["wg"], knobs["ws"])
    if regs > limit or not wgmma_fits(spec, knobs["wg"], knobs["bm"], knobs["ws"]):
        raise ValueError(f"cuda_wgmma knobs {knobs} need {regs} registers per thread for accumulators "
                         f"and A fragments (limit {limit} with {knobs['wg'] + knobs['ws']} warpgroups, and one "
                         f"wgmma's {tokens(spec, knobs['bm']) // 2 + 32} within the "
                         f"{launch_registers(knobs['wg'], knobs['ws'])} at launch): lower bm, wn, wg or ws")
    if knobs["streamk"] and knobs["splits"] > 1:
        raise ValueError(f"cuda_wgmma knobs splits={knobs['splits']} and streamk={knobs['streamk']} both "
                         "divide K among blocks: use one")
    if knobs["late_scale"] and not can_scale_late(spec, knobs["wn"], knobs["bm"], knobs["wg"], knobs["ws"],
                                                   knobs["ak"]):
        raise ValueError(f"cuda_wgmma knob late_scale=1 needs groups of 128 weights or more, no zero points, "
                         f"ak=8 and at most {LATE_MAX_TOKENS} tokens per block with registers to spare (knobs {knobs})")
    if knobs["streamk"] > iterations(spec, knobs["wg"], knobs["wn"], knobs["bm"]):
        raise ValueError(f"cuda_wgmma knob streamk={knobs['streamk']} asks for more blocks than the "
                         f"{iterations(spec, knobs['wg'], knobs['wn'], knobs['bm'])} tile units of the product")
    if (spec.K // 128) % knobs["splits"]:
        raise ValueError(f"cuda_wgmma knob splits={knobs['splits']} does not divide the {spec.K // 128} "
                         f"128-weight units of K={spec.K}")
    used = smem_bytes(spec, knobs["wg"], knobs["wn"], knobs["bm"], knobs["stages"])
    if used > SMEM_LIMIT:
        raise ValueError(f"cuda_wgmma knobs {knobs} need {used} bytes of shared memory "
                         f"(limit {SMEM_LIMIT}): lower stages, bm, wn or wg")
    return knobs


def registers(spec, wn: int, bm: int, ak: int = 8) -> int:
    """Accumulators (``64 x tokens / 128`` per tile) and two A buffers (``4 ak`` per tile: the
    fragments of ``ak`` k16 steps) per thread."""
    return wn * (tokens(spec, bm) // 2 + 2 * 4 * ak)


def stage_bytes(spec, wg: int, wn: int, bm: int) -> dict:
    """Bytes of one pipeline stage, by part (x, weights, scales, zero points)."""
    rows = 64 * wn * wg
    coef = rows * groups_per_unit(spec) * scale_size(spec)
    return {"x": tokens(spec, bm) * 256, "w": (rows // 16) * tc16_vectors(spec) * 512, "s": coef,
            "z": coef if spec.zero_point else 0}


def stage_size(spec, wg: int, wn: int, bm: int) -> int:
    """One stage, rounded up to :data:`ALIGN` so that every stage's x starts a swizzle atom."""
    return -(-sum(stage_bytes(spec, wg, wn, bm).values()) // ALIGN) * ALIGN


def smem_bytes(spec, wg: int, wn: int, bm: int, stages: int) -> int:
    """Dynamic shared memory of one block: 1 KB to align the ring, the stages, and two mbarriers
    per stage (used with ``ws``)."""
    return ALIGN + stages * (stage_size(spec, wg, wn, bm) + 16)


def schedule(func, spec, target, wg=None, wn=None, bm=None, stages=None, ws=None,
             splits=None, streamk=None, late_scale=None, ak=None) -> s_tir.Schedule:
    """The dequantize-to-registers + wgmma kernel for ``spec`` (``func`` is its reference semantics)."""
    knobs = resolve_knobs(spec, wg=wg, wn=wn, bm=bm, stages=stages, ws=ws, splits=splits, streamk=streamk,
                          late_scale=late_scale, ak=ak)
    return s_tir.Schedule(IRModule({"main": wgmma_kernel(spec, **knobs)}))


def x_byte(bm: int, row, s, h):
    """Byte offset in a stage's x (wgmma's B: ``bm`` token rows, K-major, 128-byte swizzle) of
    the 8 values of token ``row`` at k ``16 s + 8 h ..`` of the unit: rows of 64 k (128 bytes)
    whose 16-byte chunks are XORed with the row mod 8, one such 8-row atom after another, the
    second half of the unit's k after the first."""
    return (s // 4) * bm * 128 + row * 128 + T.bitwise_xor((s % 4) * 2 + h, row % 8) * 16


def x_step(bm: int, s: int) -> int:
    """Byte offset of k16 step ``s`` in a stage's x (the start address of its descriptor)."""
    return (s // 4) * bm * 128 + (s % 4) * 32


def wgmma_kernel(spec, wg: int, wn: int, bm: int, stages: int, ws: int, splits: int = 1, streamk: int = 0,
                 late_scale: int = 0, ak: int = 8):
    """The PrimFunc (module docstring). Arguments: ``x [M, K]`` fp16 or bf16, ``planes`` (``tc16``),
    ``scales [N/16, G, 16]``, ``zeros`` (zero points only), ``out [M, N]``.

    ``late_scale`` (as ``cuda_stream``'s): a unit's weights are dequantized to the exact ``q - c``
    (two instructions per pair, not three), its wgmma add into the unit's own accumulators
    ``gacc``, and once they are done (the unit's ``wgmma.wait_group``) these are scaled into the
    others by the unit's scales, kept as fp32 per A buffer."""
    M, N, K = spec.M, spec.N, spec.K
    P, BM, TW = stages, tokens(spec, bm), wn
    BN = 64 * wn * wg                         # weight rows per block
    NT, KU, gs = -(-N // 16), K // 128, spec.group
    SPLIT = splits > 1                        # split-K: partial sums, then a second kernel adds them
    STREAMK = streamk > 0                     # a persistent grid sharing out the tile units (stream_k)
    STORE_AT_END = not STREAMK                # (stream-K stores a tile where its units end)
    KB = KU // splits                         # 128-weight units of one block
    J4 = tc16_vectors(spec)                   # 16-byte weight vectors per lane per tile and unit
    warps = 4 * wg                            # warps that dequantize and multiply
    threads = 32 * warps + 128 * ws
    copiers = 4 * ws if ws else warps         # warps that copy: the copying warpgroups, or all
    slots = warps * TW                        # 16-row weight tiles of a block (its stage slots)
    nbm, nbn = -(-M // BM), -(-N // BN)
    TILES_MN = nbm * nbn                      # output tiles (M fastest: tiles of one weight tile together)
    ITERS = TILES_MN * KU                     # stream-K's iterations: (tile, K unit)
    FIX_CHUNKS = -(-BM * BN // 1024)          # fix-up blocks per cut tile (256 threads x 4 rows)
    FIX_PARTS = stream_k.most_blocks(KU, ITERS, streamk) if STREAMK else 0   # partial sums of a cut tile
    zp, sdt, adt = spec.zero_point, spec.scale_dtype, spec.act_dtype   # adt: x, the weights and out
    ssz = scale_size(spec)
    NG = groups_per_unit(spec)
    CP_TILE = 16 * NG * ssz // 16             # 16-byte copies of one slot's coefficients per unit
    EL16 = 16 // ssz                          # coefficients per 16-byte copy
    part = stage_bytes(spec, wg, wn, bm)
    STAGE = stage_size(spec, wg, wn, bm)
    OFF_W, OFF_S = part["x"], part["x"] + part["w"]
    OFF_Z = OFF_S + part["s"]
    PLANES, COEF, ZEROS = weight_buffers(spec, "tc16")   # lutc.layouts' shapes of tc16
    WORDS = smem_bytes(spec, wg, wn, bm, P) // 4
    ACC = BM // 2                             # fp32 accumulators per thread and tile (m64 x BM / 128)
    REGS_MOVED = moves_registers(spec, wg, wn, bm, ws, late_scale, ak)
    AK, CH = ak, 8 // ak                      # k16 steps per A buffer, A chunks per unit
    assert not late_scale or ak == 8, "a late scale scales a unit's sums once: whole-unit A buffers"
    COPYING = bool(ws)                        # ws copying warpgroups (TIR's if needs a bool)
    LATE = bool(late_scale)

    def row16(warp, t):
        """The block's 16-row tile of warp ``warp``'s tile ``t``: warpgroup, tile, warp in it."""
        return (warp // 4) * 4 * wn + t * 4 + warp % 4

    def share(c, bm_, bn_, sk):
        """Block ``c``'s work as ``(count, unit, tm, tn)``: how many K units it runs, and of its
        ``u``-th the unit of K and the output tile (token tile ``tm``, weight-row tile ``tn``).
        A block per tile walks its tile's units (its slice ``sk`` with split-K); with stream-K
        block ``c`` runs iterations ``start(c) ..`` of the tile-major order, across tiles."""
        if STREAMK:
            first = stream_k.start(c, ITERS, streamk)
            return (stream_k.start(c + 1, ITERS, streamk) - first, lambda u: (first + u) % KU,
                    lambda u: (first + u) // KU % nbm, lambda u: (first + u) // KU // nbm)
        return (KB, (lambda u: sk * KB + u) if SPLIT else (lambda u: u), lambda u: bm_, lambda u: bn_)

    @T.macro
    def copy_unit(j, st, ct, bm_, bn_, x, planes, scales, zeros):
        """Start copier thread ``ct``'s copies of unit ``j`` (of all K) into the stage at shared
        byte ``st``: 16-byte chunks of x (16 per token row), 16-byte vectors of the slots' weights,
        and their coefficients, dealt out over the ``copiers`` warps. Slot ``w TW + t`` holds the weights
        that warp ``w`` dequantizes as its tile ``t``."""
        cw = T.meta_var(ct // 32)
        lane = T.meta_var(ct % 32)
        for e in T.unroll(-(-BM * 16 // (32 * copiers))):
            chunk = T.meta_var(ct + e * 32 * copiers)          # 16 bytes of x: token row, 8 k
            xrow = T.meta_var(chunk // 16)
            if chunk < BM * 16 and bm_ * BM + xrow < M:
                T.evaluate(cp16(st + T.Cast("uint32", x_byte(BM, xrow, (chunk % 16) // 2, chunk % 2)),
                                T.address_of(x[bm_ * BM + xrow, j * 128 + (chunk % 16) * 8])))
        for e in T.unroll(-(-slots * J4 // copiers)):
            vec = T.meta_var(cw + e * copiers)                 # (slot, 16-byte vector) of the unit
            tile = T.meta_var(bn_ * (BN // 16) + row16((vec // J4) // TW, (vec // J4) % TW))
            if vec < slots * J4 and tile < NT:
                T.evaluate(cp16(st + T.Cast("uint32", OFF_W + (vec * 32 + lane) * 16),
                                T.address_of(planes[tile, j, vec % J4, lane, 0])))
        for e in T.unroll(-(-slots * CP_TILE // (32 * copiers))):
            copy = T.meta_var(ct + e * 32 * copiers)           # (slot, 16-byte chunk) of coefficients
            tile = T.meta_var(bn_ * (BN // 16) + row16((copy // CP_TILE) // TW, (copy // CP_TILE) % TW))
            group = T.meta_var((j * 128) // gs + ((copy % CP_TILE) * EL16) // 16)
            row = T.meta_var(((copy % CP_TILE) * EL16) % 16)
            if copy < slots * CP_TILE and tile < NT:
                T.evaluate(cp16(st + T.Cast("uint32", OFF_S + copy * 16), T.address_of(scales[tile, group, row])))
                if zp:
                    T.evaluate(cp16(st + T.Cast("uint32", OFF_Z + copy * 16), T.address_of(zeros[tile, group, row])))

    @T.macro
    def read_codes(st, t, wreg, sreg, zreg, sf, buf, warp, g4, lane):
        """The lane's codes of tile ``t`` of the unit in the stage at ``st`` and their rows'
        coefficients (with a late scale the scales into ``sf[buf]``)."""
        for j4 in T.unroll(J4):
            T.evaluate(lds128(st + T.Cast("uint32", OFF_W + (((warp * TW + t) * J4 + j4) * 32 + lane) * 16),
                              T.address_of(wreg[t, j4, 0])))
        for t8 in T.unroll(2):
            for ng in T.unroll(NG):
                # coefficient of row t8 * 8 + g4 in the unit's group ng
                coef = T.meta_var((((warp * TW + t) * NG + ng) * 16 + t8 * 8 + g4) * ssz)
                if LATE:    # (one group per unit)
                    sf[buf, t, t8] = lds_scale_f32(st + T.Cast("uint32", OFF_S + coef), sdt)
                else:
                    sreg[t, t8, ng] = lds_scale_h2(st + T.Cast("uint32", OFF_S + coef), sdt, adt)
                if zp:
                    zreg[t, t8, ng] = lds_scale_h2(st + T.Cast("uint32", OFF_Z + coef), sdt, adt)

    @T.macro
    def dequantize(st, chunk, buf, areg, wreg, sreg, zreg, sf, warp, g4, lane):
        """This lane's A fragments of ``chunk`` (k16 steps ``chunk AK ..``) of the unit in the
        stage at ``st``, into A buffer ``buf``: register ``t8 + 2 h`` of the chunk's step ``s`` is
        rows ``g4 + 8 t8`` at k ``16 (chunk AK + s) + 8 h + 2 c4`` (with a late scale the exact
        code minus its centre, and the rows' scales into ``sf[buf]``). The unit's codes and
        coefficients are read with its first chunk."""
        for t in T.unroll(TW):
            if chunk == 0:
                read_codes(st, t, wreg, sreg, zreg, sf, buf, warp, g4, lane)
            for s in T.unroll(AK):
                for t8 in T.unroll(2):
                    for h in T.unroll(2):
                        areg[buf, t, s, t8 + 2 * h] = tc16_fragment(spec, wreg, None if LATE else sreg, zreg, (), t,
                                                                    chunk * AK + s, t8, h)

    @T.macro
    def multiply(i, chunk, ab, areg, acc, stage):
        """Issue the wgmma of unit ``i``'s ``chunk`` (A buffer ``ab``, x in its stage) as one
        group, adding into ``acc`` (with a late scale: the unit's own accumulators)."""
        T.evaluate(wgmma_fence())
        for t in T.unroll(TW):
            if LATE:    # (one chunk per unit)
                # the unit's first wgmma sets its sums (scale-d 0): zeros written into them between
                # the units made ptxas serialize the wgmma (C7519, and C7520 with one tile)
                T.evaluate(wgmma_m64k16(T.address_of(acc[t * ACC]), BM, 128, areg[ab, t, 0, 0], areg[ab, t, 0, 1],
                                        areg[ab, t, 0, 2], areg[ab, t, 0, 3], stage(i), adt, accumulate=False))
            for s in T.unroll(1 if LATE else 0, AK):
                T.evaluate(wgmma_m64k16(
                    T.address_of(acc[t * ACC]), BM, 128, areg[ab, t, s, 0], areg[ab, t, s, 1],
                    areg[ab, t, s, 2], areg[ab, t, s, 3], stage(i) + T.Cast("uint32", x_step(BM, chunk * AK + s)), adt))
        T.evaluate(wgmma_commit())

    @T.macro
    def scale_unit(ab, acc, gacc, sf):
        """Late scale, once a unit's wgmma are done: its sums ``gacc`` times its rows' scales
        ``sf[ab]`` (accumulator ``j8 4 + q`` is row ``g4 + 8 (q // 2)``) into ``acc`` (the next
        unit's first wgmma overwrites ``gacc``)."""
        for t in T.unroll(TW):
            T.evaluate(wgmma_fence_acc(T.address_of(gacc[t * ACC]), BM))
        for t in T.unroll(TW):
            for j8 in T.unroll(BM // 8):
                for q in T.unroll(4):
                    a = T.meta_var(t * ACC + j8 * 4 + q)
                    acc[a] = acc[a] + gacc[a] * sf[ab, t, q // 2]

    @T.macro
    def store(acc, warp, g4, c4, bm_, bn_, sk, out, psum, whole, slot):
        """Epilogue: accumulator ``t ACC + j8 4 + q`` is weight row ``g4 + 8 (q // 2)`` of the
        warp's 16 rows of tile ``t``, token ``j8 8 + 2 c4 + q % 2`` of the block; into ``out``,
        or with split-K into the block's slice ``sk`` of the fp32 partial sums ``psum``; with
        stream-K a tile the block did ``whole`` into ``out``, a cut one into its ``slot``."""
        for t in T.unroll(TW):
            T.evaluate(wgmma_fence_acc(T.address_of(acc[t * ACC]), BM))
        for t in T.unroll(TW):
            for j8 in T.unroll(BM // 8):
                for q in T.unroll(4):
                    if (bm_ * BM + j8 * 8 + c4 * 2 + q % 2 < M
                            and bn_ * BN + row16(warp, t) * 16 + g4 + (q // 2) * 8 < N):
                        if STREAMK:
                            if whole:
                                out[bm_ * BM + j8 * 8 + c4 * 2 + q % 2, bn_ * BN + row16(warp, t) * 16 + g4 + (q // 2) * 8] = \
                                    T.Cast(adt, acc[t * ACC + j8 * 4 + q])
                            else:
                                psum[sk, slot, j8 * 8 + c4 * 2 + q % 2, row16(warp, t) * 16 + g4 + (q // 2) * 8] = \
                                    acc[t * ACC + j8 * 4 + q]
                        elif SPLIT:
                            psum[sk, bm_ * BM + j8 * 8 + c4 * 2 + q % 2, bn_ * BN + row16(warp, t) * 16 + g4 + (q // 2) * 8] = \
                                acc[t * ACC + j8 * 4 + q]
                        else:
                            out[bm_ * BM + j8 * 8 + c4 * 2 + q % 2, bn_ * BN + row16(warp, t) * 16 + g4 + (q // 2) * 8] = \
                                T.Cast(adt, acc[t * ACC + j8 * 4 + q])

    @T.macro
    def store_tile(acc, warp, g4, c4, c, out, psum, tm_, tn_):
        """Stream-K: store block ``c``'s sums of tile ``(tm_, tn_)`` (whole, or a cut one's
        partial sums into its slot) and start the next tile from zero."""
        tile = T.meta_var(tn_ * nbm + tm_)
        store(acc, warp, g4, c4, tm_, tn_, c, out, psum, stream_k.whole(tile, KU, ITERS, streamk),
              stream_k.slot(c, tile, KU, TILES_MN, ITERS, streamk))
        for q in T.unroll(TW * ACC):
            acc[q] = T.float32(0)

    @T.macro
    def receive(u, first, tx, count, tm, tn, x, planes, scales, zeros, stage, full, unit):
        """Wait until unit ``u``'s stage is in shared memory for every computing thread (and, in
        the async proxy, for wgmma). Without ``ws`` a block barrier publishes the copies, after
        which (past the ``first`` unit) the stage of unit ``u - 2`` is free for the copies of
        unit ``u + P - 2``."""
        if COPYING:
            T.evaluate(mbar_wait(full(u), (u // P) % 2))
            T.evaluate(proxy_fence_async())
        else:
            T.evaluate(cp_wait(P - 2 if first else P - 3))   # (the prologue has one group fewer)
            T.evaluate(proxy_fence_async())
            T.tvm_storage_sync("shared")
            if not first:
                if u + P - 2 < count:
                    copy_unit(unit(u + P - 2), stage(u + P - 2), tx, tm(u + P - 2), tn(u + P - 2), x, planes, scales,
                              zeros)
                T.evaluate(cp_commit())                # empty groups keep the count uniform

    @T.macro
    def compute(x, planes, scales, zeros, out, psum, sk, tx, areg, wreg, sreg, zreg, acc, gacc, sf, stage, full,
                empty, count, unit, tm, tn):
        """A computing warp's K loop (module docstring) and its epilogue; with stream-K the
        epilogue of each tile where its units end, the accumulators zeroed for the next."""
        warp = T.meta_var(tx // 32)
        lane = T.meta_var(tx % 32)
        g4 = T.meta_var(lane // 4)                     # fragment row (and row + 8)
        c4 = T.meta_var(lane % 4)                      # fragment column pair
        receive(0, True, tx, count, tm, tn, x, planes, scales, zeros, stage, full, unit)
        dequantize(stage(0), 0, 0, areg, wreg, sreg, zreg, sf, warp, g4, lane)
        # the loop over units is unrolled by two where a unit is one chunk, so that both A
        # buffers have static register names; with several chunks a unit alternates them itself
        for i2 in range((count + 1) // 2 if CH == 1 else count):
            for ab in T.unroll(2 if CH == 1 else 1):
                i = T.meta_var(2 * i2 + ab if CH == 1 else i2)    # the unit
                if i < count:
                    for c in T.unroll(CH):
                        b = T.meta_var(ab if CH == 1 else c % 2)    # chunk c's A buffer
                        multiply(i, c, b, areg, gacc if LATE else acc, stage)
                        if c + 1 < CH:
                            dequantize(stage(i), c + 1, 1 - b, areg, wreg, sreg, zreg, sf, warp, g4, lane)
                        if c + 1 == CH and i + 1 < count:
                            receive(i + 1, False, tx, count, tm, tn, x, planes, scales, zeros, stage, full, unit)
                            dequantize(stage(i + 1), 0, 1 - b, areg, wreg, sreg, zreg, sf, warp, g4, lane)
                        T.evaluate(wgmma_wait(0))      # chunk c done: its A buffer free
                    if LATE:
                        scale_unit(ab, acc, gacc, sf)
                    if COPYING:
                        T.evaluate(mbar_arrive(empty(i)))
                    if STREAMK:
                        if unit(i) == KU - 1 or i == count - 1:    # the tile's last unit here
                            store_tile(acc, warp, g4, c4, sk, out, psum, tm(i), tn(i))
        if STORE_AT_END:
            store(acc, warp, g4, c4, tm(0), tn(0), sk, out, psum, True, 0)

    @T.macro
    def block(bm_, bn_, sk, x, planes, scales, zeros, out, psum):
        """Thread block ``(bm_, bn_)`` (and K slice ``sk`` with split-K; stream-K block ``sk``):
        its threads' work."""
        for tx in T.thread_binding(threads, thread="threadIdx.x"):
            if REGS_MOVED:   # ptxas must know the registers at entry: one block per SM
                T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", 1)
            # [alignment | stage 0 | ... | stage P-1 | P "full" and P "empty" mbarriers],
            # each stage [x | weights | scales | zeros]: written by cp.async, read through
            # PTX (see cuda_stream)
            smem = T.alloc_buffer((WORDS,), "uint32", scope="shared.dyn")
            wreg = T.alloc_buffer((TW, J4, 4), "uint32", scope="local")
            sreg = T.alloc_buffer((TW, 2, NG), "uint32", scope="local")
            zreg = T.alloc_buffer((TW, 2, NG), "uint32", scope="local")
            areg = T.alloc_buffer((2, TW, AK, 4), "uint32", scope="local")
            acc = T.alloc_buffer((TW * ACC,), "float32", scope="local")
            gacc = T.alloc_buffer((TW * ACC if LATE else 1,), "float32", scope="local")   # a unit's sums
            sf = T.alloc_buffer((2, TW, 2), "float32", scope="local")       # their rows' scales, per A buffer
            base = T.alloc_buffer((1,), "uint32", scope="local")
            # base: the first 1024-byte boundary in the buffer
            base[0] = T.bitwise_and(T.cuda.cvta_generic_to_shared(T.address_of(smem[0])) + T.uint32(ALIGN - 1),
                                    T.uint32(~(ALIGN - 1) & 0xFFFFFFFF))
            T.evaluate(T.address_of(smem[WORDS - 1]))
            # this block's K units, and of each its unit of K, token tile and weight-row tile
            count, unit, tm, tn = T.meta_var(share(sk, bm_, bn_, sk))
            stage = T.meta_var(lambda u: base[0] + T.Cast("uint32", (u % P) * STAGE))
            full = T.meta_var(lambda u: base[0] + T.Cast("uint32", P * STAGE + (u % P) * 8))
            empty = T.meta_var(lambda u: base[0] + T.Cast("uint32", P * STAGE + (P + u % P) * 8))
            for q in T.unroll(TW * ACC):
                acc[q] = T.float32(0)
            if COPYING:
                # the copying warpgroups copy, the others wait on mbarriers: "full" (the
                # copier threads' cp.async landed) and "empty" (every computing thread
                # is done with the stage), no block barrier in the K loop
                if tx == 0:
                    for u in range(P):
                        T.evaluate(mbar_init(full(u), 128 * ws))
                        T.evaluate(mbar_init(empty(u), 32 * warps))
                T.tvm_storage_sync("shared")
                if tx >= 32 * warps:
                    if REGS_MOVED:
                        T.evaluate(setmaxnreg(False, COPIER_REGS))
                    for u in range(count):
                        if u >= P:                     # its stage's previous unit released
                            T.evaluate(mbar_wait(empty(u), (u // P + 1) % 2))
                        copy_unit(unit(u), stage(u), tx - 32 * warps, tm(u), tn(u), x, planes, scales, zeros)
                        T.evaluate(cp_mbar_arrive(full(u)))
                else:
                    if REGS_MOVED:
                        T.evaluate(setmaxnreg(True, computing_registers(wg, ws)))
                    compute(x, planes, scales, zeros, out, psum, sk, tx, areg, wreg, sreg, zreg, acc, gacc, sf,
                            stage, full, empty, count, unit, tm, tn)
            else:
                for j in range(P - 1):            # prologue: units 0 .. P-2 in flight
                    if j < count:
                        copy_unit(unit(j), stage(j), tx, tm(j), tn(j), x, planes, scales, zeros)
                    T.evaluate(cp_commit())
                compute(x, planes, scales, zeros, out, psum, sk, tx, areg, wreg, sreg, zreg, acc, gacc, sf, stage,
                        full, empty, count, unit, tm, tn)

    @T.macro
    def add_splits(psum, out):
        """Split-K's second kernel: ``out`` = the sum of the slices of ``psum``, in slice order."""
        for rb in T.thread_binding(-(-M * N // 256), thread="blockIdx.x"):
            for rt in T.thread_binding(256, thread="threadIdx.x"):
                tot = T.alloc_buffer((1,), "float32", scope="local")
                if rb * 256 + rt < M * N:
                    tot[0] = psum[0, (rb * 256 + rt) // N, (rb * 256 + rt) % N]
                    for sl in T.unroll(1, splits):
                        tot[0] = tot[0] + psum[sl, (rb * 256 + rt) // N, (rb * 256 + rt) % N]
                    out[(rb * 256 + rt) // N, (rb * 256 + rt) % N] = T.Cast(adt, tot[0])

    @T.macro
    def fix_up(psum, out):
        """Stream-K's second kernel: the blocks ``(f, chunk)`` add the partial sums of the tile
        that boundary ``f`` first cuts (if it is the first to cut it), 4 neighbouring weight rows
        per thread (16-byte loads, every partial's load in flight at once), in block order."""
        for fb in T.thread_binding((streamk - 1) * FIX_CHUNKS, thread="blockIdx.x"):
            for ft in T.thread_binding(256, thread="threadIdx.x"):
                tot = T.alloc_buffer((4,), "float32", scope="local")
                if stream_k.fixes(fb // FIX_CHUNKS + 1, KU, ITERS, streamk):
                    tile = T.meta_var(stream_k.start(fb // FIX_CHUNKS + 1, ITERS, streamk) // KU)
                    c0 = T.meta_var(stream_k.blocks_of(tile, KU, ITERS, streamk)[0])
                    c1 = T.meta_var(stream_k.blocks_of(tile, KU, ITERS, streamk)[1])
                    tok = T.meta_var(((fb % FIX_CHUNKS) * 256 + ft) * 4 // BN)     # of the tile
                    row = T.meta_var(((fb % FIX_CHUNKS) * 256 + ft) * 4 % BN)
                    for e in T.unroll(4):
                        tot[e] = T.float32(0)
                    for cc in T.unroll(FIX_PARTS):     # the tile's partial sums, block c0 + cc
                        if c0 + cc <= c1 and tok < BM:
                            for e in T.vectorized(4):
                                tot[e] = tot[e] + psum[c0 + cc, stream_k.slot(c0 + cc, tile, KU, TILES_MN, ITERS,
                                                                              streamk), tok, row + e]
                    for e in T.unroll(4):
                        if tok < BM and (tile % nbm) * BM + tok < M and (tile // nbm) * BN + row + e < N:
                            out[(tile % nbm) * BM + tok, (tile // nbm) * BN + row + e] = T.Cast(adt, tot[e])

    @T.prim_func(s_tir=True)
    def main(x: T.Buffer((M, K), adt), planes: T.Buffer(PLANES, "int32"),
             scales: T.Buffer(COEF, sdt), zeros: T.Buffer(ZEROS, sdt),
             out: T.Buffer((M, N), adt)):
        T.func_attr({"tirx.noalias": True})
        if STREAMK:
            psum = T.alloc_buffer((streamk, 2, BM, BN), "float32")   # global: TVM's workspace
            for c in T.thread_binding(streamk, thread="blockIdx.x"):
                block(0, 0, c, x, planes, scales, zeros, out, psum)
            fix_up(psum, out)
        elif SPLIT:
            psum = T.alloc_buffer((splits, M, N), "float32")   # global: TVM's workspace
            for bm_ in T.thread_binding(nbm, thread="blockIdx.x"):
                for bn_ in T.thread_binding(nbn, thread="blockIdx.y"):
                    for sk in T.thread_binding(splits, thread="blockIdx.z"):
                        block(bm_, bn_, sk, x, planes, scales, zeros, out, psum)
            add_splits(psum, out)
        else:
            for bm_ in T.thread_binding(nbm, thread="blockIdx.x"):
                for bn_ in T.thread_binding(nbn, thread="blockIdx.y"):
                    block(bm_, bn_, 0, x, planes, scales, zeros, out, out)

    return main if zp else drop_param(main, "zeros")
