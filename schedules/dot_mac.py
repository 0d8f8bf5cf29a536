"""The multiply-add alternative: int8 activations times integer weight codes, by dot instructions.

For the same uniform/ternary specs as the LUT kernels, but computed the way llama.cpp's
``q*_K x q8_K`` kernels do: activations are quantized to int8 per block
(``xq = round(x / dx)``, ``dx = max |x| / 127`` over the block), weights stay unsigned codes
``q``, and one instruction multiplies 4 codes of each of ``L`` rows by 4 activations and adds
into ``L`` int32 sums: AVX-512 VNNI ``vpdpbusd`` (``L`` = 16, codes as the unsigned operand) or
NEON ``sdot`` (``L`` = 4, codes fit the signed operand). Per block and row::

    sum_k w x  ~=  s dx (sum_k q xq - z sum_k xq)                 (z = zero point, or (2^b-1)/2;
                                                                   ternary: q = t + 1, z = 1)

The activation rounding is the only approximation: ``|y - y_exact| <= sum_k |w_k| dx / 2``
(``lutc.testing.int8_activation_bound``). ONNX Runtime shipped a T-MAC-style LUT kernel and then found
a VNNI multiply-add kernel faster on some x86 shapes; lutc's default is the LUT kernel at M = 1
and this one from M = 2 (``schedules.x86.preferred`` has the numbers), and on CPUs with AMX
``schedules.amx`` (this arithmetic on tiles) from M = 9. Both ask this module for the activation
quantization (:func:`quantize_activations`) and the block epilogue (:func:`block_term`).

Loops: (1) per row of x, in parallel, per block: ``dx``, the int8 activations (each 4 bytes one
int32 word: one broadcast feeds a dot instruction), and ``sum xq``; (2) per group of
``row_tiles`` tiles of ``L`` rows (and slice of K's blocks, knob ``splits``), in parallel: for
each block and each pass over ``rows`` rows of x, for each chunk of the block, one ``4L``-byte
weight load; each of its ``8/w`` code slots (shift, mask; or masked where it stands, into a sum
per slot: knob ``in_place``) is unpacked once and meets the broadcast activation word of each of
the ``rows`` rows in one dot instruction per tile (``rows x row_tiles`` int32 accumulators: 16 of
AVX-512's 32 registers by default), so one unpacked weight vector serves ``rows`` rows and the block's
weights are read from L1 once per pass; (3) the epilogue per block scales the int32 sums into
float accumulators. Weights: the ``dot{L}`` layout of :mod:`lutc.formats`.
"""
from __future__ import annotations

from tvm import DataType, IRModule, s_tir
from tvm.script import tirx as T

from lutc.frontend import nan_if, nonfinite
from lutc.layouts import code_bits

from .common import arch, drop_param, has_features, weight_buffers

#: Writes its kernel itself; the front end's function is only its reference (schedules.contract).
TEMPLATE = True
KNOBS = {"row_tiles": (1, 2, 4), "rows": (1, 2, 4, 8), "prefetch": (0, 16, 64), "chains": (1, 2, 4),
         "in_place": (0, 1, 2), "splits": (1, 2, 4)}
#: Knobs added after tuning logs were written, at the value their kernels had (``rows``: one row
#: of x per pass over the weights, before rows shared an unpacked weight vector).
ADDED_KNOBS = {"rows": 1, "prefetch": 0, "chains": 1, "in_place": 0, "splits": 1}
# (int32 lanes, intrinsic, needed LLVM features) per architecture
DOT = {"x86": (16, "llvm.x86.avx512.vpdpbusd.512", ("avx512vnni", "avx512bw")),
       "aarch64": (4, "llvm.aarch64.neon.sdot", ("dotprod",))}
#: The weight layouts it reads (:mod:`lutc.layouts`): ``dot{L}``, ``L`` the dot instruction's lanes.
LAYOUTS = tuple(f"dot{lanes}" for lanes, _, _ in DOT.values())
#: NEON's unsigned-by-signed dot product (Armv8.6 ``i8mm``): codes in place (knob ``in_place=1``)
#: as the unsigned operand, as on x86.
USDOT = "llvm.aarch64.neon.usdot"


def supports(spec, target) -> bool:
    """uniform/ternary, int8 tables (read here as int8 activations), a CPU with a dot instruction."""
    family = arch(target)
    return (spec.format in ("uniform", "ternary") and spec.table_dtype == "int8" and family is not None
            and spec.block % (4 * (8 // code_bits(spec.wbits))) == 0
            and has_features(target, *DOT[family][2]))


def layout(spec, target, chains: int = 1, splits: int = 1, **_) -> str:
    chunks = chunks_per_block(spec)
    if chunks % chains:
        raise ValueError(f"dot_mac knob chains={chains} does not divide the {chunks} weight chunks of a "
                         f"{spec.block}-weight block")
    if spec.blocks % splits:
        raise ValueError(f"dot_mac knob splits={splits} does not divide the {spec.blocks} blocks of "
                         f"{spec.block} activations in K={spec.K}")
    return f"dot{DOT[arch(target)][0]}"


def tile_groups(spec, lanes: int, row_tiles: int) -> int:
    """Groups of ``row_tiles`` tiles of ``lanes`` rows that cover N: the parallel tasks without
    ``splits`` (with it, ``splits`` times as many)."""
    tiles = -(-spec.N // lanes)
    return -(-tiles // min(row_tiles, tiles))


#: int32 accumulator vectors a task may hold (``chains x rows x row_tiles``): half of AVX-512's
#: (and NEON's) 32 vector registers, the rest for codes, activations and addresses.
MAX_ACCUMULATORS = 16
#: With ``in_place``, all 32 (the slot sums of one row of x): W1's 8 sums x 4 row tiles measured
#: faster than 2 row tiles within 16, though LLVM keeps 8 of them on the stack; ``in_place=2``'s 4
#: sums x 4 tiles fit the registers and were faster still (:func:`default_in_place`).
MAX_SLOT_SUMS = 32


#: Most tile groups at which K slices (knob ``splits``) are worth tuning: past four groups per
#: thread of a 32-core host every thread already has several weight streams to read.
SPLIT_MAX_GROUPS = 128
#: Fewest blocks of K a slice keeps (knob ``splits``): each slice pays its own partial sums.
SPLIT_MIN_BLOCKS = 8


def worth_tuning(spec, target, row_tiles: int = 4, rows: int = 1, chains: int = 1, in_place: int = 0,
                 splits: int = 1, **_) -> bool:
    """False for ``rows`` past M (the kernel of the next smaller value), where the accumulators
    would not fit the registers (:data:`MAX_ACCUMULATORS`), for several chains beside several
    rows of x or tiles already keeping the dot products independent (one tile and one row per
    task is where chains pay: ``cpu_knobs_chains_epyc.md``), for ``in_place=1`` where the codes
    are not the unsigned operand (:func:`masks_in_place`), and for ``in_place=2`` on 4-bit slots
    (one slot per half byte: the kernel of ``in_place=0``), and for K slices (``splits``) where
    the tile groups already number :data:`SPLIT_MAX_GROUPS` or a slice would keep fewer than
    :data:`SPLIT_MIN_BLOCKS` blocks."""
    fit = (chains * min(rows, spec.M) * row_tiles <= MAX_ACCUMULATORS
           and accumulators(spec, row_tiles, rows, chains, in_place) <= MAX_SLOT_SUMS)
    lanes = DOT[arch(target)][0]
    sliced = splits == 1 or (tile_groups(spec, lanes, row_tiles) < SPLIT_MAX_GROUPS
                             and spec.blocks // splits >= SPLIT_MIN_BLOCKS)
    return ((rows == 1 or rows // 2 < spec.M) and fit and (chains == 1 or row_tiles * min(rows, spec.M) < 4)
            and (in_place != 1 or masks_in_place(target)) and (in_place != 2 or code_bits(spec.wbits) < 4) and sliced)


def accumulators(spec, row_tiles: int, rows: int, chains: int, in_place: int) -> int:
    """int32 accumulator vectors of a task: ``chains x rows x row_tiles``, times the sums per tile
    row (:func:`slot_sums`)."""
    return chains * min(rows, spec.M) * row_tiles * slot_sums(spec, in_place)


def slot_sums(spec, in_place: int) -> int:
    """Sums per tile row (:func:`code_slot`): one per code slot of a byte (``8 / bits``) with
    ``in_place=1``, of a half byte with ``in_place=2``, one with the codes shifted down."""
    if in_place == 0:
        return 1
    return (8 if in_place == 1 else 4) // code_bits(spec.wbits)


def default_in_place(spec, target) -> int:
    """2 for 1-bit codes on x86 (on NEON a knob, untimed): 6 of a byte's 7 shifts saved, in 4
    sums per tile row. On the 2-core Emerald Rapids VM, M = 1 (``benchmarks/results/cpu_in_place_emr.md``)
    ``in_place=1`` took 0.89-0.97x the shifted kernel's time at 2 threads and 0.88-0.99x at 1
    thread on 4096 x 4096, 4096 x 11008, 11008 x 4096 and 14336 x 4096, and ``in_place=2``
    0.89-0.93x ``in_place=1``'s at 1 thread: its 16 sums stay in registers where LLVM spilled 8
    of the 32 (``benchmarks/results/cpu_in_place2_emr.md``). W2 0.92-1.06x and W4 1.00-1.04x: their 3 and 1 shifts
    per byte did not set the time."""
    return 2 if code_bits(spec.wbits) == 1 and arch(target) == "x86" else 0


def masks_in_place(target) -> bool:
    """Whether codes may stay in place, masked but not shifted (knob ``in_place``): where a dot
    instruction takes them as its unsigned operand, x86's ``vpdpbusd`` and NEON's ``usdot``
    (``i8mm``); ``sdot`` takes them signed, and a top slot in place (``3 << 6`` for 2 bits) is
    past 127."""
    family = arch(target)
    return family == "x86" or (family == "aarch64" and has_features(target, "i8mm"))


def dot_intrinsic(target, in_place: int) -> str:
    """The dot instruction of ``target``: ``usdot`` for whole bytes in place on NEON (``in_place=1``)."""
    family = arch(target)
    return USDOT if in_place == 1 and family == "aarch64" else DOT[family][1]


def chunks_per_block(spec) -> int:
    """Weight loads (``4 x 8 / bits`` codes of each row of a tile) per block of activations."""
    return spec.block // (4 * (8 // code_bits(spec.wbits)))


#: Fewest weights per row from which a decode prefetches by default on any x86 CPU
#: (:func:`default_prefetch`; from fewer, only where it was timed to pay: CPUs with AMX).
PREFETCH_MIN_K = 8192


def default_prefetch(spec, target) -> int:
    """16 chunks ahead (1 KB of a tile's weights, then the next task's: :func:`prefetched`) for a
    decode (M = 1, and batches of 2) on x86 with codes of 2 bits or more, where rows hold
    :data:`PREFETCH_MIN_K` weights or more or the CPU has AMX; else 0, the hardware prefetchers alone. Measured in turns,
    weights through 1 GiB, against no prefetch (1 / 2 threads):

    - the 2-core Emerald Rapids VM (``benchmarks/results/cpu_prefetch_long_k_emr.md``,
      ``cpu_prefetch_next_task_emr.md``): 4096 x 11008 W2 1.23-1.26x / 1.24-1.41x over three runs,
      W4 1.19x / 1.10x; 4096 x 14336 W2 1.05x / 1.14x, W4 1.05x / 1.17x; K = 4096 with the next
      task's prefetch 1.03-1.07x / 0.99-1.12x (1024 x 4096, 4096 x 4096, 11008 x 4096, 14336 x 4096);
    - a 16-core Emerald Rapids host (``cpu_prefetch_next_task_emr.md``): 1.10-1.34x / 1.04-1.19x
      at W2 and W4 on every shape timed, K = 4096 included;
    - W1 (its codes in half bytes: more work per byte) 0.94-1.03x: left at 0;
    - the 2-core EPYC (Zen 5, ``cpu_knobs_prefetch_epyc.md``, prefetches held to the tile): 4096 x
      11008 W2 1.00x, but 4096 x 4096 and 11008 x 4096 W4 0.89-0.92x, so K = 4096 only with AMX
      (Sapphire Rapids on: the CPUs timed); its tuner chose 64 for K = 27648 and 28672.

    At M = 2 on the VM it paid 1.00-1.17x over none on all 8 rows of two runs (4096 x 11008,
    11008 x 4096, 4096 x 4096, 4096 x 14336, W2 and W4); from M = 3 it lost as often as it won
    (0.71-1.09x): ``benchmarks/results/cpu_prefetch_batches_emr.md``.

    ARM (no hardware timed here) keeps 0."""
    x86_decode = spec.M <= 2 and code_bits(spec.wbits) >= 2 and arch(target) == "x86"
    return 16 if x86_decode and (spec.K >= PREFETCH_MIN_K or has_features(target, "amx-int8")) else 0


def default_rows(spec) -> int:
    """Rows of x that share each unpacked weight vector: up to 4 (4 x ``row_tiles`` = 16
    accumulator registers of the 32 that AVX-512 has). On the 2-core AVX-512 VM, 4096 x 4096
    g128, M = 8 / 16 (us): W2 269 / 408 with 4 rows against 344 / 536 with 1; W4 358 / 505
    against 543 / 848."""
    return min(4, 1 << (spec.M - 1).bit_length())


def schedule(func, spec, target, row_tiles: int = 4, rows=None, prefetch=None, chains: int = 1,
             in_place=None, splits: int = 1) -> s_tir.Schedule:
    """The dot-product kernel for ``spec`` on ``target`` (``func``: its reference semantics)."""
    lanes = DOT[arch(target)][0]
    rows = default_rows(spec) if rows is None else rows
    prefetch = default_prefetch(spec, target) if prefetch is None else prefetch
    in_place = default_in_place(spec, target) if in_place is None else in_place
    layout(spec, target, chains=chains, splits=splits)    # refuses chains or slices that do not divide
    if in_place == 1 and not masks_in_place(target):
        raise ValueError("dot_mac knob in_place=1 needs codes as the unsigned operand (x86 vpdpbusd, "
                         "or NEON usdot with i8mm), not sdot's signed one")
    return s_tir.Schedule(IRModule({"main": dot_kernel(spec, lanes, dot_intrinsic(target, in_place), row_tiles,
                                                       rows, prefetch, chains, in_place, splits)}))


def exact_sum(acc, mr, tt, r, chains: int, slots: int, bits: int):
    """The int32 dot product of a tile row: its ``chains`` accumulators (knob ``chains``), each
    of ``slots`` sums; slot ``s``'s codes stood ``bits s`` up (knob ``in_place``), so its sum is
    an exact multiple of ``2^(bits s)`` and shifts down exactly."""
    total = None
    for ch in range(chains):
        for s in range(slots):
            part = acc[ch, s, mr, tt, r] if s == 0 else T.shift_right(acc[ch, s, mr, tt, r], bits * s)
            total = part if total is None else total + part
    return total


def quantize_activations(spec):
    """A macro ``quantize(x, xq, dx, xs)``: per row of x (in parallel) and block of ``spec.block``
    activations, ``dx = max |x| / 127`` (NaN where the block holds NaN or Inf: int8 activations
    cannot carry it, so it reaches the row's outputs through ``dx``), the int8 activations
    ``round(x / dx)`` (as ``x`` times ``1 / dx``: one division per block) as the bytes of ``xq``
    (``[rows, K]`` int8, in x's order: 4 consecutive bytes are the 4-byte group of a dot
    instruction) and their sum ``xs``. Rows of ``xq`` past M are left as they are.

    Vectorized across the block (:func:`lanes`), the maximum, the NaN flag and the sum in
    per-lane partials reduced in halves at the end. Scalar, with the bytes packed into int32
    words, this loop took 830 us for 128 x 4096 values on one thread of the Emerald Rapids VM,
    more than AMX's products; this one 419 (``benchmarks/results/cpu_amx_emr.md``)."""
    M, K, B = spec.M, spec.K, spec.block
    C = K // B
    V = lanes(B)

    @T.macro
    def fold(amax, bad, half):
        """Lanes ``half ..`` into lanes ``.. half`` (none where ``half`` is 0: fewer lanes)."""
        if half > 0:
            for v in T.vectorized(half):
                amax[v] = T.max(amax[v], amax[v + half])
                bad[v] = bad[v] | bad[v + half]

    @T.macro
    def add_halves(tot, half):
        if half > 0:
            for v in T.vectorized(half):
                tot[v] = tot[v] + tot[v + half]

    @T.macro
    def quantize(x, xq, dx, xs):
        for row in T.parallel(M):     # (rows, not (row, block) pairs: a parallel body's locals and
            for blk in range(C):      # closure cost 3x the work per block, measured at M = 128)
                amax = T.alloc_buffer((V,), "float32", scope="local")
                bad = T.alloc_buffer((V,), "int32", scope="local")   # NaN/Inf seen (T.max drops NaN)
                tot = T.alloc_buffer((V,), "int32", scope="local")
                inv = T.alloc_buffer((1,), "float32", scope="local")
                for v in T.vectorized(V):
                    amax[v] = T.float32(0)
                    bad[v] = 0
                    tot[v] = 0
                for k1 in range(B // V):
                    for v in T.vectorized(V):
                        # (an expression, not a let binding: TVM 0.27 vectorizes a let inside a vectorized
                        # loop wrongly, and every dx came out garbage)
                        xa = T.meta_var(T.abs(T.Cast("float32", x[row, blk * B + k1 * V + v])))
                        amax[v] = T.max(amax[v], xa)
                        bad[v] = bad[v] | T.Cast("int32", nonfinite(xa))
                # tree reductions: log2(V) steps, not V - 1 in a chain
                fold(amax, bad, V // 2)
                fold(amax, bad, V // 4)
                fold(amax, bad, V // 8)
                fold(amax, bad, V // 16)
                dx[row, blk] = nan_if(bad[0] != 0, T.max(amax[0], T.float32(1e-30)) / T.float32(127))
                inv[0] = T.float32(1) / dx[row, blk]      # one division per block (NaN dx: NaN out anyway)
                for k1 in range(B // V):
                    for v in T.vectorized(V):
                        xv = T.meta_var(T.Cast("float32", x[row, blk * B + k1 * V + v]))
                        q = T.meta_var(T.Cast("int32", T.round(xv * inv[0])))
                        xq[row, blk * B + k1 * V + v] = T.Cast("int8", q)
                        tot[v] = tot[v] + q
                add_halves(tot, V // 2)
                add_halves(tot, V // 4)
                add_halves(tot, V // 8)
                add_halves(tot, V // 16)
                xs[row, blk] = T.Cast("float32", tot[0])

    return quantize


def x_align(act: str) -> int:
    """The alignment x's data may be assumed to have: one element. The activation loop reads x
    in vectors, and at TVM's default of 64 bytes LLVM makes them aligned loads, which fault on a
    tensor that a host (ggml) aligns to less, or on a view into a row."""
    return DataType(act).bits // 8


def word(xq, row, k4):
    """The int32 word of int8 activations ``4 k4 .. 4 k4 + 3`` of ``row`` (little-endian: a dot
    instruction's 4-byte group)."""
    return T.reinterpret("int32", xq[row, T.ramp(4 * k4, 1, 4)])


def code_slot(wv, bits: int, s, lanes: int, in_place: int = 0):
    """Code slot ``s`` of the ``lanes`` weight bytes ``wv`` (the ``dot{L}`` layouts): shifted down
    and masked, the codes ``q``; with ``in_place=1`` masked where it stands, ``q 2^(bits s)``;
    with ``in_place=2`` where it stands in its half byte (the high half shifted down once per
    load, shared by its slots): ``q 2^(bits (s mod 4/bits))``, half the sums of ``in_place=1``."""
    mask = T.uint8(2 ** bits - 1)
    if in_place == 2:     # (s is the unrolled loop's variable: the select folds away)
        half = 4 // bits
        wv = T.if_then_else(s >= half, high_halves(wv, lanes), wv)
        s = s % half
    if in_place:
        return wv & T.broadcast(T.shift_left(mask, T.uint8(bits * s)), lanes)
    return T.shift_right(wv, T.broadcast(T.uint8(bits * s), lanes)) & T.broadcast(mask, lanes)


def high_halves(wv, lanes: int):
    """The high half of each of the ``lanes`` bytes ``wv`` in its low half: one 16-bit shift
    (x86 has no byte shift); what the next byte carries into the high half, the slot masks drop."""
    wide = f"uint16x{lanes // 2}"
    return T.reinterpret(f"uint8x{lanes}", T.shift_right(T.reinterpret(wide, wv), T.broadcast(T.uint16(4), lanes // 2)))


def lanes(n: int) -> int:
    """Vector lanes for a loop of ``n`` iterations: the widest of 16 (an AVX-512 register of
    floats), 8, 4, 2 and 1 that divides ``n``."""
    return next(v for v in (16, 8, 4, 2, 1) if n % v == 0)


def prefetched(tile, ahead, row_tiles: int, tiles: int, chunks: int) -> tuple:
    """``(tile, chunk)`` of the weights a prefetch ``ahead`` chunks into ``tile``'s row asks for:
    that chunk of the tile, or past its end the same count into the tile ``row_tiles`` on (the
    same tile of the next tile group: the thread's next task, as TVM's parallel loop hands each
    thread a run of them; the last tile again past N, the last chunk past the row). Python ints
    or TIR expressions alike (the kernel asks with its loop variables, the tests with ints)."""
    past = least(ahead // chunks, 1)
    return least(tile + row_tiles * past, tiles - 1), least(ahead - chunks * past, chunks - 1)


def least(a, b):
    """The smaller of ``a`` and ``b``: Python's ``min`` for ints, ``T.min`` for TIR expressions."""
    return min(a, b) if isinstance(a, int) and isinstance(b, int) else T.min(a, b)


def slices_sum(sliced, m, n, splits: int):
    """Output ``(m, n)``'s fp32 partial sums of the ``splits`` slices of K, added in slice order."""
    total = sliced[0, m, n]
    for s in range(1, splits):
        total = total + sliced[s, m, n]
    return total


def block_term(spec, scales, zeros, tile, c, r, dx, xs, total):
    """What block ``c`` adds to output row ``r`` of weight tile ``tile`` (``lutc.frontend``'s
    epilogue): the int32 dot product ``total`` less the code constant (or zero point, ternary:
    1) times the activation sum ``xs``, times the group's scale and ``dx``."""
    group = c // (spec.group // spec.block)
    if spec.format == "ternary":
        return T.Cast("float32", scales[0]) * dx * (T.Cast("float32", total) - xs)
    zero = T.Cast("float32", zeros[tile, group, r]) if spec.zero_point else T.float32(spec.code_center)
    return T.Cast("float32", scales[tile, group, r]) * dx * (T.Cast("float32", total) - zero * xs)


def dot_kernel(spec, L: int, intrin: str, row_tiles: int = 4, rows: int = 1, prefetch: int = 0, chains: int = 1,
               in_place: int = 0, splits: int = 1):
    """The PrimFunc: ``x [M, K]``, ``planes [N/L, K/(4c), 4L]``, ``scales``, [``zeros``], ``out``.

    ``prefetch``: with each weight load, a software prefetch of the same tile's weights that many
    chunks (``4L`` bytes each) ahead, into all cache levels (0: none, the hardware prefetchers
    alone); near a tile's end, of the next task's (:func:`prefetched`; 0.93-1.01x the time of
    prefetches held at the tile's last chunk on the Emerald Rapids VM, median 0.97x of 14 cells,
    and 0.92-1.04x on the 16-core host, ``benchmarks/results/cpu_prefetch_next_task_emr.md``); a
    knob for the tuner, since how far ahead pays depends on the memory system and the shape
    (:func:`default_prefetch`). On the 2-core EPYC VM (Zen 5) at M = 1 it never paid alone
    on 4096-wide shapes: 1.00x at W2, 0.89-0.92x at W4
    (``benchmarks/results/cpu_knobs_prefetch_epyc.md``; each thread reads its tiles' weights as
    one sequential stream, which the hardware prefetchers follow);
    the tuner chose 64 for the long-K shapes of Llama-3-70B and Qwen2.5-32B (K = 27648, 28672:
    1.08-1.12x over the default, with other knobs changed too,
    ``benchmarks/results/tuning_cpu_epyc_llama3_70b_qwen2.5_32b.md``).

    ``chains``: independent int32 accumulators per tile row, chunk ``kc`` adding into ``kc %
    chains``, summed at the block's end: one tile per task (``row_tiles = 1``, one weight stream
    per task) otherwise waits on each dot instruction's latency.

    ``in_place``: each code slot masked where it stands, not shifted down first (``q 2^(b s)``,
    at most 192 for 2 bits: still an unsigned byte), into a sum of its own per slot, shifted down
    once per block (:func:`exact_sum`): one instruction fewer per slot past the first (2-bit codes:
    8 instead of 11 per weight load), for ``8 / bits`` times the accumulators. ``in_place=2``:
    where it stands in its half byte, the high half shifted down once per load (1-bit codes: 17
    instructions per load against 16 and 23, in half the sums of ``in_place=1``; at most 15, so
    ``sdot``'s signed operand takes them too).

    ``splits``: how the threads share the product, N only (1) or N and K. With ``s`` slices a
    task is a tile group and one of ``s`` consecutive ranges of K's blocks (``s`` times the tasks),
    its fp32 sums go to a workspace ``[s, M, N]``, and a second parallel loop adds the slices in
    order (deterministic) and rounds once to the output type. Why: the tasks are the tile groups,
    ``N / (16 row_tiles)`` of them, and a host with more cores than that leaves cores, and their
    share of the memory's bandwidth, idle (Qwen2.5-7B's k/v projection, 512 x 3584, is 8 groups),
    where a thread that ends its last group early waits for the others; slices of K give every
    thread a weight stream of its own at the cost of one fp32 partial sum per output and slice.
    On a 16-core Emerald Rapids host (``benchmarks/results/cpu_splits_emr16.md``, M = 1) two
    slices took Qwen2.5-7B's 3584 x 18944 (56 groups) from 255 to 228 us at W2 and 486 to 448 at
    W4, and cost 0.85-0.98x where the groups share out evenly: a knob for the tuner, 1 by default."""
    M, N, K = spec.M, spec.N, spec.K
    w = code_bits(spec.wbits)
    cpb = 8 // w                              # codes per byte: dot instructions per load
    B = spec.block
    C = K // B
    KC = K // (4 * cpb)                       # weight chunks per row
    CB = chunks_per_block(spec)               # weight chunks per block
    NT = -(-N // L)
    TT = min(row_tiles, NT)
    NTG = tile_groups(spec, L, row_tiles)     # tile groups (the parallel tasks without splits)
    S = splits                                # K slices per tile group (knob splits)
    CS = C // S                               # blocks per slice
    zp, act, sdt = spec.zero_point, spec.act_dtype, spec.scale_dtype
    V = 4 * L
    i8, i32 = f"int8x{V}", f"int32x{L}"
    PLANES, scale_shape, zero_shape = weight_buffers(spec, f"dot{L}")   # lutc.layouts' shapes
    MR = min(rows, M)                         # rows of x per pass over the weights of a block
    quantize = quantize_activations(spec)
    MB = -(-M // MR)
    CH = chains                               # accumulator chains per tile row
    SL = slot_sums(spec, in_place)            # sums per chain (one per code slot in place)

    @T.macro
    def add_block(grp, c, m0, acc, accf, dx, xs, scales, zeros):
        """The block's epilogue (:func:`block_term`) for the ``MR`` rows of x of pass ``m0``."""
        for mr in range(MR):
            row = T.meta_var(m0 * MR + mr)
            if row < M:
                for tt in range(TT):
                    tile = T.meta_var(T.min(grp * TT + tt, NT - 1))
                    for r in T.vectorized(L):
                        accf[row, tt, r] = accf[row, tt, r] + block_term(
                            spec, scales, zeros, tile, c, r, dx[row, c], xs[row, c],
                            exact_sum(acc, mr, tt, r, CH, SL, w))

    @T.prim_func(s_tir=True)
    def main(x: T.Buffer((M, K), act, align=x_align(act)), planes: T.Buffer(PLANES, "uint8"),
             scales: T.Buffer(scale_shape, sdt), zeros: T.Buffer(zero_shape, sdt),
             out: T.Buffer((M, N), act)):
        T.func_attr({"tirx.noalias": True})
        xq = T.alloc_buffer((M, K), "int8")
        dx = T.alloc_buffer((M, C), "float32")
        xs = T.alloc_buffer((M, C), "float32")
        quantize(x, xq, dx, xs)
        sliced = T.alloc_buffer((S, M, N), "float32")    # (used only with S > 1)
        for task in T.parallel(NTG * S):
            grp = T.meta_var(task // S)           # the tile group, and its slice of K
            part = T.meta_var(task % S)
            accf = T.alloc_buffer((M, TT, L), "float32", scope="local")
            acc = T.alloc_buffer((CH, SL, MR, TT, L), "int32", scope="local")
            for m, tt in T.grid(M, TT):
                for r in T.vectorized(L):
                    accf[m, tt, r] = T.float32(0)
            for c1 in range(CS):
                c = T.meta_var(part * CS + c1)
                for m0 in range(MB):
                    for ch, sl, mr, tt in T.grid(CH, SL, MR, TT):
                        for r in T.vectorized(L):
                            acc[ch, sl, mr, tt, r] = 0
                    for kc2 in range(CB // CH):
                        for ch in T.unroll(CH):
                            kc = T.meta_var(kc2 * CH + ch)    # (chunk kc adds into chain ch)
                            for tt in T.unroll(TT):
                                tile = T.meta_var(T.min(grp * TT + tt, NT - 1))   # (past N: the last again)
                                if prefetch > 0:
                                    T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                                        planes[(*prefetched(tile, c * CB + kc + prefetch, TT, NT, KC), 0)]),
                                        T.int32(0), T.int32(3), T.int32(1)))
                                wv = planes[tile, c * CB + kc, T.ramp(0, 1, V)]
                                for s in T.unroll(cpb):
                                    codes = T.reinterpret(i8, code_slot(wv, w, s, V, in_place))
                                    # one unpacked code vector, MR rows of x (rows past M repeat the last)
                                    for mr in T.unroll(MR):
                                        xw = T.reinterpret(i8, T.broadcast(
                                            word(xq, T.min(m0 * MR + mr, M - 1), (c * CB + kc) * cpb + s), L))
                                        acc[ch, s % SL, mr, tt, T.ramp(0, 1, L)] = T.call_llvm_pure_intrin(
                                            i32, intrin, acc[ch, s % SL, mr, tt, T.ramp(0, 1, L)], codes, xw)
                    add_block(grp, c, m0, acc, accf, dx, xs, scales, zeros)
            for m, tt, r in T.grid(M, TT, L):
                n = T.meta_var((grp * TT + tt) * L + r)
                if n < N:
                    if S == 1:
                        out[m, n] = T.Cast(act, accf[m, tt, r])
                    else:
                        sliced[part, m, n] = accf[m, tt, r]
        if S > 1:
            for grp in T.parallel(NTG):
                for m, tt, r in T.grid(M, TT, L):
                    n = T.meta_var((grp * TT + tt) * L + r)
                    if n < N:
                        out[m, n] = T.Cast(act, slices_sum(sliced, m, n, S))

    return main if zp else drop_param(main, "zeros")
