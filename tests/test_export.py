"""Export round trips: the C host (LLVM object and C source), the .so through tvm-ffi from a
Python process without lutc or TVM and from C++, CUDA sources through nvcc, weight files, the CLI."""
import ctypes
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lutc
from lutc.exporter import load_weights, save_weights
from lutc.testing import random_case, reference, rel_error

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "c_host"
BIN = Path(sys.executable).parent
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
needs_nvcc = pytest.mark.skipif(
    shutil.which("nvcc") is None and not os.environ.get("CI"),
    reason="nvcc not installed (CI has it, and there this test fails instead of skipping)")


def _run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)


def _load_prepare():
    spec = importlib.util.spec_from_file_location("c_host_prepare", EXAMPLE / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prepare


CASES = {  # zero points (5 arguments), and BCQ (3-D scales) with 3 rows
    "uniform-w3-zp": dict(shape=(3, 200, 512), wbits=3, group_size=64, zero_point=True),
    "bcq-w2": dict(shape=(1, 64, 256), wbits=2, group_size=32, format="bcq"),
}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    _load_prepare()(out, seed=3, **CASES[request.param])
    return out


@needs_gcc
@pytest.mark.parametrize("kind", ["o", "c"])
def test_c_host_runs_the_exported_kernel(exported, kind):
    build = _run(["bash", EXAMPLE / "build.sh", exported, kind])
    assert build.returncode == 0, build.stderr
    exe = exported / ("c_host" if kind == "o" else "c_host_src")
    run = _run([exe, exported])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "max relative error" in run.stdout and ": OK;" in run.stdout
    # The same program exits 1 when the result misses the bound (here an impossible one).
    strict = _run([exe, exported, "1e-30"])
    assert strict.returncode == 1 and "MISMATCH" in strict.stdout


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
    manifest = json.loads((exported / "kernel.json").read_text())
    fn = tvm_ffi.load_module(str(exported / "kernel.so"))["main"]
    qw = load_weights(exported / "weights.lutcw")
    M, K = manifest["args"][0]["shape"]
    x = torch.from_numpy(np.fromfile(exported / "x.bin", np.float32).reshape(M, K))
    out = torch.full((M, qw.N), float("nan"))
    fn(x, *qw.tensors(), out)
    assert rel_error(out, reference(x, qw)) < 2e-5


@needs_gcc
def test_kernels_with_own_symbols_link_into_one_program(tmp_path):
    spec = lutc.MPGemmSpec(2, 64, 256, wbits=2, group_size=64)
    other = spec.with_(wbits=4, zero_point=True)
    for s, name in ((spec, "ka"), (other, "kb")):
        lutc.export(lutc.build(s), tmp_path, name=name, symbol=f"lutc_{name}")
    host = tmp_path / "two.c"
    host.write_text('#include "ka.h"\n#include "kb.h"\n#include <stdio.h>\n'
                    "int main(void) { /* both entry points resolve; the calls fail their checks */\n"
                    "  printf(\"%d %d\\n\", ka_run(0, 0, 0, 0, 0), kb_run(0, 0, 0, 0, 0)); return 0; }\n")
    flags = ["-O1", "-I", tmp_path, "-I", tmp_path / "include", "-DLUTC_STANDALONE", "-pthread"]
    for kind in ("o", "c"):
        objs = [tmp_path / f"ka.{kind}", tmp_path / f"kb.{kind}", tmp_path / "lutc_backend.c"]
        build = _run(["gcc", *flags, host, *objs, "-lm", "-o", tmp_path / f"two_{kind}"])
        assert build.returncode == 0, build.stderr
        run = _run([tmp_path / f"two_{kind}"])
        assert run.returncode == 0 and run.stdout.split() == ["-1", "-1"], run.stdout + run.stderr


def test_simd_layout_kernels_are_refused(tmp_path):
    kernel = lutc.compile((1, 64, 256), wbits=2, group_size=64, table_dtype="int8")
    assert kernel.layout != "bitplane"
    with pytest.raises(ValueError, match="reads 'p?tiles"):
        lutc.export(kernel, tmp_path, name="simd")
    assert not any(tmp_path.iterdir())          # nothing half-written


def test_header_and_manifest_document_the_kernel(tmp_path):
    kernel = lutc.compile((4, 96, 512), wbits=3, group_size=128, zero_point=True, act_dtype="float16",
                          table_dtype="float32")
    res = lutc.export(kernel, tmp_path, name="doc")
    header = res.files["h"].read_text()
    for text in ('layout "bitplane" version 1', "__tvm_ffi_main(void* self",
                 "__TVMBackendParallelLaunch", "x  uint16_t (IEEE half bits) [4, 512]",
                 "planes  uint8_t [3, 96, 64]", "zeros  uint16_t (IEEE half bits) [96, 4]",
                 "#define DOC_PLANES_BYTES 18432", "static inline int doc_run("):
        assert text in header, text
    manifest = json.loads(res.files["json"].read_text())
    assert manifest["entry"] == "__tvm_ffi_main" and manifest["layout_version"] == lutc.LAYOUT_VERSION
    assert [a["name"] for a in manifest["args"]] == ["x", "planes", "scales", "zeros", "out"]
    assert manifest["files"] == {"o": "doc.o", "so": "doc.so", "c": "doc.c", "h": "doc.h"}
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


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None,
                    reason="needs aarch64-linux-gnu-gcc and qemu-aarch64")
@pytest.mark.parametrize("kind", ["o", "c"])
def test_arm_export_runs_under_qemu(tmp_path, kind):
    _load_prepare()(tmp_path, shape=(2, 128, 512), wbits=2, group_size=128, zero_point=True,
                    target="arm", emit=["o", "c"])
    env = dict(os.environ, CC="aarch64-linux-gnu-gcc", CFLAGS="-fno-tree-vectorize", LDFLAGS="-static")
    build = _run(["bash", EXAMPLE / "build.sh", tmp_path, kind], env=env)
    assert build.returncode == 0, build.stderr
    run = _run(["qemu-aarch64", tmp_path / ("c_host" if kind == "o" else "c_host_src"), tmp_path])
    assert run.returncode == 0 and ": OK;" in run.stdout, run.stdout + run.stderr


# --- CUDA sources (compiled with nvcc; run only on a GPU) ---
CUDA_SPECS = [lutc.MPGemmSpec(3, 64, 256, wbits=2, group_size=64),
              lutc.MPGemmSpec(2, 96, 512, wbits=4, group_size=128, zero_point=True,
                              act_dtype="float16", table_dtype="int8"),
              lutc.MPGemmSpec(1, 64, 512, wbits=3, format="bcq", group_size=32, act_dtype="bfloat16")]


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


@pytest.mark.skipif(not torch.cuda.is_available() or shutil.which("nvcc") is None,
                    reason="needs a CUDA GPU and nvcc")
@pytest.mark.parametrize("spec", CUDA_SPECS, ids=lambda s: f"{s.format}-w{s.wbits}-{s.act_dtype}")
def test_cuda_launcher_runs_on_the_gpu(spec, tmp_path):
    kernel = lutc.build(spec, target="cuda", schedule="cuda_generic")
    res = lutc.export(kernel, tmp_path, name="k", symbol="lutc_k", emit=["cu"])
    arch = kernel.target["arch"]
    build = _run(["nvcc", "-w", "-shared", "-Xcompiler", "-fPIC", f"-arch={arch}", res.files["cu"],
                  "-o", tmp_path / "k.so"])
    assert build.returncode == 0, build.stderr
    lib = ctypes.CDLL(str(tmp_path / "k.so"))
    lib.k_launch.argtypes = [ctypes.c_void_p] * 7
    lib.k_workspace_bytes.restype = ctypes.c_ulonglong
    x, qw = random_case(spec, seed=5)
    xd, wd = x.cuda(), qw.to("cuda")
    out = torch.full((spec.M, spec.N), float("nan"), dtype=x.dtype, device="cuda")
    ws = torch.empty(max(1, lib.k_workspace_bytes()), dtype=torch.uint8, device="cuda")
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    rc = lib.k_launch(ptr(xd), ptr(wd.planes), ptr(wd.scales), ptr(wd.zeros), ptr(out), ptr(ws),
                      torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert rc == 0
    tol = {"float32": 2e-5, "float16": 1.5e-3, "bfloat16": 1e-2}[spec.act_dtype]
    tol = 3e-2 if spec.table_dtype == "int8" else tol
    assert rel_error(out.cpu(), reference(x, qw)) < tol


# --- weight files ---
@pytest.mark.parametrize("fmt", [dict(wbits=3, group_size=64, zero_point=True),
                                 dict(wbits=2, group_size=32, format="bcq", scale_dtype="float32"),
                                 dict(format="ternary")])
def test_weight_file_round_trip(tmp_path, fmt):
    qw = lutc.quantize(torch.randn(40, 256), **fmt)
    path = save_weights(qw, tmp_path / "w.lutcw")
    back = load_weights(path)
    for a, b in zip(qw.tensors(), back.tensors()):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert back.state().keys() == qw.state().keys()
    meta = json.loads(Path(str(path) + ".json").read_text())
    assert meta["layout"] == "bitplane" and meta["layout_version"] == 1
    assert meta["tensors"]["planes"]["offset"] % 64 == 0


def test_weight_file_of_a_kernel_layout_holds_bitplane(tmp_path):
    qw = lutc.quantize(torch.randn(40, 256), wbits=2, group_size=64)
    back = load_weights(save_weights(lutc.repack(qw, "tiles64"), tmp_path / "w.lutcw"))
    assert back.layout == "bitplane" and torch.equal(back.dequantize(), qw.dequantize())


def test_weight_file_refuses_other_versions(tmp_path):
    path = save_weights(lutc.quantize(torch.randn(16, 128), wbits=2, group_size=64), tmp_path / "w.lutcw")
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack("<q", 2)          # layout_version
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"layout 'bitplane' v2; this lutc reads file v1, layout v1"):
        load_weights(path)
    (tmp_path / "junk").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a lutc weight file"):
        load_weights(tmp_path / "junk")


# --- the command line ---
def test_cli_export_in_process(tmp_path, capsys):
    from lutc.cli import main
    w = torch.randn(64, 256)
    torch.save(w, tmp_path / "w.pt")
    rc = main(["export", "--shape", "2,64,256", "--wbits", "3", "--group-size", "64", "--zero-point",
               "-o", str(tmp_path / "out"), "--name", "cli", "--emit", "so,c",
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


def test_lutc_console_script(tmp_path):
    run = _run([BIN / "lutc", "export", "--shape", "1,64,256", "--group-size", "64", "-o", tmp_path,
                "--name", "k", "--emit", "o"])
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "k.o").exists() and (tmp_path / "k.h").exists()


def test_export_of_a_kernel_loaded_from_the_disk_cache(tmp_path):
    """``lutc.compile`` caches kernels on disk; one loaded back is a shared library, which TVM
    cannot write out as an object file: the exporter compiles the schedule again."""
    from lutc.cache import KernelCache
    cache = KernelCache(str(tmp_path / "cache"))
    lutc.compile((1, 128, 256), wbits=2, group_size=64, table_dtype="float32", cache=cache)
    kernel = lutc.compile((1, 128, 256), wbits=2, group_size=64, table_dtype="float32", cache=cache)
    assert kernel.from_cache
    res = lutc.export(kernel, tmp_path / "out")
    assert {"o", "so", "h"} <= set(res.files) and res.files["o"].stat().st_size > 0
