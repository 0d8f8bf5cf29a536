/* lutc_backend.h: what lutc_backend.c provides to a host, and the TVM backend types it shares
 * with the kernels (written by lutc.export next to every CPU kernel; Apache-2.0).
 *
 * A host that runs a kernel's parallel loops on its own threads assigns its launcher to the
 * kernel's weak hook after start-up, where the kernel has one (a kernel with no parallel loop
 * does not):   if (&__TVMBackendParallelLaunch) __TVMBackendParallelLaunch = (void*)my_launch;
 * (examples/ggml/lutc_in_ggml.c maps them onto ggml's thread pool). The launcher calls
 * f(task_id, &env, cdata) for task_id 0 .. env.num_task - 1, concurrently, and returns 0.
 */
#ifndef LUTC_BACKEND_H_
#define LUTC_BACKEND_H_

#include <stdint.h>

/* TVM's parallel-launch ABI (tvm/runtime/c_backend_api.h) */
typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

/* The kernels' hooks: weak, NULL until lutc_backend.c (or libtvm_runtime) fills them. */
extern void* __TVMBackendParallelLaunch __attribute__((weak));
extern void* __TVMBackendAllocWorkspace __attribute__((weak));
extern void* __TVMBackendFreeWorkspace __attribute__((weak));

/* lutc_backend.c's implementations (what it assigns to the hooks) */
int lutc_parallel_launch(FTVMParallelLambda f, void* cdata, int num_task);
void* lutc_workspace_alloc(int device_type, int device_id, uint64_t nbytes, int code, int bits);
int lutc_workspace_free(int device_type, int device_id, void* ptr);
/* Threads of its pool; takes effect only before the first parallel launch. */
void lutc_set_num_threads(int n);
/* The last error a kernel reported (built with -DLUTC_STANDALONE: no libtvm_ffi). */
const char* lutc_last_error(void);

#endif /* LUTC_BACKEND_H_ */
