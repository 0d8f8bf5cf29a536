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
 * launch that finds the pool busy runs its tasks on the calling thread).
 *
 * Build: cc -O2 -c lutc_backend.c -pthread [-DLUTC_STANDALONE] [-fPIC]
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

/* Weak: absent (address NULL) when only C-source kernels are linked. */
extern void* __TVMBackendParallelLaunch __attribute__((weak));
extern void* __TVMBackendAllocWorkspace __attribute__((weak));
extern void* __TVMBackendFreeWorkspace __attribute__((weak));

/* ---- workspace ---- */
void* lutc_workspace_alloc(int device_type, int device_id, uint64_t nbytes, int code, int bits) {
  (void)device_type; (void)device_id; (void)code; (void)bits;
  size_t n = (size_t)((nbytes + 63) / 64 * 64);
  return aligned_alloc(64, n ? n : 64); /* kernels assume 64-byte-aligned buffers */
}

int lutc_workspace_free(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  free(ptr);
  return 0;
}

/* ---- thread pool ---- */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t work, done;
  pthread_mutex_t launch; /* one launch at a time */
  int nthreads, started;
  uint64_t generation;
  FTVMParallelLambda f;
  void* cdata;
  int num_task, pending, failed;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, NULL, NULL, 0, 0, 0};

static int run_share(FTVMParallelLambda f, void* cdata, int num_task, int first, int stride) {
  TVMParallelGroupEnv env = {NULL, num_task};
  int failed = 0;
  for (int t = first; t < num_task; t += stride)
    if (f(t, &env, cdata) != 0) failed = 1;
  return failed;
}

static void* worker(void* arg) {
  int id = (int)(intptr_t)arg;
  uint64_t seen = 0;
  for (;;) {
    pthread_mutex_lock(&pool.mu);
    while (pool.generation == seen) pthread_cond_wait(&pool.work, &pool.mu);
    seen = pool.generation;
    FTVMParallelLambda f = pool.f;
    void* cdata = pool.cdata;
    int num_task = pool.num_task, nthreads = pool.nthreads;
    pthread_mutex_unlock(&pool.mu);
    int failed = run_share(f, cdata, num_task, id, nthreads);
    pthread_mutex_lock(&pool.mu);
    pool.failed |= failed;
    if (--pool.pending == 0) pthread_cond_signal(&pool.done);
    pthread_mutex_unlock(&pool.mu);
  }
  return NULL;
}

static int default_threads(void) {
  const char* names[2] = {"LUTC_NUM_THREADS", "TVM_NUM_THREADS"};
  for (int i = 0; i < 2; i++) {
    const char* v = getenv(names[i]);
    if (v && atoi(v) > 0) return atoi(v);
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

/* Choose the number of threads; takes effect only before the first parallel launch. */
void lutc_set_num_threads(int n) {
  pthread_mutex_lock(&pool.mu);
  if (!pool.started && n > 0) pool.nthreads = n;
  pthread_mutex_unlock(&pool.mu);
}

static void start_pool(void) { /* called with pool.launch held */
  if (pool.started) return;
  if (pool.nthreads <= 0) pool.nthreads = default_threads();
  for (int i = 1; i < pool.nthreads; i++) {
    pthread_t th;
    if (pthread_create(&th, NULL, worker, (void*)(intptr_t)i) != 0) { pool.nthreads = i; break; }
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
  pthread_mutex_lock(&pool.mu);
  pool.f = f; pool.cdata = cdata; pool.num_task = n;
  pool.pending = pool.nthreads - 1; pool.failed = 0;
  pool.generation++;
  pthread_cond_broadcast(&pool.work);
  pthread_mutex_unlock(&pool.mu);
  int failed = run_share(f, cdata, n, 0, pool.nthreads); /* this thread is worker 0 */
  pthread_mutex_lock(&pool.mu);
  while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.mu);
  failed |= pool.failed;
  pthread_mutex_unlock(&pool.mu);
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
