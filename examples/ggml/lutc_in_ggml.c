/* lutc_in_ggml: a lutc kernel as a matrix multiply inside a ggml graph, on ggml's threads,
 * checked and timed against ggml's own mul_mat on the same quantized weights.
 *
 *   python examples/ggml/prepare.py OUT --type Q4_0 --shape 1,4096,4096
 *   bash examples/ggml/build.sh OUT              # this file + OUT/kernel.o + libggml*.a
 *   OUT/lutc_in_ggml OUT [--threads T] [--copies C] [--calls R] [--repack 1]
 *
 * OUT holds (prepare.py): ggml.bin (the weight as ggml blocks of type meta.txt's QTYPE, ggml's
 * row order), weights.lutcw (the same blocks imported by lutc.importers.import_ggml_blocks,
 * exactly, saved in the exported kernel's layout), x.bin (float32 [M, K]), ref.bin (float64
 * [M, N]: x @ W^T of the dequantized weight) and the exported kernel (kernel.o, kernel.h).
 * For a type Python cannot quantize (Q2_K, Q1_0) prepare.py writes w.bin (float32 [N, K])
 * instead of ggml.bin: ggml quantizes it here (ggml_quantize_chunk) and ggml's side is checked
 * against ggml's own dequantized weight; weights.lutcw and ref.bin then hold lutc's own
 * quantization of the same float weight (a different format of the same bits, not the blocks).
 *
 * The graph: y_ggml = ggml_mul_mat(W, x) with W a tensor of type QTYPE (ggml's CPU kernel for
 * it, as llama.cpp runs it), and y_lutc = ggml_custom_4d(..., x, lutc_mul_mat, GGML_N_TASKS_MAX,
 * weights): a custom op whose callback runs kernel_run() (kernel.h). The kernel's parallel loops
 * run on ggml's threads: ggml calls the callback on each of its nth threads; thread 0 calls the
 * kernel, whose TVM runtime hook __TVMBackendParallelLaunch is pointed at ggml_parallel_launch
 * below, which hands task i of each parallel loop to the thread with ith == i (the others wait in
 * the callback for work until thread 0 says the kernel is done). No second thread pool.
 *
 * Both outputs are poisoned with NaN, computed and compared with ref.bin (max |y - ref| /
 * max |ref| below BOUND: both quantize x to 8 bits, ggml per block of 32, lutc per table);
 * then each is timed over --calls calls (median, microseconds), the weights rotating through
 * --copies copies (enough to exceed the last-level cache: a decode step reads each weight once).
 * Prints one line per kernel: "ggml QTYPE: rel_err E, T us" and "lutc LAYOUT: rel_err E, T us".
 * With --repack 1 ggml's weights live in its CPU_REPACK buffer type (llama.cpp's default on CPUs
 * where one applies: Q4_0 interleaved 8x8 with AVX2, Q2_K with AVX-512), repacked as they are set.
 * Exit 1 on a mismatch, 2 on bad input.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "kernel.h"
#include "lutc_backend.h"
#include "lutc_weights.h"

#define BOUND 5e-2



/* ---- lutc's parallel loops on ggml's threads (types and hook: lutc_backend.h) ---- */

/* One op call at a time (ggml runs graph nodes one after another). */
static struct {
  _Atomic uint64_t launch;   /* bumped by thread 0 for each parallel loop of the kernel */
  _Atomic int finished;      /* set by thread 0 when the kernel returned */
  _Atomic int done;          /* tasks of the current loop finished by threads 1.. */
  _Atomic int entered;       /* threads 1.. inside the callback */
  FTVMParallelLambda f;
  void* cdata;
  TVMParallelGroupEnv env;
  int nth;
} pool;

static int ggml_parallel_launch(FTVMParallelLambda f, void* cdata, int num_task) {
  (void)num_task; /* the kernel splits its loop into penv->num_task tasks: one per ggml thread */
  pool.f = f;
  pool.cdata = cdata;
  pool.env.num_task = pool.nth;
  atomic_store(&pool.done, 0);
  atomic_fetch_add(&pool.launch, 1);          /* publishes f, cdata (seq_cst) */
  int rc = f(0, &pool.env, cdata);
  while (atomic_load(&pool.done) != pool.nth - 1) { /* spin: the loop takes microseconds */ }
  return rc;
}

typedef struct {
  const void* planes;
  const void* scales;
  const void* zeros;
  int failed;
} lutc_weight_copy;

static void lutc_mul_mat(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
  lutc_weight_copy* w = userdata;
  const struct ggml_tensor* x = dst->src[0];
  if (ith == 0) {
    /* wait until every other thread is in the callback, listening for launches */
    while (atomic_load(&pool.entered) != nth - 1) { }
    pool.nth = nth;
    if (kernel_run(x->data, w->planes, w->scales, w->zeros, dst->data) != 0) w->failed = 1;
    atomic_store(&pool.entered, 0);
    atomic_store(&pool.finished, 1);          /* releases threads 1.. */
    return;
  }
  uint64_t seen = atomic_load(&pool.launch);
  atomic_fetch_add(&pool.entered, 1);
  for (;;) {
    uint64_t now = atomic_load(&pool.launch);
    if (now != seen) {
      seen = now;
      pool.f(ith, &pool.env, pool.cdata);
      atomic_fetch_add(&pool.done, 1);
    } else if (atomic_load(&pool.finished)) {
      break;
    }
  }
}

/* ---- inputs ---- */
static void* read_file(const char* dir, const char* name, size_t nbytes) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  void* p = aligned_alloc(64, (nbytes + 63) / 64 * 64);
  FILE* f = fopen(path, "rb");
  if (!p || !f || fread(p, 1, nbytes, f) != nbytes || fgetc(f) != EOF) {
    fprintf(stderr, "lutc_in_ggml: cannot read %zu bytes from %s\n", nbytes, path);
    exit(2);
  }
  fclose(f);
  return p;
}

static void* copy64(const void* src, size_t nbytes) {
  void* p = aligned_alloc(64, (nbytes + 63) / 64 * 64);
  if (!p) { fprintf(stderr, "lutc_in_ggml: out of memory\n"); exit(2); }
  memcpy(p, src, nbytes);
  return p;
}

static double rel_err(const float* y, const double* ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)y[i] - ref[i]);
    if (isnan(y[i])) return INFINITY;
    if (d > num) num = d;
    if (fabs(ref[i]) > den) den = fabs(ref[i]);
  }
  return num / den;
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

typedef struct {
  struct ggml_cgraph* graph;
  struct ggml_tensor* out;
} node;

static double run_graph(node* n, struct ggml_threadpool* tp, int threads, void* work, size_t work_size) {
  struct ggml_cplan plan = ggml_graph_plan(n->graph, threads, tp);
  if (plan.work_size > work_size) { fprintf(stderr, "lutc_in_ggml: work buffer too small\n"); exit(2); }
  plan.work_data = work;
  double t0 = now_us();
  if (ggml_graph_compute(n->graph, &plan) != GGML_STATUS_SUCCESS) {
    fprintf(stderr, "lutc_in_ggml: ggml_graph_compute failed\n");
    exit(1);
  }
  return now_us() - t0;
}

/* ggml's CPU_REPACK buffer type (NULL where the CPU backend has none) */
static ggml_backend_buffer_type_t repack_buffer_type(void) {
  ggml_backend_reg_t reg = ggml_backend_cpu_reg();
  ggml_backend_dev_get_extra_bufts_t extra =
      (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
  for (ggml_backend_buffer_type_t* b = extra ? extra(ggml_backend_reg_dev_get(reg, 0)) : NULL; b && *b; b++)
    if (!strcmp(ggml_backend_buft_name(*b), "CPU_REPACK")) return *b;
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: lutc_in_ggml OUT [--threads T] [--copies C] [--calls R] [--repack 1]\n");
    return 2;
  }
  const char* dir = argv[1];
  int threads = 1, copies = 1, calls = 50, repack = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--copies")) copies = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--calls")) calls = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--repack")) repack = atoi(argv[i + 1]);
    else { fprintf(stderr, "lutc_in_ggml: unknown option %s\n", argv[i]); return 2; }
  }
  if (threads < 1 || copies < 1 || calls < 1) { fprintf(stderr, "lutc_in_ggml: counts must be >= 1\n"); return 2; }
  const int64_t M = KERNEL_M, N = KERNEL_N, K = KERNEL_K;

  char qname[64] = {0}, path[4096];
  snprintf(path, sizeof path, "%s/meta.txt", dir);
  FILE* mf = fopen(path, "r");
  if (!mf || fscanf(mf, "%63s", qname) != 1) { fprintf(stderr, "lutc_in_ggml: cannot read %s\n", path); return 2; }
  fclose(mf);
  enum ggml_type qtype = GGML_TYPE_COUNT;
  for (int t = 0; t < GGML_TYPE_COUNT; t++)
    if (ggml_type_name((enum ggml_type)t) && !strcasecmp(ggml_type_name((enum ggml_type)t), qname)) qtype = (enum ggml_type)t;
  if (qtype == GGML_TYPE_COUNT) { fprintf(stderr, "lutc_in_ggml: ggml has no type %s\n", qname); return 2; }

  size_t row_bytes = ggml_row_size(qtype, K);
  float* x = read_file(dir, "x.bin", sizeof(float) * M * K);
  double* ref = read_file(dir, "ref.bin", sizeof(double) * M * N);
  double* ref_ggml = ref;                /* the reference of ggml's side: the same, unless ggml quantizes */
  void* blocks;
  snprintf(path, sizeof path, "%s/ggml.bin", dir);
  FILE* bf = fopen(path, "rb");
  if (bf) {
    fclose(bf);
    blocks = read_file(dir, "ggml.bin", row_bytes * N);
  } else {                               /* w.bin: ggml quantizes, and is checked against its dequantization */
    float* w = read_file(dir, "w.bin", sizeof(float) * N * K);
    blocks = malloc(row_bytes * N);
    float* wd = malloc(sizeof(float) * N * K);
    ref_ggml = malloc(sizeof(double) * M * N);
    if (!blocks || !wd || !ref_ggml) { fprintf(stderr, "lutc_in_ggml: out of memory\n"); return 2; }
    ggml_quantize_init(qtype);
    ggml_quantize_chunk(qtype, w, blocks, 0, N, K, NULL);
    ggml_get_type_traits(qtype)->to_float(blocks, wd, N * K);
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double acc = 0;
        for (int64_t k = 0; k < K; k++) acc += (double)x[m * K + k] * wd[n * K + k];
        ref_ggml[m * N + n] = acc;
      }
    free(w);
    free(wd);
  }
  lutc_weights lw;
  snprintf(path, sizeof path, "%s/weights.lutcw", dir);
  if (lutc_weights_load(path, &lw) != 0) { fprintf(stderr, "lutc_in_ggml: %s\n", lw.error); return 2; }
  if (lw.h.layout != KERNEL_LAYOUT_CODE || lw.h.N != N || lw.h.K != K) {
    fprintf(stderr, "lutc_in_ggml: weights.lutcw is not in the kernel's layout %s or shape\n", KERNEL_LAYOUT);
    return 2;
  }

  struct ggml_init_params ip = {
      .mem_size = (size_t)copies * (row_bytes * N + 4 * sizeof(float) * M * N) + sizeof(float) * M * K
                  + (size_t)copies * 2 * (ggml_graph_overhead() + 4 * ggml_tensor_overhead()) + (16 << 20),
      .mem_buffer = NULL, .no_alloc = false};
  struct ggml_context* ctx = ggml_init(ip);
  if (!ctx) { fprintf(stderr, "lutc_in_ggml: ggml_init failed\n"); return 2; }
  struct ggml_tensor* xt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, K, M);
  memcpy(xt->data, x, sizeof(float) * M * K);

  node* g = calloc(copies, sizeof(node));
  node* l = calloc(copies, sizeof(node));
  lutc_weight_copy* wc = calloc(copies, sizeof(lutc_weight_copy));
  struct ggml_tensor** ws = calloc(copies, sizeof(struct ggml_tensor*));
  struct ggml_context* wctx = ctx;          /* ggml's weights: in ctx, or (--repack) in a CPU_REPACK buffer */
  if (repack) {
    struct ggml_init_params wp = {.mem_size = (size_t)copies * ggml_tensor_overhead() + 4096, .mem_buffer = NULL,
                                  .no_alloc = true};
    wctx = ggml_init(wp);
  }
  for (int c = 0; c < copies; c++) ws[c] = ggml_new_tensor_2d(wctx, qtype, K, N);
  if (repack) {
    ggml_backend_buffer_type_t buft = repack_buffer_type();
    if (!buft || !ggml_backend_alloc_ctx_tensors_from_buft(wctx, buft)) {
      fprintf(stderr, "lutc_in_ggml: ggml has no CPU_REPACK buffer here\n");
      return 2;
    }
    if (!ws[0]->extra) {   /* no repacked kernel for this type, shape and CPU */
      fprintf(stderr, "lutc_in_ggml: ggml does not repack %s %lldx%lld on this CPU\n", qname, (long long)N, (long long)K);
      return 2;
    }
  }
  for (int c = 0; c < copies; c++) {
    struct ggml_tensor* w = ws[c];
    if (repack) ggml_backend_tensor_set(w, blocks, 0, row_bytes * N);
    else memcpy(w->data, blocks, row_bytes * N);
    g[c].out = ggml_mul_mat(ctx, w, xt);
    g[c].graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(g[c].graph, g[c].out);
    wc[c].planes = copy64(lw.planes, lw.h.planes_bytes);
    wc[c].scales = copy64(lw.scales, lw.h.scales_bytes);
    wc[c].zeros = lw.zeros ? copy64(lw.zeros, lw.h.zeros_bytes) : NULL;
    struct ggml_tensor* args[1] = {xt};
    l[c].out = ggml_custom_4d(ctx, GGML_TYPE_F32, N, M, 1, 1, args, 1, lutc_mul_mat, GGML_N_TASKS_MAX, &wc[c]);
    l[c].graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(l[c].graph, l[c].out);
  }

  /* after lutc_backend.c's start-up; a kernel with no parallel loop (a small one) has no hook */
  if (&__TVMBackendParallelLaunch) __TVMBackendParallelLaunch = (void*)ggml_parallel_launch;
  struct ggml_threadpool_params tpp = ggml_threadpool_params_default(threads);
  struct ggml_threadpool* tp = ggml_threadpool_new(&tpp);
  /* every copy's graph has the same shapes: one work buffer sized for the larger of the two */
  struct ggml_cplan pg = ggml_graph_plan(g[0].graph, threads, tp), pl = ggml_graph_plan(l[0].graph, threads, tp);
  size_t work_size = pg.work_size > pl.work_size ? pg.work_size : pl.work_size;
  void* work = aligned_alloc(64, (work_size + 64) / 64 * 64 + 64);

  int bad = 0;
  char gname[80];
  snprintf(gname, sizeof gname, "%s%s", qname, repack ? "+REPACK" : "");
  const char* names[2] = {gname, KERNEL_LAYOUT};
  node* kinds[2] = {g, l};
  double* times = malloc(sizeof(double) * calls);
  for (int k = 0; k < 2; k++) {
    float* y = kinds[k][0].out->data;
    for (int64_t i = 0; i < M * N; i++) y[i] = NAN;
    atomic_store(&pool.finished, 0);
    run_graph(&kinds[k][0], tp, threads, work, work_size);
    double err = rel_err(y, k ? ref : ref_ggml, M * N);
    if (k == 1 && wc[0].failed) { fprintf(stderr, "lutc_in_ggml: kernel_run failed: %s\n", lutc_last_error()); return 1; }
    for (int r = 0; r < calls; r++) {
      atomic_store(&pool.finished, 0);
      times[r] = run_graph(&kinds[k][r % copies], tp, threads, work, work_size);
    }
    qsort(times, calls, sizeof(double), cmp_double);
    printf("%s %s: rel_err %.2e, %.1f us (M=%lld N=%lld K=%lld, %d threads, %d copies, %d calls)\n",
           k ? "lutc" : "ggml", names[k], err, times[calls / 2], (long long)M, (long long)N, (long long)K,
           threads, copies, calls);
    if (!(err < BOUND)) {
      fprintf(stderr, "lutc_in_ggml: %s output differs from the reference (%.3e >= %.0e)\n", names[k], err, BOUND);
      bad = 1;
    }
  }
  ggml_threadpool_free(tp);
  ggml_free(ctx);
  return bad;
}
