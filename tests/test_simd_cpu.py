"""The SIMD LUT kernels (x86 vpshufb; ARM tbl is tested under qemu in test_arm_qemu.py).

Each kernel is checked twice: against the float64 reference within the int8-table bound (4) of
lutc.frontend, and against the generic schedule with the same int8 tables, which computes the
same quantized sums in another order (so it must agree to float32 rounding).
"""
import itertools

import pytest
import torch
from tvm.target import codegen

import lutc
import schedules
from lutc.target import resolve
from lutc.testing import (FORMATS, GROUP_SIZES, ROUNDING_SLACK, int8_activation_bound, int8_table_bound, random_case,
                          reference, rel_error, tolerance)

HOST = resolve("host")
WIDTHS = [32] + ([64] if codegen.llvm_cpu_has_features(["avx512bw"], HOST) else [])
SHAPES = ((1, 64, 256), (3, 130, 1024), (16, 40, 11008), (1, 200, 512))


def check_simd(spec, kernel, seed=0):
    x, qw = random_case(spec, seed=seed)
    packed = kernel.pack(qw)
    out = torch.full((spec.M, spec.N), float("nan"), dtype=x.dtype)
    kernel(x, packed, out=out)
    ref = reference(x, qw)
    bound = int8_table_bound(spec, x, qw)
    slack = ROUNDING_SLACK[spec.act_dtype]
    assert torch.isfinite(out).all()
    assert ((out.double() - ref).abs() <= bound + slack * ref.abs().max()).all()
    assert rel_error(out, ref) < tolerance(spec)
    model = lutc.build(spec, schedule="cpu_generic")(x, qw)
    assert rel_error(out, model.double()) < 3 * slack


def _cases():
    for idx, ((fmt, wbits, zp), sym) in enumerate(itertools.product(FORMATS, (True, False))):
        gs = -1 if fmt == "ternary" else GROUP_SIZES[idx % 4]
        M, N, K = SHAPES[idx % 4]
        yield pytest.param(
            lutc.MPGemmSpec(M, N, K, wbits=wbits, format=fmt, group_size=gs, zero_point=zp,
                            symmetrize=sym, table_dtype="int8"),
            id=f"{fmt}-w{wbits}{'-zp' if zp else ''}-{'sym' if sym else 'full'}-gs{gs}-M{M}-{N}x{K}")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("spec", list(_cases()))
def test_x86_simd_kernel(spec, width):
    kernel = lutc.build(spec, schedule="x86", knobs={"vector_bytes": width, "quads": False})
    pairs = spec.format != "bcq" and spec.planes % 2 == 0
    assert kernel.layout == (f"ptiles{width}" if pairs else f"tiles{2 * width}")
    check_simd(spec, kernel, seed=spec.N + spec.wbits)
    if pairs:   # the unpaired variant of the same spec
        kernel = lutc.build(spec, schedule="x86", knobs={"vector_bytes": width, "paired": False, "quads": False})
        assert kernel.layout == f"tiles{2 * width}"
        check_simd(spec, kernel, seed=spec.N + spec.wbits)


@pytest.mark.parametrize("knobs", [{"tiles": 2}, {"tiles": 4, "row_groups": 2, "k_span": 2},
                                   {"tiles": 1, "row_groups": 4, "k_span": 1},
                                   {"tiles": 4, "row_groups": 8, "k_span": 8, "paired": False}], ids=str)
@pytest.mark.parametrize("fmt,wbits,zp,gs", [("uniform", 2, False, 128), ("uniform", 4, True, 64),
                                             ("bcq", 3, False, 128), ("ternary", 2, False, -1),
                                             ("uniform", 1, False, -1)])
def test_x86_simd_task_shapes(knobs, fmt, wbits, zp, gs):
    """Row tiles sharing each table load, groups of them per task, K in spans: N = 330 is 6 tiles
    of 64 rows (or 3 of 128), so tasks repeat tiles past N that they must not store; M = 3."""
    spec = lutc.MPGemmSpec(3, 330, 2048, wbits=wbits, format=fmt, group_size=gs, zero_point=zp, table_dtype="int8")
    knobs = dict(knobs, paired=False) if fmt == "bcq" or wbits in (1, 3) else knobs
    check_simd(spec, lutc.build(spec, schedule="x86", knobs=knobs), seed=wbits + 20)


QUADS = codegen.llvm_cpu_has_features(["avx512vbmi", "avx512vnni"], HOST)


@pytest.mark.skipif(not QUADS, reason="lookups in quads need AVX-512 VBMI and VNNI")
@pytest.mark.parametrize("spec", list(_cases()))
def test_x86_lookups_in_quads(spec):
    """Four groups' tables per vpermb register, each row's four lookups summed by vpdpbusd
    (``gtiles32``): every format, ragged N (130 and 40 rows are not multiples of 32), M = 1..16."""
    kernel = lutc.build(spec, schedule="x86", knobs={"quads": True})
    assert kernel.layout == "gtiles32"
    check_simd(spec, kernel, seed=spec.N + spec.wbits + 1)


@pytest.mark.skipif(not QUADS, reason="lookups in quads need AVX-512 VBMI and VNNI")
@pytest.mark.parametrize("knobs", [{"tiles": 1}, {"tiles": 4, "row_groups": 2, "k_span": 2}, {"unroll": 1}], ids=str)
def test_x86_quads_task_shapes_and_default(knobs):
    """W1 at M = 1 defaults to quads where the CPU has VBMI and VNNI; the task-shape knobs apply
    (N = 330: tasks repeat tiles past N that they must not store)."""
    spec = lutc.MPGemmSpec(1, 330, 2048, wbits=1, group_size=64, table_dtype="int8")
    default = lutc.build(spec, tuned=False)
    assert (default.schedule, default.layout) == ("x86", "gtiles32")
    check_simd(spec, lutc.build(spec, schedule="x86", knobs={**knobs, "quads": True}), seed=31)


def test_quads_refusals():
    """Quads need VBMI + VNNI, 64-byte registers and unpaired planes: errors name the knob."""
    spec = lutc.MPGemmSpec(1, 64, 512, wbits=2, table_dtype="int8")
    with pytest.raises(ValueError, match="quads=True needs AVX-512 VBMI and VNNI"):
        lutc.build(spec, {"kind": "llvm", "mcpu": "skylake-avx512"}, schedule="x86", knobs={"quads": True})
    for knobs in ({"quads": True, "vector_bytes": 32}, {"quads": True, "paired": True}):
        with pytest.raises(ValueError, match="quads=True uses 64-byte registers"):
            lutc.build(spec, {"kind": "llvm", "mcpu": "icelake-server"}, schedule="x86", knobs=knobs)
    # W1 at M = 1 on an AVX-512 CPU without VBMI keeps the shuffles
    from lutc.build import choose
    assert choose(spec.with_(wbits=1), {"kind": "llvm", "mcpu": "skylake-avx512"}, tuned=False).layout == "tiles128"


def test_zen4_decodes_w2_w4_and_ternary_with_the_lut_kernel():
    """Where 512-bit integer instructions run at half rate (Zen 4), M = 1 uniform W2 and ternary take
    the LUT kernel in quads and W4 the shuffles from 4096 rows (``x86.half_rate_lut``, timed
    0.93-1.44x over ``dot_mac`` there); W3, W4 on 1024 rows, batches, and Zen 5 keep ``dot_mac``. (Choices only:
    CI hosts need not run Zen 4 code.)"""
    from lutc.build import choose
    from lutc.target import facts
    zen4, zen5 = {"kind": "llvm", "mcpu": "znver4"}, {"kind": "llvm", "mcpu": "znver5"}
    assert facts(zen4).half_rate_512 and not facts(zen5).half_rate_512
    spec = lutc.MPGemmSpec(1, 4096, 4096, wbits=2, table_dtype="int8")
    picked = lambda s, t: (lambda c: (c.module.__name__.rsplit(".", 1)[-1], c.layout))(choose(s, t, tuned=False))  # noqa: E731
    assert picked(spec, zen4) == ("x86", "gtiles32")
    assert picked(spec.with_(wbits=4), zen4) == ("x86", "ptiles64")
    assert picked(spec.with_(format="ternary", group_size=-1), zen4) == ("x86", "gtiles32")
    assert picked(spec.with_(wbits=3), zen4)[0] == "dot_mac"
    assert picked(spec.with_(format="ternary", group_size=-1, M=2), zen4)[0] == "dot_mac"
    assert picked(spec.with_(wbits=4, N=1024), zen4)[0] == "dot_mac"
    assert picked(spec.with_(M=16), zen4)[0] == "dot_mac"
    assert picked(spec, zen5)[0] == "dot_mac" and picked(spec.with_(wbits=4), zen5)[0] == "dot_mac"


def test_lut_task_shape_defaults_and_refusals():
    """Default tiles per task (fewer where N or the partial sums ask it), and knobs that cannot build."""
    from schedules import arm, simd_lut
    spec = lutc.MPGemmSpec(1, 4096, 4096, wbits=2, table_dtype="int8")
    assert simd_lut.default_tiles(spec, 64) == 4                          # 64 tiles: 16 tasks
    assert simd_lut.default_tiles(spec.with_(N=1024), 64) == 2            # 16 tiles: 8 tasks of 2
    assert simd_lut.default_tiles(spec.with_(N=300), 64) == 1
    assert simd_lut.default_tiles(spec.with_(M=128), 64) == 2             # 4 tiles' sums: 128 KiB
    assert [arm.default_tiles(spec.with_(wbits=b)) for b in (1, 2, 4)] == [4, 2, 1]   # NEON registers
    assert simd_lut.task_shape(spec, 64, None, 4, 8) == (4, 4, 8, 4)
    with pytest.raises(ValueError, match=r"k_span=8 does not divide the 12 blocks of K = 1536"):
        lutc.build(spec.with_(K=1536), schedule="x86", knobs={"row_groups": 2, "k_span": 8})
    with pytest.raises(ValueError, match=r"tiles=4, row_groups=8 at M = 16 need 256 KiB of partial sums"):
        lutc.build(spec.with_(M=16), schedule="x86", knobs={"tiles": 4, "row_groups": 8, "k_span": 1,
                                                             "paired": False, "quads": False})


@pytest.mark.parametrize("act_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fmt,wbits,zp,gs", [("uniform", 4, True, 128), ("bcq", 2, False, 64),
                                             ("ternary", 2, False, -1)])
def test_x86_simd_half_activations(act_dtype, fmt, wbits, zp, gs):
    spec = lutc.MPGemmSpec(3, 130, 1024, wbits=wbits, format=fmt, group_size=gs, zero_point=zp,
                           act_dtype=act_dtype, table_dtype="int8")
    check_simd(spec, lutc.build(spec, schedule="x86"), seed=4)


def test_x86_simd_without_unroll_and_float32_scales():
    spec = lutc.MPGemmSpec(2, 96, 512, wbits=3, group_size=32, scale_dtype="float32", table_dtype="int8")
    check_simd(spec, lutc.build(spec, schedule="x86", knobs={"unroll": 1}), seed=8)


def test_simd_kernel_refuses_unsupported_specs():
    with pytest.raises(ValueError, match="paired planes need"):
        lutc.build(lutc.MPGemmSpec(1, 64, 256, wbits=3, table_dtype="int8"), schedule="x86",
                   knobs={"paired": True})
    with pytest.raises(ValueError, match="does not support"):
        lutc.build(lutc.MPGemmSpec(1, 64, 256, g=2, table_dtype="int8"), schedule="x86")
    with pytest.raises(ValueError, match="does not support"):
        lutc.build(lutc.MPGemmSpec(1, 64, 256, table_dtype="float32"), schedule="x86")


def test_weights_in_a_foreign_layout_are_repacked_once():
    spec = lutc.MPGemmSpec(1, 64, 256, wbits=2, group_size=64, table_dtype="int8")
    kernel = lutc.build(spec, schedule="x86", knobs={"vector_bytes": 32})
    x, qw = random_case(spec)
    other = lutc.repack(qw, "tiles128")
    y1 = kernel(x, other)
    assert kernel.prepared_weights == 1
    y2 = kernel(x, other)
    assert kernel.prepared_weights == 1 and torch.equal(y1, y2)
    del other
    import gc
    gc.collect()
    assert kernel.prepared_weights == 0


def test_swapped_weight_tensors_are_checked_again():
    spec = lutc.MPGemmSpec(1, 64, 256, wbits=2, group_size=64, table_dtype="int8")
    kernel = lutc.build(spec, schedule="x86")
    x, qw = random_case(spec)
    qw = kernel.pack(qw)
    kernel(x, qw)
    qw.scales = qw.scales.double()
    with pytest.raises(TypeError, match="qw.scales has dtype torch.float64"):
        kernel(x, qw)


DOT_FORMATS = [f for f in FORMATS if f[0] != "bcq"]      # integer codes
HAS_VNNI = codegen.llvm_cpu_has_features(["avx512vnni", "avx512bw"], HOST)
HAS_AMX = codegen.llvm_cpu_has_features(["amx-tile", "amx-int8"], HOST)
#: A CPU with AMX-INT8, for code generation on any host.
AMX_CPU = {"kind": "llvm", "mcpu": "sapphirerapids"}


def check_dot(spec, kernel, seed=0):
    x, qw = random_case(spec, seed=seed)
    out = torch.full((spec.M, spec.N), float("nan"), dtype=x.dtype)
    kernel(x, kernel.pack(qw), out=out)
    ref = reference(x, qw)
    slack = ROUNDING_SLACK[spec.act_dtype]
    bound = int8_activation_bound(spec, x, qw)
    assert torch.isfinite(out).all()
    assert ((out.double() - ref).abs() <= bound + slack * ref.abs().max()).all()
    assert rel_error(out, ref) < tolerance(spec)


@pytest.mark.skipif(not HAS_VNNI, reason="host has no AVX-512 VNNI")
@pytest.mark.parametrize("row_tiles,prefetch,chains,in_place,splits", [
    (1, 0, 1, 0, 1), (4, 0, 1, 0, 1), (2, 16, 1, 0, 1), (4, 64, 1, 0, 1), (1, 0, 4, 0, 1), (2, 16, 2, 0, 1),
    (4, 0, 1, 1, 1), (1, 16, 2, 1, 1), (4, 0, 1, 2, 1), (2, 16, 2, 2, 1), (4, 0, 1, 0, 2), (1, 16, 2, 2, 4)])
@pytest.mark.parametrize("fmt,wbits,zp", DOT_FORMATS, ids=str)
def test_x86_vnni_multiply_add_kernel(fmt, wbits, zp, row_tiles, prefetch, chains, in_place, splits):
    gs = -1 if fmt == "ternary" else (32, 64, 128, -1)[wbits - 1]
    M, N, K = ((1, 100, 512), (3, 40, 11008), (16, 130, 1024))[(wbits + zp) % 3]
    spec = lutc.MPGemmSpec(M, N, K, wbits=wbits, format=fmt, group_size=gs, zero_point=zp,
                           table_dtype="int8")
    chains = min(chains, schedules.dot_mac.chunks_per_block(spec))   # (W1 in blocks of 32: one load each)
    splits = max(s for s in (1, 2, splits) if spec.blocks % s == 0)   # (K = 11008: 86 blocks)
    kernel = lutc.build(spec, schedule="dot_mac", knobs={"row_tiles": row_tiles, "prefetch": prefetch,
                                                         "chains": chains, "in_place": in_place, "splits": splits})
    assert kernel.layout == "dot16" and "vpdpbusd" in kernel.source
    assert ("@llvm.prefetch" in kernel.source) == (prefetch > 0)   # (a CPU kernel's source is its LLVM IR)
    check_dot(spec, kernel, seed=wbits)


@pytest.mark.parametrize("schedule,M,has", [("dot_mac", 3, HAS_VNNI), ("amx", 20, HAS_AMX)])
@pytest.mark.parametrize("act_dtype", ["float16", "bfloat16"])
def test_multiply_add_half_activations(schedule, M, has, act_dtype):
    if not has:
        pytest.skip(f"host cannot run {schedule} (AVX-512 VNNI / AMX-INT8)")
    spec = lutc.MPGemmSpec(M, 70, 1024, wbits=4, group_size=128, zero_point=True,
                           table_dtype="int8", act_dtype=act_dtype)
    check_dot(spec, lutc.build(spec, schedule=schedule), seed=6)


@pytest.mark.skipif(not HAS_VNNI, reason="host has no AVX-512 VNNI")
def test_multiply_add_with_blocks_of_fewer_vector_lanes():
    """K = 1000 in one group: blocks of 40 activations, so the activation loop runs 8 lanes wide
    and reduces them in three halvings, not four."""
    spec = lutc.MPGemmSpec(3, 40, 1000, wbits=4, group_size=-1, table_dtype="int8")
    assert spec.block == 40 and schedules.dot_mac.lanes(spec.block) == 8
    check_dot(spec, lutc.build(spec, schedule="dot_mac"), seed=5)


@pytest.mark.skipif(not HAS_AMX, reason="host has no AMX-INT8")
@pytest.mark.parametrize("weight_tiles,token_tiles", [(1, 1), (3, 1), (2, 2), (1, 3), (2, 1)])
@pytest.mark.parametrize("fmt,wbits,zp", DOT_FORMATS, ids=str)
def test_amx_tile_kernel(fmt, wbits, zp, weight_tiles, token_tiles):
    """Every format on the tile kernel: M across token tiles and passes (1, 3, 17, 100), N not a
    multiple of 16 x weight_tiles, blocks of 32 (tile steps of 32), 64 and 128, outputs poisoned
    first (check_dot)."""
    gs = -1 if fmt == "ternary" else (32, 64, 128, 32)[wbits - 1]
    M, N, K = ((1, 100, 512), (17, 40, 11008), (100, 130, 1024), (3, 33, 1536))[(wbits + zp + weight_tiles) % 4]
    spec = lutc.MPGemmSpec(M, N, K, wbits=wbits, format=fmt, group_size=gs, zero_point=zp, table_dtype="int8")
    kernel = lutc.build(spec, schedule="amx", knobs={"weight_tiles": weight_tiles, "token_tiles": token_tiles})
    assert kernel.layout == "dot16" and "tdpbsud" in kernel.source
    check_dot(spec, kernel, seed=wbits)


def test_amx_kernel_builds_for_an_amx_cpu_on_any_host():
    """Code generation (any host): the tile instructions, the per-call request for the tile state,
    the default from 9 rows of x, the knobs that cannot fit the tile registers refused by name."""
    spec = lutc.MPGemmSpec(16, 64, 512, wbits=2, group_size=128, table_dtype="int8")
    amx_cpu = resolve(AMX_CPU)
    kernel = lutc.build(spec, target=AMX_CPU, schedule="amx", knobs={"weight_tiles": 2, "token_tiles": 1})
    for text in ("@llvm.x86.tdpbsud", "@llvm.x86.ldtilecfg", "@llvm.x86.tilerelease", "@syscall"):
        assert text in kernel.source
    assert schedules.default("cpu", spec, amx_cpu) is schedules.amx
    assert schedules.default("cpu", lutc.MPGemmSpec(8, 64, 512, table_dtype="int8"), amx_cpu) is schedules.dot_mac
    q4_0 = lutc.MPGemmSpec(16, 64, 512, wbits=4, group_size=32, zero_point=True, table_dtype="int8")
    assert schedules.amx.tile_step(q4_0) == 32 and schedules.amx.tile_step(spec) == 64
    assert schedules.amx.supports(q4_0, amx_cpu) and not schedules.amx.supports(spec, resolve("arm"))
    with pytest.raises(ValueError, match=r"weight_tiles=3 x token_tiles=3: .* exceed the 8 tile registers"):
        schedules.amx.layout(spec, amx_cpu, weight_tiles=3, token_tiles=3)
    worth = schedules.amx.worth_tuning
    assert worth(spec, amx_cpu, token_tiles=1) and not worth(spec, amx_cpu, token_tiles=2)
    assert worth(lutc.MPGemmSpec(17, 64, 512, table_dtype="int8"), amx_cpu, token_tiles=2)


def test_multiply_add_refuses_chains_that_do_not_divide_a_block():
    spec = lutc.MPGemmSpec(1, 64, 256, wbits=1, group_size=32, table_dtype="int8")
    with pytest.raises(ValueError, match="chains=2 does not divide the 1 weight chunks of a 32-weight block"):
        schedules.dot_mac.layout(spec, lutc.target.resolve(None), chains=2)
    with pytest.raises(ValueError, match="splits=4 does not divide the 86 blocks of 128 activations in K=11008"):
        lutc.build(lutc.MPGemmSpec(1, 64, 11008, group_size=128, table_dtype="int8"), target="x86",
                   schedule="dot_mac", knobs={"splits": 4})


@pytest.mark.skipif(not HAS_VNNI, reason="host has no AVX-512 VNNI")
@pytest.mark.parametrize("splits", [2, 4])
def test_multiply_add_k_slices_sum_in_order_and_carry_nan(splits):
    """K slices (``splits``): as many parallel tasks again per slice, each slice's sums in a
    workspace added in slice order; fp32 sums in another order than one slice's, so equal to
    them within rounding; a NaN in one slice's activations reaches the whole output row."""
    spec = lutc.MPGemmSpec(2, 72, 4096, wbits=2, group_size=128, table_dtype="int8")
    one = lutc.build(spec, schedule="dot_mac")
    sliced = lutc.build(spec, schedule="dot_mac", knobs={"splits": splits})
    assert "sliced" in sliced.source and "sliced" not in one.source
    x, qw = random_case(spec, seed=11)
    check_dot(spec, sliced, seed=11)
    packed = one.pack(qw)
    a, b = one(x, packed), sliced(x, packed)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    x[1, 4095] = float("nan")                # the last slice's last block
    y = sliced(x, packed)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[0]).all()


def test_multiply_add_tuning_space_skips_kernels_it_already_has():
    """``rows`` past M builds the kernel of the next smaller value; more accumulators than half
    the vector registers, or chains beside four tiles, are left out of the tuner's space."""
    worth = schedules.dot_mac.worth_tuning
    decode, batch = lutc.MPGemmSpec(1, 64, 256, table_dtype="int8"), lutc.MPGemmSpec(3, 64, 256, table_dtype="int8")
    assert worth(decode, None, rows=1) and not worth(decode, None, rows=2)
    assert worth(batch, None, rows=4) and not worth(batch, None, rows=8)
    assert worth(decode, None, row_tiles=1, chains=4) and not worth(decode, None, row_tiles=4, chains=2)
    # 4 tiles x 3 rows: 12 accumulators; two chains of them would be 24
    assert worth(batch, None, row_tiles=4, rows=4) and not worth(batch, None, row_tiles=4, rows=4, chains=2)
    # codes in place: a sum per slot (2 bits: 4), up to all 32 registers; only as vpdpbusd's unsigned operand
    x86, arm = lutc.target.resolve("x86"), lutc.target.resolve("arm")
    assert worth(decode, x86, row_tiles=4, in_place=1) and worth(batch, x86, row_tiles=4, rows=2, in_place=1)
    assert not worth(batch, x86, row_tiles=4, rows=4, in_place=1) and not worth(decode, arm, in_place=1)
    assert worth(decode, lutc.target.resolve("arm-i8mm"), in_place=1)    # usdot
    with pytest.raises(ValueError, match="in_place=1 needs codes as the unsigned operand"):
        lutc.build(decode, target="arm", schedule="dot_mac", knobs={"in_place": 1})
    w1 = lutc.MPGemmSpec(1, 64, 256, wbits=1, group_size=32, table_dtype="int8")
    default = schedules.dot_mac.default_in_place
    assert default(w1, x86) == 2 and default(w1, arm) == 0 and default(decode, x86) == 0
    # in place within half bytes: half the sums (W1 4 x 4 tiles), sdot's signed operand too; none on 4-bit slots
    assert worth(w1, x86, row_tiles=4, in_place=2) and worth(decode, arm, in_place=2)
    assert not worth(lutc.MPGemmSpec(1, 64, 256, wbits=4, table_dtype="int8"), x86, in_place=2)
    # K slices: where the tile groups are few (512 rows: 8) and each slice keeps 8 blocks of K
    narrow = lutc.MPGemmSpec(1, 512, 3584, table_dtype="int8")
    wide = lutc.MPGemmSpec(1, 14336, 4096, table_dtype="int8")
    assert worth(narrow, x86, splits=2) and worth(narrow, x86, splits=1) and not worth(narrow, x86, splits=4)
    assert not worth(wide, x86, splits=2)      # 224 tile groups


def test_decode_prefetches_by_default_where_it_was_timed_to_pay():
    """``default_prefetch``: a decode (or a batch of 2) on x86 with codes of 2 bits or more
    prefetches 16 chunks ahead from K = 8192, and at any K on a CPU with AMX (the Emerald Rapids
    machines it was timed on); K = 4096 elsewhere (an EPYC lost), W1, batches from 3 rows and ARM
    keep the hardware prefetchers alone. A knob given wins."""
    amx, vnni, arm = resolve(AMX_CPU), resolve({"kind": "llvm", "mcpu": "icelake-server"}), resolve("arm")
    default = schedules.dot_mac.default_prefetch
    long_w2 = lutc.MPGemmSpec(1, 64, 11008, wbits=2, group_size=128, table_dtype="int8")
    short_w4 = lutc.MPGemmSpec(1, 64, 4096, wbits=4, group_size=128, table_dtype="int8")
    assert default(long_w2, vnni) == default(long_w2, amx) == 16 and default(long_w2, arm) == 0
    assert default(short_w4, amx) == 16 and default(short_w4, vnni) == 0
    assert default(lutc.MPGemmSpec(1, 64, 11008, wbits=1, group_size=32, table_dtype="int8"), amx) == 0
    assert default(lutc.MPGemmSpec(2, 64, 11008, wbits=2, group_size=128, table_dtype="int8"), amx) == 16
    assert default(lutc.MPGemmSpec(3, 64, 11008, wbits=2, group_size=128, table_dtype="int8"), amx) == 0
    assert default(lutc.MPGemmSpec(4, 64, 11008, wbits=2, group_size=128, table_dtype="int8"), amx) == 0
    assert "@llvm.prefetch" in lutc.build(long_w2, target=vnni, schedule="dot_mac").source
    assert "@llvm.prefetch" not in lutc.build(long_w2, target=vnni, schedule="dot_mac", knobs={"prefetch": 0}).source


def test_prefetch_past_a_tiles_end_reads_the_next_tasks_tile():
    """``prefetched``: 16 chunks ahead of a tile's last chunks is the next tile group's same tile
    (the thread's next task), as far into it as past the end; past N the last tile again, past
    the row the last chunk. The product with prefetches: ``test_x86_vnni_multiply_add_kernel``."""
    at = lambda tile, ahead: schedules.dot_mac.prefetched(tile, ahead, 4, 10, 64)  # noqa: E731
    assert at(2, 30) == (2, 30) and at(2, 63) == (2, 63)
    assert at(2, 64) == (6, 0) and at(2, 70) == (6, 6)
    assert at(8, 70) == (9, 6)                    # past N: the last tile
    assert at(2, 200) == (6, 63)                  # a distance past a whole row: its last chunk


def test_multiply_add_refuses_bcq():
    with pytest.raises(ValueError, match="does not support"):
        lutc.build(lutc.MPGemmSpec(1, 64, 256, format="bcq", table_dtype="int8"), schedule="dot_mac")
