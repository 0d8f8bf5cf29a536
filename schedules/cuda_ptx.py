"""Inline CUDA for the tensor-core kernels (``cuda_mma``, ``cuda_stream``, ``cuda_wgmma``): each snippet once, with
the TVMScript call that uses it (statements are written ``T.evaluate(cp16(...))``). TVM pastes a
snippet once per function name, so each snippet defines one function.

TVM's TIR has no words for ``mma.sync`` on register fragments, ``ld.shared.v4`` from an address,
or ``cp.async`` groups, so the kernels call these ``__device__`` functions through
``T.cuda.func_call`` (TVM pastes each ``source_code`` once into the module). The dequantization
(:func:`dequant_tc16`) is the one place that turns packed codes into fp16 or bf16 weights for the
three kernels.
"""
from __future__ import annotations

from tvm.script import tirx as T

from lutc import layouts
from lutc.dtypes import short_name

H2_SRC = """
__device__ __forceinline__ unsigned lutc_h2(float v) {
  __half2 h = __float2half2_rn(v);
  return *reinterpret_cast<unsigned*>(&h);
}
"""
#: The 16-bit floats the tensor-core kernels multiply in: C type of a pair, the suffix of its
#: snippets, mantissa bits and exponent bias (for the magic-number dequantization, :func:`deq`).
HALVES = {"float16": ("__half2", "", 10, 15), "bfloat16": ("__nv_bfloat162", "_bf16", 7, 127)}
#: Their names in PTX's mma and wgmma instructions (PTX spells them as lutc's short names).
PTX_TYPE = {d: short_name(d) for d in HALVES}


def magic(dtype: str) -> int:
    """Bits of ``2^P`` (``P`` = mantissa bits: 1024 in fp16, 128 in bf16): a code ``q`` ORed into
    its low mantissa bits reads as ``2^P + q``."""
    _, _, p, bias = HALVES[dtype]
    return (bias + p) << p


def lop3_src(dtype: str = "float16") -> str:
    """``(w & mask) | magic`` (the codes under the magic number) as one ``LOP3``: written in C,
    nvcc splits it into two (an AND and an OR, each with its immediate), one more instruction per
    two weights in every dequantizing kernel."""
    sfx, m = HALVES[dtype][1], magic(dtype)
    return f"""
#ifndef LUTC_LOP3_AND_OR{sfx.upper()}
#define LUTC_LOP3_AND_OR{sfx.upper()}
__device__ __forceinline__ unsigned lutc_lop3_and_or{sfx}(unsigned w, unsigned mask) {{
  unsigned h;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(h) : "r"(w), "r"(mask), "r"({m * 0x10001:#010x}u));
  return h;
}}
#endif
"""


def _cast(t2: str, reg: str) -> str:
    return f"*reinterpret_cast<{t2}*>(&{reg})"


def deq_src(dtype: str = "float16") -> str:
    """``lutc_deq``: ``(q - z) s`` of a pair of codes under the magic number (:func:`deq`)."""
    t2, sfx = HALVES[dtype][:2]
    pad = " " * len(sfx)
    return lop3_src(dtype) + f"""
__device__ __forceinline__ unsigned lutc_deq{sfx}(unsigned w, unsigned mask, unsigned mul, unsigned add,
                                             {pad}unsigned s2, unsigned z2) {{
  unsigned h = lutc_lop3_and_or{sfx}(w, mask);
  {t2} q = __hfma2({_cast(t2, "h")}, {_cast(t2, "mul")},
                      {_cast(t2, "add")});
  {t2} r = __hmul2(__hsub2(q, {_cast(t2, "z2")}), {_cast(t2, "s2")});
  return *reinterpret_cast<unsigned*>(&r);
}}
"""


def mma_src(dtype: str = "float16") -> str:
    """``lutc_mma``: ``acc += A B`` for one ``m16n8k16`` tile of ``dtype`` (:func:`mma`)."""
    sfx, ab = HALVES[dtype][1], PTX_TYPE[dtype]
    pad = " " * len(sfx)
    return f"""
__device__ __forceinline__ void lutc_mma{sfx}(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                         {pad}unsigned b0, unsigned b1) {{
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.{ab}.{ab}.f32 "
               "{{%0,%1,%2,%3}}, {{%4,%5,%6,%7}}, {{%8,%9}}, {{%0,%1,%2,%3}};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}}
"""


LDS128_SRC = """
__device__ __forceinline__ void lutc_lds128(unsigned addr, unsigned* d) {
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(addr));
}
"""


LDSM_X4_SRC = """
__device__ __forceinline__ void lutc_ldsm_x4(unsigned addr, unsigned* d) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(addr));
}
"""
LDG_PAIRS_SRC = """
__device__ __forceinline__ void lutc_ldg_pairs(const void* p, bool valid, unsigned* d) {
  const unsigned* w = reinterpret_cast<const unsigned*>(p);
  for (int m = 0; m < 4; m++) d[m] = valid ? __ldg(w + 4 * m) : 0u;
}
"""


H2_BF16_SRC = """
__device__ __forceinline__ unsigned lutc_h2_bf16(float v) {
  __nv_bfloat162 h = __float2bfloat162_rn(v);
  return *reinterpret_cast<unsigned*>(&h);
}
"""


def h2(v, dtype: str = "float16"):
    """Pair (uint32) of ``dtype`` (fp16 or bf16) holding the float ``v`` twice."""
    if dtype == "bfloat16":
        return T.cuda.func_call("lutc_h2_bf16", v, source_code=H2_BF16_SRC, return_type="uint32")
    return T.cuda.func_call("lutc_h2", v, source_code=H2_SRC, return_type="uint32")


def _pair_bits(dtype: str, sign: int, exponent):
    """Bits of the ``dtype`` pair holding ``(-1)^sign 2^exponent`` twice (``exponent`` may be an
    expression of the slot)."""
    p, bias = HALVES[dtype][2:]
    h = T.shift_left(T.Cast("uint32", bias + exponent), T.uint32(p))
    return (T.uint32(0x8000) | h) if sign else h


def _twice(h):
    return h | T.shift_left(h, T.uint32(16))


def deq(word, b, v, s2, zs2, dtype: str = "float16"):
    """Pair (uint32) of the two codes in ``b``-bit slot ``v`` of ``word`` (already shifted by 8 u):
    ``(q - c) s`` with ``q - c`` exact (``c`` the zero point; :func:`deq_c` for the format's
    constant), one rounding by
    the multiply. The codes sit at bits ``e = b v`` of each half: ORed under the magic number
    ``2^P`` they read ``2^P + q 2^e``, and one FMA by ``2^-e`` and ``-2^(P-e)`` gives ``q``
    exactly; they must fit the mantissa (``e + b <= P``, see :func:`dequant_tc16`)."""
    p = HALVES[dtype][2]
    e = b * v                                            # the codes sit at bits e.. and 16 + e..
    mask = T.shift_left(T.uint32((2 ** b - 1) * 0x10001), T.Cast("uint32", e))
    return T.cuda.func_call(f"lutc_deq{HALVES[dtype][1]}", word, mask, _twice(_pair_bits(dtype, 0, -e)),
                            _twice(_pair_bits(dtype, 1, p - e)), s2, zs2,
                            source_code=deq_src(dtype), return_type="uint32")


def deq_c_src(dtype: str = "float16") -> str:
    """``lutc_deq_c``: ``(q - c) s`` of a pair of codes under the magic number (:func:`deq_c`)."""
    t2, sfx = HALVES[dtype][:2]
    pad = " " * len(sfx)
    return lop3_src(dtype) + f"""
__device__ __forceinline__ unsigned lutc_deq_c{sfx}(unsigned w, unsigned mask, unsigned mul, unsigned add,
                                               {pad}unsigned s2) {{
  unsigned h = lutc_lop3_and_or{sfx}(w, mask);
  {t2} r = __hmul2(__hfma2({_cast(t2, "h")}, {_cast(t2, "mul")},
                              {_cast(t2, "add")}), {_cast(t2, "s2")});
  return *reinterpret_cast<unsigned*>(&r);
}}
"""


def centred_src(dtype: str = "float16") -> str:
    """``lutc_centred``: ``q - c`` of a pair of codes under the magic number, unscaled (:func:`deq_c`
    with ``s2=None``)."""
    t2, sfx = HALVES[dtype][:2]
    return lop3_src(dtype) + f"""
__device__ __forceinline__ unsigned lutc_centred{sfx}(unsigned w, unsigned mask, unsigned mul, unsigned add) {{
  unsigned h = lutc_lop3_and_or{sfx}(w, mask);
  {t2} r = __hfma2({_cast(t2, "h")}, {_cast(t2, "mul")}, {_cast(t2, "add")});
  return *reinterpret_cast<unsigned*>(&r);
}}
"""


def deq_c(word, b, v, s2, c: float, dtype: str = "float16"):
    """:func:`deq` for the format's constant zero ``c`` (no zero points: ``spec.code_center``, which
    is not the slot's midpoint for W1, W3 or ternary, e.g. 3.5 for W3 in a 4-bit slot), one
    instruction shorter: the ``HFMA2`` that undoes the magic number also subtracts ``c``. With
    ``s2=None`` the pair is ``q - c`` itself, exact, two instructions (the caller scales the
    sums of the products: a kernel's late scale).

    ``2^P 2^-e + c`` must be exact, which a half-integer ``c`` is not next to ``2^P``, so the
    codes are read one bit higher (``word`` comes shifted one bit up, :func:`dequant_tc16`:
    ``e = b v + 1 >= 1``, the spacing at
    ``2^(P-e)`` is ``2^-e <= 1/2``); the FMA's exact result ``q - c`` rounds to itself, and the
    multiply by ``s`` is the one rounding, as in :func:`deq`: bit-identical results."""
    p = HALVES[dtype][2]
    e = b * v + 1                                        # the codes, one bit up
    mask = T.shift_left(T.uint32((2 ** b - 1) * 0x10001), T.Cast("uint32", e))
    # -(2^(P-e) + c): exponent of 2^(P-e), mantissa c 2^e = (2c) 2^(e-1)
    add_h = _pair_bits(dtype, 1, p - e) | T.shift_left(T.uint32(int(2 * c)), T.Cast("uint32", e - 1))
    args = (word, mask, _twice(_pair_bits(dtype, 0, -e)), _twice(add_h))
    sfx = HALVES[dtype][1]
    if s2 is None:
        return T.cuda.func_call(f"lutc_centred{sfx}", *args, source_code=centred_src(dtype), return_type="uint32")
    return T.cuda.func_call(f"lutc_deq_c{sfx}", *args, s2, source_code=deq_c_src(dtype), return_type="uint32")


def tc16_slot(e, b: int, dtype: str, up: int):
    """Where code pair ``e`` (0..31) of a lane's ``tc16`` vector sits: ``(word, shift, v)``, the
    word's index ``(j4, w)`` in the lane's ``b/2`` x 4 words, the right shift that brings the pair's
    byte pair to the bottom, and its ``b``-bit slot ``v`` there, for codes read ``up`` bits higher
    (``b v + up + b <= P``).

    bf16 has 7 mantissa bits, too few for codes in the high nibble of a byte (bits 4..7): those
    are read from the word shifted 4 bits further, one more shift per word and nibble, shared by
    the pairs in it."""
    pairs, slots = 16 // b, 8 // b                 # code pairs per word, slots per byte pair
    word = ((e // pairs) // 4, (e // pairs) % 4)
    shift = 8 * ((e % pairs) // slots)
    v = (e % pairs) % slots
    v_high = (HALVES[dtype][2] - b - up) // b + 1    # first slot past the mantissa
    if v_high < slots:
        high = T.Cast("int32", v >= v_high)
        shift, v = shift + 4 * high, v - (4 // b) * high
    return word, shift, v


def dequant_tc16(words, lead: tuple, e, b: int, s2, z2, zero_points: bool, c: float, dtype: str = "float16"):
    """Pair (uint32, ``dtype``) of the code pair ``e`` (0..31) of a lane's ``tc16`` vector, held
    in ``words[(*lead, j4, w)]`` (``b/2`` x 4 words, :func:`tc16_slot`), dequantized with the zero
    points ``z2`` (:func:`deq`) or the format's constant ``c`` (:func:`deq_c`). The one place the
    kernels read ``tc16`` codes (with :func:`raw_tc16`).

    ``s2=None`` (no zero points only): ``q - c`` unscaled, for a kernel that scales its sums."""
    if zero_points and s2 is None:
        raise ValueError("an unscaled dequantization (late scale) needs the format's constant zero, not zero points")
    shifted, v = _slot_word(words, lead, e, b, dtype, up=int(not zero_points))
    return deq(shifted, b, v, s2, z2, dtype) if zero_points else deq_c(shifted, b, v, s2, c, dtype)


def raw_tc16(words, lead: tuple, e, b: int, dtype: str = "float16"):
    """Code pair ``e`` read raw: the codes under a magic number whose exponent makes the code's
    lowest bit worth 1, ``2^(P-e) + q`` (``e = b v + 1``, the slot one bit up as in :func:`deq_c`),
    one ``LOP3`` and no ``HFMA2``. A kernel multiplies the raw pairs and takes :func:`raw_offset`
    times x off its sums (for the format's constant zero; not zero points)."""
    shifted, v = _slot_word(words, lead, e, b, dtype, up=1)
    ee = b * v + 1
    mask = T.shift_left(T.uint32((2 ** b - 1) * 0x10001), T.Cast("uint32", ee))
    return T.cuda.func_call("lutc_lop3", shifted, mask, _twice(_pair_bits(dtype, 0, HALVES[dtype][2] - ee)),
                            source_code=LOP3_SRC, return_type="uint32")


def raw_offset(e, b: int, c: float, dtype: str = "float16"):
    """The pair ``2^(P-e) + c`` that code pair ``e`` read raw (:func:`raw_tc16`) stands above
    ``q - c``: the exponent of ``2^(P-e)``, mantissa ``c 2^e = (2c) 2^(e-1)``; exact, since the
    spacing at ``2^(P-e)`` is at most 1/2."""
    v = tc16_slot(e, b, dtype, up=1)[2]
    ee = b * v + 1
    offset = _pair_bits(dtype, 0, HALVES[dtype][2] - ee) | T.shift_left(T.uint32(int(2 * c)), T.Cast("uint32", ee - 1))
    return _twice(offset)


LOP3_SRC = """
__device__ __forceinline__ unsigned lutc_lop3(unsigned w, unsigned mask, unsigned magic) {
  unsigned h;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(h) : "r"(w), "r"(mask), "r"(magic));
  return h;
}
"""


def _slot_word(words, lead: tuple, e, b: int, dtype: str, up: int) -> tuple:
    """``(word, v)``: the lane's word holding code pair ``e``, shifted so that the pair sits in
    ``b``-bit slot ``v`` of each half, ``up`` bits higher (:func:`tc16_slot`)."""
    word, shift, v = tc16_slot(e, b, dtype, up=up)
    w = T.Cast("uint32", words[(*lead, *word)])
    if not up:
        return T.shift_right(w, T.Cast("uint32", shift)), v
    # one bit up: (w >> shift) << 1 in one shift (bit 0, which differs, is in no slot's mask)
    return T.if_then_else(shift == 0, T.shift_left(w, T.uint32(1)),
                          T.shift_right(w, T.Cast("uint32", T.max(shift - 1, 0)))), v


def tc16_raw_fragment(spec, words, lead: tuple, t, s, t8, h):
    """Register ``t8 + 2 h`` of weight tile ``t``'s fragment in k16 step ``s`` read raw
    (:func:`raw_tc16`; :func:`tc16_fragment` reads it dequantized)."""
    return raw_tc16(words, (*lead, t), s * 4 + t8 * 2 + h, layouts.tc16_code_bits(spec), spec.act_dtype)


def tc16_raw_offset(spec, s, t8, h):
    """The offset of that register's raw pairs (:func:`raw_offset`): the same in every tile and row."""
    return raw_offset(s * 4 + t8 * 2 + h, layouts.tc16_code_bits(spec), spec.code_center, spec.act_dtype)


def groups_per_unit(spec) -> int:
    """Scale groups that one 128-weight K unit touches (1 when a group spans whole units)."""
    return max(1, 128 // spec.group)


def step_group(spec, s: int) -> int:
    """The scale group, of the :func:`groups_per_unit` of a unit, of its k16 step ``s``: ``tc16``
    gives each lane k of every step (k ``16 s .. 16 s + 15``), so a group of 32 weights is two
    steps."""
    return (16 * s) // spec.group % groups_per_unit(spec)


def reads_tc16(spec) -> bool:
    """Whether ``spec``'s weight fits ``tc16`` (uniform W1-W4 and ternary, K % 128 == 0): the
    formats the tensor-core kernels dequantize, as ``(q - c) s`` with ``c`` the zero point or
    :attr:`~lutc.spec.MPGemmSpec.code_center`."""
    return layouts.get("tc16").holds(spec)


def tc16_fragment(spec, words, scales, zeros, lead: tuple, t, s, t8, h):
    """Register ``t8 + 2 h`` of weight tile ``t``'s fragment in k16 step ``s`` (a pair of k
    ``16 s + 8 h + 2 c``, rows ``g + 8 t8``): :func:`dequant_tc16` of the lane's words
    ``words[(*lead, t, ...)]`` with the coefficients of the step's group, ``scales[(*lead, t, t8,
    group)]`` (and ``zeros``); ``scales=None``: ``q - c`` unscaled (:func:`deq_c`). The one reading
    of a fragment the tensor-core kernels share."""
    group = step_group(spec, s)
    s2 = None if scales is None else scales[(*lead, t, t8, group)]
    return dequant_tc16(words, (*lead, t), s * 4 + t8 * 2 + h, layouts.tc16_code_bits(spec), s2,
                        zeros[(*lead, t, t8, group)], spec.zero_point, spec.code_center, spec.act_dtype)


CP16_SRC = """
__device__ __forceinline__ void lutc_cp16(unsigned dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst), "l"(src));
}
"""
COMMIT_SRC = """
__device__ __forceinline__ void lutc_cp_commit() { asm volatile("cp.async.commit_group;"); }
"""
LDS_SCALE_SRC = {"float16": """
__device__ __forceinline__ unsigned lutc_lds_h2_f16(unsigned addr) {
  unsigned short v;
  asm volatile("ld.shared.u16 %0, [%1];" : "=h"(v) : "r"(addr));
  return (unsigned)v | ((unsigned)v << 16);
}
""", "float32": """
__device__ __forceinline__ unsigned lutc_lds_h2_f32(unsigned addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(addr));
  __half2 h = __float2half2_rn(v);
  return *reinterpret_cast<unsigned*>(&h);
}
"""}


def mma(acc_ptr, a0, a1, a2, a3, b0, b1, dtype: str = "float16"):
    """``acc += A B`` for one ``m16n8k16`` tile (``dtype`` fp16 or bf16 in, fp32 accumulators at
    ``acc_ptr``)."""
    return T.cuda.func_call(f"lutc_mma{HALVES[dtype][1]}", acc_ptr, a0, a1, a2, a3, b0, b1, source_code=mma_src(dtype))


def ldsm_x4(addr, dst_ptr):
    """Four 8 x 8 matrices of 16-bit values from shared memory (``ldmatrix .x4``): lane ``l``
    gives the address of row ``l % 8`` of matrix ``l / 8``, and gets, in register ``m`` at
    ``dst_ptr``, the pair at row ``l / 4``, columns ``2 (l % 4)`` and + 1 of matrix ``m``: with the
    matrices at k ``0, 8, 16, 24`` of token rows, the fragments of two k16 steps of ``mma``."""
    return T.cuda.func_call("lutc_ldsm_x4", addr, dst_ptr, source_code=LDSM_X4_SRC)


def ldg_pairs(src_ptr, valid, dst_ptr):
    """The four 16-bit pairs at ``src_ptr`` + 0, 8, 16 and 24 elements of global memory into 4
    registers at ``dst_ptr`` (zeros where ``valid`` is false): a lane's fragment registers of
    two k16 steps of ``mma``, read straight from x's row."""
    return T.cuda.func_call("lutc_ldg_pairs", src_ptr, valid, dst_ptr, source_code=LDG_PAIRS_SRC)


def lds128(addr, dst_ptr):
    """16 bytes of shared memory at byte address ``addr`` into 4 registers at ``dst_ptr``."""
    return T.cuda.func_call("lutc_lds128", addr, dst_ptr, source_code=LDS128_SRC)


def cp16(dst_addr, src_ptr):
    """Start an asynchronous 16-byte copy global -> shared (``cp.async.cg``, bypasses L1)."""
    return T.cuda.func_call("lutc_cp16", dst_addr, src_ptr, source_code=CP16_SRC)


def cp_commit():
    """Close this thread's current group of ``cp.async`` copies."""
    return T.cuda.func_call("lutc_cp_commit", source_code=COMMIT_SRC)


SYNCWARP_SRC = """
__device__ __forceinline__ void lutc_syncwarp() { __syncwarp(); }
"""


def syncwarp():
    """Barrier of the warp's lanes, which also orders their shared-memory accesses (after each
    lane's ``cp_wait``, every lane sees what the warp's ``cp.async`` copies wrote)."""
    return T.cuda.func_call("lutc_syncwarp", source_code=SYNCWARP_SRC)


def cp_wait(pending: int):
    """Wait until at most ``pending`` of this thread's newest ``cp.async`` groups are in flight
    (the count is an immediate in PTX, so each value is its own function)."""
    name = f"lutc_cp_wait{pending}"
    src = f'__device__ __forceinline__ void {name}() {{ asm volatile("cp.async.wait_group {pending};"); }}\n'
    return T.cuda.func_call(name, source_code=src)


#: Scales and zero points for bf16 weights: fp16 or fp32 in shared memory, rounded to bf16 (the
#: weights' type, so ``(q - c) s`` rounds twice: within bf16's tolerance).
LDS_SCALE_BF16_SRC = {"float16": """
__device__ __forceinline__ unsigned lutc_lds_h2_f16_bf16(unsigned addr) {
  unsigned short v;
  asm volatile("ld.shared.u16 %0, [%1];" : "=h"(v) : "r"(addr));
  __nv_bfloat162 h = __float2bfloat162_rn(__half2float(*reinterpret_cast<__half*>(&v)));
  return *reinterpret_cast<unsigned*>(&h);
}
""", "float32": """
__device__ __forceinline__ unsigned lutc_lds_h2_f32_bf16(unsigned addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(addr));
  __nv_bfloat162 h = __float2bfloat162_rn(v);
  return *reinterpret_cast<unsigned*>(&h);
}
"""}


def lds_scale_h2(addr, dtype: str, half: str = "float16"):
    """Pair (uint32, of ``half``) of the scale or zero point of type ``dtype`` at shared byte ``addr``."""
    short = short_name(dtype)
    if half == "bfloat16":
        return T.cuda.func_call(f"lutc_lds_h2_{short}_bf16", addr, source_code=LDS_SCALE_BF16_SRC[dtype],
                                return_type="uint32")
    return T.cuda.func_call(f"lutc_lds_h2_{short}", addr, source_code=LDS_SCALE_SRC[dtype], return_type="uint32")


LDS_SCALE_F32_SRC = {"float16": """
__device__ __forceinline__ float lutc_lds_f32_f16(unsigned addr) {
  unsigned short v;
  asm volatile("ld.shared.u16 %0, [%1];" : "=h"(v) : "r"(addr));
  return __half2float(*reinterpret_cast<__half*>(&v));
}
""", "float32": """
__device__ __forceinline__ float lutc_lds_f32_f32(unsigned addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(addr));
  return v;
}
"""}


def lds_scale_f32(addr, dtype: str):
    """The scale of type ``dtype`` (fp16 or fp32) at shared byte ``addr``, as an fp32 value: what a
    late scale multiplies the fp32 sums by."""
    return T.cuda.func_call(f"lutc_lds_f32_{short_name(dtype)}", addr, source_code=LDS_SCALE_F32_SRC[dtype],
                            return_type="float32")


# --- wgmma (sm_90a): cuda_wgmma ------------------------------------------------------------

def _wgmma_src(n: int, swizzle: int, dtype: str = "float16", accumulate: bool = True) -> str:
    """``lutc_wgmma_n{n}_s{swizzle}``: ``acc += A B`` for one ``m64n{n}k16`` (fp16 in, fp32 out), A
    from the 4 registers of the ``mma.m16n8k16`` A fragment of this warp's 16 rows, B (K-major)
    from shared memory at byte address ``b``. ``swizzle=0``: core matrices of 8 rows x 16 bytes,
    the next k8 block ``n * 16`` bytes on (leading byte offset), the next 8 rows 128 bytes on
    (stride byte offset). ``swizzle=128``: rows of 64 k (128 bytes) whose 16-byte chunks are
    XORed with the row mod 8, the next 8 rows 1024 bytes on; ``b`` must sit in a 1024-byte
    aligned atom, k16 step ``s`` of it at ``32 s`` bytes. ``accumulate=False``
    (``lutc_wgmma_n{n}_s{swizzle}_set``): ``acc = A B``, the accumulators' old values unread
    (wgmma's ``scale-d`` 0)."""
    regs = n // 2
    sfx, ab = HALVES[dtype][1], PTX_TYPE[dtype]
    d = ", ".join(f"%{i}" for i in range(regs))
    outs = ", ".join(f'"{"+" if accumulate else "="}f"(d[{i}])' for i in range(regs))
    name = f"lutc_wgmma_n{n}_s{swizzle}{sfx}{'' if accumulate else '_set'}"
    lbo, sbo, mode = (n * 16, 128, 0) if swizzle == 0 else (16, 1024, 1)
    return f"""
__device__ __forceinline__ void {name}(float* d, unsigned a0, unsigned a1, unsigned a2,
                                                 unsigned a3, unsigned b) {{
  unsigned long long desc = (unsigned long long)((b & 0x3FFFFu) >> 4)
      | ((unsigned long long)({lbo} >> 4) << 16) | ((unsigned long long)({sbo} >> 4) << 32)
      | ((unsigned long long){mode} << 62);
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ab}.{ab} {{{d}}}, "
               "{{%{regs}, %{regs + 1}, %{regs + 2}, %{regs + 3}}}, %{regs + 4}, {int(accumulate)}, 1, 1, 0;"
               : {outs}
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc) : "memory");
#else
  __trap();  // compiled for an architecture without wgmma (see SM90A_ONLY)
#endif
}}
"""


def _fence_acc_src(n: int) -> str:
    """``lutc_wgmma_acc_n{n}``: pins the accumulators (an empty asm that reads and writes each),
    so that the compiler moves no access to them across the wgmma fences and waits."""
    body = "\n".join(f'  asm volatile("" : "+f"(d[{i}]) :: "memory");' for i in range(n // 2))
    return f"__device__ __forceinline__ void lutc_wgmma_acc_n{n}(float* d) {{\n{body}\n}}\n"


def wgmma_m64k16(acc_ptr, n: int, swizzle: int, a0, a1, a2, a3, b_addr, dtype: str = "float16",
                 accumulate: bool = True):
    """Issue ``acc += A B`` (``accumulate=False``: ``acc = A B``) for one ``m64n{n}k16`` of ``dtype``
    (fp16 or bf16) with B in the layout ``swizzle`` (0 or 128, see :func:`_wgmma_src`);
    asynchronous: :func:`wgmma_commit`, :func:`wgmma_wait`."""
    name = f"lutc_wgmma_n{n}_s{swizzle}{HALVES[dtype][1]}{'' if accumulate else '_set'}"
    return T.cuda.func_call(name, acc_ptr, a0, a1, a2, a3, b_addr,
                            source_code=_wgmma_src(n, swizzle, dtype, accumulate))


def wgmma_fence_acc(acc_ptr, n: int):
    """Pin the ``n / 2`` accumulators of an ``m64n{n}`` wgmma (see :func:`_fence_acc_src`)."""
    return T.cuda.func_call(f"lutc_wgmma_acc_n{n}", acc_ptr, source_code=_fence_acc_src(n))


#: Why the wgmma snippets are guarded: ``nvcc -arch=sm_90a`` (CUDA 13) also embeds PTX for
#: ``compute_90``, where ``wgmma`` does not exist; there the kernel traps, and the ``sm_90a``
#: code (``__CUDA_ARCH_FEAT_SM90_ALL``) is what a Hopper GPU runs.
SM90A_ONLY = "defined(__CUDA_ARCH_FEAT_SM90_ALL)"


def _asm_func(name: str, ptx: str, guard: str = ""):
    body = f'asm volatile("{ptx}" ::: "memory");'
    if guard:
        body = f"\n#if {guard}\n  {body}\n#endif\n"
    src = f"__device__ __forceinline__ void {name}() {{ {body} }}\n"
    return T.cuda.func_call(name, source_code=src)


def wgmma_fence():
    """``wgmma.fence``: registers written before it are seen by the wgmma issued after it."""
    return _asm_func("lutc_wgmma_fence", "wgmma.fence.sync.aligned;", SM90A_ONLY)


def wgmma_commit():
    """Close the warpgroup's current group of wgmma."""
    return _asm_func("lutc_wgmma_commit", "wgmma.commit_group.sync.aligned;", SM90A_ONLY)


def wgmma_wait(pending: int):
    """Wait until at most ``pending`` of the warpgroup's newest wgmma groups are in flight."""
    return _asm_func(f"lutc_wgmma_wait{pending}", f"wgmma.wait_group.sync.aligned {pending};", SM90A_ONLY)


def setmaxnreg(increase: bool, count: int):
    """``setmaxnreg``: this warpgroup's threads from now on own ``count`` registers each (a
    multiple of 8 in 24..256), given back to (``increase`` False) or taken from the block's pool;
    a warp-specialized kernel moves the copying warps' registers to the computing ones."""
    op = "inc" if increase else "dec"
    return _asm_func(f"lutc_setmaxnreg_{op}{count}", f"setmaxnreg.{op}.sync.aligned.u32 {count};", SM90A_ONLY)


def proxy_fence_async():
    """Make this thread's shared-memory stores visible to the async proxy (wgmma reads B there)."""
    return _asm_func("lutc_fence_proxy_async", "fence.proxy.async.shared::cta;")


# --- mbarriers (sm_80+ for cp.async's arrive, sm_90 for try_wait): cuda_wgmma's producer warps

MBAR_SRC = {
    "init": """
__device__ __forceinline__ void lutc_mbar_init(unsigned addr, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(addr), "r"(count) : "memory");
}
""",
    "arrive": """
__device__ __forceinline__ void lutc_mbar_arrive(unsigned addr) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(addr) : "memory");
}
""",
    "cp_arrive": """
__device__ __forceinline__ void lutc_cp_mbar_arrive(unsigned addr) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" :: "r"(addr) : "memory");
}
""",
    "wait": """
__device__ __forceinline__ void lutc_mbar_wait(unsigned addr, unsigned parity) {
  unsigned done = 0;
  while (!done) {
    asm volatile("{\\n .reg .pred p;\\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\\n"
                 " selp.u32 %0, 1, 0, p;\\n}" : "=r"(done) : "r"(addr), "r"(parity) : "memory");
  }
}
"""}


def mbar_init(addr, count):
    """Initialize the mbarrier at shared byte ``addr`` for ``count`` arrivals per phase."""
    return T.cuda.func_call("lutc_mbar_init", addr, count, source_code=MBAR_SRC["init"])


def mbar_arrive(addr):
    """Arrive (release) on the mbarrier at shared byte ``addr``."""
    return T.cuda.func_call("lutc_mbar_arrive", addr, source_code=MBAR_SRC["arrive"])


def cp_mbar_arrive(addr):
    """Arrive on the mbarrier at ``addr`` once this thread's ``cp.async`` copies so far have landed
    (``.noinc``: the arrival is one of the phase's expected count)."""
    return T.cuda.func_call("lutc_cp_mbar_arrive", addr, source_code=MBAR_SRC["cp_arrive"])


def mbar_wait(addr, parity):
    """Wait (acquire) until the phase of parity ``parity`` of the mbarrier at ``addr`` completed."""
    return T.cuda.func_call("lutc_mbar_wait", addr, parity, source_code=MBAR_SRC["wait"])
