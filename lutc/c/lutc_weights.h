/* lutc_weights.h: read a packed weight file written by lutc (lutc.exporter.save_weights).
 * Header-only C99 (also valid C++); written by lutc.export next to every kernel; Apache-2.0.
 *
 * File format "LUTCWGT" version 1, little-endian:
 *   bytes 0-7     magic "LUTCWGT\0"
 *   bytes 8-255   31 int64 fields, in the order of struct lutc_weights_header below
 *   then the tensors planes, scales[, zeros], each at its byte offset (64-byte aligned),
 *   compact row-major, in the dtypes the header names.
 *
 * Packed layout "bitplane" version 1 (what the kernels read):
 *   planes  uint8 [b, N, K/8]: bit (k % 8) (least significant first) of byte k / 8 in plane i is
 *           bit i of the code of W[n, k] (b = wbits; 2 planes for ternary).
 *   scales  float16/float32: uniform [N, G]; bcq [N, G, b] (one alpha per plane); ternary [1].
 *   zeros   uniform with zero points only: [N, G] in the scales' dtype.
 *   (G = K / group_size, or 1 for group_size -1.) The weight is
 *     uniform  s * (q - z), q = sum_i 2^i bit_i, z = zeros or (2^b - 1) / 2
 *     bcq      sum_i alpha_i * (2 bit_i - 1)
 *     ternary  s * ((2 bit_0 - 1) + (2 bit_1 - 1)) / 2
 *
 * Usage:
 *   lutc_weights w;
 *   if (lutc_weights_load("w.lutcw", &w) != 0) { fprintf(stderr, "%s\n", w.error); exit(1); }
 *   ... w.planes, w.scales, w.zeros (64-byte aligned, NULL when absent), w.h.N, w.h.K ...
 *   lutc_weights_free(&w);
 */
#ifndef LUTC_WEIGHTS_H_
#define LUTC_WEIGHTS_H_

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LUTC_WEIGHTS_MAGIC "LUTCWGT"
#define LUTC_WEIGHTS_FILE_VERSION 1
#define LUTC_LAYOUT_BITPLANE_VERSION 1

enum { LUTC_FORMAT_UNIFORM = 0, LUTC_FORMAT_BCQ = 1, LUTC_FORMAT_TERNARY = 2 };

typedef struct {
  int64_t file_version;   /* LUTC_WEIGHTS_FILE_VERSION */
  int64_t layout_version; /* of layout "bitplane": LUTC_LAYOUT_BITPLANE_VERSION */
  int64_t format;         /* LUTC_FORMAT_* */
  int64_t wbits;
  int64_t planes;         /* bit planes b: wbits, or 2 for ternary */
  int64_t N, K;
  int64_t group_size;     /* 32, 64, 128, or -1 (whole row) */
  int64_t groups;         /* G */
  int64_t zero_point;     /* 0 or 1 */
  int64_t scale_bits;     /* 16 (float16) or 32 (float32) */
  int64_t planes_offset, planes_bytes;
  int64_t scales_offset, scales_bytes;
  int64_t zeros_offset, zeros_bytes; /* 0, 0 without zero points */
  int64_t scales_ndim, scales_shape[3];
  int64_t reserved[10];  /* zero; the header is 256 bytes */
} lutc_weights_header;

typedef struct {
  lutc_weights_header h;
  void* planes; /* uint8 [planes, N, K/8] */
  void* scales; /* float16 (uint16 bits) or float32 */
  void* zeros;  /* same dtype as scales, or NULL */
  char error[256];
} lutc_weights;

static void* lutc__read_at(FILE* f, int64_t offset, int64_t nbytes) {
  if (nbytes <= 0) return NULL;
  void* p = aligned_alloc(64, (size_t)((nbytes + 63) / 64 * 64)); /* kernels need 64-byte alignment */
  if (!p) return NULL;
  if (fseek(f, (long)offset, SEEK_SET) != 0 || fread(p, 1, (size_t)nbytes, f) != (size_t)nbytes) {
    free(p);
    return NULL;
  }
  return p;
}

static inline void lutc_weights_free(lutc_weights* w) {
  free(w->planes); free(w->scales); free(w->zeros);
  w->planes = w->scales = w->zeros = NULL;
}

/* Returns 0 on success; on failure -1 with the reason in w->error. */
static inline int lutc_weights_load(const char* path, lutc_weights* w) {
  memset(w, 0, sizeof *w);
  FILE* f = fopen(path, "rb");
  if (!f) { snprintf(w->error, sizeof w->error, "cannot open %.200s", path); return -1; }
  char magic[8];
  if (fread(magic, 1, 8, f) != 8 || memcmp(magic, LUTC_WEIGHTS_MAGIC, 8) != 0 ||
      fread(&w->h, sizeof w->h, 1, f) != 1) {
    snprintf(w->error, sizeof w->error, "%.200s is not a lutc weight file", path);
    fclose(f); return -1;
  }
  if (w->h.file_version != LUTC_WEIGHTS_FILE_VERSION || w->h.layout_version != LUTC_LAYOUT_BITPLANE_VERSION) {
    snprintf(w->error, sizeof w->error, "%.150s: file version %lld, layout bitplane v%lld; this reader "
             "reads file v%d, layout v%d", path, (long long)w->h.file_version,
             (long long)w->h.layout_version, LUTC_WEIGHTS_FILE_VERSION, LUTC_LAYOUT_BITPLANE_VERSION);
    fclose(f); return -1;
  }
  w->planes = lutc__read_at(f, w->h.planes_offset, w->h.planes_bytes);
  w->scales = lutc__read_at(f, w->h.scales_offset, w->h.scales_bytes);
  w->zeros = lutc__read_at(f, w->h.zeros_offset, w->h.zeros_bytes);
  fclose(f);
  if (!w->planes || !w->scales || (w->h.zeros_bytes && !w->zeros)) {
    snprintf(w->error, sizeof w->error, "%.200s is truncated", path);
    lutc_weights_free(w); return -1;
  }
  return 0;
}

#endif /* LUTC_WEIGHTS_H_ */
