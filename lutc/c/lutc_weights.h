/* lutc_weights.h: read a packed weight file written by lutc (lutc.weight_files.save_weights).
 * Header-only C99 (also valid C++); written by lutc.export next to every kernel; Apache-2.0.
 *
 * File format "LUTCWGT" version 2 (version 1 is read too), little-endian:
 *   bytes 0-7     magic "LUTCWGT\0"
 *   bytes 8-255   31 int64 fields, in the order of struct lutc_weights_header below
 *   then the tensors planes, scales[, zeros], each at its byte offset (64-byte aligned),
 *   compact row-major, in the dtypes the header names.
 *
 * The tensors are in the packed layout the header names (field layout, a LUTC_LAYOUT_* code
 * below; version-1 files hold "bitplane"), exactly as a kernel of that layout reads them: an
 * exported kernel's header documents its layout byte by byte and defines NAME_LAYOUT_CODE and
 * NAME_LAYOUT, NAME_PLANES_SHAPE, NAME_SCALES_SHAPE; check them against the file before a call
 * (lutc.save_weights(qw, path, layout=kernel.layout) writes a file for that kernel).
 *   planes  uint8 (planes_bits 8) or int32 (planes_bits 32) [planes_shape[0..planes_ndim)]
 *   scales  float16 (scale_bits 16, as uint16 bits) or float32 [scales_shape[0..scales_ndim)]
 *   zeros   uniform with zero points only: the shape and dtype of scales
 * With bit_i the bit of plane i of a weight's code and q = sum_i 2^i bit_i, the weight is
 *   uniform  s * (q - z), z = zeros or (2^b - 1) / 2
 *   bcq      sum_i alpha_i * (2 bit_i - 1)
 *   ternary  s * ((2 bit_0 - 1) + (2 bit_1 - 1)) / 2
 *
 * Usage:
 *   lutc_weights w;
 *   if (lutc_weights_load("w.lutcw", &w) != 0) { fprintf(stderr, "%s\n", w.error); exit(1); }
 *   if (w.h.layout != KERNEL_LAYOUT_CODE) ...   (or strcmp(lutc_layout_name(w.h.layout), KERNEL_LAYOUT))
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
#define LUTC_WEIGHTS_FILE_VERSION 2 /* written by this lutc; 1 is read too */

enum { LUTC_FORMAT_UNIFORM = 0, LUTC_FORMAT_BCQ = 1, LUTC_FORMAT_TERNARY = 2 };

/* Layout codes (lutc.weight_files.FILE_LAYOUTS): a fixed list, only ever appended to. */
enum {
  LUTC_LAYOUT_BITPLANE = 0, LUTC_LAYOUT_TILES32 = 1, LUTC_LAYOUT_TILES64 = 2, LUTC_LAYOUT_TILES128 = 3,
  LUTC_LAYOUT_PTILES32 = 4, LUTC_LAYOUT_PTILES64 = 5, LUTC_LAYOUT_DOT4 = 6, LUTC_LAYOUT_DOT16 = 7,
  LUTC_LAYOUT_WARP32 = 8, LUTC_LAYOUT_TC16 = 9, LUTC_LAYOUT_GTILES32 = 10, LUTC_NUM_LAYOUTS = 11
};
static const char* const lutc_layout_names[LUTC_NUM_LAYOUTS] = {
    "bitplane", "tiles32", "tiles64", "tiles128", "ptiles32", "ptiles64", "dot4", "dot16",
    "warp32", "tc16", "gtiles32"};
/* The version of each layout this header reads (lutc.layouts: tc16 changed its k order in 2). */
static const int64_t lutc_layout_versions[LUTC_NUM_LAYOUTS] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1};

typedef struct {
  int64_t file_version;   /* 1 or 2 (LUTC_WEIGHTS_FILE_VERSION) */
  int64_t layout_version; /* lutc_layout_versions[layout] */
  int64_t format;         /* LUTC_FORMAT_* */
  int64_t wbits;          /* 1-4 */
  int64_t planes;         /* bit planes b: wbits, or 2 for ternary */
  int64_t N, K;
  int64_t group_size;     /* 32, 64, 128, or -1 (whole row) */
  int64_t groups;         /* G = K / group_size (1 for -1) */
  int64_t zero_point;     /* 0 or 1 */
  int64_t scale_bits;     /* 16 (float16) or 32 (float32) */
  int64_t planes_offset, planes_bytes;
  int64_t scales_offset, scales_bytes;
  int64_t zeros_offset, zeros_bytes; /* 0, 0 without zero points */
  int64_t scales_ndim, scales_shape[4];
  /* version 2 (zero in version-1 files; lutc_weights_load fills in bitplane's values) */
  int64_t layout;         /* LUTC_LAYOUT_* */
  int64_t planes_bits;    /* 8 (uint8) or 32 (int32) */
  int64_t planes_ndim, planes_shape[5];
  int64_t reserved[1];    /* zero; the header is 256 bytes */
} lutc_weights_header;

typedef struct {
  lutc_weights_header h;
  void* planes; /* uint8 or int32, planes_shape */
  void* scales; /* float16 (uint16 bits) or float32, scales_shape */
  void* zeros;  /* same shape and dtype as scales, or NULL */
  char error[256];
} lutc_weights;

/* The name of a layout code ("ptiles64"), or "?" for an unknown code. */
static inline const char* lutc_layout_name(int64_t code) {
  return code >= 0 && code < LUTC_NUM_LAYOUTS ? lutc_layout_names[code] : "?";
}

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

/* The header's fields checked on their own and against a file of `size` bytes; 0 or -1 with
 * the field named in w->error. (lutc.load_weights also checks the shapes against the layout.) */
static inline int lutc__check_header(const char* path, lutc_weights* w, int64_t size) {
  lutc_weights_header* h = &w->h;
  const char* bad = NULL;
  if (h->file_version != 1 && h->file_version != 2) bad = "file_version";
  else if (h->layout < 0 || h->layout >= LUTC_NUM_LAYOUTS) bad = "layout";
  else if (h->layout_version != lutc_layout_versions[h->layout]) bad = "layout_version";
  else if (h->format < 0 || h->format > 2) bad = "format";
  else if (h->wbits < 1 || h->wbits > 4) bad = "wbits";
  else if (h->N <= 0) bad = "N";
  else if (h->K <= 0 || h->K % 8) bad = "K";
  else if (h->zero_point != 0 && h->zero_point != 1) bad = "zero_point";
  else if (h->scale_bits != 16 && h->scale_bits != 32) bad = "scale_bits";
  else if (h->planes_bits != 8 && h->planes_bits != 32) bad = "planes_bits";
  else if (h->planes_ndim < 1 || h->planes_ndim > 5) bad = "planes_ndim";
  else if (h->scales_ndim < 1 || h->scales_ndim > 4) bad = "scales_ndim";
  else if (h->zero_point ? h->zeros_bytes != h->scales_bytes : (h->zeros_bytes || h->zeros_offset)) bad = "zeros_bytes";
  if (bad) {
    snprintf(w->error, sizeof w->error, "%.150s: header field %s is out of range (file version %lld)",
             path, bad, (long long)h->file_version);
    return -1;
  }
  const char* names[3] = {"planes", "scales", "zeros"};
  int64_t offs[3] = {h->planes_offset, h->scales_offset, h->zeros_offset};
  int64_t lens[3] = {h->planes_bytes, h->scales_bytes, h->zeros_bytes};
  for (int i = 0; i < 3; i++) {
    if (i == 2 && !h->zero_point) break;
    if (offs[i] < 256 || lens[i] <= 0 || offs[i] > size || lens[i] > size - offs[i]) {
      snprintf(w->error, sizeof w->error, "%.150s: file is truncated or damaged: %s need bytes "
               "%lld..%lld, the file has %lld bytes", path, names[i], (long long)offs[i],
               (long long)(offs[i] + lens[i]), (long long)size);
      return -1;
    }
  }
  return 0;
}

/* Returns 0 on success; on failure -1 with the reason in w->error. */
static inline int lutc_weights_load(const char* path, lutc_weights* w) {
  memset(w, 0, sizeof *w);
  FILE* f = fopen(path, "rb");
  if (!f) { snprintf(w->error, sizeof w->error, "cannot open %.200s", path); return -1; }
  char magic[8];
  if (fread(magic, 1, 8, f) != 8 || memcmp(magic, LUTC_WEIGHTS_MAGIC, 8) != 0) {
    snprintf(w->error, sizeof w->error, "%.200s is not a lutc weight file", path);
    fclose(f); return -1;
  }
  if (fread(&w->h, sizeof w->h, 1, f) != 1) {
    snprintf(w->error, sizeof w->error, "%.200s: file is truncated: the header needs 256 bytes", path);
    fclose(f); return -1;
  }
  if (w->h.file_version == 1) { /* bitplane only: planes uint8 [b, N, K/8] */
    w->h.layout = LUTC_LAYOUT_BITPLANE; w->h.planes_bits = 8; w->h.planes_ndim = 3;
    w->h.planes_shape[0] = w->h.planes; w->h.planes_shape[1] = w->h.N; w->h.planes_shape[2] = w->h.K / 8;
  }
  int64_t size = fseek(f, 0, SEEK_END) == 0 ? (int64_t)ftell(f) : -1;
  if (lutc__check_header(path, w, size) != 0) { fclose(f); return -1; }
  w->planes = lutc__read_at(f, w->h.planes_offset, w->h.planes_bytes);
  w->scales = lutc__read_at(f, w->h.scales_offset, w->h.scales_bytes);
  w->zeros = lutc__read_at(f, w->h.zeros_offset, w->h.zeros_bytes);
  fclose(f);
  if (!w->planes || !w->scales || (w->h.zeros_bytes && !w->zeros)) {
    snprintf(w->error, sizeof w->error, "%.200s: cannot read its tensors (out of memory?)", path);
    lutc_weights_free(w); return -1;
  }
  return 0;
}

#endif /* LUTC_WEIGHTS_H_ */
