"""Inline CUDA for the tensor-core kernels (``cuda_mma``, ``cuda_stream``, ``cuda_wgmma``): each snippet once, with
the TVMScript call that uses it (statements are written ``T.evaluate(cp16(...))``). TVM pastes a
snippet once per function name, so each snippet defines one function.

TVM's TIR has no words for ``mma.sync`` on register fragments, ``ld.shared.v4`` from an address,
or ``cp.async`` groups, so the kernels call these ``__device__`` functions through
``T.cuda.func_call`` (TVM pastes each ``source_code`` once into the module). The dequantization
(:func:`deq`) is the one place that turns packed codes into fp16 weights for both kernels.
"""
from __future__ import annotations

from tvm.script import tirx as T

H2_SRC = """
__device__ __forceinline__ unsigned lutc_h2(float v) {
  __half2 h = __float2half2_rn(v);
  return *reinterpret_cast<unsigned*>(&h);
}
"""
#: ``(w & mask) | 0x64006400`` (the codes under fp16's magic number 1024) as one ``LOP3``: written
#: in C, nvcc splits it into two (an AND and an OR, each with its immediate), one more
#: instruction per two weights in every dequantizing kernel.
LOP3_SRC = """
#ifndef LUTC_LOP3_AND_OR
#define LUTC_LOP3_AND_OR
__device__ __forceinline__ unsigned lutc_lop3_and_or(unsigned w, unsigned mask) {
  unsigned h;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(h) : "r"(w), "r"(mask), "r"(0x64006400u));
  return h;
}
#endif
"""
DEQ_SRC = LOP3_SRC + """
__device__ __forceinline__ unsigned lutc_deq(unsigned w, unsigned mask, unsigned mul, unsigned add,
                                             unsigned s2, unsigned z2) {
  unsigned h = lutc_lop3_and_or(w, mask);
  __half2 q = __hfma2(*reinterpret_cast<__half2*>(&h), *reinterpret_cast<__half2*>(&mul),
                      *reinterpret_cast<__half2*>(&add));
  __half2 r = __hmul2(__hsub2(q, *reinterpret_cast<__half2*>(&z2)), *reinterpret_cast<__half2*>(&s2));
  return *reinterpret_cast<unsigned*>(&r);
}
"""
LDG128_SRC = """
__device__ __forceinline__ void lutc_ldg128(const half* p, bool valid, unsigned* d) {
  uint4 v = make_uint4(0u, 0u, 0u, 0u);
  if (valid) v = __ldg(reinterpret_cast<const uint4*>(p));
  d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
}
"""
MMA_SRC = """
__device__ __forceinline__ void lutc_mma(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                         unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
"""
LDS128_SRC = """
__device__ __forceinline__ void lutc_lds128(unsigned addr, unsigned* d) {
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(addr));
}
"""


def h2(v):
    """``half2`` (as uint32) holding the float ``v`` twice."""
    return T.cuda.func_call("lutc_h2", v, source_code=H2_SRC, return_type="uint32")


def deq(word, b, v, s2, zs2):
    """``half2`` of the two codes in slot position ``v`` of ``word`` (already shifted by 8 u):
    ``(q - c) s`` with ``q - c`` exact in fp16 (``c`` = (2^b - 1)/2 or the zero point), one
    rounding by the multiply."""
    e = b * v                                            # the codes sit at bits e.. and 16 + e..
    mask = T.shift_left(T.uint32((2 ** b - 1) * 0x10001), T.Cast("uint32", e))
    mul_h = T.shift_left(T.Cast("uint32", 15 - e), T.uint32(10))         # 2^-e
    add_h = T.uint32(0x8000) | T.shift_left(T.Cast("uint32", 25 - e), T.uint32(10))  # -2^(10-e)
    return T.cuda.func_call("lutc_deq", word, mask, mul_h | T.shift_left(mul_h, T.uint32(16)),
                            add_h | T.shift_left(add_h, T.uint32(16)), s2, zs2,
                            source_code=DEQ_SRC, return_type="uint32")


DEQ_C_SRC = LOP3_SRC + """
__device__ __forceinline__ unsigned lutc_deq_c(unsigned w, unsigned mask, unsigned mul, unsigned add,
                                               unsigned s2) {
  unsigned h = lutc_lop3_and_or(w, mask);
  __half2 r = __hmul2(__hfma2(*reinterpret_cast<__half2*>(&h), *reinterpret_cast<__half2*>(&mul),
                              *reinterpret_cast<__half2*>(&add)), *reinterpret_cast<__half2*>(&s2));
  return *reinterpret_cast<unsigned*>(&r);
}
"""


def deq_c(word, b, v, s2, c: float):
    """:func:`deq` for the format's constant zero ``c = (2^b - 1)/2`` (no zero points), one
    instruction shorter: the ``HFMA2`` that undoes the magic number also subtracts ``c``.

    ``1024 2^-e + c`` must be exact in fp16, which a half-integer ``c`` is not next to 1024, so
    the codes are read one bit higher (``word << 1``: ``e = b v + 1 >= 1``, the spacing of fp16
    at ``2^(10-e)`` is ``2^-e <= 1/2``); the FMA's exact result ``q - c`` rounds to itself, and
    the multiply by ``s`` is the one rounding, as in :func:`deq`: bit-identical results."""
    e = b * v + 1                                        # the codes, one bit up
    mask = T.shift_left(T.uint32((2 ** b - 1) * 0x10001), T.Cast("uint32", e))
    mul_h = T.shift_left(T.Cast("uint32", 15 - e), T.uint32(10))         # 2^-e
    # -(2^(10-e) + c): exponent of 2^(10-e), mantissa c 2^e = (2c) 2^(e-1)
    add_h = (T.uint32(0x8000) | T.shift_left(T.Cast("uint32", 25 - e), T.uint32(10))
             | T.shift_left(T.uint32(int(2 * c)), T.Cast("uint32", e - 1)))
    return T.cuda.func_call("lutc_deq_c", T.shift_left(word, T.uint32(1)), mask,
                            mul_h | T.shift_left(mul_h, T.uint32(16)), add_h | T.shift_left(add_h, T.uint32(16)),
                            s2, source_code=DEQ_C_SRC, return_type="uint32")


def dequant_tc16(words, lead: tuple, e, b: int, s2, z2, zero_points: bool, c: float):
    """``half2`` of the code pair ``e`` (0..31) of a lane's ``tc16`` vector, held in
    ``words[(*lead, j4, w)]`` (``b/2`` x 4 words): the word that holds the pair, shifted so the
    pair's byte pair is at the bottom, dequantized with the zero points ``z2`` (:func:`deq`) or
    the format's constant ``c`` (:func:`deq_c`). The one place the kernels read ``tc16`` codes."""
    pairs, slots = 16 // b, 8 // b                 # code pairs per word, slots per byte pair
    word = words[(*lead, (e // pairs) // 4, (e // pairs) % 4)]
    shifted = T.shift_right(T.Cast("uint32", word), T.Cast("uint32", 8 * ((e % pairs) // slots)))
    v = (e % pairs) % slots
    return deq(shifted, b, v, s2, z2) if zero_points else deq_c(shifted, b, v, s2, c)


CP16_SRC = """
__device__ __forceinline__ void lutc_cp16(unsigned dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst), "l"(src));
}
"""
CP4_SRC = """
__device__ __forceinline__ void lutc_cp4(unsigned dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" :: "r"(dst), "l"(src));
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


def mma(acc_ptr, a0, a1, a2, a3, b0, b1):
    """``acc += A B`` for one ``m16n8k16`` tile (fp16 in, fp32 accumulators at ``acc_ptr``)."""
    return T.cuda.func_call("lutc_mma", acc_ptr, a0, a1, a2, a3, b0, b1, source_code=MMA_SRC)


def ldg128(src_ptr, valid, dst_ptr):
    """16 bytes of global memory at ``src_ptr`` (read-only path) into 4 registers at ``dst_ptr``,
    zeros where ``valid`` is false."""
    return T.cuda.func_call("lutc_ldg128", src_ptr, valid, dst_ptr, source_code=LDG128_SRC)


def lds128(addr, dst_ptr):
    """16 bytes of shared memory at byte address ``addr`` into 4 registers at ``dst_ptr``."""
    return T.cuda.func_call("lutc_lds128", addr, dst_ptr, source_code=LDS128_SRC)


def cp16(dst_addr, src_ptr):
    """Start an asynchronous 16-byte copy global -> shared (``cp.async.cg``, bypasses L1)."""
    return T.cuda.func_call("lutc_cp16", dst_addr, src_ptr, source_code=CP16_SRC)


def cp4(dst_addr, src_ptr):
    """Start an asynchronous 4-byte copy global -> shared (``cp.async.ca``: the 16-byte form
    cannot scatter a row, and its neighbours' sectors are then read from L1)."""
    return T.cuda.func_call("lutc_cp4", dst_addr, src_ptr, source_code=CP4_SRC)


def cp_commit():
    """Close this thread's current group of ``cp.async`` copies."""
    return T.cuda.func_call("lutc_cp_commit", source_code=COMMIT_SRC)


def cp_wait(pending: int):
    """Wait until at most ``pending`` of this thread's newest ``cp.async`` groups are in flight
    (the count is an immediate in PTX, so each value is its own function)."""
    name = f"lutc_cp_wait{pending}"
    src = f'__device__ __forceinline__ void {name}() {{ asm volatile("cp.async.wait_group {pending};"); }}\n'
    return T.cuda.func_call(name, source_code=src)


def lds_scale_h2(addr, dtype: str):
    """``half2`` (uint32) of the scale or zero point of type ``dtype`` at shared byte ``addr``."""
    name = {"float16": "lutc_lds_h2_f16", "float32": "lutc_lds_h2_f32"}[dtype]
    return T.cuda.func_call(name, addr, source_code=LDS_SCALE_SRC[dtype], return_type="uint32")


# --- wgmma (sm_90a): cuda_wgmma ------------------------------------------------------------

def _wgmma_src(n: int, swizzle: int) -> str:
    """``lutc_wgmma_n{n}_s{swizzle}``: ``acc += A B`` for one ``m64n{n}k16`` (fp16 in, fp32 out), A
    from the 4 registers of the ``mma.m16n8k16`` A fragment of this warp's 16 rows, B (K-major)
    from shared memory at byte address ``b``. ``swizzle=0``: core matrices of 8 rows x 16 bytes,
    the next k8 block ``n * 16`` bytes on (leading byte offset), the next 8 rows 128 bytes on
    (stride byte offset). ``swizzle=128``: rows of 64 k (128 bytes) whose 16-byte chunks are
    XORed with the row mod 8, the next 8 rows 1024 bytes on; ``b`` must sit in a 1024-byte
    aligned atom, k16 step ``s`` of it at ``32 s`` bytes."""
    regs = n // 2
    d = ", ".join(f"%{i}" for i in range(regs))
    outs = ", ".join(f'"+f"(d[{i}])' for i in range(regs))
    lbo, sbo, mode = (n * 16, 128, 0) if swizzle == 0 else (16, 1024, 1)
    return f"""
__device__ __forceinline__ void lutc_wgmma_n{n}_s{swizzle}(float* d, unsigned a0, unsigned a1, unsigned a2,
                                                 unsigned a3, unsigned b) {{
  unsigned long long desc = (unsigned long long)((b & 0x3FFFFu) >> 4)
      | ((unsigned long long)({lbo} >> 4) << 16) | ((unsigned long long)({sbo} >> 4) << 32)
      | ((unsigned long long){mode} << 62);
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.mma_async.sync.aligned.m64n{n}k16.f32.f16.f16 {{{d}}}, "
               "{{%{regs}, %{regs + 1}, %{regs + 2}, %{regs + 3}}}, %{regs + 4}, 1, 1, 1, 0;"
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


def wgmma_m64k16(acc_ptr, n: int, swizzle: int, a0, a1, a2, a3, b_addr):
    """Issue ``acc += A B`` for one ``m64n{n}k16`` with B in the layout ``swizzle`` (0 or 128, see
    :func:`_wgmma_src`); asynchronous: :func:`wgmma_commit`, :func:`wgmma_wait`."""
    return T.cuda.func_call(f"lutc_wgmma_n{n}_s{swizzle}", acc_ptr, a0, a1, a2, a3, b_addr,
                            source_code=_wgmma_src(n, swizzle))


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
