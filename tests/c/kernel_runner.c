/* Runs a lutc kernel object (LLVM codegen, any architecture) without libtvm_runtime.
 *
 * Usage: kernel_runner CALL_FILE OUT_FILE
 * CALL_FILE: int32 nargs, then per argument: int32 dtype code (DLDataTypeCode), int32 bits,
 * int32 ndim, int64 shape[ndim], then the data. The last argument is the output: its data is
 * written to OUT_FILE after one call of __tvm_ffi_main. Buffers are 64-byte aligned, as
 * TVM's code assumes. Built statically for aarch64 and run under qemu-aarch64 by the tests.
 *
 * The object defines weak function-pointer slots that libtvm_runtime normally fills: a host
 * must provide a parallel launcher (serial here: one task runs every iteration) and a
 * workspace allocator (the kernel's table buffers come from it), and the error hook.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tvm/ffi/c_api.h>

typedef struct { void* sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
extern void* __TVMBackendParallelLaunch;
extern void* __TVMBackendAllocWorkspace;
extern void* __TVMBackendFreeWorkspace;
int __tvm_ffi_main(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result);

static int launch_serial(FTVMParallelLambda f, void* cdata, int num_task) {
  TVMParallelGroupEnv env = {0, 1};
  (void)num_task;
  return f(0, &env, cdata);
}
static void* ws_alloc(int dev_type, int dev_id, uint64_t n, int code, int bits) {
  (void)dev_type; (void)dev_id; (void)code; (void)bits;
  return aligned_alloc(64, (n + 63) / 64 * 64);
}
static int ws_free(int dev_type, int dev_id, void* p) { (void)dev_type; (void)dev_id; free(p); return 0; }
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  fprintf(stderr, "kernel error %s: ", kind);
  for (int i = 0; i < n; i++) fputs(parts[i], stderr);
  fputc('\n', stderr);
}

static void read_exact(FILE* f, void* p, size_t n) {
  if (fread(p, 1, n, f) != n) { fprintf(stderr, "call file is truncated\n"); exit(2); }
}

int main(int argc, char** argv) {
  if (argc != 3) { fprintf(stderr, "usage: %s CALL_FILE OUT_FILE\n", argv[0]); return 2; }
  FILE* f = fopen(argv[1], "rb");
  if (!f) { perror(argv[1]); return 2; }
  int32_t nargs;
  read_exact(f, &nargs, 4);
  DLTensor* t = calloc(nargs, sizeof(DLTensor));
  TVMFFIAny* a = calloc(nargs, sizeof(TVMFFIAny));
  size_t out_bytes = 0;
  for (int i = 0; i < nargs; i++) {
    int32_t head[3];
    read_exact(f, head, sizeof head);
    int64_t* shape = malloc(sizeof(int64_t) * head[2]);
    read_exact(f, shape, sizeof(int64_t) * head[2]);
    size_t n = (size_t)head[1] / 8;
    for (int d = 0; d < head[2]; d++) n *= (size_t)shape[d];
    void* data = aligned_alloc(64, (n + 63) / 64 * 64);
    read_exact(f, data, n);
    t[i] = (DLTensor){data, {kDLCPU, 0}, head[2], {(uint8_t)head[0], (uint8_t)head[1], 1}, shape, NULL, 0};
    a[i].type_index = kTVMFFIDLTensorPtr;
    a[i].v_ptr = &t[i];
    out_bytes = n;
  }
  fclose(f);
  __TVMBackendParallelLaunch = (void*)launch_serial;
  __TVMBackendAllocWorkspace = (void*)ws_alloc;
  __TVMBackendFreeWorkspace = (void*)ws_free;
  TVMFFIAny ret;
  memset(&ret, 0, sizeof ret);
  int rc = __tvm_ffi_main(NULL, a, nargs, &ret);
  if (rc != 0) { fprintf(stderr, "kernel returned %d\n", rc); return 1; }
  FILE* o = fopen(argv[2], "wb");
  if (!o || fwrite(t[nargs - 1].data, 1, out_bytes, o) != out_bytes) { perror(argv[2]); return 2; }
  fclose(o);
  return 0;
}
