"""Export round trips, per weight layout: the default x86 SIMD kernel, dot_mac and a generic
kernel run from C (LLVM object, and C source where there is one) on weight files in the
kernel's layout; the .so through tvm-ffi from a Python process without lutc or TVM and from
C++; the NEON kernel cross-built and run under qemu; CUDA sources (cuda_lut, cuda_mma,
cuda_generic) through nvcc; weight files of every layout, damaged ones, the reader in C; the CLI.

Every run checks the output (poisoned with NaN first) against the float64 reference of the
dequantized weight."""
import ctypes
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import lutc
from lutc import layouts
from lutc.weight_files import FILE_LAYOUTS, HEADER_FIELDS, load_weights, save_weights
from lutc.testing import random_case, reference, rel_error, tolerance

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "c_host"
BIN = Path(sys.executable).parent
CROSS_CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
needs_nvcc = pytest.mark.skipif(
    shutil.which("nvcc") is None and not os.environ.get("CI"),
    reason="nvcc not installed (CI has it, and there this test fails instead of skipping)")
needs_qemu = pytest.mark.skipif(
    (shutil.which(CROSS_CC) is None or shutil.which(QEMU) is None) and not os.environ.get("CI"),
    reason="needs qemu-user and gcc-aarch64-linux-gnu (CI installs them; there this fails instead)")


def _run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)


def _load_prepare():
    spec = importlib.util.spec_from_file_location("c_host_prepare", EXAMPLE / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prepare


def _manifest(out: Path) -> dict:
    return json.loads((out / "kernel.json").read_text())


CASES = {  # the default kernel of this CPU in each of its layouts, and a generic one with a .c
    "default-w2": dict(shape=(1, 512, 1024), wbits=2, group_size=128),                  # ptiles
    "w3-zp": dict(shape=(3, 200, 512), wbits=3, group_size=64, zero_point=True),        # tiles, N padded
    "bcq-w2": dict(shape=(1, 64, 256), wbits=2, group_size=32, format="bcq"),           # tiles, 4-D scales
    "dot_mac-w4": dict(shape=(2, 96, 512), wbits=4, group_size=128, schedule="dot_mac"),  # dot16
    "generic-w3-zp": dict(shape=(3, 200, 512), wbits=3, group_size=64, zero_point=True,
                          table_dtype="float32"),                                       # bitplane
}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    with _warns_unless_c(CASES[request.param]):
        kernel = _load_prepare()(out, seed=3, **CASES[request.param])
    assert _manifest(out)["layout"] == kernel.layout
    return out


def _warns_unless_c(case):
    """The SIMD kernels have no .c: a default export warns (and records it) that it skipped it."""
    if case.get("table_dtype") == "float32":
        return _nothing()
    return pytest.warns(UserWarning, match="skipped 'c': the (x86|dot_mac) kernel calls LLVM intrinsics")


@needs_gcc
def test_c_host_runs_the_exported_kernel(exported):
    manifest = _manifest(exported)
    build = _run(["bash", EXAMPLE / "build.sh", exported, "o"])
    assert build.returncode == 0, build.stderr
    run = _run([exported / "c_host", exported])
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"layout {manifest['layout']}," in run.stdout and ": OK;" in run.stdout
    assert re.search(r"median [\d.]+ us/call over 50 calls", run.stdout)
    # the error it printed is within the bound of the kernel's tables
    err = float(re.search(r"max relative error ([\d.e+-]+)", run.stdout).group(1))
    assert err < tolerance(lutc.MPGemmSpec(**manifest["spec"]))
    # The same program exits 1 when the result misses a (here impossible) tighter bound.
    strict = _run([exported / "c_host", exported, "--bound", "1e-30"])
    assert strict.returncode == 1 and "MISMATCH" in strict.stdout


@needs_gcc
def test_c_host_from_c_source_where_written(exported):
    manifest = _manifest(exported)
    build = _run(["bash", EXAMPLE / "build.sh", exported, "c"])
    if manifest["layout"] != "bitplane":   # SIMD kernels: no .c; header, manifest and build.sh say why
        assert "c" in manifest["skipped"] and "c" not in manifest["files"]
        assert "kernel.c: not written: the" in (exported / "kernel.h").read_text()
        assert build.returncode == 2 and "kernel.c: not written" in build.stderr
        return
    assert build.returncode == 0, build.stderr
    run = _run([exported / "c_host_src", exported])
    assert run.returncode == 0 and ": OK;" in run.stdout, run.stdout + run.stderr


@needs_gcc
def test_c_host_refuses_weights_in_another_layout(exported, tmp_path):
    manifest = _manifest(exported)
    other = "bitplane" if manifest["layout"] != "bitplane" else "tiles64"
    for f in ("x.bin", "ref.bin"):
        shutil.copyfile(exported / f, tmp_path / f)
    save_weights(load_weights(exported / "weights.lutcw"), tmp_path / "weights.lutcw", layout=other)
    if not (exported / "c_host").exists():
        assert _run(["bash", EXAMPLE / "build.sh", exported, "o"]).returncode == 0
    run = _run([exported / "c_host", tmp_path])
    assert run.returncode == 2
    assert f"weight file is in layout {other}, the kernel reads {manifest['layout']}" in run.stderr


def test_so_through_tvm_ffi_in_a_process_without_lutc_or_tvm(exported):
    # Importing lutc or tvm fails in this process: only numpy and tvm_ffi are there.
    code = ("import sys, runpy; sys.modules['lutc'] = None; sys.modules['tvm'] = None; "
            f"sys.argv = ['run_so.py', {str(exported)!r}]; "
            f"runpy.run_path({str(EXAMPLE / 'run_so.py')!r}, run_name='__main__')")
    run = _run([sys.executable, "-c", code])
    assert run.returncode == 0, run.stdout + run.stderr
    assert ": OK;" in run.stdout and "lutc/tvm loaded: none" in run.stdout


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_so_through_tvm_ffi_from_cxx(exported):
    env = dict(os.environ, TVM_FFI_CONFIG=str(BIN / "tvm-ffi-config"))
    build = _run(["bash", EXAMPLE / "build.sh", exported, "cxx"], env=env)
    assert build.returncode == 0, build.stderr
    ldd = _run(["ldd", exported / "cxx_host"]).stdout
    assert "libtvm_ffi" in ldd and "libtvm_runtime" not in ldd
    run = _run([exported / "cxx_host", exported])
    assert run.returncode == 0, run.stdout + run.stderr
    assert ": OK" in run.stdout


def test_so_loaded_next_to_tvm(exported):
    # With TVM in the process, its runtime fills the backend hooks instead of lutc_backend.c.
    import tvm_ffi
    manifest = _manifest(exported)
    fn = tvm_ffi.load_module(str(exported / "kernel.so"))["main"]
    qw = load_weights(exported / "weights.lutcw")
    assert qw.layout == manifest["layout"]
    (M, K), (_, N) = manifest["args"][0]["shape"], manifest["args"][-1]["shape"]
    x = torch.from_numpy(np.fromfile(exported / "x.bin", np.float32).reshape(M, K))
    out = torch.full((M, N), float("nan"))
    fn(x, *qw.tensors(), out)
    ref = torch.from_numpy(np.fromfile(exported / "ref.bin", np.float64).reshape(M, N))
    assert torch.equal(ref, reference(x, qw))
    assert rel_error(out, ref) < tolerance(lutc.MPGemmSpec(**manifest["spec"]))


@needs_gcc
@pytest.mark.parametrize("table_dtype", ["float32", "int8"])
def test_kernels_with_own_symbols_link_into_one_program(tmp_path, table_dtype):
    """Two kernels renamed by ``symbol=`` link into one program: the generic schedule (float
    tables) and this CPU's default kernel (int8: a template that writes its own function)."""
    spec = lutc.MPGemmSpec(2, 64, 256, wbits=2, group_size=64, table_dtype=table_dtype)
    other = spec.with_(wbits=4, zero_point=True)
    kinds = ("o", "c")
    for s, name in ((spec, "ka"), (other, "kb")):
        kernel = lutc.build(s)
        if kernel.schedule != "cpu_generic":
            kinds = ("o",)                     # SIMD intrinsics: no C source (see the test below)
        lutc.export(kernel, tmp_path, name=name, symbol=f"lutc_{name}", emit=list(kinds))
        assert f" T __tvm_ffi_lutc_{name}\n" in _run(["nm", "-g", tmp_path / f"{name}.o"]).stdout
    host = tmp_path / "two.c"
    host.write_text('#include "ka.h"\n#include "kb.h"\n#include <stdio.h>\n'
                    "int main(void) { /* both entry points resolve; the calls fail their checks */\n"
                    "  printf(\"%d %d\\n\", ka_run(0, 0, 0, 0, 0), kb_run(0, 0, 0, 0, 0)); return 0; }\n")
    flags = ["-O1", "-I", tmp_path, "-I", tmp_path / "include", "-DLUTC_STANDALONE", "-pthread"]
    for kind in kinds:
        objs = [tmp_path / f"ka.{kind}", tmp_path / f"kb.{kind}", tmp_path / "lutc_backend.c"]
        build = _run(["gcc", *flags, host, *objs, "-lm", "-o", tmp_path / f"two_{kind}"])
        assert build.returncode == 0, build.stderr
        run = _run([tmp_path / f"two_{kind}"])
        assert run.returncode == 0 and run.stdout.split() == ["-1", "-1"], run.stdout + run.stderr


def test_simd_kernel_c_source_is_refused_when_asked_for(tmp_path):
    kernel = lutc.compile((1, 64, 256), wbits=2, group_size=64)
    if kernel.layout == "bitplane":
        pytest.skip("this CPU has no SIMD lookup kernel")
    with pytest.raises(RuntimeError, match=r"cannot write the 'c' export: the \w+ kernel calls LLVM "
                                           r"intrinsics \(llvm\.[\w.]+"):
        lutc.export(kernel, tmp_path / "simd", name="simd", emit=["o", "c"])
    assert not (tmp_path / "simd").exists()          # refused before anything was written


def test_header_and_manifest_document_the_default_kernel(tmp_path):
    kernel = lutc.compile((1, 100, 512), wbits=2, group_size=128, zero_point=True)
    if kernel.layout == "bitplane":
        pytest.skip("this CPU has no SIMD lookup kernel")
    lay = layouts.get(kernel.layout)
    with pytest.warns(UserWarning, match="skipped 'c'"):
        res = lutc.export(kernel, tmp_path, name="dflt")
    header = res.files["h"].read_text()
    shapes = lay.shapes(kernel.spec)
    NP = lay.tiles(kernel.spec) * lay.rows
    assert NP > 100 and shapes["scales"].shape[-1] == lay.rows        # padded tiles
    for text in [f'layout "{kernel.layout}" version 1',
                 *lay.family_doc.strip().splitlines()[:2],               # the layout's own byte order
                 f"planes  uint8_t [{', '.join(map(str, shapes['planes'].shape))}]",
                 f"zeros  uint16_t (IEEE half bits) [{', '.join(map(str, shapes['zeros'].shape))}]",
                 f'#define DFLT_LAYOUT "{kernel.layout}"',
                 f"#define DFLT_LAYOUT_CODE {FILE_LAYOUTS.index(kernel.layout)}",
                 f"#define DFLT_N_PADDED {NP}", '#define DFLT_TABLE_DTYPE "int8"',
                 f"#define DFLT_PLANES_SHAPE {{{', '.join(map(str, shapes['planes'].shape))}}}",
                 '#define DFLT_PLANES_DTYPE "uint8"', "#define DFLT_PLANES_BITS 8",
                 f"save_weights(qw, path, layout=\"{kernel.layout}\")",
                 f"dflt.c: not written: the {kernel.schedule} kernel calls LLVM intrinsics",
                 "static inline int dflt_run("]:
        assert text in header, text
    assert 'bitplane' not in header.split("Weight files")[0]             # documents its own layout only
    manifest = json.loads(res.files["json"].read_text())
    assert manifest["layout"] == kernel.layout and manifest["layout_version"] == lay.version
    assert manifest["layout_code"] == FILE_LAYOUTS.index(kernel.layout)
    assert manifest["layout_doc"] == lay.doc(kernel.spec)
    assert manifest["files"] == {"o": "dflt.o", "so": "dflt.so", "h": "dflt.h"}
    assert "LLVM intrinsics" in manifest["skipped"]["c"]
    assert [(a["name"], tuple(a["shape"]), a["dtype"]) for a in manifest["args"][1:-1]] == [
        (n, t.shape, t.dtype) for n, t in shapes.items()]


def test_header_and_manifest_document_a_generic_kernel(tmp_path):
    kernel = lutc.compile((4, 96, 512), wbits=3, group_size=128, zero_point=True, act_dtype="float16",
                          table_dtype="float32")
    res = lutc.export(kernel, tmp_path, name="doc")
    header = res.files["h"].read_text()
    for text in ('layout "bitplane" version 1', "__tvm_ffi_main(void* self",
                 "__TVMBackendParallelLaunch", "x  uint16_t (IEEE half bits) [4, 512]",
                 "planes  uint8_t [3, 96, 64]", "zeros  uint16_t (IEEE half bits) [96, 4]",
                 "#define DOC_PLANES_BYTES 18432", "#define DOC_LAYOUT_CODE 0",
                 "static inline int doc_run(", "doc.o (or doc.c)"):
        assert text in header, text
    assert "not written" not in header
    manifest = json.loads(res.files["json"].read_text())
    assert manifest["entry"] == "__tvm_ffi_main" and manifest["layout_version"] == lutc.LAYOUT_VERSION
    assert [a["name"] for a in manifest["args"]] == ["x", "planes", "scales", "zeros", "out"]
    assert manifest["files"] == {"o": "doc.o", "so": "doc.so", "c": "doc.c", "h": "doc.h"}
    assert manifest["skipped"] == {}
    assert "typedef LUTC_HALF_TYPE half;" in res.files["c"].read_text()
    assert (tmp_path / "include" / "tvm" / "ffi" / "c_api.h").exists()


def test_export_argument_errors(tmp_path):
    kernel = lutc.compile((1, 64, 256), wbits=2, group_size=64, table_dtype="float32")
    with pytest.raises(ValueError, match="name must be a C identifier"):
        lutc.export(kernel, tmp_path, name="my-kernel")
    with pytest.raises(ValueError, match=r"emit: \['cu'\] cannot be written for a CPU kernel"):
        lutc.export(kernel, tmp_path, emit=["cu"])
    with pytest.raises(TypeError, match="kernel must be a lutc Kernel"):
        lutc.export("kernel", tmp_path)
    res = lutc.export(kernel, tmp_path, name="only_o", emit=["o"])
    assert set(res.files) == {"o", "h", "json"}


def test_cross_compiled_kernel_exports_object_and_c(tmp_path):
    kernel = lutc.build(lutc.MPGemmSpec(1, 64, 256, wbits=2, group_size=64), target="arm")
    res = lutc.export(kernel, tmp_path, name="arm", emit=["o", "c"])
    header = res.files["o"].read_bytes()[:20]
    assert struct.unpack("<H", header[18:20])[0] == 183      # EM_AARCH64
    assert "__tvm_ffi_main" in res.files["c"].read_text()


def _elf_machine(path: Path) -> int:
    return struct.unpack("<H", path.read_bytes()[18:20])[0]


@needs_qemu
@pytest.mark.parametrize("case", ["neon", "generic-c"])
def test_arm_export_runs_under_qemu(tmp_path, case):
    """The NEON kernel (tiles32, the arm default) and the generic one from its C source,
    cross-built with the export's files and run under qemu-aarch64 by the C host."""
    generic = case == "generic-c"
    with _nothing() if generic else pytest.warns(UserWarning, match="skipped 'c': the arm kernel"):
        kernel = _load_prepare()(tmp_path, shape=(2, 128, 512), wbits=2, group_size=128,
                                 zero_point=True, target="arm", seed=4,
                                 table_dtype="float32" if generic else None)
    assert (kernel.schedule, kernel.layout) == (("cpu_generic", "bitplane") if generic else ("arm", "tiles32"))
    manifest = _manifest(tmp_path)
    assert _elf_machine(tmp_path / "kernel.o") == 183 and _elf_machine(tmp_path / "kernel.so") == 183
    assert ("c" in manifest["files"]) == generic
    env = dict(os.environ, CC=CROSS_CC, CFLAGS="-fno-tree-vectorize", LDFLAGS="-static")
    build = _run(["bash", EXAMPLE / "build.sh", tmp_path, "c" if generic else "o"], env=env)
    assert build.returncode == 0, build.stderr
    run = _run([QEMU, tmp_path / ("c_host_src" if generic else "c_host"), tmp_path, "--calls", "3"])
    assert run.returncode == 0 and ": OK;" in run.stdout, run.stdout + run.stderr
    assert f"layout {kernel.layout}, {kernel.spec.table_dtype} tables" in run.stdout


# --- CUDA sources (compiled with nvcc; run only on a GPU) ---
CUDA_SPECS = [lutc.MPGemmSpec(3, 64, 256, wbits=2, group_size=64),
              lutc.MPGemmSpec(2, 96, 512, wbits=4, group_size=128, zero_point=True,
                              act_dtype="float16", table_dtype="int8"),
              lutc.MPGemmSpec(1, 64, 512, wbits=3, format="bcq", group_size=32, act_dtype="bfloat16")]
#: The default CUDA kernels: (shape, format fields) -> (schedule, layout), fp16 activations.
CUDA_DEFAULTS = {"cuda_lut": (((1, 96, 512), dict(wbits=1, group_size=64, zero_point=True)), "warp32"),
                 # 4 stages of 4 warps x 2 tiles of W3 (4-bit slots) and 8 rows of x: past 48 KB of
                 # dynamic shared memory
                 "cuda_stream": (((8, 64, 512), dict(wbits=3, group_size=64, zero_point=True)), "tc16"),
                 "cuda_mma": (((16, 64, 512), dict(format="ternary")), "tc16"),
                 # sm_90a only; 113 KB of dynamic shared memory
                 "cuda_wgmma": (((64, 64, 512), dict(wbits=2, group_size=64, zero_point=True)), "tc16")}


def test_cuda_launches_from_lowered_tir(tmp_path):
    kernel = lutc.build(CUDA_SPECS[1], target="cuda:sm_80", schedule="cuda_generic")
    with pytest.warns(UserWarning, match="skipped 'so'") if not kernel.runnable else _nothing():
        res = lutc.export(kernel, tmp_path, name="kcu", symbol="kcu")
    launches, workspace = res.extra["launches"], res.extra["workspace"]
    names = [L["name"] for L in launches]
    assert names[0] == "kcu_kernel" and len(names) == len(set(names)) >= 3
    out = next(L for L in launches if "planes" in L["args"])       # the LUT kernel: one output per thread
    assert out["block"] == [128, 1, 1] and out["grid"] == [(2 * 96 + 127) // 128, 1, 1]
    assert {w["name"] for w in workspace} >= {"table", "table_q", "act_sum"}
    header = res.files["h"].read_text()
    assert "kcu_kernel " in header and "KCU_WORKSPACE_BYTES" in header and "int kcu_launch(" in header
    cu = res.files["cu"].read_text()
    assert 'extern "C" int kcu_launch(' in cu and "<<<dim3(" in cu
    if not kernel.runnable:
        with pytest.raises(RuntimeError, match="no GPU in this process"):
            lutc.export(kernel, tmp_path, name="kcu_so", emit=["so"])


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@needs_nvcc
def test_cuda_exports_compile_and_link_together(tmp_path):
    objs = []
    for i, spec in enumerate(CUDA_SPECS):
        kernel = lutc.build(spec, target="cuda:sm_80", schedule="cuda_generic")
        lutc.export(kernel, tmp_path, name=f"k{i}", symbol=f"lutc_k{i}", emit=["cu"])
        objs.append(tmp_path / f"k{i}.o")
        nvcc = _run(["nvcc", "-w", "-c", "-arch=sm_80", tmp_path / f"k{i}.cu", "-o", objs[-1]])
        assert nvcc.returncode == 0, nvcc.stderr
    main = tmp_path / "main.cu"
    main.write_text("".join(f'#include "k{i}.h"\n' for i in range(len(CUDA_SPECS)))
                    + "int main() { return (int)((" + " + ".join(f"k{i}_workspace_bytes()" for i in range(len(CUDA_SPECS)))
                    + ") == 0); }\n")
    link = _run(["nvcc", "-arch=sm_80", main, *objs, "-o", tmp_path / "main"])
    assert link.returncode == 0, link.stderr   # TVM's helpers are inline: no duplicate symbols


def _cuda_default(schedule: str, arch: str):
    (shape, fmt), layout = CUDA_DEFAULTS[schedule]
    kernel = lutc.compile(shape, act_dtype="float16", target=f"cuda:{arch}", **fmt)
    assert (kernel.schedule, kernel.layout) == (schedule, layout)
    return kernel


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_90a", "sm_80"])
@pytest.mark.parametrize("schedule", list(CUDA_DEFAULTS))
def test_cuda_default_kernel_exports_in_its_layout(tmp_path, schedule, arch):
    if schedule == "cuda_wgmma" and arch != "sm_90a":
        pytest.skip("wgmma exists on sm_90a only (tests/test_targets.py checks sm_80 picks cuda_mma)")
    if schedule == "cuda_mma" and arch == "sm_90a":
        pytest.skip("cuda_mma is no default on sm_90a (cuda_stream and cuda_wgmma take every M there)")
    kernel = _cuda_default(schedule, arch)
    lay = layouts.get(kernel.layout)
    res = lutc.export(kernel, tmp_path, name="k", emit=["cu"])
    header = res.files["h"].read_text()
    planes = lay.shapes(kernel.spec)["planes"]
    assert planes.dtype == "int32"
    for text in [f'layout "{kernel.layout}" version {lay.version}', *lay.family_doc.strip().splitlines()[:2],
                 f"planes  int32_t [{', '.join(map(str, planes.shape))}]",
                 f'#define K_LAYOUT "{kernel.layout}"', "#define K_PLANES_BITS 32",
                 f"#define K_LAYOUT_CODE {FILE_LAYOUTS.index(kernel.layout)}",
                 f"-arch={arch} k.cu", "int k_launch("]:
        assert text in header, text
    manifest = json.loads(res.files["json"].read_text())
    assert manifest["schedule"] == schedule and manifest["layout"] == kernel.layout
    assert manifest["args"][1] == {"name": "planes", "shape": list(planes.shape), "dtype": "int32"}
    assert "main_kernel" in res.files["cu"].read_text()
    dyn = max(L["dyn_shared_bytes"] for L in manifest["launches"])
    assert ("cudaFuncAttributeMaxDynamicSharedMemorySize" in res.files["cu"].read_text()) == (dyn > 48 * 1024)
    nvcc = _run(["nvcc", "-w", "-c", f"-arch={arch}", res.files["cu"], "-o", tmp_path / "k.o"])
    assert nvcc.returncode == 0, nvcc.stderr[-3000:]
    # under its own symbol (a template writes its function itself: renamed after it is written)
    named = lutc.export(kernel, tmp_path / "named", name="k2", symbol="lutc_k2", emit=["cu"])
    cu = named.files["cu"].read_text()
    assert "lutc_k2_kernel" in cu and "main_kernel" not in cu


@needs_nvcc
def test_cuda_export_of_a_kernel_with_moved_registers(tmp_path):
    """A wgmma tile over the even register share is declared ``__launch_bounds__(threads, 1)``;
    the launcher still finds its kernel's signature and compiles."""
    spec = lutc.MPGemmSpec(200, 1000, 1536, wbits=2, group_size=128, act_dtype="bfloat16")
    kernel = lutc.build(spec, target="cuda:sm_90a", schedule="cuda_wgmma", knobs=dict(wg=2, wn=2, bm=64, ws=True))
    assert "__launch_bounds__(384, 1)" in kernel.source
    res = lutc.export(kernel, tmp_path, name="k", emit=["cu"])
    assert "int k_launch(" in res.files["h"].read_text() and "k_launch" in res.files["cu"].read_text()
    nvcc = _run(["nvcc", "-w", "-c", "-arch=sm_90a", res.files["cu"], "-o", tmp_path / "k.o"])
    assert nvcc.returncode == 0, nvcc.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available() or shutil.which("nvcc") is None,
                    reason="needs a CUDA GPU and nvcc")
@pytest.mark.parametrize("schedule,spec", [("cuda_generic", s) for s in CUDA_SPECS]
                         + [(name, None) for name in CUDA_DEFAULTS],
                         ids=lambda v: v if isinstance(v, str) else "default" if v is None
                         else f"{v.format}-w{v.wbits}-{v.act_dtype}")
def test_cuda_launcher_runs_on_the_gpu(schedule, spec, tmp_path):
    if spec is None:
        major, minor = torch.cuda.get_device_capability()
        if schedule == "cuda_wgmma" and (major, minor) != (9, 0):
            pytest.skip("wgmma exists on sm_90a only")
        arch = f"sm_{major}{minor}{'a' if major == 9 else ''}"
        if schedule == "cuda_mma" and major == 9:     # no default there: built by name
            (shape, fmt), _ = CUDA_DEFAULTS[schedule]
            kernel = lutc.compile(shape, act_dtype="float16", target=f"cuda:{arch}", schedule=schedule, **fmt)
        else:
            kernel = _cuda_default(schedule, arch)
        spec = kernel.spec
    else:
        kernel = lutc.build(spec, target="cuda", schedule=schedule)
    res = lutc.export(kernel, tmp_path, name="k", symbol="lutc_k", emit=["cu"])
    arch = kernel.target["arch"]
    build = _run(["nvcc", "-w", "-shared", "-Xcompiler", "-fPIC", f"-arch={arch}", res.files["cu"],
                  "-o", tmp_path / "k.so"])
    assert build.returncode == 0, build.stderr
    lib = ctypes.CDLL(str(tmp_path / "k.so"))
    lib.k_launch.argtypes = [ctypes.c_void_p] * 7
    lib.k_workspace_bytes.restype = ctypes.c_ulonglong
    x, qw = random_case(spec, seed=5)
    xd, wd = x.cuda(), kernel.pack(qw)                  # the weight in the kernel's layout
    out = torch.full((spec.M, spec.N), float("nan"), dtype=x.dtype, device="cuda")
    ws = torch.empty(max(1, lib.k_workspace_bytes()), dtype=torch.uint8, device="cuda")
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    rc = lib.k_launch(ptr(xd), ptr(wd.planes), ptr(wd.scales), ptr(wd.zeros), ptr(out), ptr(ws),
                      torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert rc == 0
    assert rel_error(out.cpu(), reference(x, qw)) < tolerance(spec)


# --- weight files ---
#: (layout, weight format): every family, padded rows (N = 40), 4-D scales (tiled bcq), int32 planes.
FILE_CASES = [("bitplane", dict(wbits=3, group_size=64, zero_point=True)),
              ("ptiles64", dict(wbits=2, group_size=64, zero_point=True)),
              ("tiles128", dict(wbits=3, group_size=32, format="bcq", scale_dtype="float32")),
              ("dot16", dict(format="ternary")),
              ("warp32", dict(wbits=2, group_size=128, format="bcq")),
              ("tc16", dict(wbits=4, group_size=128, zero_point=True))]


@pytest.mark.parametrize("layout,fmt", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_weight_file_round_trip_in_every_layout(tmp_path, layout, fmt):
    qw = lutc.quantize(torch.randn(40, 256), **fmt)
    packed = lutc.repack(qw, layout)
    path = save_weights(qw, tmp_path / "w.lutcw", layout=layout)      # repacked on the way
    back = load_weights(path)
    assert back.layout == layout and back.layout_version == (2 if layout == "tc16" else 1)
    assert len(back.tensors()) == len(packed.tensors())
    for a, b in zip(packed.tensors(), back.tensors()):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    assert torch.equal(back.dequantize(), qw.dequantize())
    assert back.state().keys() == packed.state().keys()
    # saving the packed weight itself writes the same file
    assert save_weights(packed, tmp_path / "p.lutcw").read_bytes() == path.read_bytes()
    meta = json.loads(Path(str(path) + ".json").read_text())
    assert meta["layout"] == layout and meta["file_version"] == 2
    assert meta["layout_code"] == FILE_LAYOUTS.index(layout)
    assert meta["layout_doc"] == layouts.get(layout).doc(qw.weight_spec())
    assert meta["tensors"]["planes"]["dtype"] == layouts.get(layout).planes_dtype
    assert all(t["offset"] % 64 == 0 for t in meta["tensors"].values())


def test_file_layouts_cover_every_layout_as_lutc_weights_h_spells_them():
    assert sorted(FILE_LAYOUTS) == sorted(layouts.LAYOUTS) and FILE_LAYOUTS[0] == "bitplane"
    assert len(HEADER_FIELDS) == 31
    header = (ROOT / "lutc" / "c" / "lutc_weights.h").read_text()
    codes = dict((m[0].lower(), int(m[1])) for m in re.findall(r"LUTC_LAYOUT_(\w+) = (\d+)", header))
    assert codes == {name: i for i, name in enumerate(FILE_LAYOUTS)}
    assert f"LUTC_NUM_LAYOUTS = {len(FILE_LAYOUTS)}" in header
    names = re.search(r"lutc_layout_names\[LUTC_NUM_LAYOUTS\] = \{([^}]*)\}", header).group(1)
    assert tuple(re.findall(r'"(\w+)"', names)) == FILE_LAYOUTS
    versions = re.search(r"lutc_layout_versions\[LUTC_NUM_LAYOUTS\] = \{([^}]*)\}", header).group(1)
    assert [int(v) for v in versions.split(",")] == [layouts.get(name).version for name in FILE_LAYOUTS]
    struct_fields = re.search(r"typedef struct \{(.*?)\} lutc_weights_header;", header, re.S).group(1)
    declared = []
    for decl in re.sub(r"/\*.*?\*/", "", struct_fields, flags=re.S).split(";"):
        for name in decl.replace("int64_t", "").split(","):
            name = name.strip()
            if name:
                m = re.fullmatch(r"(\w+)\[(\d+)\]", name)
                declared += [f"{m[1]}[{i}]" for i in range(int(m[2]))] if m else [name]
    assert declared[:-1] == list(HEADER_FIELDS[:-1]) and declared[-1] == "reserved[0]"


def _version_1(path: Path) -> Path:
    """``path`` (a bitplane file of version 2) as version 1 wrote it: the v2 fields were zero."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<q", data, 8, 1)
    first_v2 = HEADER_FIELDS.index("scales_shape[3]")
    data[8 + 8 * first_v2:256] = bytes(256 - 8 - 8 * first_v2)
    out = path.with_name("v1.lutcw")
    out.write_bytes(bytes(data))
    return out


def test_weight_file_of_version_1_is_read(tmp_path):
    qw = lutc.quantize(torch.randn(40, 256), wbits=3, group_size=64, zero_point=True)
    v1 = _version_1(save_weights(qw, tmp_path / "w.lutcw"))
    back = load_weights(v1)
    assert back.layout == "bitplane" and torch.equal(back.planes, qw.planes)
    assert torch.equal(back.dequantize(), qw.dequantize())


def _field(path: Path, name: str, value: int) -> Path:
    data = bytearray(path.read_bytes())
    struct.pack_into("<q", data, 8 + 8 * HEADER_FIELDS.index(name), value)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("field,value,message", [
    ("file_version", 3, r"field file_version is 3; this lutc reads weight files of versions 1, 2"),
    ("layout", 99, r"field layout is 99; layout codes are 0\.\.10"),
    ("layout_version", 2, r"field layout_version is 2; layout 'ptiles64' v2: this lutc reads v1"),
    ("format", 7, r"field format is 7; format codes are 0\.\.2"),
    ("wbits", 9, r"field wbits is 9; weights have 1-4 bits"),
    ("zero_point", 5, r"field zero_point is 5"),
    ("scale_bits", 8, r"field scale_bits is 8; scales are 16 or 32-bit floats"),
    ("group_size", 100, r"fields N, K, wbits, format, group_size, zero_point describe no weight .*group_size"),
    ("K", 250, r"describe no weight lutc packs: K must be a multiple of 8"),
    ("wbits", 3, r"layout 'ptiles64' cannot hold this weight: .*even number"),
    ("groups", 3, r"field groups is 3; a uniform w2 weight of K=256, group_size=64 has 4"),
    ("planes", 4, r"field planes is 4"),
    ("planes_bits", 32, r"field planes_bits is 32; layout 'ptiles64' stores uint8 planes \(8\)"),
    ("planes_ndim", 3, r"fields planes_ndim 3, planes_shape \[1, 64, 1\]; layout 'ptiles64' of this weight "
                       r"stores planes \[1, 64, 1, 64\]"),
    ("scales_shape[2]", 32, r"fields scales_ndim 3, scales_shape \[1, 4, 32\]; .* stores scales \[1, 4, 64\]"),
    ("N", 80, r"fields planes_ndim 4, planes_shape \[1, 64, 1, 64\]; .* stores planes \[2, 64, 1, 64\]"),
    ("scales_bytes", 10, r"field scales_bytes is 10; scales float16 \[1, 4, 64\] take 512 bytes"),
    ("zeros_offset", 3, r"field zeros_offset is 3; tensors start after the 256-byte header"),
    ("zeros_offset", 1 << 40, r"file is truncated: zeros need bytes 1099511627776\.\.\d+, the file has \d+ bytes"),
    ("zero_point", 0, r"fields zeros_offset, zeros_bytes are \d+, 512; a weight without zero points"),
])
def test_damaged_weight_files_name_the_file_and_field(tmp_path, field, value, message):
    qw = lutc.quantize(torch.randn(40, 256), wbits=2, group_size=64, zero_point=True)
    path = _field(save_weights(qw, tmp_path / "w.lutcw", layout="ptiles64"), field, value)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": .*" + message):
        load_weights(path)


def test_truncated_and_foreign_weight_files(tmp_path):
    qw = lutc.quantize(torch.randn(40, 256), wbits=2, group_size=64, zero_point=True)
    path = save_weights(qw, tmp_path / "w.lutcw", layout="tiles64")
    data = path.read_bytes()
    meta = json.loads(Path(str(path) + ".json").read_text())["tensors"]
    end = meta["zeros"]["offset"] + meta["zeros"]["bytes"]
    assert len(data) == end
    path.write_bytes(data[:-7])
    with pytest.raises(ValueError, match=re.escape(f"{path}: file is truncated: zeros need bytes "
                                                   f"{meta['zeros']['offset']}..{end}, the file has {end - 7} bytes")):
        load_weights(path)
    path.write_bytes(data[:100])
    with pytest.raises(ValueError, match=r"file is truncated: the header needs bytes 0\.\.256, the file has 100"):
        load_weights(path)
    (tmp_path / "junk").write_bytes(b"nope, not weights" * 20)
    with pytest.raises(ValueError, match=r"junk is not a lutc weight file: it does not start with b'LUTCWGT"):
        load_weights(tmp_path / "junk")


def test_weight_file_construction_checks_tensors_against_the_layout():
    qw = lutc.quantize(torch.randn(40, 256), wbits=2, group_size=64)
    t = lutc.repack(qw, "ptiles64")
    with pytest.raises(ValueError, match=r"planes is torch.uint8 \(2, 64, 1, 64\); layout 'ptiles64'"):
        lutc.PackedWeights(**{**t.state(), "planes": torch.zeros(2, 64, 1, 64, dtype=torch.uint8)})


@needs_gcc
def test_lutc_weights_h_reads_every_layout_and_version_1(tmp_path):
    """The C reader: layout name, planes shape and bits, and bytes equal to lutc's, for v2 files
    of several layouts and a v1 file; damaged files fail with the reason."""
    reader = tmp_path / "reader.c"
    reader.write_text(r'''#include "lutc_weights.h"
int main(int argc, char** argv) {
  for (int i = 1; i < argc; i++) {
    lutc_weights w;
    if (lutc_weights_load(argv[i], &w) != 0) { printf("error %s\n", w.error); continue; }
    unsigned long sum = 0;
    for (int64_t b = 0; b < w.h.planes_bytes; b++) sum = sum * 31 + ((unsigned char*)w.planes)[b];
    printf("%s %lld %lld", lutc_layout_name(w.h.layout), (long long)w.h.planes_bits, (long long)w.h.planes_ndim);
    for (int d = 0; d < w.h.planes_ndim; d++) printf(" %lld", (long long)w.h.planes_shape[d]);
    printf(" %lu %d\n", sum, w.zeros != NULL);
    lutc_weights_free(&w);
  }
  return 0;
}
''')
    exe = tmp_path / "reader"
    build = _run(["gcc", "-O1", "-Wall", "-I", ROOT / "lutc" / "c", reader, "-o", exe])
    assert build.returncode == 0, build.stderr
    qw = lutc.quantize(torch.randn(40, 256), wbits=2, group_size=128, zero_point=True)
    files, expected = [], []
    for layout in ("bitplane", "ptiles64", "dot16", "warp32", "tc16"):
        path = save_weights(qw, tmp_path / f"{layout}.lutcw", layout=layout)
        files.append(path)
        planes = load_weights(path).planes
        raw = planes.contiguous().view(torch.uint8).numpy().tobytes()
        checksum = 0
        for byte in raw:
            checksum = (checksum * 31 + byte) % (1 << 64)
        expected.append(f"{layout} {planes.element_size() * 8} {planes.dim()} "
                        f"{' '.join(map(str, planes.shape))} {checksum} 1")
    files.append(_version_1(files[0]))
    expected.append(expected[0])
    truncated = tmp_path / "cut.lutcw"
    truncated.write_bytes(files[1].read_bytes()[:-5])
    bad_layout = tmp_path / "bad.lutcw"
    bad_layout.write_bytes(files[1].read_bytes())
    _field(bad_layout, "layout", 42)
    old_tc16 = tmp_path / "old_tc16.lutcw"        # tc16 v1 held another k order
    old_tc16.write_bytes(files[4].read_bytes())
    _field(old_tc16, "layout_version", 1)
    run = _run([exe, *files, truncated, bad_layout, old_tc16])
    lines = run.stdout.splitlines()
    assert lines[:len(expected)] == expected
    assert re.fullmatch(r"error .*cut\.lutcw: file is truncated or damaged: zeros need bytes \d+\.\.\d+, "
                        r"the file has \d+ bytes", lines[-3])
    assert re.fullmatch(r"error .*bad\.lutcw: header field layout is out of range \(file version 2\)", lines[-2])
    assert re.fullmatch(r"error .*old_tc16\.lutcw: header field layout_version is out of range \(file version 2\)",
                        lines[-1])


# --- the command line ---
def test_cli_export_in_process(tmp_path, capsys):
    from lutc.cli import main
    w = torch.randn(64, 256)
    torch.save(w, tmp_path / "w.pt")
    rc = main(["export", "--shape", "2,64,256", "--wbits", "3", "--group-size", "64", "--zero-point",
               "--table-dtype", "float32", "-o", str(tmp_path / "out"), "--name", "cli", "--emit", "so,c",
               "--weights", str(tmp_path / "w.pt"), "--knob", "n_block=8"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "cpu_generic{'n_block': 8}" in printed and "cli.lutcw" in printed
    assert sorted(p.name for p in (tmp_path / "out").glob("cli.*")) == [
        "cli.c", "cli.h", "cli.json", "cli.lutcw", "cli.lutcw.json", "cli.so"]
    qw = load_weights(tmp_path / "out" / "cli.lutcw")
    assert torch.equal(qw.planes, lutc.quantize(w, wbits=3, group_size=64, zero_point=True).planes)
    assert main(["export", "--shape", "2,64,250", "-o", str(tmp_path / "bad")]) == 2
    assert "K must be a multiple of 8" in capsys.readouterr().err
    assert main(["export", "--shape", "2,64,256", "--group-size", "64", "-o", str(tmp_path / "bad"),
                 "--weights", str(tmp_path / "w.pt"), "--wbits", "2", "--knob", "oops"]) == 2
    for option, value in (("--wbits", "5"), ("--group-size", "100")):   # choices from lutc.spec
        with pytest.raises(SystemExit):
            main(["export", "--shape", "2,64,256", option, value, "-o", str(tmp_path / "bad")])
        assert f"argument {option}: invalid choice: {value}" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("args,fields", [
    ([], dict(wbits=2, group_size=64)),
    (["--wbits", "3", "--zero-point"], dict(wbits=3, group_size=64, zero_point=True)),
    (["--target", "arm", "--emit", "o"], dict(wbits=2, group_size=64, target="arm")),
], ids=["default", "w3-zp", "arm"])
def test_cli_export_defaults_to_the_kernel_lutc_compile_picks(tmp_path, capsys, args, fields):
    from lutc.cli import main
    with warnings.catch_warnings(record=True):   # SIMD kernels: 'c' skipped (printed below too)
        warnings.simplefilter("always")
        assert main(["export", "--shape", "1,96,256", "--group-size", "64", "-o", str(tmp_path),
                     "--name", "k", *args]) == 0
    manifest = json.loads((tmp_path / "k.json").read_text())
    kernel = lutc.compile((1, 96, 256), **fields)
    assert (manifest["schedule"], manifest["layout"]) == (kernel.schedule, kernel.layout)
    assert ("skipped: the" in capsys.readouterr().out) == (kernel.layout != "bitplane" and "--emit" not in args)
    assert manifest["spec"] == kernel.spec.key() and manifest["knobs"] == kernel.knobs
    assert f'#define K_LAYOUT "{kernel.layout}"' in (tmp_path / "k.h").read_text()


def test_lutc_console_script(tmp_path):
    run = _run([BIN / "lutc", "export", "--shape", "1,64,256", "--group-size", "64", "-o", tmp_path,
                "--name", "k", "--emit", "o"])
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "k.o").exists() and (tmp_path / "k.h").exists()


def test_export_of_a_kernel_loaded_from_the_disk_cache(tmp_path):
    """``lutc.compile`` caches kernels on disk; one loaded back is a shared library, which TVM
    cannot write out as an object file: the exporter compiles the schedule again, same layout."""
    import tvm_ffi
    from lutc.cache import KernelCache
    cache = KernelCache(str(tmp_path / "cache"))
    lutc.compile((1, 128, 256), wbits=2, group_size=64, cache=cache)
    kernel = lutc.compile((1, 128, 256), wbits=2, group_size=64, cache=cache)
    assert kernel.from_cache
    with pytest.warns(UserWarning, match="skipped 'c'") if kernel.layout != "bitplane" else _nothing():
        res = lutc.export(kernel, tmp_path / "out")
    assert {"o", "so", "h"} <= set(res.files) and res.files["o"].stat().st_size > 0
    assert res.manifest["layout"] == kernel.layout
    x, qw = random_case(kernel.spec, seed=1)
    out = torch.full((1, 128), float("nan"))
    tvm_ffi.load_module(str(res.files["so"]))["main"](x, *kernel.pack(qw).tensors(), out)
    assert rel_error(out, reference(x, qw)) < tolerance(kernel.spec)
