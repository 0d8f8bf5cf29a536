/* lutc_backend.c: the TVM backend services a lutc CPU kernel calls, for hosts without
 * libtvm_runtime (written by lutc.export next to every CPU kernel; Apache-2.0).
 *
 * A kernel compiled by TVM's LLVM backend (the .o / .so of lutc.export) does not call the TVM
 * runtime by name: it defines three weak function-pointer variables and calls through them,
 *
 *     void* __TVMBackendParallelLaunch;   int  (*)(FTVMParallelLambda f, void* cdata, int num_task)
 *     void* __TVMBackendAllocWorkspace;   void*(*)(int dev_type, int dev_id, uint64_t nbytes, int code, int bits)
 *     void* __TVMBackendFreeWorkspace;    int  (*)(int dev_type, int dev_id, void* ptr)
 *
 * which libtvm_runtime fills when it loads a module. Linked into a program or a shared library
 * with such a kernel, this file fills any that are still NULL when the program (or library)
 * starts, with a persistent pthreads pool and 64-byte-aligned malloc. A host may assign its own
 * implementations afterwards (e.g. its thread pool); libtvm_runtime, when present, overrides them.
 *
 * Kernels exported as C source (the "c" target) call TVMBackendAllocWorkspace and friends as
 * plain functions instead; compile this file with -DLUTC_STANDALONE to define those, and the
 * tvm-ffi error hook TVMFFIErrorSetRaisedFromCStrParts (normally in libtvm_ffi). Without
 * libtvm_ffi in the process (a static C host) always use -DLUTC_STANDALONE; inside a shared
 * library loaded by tvm-ffi, leave it undefined so errors reach tvm-ffi.
 *
 * Threads: LUTC_NUM_THREADS, else TVM_NUM_THREADS, else the online CPUs; or lutc_set_num_threads()
 * before the first kernel call. Launches from several host threads at once are serialized (a
 * launch that finds the pool busy runs its tasks on the calling thread). Idle workers spin
 * before they sleep, like TVM's pool (LUTC_SPIN_COUNT, see the thread pool below).
 *
 * Build: cc -O2 -c lutc_backend.c -pthread [-DLUTC_STANDALONE] [-fPIC]
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* pthread_setaffinity_np, CPU_* */
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lutc_backend.h" /* the types and hooks (weak: absent when only C-source kernels are linked) */

/* ---- workspace ----
 * Kernels take their scratch buffers from here: the tables, and many small per-tile buffers
 * (a 1x4096x4096 x86 kernel call allocates ~650, mostly 4-256 bytes). Like TVM's workspace
 * pool, each thread keeps the blocks it frees, by power-of-two size, for its next allocations:
 * aligned_alloc + free for each cost that call ~10% of its time. A block is preceded by a
 * 64-byte header holding its size class (0: larger than the cache takes, freed at once). */
enum { WS_MIN_CLASS = 6, WS_MAX_CLASS = 24, WS_DEPTH = 16, WS_HEADER = 64 }; /* 64 B .. 16 MiB */

typedef struct {
  int count[WS_MAX_CLASS + 1];
  void* block[WS_MAX_CLASS + 1][WS_DEPTH];
} ws_cache;

static __thread ws_cache* ws_mine;
static pthread_key_t ws_key;
static pthread_once_t ws_once = PTHREAD_ONCE_INIT;

static void ws_cache_release(void* arg) { /* at thread exit */
  ws_cache* cache = (ws_cache*)arg;
  for (int c = 0; c <= WS_MAX_CLASS; c++)
    for (int i = 0; i < cache->count[c]; i++) free((char*)cache->block[c][i] - WS_HEADER);
  free(cache);
}

static void ws_key_create(void) { pthread_key_create(&ws_key, ws_cache_release); }

static ws_cache* ws_cache_of_this_thread(void) {
  if (!ws_mine) {
    pthread_once(&ws_once, ws_key_create);
    ws_mine = (ws_cache*)calloc(1, sizeof *ws_mine);
    if (ws_mine) pthread_setspecific(ws_key, ws_mine);
  }
  return ws_mine;
}

void* lutc_workspace_alloc(int device_type, int device_id, uint64_t nbytes, int code, int bits) {
  (void)device_type; (void)device_id; (void)code; (void)bits;
  int c = WS_MIN_CLASS;
  while (c <= WS_MAX_CLASS && ((uint64_t)1 << c) < nbytes) c++;
  ws_cache* cache = c <= WS_MAX_CLASS ? ws_cache_of_this_thread() : NULL;
  if (cache && cache->count[c] > 0) return cache->block[c][--cache->count[c]];
  size_t n = cache ? (size_t)1 << c : (size_t)((nbytes + 63) / 64 * 64);
  char* base = (char*)aligned_alloc(64, WS_HEADER + n); /* kernels assume 64-byte-aligned buffers */
  if (!base) return NULL;
  *(int*)base = cache ? c : 0;
  return base + WS_HEADER;
}

int lutc_workspace_free(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  if (!ptr) return 0;
  char* base = (char*)ptr - WS_HEADER;
  int c = *(int*)base;
  ws_cache* cache = c ? ws_cache_of_this_thread() : NULL;
  if (cache && cache->count[c] < WS_DEPTH) cache->block[c][cache->count[c]++] = ptr;
  else free(base);
  return 0;
}

/* ---- thread pool ----
 * Workers wait for a launch by spinning (sched_yield) up to LUTC_SPIN_COUNT times (default
 * 300000, TVM's TVM_THREAD_POOL_SPIN_COUNT default) before sleeping on a condition variable, and
 * the launching thread spins until its launch is done, as TVM's own pool does: a kernel call
 * is a few hundred microseconds, and waking a sleeping thread on a VM can take tens of them
 * (with condition variables alone 2 threads ran a 1x4096x4096 W2 kernel slower than 1).
 * LUTC_SPIN_COUNT=0 makes idle workers sleep at once (no CPU burnt between calls). */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t work;
  pthread_mutex_t launch; /* one launch at a time */
  int nthreads, started, sleepers;
  long spin_count;
  _Atomic uint64_t generation; /* bumped by each launch */
  FTVMParallelLambda f;
  void* cdata;
  int num_task;
  _Atomic int pending, failed;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
          0, 0, 0, 0, 0, NULL, NULL, 0, 0, 0};

static int run_share(FTVMParallelLambda f, void* cdata, int num_task, int first, int stride) {
  TVMParallelGroupEnv env = {NULL, num_task};
  int failed = 0;
  for (int t = first; t < num_task; t += stride)
    if (f(t, &env, cdata) != 0) failed = 1;
  return failed;
}

/* Wait until the pool's generation differs from `seen`; returns the new one. */
static uint64_t await_launch(uint64_t seen) {
  for (long i = 0; i < pool.spin_count; i++) {
    uint64_t g = atomic_load_explicit(&pool.generation, memory_order_acquire);
    if (g != seen) return g;
    sched_yield();
  }
  pthread_mutex_lock(&pool.mu);
  pool.sleepers++;
  while (atomic_load(&pool.generation) == seen) pthread_cond_wait(&pool.work, &pool.mu);
  pool.sleepers--;
  pthread_mutex_unlock(&pool.mu);
  return atomic_load(&pool.generation);
}

static void* worker(void* arg) {
  int id = (int)(intptr_t)arg;
  uint64_t seen = 0;
  for (;;) {
    seen = await_launch(seen);
    /* f, cdata, num_task were written before the generation (release) and stay until every
     * worker has counted itself out of `pending`. */
    if (run_share(pool.f, pool.cdata, pool.num_task, id, pool.nthreads))
      atomic_store(&pool.failed, 1);
    atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_release);
  }
  return NULL;
}

static int env_int(const char* const* names, int count, long fallback) {
  for (int i = 0; i < count; i++) {
    const char* v = getenv(names[i]);
    if (v && *v) return atoi(v);
  }
  return (int)fallback;
}

static int default_threads(void) {
  const char* names[2] = {"LUTC_NUM_THREADS", "TVM_NUM_THREADS"};
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  int t = env_int(names, 2, n > 0 ? n : 1);
  return t > 0 ? t : 1;
}

/* Choose the number of threads; takes effect only before the first parallel launch. */
void lutc_set_num_threads(int n) {
  pthread_mutex_lock(&pool.mu);
  if (!pool.started && n > 0) pool.nthreads = n;
  pthread_mutex_unlock(&pool.mu);
}

/* Pin worker i (i >= 1) to the i-th CPU this process may use, as TVM's pool does (the launching
 * thread, worker 0, stays free to move): a worker that stays on its core keeps its caches and
 * TLB. Only where there are CPUs enough; LUTC_BIND_THREADS=0 (or TVM_BIND_THREADS=0) leaves all free. */
static void bind_worker(pthread_t th, int i) {
#ifdef __linux__
  const char* names[2] = {"LUTC_BIND_THREADS", "TVM_BIND_THREADS"};
  cpu_set_t allowed, one;
  if (env_int(names, 2, 1) != 1 || sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
  if (CPU_COUNT(&allowed) < pool.nthreads) return;
  for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; cpu++) {
    if (!CPU_ISSET(cpu, &allowed) || seen++ != i) continue;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pthread_setaffinity_np(th, sizeof one, &one);
    return;
  }
#else
  (void)th; (void)i;
#endif
}

static void start_pool(void) { /* called with pool.launch held */
  if (pool.started) return;
  const char* spin[2] = {"LUTC_SPIN_COUNT", "TVM_THREAD_POOL_SPIN_COUNT"};
  int count = env_int(spin, 2, 300000);
  pool.spin_count = count > 0 ? count : 0;
  if (pool.nthreads <= 0) pool.nthreads = default_threads();
  for (int i = 1; i < pool.nthreads; i++) {
    pthread_t th;
    if (pthread_create(&th, NULL, worker, (void*)(intptr_t)i) != 0) { pool.nthreads = i; break; }
    bind_worker(th, i);
    pthread_detach(th);
  }
  pool.started = 1;
}

int lutc_parallel_launch(FTVMParallelLambda f, void* cdata, int num_task) {
  if (pthread_mutex_trylock(&pool.launch) != 0)
    return run_share(f, cdata, num_task > 0 ? num_task : 1, 0, 1) ? -1 : 0;
  start_pool();
  int n = num_task > 0 ? num_task : pool.nthreads; /* 0 means "as many as you have" */
  if (pool.nthreads == 1 || n == 1) {
    int failed = run_share(f, cdata, n, 0, 1);
    pthread_mutex_unlock(&pool.launch);
    return failed ? -1 : 0;
  }
  pool.f = f; pool.cdata = cdata; pool.num_task = n;
  atomic_store(&pool.failed, 0);
  atomic_store(&pool.pending, pool.nthreads - 1);
  pthread_mutex_lock(&pool.mu); /* a worker about to sleep checks the generation under mu */
  atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
  if (pool.sleepers) pthread_cond_broadcast(&pool.work);
  pthread_mutex_unlock(&pool.mu);
  int failed = run_share(f, cdata, n, 0, pool.nthreads); /* this thread is worker 0 */
  while (atomic_load_explicit(&pool.pending, memory_order_acquire) > 0) sched_yield();
  failed |= atomic_load(&pool.failed);
  pthread_mutex_unlock(&pool.launch);
  return failed ? -1 : 0;
}

/* Fill the kernel's backend pointers that nobody has filled yet. */
__attribute__((constructor)) static void lutc_backend_install(void) {
  if (&__TVMBackendParallelLaunch && !__TVMBackendParallelLaunch)
    __TVMBackendParallelLaunch = (void*)lutc_parallel_launch;
  if (&__TVMBackendAllocWorkspace && !__TVMBackendAllocWorkspace)
    __TVMBackendAllocWorkspace = (void*)lutc_workspace_alloc;
  if (&__TVMBackendFreeWorkspace && !__TVMBackendFreeWorkspace)
    __TVMBackendFreeWorkspace = (void*)lutc_workspace_free;
}

#ifdef LUTC_STANDALONE
/* ---- what libtvm_runtime / libtvm_ffi would otherwise provide ---- */
void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int code, int bits) {
  return lutc_workspace_alloc(device_type, device_id, nbytes, code, bits);
}
int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  return lutc_workspace_free(device_type, device_id, ptr);
}
int TVMBackendParallelLaunch(FTVMParallelLambda f, void* cdata, int num_task) {
  return lutc_parallel_launch(f, cdata, num_task);
}
int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv* penv) {
  (void)task_id; (void)penv; /* lutc kernels never synchronize inside a parallel region */
  return 0;
}

static __thread char last_error[1024];

/* A kernel reports a failed check (wrong shape, dtype, ...) here, then returns -1. */
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  size_t used = (size_t)snprintf(last_error, sizeof last_error, "%s: ", kind ? kind : "Error");
  for (int32_t i = 0; i < n && used < sizeof last_error; i++)
    if (parts[i]) used += (size_t)snprintf(last_error + used, sizeof last_error - used, "%s", parts[i]);
}

/* The message of the last failed kernel call on this thread ("" if none). */
const char* lutc_last_error(void) { return last_error; }
#endif
