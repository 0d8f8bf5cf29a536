"""The multiply-add kernel on Intel AMX tiles: ``dot_mac``'s arithmetic, 16 tokens at a time.

Sapphire, Emerald and Granite Rapids Xeons have AMX-INT8: eight tile registers of 16 rows x 64
bytes and ``tdpbsud``, which adds a 16 x 64 int8 tile times a 64 x 16 uint8 tile (in 4-byte
groups) into a 16 x 16 int32 tile: 16384 multiply-adds per instruction, 16 times AVX-512
``vpdpbusd``'s 1024. For a batch (decode batches, prompts) the dot products are the cost, so
this is where AMX pays; at M = 1 a tile holds one useful token row of 16.

The arithmetic is ``dot_mac``'s (int8 activations per block, unsigned weight codes, the same
block epilogue and error bound) and so is the weight layout (``dot16``, :mod:`lutc.formats`):
a 64-byte chunk holds 4 bytes of each of 16 rows, and code slot ``s`` of its bytes, shifted and
masked, is one 16-row x 4-code vector whose 4 codes meet activations ``4 (chunk * 8/bits + s)
..`` (one 4-byte group of ``xq``). Sixteen such vectors stacked are exactly a ``tdpbsud`` B
tile (row ``k'``: 16 weight rows x 4 codes), and the matching 64 bytes of each token's ``xq``
row are its A tile row: the activations are already in the tile's k order, so neither side is
transposed.

Loops: (1) per token row, in parallel: ``dx`` per block, the int8 activations, ``sum xq``
(:func:`schedules.dot_mac.quantize_activations`); (2) per ``weight_tiles`` tiles of 16 weight
rows, in parallel (the tile configuration is per thread, loaded by each task): per block, its
codes unpacked once into a buffer (B tiles, ``tmm0..``); per pass over ``token_tiles`` tiles of
16 tokens, per tile step (64 activations, or 32 where blocks are 32: :func:`tile_step`): the B
tiles loaded, then per token tile its A tile (straight from ``xq``) and one ``tdpbsud`` per B
tile into its own C tile (every pair of tiles has one: independent accumulators, so the
products overlap); (3) at the block's end each
C tile is stored and scaled into float accumulators by ``dot_mac``'s epilogue
(:func:`schedules.dot_mac.block_term`). Tokens past M in the last token tile read padding rows
of ``xq`` whose sums are never used.

Measured on a 2-core Emerald Rapids VM (``benchmarks/results/cpu_amx_emr.md``): from about
M = 8 it overtakes ``dot_mac`` (whose cost grows with M while a tile's is flat to 16 tokens),
1.3-2.0x at M = 16 and 1.4-2.6x at M = 128. What it does not hide: the per-block store and
scale of the C tiles, and tile loads that serve at most two products; software-pipelining
both (unpacking a block ahead, scaling a block late) was tried and was slower (its doubled
buffers crowd L1).

The process must be allowed the tile state once (Linux ``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)``, kernel 5.16+): the kernel asks itself at each call (one system call, a
fraction of a microsecond), so it runs the same from Python, an exported C library or ggml.
"""
from __future__ import annotations

from tvm import IRModule, s_tir
from tvm.script import tirx as T

from lutc.layouts import code_bits

from .common import drop_param, has_features, weight_buffers
from .dot_mac import block_term, code_slot, quantize_activations, x_align

#: Writes its kernel itself; the front end's function is only its reference (schedules.contract).
TEMPLATE = True
#: ``weight_tiles``: 16-row weight tiles per task (B tiles); ``token_tiles``: 16-token tiles per
#: pass (A tiles). Each pair has its C tile, and all must fit the 8 tile registers
#: (:func:`fits`): 1 x 1..3, 2 x 1..2, 3 x 1. More pairs keep more ``tdpbsud`` independent.
#: The weight layout it reads (:mod:`lutc.layouts`), whatever the knobs: ``dot_mac``'s on x86.
LAYOUTS = ("dot16",)
KNOBS = {"weight_tiles": (1, 2, 3), "token_tiles": (1, 2, 3)}
#: Weight rows (and tokens) of a tile, bytes of a tile row, tile registers.
ROWS, ROW_BYTES, TILES = 16, 64, 8
#: Linux ``arch_prctl`` codes (``asm/prctl.h``, ``asm/fpu/types.h``) for the tile data state.
SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18


def supports(spec, target) -> bool:
    """uniform/ternary with int8 tables (int8 activations) on a CPU with AMX-INT8, blocks of
    whole tile steps (:func:`tile_step`)."""
    return (spec.format in ("uniform", "ternary") and spec.table_dtype == "int8"
            and has_features(target, "amx-tile", "amx-int8") and spec.block % 32 == 0)


def tile_step(spec) -> int:
    """Activations per ``tdpbsud``: a whole A tile row (64) where blocks hold whole rows, else 32
    (A tiles of 32-byte rows, B tiles of 8 rows: llama.cpp's Q4_0 and other groups of 32 scale
    every 32 activations)."""
    return ROW_BYTES if spec.block % ROW_BYTES == 0 else 32


#: Rows of x from which the tile kernel is the default: at M = 8 it ties ``dot_mac`` at W2 and
#: trails it at W4; from there ``dot_mac``'s time grows with M and a tile's does not.
MIN_M = 9


def preferred(spec, target) -> bool:
    """From :data:`MIN_M` rows of x (``benchmarks/results/cpu_amx_emr.md``); below, ``dot_mac``
    streams the weights with less work per weight load."""
    return spec.M >= MIN_M


def fits(weight_tiles: int, token_tiles: int) -> bool:
    """Whether B, A and C tiles fit the tile registers."""
    return weight_tiles + token_tiles + weight_tiles * token_tiles <= TILES


def layout(spec, target, weight_tiles: int = 1, token_tiles: int = 1, **_) -> str:
    if not fits(weight_tiles, token_tiles):
        raise ValueError(f"amx knobs weight_tiles={weight_tiles} x token_tiles={token_tiles}: their B, A and C "
                         f"tiles ({weight_tiles} + {token_tiles} + {weight_tiles * token_tiles}) exceed the "
                         f"{TILES} tile registers")
    return "dot16"


def default_knobs(spec) -> dict:
    """Three weight tiles per token tile while M fits one token tile (three independent C tiles),
    else 2 x 2."""
    return {"weight_tiles": 3, "token_tiles": 1} if spec.M <= ROWS else {"weight_tiles": 2, "token_tiles": 2}


def worth_tuning(spec, target, token_tiles: int = 1, **_) -> bool:
    """False for token tiles past those M fills (padding only)."""
    return token_tiles == 1 or (token_tiles - 1) * ROWS < spec.M


def schedule(func, spec, target, weight_tiles=None, token_tiles=None) -> s_tir.Schedule:
    """The AMX kernel for ``spec`` (``func``: its reference semantics, unused)."""
    knobs = default_knobs(spec)
    weight_tiles = knobs["weight_tiles"] if weight_tiles is None else weight_tiles
    token_tiles = knobs["token_tiles"] if token_tiles is None else token_tiles
    layout(spec, target, weight_tiles=weight_tiles, token_tiles=token_tiles)
    return s_tir.Schedule(IRModule({"main": amx_kernel(spec, weight_tiles, token_tiles)}))


def amx_kernel(spec, weight_tiles: int, token_tiles: int):
    """The PrimFunc: ``x [M, K]``, ``planes [N/16, K/(4c), 64]``, ``scales``, [``zeros``], ``out``."""
    M, N, K = spec.M, spec.N, spec.K
    w = code_bits(spec.wbits)
    cpb = 8 // w                              # codes per byte: B-tile rows per weight chunk
    B = spec.block
    C = K // B
    STEP = tile_step(spec)                    # activations per tdpbsud
    SB = B // STEP                            # tile steps per block
    CPS = STEP // (4 * cpb)                   # weight chunks per tile step
    NT = -(-N // ROWS)                        # weight tiles
    WT = min(weight_tiles, NT)
    NTG = -(-NT // WT)                        # parallel tasks
    TK = min(token_tiles, -(-M // ROWS))      # token tiles per pass
    P = -(-M // (ROWS * TK))                  # passes over a block's codes
    MP = P * TK * ROWS                        # token rows of xq, padded to whole tiles
    XW = K + ROW_BYTES                        # xq's row: K bytes and one tile row more, so that an A
    # tile's 16 rows do not fall in one L1 set (a row stride of 4 KiB would)
    V = 4 * ROWS
    act, zp = spec.act_dtype, spec.zero_point
    A0, C0 = WT, WT + TK                      # tile registers: B tiles, then A tiles, then C tiles
    used = C0 + WT * TK
    PLANES, scale_shape, zero_shape = weight_buffers(spec, "dot16")
    quantize = quantize_activations(spec)

    def tile(name: str, *args):
        """A tile instruction (LLVM's AMX intrinsics name their tile registers by number)."""
        return T.call_llvm_intrin("void", f"llvm.x86.{name}", *args)

    @T.prim_func(s_tir=True)
    def main(x: T.Buffer((M, K), act, align=x_align(act)), planes: T.Buffer(PLANES, "uint8"),
             scales: T.Buffer(scale_shape, spec.scale_dtype), zeros: T.Buffer(zero_shape, spec.scale_dtype),
             out: T.Buffer((M, N), act)):
        T.func_attr({"tirx.noalias": True})
        # The tile state for this process (idempotent; the answer is not needed: without it the
        # first tile instruction faults, as it would with no AMX). Below, tile instructions reach
        # buffers through access_ptr, an opaque access that keeps a buffer's whole extent: TVM
        # would shrink it to the elements indexed, and xq's padding rows are read by tiles only.
        T.evaluate(T.call_extern("int64", "syscall", T.int64(SYS_ARCH_PRCTL), T.int64(ARCH_REQ_XCOMP_PERM),
                                 T.int64(XFEATURE_XTILEDATA)))
        xq = T.alloc_buffer((MP, XW), "int8")
        dx = T.alloc_buffer((M, C), "float32")
        xs = T.alloc_buffer((M, C), "float32")
        quantize(x, xq, dx, xs)
        for task in T.parallel(NTG):
            cfg = T.alloc_buffer((64,), "uint8", scope="local")
            codes = T.alloc_buffer((WT, SB, STEP // 4, V), "uint8", scope="local")   # a block's B tiles
            sums = T.alloc_buffer((TK, WT, ROWS, ROWS), "int32", scope="local")      # C tiles, stored
            accf = T.alloc_buffer((M, WT, ROWS), "float32", scope="local")
            for i in range(64):
                cfg[i] = T.uint8(0)
            cfg[0] = T.uint8(1)                                   # palette 1
            for t in range(used):                                 # bytes per row (low byte), rows:
                cfg[16 + 2 * t] = T.uint8(T.if_then_else(t >= A0 and t < C0, STEP, V))   # A: STEP bytes
                cfg[48 + t] = T.uint8(T.if_then_else(t < A0, STEP // 4, ROWS))           # B: STEP / 4 rows
            tile("ldtilecfg", T.address_of(cfg[0]))
            for m, b in T.grid(M, WT):
                for r in T.vectorized(ROWS):
                    accf[m, b, r] = T.float32(0)
            for c in range(C):
                # the block's codes, unpacked before any tile reads them (a tile load of bytes
                # just stored would wait for the stores)
                for b, j in T.grid(WT, SB):
                    wtile = T.meta_var(T.min(task * WT + b, NT - 1))      # (past N: the last again)
                    for kc in T.unroll(CPS):
                        wv = planes[wtile, (c * SB + j) * CPS + kc, T.ramp(0, 1, V)]
                        for s in T.unroll(cpb):
                            codes[b, j, kc * cpb + s, T.ramp(0, 1, V)] = code_slot(wv, w, s, V)
                for p in range(P):
                    for a in T.unroll(TK):
                        for b in T.unroll(WT):
                            tile("tilezero", T.int8(C0 + a * WT + b))
                    for j in range(SB):
                        for b in T.unroll(WT):
                            tile("tileloadd64", T.int8(b),
                                 codes.access_ptr("r", offset=(b * SB + j) * (STEP // 4) * V), T.int64(V))
                        for a in T.unroll(TK):
                            tile("tileloadd64", T.int8(A0 + a),
                                 xq.access_ptr("r", offset=(p * TK + a) * ROWS * XW + (c * SB + j) * STEP),
                                 T.int64(XW))
                            for b in T.unroll(WT):
                                tile("tdpbsud", T.int8(C0 + a * WT + b), T.int8(A0 + a), T.int8(b))
                    for a in T.unroll(TK):
                        for b in T.unroll(WT):
                            tile("tilestored64", T.int8(C0 + a * WT + b),
                                 sums.access_ptr("w", offset=(a * WT + b) * ROWS * ROWS), T.int64(4 * ROWS))
                    for a, b, i in T.grid(TK, WT, ROWS):
                        row = T.meta_var((p * TK + a) * ROWS + i)
                        wtile = T.meta_var(T.min(task * WT + b, NT - 1))
                        if row < M:
                            for r in T.vectorized(ROWS):
                                accf[row, b, r] = accf[row, b, r] + block_term(
                                    spec, scales, zeros, wtile, c, r, dx[row, c], xs[row, c], sums[a, b, i, r])
            tile("tilerelease")
            for m, b, r in T.grid(M, WT, ROWS):
                if (task * WT + b) * ROWS + r < N:
                    out[m, (task * WT + b) * ROWS + r] = T.Cast(act, accf[m, b, r])

    return main if zp else drop_param(main, "zeros")
