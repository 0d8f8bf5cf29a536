"""Other targets built on this machine: CUDA source compiled by nvcc, ARM cross-compiled."""
import itertools
import subprocess
import os
import re
import shutil
import struct

import numpy as np
import pytest

import lutc
import schedules
from lutc.target import kind, resolve

CUDA_SPECS = [
    lutc.MPGemmSpec(1, 4096, 4096, wbits=2, group_size=128),
    lutc.MPGemmSpec(16, 130, 11008, wbits=4, group_size=-1, zero_point=True, act_dtype="float16"),
    lutc.MPGemmSpec(3, 96, 512, wbits=3, format="bcq", group_size=32, act_dtype="bfloat16", g=2,
                    symmetrize=False),
    lutc.MPGemmSpec(5, 64, 1024, format="ternary", group_size=-1, table_dtype="int8"),
]

# (spec, schedule): every CUDA schedule lutc has, on specs that reach its code paths
SCHEDULE_SPECS = [
    (lutc.MPGemmSpec(1, 4096, 4096, wbits=2, group_size=128, act_dtype="float16"), "cuda_lut"),
    (lutc.MPGemmSpec(5, 1000, 11008, wbits=3, group_size=64, zero_point=True, act_dtype="bfloat16",
                     symmetrize=False), "cuda_lut"),
    (lutc.MPGemmSpec(8, 200, 1024, wbits=4, format="bcq", group_size=32), "cuda_lut"),
    (lutc.MPGemmSpec(2, 96, 512, format="ternary", group_size=-1, act_dtype="float16"), "cuda_lut"),
    (lutc.MPGemmSpec(16, 4096, 4096, wbits=2, group_size=128, act_dtype="float16"), "cuda_mma"),
    (lutc.MPGemmSpec(33, 1000, 11008, wbits=4, group_size=-1, zero_point=True, act_dtype="float16"), "cuda_mma"),
    (lutc.MPGemmSpec(128, 200, 1024, wbits=2, group_size=32, act_dtype="float16"), "cuda_mma"),
    (lutc.MPGemmSpec(5, 1000, 1024, wbits=4, group_size=64, act_dtype="float16"), "cuda_mma"),
    (lutc.MPGemmSpec(3, 1000, 11008, wbits=2, group_size=32, zero_point=True, act_dtype="float16"), "cuda_stream"),
    (lutc.MPGemmSpec(13, 200, 1024, wbits=4, group_size=128, act_dtype="float16"), "cuda_stream"),
    (lutc.MPGemmSpec(130, 1000, 11008, wbits=4, group_size=64, zero_point=True, act_dtype="float16"), "cuda_wgmma"),
    (lutc.MPGemmSpec(33, 200, 1024, wbits=2, group_size=32, act_dtype="float16", scale_dtype="float32"),
     "cuda_wgmma"),
]

needs_nvcc = pytest.mark.skipif(
    shutil.which("nvcc") is None and not os.environ.get("CI"),
    reason="nvcc not installed (CI has it, and there this test fails instead of skipping)")


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("spec", CUDA_SPECS, ids=lambda s: f"{s.format}-w{s.wbits}-{s.act_dtype}-{s.table_dtype}")
def test_cuda_source_compiles_with_nvcc(spec, arch):
    kernel = lutc.build(spec, target=f"cuda:{arch}")
    assert kernel.device == "cuda"
    assert "__global__" in kernel.source and "extern \"C\"" in kernel.source
    cubin = lutc.cuda_binary(kernel, fmt="cubin")
    assert cubin[:4] == b"\x7fELF"
    ptx = lutc.cuda_binary(kernel, fmt="ptx").decode()
    assert f".target {arch}" in ptx


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("spec,schedule", SCHEDULE_SPECS,
                         ids=[f"{n}-M{s.M}-{s.format}-w{s.wbits}-{s.act_dtype}" for s, n in SCHEDULE_SPECS])
def test_cuda_schedules_compile_with_nvcc(spec, schedule, arch):
    if schedule == "cuda_wgmma" and arch != "sm_90a":      # wgmma exists on sm_90a only
        with pytest.raises(ValueError, match="cuda_wgmma"):
            lutc.build(spec, target=f"cuda:{arch}", schedule=schedule)
        return
    kernel = lutc.build(spec, target=f"cuda:{arch}", schedule=schedule)
    assert kernel.schedule == schedule
    cubin = lutc.cuda_binary(kernel, fmt="cubin")
    assert cubin[:4] == b"\x7fELF"
    ptx = lutc.cuda_binary(kernel, fmt="ptx").decode()
    assert f".target {arch}" in ptx
    if schedule == "cuda_lut":
        assert re.search(r"ld\.global(\.nc)?\.v4\.u32", ptx)   # 16-byte weight loads
        assert "ld.shared.f32" in ptx         # table lookups
    elif schedule == "cuda_wgmma":
        assert "wgmma.mma_async.sync.aligned.m64n" in ptx and "fence.proxy.async" in ptx
    else:
        assert "mma.sync.aligned.m16n8k16" in ptx


@needs_nvcc
@pytest.mark.parametrize("schedule,knobs", [("cuda_stream", {}), ("cuda_mma", {"xsm": True}), ("cuda_mma", {"xsm": False})])
def test_mma_sync_kernels_compile_for_bf16(schedule, knobs):
    """bf16 activations: the sm_80 code multiplies bf16 (``mma.sync ... .bf16.bf16``) and
    dequantizes with the bf16 magic number."""
    spec = lutc.MPGemmSpec(12, 1000, 1536, wbits=4, group_size=64, zero_point=True, act_dtype="bfloat16")
    kernel = lutc.build(spec, target="cuda:sm_80", schedule=schedule, knobs=knobs)
    ptx = lutc.cuda_binary(kernel, fmt="ptx").decode()
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in ptx and ".f16.f16" not in ptx
    assert "0x43004300" in kernel.source or "1124090624" in kernel.source
    # x in its own k order (tc16 v2): ldmatrix from shared memory, or 4-byte loads from global
    assert ("ldmatrix.sync.aligned.m8n8.x4.shared.b16" in ptx) == knobs.get("xsm", True)
    assert lutc.cuda_binary(kernel, fmt="cubin")[:4] == b"\x7fELF"


@needs_nvcc
def test_stream_late_scale_leaves_the_weights_unscaled():
    """``cuda_stream``'s late scale (its default at M <= 8 without zero points): the dequantized
    pairs are ``q - c`` (no fp16 multiply by the scale), the groups' fp32 sums are scaled; with
    zero points, or past ``swap_upto`` tokens, the knob is refused by name."""
    spec = lutc.MPGemmSpec(4, 1000, 1536, wbits=2, group_size=64, act_dtype="float16")
    assert schedules.cuda_stream.resolve_knobs(spec)["late_scale"] == 1
    ptx = {late: lutc.cuda_binary(lutc.build(spec, target="cuda:sm_90a", schedule="cuda_stream",
                                             knobs={"late_scale": late}), fmt="ptx").decode() for late in (0, 1)}
    assert ptx[0].count("mul.f16x2") == ptx[0].count("fma.rn.f16x2") > 0       # one multiply per pair
    assert "mul.f16x2" not in ptx[1] and ptx[1].count("fma.rn.f16x2") == ptx[0].count("fma.rn.f16x2")
    assert re.search(r"fma\.rn(\.ftz)?\.f32", ptx[1]) and not re.search(r"fma\.rn(\.ftz)?\.f32", ptx[0])
    tall = lutc.MPGemmSpec(9, 1000, 1536, wbits=2, act_dtype="float16")
    assert schedules.cuda_stream.resolve_knobs(tall)["late_scale"] == 1     # transposed at 9 tokens too
    for bad, knobs in ((lutc.MPGemmSpec(4, 1000, 1536, wbits=2, zero_point=True, act_dtype="float16"), {}),
                       (tall, {"swap_upto": 8})):                           # x as A from 9 tokens
        assert schedules.cuda_stream.resolve_knobs(bad, **knobs)["late_scale"] == 0
        with pytest.raises(ValueError, match="late_scale"):
            schedules.cuda_stream.resolve_knobs(bad, late_scale=1, **knobs)


@needs_nvcc
def test_stream_raw_codes_drop_the_dequantizing_fma():
    """``cuda_stream``'s ``raw_codes``: each pair is one ``LOP3`` (no ``HFMA2``), and one more mma per
    k16 step and 8 tokens (not per tile) takes the pairs' offsets times x off the group's sums; it
    needs the late scale."""
    spec = lutc.MPGemmSpec(1, 1000, 1536, wbits=2, group_size=128, act_dtype="float16")
    knobs = dict(warps=4, wn=1, nw=2, stages=2)
    ptx = {raw: lutc.cuda_binary(lutc.build(spec, target="cuda:sm_90a", schedule="cuda_stream",
                                            knobs={**knobs, "raw_codes": raw}), fmt="ptx").decode() for raw in (0, 1)}
    fma16 = {raw: len(re.findall(r"fma\.rn\.f16x2", p)) for raw, p in ptx.items()}
    mmas = {raw: len(re.findall(r"mma\.sync", p)) for raw, p in ptx.items()}
    assert fma16[0] == 64 and fma16[1] == 0      # 2 tiles x 8 k16 steps x 4 pairs per lane
    assert mmas[1] == mmas[0] + 8 == 24
    with pytest.raises(ValueError, match="raw_codes"):
        schedules.cuda_stream.resolve_knobs(spec, late_scale=0, raw_codes=1)
    with pytest.raises(ValueError, match="raw_codes|late_scale"):
        schedules.cuda_stream.resolve_knobs(spec.with_(zero_point=True), raw_codes=1)


@needs_nvcc
def test_stream_warp_sync_waits_on_the_warp():
    """``cuda_stream``'s ``warp_sync``: the step's block barrier becomes ``__syncwarp`` (PTX
    ``bar.warp.sync``; the block barriers left are the split-K sum's two), and x takes a copy per
    warp in the stage instead of one per K slice."""
    spec = lutc.MPGemmSpec(3, 1000, 1536, wbits=2, group_size=128, act_dtype="float16")
    knobs = dict(warps=2, wn=2, nw=1, stages=3)
    ptx = {ws: lutc.cuda_binary(lutc.build(spec, target="cuda:sm_90a", schedule="cuda_stream",
                                           knobs={**knobs, "warp_sync": ws}), fmt="ptx").decode() for ws in (0, 1)}
    barriers = {ws: len(re.findall(r"\b(bar|barrier)\.sync", p)) for ws, p in ptx.items()}
    assert "bar.warp.sync" in ptx[1] and "bar.warp.sync" not in ptx[0] and barriers[1] == barriers[0] - 1 == 2
    x_part = {ws: schedules.cuda_stream.stage_bytes(spec, 2, 2, 1, warp_sync=ws)["x"] for ws in (0, 1)}
    assert x_part[1] == 2 * x_part[0] == 2 * 2 * 3 * schedules.cuda_stream.X_ROW * 2


@needs_nvcc
def test_wgmma_late_scale_leaves_the_weights_unscaled():
    """``cuda_wgmma``'s late scale: ``q - c`` into the A fragments (no fp16 multiply by the scale),
    each unit's sums scaled in fp32; refused where a unit holds several scale groups, with zero
    points, or past 64 tokens per block."""
    spec = lutc.MPGemmSpec(16, 1000, 1536, wbits=2, group_size=128, act_dtype="float16")
    ptx = {late: lutc.cuda_binary(lutc.build(spec, target="cuda:sm_90a", schedule="cuda_wgmma",
                                             knobs={"late_scale": late}), fmt="ptx").decode() for late in (0, 1)}
    assert ptx[0].count("mul.f16x2") == ptx[0].count("fma.rn.f16x2") > 0
    assert "mul.f16x2" not in ptx[1] and ptx[1].count("fma.rn.f16x2") == ptx[0].count("fma.rn.f16x2")
    assert re.search(r"fma\.rn(\.ftz)?\.f32", ptx[1]) and "wgmma.mma_async" in ptx[1]
    # each unit's first wgmma sets its sums (scale-d 0), in place of zeros written between units
    assert re.search(r"wgmma\.mma_async[^;]*, 0, 1, 1, 0;", ptx[1]) and ", 0, 1, 1, 0;" not in ptx[0]
    for bad in (spec.with_(group_size=64), spec.with_(zero_point=True), spec.with_(M=128)):
        with pytest.raises(ValueError, match="late_scale"):
            schedules.cuda_wgmma.resolve_knobs(bad, late_scale=1, bm=128 if bad.M == 128 else None)


@needs_nvcc
def test_wgmma_a_buffers_of_part_of_a_unit():
    """Knob ``ak``: the A fragments of ``ak`` k16 steps per buffer, each chunk's wgmma one group
    (a unit is 8 steps: the loop over units, unrolled by two for whole units, holds 2 groups of 8
    wgmma, else 2, 4 or 8 groups of 4, 2 or 1); a late scale needs whole units, and the register
    count falls so that two 64-row tiles of 128 tokens fit."""
    spec = lutc.MPGemmSpec(130, 1000, 1536, wbits=2, group_size=64, act_dtype="float16")
    for ak, groups, wgmma in ((8, 2, 16), (4, 2, 8), (2, 4, 8), (1, 8, 8)):
        ptx = lutc.cuda_binary(lutc.build(spec, target="cuda:sm_90a", schedule="cuda_wgmma",
                                          knobs={"wg": 1, "bm": 128, "ws": True, "ak": ak}), fmt="ptx").decode()
        assert ptx.count("wgmma.commit_group") == groups and ptx.count("wgmma.mma_async") == wgmma, (ak, groups)
    with pytest.raises(ValueError, match="ak=8"):
        schedules.cuda_wgmma.resolve_knobs(spec.with_(M=16, group_size=128), late_scale=1, ak=2)
    # a tile asked for takes its own A buffers (whole units where they fit), not the default tile's
    wide = lutc.MPGemmSpec(96, 28672, 8192, act_dtype="float16")
    assert schedules.cuda_wgmma.resolve_knobs(wide)["ak"] == 2
    assert schedules.cuda_wgmma.resolve_knobs(wide, wg=2, wn=2, bm=64, ws=True)["ak"] == 8
    assert schedules.cuda_wgmma.resolve_knobs(wide, wg=2, wn=2, bm=128, ws=True)["ak"] == 2
    # the tuner skips A buffers of part of a unit where whole units fit, and a token tile that
    # holds no more of M than the next smaller one (bm 176 at M = 100: 104 tokens, as bm 128)
    worth = schedules.cuda_wgmma.worth_tuning
    assert not worth(wide, None, wg=2, wn=1, bm=128, ws=2, ak=2) and worth(wide, None, wg=2, wn=2, bm=128, ws=2, ak=2)
    assert not worth(wide.with_(M=100), None, bm=176) and worth(wide.with_(M=160), None, bm=176)
    with pytest.raises(ValueError, match="ak=3 is not one of"):
        schedules.cuda_wgmma.resolve_knobs(spec, ak=3)


@needs_nvcc
@pytest.mark.parametrize("ws", [True, False])
def test_wgmma_both_copy_modes_compile(ws):
    """cuda_wgmma with the copying warpgroup (mbarriers) and without (block barriers): the
    sm_90a code has the wgmma, 16-byte copies only, and the pipeline of its mode."""
    spec = lutc.MPGemmSpec(130, 1000, 1536, wbits=4, group_size=64, zero_point=True, act_dtype="float16")
    kernel = lutc.build(spec, target="cuda:sm_90a", schedule="cuda_wgmma", knobs={"ws": ws, "stages": 3})
    ptx = lutc.cuda_binary(kernel, fmt="ptx").decode()
    assert "wgmma.mma_async.sync.aligned.m64n" in ptx and "cp.async.cg.shared.global" in ptx
    assert "cp.async.ca" not in ptx      # x in 16-byte copies too (tc16 holds k in the fragments' order)
    assert ("mbarrier.try_wait.parity" in ptx) == ws and ("cp.async.wait_group" in ptx) == (not ws)
    assert lutc.cuda_binary(kernel, fmt="cubin")[:4] == b"\x7fELF"


@needs_nvcc
def test_wgmma_split_k_is_two_kernels_and_a_workspace(tmp_path):
    """Split-K: the K slices' fp32 partial sums go to a workspace that a second kernel adds up;
    a split that does not divide K's 128-weight units is refused, naming the knob."""
    spec = lutc.MPGemmSpec(64, 1000, 1536, wbits=2, group_size=128, act_dtype="float16")
    kernel = lutc.build(spec, target="cuda:sm_90a", schedule="cuda_wgmma", knobs={"splits": 4})
    res = lutc.export(kernel, tmp_path, name="k", emit=["cu"])
    first, second = res.manifest["launches"]
    assert first["grid"][2] == 4 and second["args"] == ["out", "psum"]
    assert res.manifest["workspace"][0]["bytes"] == 4 * 64 * 1000 * 4
    assert lutc.cuda_binary(kernel, fmt="cubin")[:4] == b"\x7fELF"
    with pytest.raises(ValueError, match="splits=4 does not divide the 10 128-weight units"):
        lutc.build(spec.with_(K=1280), target="cuda:sm_90a", schedule="cuda_wgmma", knobs={"splits": 4})
    # the untuned default at M = 65..128 on few blocks: 128-token tiles, two copying warpgroups,
    # 4 slices (cuda_wgmma.batch_split)
    batch = lutc.build(spec.with_(M=128, N=4096, K=14336), target="cuda:sm_90a", tuned=False, cache=None)
    assert batch.schedule == "cuda_wgmma"
    res = lutc.export(batch, tmp_path / "batch", name="k", emit=["cu"])
    assert res.manifest["launches"][0]["grid"][2] == 4 and len(res.manifest["launches"]) == 2
    assert lutc.cuda_binary(batch, fmt="cubin")[:4] == b"\x7fELF"


@needs_nvcc
def test_wgmma_stream_k_is_a_persistent_grid_and_a_fix_up(tmp_path):
    """Stream-K: as many blocks as the knob asks (one per SM), each cut tile's partial sums in a
    workspace of two slots per block that a second kernel adds up; knobs that cannot work are
    refused, naming them; the default takes it where it measured faster (8192 x 28672 at M = 128)."""
    spec = lutc.MPGemmSpec(128, 1000, 1536, wbits=2, group_size=128, act_dtype="float16")
    kernel = lutc.build(spec, target="cuda:sm_90a", schedule="cuda_wgmma",
                        knobs={"wg": 2, "bm": 128, "ws": 2, "streamk": 78})
    res = lutc.export(kernel, tmp_path, name="k", emit=["cu"])
    first, second = res.manifest["launches"]
    # the fix-up: 16 blocks of 256 threads x 4 rows per cut tile, for each of the 77 boundaries
    assert first["grid"] == [78, 1, 1] and second["grid"][0] == 77 * 16 and second["args"] == ["out", "psum"]
    assert res.manifest["workspace"][0]["bytes"] == 78 * 2 * 128 * 128 * 4
    assert lutc.cuda_binary(kernel, fmt="cubin")[:4] == b"\x7fELF"
    with pytest.raises(ValueError, match="splits=2 and streamk=78 both divide K"):
        lutc.build(spec, target="cuda:sm_90a", schedule="cuda_wgmma", knobs={"splits": 2, "streamk": 78})
    with pytest.raises(ValueError, match="streamk=132 asks for more blocks than the 24 tile units"):
        lutc.build(spec.with_(K=1536, N=256), target="cuda:sm_90a", schedule="cuda_wgmma",
                   knobs={"wg": 2, "bm": 128, "streamk": 132})
    # to M = 128 in the batch tile (256 rows, A buffers of two k16 steps); past it, to 192 tokens,
    # in one 256-token tile (8192 x 28672 at M = 192: 143.0 us against 189.4 for two 128-token tiles)
    batch, wide = (2, 2, 128, 2, 2), (2, 1, 256, 2, 8)
    for M, N, K, tile in ((128, 8192, 28672, batch), (96, 8192, 28672, batch), (128, 28672, 8192, None),
                          (64, 8192, 28672, None), (136, 8192, 28672, wide), (192, 8192, 28672, wide),
                          (224, 8192, 28672, None), (256, 8192, 28672, None), (192, 8192, 8192, None),
                          (128, 4096, 4096, None)):
        knobs = schedules.cuda_wgmma.resolve_knobs(lutc.MPGemmSpec(M, N, K, act_dtype="float16"))
        assert knobs["streamk"] == (132 if tile else 0), (M, N, K, knobs)
        if tile:
            assert tuple(knobs[k] for k in ("wg", "wn", "bm", "ws", "ak")) == tile and knobs["splits"] == 1, knobs
    wide_default = lutc.build(lutc.MPGemmSpec(160, 8192, 28672, act_dtype="float16"), target="cuda:sm_90a")
    assert wide_default.schedule == "cuda_wgmma" and lutc.cuda_binary(wide_default, fmt="cubin")[:4] == b"\x7fELF"
    # M = 65..128 where the 256-row batch tile gives its blocks alone (28672 x 8192 at M = 96: 89.2 us
    # against 129.9 for 128-row tiles, Humming 92.3); not at M = 64 or 129, nor on a narrow weight
    # (there 128-row tiles in K slices, cuda_wgmma.batch_split)
    # past it a 256-token tile that M does not fill, with two copying warpgroups to 192 tokens
    # (28672 x 8192 at M = 192: 150.5 us against 215.0 for 128-token tiles), where it gives its blocks
    for M, N, K, tile in ((96, 28672, 8192, (2, 2, 128, 2, 2)), (65, 57344, 8192, (2, 2, 128, 2, 2)),
                          (128, 28672, 8192, (2, 2, 128, 2, 2)), (64, 28672, 8192, (2, 2, 64, True, 8)),
                          (96, 4096, 4096, (2, 1, 128, 2, 8)), (129, 28672, 8192, (2, 1, 256, 2, 8)),
                          (192, 28672, 8192, (2, 1, 256, 2, 8)), (224, 28672, 8192, (2, 1, 256, True, 8)),
                          (224, 8192, 28672, (2, 1, 128, 2, 8))):
        knobs = schedules.cuda_wgmma.resolve_knobs(lutc.MPGemmSpec(M, N, K, act_dtype="float16"))
        assert tuple(knobs[k] for k in ("wg", "wn", "bm", "ws", "ak")) == tile and knobs["streamk"] == 0, (M, N, knobs)


@needs_nvcc
@pytest.mark.parametrize("knobs", [dict(wg=2, wn=2, bm=64), dict(wg=3, wn=1, bm=128), dict(wg=2, wn=1, bm=256),
                                   dict(wg=2, wn=2, bm=128, ak=2), dict(wg=2, wn=2, bm=176, ak=1)])
def test_wgmma_tiles_over_the_even_register_share_move_registers(knobs, tmp_path):
    """Tiles whose accumulators and A fragments exceed a thread's even share of the SM take the
    copying warpgroup's registers (setmaxnreg), and ptxas honours it: no 'setmaxnreg ignored',
    no serialized wgmma, no spills."""
    spec = lutc.MPGemmSpec(512, 1000, 1536, wbits=2, group_size=128, act_dtype="float16")
    kernel = lutc.build(spec, target="cuda:sm_90a", schedule="cuda_wgmma", knobs={**knobs, "ws": True}, cache=None)
    assert "setmaxnreg.inc.sync.aligned.u32" in kernel.source and "__launch_bounds__(" in kernel.source
    src = tmp_path / "k.cu"
    src.write_text(kernel.source)
    log = subprocess.run(["nvcc", "-arch=sm_90a", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"), str(src)],
                         capture_output=True, text=True, check=True).stderr
    assert "C7508" not in log and "C7512" not in log and "C7514" not in log, log
    assert " 0 bytes spill stores" in log, log
    # the even-share tiles keep their code
    plain = lutc.build(spec, target="cuda:sm_90a", schedule="cuda_wgmma", knobs=dict(wg=2, wn=1, bm=128, ws=True),
                       cache=None)
    assert "setmaxnreg" not in plain.source


def test_cuda_default_kernel_for_each_m():
    # M = 1: the streamed mma kernel for uniform W2-W4 (fp16/bf16), the LUT kernel for fp32 x
    assert lutc.build(lutc.MPGemmSpec(1, 256, 512, act_dtype="float16"), target="cuda:sm_90a").schedule == "cuda_stream"
    assert lutc.build(lutc.MPGemmSpec(1, 256, 512), target="cuda:sm_90a").schedule == "cuda_lut"
    assert lutc.build(lutc.MPGemmSpec(16, 256, 512, act_dtype="float16"), target="cuda:sm_80").schedule == "cuda_mma"
    # M = 9..16 on Hopper: wgmma (28672 x 8192 W2 at M = 16: 40.8 us against cuda_stream's 60.9),
    # with K split where its blocks are few (8192 x 28672: 51.6 against 62.1)
    for M, N, K, splits in ((16, 256, 512, 4), (9, 28672, 8192, 1), (16, 14336, 4096, 4), (12, 8192, 28672, 4),
                            (64, 4096, 4096, 4), (128, 4096, 4096, 4), (128, 14336, 4096, 1), (256, 4096, 4096, 1)):
        spec = lutc.MPGemmSpec(M, N, K, act_dtype="float16")
        assert schedules.default("cuda", spec, lutc.target.resolve("cuda:sm_90a")) is schedules.cuda_wgmma
        assert schedules.cuda_wgmma.resolve_knobs(spec)["splits"] == splits
    # where no tile gives its blocks alone, 256-row tiles in the slices that fill one wave (8192 x
    # 28672 at M = 16: 33.1 us against 46.5 for 64-row tiles in 2 slices); else 64-row tiles, to
    # M = 32 without a copying warpgroup where their slices make two waves (11008 x 4096: 11.9 against 15.1)
    for M, N, K, tile in ((12, 8192, 28672, (2, 2, True, 4, 128)), (64, 8192, 28672, (2, 2, True, 4, 128)),
                          (16, 8192, 8192, (2, 2, True, 4, 128)), (16, 7168, 18432, (2, 2, True, 4, 112)),
                          (16, 4096, 4096, (1, 1, False, 4, 256)), (32, 4096, 4096, (1, 1, False, 4, 256)),
                          (33, 4096, 4096, (1, 1, True, 4, 256)),
                          (16, 11008, 4096, (1, 1, False, 4, 688)), (9, 5120, 5120, (1, 1, False, 4, 320)),
                          # to M = 32 not the 64-row tile of two warpgroups, whose 148 blocks on 18944 x
                          # 3584 took 25.3 us against 13.8 for the last tile in 4 slices
                          (16, 18944, 3584, (1, 1, False, 4, 1184)), (32, 14336, 4096, (1, 1, False, 4, 896)),
                          (33, 14336, 4096, (2, 1, True, 1, 112)),
                          (16, 4096, 11008, (1, 1, True, 2, 128)), (16, 1024, 8192, (1, 1, True, 4, 64)),
                          (65, 8192, 28672, None),
                          # M = 65..128 (batch_split): the 128-token tile of two copying warpgroups in
                          # the slices split_cost ranks first (4096 x 14336 at M = 128: 27.7 us
                          # against 43.1 unsplit), else the last tile in the most slices (1024 x 8192:
                          # 10.1 against 25.3); stream-K keeps 8192 x 28672
                          (128, 4096, 14336, (2, 1, 2, 4, 128)), (96, 3584, 18944, (2, 1, 2, 4, 112)),
                          (128, 8192, 8192, (2, 1, 2, 2, 128)), (128, 1024, 8192, (1, 1, True, 4, 128)),
                          (128, 4096, 11008, (1, 1, True, 2, 256)), (128, 8192, 28672, None)):
        spec = lutc.MPGemmSpec(M, N, K, act_dtype="float16")
        knobs = schedules.cuda_wgmma.resolve_knobs(spec)
        if tile is None:
            assert schedules.cuda_wgmma.one_wave_split(spec) is None
            assert knobs["splits"] == 1 and knobs["streamk"] == 132, (M, N, K, knobs)
            continue
        blocks = schedules.cuda_wgmma.blocks(spec, knobs["wg"], knobs["wn"], knobs["bm"]) * knobs["splits"]
        assert (knobs["wg"], knobs["wn"], knobs["ws"], knobs["splits"], blocks) == tile, (M, N, K, knobs)
    # M = 2..8: wgmma where N is wide enough for its 256-row tile alone (28672 x 8192 W4 at M = 2:
    # 36.3 us against 40.3), from M = 4 for 2-bit slots (W2 at M = 2: 33.2 against cuda_stream's 29.0),
    # and for them not at all where cuda_stream splits a long K in 8 and reads the slots raw
    # (28672 x 8192 W2 at M = 5: 27.5 against 32.2; M = 8: 31.2 against 32.0)
    for M, N, K, wbits, sname in ((2, 28672, 8192, 4, "cuda_wgmma"), (2, 28672, 8192, 2, "cuda_stream"),
                                  (4, 28672, 8192, 2, "cuda_stream"), (5, 28672, 8192, 2, "cuda_stream"),
                                  (8, 28672, 8192, 2, "cuda_stream"), (8, 28672, 8192, 4, "cuda_wgmma"),
                                  (4, 28672, 4096, 2, "cuda_wgmma"), (8, 57344, 8192, 1, "cuda_stream"),
                                  (8, 57344, 4096, 1, "cuda_wgmma"), (8, 8192, 28672, 4, "cuda_stream"),
                                  (8, 16384, 4096, 2, "cuda_stream")):
        spec = lutc.MPGemmSpec(M, N, K, wbits=wbits, group_size=128, act_dtype="float16")
        assert schedules.default("cuda", spec, lutc.target.resolve("cuda:sm_90a")).__name__ == f"schedules.{sname}"
    # ... where both kernels scale late, as measured (zero points keep cuda_stream)
    spec = lutc.MPGemmSpec(4, 28672, 8192, wbits=4, group_size=128, zero_point=True, act_dtype="float16")
    assert schedules.default("cuda", spec, lutc.target.resolve("cuda:sm_90a")) is schedules.cuda_stream
    # M = 1: K in 8 slices per block (8192 x 28672 W2: 26.0 us against 31.4 with a tile per warp;
    # 1024 x 4096 W4: 3.3 against 4.5), 2 row tiles per warp where that gives a block per SM
    for N, K, wbits, knobs in ((8192, 28672, 2, dict(warps=8, wn=1, nw=2, stages=4)),
                               (4096, 11008, 4, dict(warps=8, wn=1, nw=1, stages=4)),
                               (4096, 14336, 2, dict(warps=8, wn=1, nw=1, stages=4)),
                               (11008, 4096, 2, dict(warps=8, wn=1, nw=2, stages=4)),
                               (1024, 4096, 4, dict(warps=8, wn=1, nw=1, stages=4, raw_codes=0)),
                               (18944, 3584, 2, dict(warps=8, wn=1, nw=2, stages=4, raw_codes=0)),
                               (28672, 8192, 4, dict(warps=8, wn=1, nw=2, stages=4))):
        chosen = schedules.cuda_stream.resolve_knobs(lutc.MPGemmSpec(1, N, K, wbits=wbits, act_dtype="float16"))
        assert {k: chosen[k] for k in knobs} == knobs, (N, K, wbits, chosen)
    # ... and up to M = 8 for 2-bit slots, with 4 tiles per warp and 2 stages (8192 x 28672 W2 at
    # M = 8: 31.2 us against 45.5 for the 4-warp default); 4-bit slots and short K keep 4 warps
    for M, N, K, wbits, warps in ((2, 8192, 28672, 2, 8), (8, 28672, 8192, 2, 8), (2, 8192, 28672, 4, 4),
                                  (4, 28672, 4096, 2, 4), (9, 8192, 28672, 2, 4)):
        chosen = schedules.cuda_stream.resolve_knobs(lutc.MPGemmSpec(M, N, K, wbits=wbits, act_dtype="float16"))
        assert chosen["warps"] == warps and (warps == 4 or chosen["nw"] == 4), (M, N, K, wbits, chosen)
    # each warp waits on its own copies up to M = 4, and past it only where it copies x alone (wn=1):
    # 4096 x 4096 W2 at M = 8 (wn=2) took 8.2 us with it, 6.2 without
    for M, N, K, wbits, sync in ((1, 4096, 4096, 4, 1), (4, 4096, 4096, 2, 1), (8, 4096, 4096, 2, 0),
                                 (16, 28672, 8192, 2, 0), (8, 8192, 28672, 2, 1)):
        chosen = schedules.cuda_stream.resolve_knobs(lutc.MPGemmSpec(M, N, K, wbits=wbits, act_dtype="float16"))
        assert chosen["warp_sync"] == sync, (M, N, K, wbits, chosen)
    # the 8-slice kernels of 2-bit slots read their codes raw (28672 x 8192 W2 at M = 1: 25.1 us
    # against 26.2), where they scale late; W4 and the 4-warp kernels do not
    for M, N, K, wbits, zp, raw in ((1, 28672, 8192, 2, False, 1), (4, 8192, 28672, 2, False, 1),
                                    (1, 28672, 8192, 4, False, 0), (1, 4096, 4096, 2, False, 0),
                                    (1, 28672, 8192, 2, True, 0)):
        spec = lutc.MPGemmSpec(M, N, K, wbits=wbits, zero_point=zp, act_dtype="float16")
        assert schedules.cuda_stream.resolve_knobs(spec)["raw_codes"] == raw, (M, N, K, wbits, zp)
    assert schedules.cuda_stream.resolve_knobs(lutc.MPGemmSpec(1, 28672, 8192, wbits=2, act_dtype="float16"),
                                               late_scale=0)["raw_codes"] == 0
    # W1, W3 and ternary take the tensor-core kernels too (tc16 holds them in 2- or 4-bit slots);
    # bcq has none, nor fp32 activations
    # (M = 1: the LUT kernel for W1, the streamed one for W3 and ternary, as for W2 and W4)
    for fmt, wbits in (("uniform", 1), ("uniform", 3), ("ternary", 2)):
        for M, arch, sname in ((1, "sm_90a", "cuda_lut" if wbits == 1 else "cuda_stream"), (4, "sm_90a", "cuda_stream"),
                               (16, "sm_90a", "cuda_wgmma"), (16, "sm_80", "cuda_mma")):
            spec = lutc.MPGemmSpec(M, 256, 512, wbits=wbits, format=fmt, act_dtype="float16")
            assert lutc.build(spec, target=f"cuda:{arch}").schedule == sname, (fmt, wbits, M, arch)
    assert lutc.build(lutc.MPGemmSpec(16, 256, 512, wbits=3, format="bcq", act_dtype="float16"),
                      target="cuda:sm_90a").schedule == "cuda_generic"
    assert lutc.build(lutc.MPGemmSpec(16, 256, 512, wbits=3), target="cuda:sm_90a").schedule == "cuda_generic"
    assert lutc.build(lutc.MPGemmSpec(4, 256, 512, act_dtype="float16"), target="cuda:sm_90a").schedule == "cuda_stream"
    # M = 2..8: the streamed mma kernel (the LUT kernel builds one table per row of x), or on a wide
    # weight wgmma (above)
    for M, wbits in itertools.product((2, 8), (2, 4)):
        spec = lutc.MPGemmSpec(M, 8192, 28672, wbits=wbits, act_dtype="float16")
        assert lutc.build(spec, target="cuda:sm_90a").schedule == "cuda_stream"
    # M = 1: the streamed mma kernel at 2 and 4 bits (H200: 29.9 against the LUT kernel's 30.0 us
    # at W2 with its late scale, 43.6 against 54.6 at W4)
    for wbits in (2, 4):
        assert lutc.build(lutc.MPGemmSpec(1, 28672, 8192, wbits=wbits, act_dtype="float16"),
                          target="cuda:sm_90a").schedule == "cuda_stream"
    # M >= 17 on Hopper: the wgmma kernel; on Ampere the mma.sync one
    spec = lutc.MPGemmSpec(128, 28672, 8192, wbits=2, act_dtype="float16")
    assert lutc.build(spec, target="cuda:sm_90a").schedule == "cuda_wgmma"
    assert lutc.build(spec, target="cuda:sm_80").schedule == "cuda_mma"
    # bf16 activations take the same kernels as fp16; fp32 activations have no mma kernel: the LUT
    # kernel takes small M
    for M, arch, sname in ((1, "sm_90a", "cuda_stream"), (4, "sm_90a", "cuda_stream"), (16, "sm_80", "cuda_mma"),
                           (128, "sm_80", "cuda_mma"), (128, "sm_90a", "cuda_wgmma")):
        assert lutc.build(lutc.MPGemmSpec(M, 256, 512, act_dtype="bfloat16"), target=f"cuda:{arch}").schedule == sname
    assert lutc.build(lutc.MPGemmSpec(4, 256, 512, wbits=3, act_dtype="float32"), target="cuda:sm_90a").schedule == "cuda_lut"


@pytest.mark.parametrize("name,expect", [("host", "cpu"), ("llvm", "cpu"), ("arm", "cpu-cross"),
                                         ("cuda", "cuda"), ("cuda:sm_80", "cuda"),
                                         ({"kind": "llvm", "mcpu": "x86-64-v3"}, "cpu")])
def test_target_names(name, expect):
    assert kind(resolve(name)) == expect


def test_arm_object_is_aarch64(tmp_path):
    kernel = lutc.build(lutc.MPGemmSpec(1, 64, 256, wbits=2, group_size=64), target="arm")
    path = tmp_path / "k.o"
    kernel.executable.mod.write_to_file(str(path))
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert struct.unpack("<H", header[18:20])[0] == 183   # EM_AARCH64
    assert "aarch64" in kernel.source


def test_simd_schedules_name_the_host_architecture(monkeypatch):
    """A host target names no triple: the architecture is this machine's (an ARM host gets the
    NEON kernel, as a cross target to aarch64 does)."""
    import tvm
    import schedules
    from lutc import cpu_arch
    from lutc.tuner.records import log_for
    from schedules import arm, common, x86
    spec = lutc.MPGemmSpec(1, 64, 256, table_dtype="int8")
    host = resolve(None)
    assert not host.attrs.get("mtriple")
    def pretend(name):     # this process on another machine: its facts read again
        monkeypatch.setattr(cpu_arch.platform, "machine", lambda: name)
        lutc.target.forget_facts()
    try:
        pretend("arm64")    # macOS spells it so
        assert log_for("cpu", {}).path.endswith("cpu-aarch64.jsonl")
        assert common.arch(host) == "aarch64" and arm.supports(spec, host) and not x86.supports(spec, host)
        assert common.arch(tvm.target.Target({"kind": "llvm", "mtriple": "arm64-apple-macos"})) == "aarch64"
        assert common.arch(tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"})) == "x86"
        pretend("x86_64")
        assert common.arch(host) == "x86" and not arm.supports(spec, host)
        assert schedules.default("cpu-cross", spec, lutc.target.resolve("arm")) is arm
    finally:
        monkeypatch.undo()
        lutc.target.forget_facts()


def test_facts_carry_what_the_schedules_ask():
    """One resolution per target: kind, SIMD family, LLVM features and CUDA architecture, the
    same object each time; the schedules' questions are answered from it."""
    from tvm.target import codegen
    from schedules import common
    arm, sm80, host = (lutc.target.facts(t) for t in ("arm", "cuda:sm_80", None))
    assert (arm.kind, arm.simd, arm.cuda_arch) == ("cpu-cross", "aarch64", "")
    assert arm.has("neon", "dotprod") and not arm.has("avx2") and lutc.target.facts("arm") is arm
    assert (sm80.kind, sm80.simd, sm80.features, sm80.cuda_arch) == ("cuda", None, frozenset(), "sm_80")
    for f in lutc.target.LLVM_FEATURES:       # the host's, as LLVM reports them
        assert host.has(f) == bool(codegen.llvm_cpu_has_features([f], host.target)), f
    assert common.arch(host.target) == host.simd and common.cuda_arch(sm80.target) == "sm_80"
    with pytest.raises(ValueError, match="avx512fp16"):
        host.has("avx512fp16")


def test_every_schedule_module_provides_the_contract():
    import types
    from schedules import contract
    modules = schedules.MODULES
    assert len(modules) == 10 and all(isinstance(contract.check(m), types.ModuleType) for m in modules)
    assert {m.__name__.rsplit(".", 1)[-1] for m in modules if contract.is_template(m)} == {
        "x86", "arm", "amx", "dot_mac", "cuda_lut", "cuda_stream", "cuda_wgmma", "cuda_mma"}
    broken = types.ModuleType("schedules.broken")
    broken.KNOBS, broken.supports, broken.schedule = {}, lambda s, t: True, lambda *a, **k: None
    with pytest.raises(TypeError, match="schedules.broken .*layout"):
        contract.check(broken)



def test_a_layout_is_asked_only_of_modules_that_may_read_it(monkeypatch):
    """A warp32 weight on Hopper: cuda_lut reads it with its default knobs, and the tensor-core
    modules ranked before it (tc16 whatever their knobs) are not walked knob by knob."""
    from schedules import contract
    spec = lutc.MPGemmSpec(4, 64, 512, wbits=2, group_size=64, act_dtype="float16")
    tgt = resolve("cuda:sm_90a")
    asked = []
    for m in (schedules.cuda_wgmma, schedules.cuda_stream, schedules.cuda_mma):
        monkeypatch.setattr(m, "layout", lambda *a, _name=m.__name__, **k: asked.append(_name) or "tc16")
    assert schedules.for_layout("cuda", spec, tgt, "warp32") == (schedules.cuda_lut, {})
    assert asked == []
    # every module's LAYOUTS holds what its layout() says, on each kind of target
    checked = set()
    for t, s in ((tgt, spec), (resolve("x86"), spec.with_(act_dtype="float32", table_dtype="int8")),
                 (resolve("arm"), spec.with_(act_dtype="float32", table_dtype="int8"))):
        for m in schedules.MODULES:
            if m.supports(s, t):
                assert contract.may_read(m, m.layout(s, t)), m.__name__
                checked.add(m.__name__.rsplit(".", 1)[-1])
    assert {"cuda_lut", "cuda_generic", "x86", "dot_mac", "arm", "cpu_generic"} <= checked
    assert not contract.may_read(schedules.cuda_lut, "tc16") and contract.may_read(schedules.x86, "tiles64")

def test_templates_do_not_build_the_front_end_function(monkeypatch):
    import importlib
    build_module = importlib.import_module("lutc.build")     # lutc.build is the function

    def refuse(spec):
        raise AssertionError("a template's kernel needs no front-end function")
    monkeypatch.setattr(build_module, "lut_mpgemm", refuse)
    monkeypatch.setenv("LUTC_CACHE", "0")
    kernel = lutc.build(lutc.MPGemmSpec(1, 80, 384, wbits=2, group_size=128, table_dtype="int8"), target="x86", schedule="x86")
    assert kernel.schedule == "x86"
    with pytest.raises(AssertionError, match="no front-end function"):
        lutc.build(lutc.MPGemmSpec(1, 80, 384, wbits=2, group_size=128, table_dtype="int8"), target="x86", schedule="cpu_generic")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fmt,wbits,zero_points", [("uniform", b, zp) for b in (1, 2, 3, 4) for zp in (True, False)]
                                                  + [("ternary", 2, False)])
def test_tc16_dequantization_bits(dtype, fmt, wbits, zero_points):
    """The tensor-core kernels' dequantization (:func:`schedules.cuda_ptx.dequant_tc16`), emulated
    bit by bit on random words for every code pair of a lane: the LOP3 under the magic number,
    the exact FMA, then ``(q - z) s`` rounded once to ``dtype``, must equal the codes' ``(q - c) s``
    (bf16: ``s`` rounded to bf16 first, as the kernel loads it). Every slot value of the format's
    ``tc16`` slot width is read (W3 sits in 4-bit slots, W1 and ternary in 2-bit ones), with the
    format's own centre ``c``."""
    import torch
    import tvm
    from lutc.layouts import tc16_code_bits
    from schedules.cuda_ptx import HALVES, dequant_tc16, magic
    tdt = getattr(torch, dtype)
    spec = lutc.MPGemmSpec(1, 16, 128, wbits=wbits, format=fmt, zero_point=zero_points)
    slot, c = tc16_code_bits(spec), spec.code_center
    gen = np.random.default_rng(wbits * 2 + zero_points)
    words = gen.integers(0, 2 ** 32, size=(slot // 2, 4), dtype=np.uint64)
    names = {(j, w): tvm.tirx.Var(f"w{j}{w}", "uint32") for j in range(slot // 2) for w in range(4)}
    s2, z2 = tvm.tirx.Var("s2", "uint32"), tvm.tirx.Var("z2", "uint32")
    scale, zero = torch.tensor(0.0371, dtype=tdt), torch.tensor(float(2 ** wbits // 2 - 1), dtype=tdt)
    bound = {v.name: int(words[k]) for k, v in names.items()}
    ops = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
           "LShift": lambda a, b: a << b, "RShift": lambda a, b: a >> b, "BitwiseOr": lambda a, b: a | b,
           "BitwiseAnd": lambda a, b: a & b}

    ops.update({"EQ": lambda a, b: int(a == b), "Max": max})

    def value(expr) -> int:      # the integer a constant index expression of the kernel folds to
        kind = type(expr).__name__
        if kind in ops:
            return ops[kind](value(expr.a), value(expr.b)) & 0xFFFFFFFF
        if kind == "Cast":
            return value(expr.value) & 0xFFFFFFFF
        if kind == "Call" and expr.op.name.endswith("if_then_else"):
            return value(expr.args[1] if value(expr.args[0]) else expr.args[2])
        return bound[expr.name] if kind == "Var" else int(expr.value)

    def halves(bits: int):
        return torch.tensor([bits & 0xFFFF, bits >> 16], dtype=torch.int32).to(torch.int16).view(tdt)

    def rnd(t):      # an exact product or sum, rounded once to dtype
        return t.double().to(tdt)

    for e in range(32):
        call = dequant_tc16(names, (), e, slot, s2, z2, zero_points, c, dtype)
        word, mask, mul, add = (value(a) for a in call.args[1:5])
        h = halves((word & mask) | (magic(dtype) * 0x10001))       # the LOP3
        q = rnd(h.double() * halves(mul).double() + halves(add).double())
        got = rnd(rnd(q.double() - zero.double()).double() * scale.double()) if zero_points else \
            rnd(q.double() * scale.double())
        pairs, slots = 16 // slot, 8 // slot
        w = int(words[(e // pairs) // 4, (e // pairs) % 4])
        byte, v = (e % pairs) // slots, (e % pairs) % slots
        codes = [(w >> (16 * half + 8 * byte + slot * v)) & (2 ** slot - 1) for half in (0, 1)]
        offset = zero.double() if zero_points else c
        want = rnd(rnd(torch.tensor(codes, dtype=torch.float64) - offset).double() * scale.double())
        assert torch.equal(got, want), (e, codes, got, want, HALVES[dtype])
