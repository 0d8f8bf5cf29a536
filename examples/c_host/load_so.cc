// cxx_host: load the exported kernel.so through tvm-ffi from C++ (no lutc, no libtvm_runtime:
// the .so carries lutc_backend.c), run it on lutc-packed weights and check it like c_host.
//   bash examples/c_host/build.sh OUT cxx && OUT/cxx_host OUT
#include <tvm/ffi/container/tensor.h>  // passing DLTensor* to ffi::Function
#include <tvm/ffi/extra/module.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernel.h"  // sizes and shapes (its kernel_run() is unused here: no object is linked)
#include "lutc_weights.h"

namespace ffi = tvm::ffi;

static void* read_file(const std::string& path, size_t nbytes) {
  void* p = std::aligned_alloc(64, (nbytes + 63) / 64 * 64);  // kernels need 64-byte alignment
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!p || !f || std::fread(p, 1, nbytes, f) != nbytes) {
    std::fprintf(stderr, "cxx_host: cannot read %s\n", path.c_str());
    std::exit(2);
  }
  std::fclose(f);
  return p;
}

static DLTensor tensor(void* data, std::vector<int64_t>& shape, uint8_t code, uint8_t bits) {
  DLTensor t{};
  t.data = data;
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = static_cast<int32_t>(shape.size());
  t.dtype = DLDataType{code, bits, 1};
  t.shape = shape.data();
  return t;
}

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : ".";
  double bound = argc > 2 ? std::atof(argv[2]) : KERNEL_TOLERANCE; /* lutc.testing.tolerance, from kernel.h */
  lutc_weights w;
  if (lutc_weights_load((dir + "/weights.lutcw").c_str(), &w) != 0) {
    std::fprintf(stderr, "cxx_host: %s\n", w.error);
    return 2;
  }
  if (w.h.layout != KERNEL_LAYOUT_CODE) {  // the file must hold the layout the kernel reads
    std::fprintf(stderr, "cxx_host: weights are in layout %s, the kernel reads %s\n",
                 lutc_layout_name(w.h.layout), KERNEL_LAYOUT);
    return 2;
  }
  ffi::Module mod = ffi::Module::LoadFromFile(dir + "/kernel.so");
  ffi::Function f = mod->GetFunction("main").value();

  // Shapes from kernel.h (the layout's padded shapes); the kernel checks them against its own.
  std::vector<int64_t> xs KERNEL_X_SHAPE, ps KERNEL_PLANES_SHAPE, ss KERNEL_SCALES_SHAPE,
      os KERNEL_OUT_SHAPE;
  uint8_t sbits = static_cast<uint8_t>(w.h.scale_bits);
  uint8_t pcode = KERNEL_PLANES_BITS == 8 ? kDLUInt : kDLInt;
  float* x = static_cast<float*>(read_file(dir + "/x.bin", KERNEL_X_BYTES));
  size_t n = KERNEL_OUT_BYTES / sizeof(float);
  double* ref = static_cast<double*>(read_file(dir + "/ref.bin", n * sizeof(double)));
  float* out = static_cast<float*>(std::aligned_alloc(64, (KERNEL_OUT_BYTES + 63) / 64 * 64));
  for (size_t i = 0; i < n; i++) out[i] = NAN;

  DLTensor tx = tensor(x, xs, kDLFloat, 32), tp = tensor(w.planes, ps, pcode, KERNEL_PLANES_BITS),
           ts = tensor(w.scales, ss, kDLFloat, sbits), tz = tensor(w.zeros, ss, kDLFloat, sbits),
           to = tensor(out, os, kDLFloat, 32);
#if KERNEL_ZERO_POINT
  f(&tx, &tp, &ts, &tz, &to);
#else
  (void)tz;
  f(&tx, &tp, &ts, &to);
#endif
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < n; i++) {
    double d = std::fabs(double(out[i]) - ref[i]);
    if (!(d <= max_diff)) max_diff = d;
    max_ref = std::fmax(max_ref, std::fabs(ref[i]));
  }
  double err = max_ref > 0 ? max_diff / max_ref : max_diff;
  bool ok = err <= bound;
  std::printf("cxx_host (tvm-ffi): M=%d N=%d K=%d: max relative error %.3e (bound %.0e): %s\n",
              KERNEL_M, KERNEL_N, KERNEL_K, err, bound, ok ? "OK" : "MISMATCH");
  lutc_weights_free(&w);
  return ok ? 0 : 1;
}
