/* c_host: run a lutc-exported CPU kernel from plain C on weights packed by lutc, and check it.
 *
 *   python examples/c_host/prepare.py OUT        # export kernel + write weights, x, reference
 *   bash examples/c_host/build.sh OUT [o|c]      # gcc: this file + OUT/kernel.o (or kernel.c)
 *   OUT/c_host OUT                               # prints the error, exits 1 on a mismatch
 *
 * Reads OUT/weights.lutcw (lutc_weights.h), OUT/x.bin (float32 [M, K]) and OUT/ref.bin (float32
 * [M, N], lutc's float64 reference rounded), runs kernel_run() from the exported kernel.h and
 * compares: max |y - ref| / max |ref| must stay below the bound (argv[2], default 1e-4).
 * No TVM, no tvm-ffi library, no Python: the kernel object, lutc_backend.c and libc.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernel.h"
#include "lutc_weights.h"

const char* lutc_last_error(void); /* lutc_backend.c, built with -DLUTC_STANDALONE */

static void* read_file(const char* dir, const char* name, size_t nbytes) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  void* p = aligned_alloc(64, (nbytes + 63) / 64 * 64); /* the kernel needs 64-byte alignment */
  FILE* f = fopen(path, "rb");
  if (!p || !f || fread(p, 1, nbytes, f) != nbytes || fgetc(f) != EOF) {
    fprintf(stderr, "c_host: cannot read %zu bytes from %s\n", nbytes, path);
    exit(2);
  }
  fclose(f);
  return p;
}

static int check_weights(const lutc_weights* w) {
  const lutc_weights_header* h = &w->h;
  int scale_bits = strcmp(KERNEL_SCALE_DTYPE, "float16") == 0 ? 16 : 32;
  struct { const char* name; long long file, kernel; } f[] = {
      {"N", h->N, KERNEL_N}, {"K", h->K, KERNEL_K}, {"wbits", h->wbits, KERNEL_WBITS},
      {"format", h->format, KERNEL_FORMAT_CODE}, {"group_size", h->group_size, KERNEL_GROUP_SIZE},
      {"zero_point", h->zero_point, KERNEL_ZERO_POINT}, {"scale bits", h->scale_bits, scale_bits},
      {"planes bytes", h->planes_bytes, KERNEL_PLANES_BYTES},
      {"scales bytes", h->scales_bytes, KERNEL_SCALES_BYTES},
      {"zeros bytes", h->zeros_bytes, KERNEL_ZEROS_BYTES}};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
    if (f[i].file != f[i].kernel) {
      fprintf(stderr, "c_host: weight file has %s=%lld, the kernel was compiled for %lld\n",
              f[i].name, f[i].file, f[i].kernel);
      return -1;
    }
  return 0;
}

int main(int argc, char** argv) {
  const char* dir = argc > 1 ? argv[1] : ".";
  double bound = argc > 2 ? atof(argv[2]) : 1e-4;
  if (strcmp(KERNEL_ACT_DTYPE, "float32") != 0) {
    fprintf(stderr, "c_host reads float32 activations; this kernel takes %s\n", KERNEL_ACT_DTYPE);
    return 2;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/weights.lutcw", dir);
  lutc_weights w;
  if (lutc_weights_load(path, &w) != 0) {
    fprintf(stderr, "c_host: %s\n", w.error);
    return 2;
  }
  if (check_weights(&w) != 0) return 2;
  float* x = (float*)read_file(dir, "x.bin", KERNEL_X_BYTES);
  float* ref = (float*)read_file(dir, "ref.bin", KERNEL_OUT_BYTES);
  size_t n = KERNEL_OUT_BYTES / sizeof(float);
  float* out = (float*)aligned_alloc(64, (KERNEL_OUT_BYTES + 63) / 64 * 64);
  for (size_t i = 0; i < n; i++) out[i] = NAN; /* poison: an unwritten output fails the check */

  if (kernel_run(x, w.planes, w.scales, w.zeros, out) != 0) {
    fprintf(stderr, "c_host: kernel failed: %s\n", lutc_last_error());
    return 1;
  }
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)out[i] - ref[i]);
    if (!(d <= max_diff)) max_diff = d; /* NaN propagates */
    if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
  }
  double err = max_ref > 0 ? max_diff / max_ref : max_diff;

  struct timespec t0, t1;
  int iters = 20;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < iters; i++) kernel_run(x, w.planes, w.scales, w.zeros, out);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double us = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / iters;

  int ok = err <= bound; /* false for NaN */
  printf("c_host: %s w%d, M=%d N=%d K=%d: max relative error %.3e (bound %.0e): %s; %.1f us/call\n",
         KERNEL_FORMAT, KERNEL_WBITS, KERNEL_M, KERNEL_N, KERNEL_K, err, bound,
         ok ? "OK" : "MISMATCH", us);
  lutc_weights_free(&w);
  free(x); free(ref); free(out);
  return ok ? 0 : 1;
}
