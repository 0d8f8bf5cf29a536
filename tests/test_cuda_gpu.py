"""CUDA kernels on a GPU (the module skips without one): every CUDA schedule against the float64
reference, and the runtime's stream, graph-capture and no-sync behaviour.

Cases rotate so that every format x bit width (x zero points) meets several group sizes, every
M of {1, 2, 3, 5, 16, 33, 128} and every activation dtype; N = 1000 is a multiple of no tile
(32, 64, 128 rows), and K = 11008 (LLaMA MLP, 86 slices of 128) appears. Each schedule that
supports a case runs it; outputs are poisoned with NaN first, so an unwritten element fails.
"""
import itertools

import pytest
import torch

import lutc
import schedules
from lutc.testing import FORMATS, GROUP_SIZES, random_case, reference, rel_error, tolerance

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MS = (1, 2, 3, 5, 16, 33, 128)
NKS = ((1000, 1024), (200, 11008), (1000, 512))
ACTS = ("float16", "bfloat16", "float32")
CUDA_SCHEDULES = [m for m in schedules.CANDIDATES["cuda"]]


def _cases():
    for idx, ((fmt, wbits, zp), rep) in enumerate(itertools.product(FORMATS, range(3))):
        gs = -1 if fmt == "ternary" else GROUP_SIZES[(idx + rep) % 4]
        M = MS[idx % len(MS)]
        N, K = NKS[(idx // 7 + rep) % len(NKS)]
        act = ACTS[(idx + idx // 3) % 3]
        yield lutc.MPGemmSpec(M, N, K, wbits=wbits, format=fmt, group_size=gs, zero_point=zp,
                              act_dtype=act, symmetrize=bool(idx % 2))


CASES = list(_cases())


def _id(spec):
    return (f"{spec.format}-w{spec.wbits}{'-zp' if spec.zero_point else ''}-gs{spec.group_size}"
            f"-M{spec.M}-{spec.N}x{spec.K}-{spec.act_dtype}{'-sym' if spec.symmetrize else ''}")


def schedule_params():
    """``(spec, schedule name)`` of every case and CUDA schedule that supports it (also what
    ``benchmarks/bench_cuda.py --precompile --tests`` builds)."""
    for spec in CASES:
        for module in CUDA_SCHEDULES:
            name = module.__name__.rsplit(".", 1)[-1]
            if module.supports(spec, lutc.target.resolve("cuda")):
                yield pytest.param(spec, name, id=f"{name}-{_id(spec)}")


def test_cases_cover_the_issue_grid():
    assert {s.M for s in CASES} == set(MS)
    assert {s.group_size for s in CASES} == set(GROUP_SIZES)
    assert {(s.format, s.wbits, s.zero_point) for s in CASES} == set(FORMATS)
    assert all(s.N % 32 for s in CASES)
    # every M that the LUT kernel supports is run by it
    lut = {s.M for s in CASES if schedules.cuda_lut.supports(s, lutc.target.resolve("cuda"))}
    assert lut == {m for m in MS if m <= schedules.cuda_lut.MAX_M}


@pytest.mark.parametrize("spec,schedule", list(schedule_params()))
def test_schedule_matches_reference(spec, schedule):
    kernel = lutc.build(spec, target="cuda", schedule=schedule)
    assert kernel.runnable and kernel.schedule == schedule
    x, qw = random_case(spec, seed=spec.N + spec.M + spec.wbits)
    out = torch.full((spec.M, spec.N), float("nan"), dtype=x.dtype, device="cuda")
    kernel(x.cuda(), qw.to("cuda"), out=out)
    torch.cuda.synchronize()
    assert rel_error(out.cpu(), reference(x, qw)) < tolerance(spec)


LUT_KNOBS = [dict(warps=1, tiles=1, rows=1, units=1), dict(warps=4, tiles=1, rows=2, units=1),
             dict(warps=1, tiles=4, rows=2, units=4)]
# N = 1000 leaves the last row tiles of a block empty; K = 11008 leaves chunks ragged.
KNOB_SPEC = lutc.MPGemmSpec(2, 1000, 11008, wbits=3, group_size=64, zero_point=True, act_dtype="float16")
MMA_KNOBS = [dict(warps=2, wn=2, nw=2, mt=1, xsm=False), dict(warps=2, wn=2, nw=2, mt=2, xsm=True),
             dict(warps=1, wn=4, nw=2, mt=8, xsm=False), dict(warps=2, wn=2, nw=2, mt=1, xsm=True, units=2),
             dict(warps=1, wn=4, nw=2, mt=4, xsm=False, units=2)]
MMA_SPEC = lutc.MPGemmSpec(40, 1000, 11008, wbits=4, group_size=32, zero_point=True, act_dtype="float16")
# cuda_stream: split K inside the block, 1-6 stages deep (more stages than some warps have steps),
# A fragments with and without rows 8..15, partial row tiles (N = 1000), scale groups of 32 to all of K.
STREAM_CASES = [
    (lutc.MPGemmSpec(13, 1000, 11008, wbits=4, group_size=64, zero_point=True, act_dtype="float16"),
     dict(warps=1, wn=4, nw=2, stages=2, swap_upto=8)),
    (lutc.MPGemmSpec(13, 1000, 11008, wbits=2, group_size=32, act_dtype="float16"),
     dict(warps=2, wn=2, nw=1, stages=4)),
    (lutc.MPGemmSpec(3, 1000, 1536, wbits=4, group_size=-1, act_dtype="float16"),
     dict(warps=2, wn=1, nw=4, stages=3)),
    (lutc.MPGemmSpec(8, 200, 512, wbits=2, group_size=128, zero_point=True, act_dtype="float16"),
     dict(warps=2, wn=1, nw=1, stages=6)),
    # late scale (the groups' fp32 sums scaled, M <= 8 without zero points): groups of 32 and 64,
    # a row's one scale (W1, ternary), fp32 scales, bf16; and the weights scaled first, as before
    (lutc.MPGemmSpec(5, 1000, 11008, wbits=2, group_size=32, act_dtype="bfloat16"),
     dict(warps=2, wn=2, nw=1, stages=4, late_scale=1)),
    (lutc.MPGemmSpec(8, 1000, 1536, wbits=3, group_size=64, act_dtype="float16", scale_dtype="float32"),
     dict(warps=4, wn=1, nw=2, stages=3, late_scale=1)),
    (lutc.MPGemmSpec(1, 200, 14336, wbits=1, group_size=-1, act_dtype="float16"), dict(late_scale=1)),
    (lutc.MPGemmSpec(3, 1000, 1536, format="ternary", act_dtype="bfloat16"),
     dict(warps=1, wn=2, nw=2, stages=2, late_scale=1)),
    (lutc.MPGemmSpec(4, 1000, 11008, wbits=4, group_size=128, act_dtype="float16"), dict(late_scale=0)),
    # decode on a narrow weight: a row tile per warp (the M = 1 defaults where N / 32 blocks are few)
    (lutc.MPGemmSpec(1, 1000, 11008, wbits=4, group_size=128, act_dtype="float16"), dict(wn=2, nw=1, stages=6)),
    (lutc.MPGemmSpec(1, 1000, 14336, wbits=2, group_size=128, act_dtype="bfloat16"), dict(nw=1, stages=8)),
    # K in 8 slices per block (8 warps): a slice with fewer units than the others (86 units)
    (lutc.MPGemmSpec(1, 1000, 11008, wbits=2, group_size=128, act_dtype="float16"),
     dict(warps=8, wn=1, nw=4, stages=2, late_scale=1)),
    (lutc.MPGemmSpec(13, 1000, 11008, wbits=4, group_size=64, zero_point=True, act_dtype="float16"),
     dict(warps=8, wn=1, nw=2, stages=2, warp_sync=1)),
    # warp_sync: each warp copies its own rows of x and waits on __syncwarp (x per warp beside
    # other warps of its K slice, rows 8..15, zero points, two stages)
    (lutc.MPGemmSpec(13, 1000, 11008, wbits=2, group_size=32, act_dtype="float16"),
     dict(warps=2, wn=2, nw=1, stages=4, warp_sync=1)),
    (lutc.MPGemmSpec(5, 1000, 11008, wbits=4, group_size=64, zero_point=True, act_dtype="float16"),
     dict(warps=4, wn=1, nw=2, stages=3, warp_sync=1)),
    (lutc.MPGemmSpec(1, 1000, 14336, wbits=2, group_size=128, act_dtype="bfloat16"),
     dict(warps=4, wn=1, nw=4, stages=2, late_scale=1, warp_sync=1)),
    # the product transposed past 8 tokens (swap_upto=16: two 8-token B fragments per tile) with the
    # late scale, groups of 32, bf16, ternary; zero points (no late scale); x as A beside it
    (lutc.MPGemmSpec(13, 1000, 11008, wbits=2, group_size=32, act_dtype="float16"),
     dict(warps=2, wn=2, nw=1, stages=4, swap_upto=16, late_scale=1)),
    (lutc.MPGemmSpec(16, 1000, 11008, wbits=4, group_size=128, act_dtype="bfloat16"),
     dict(warps=8, wn=1, nw=1, stages=2, swap_upto=16)),
    (lutc.MPGemmSpec(9, 1000, 1536, wbits=2, group_size=64, zero_point=True, act_dtype="float16"),
     dict(warps=4, wn=2, nw=2, stages=2, warp_sync=0, swap_upto=16)),
    (lutc.MPGemmSpec(16, 200, 1536, format="ternary", act_dtype="bfloat16"),
     dict(warps=4, wn=1, nw=4, stages=2, swap_upto=16)),
    (lutc.MPGemmSpec(11, 1000, 11008, wbits=3, group_size=128, act_dtype="float16"),
     dict(warps=4, wn=2, nw=2, stages=2, warp_sync=0, swap_upto=8)),
    # raw codes (a pair read by one LOP3 as 2^(P-e) + q; the offsets' products taken off each group's
    # sums): W2 / W4 / W3 / W1 / ternary, groups of 32..128 and a row's one scale, fp16 and bf16,
    # fp32 scales, 1..16 tokens, 8 warps
    (lutc.MPGemmSpec(1, 1000, 14336, wbits=2, group_size=128, act_dtype="float16"), dict(raw_codes=1)),
    (lutc.MPGemmSpec(1, 1000, 11008, wbits=2, group_size=128, act_dtype="bfloat16"),
     dict(warps=8, wn=1, nw=2, stages=4, raw_codes=1)),
    (lutc.MPGemmSpec(3, 1000, 11008, wbits=4, group_size=64, act_dtype="bfloat16"), dict(raw_codes=1)),
    (lutc.MPGemmSpec(8, 1000, 1536, wbits=3, group_size=32, act_dtype="float16", scale_dtype="float32"),
     dict(warps=4, wn=1, nw=2, stages=3, raw_codes=1)),
    (lutc.MPGemmSpec(1, 200, 14336, wbits=1, group_size=-1, act_dtype="float16"), dict(raw_codes=1)),
    (lutc.MPGemmSpec(5, 1000, 1536, format="ternary", act_dtype="bfloat16"), dict(raw_codes=1)),
    (lutc.MPGemmSpec(13, 1000, 11008, wbits=2, group_size=64, act_dtype="float16"),
     dict(warps=4, wn=2, nw=1, stages=3, warp_sync=0, swap_upto=16, raw_codes=1)),
    (lutc.MPGemmSpec(4, 1000, 11008, wbits=2, group_size=128, act_dtype="float16"),
     dict(warps=8, wn=1, nw=4, stages=2, raw_codes=1)),
]


# cuda_wgmma (sm_90a): one and two warpgroups, one and two 64-row tiles each, 64-256 tokens per
# block (fewer where M is smaller: wgmma N = 8, 16, 24, 40, ...), 3 and 4 stages; M of the issue
# grid (tokens past M in a block), N = 1000 and 200 (partial blocks and tiles), K of 12, 86 and
# 112 units, scale groups of 32 to all of K, fp32 scales, zero points; with and without the copying
# warpgroup (ws).
WGMMA_CASES = [
    (lutc.MPGemmSpec(1, 1000, 1536, wbits=4, group_size=128, act_dtype="float16"), dict()),
    (lutc.MPGemmSpec(2, 1000, 11008, wbits=2, group_size=32, zero_point=True, act_dtype="float16"),
     dict(wg=1, stages=4, ws=False)),
    (lutc.MPGemmSpec(3, 1000, 14336, wbits=4, group_size=-1, act_dtype="float16"), dict(wg=2, wn=2, stages=3, ws=False)),
    (lutc.MPGemmSpec(5, 1000, 1536, wbits=2, group_size=64, act_dtype="float16", scale_dtype="float32"),
     dict(wg=2, wn=1, bm=64, stages=3, ws=False)),
    (lutc.MPGemmSpec(16, 200, 11008, wbits=4, group_size=64, zero_point=True, act_dtype="float16"), dict()),
    (lutc.MPGemmSpec(33, 1000, 14336, wbits=2, group_size=128, act_dtype="float16"),
     dict(wg=1, wn=2, bm=64, ws=False)),
    (lutc.MPGemmSpec(128, 1000, 11008, wbits=4, group_size=128, act_dtype="float16"), dict(wg=2, bm=128, ws=False)),
    (lutc.MPGemmSpec(257, 1000, 1536, wbits=2, group_size=32, zero_point=True, act_dtype="float16"),
     dict(wg=2, bm=256, stages=3)),
    (lutc.MPGemmSpec(2048, 1000, 14336, wbits=4, group_size=64, zero_point=True, act_dtype="float16"), dict()),
    (lutc.MPGemmSpec(300, 1000, 11008, wbits=4, group_size=128, act_dtype="float16", scale_dtype="float32"),
     dict(wg=1, bm=256, stages=3, ws=False)),
    (lutc.MPGemmSpec(2048, 1000, 1536, wbits=2, group_size=128, act_dtype="float16"), dict(wg=2, wn=2, bm=64, stages=4)),
    (lutc.MPGemmSpec(130, 200, 1536, wbits=2, group_size=-1, zero_point=True, act_dtype="float16"),
     dict(wg=1, wn=1, bm=128, stages=4, ws=False)),
    # a copying warpgroup and mbarriers (ws)
    (lutc.MPGemmSpec(5, 1000, 11008, wbits=4, group_size=32, zero_point=True, act_dtype="float16"),
     dict(wg=2, bm=64, stages=3, ws=True)),
    (lutc.MPGemmSpec(257, 1000, 14336, wbits=2, group_size=128, act_dtype="float16", scale_dtype="float32"),
     dict(wg=2, bm=128, stages=4, ws=True)),
    (lutc.MPGemmSpec(2048, 200, 1536, wbits=4, group_size=64, act_dtype="float16"), dict(wg=1, bm=256, stages=3, ws=True)),
    (lutc.MPGemmSpec(33, 1000, 1536, wbits=2, group_size=-1, zero_point=True, act_dtype="float16"),
     dict(wg=3, bm=64, stages=4, ws=True)),
    # tiles over the even register share: setmaxnreg moves the copier's registers
    (lutc.MPGemmSpec(257, 1000, 14336, wbits=4, group_size=128, zero_point=True, act_dtype="float16"),
     dict(wg=2, wn=2, bm=64, stages=4, ws=True)),
    (lutc.MPGemmSpec(300, 1000, 11008, wbits=2, group_size=64, act_dtype="float16", scale_dtype="float32"),
     dict(wg=3, wn=1, bm=128, stages=4, ws=True)),
    (lutc.MPGemmSpec(2048, 1000, 1536, wbits=4, group_size=-1, zero_point=True, act_dtype="float16"),
     dict(wg=2, wn=1, bm=256, stages=3, ws=True)),
    # two copying warpgroups
    (lutc.MPGemmSpec(300, 1000, 11008, wbits=4, group_size=128, act_dtype="float16"), dict(wg=2, bm=128, ws=2)),
    (lutc.MPGemmSpec(65, 1000, 1536, wbits=2, group_size=32, zero_point=True, act_dtype="bfloat16"),
     dict(wg=2, wn=2, bm=64, ws=2)),
    # bf16 activations (and weights): both bit widths, with and without zero points, both copy modes
    (lutc.MPGemmSpec(33, 1000, 11008, wbits=2, group_size=128, act_dtype="bfloat16"), dict()),
    (lutc.MPGemmSpec(257, 1000, 14336, wbits=4, group_size=64, zero_point=True, act_dtype="bfloat16"), dict()),
    (lutc.MPGemmSpec(128, 1000, 1536, wbits=4, group_size=32, act_dtype="bfloat16", scale_dtype="float32"),
     dict(wg=2, bm=128, ws=False)),
    (lutc.MPGemmSpec(2048, 1000, 11008, wbits=2, group_size=-1, zero_point=True, act_dtype="bfloat16"),
     dict(wg=2, wn=2, bm=64, ws=True)),
    # split-K: K slices of 43, 28 and 6 units summed by a second kernel (groups across a slice's
    # edge, the whole row's group, tokens past M, bf16)
    (lutc.MPGemmSpec(16, 1000, 11008, wbits=2, group_size=64, zero_point=True, act_dtype="float16"),
     dict(wg=1, bm=64, splits=2)),
    (lutc.MPGemmSpec(130, 200, 14336, wbits=4, group_size=-1, act_dtype="float16"), dict(splits=4)),
    (lutc.MPGemmSpec(33, 1000, 1536, wbits=4, group_size=32, act_dtype="bfloat16"), dict(ws=False, splits=2)),
    # the split-K default to M = 32 of two waves or more (schedules.cuda_wgmma.split_ws): 64-row
    # tiles, no copying warpgroup, late scale; rows past N (5000), K in 4 slices of 10 and 28 units
    (lutc.MPGemmSpec(9, 5000, 5120, wbits=2, group_size=128, act_dtype="float16"), dict()),
    (lutc.MPGemmSpec(12, 1000, 14336, wbits=4, group_size=128, act_dtype="bfloat16"),
     dict(wg=1, wn=1, bm=64, ws=False, splits=4, late_scale=1)),
    # late scale (each unit's fp32 sums scaled once its wgmma are done): the default tile, split-K,
    # both copy modes, bf16, fp32 scales, a row's one scale (ternary, group -1), W3, tokens past M
    (lutc.MPGemmSpec(16, 1000, 11008, wbits=2, group_size=128, act_dtype="float16"), dict(late_scale=1)),
    (lutc.MPGemmSpec(5, 1000, 1536, wbits=4, group_size=-1, act_dtype="bfloat16"),
     dict(wg=1, bm=64, ws=False, late_scale=1)),
    (lutc.MPGemmSpec(33, 1000, 14336, format="ternary", act_dtype="float16"), dict(wg=2, wn=1, bm=64, late_scale=1)),
    (lutc.MPGemmSpec(64, 1000, 11008, wbits=3, group_size=128, act_dtype="float16", scale_dtype="float32"),
     dict(wg=1, wn=1, bm=64, splits=2, late_scale=1)),
    # the wide-weight decode batch tile (M = 2..8 on N > 25344), two tiles per warp, late scale
    (lutc.MPGemmSpec(4, 1000, 11008, wbits=4, group_size=128, act_dtype="float16"),
     dict(wg=2, wn=2, bm=64, ws=True, late_scale=1)),
    (lutc.MPGemmSpec(8, 1000, 1536, format="ternary", act_dtype="bfloat16"), dict(wg=2, wn=2, bm=64, late_scale=1)),
    # A buffers of part of a unit (ak k16 steps): 256-row tiles of 128 and 176 tokens, four computing
    # warpgroups, groups inside a chunk and across chunks, zero points, bf16, W3, ternary, tokens
    # and rows past M and N
    (lutc.MPGemmSpec(257, 1000, 11008, wbits=2, group_size=128, act_dtype="float16"),
     dict(wg=2, wn=2, bm=176, ak=1, ws=True)),
    (lutc.MPGemmSpec(130, 1000, 14336, wbits=4, group_size=32, zero_point=True, act_dtype="bfloat16"),
     dict(wg=2, wn=2, bm=128, ak=2, ws=True)),
    (lutc.MPGemmSpec(300, 1000, 1536, wbits=3, group_size=64, act_dtype="float16", scale_dtype="float32"),
     dict(wg=4, wn=1, bm=128, ak=2, ws=True)),
    (lutc.MPGemmSpec(2048, 1000, 1536, format="ternary", act_dtype="float16"), dict(wg=2, wn=1, bm=256, ak=4, ws=True)),
    (lutc.MPGemmSpec(33, 1000, 11008, wbits=4, group_size=-1, zero_point=True, act_dtype="float16"),
     dict(wg=1, wn=1, bm=64, ak=1, ws=False)),
    # the batch tile of M = 65..128 (schedules.cuda_wgmma.BATCH_TILE: two copying warpgroups)
    (lutc.MPGemmSpec(100, 3000, 11008, wbits=2, group_size=128, act_dtype="float16"),
     dict(wg=2, wn=2, bm=128, ak=2, ws=2)),
    (lutc.MPGemmSpec(128, 1000, 1536, wbits=4, group_size=64, zero_point=True, act_dtype="bfloat16"),
     dict(wg=2, wn=2, bm=128, ak=2, ws=2)),
    # the split default of M = 65..128 on few blocks (schedules.cuda_wgmma.batch_split): 128-token
    # tiles of two copying warpgroups in 4 K slices (rows and tokens past N and M, zero points, bf16),
    # else 64-row tiles in 2 slices
    (lutc.MPGemmSpec(96, 3300, 14336, wbits=4, group_size=64, zero_point=True, act_dtype="bfloat16"), dict()),
    (lutc.MPGemmSpec(128, 1000, 11008, wbits=2, group_size=128, act_dtype="float16"), dict()),
    # 256-token tiles that M = 129..192 does not fill, two copying warpgroups (the default there)
    (lutc.MPGemmSpec(150, 1000, 11008, wbits=4, group_size=128, zero_point=True, act_dtype="bfloat16"),
     dict(wg=2, wn=1, bm=256, ws=2)),
    (lutc.MPGemmSpec(192, 3000, 1536, wbits=2, group_size=64, act_dtype="float16"), dict(wg=2, wn=1, bm=256, ws=2)),
]

#: Stream-K (schedules.stream_k): grids of 78, 114 and 132 blocks cutting tiles along K, both copy
#: modes, tokens and rows past M and N, groups across a cut, zero points, bf16, 256-token tiles.
STREAM_K_CASES = [
    (lutc.MPGemmSpec(130, 200, 14336, wbits=4, group_size=-1, act_dtype="float16"), dict(streamk=114)),
    (lutc.MPGemmSpec(33, 1000, 1536, wbits=2, group_size=32, zero_point=True, act_dtype="bfloat16"),
     dict(ws=False, streamk=78)),
    (lutc.MPGemmSpec(257, 3000, 11008, wbits=2, group_size=128, act_dtype="float16"),
     dict(wg=2, bm=128, ws=2, streamk=132)),
    (lutc.MPGemmSpec(2048, 1000, 1536, wbits=4, group_size=64, zero_point=True, act_dtype="float16"),
     dict(wg=2, bm=256, ws=True, streamk=132)),
    (lutc.MPGemmSpec(150, 1000, 11008, wbits=2, group_size=128, act_dtype="float16"),
     dict(wg=2, bm=256, ws=2, streamk=132)),
    (lutc.MPGemmSpec(16, 1000, 11008, wbits=2, group_size=-1, act_dtype="float16"), dict(wg=1, bm=64, streamk=132)),
    (lutc.MPGemmSpec(40, 1000, 11008, wbits=4, group_size=128, act_dtype="float16"),
     dict(wg=1, bm=64, streamk=78, late_scale=1)),
    (lutc.MPGemmSpec(128, 3000, 14336, wbits=2, group_size=128, act_dtype="float16"),
     dict(wg=2, wn=2, bm=128, ak=1, ws=True, streamk=132)),
]


@pytest.mark.parametrize("spec,knobs", WGMMA_CASES + STREAM_K_CASES, ids=lambda v: str(v))
def test_wgmma_knobs_keep_results(spec, knobs):
    """Each 64 weight rows checked on their own: a tile stored wrong or left out (NaN), e.g. a
    cut tile of stream-K summed wrong, fails even where the rest of the output hides it."""
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("wgmma needs sm_90a")
    kernel = lutc.build(spec, target="cuda", schedule="cuda_wgmma", knobs=knobs)
    x, qw = random_case(spec, seed=7)
    out = torch.full((spec.M, spec.N), float("nan"), dtype=x.dtype, device="cuda")
    kernel(x.cuda(), qw.to("cuda"), out=out)
    ref = reference(x, qw)
    for n in range(0, spec.N, 64):
        assert rel_error(out.cpu()[:, n:n + 64], ref[:, n:n + 64]) < tolerance(spec), n


@pytest.mark.parametrize("knobs", LUT_KNOBS)
def test_lut_knobs_keep_results(knobs):
    spec = KNOB_SPEC
    kernel = lutc.build(spec, target="cuda", schedule="cuda_lut", knobs=knobs)
    x, qw = random_case(spec, seed=4)
    out = torch.full((spec.M, spec.N), float("nan"), dtype=x.dtype, device="cuda")
    kernel(x.cuda(), qw.to("cuda"), out=out)
    assert rel_error(out.cpu(), reference(x, qw)) < tolerance(spec)


@pytest.mark.parametrize("knobs", MMA_KNOBS)
def test_mma_knobs_keep_results(knobs):
    kernel = lutc.build(MMA_SPEC, target="cuda", schedule="cuda_mma", knobs=knobs)
    x, qw = random_case(MMA_SPEC, seed=5)
    out = torch.full((MMA_SPEC.M, MMA_SPEC.N), float("nan"), dtype=x.dtype, device="cuda")
    kernel(x.cuda(), qw.to("cuda"), out=out)
    assert rel_error(out.cpu(), reference(x, qw)) < tolerance(MMA_SPEC)


@pytest.mark.parametrize("spec,knobs", STREAM_CASES, ids=lambda v: str(v))
def test_stream_knobs_keep_results(spec, knobs):
    kernel = lutc.build(spec, target="cuda", schedule="cuda_stream", knobs=knobs)
    x, qw = random_case(spec, seed=6)
    out = torch.full((spec.M, spec.N), float("nan"), dtype=x.dtype, device="cuda")
    kernel(x.cuda(), qw.to("cuda"), out=out)
    assert rel_error(out.cpu(), reference(x, qw)) < tolerance(spec)


GENERIC_SPECS = [
    lutc.MPGemmSpec(1, 4096, 4096, wbits=2, group_size=128),
    lutc.MPGemmSpec(3, 130, 11008, wbits=4, group_size=-1, zero_point=True, act_dtype="float16"),
    lutc.MPGemmSpec(16, 96, 512, wbits=3, format="bcq", group_size=32, act_dtype="bfloat16", g=2,
                    symmetrize=False),
    lutc.MPGemmSpec(5, 64, 1024, format="ternary", group_size=-1),
    lutc.MPGemmSpec(2, 200, 1024, wbits=1, group_size=64, table_dtype="int8"),
    # prefill on narrow N: 128 rows of M per block, partial row blocks (N = 1000)
    lutc.MPGemmSpec(257, 1000, 1536, wbits=2, group_size=128, act_dtype="float16"),
    lutc.MPGemmSpec(2048, 1000, 11008, wbits=4, group_size=64, zero_point=True, act_dtype="float16"),
]


@pytest.mark.parametrize("spec", GENERIC_SPECS, ids=lambda s: f"{s.format}-w{s.wbits}-M{s.M}-{s.N}x{s.K}")
def test_cuda_default_schedule_matches_reference(spec):
    kernel = lutc.build(spec, target="cuda")
    assert kernel.runnable
    x, qw = random_case(spec, seed=spec.N)
    out = torch.full((spec.M, spec.N), float("nan"), dtype=x.dtype, device="cuda")
    kernel(x.cuda(), qw.to("cuda"), out=out)
    torch.cuda.synchronize()
    assert rel_error(out.cpu(), reference(x, qw)) < tolerance(spec)


def test_cuda_kernel_refuses_cpu_tensors():
    spec = GENERIC_SPECS[0]
    kernel = lutc.build(spec, target="cuda")
    x, qw = random_case(spec)
    with pytest.raises(ValueError, match=r"qw.planes is on cpu, the kernel runs on cuda \(move it once"):
        kernel(x.cuda(), qw)
    with pytest.raises(ValueError, match="x is on cpu"):
        kernel(x, qw.to("cuda"))


# --- runtime: streams, CUDA graphs, no host synchronization -------------------------------

RUNTIME_SPEC = lutc.MPGemmSpec(4, 4096, 4096, wbits=2, group_size=128, act_dtype="float16")


@pytest.fixture(scope="module")
def runtime_case():
    kernel = lutc.build(RUNTIME_SPEC, target="cuda")
    x, qw = random_case(RUNTIME_SPEC, seed=21)
    qw = qw.to("cuda")
    kernel(x.cuda(), qw)               # first call: repack into the kernel's layout, cached
    torch.cuda.synchronize()
    return kernel, qw


def test_runs_on_the_current_torch_stream(runtime_case):
    kernel, qw = runtime_case
    x_old = torch.randn(RUNTIME_SPEC.M, RUNTIME_SPEC.K, dtype=torch.float16, device="cuda")
    x_new = torch.randn_like(x_old)
    x = x_old.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # ~ tens of ms: a kernel on another stream would overtake
        x.copy_(x_new)
        y = kernel(x, qw)
    side.synchronize()
    assert rel_error(y.cpu(), reference(x_new.cpu(), qw)) < tolerance(RUNTIME_SPEC)


def test_captured_in_a_cuda_graph(runtime_case):
    kernel, qw = runtime_case
    x = torch.randn(RUNTIME_SPEC.M, RUNTIME_SPEC.K, dtype=torch.float16, device="cuda")
    out = torch.full((RUNTIME_SPEC.M, RUNTIME_SPEC.N), float("nan"), dtype=torch.float16, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernel(x, qw, out=out)
        y = kernel(x, qw)              # an output allocated inside the capture
    for _ in range(2):                 # replay with new inputs, written in place
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        ref = reference(x.cpu(), qw)
        assert rel_error(out.cpu(), ref) < tolerance(RUNTIME_SPEC)
        assert rel_error(y.cpu(), ref) < tolerance(RUNTIME_SPEC)


def test_calls_never_synchronize_the_host(runtime_case):
    kernel, qw = runtime_case
    x = torch.randn(RUNTIME_SPEC.M, RUNTIME_SPEC.K, dtype=torch.float16, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(20_000_000)
        start.record()
        y = kernel(x, qw)
        end.record()
        assert not end.query()          # the host got past the call while the GPU still sleeps
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert rel_error(y.cpu(), reference(x.cpu(), qw)) < tolerance(RUNTIME_SPEC)


def test_tuner_on_the_gpu(tmp_path, monkeypatch):
    """``lutc.tune`` on CUDA: every candidate checked and timed in a CUDA graph, a confirmation
    logged, and ``lutc.compile`` building the confirmed winner from the log."""
    from lutc.autotune import tune
    from lutc.tuner.records import TuningLog
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    log = TuningLog(str(tmp_path / "cuda.jsonl"))
    (res,) = tune([(4, 1024, 2048)], target="cuda", wbits=2, group_size=128, act_dtype="float16",
                  trials=12, batch=6, pool_mib=128, log=log, progress=False)
    recs = list(log.records())
    search = [r for r in recs if "confirm" not in r]
    assert len(search) == 12 and all(r["error"] is None and r["us"] > 0 for r in search)
    assert len([r for r in recs if "confirm" in r]) == 4
    assert res.best_us <= res.default_us
    kernel = lutc.compile((4, 1024, 2048), wbits=2, group_size=128, act_dtype="float16", target="cuda",
                          cache=None)
    assert (kernel.schedule, kernel.knobs) == (res.best.schedule, res.best.knob_dict)
