/* c_host: run a lutc-exported CPU kernel from plain C on weights packed by lutc, check it, time it.
 *
 *   python examples/c_host/prepare.py OUT        # export the default kernel + weights, x, reference
 *   bash examples/c_host/build.sh OUT [o|c]      # gcc: this file + OUT/kernel.o (or kernel.c)
 *   OUT/c_host OUT [--copies N] [--calls C] [--bound B]
 *
 * Reads OUT/weights.lutcw (lutc_weights.h; saved in the kernel's own layout, kernel.h's
 * KERNEL_LAYOUT, which it must match), OUT/x.bin (float32 [M, K]) and OUT/ref.bin (float64
 * [M, N], lutc's reference x @ W^T of the dequantized weight), runs kernel_run() from the
 * exported kernel.h once on a NaN-poisoned output and compares: max |y - ref| / max |ref| must
 * stay below the bound the export wrote into kernel.h (KERNEL_TOLERANCE, lutc.testing.tolerance of the
 * kernel's spec; --bound may only tighten it). Then times --calls calls (default 50) and prints the median per
 * call, the weights rotating through --copies copies (default 1: cache-hot for small weights;
 * give enough copies to exceed the last-level cache to time a decode step, which reads each
 * layer's weights once). Exits 1 on a mismatch, 2 on bad inputs.
 * No TVM, no tvm-ffi library, no Python: the kernel object, lutc_backend.c and libc.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernel.h"
#include "lutc_weights.h"

#include "lutc_backend.h" /* lutc_last_error(): lutc_backend.c, built with -DLUTC_STANDALONE */

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

static int same_shape(const int64_t* file, int64_t ndim, const int64_t* kernel, int64_t kernel_ndim) {
  if (ndim != kernel_ndim) return 0;
  for (int64_t i = 0; i < ndim; i++)
    if (file[i] != kernel[i]) return 0;
  return 1;
}

/* The weight file must hold what the kernel reads: same weight format, same layout, same shapes. */
static int check_weights(const lutc_weights* w) {
  const lutc_weights_header* h = &w->h;
  if (h->layout != KERNEL_LAYOUT_CODE) {
    fprintf(stderr, "c_host: weight file is in layout %s, the kernel reads %s: save it with "
            "lutc.save_weights(qw, path, layout=\"%s\")\n", lutc_layout_name(h->layout),
            KERNEL_LAYOUT, KERNEL_LAYOUT);
    return -1;
  }
  int scale_bits = strcmp(KERNEL_SCALE_DTYPE, "float16") == 0 ? 16 : 32;
  struct { const char* name; long long file, kernel; } f[] = {
      {"N", h->N, KERNEL_N}, {"K", h->K, KERNEL_K}, {"wbits", h->wbits, KERNEL_WBITS},
      {"format", h->format, KERNEL_FORMAT_CODE}, {"group_size", h->group_size, KERNEL_GROUP_SIZE},
      {"zero_point", h->zero_point, KERNEL_ZERO_POINT}, {"scale bits", h->scale_bits, scale_bits},
      {"layout version", h->layout_version, KERNEL_LAYOUT_VERSION},
      {"planes bits", h->planes_bits, KERNEL_PLANES_BITS},
      {"planes bytes", h->planes_bytes, KERNEL_PLANES_BYTES},
      {"scales bytes", h->scales_bytes, KERNEL_SCALES_BYTES},
      {"zeros bytes", h->zeros_bytes, KERNEL_ZEROS_BYTES}};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
    if (f[i].file != f[i].kernel) {
      fprintf(stderr, "c_host: weight file has %s=%lld, the kernel was compiled for %lld\n",
              f[i].name, f[i].file, f[i].kernel);
      return -1;
    }
  const int64_t planes[] = KERNEL_PLANES_SHAPE, scales[] = KERNEL_SCALES_SHAPE;
  if (!same_shape(h->planes_shape, h->planes_ndim, planes, KERNEL_PLANES_NDIM) ||
      !same_shape(h->scales_shape, h->scales_ndim, scales, KERNEL_SCALES_NDIM)) {
    fprintf(stderr, "c_host: the weight file's planes/scales shapes differ from kernel.h's\n");
    return -1;
  }
  return 0;
}

static void* copy_aligned(const void* src, size_t nbytes) {
  if (!src || !nbytes) return NULL;
  void* p = aligned_alloc(64, (nbytes + 63) / 64 * 64);
  if (!p) { fprintf(stderr, "c_host: out of memory for weight copies\n"); exit(2); }
  return memcpy(p, src, nbytes);
}

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int by_value(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  const char* dir = ".";
  int copies = 1, calls = 50;
  double bound = KERNEL_TOLERANCE; /* lutc.testing.tolerance of the kernel's spec, from kernel.h */
  for (int i = 1; i < argc; i++) {
    if (i + 1 < argc && strcmp(argv[i], "--copies") == 0) copies = atoi(argv[++i]);
    else if (i + 1 < argc && strcmp(argv[i], "--calls") == 0) calls = atoi(argv[++i]);
    else if (i + 1 < argc && strcmp(argv[i], "--bound") == 0) bound = fmin(bound, atof(argv[++i]));
    else if (argv[i][0] != '-') dir = argv[i];
    else { fprintf(stderr, "usage: c_host OUT [--copies N] [--calls C] [--bound B]\n"); return 2; }
  }
  if (copies < 1 || calls < 1) { fprintf(stderr, "c_host: --copies and --calls must be >= 1\n"); return 2; }
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
  double* ref = (double*)read_file(dir, "ref.bin", KERNEL_OUT_BYTES / sizeof(float) * sizeof(double));
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
  int ok = err <= bound; /* false for NaN */

  /* Timing: copy 0 is the file's buffers, the others copies of them, called in turn. */
  void **planes = calloc(copies, sizeof(void*)), **scales = calloc(copies, sizeof(void*)),
       **zeros = calloc(copies, sizeof(void*));
  planes[0] = w.planes; scales[0] = w.scales; zeros[0] = w.zeros;
  for (int c = 1; c < copies; c++) {
    planes[c] = copy_aligned(w.planes, KERNEL_PLANES_BYTES);
    scales[c] = copy_aligned(w.scales, KERNEL_SCALES_BYTES);
    zeros[c] = copy_aligned(w.zeros, KERNEL_ZEROS_BYTES);
  }
  for (int c = 0; c < copies; c++) kernel_run(x, planes[c], scales[c], zeros[c], out); /* warm-up pass */
  double* t = malloc(sizeof(double) * calls);
  for (int i = 0; i < calls; i++) {
    int c = i % copies;
    double t0 = now_us();
    kernel_run(x, planes[c], scales[c], zeros[c], out);
    t[i] = now_us() - t0;
  }
  qsort(t, calls, sizeof(double), by_value);
  double median = calls % 2 ? t[calls / 2] : (t[calls / 2 - 1] + t[calls / 2]) / 2;
  double mib = (double)copies * (KERNEL_PLANES_BYTES + KERNEL_SCALES_BYTES + KERNEL_ZEROS_BYTES) / (1 << 20);

  printf("c_host: %s w%d, M=%d N=%d K=%d, layout %s, %s tables: max relative error %.3e (bound "
         "%.0e): %s; median %.1f us/call over %d calls, weights rotating through %d copies (%.1f MiB)\n",
         KERNEL_FORMAT, KERNEL_WBITS, KERNEL_M, KERNEL_N, KERNEL_K, KERNEL_LAYOUT, KERNEL_TABLE_DTYPE,
         err, bound, ok ? "OK" : "MISMATCH", median, calls, copies, mib);
  for (int c = 1; c < copies; c++) { free(planes[c]); free(scales[c]); free(zeros[c]); }
  free(planes); free(scales); free(zeros); free(t);
  lutc_weights_free(&w);
  free(x); free(ref); free(out);
  return ok ? 0 : 1;
}
