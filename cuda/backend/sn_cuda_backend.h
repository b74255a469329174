/*
 * sn_cuda_backend.h - the one entry point of libsensorium_cuda.so's backend, and the table of
 * core functions the engine hands it.
 *
 * The library is dlopen'ed by core/src/backend_loader.c. The core is built with hidden
 * visibility (and the CLI links it statically), so the library cannot call sn_model_* or
 * sn_fail itself: the loader passes those as function pointers, and the library's backend
 * reads the model only through them. The same table lets a program that has no engine core
 * (the GPU test and the benchmark, which build on a bare GPU machine) drive the backend with
 * an in-memory model.
 */
#ifndef SN_CUDA_BACKEND_H
#define SN_CUDA_BACKEND_H

#include <stdarg.h>
#include <stdint.h>

/* The core headers are C without extern "C" guards. */
#ifdef __cplusplus
extern "C" {
#endif
#include "backend.h"

/* Bumped whenever sn_cuda_host, sn_backend_ops or the structs they pass change. */
#define SN_CUDA_BACKEND_ABI 3

typedef struct sn_cuda_host {
    uint32_t abi;  /* SN_CUDA_BACKEND_ABI */
    uint32_t size; /* sizeof(sn_cuda_host) */
    const sn_model_config *(*model_config)(const sn_model *m);
    const sn_tensor *(*model_embed)(const sn_model *m);
    const sn_tensor *(*model_norm)(const sn_model *m);
    const sn_tensor *(*model_lm_head)(const sn_model *m);
    const sn_layer_weights *(*model_layer)(const sn_model *m, int32_t layer);
    const float *(*model_rope_factors)(const sn_model *m); /* may return NULL */
    void (*convert_to_f32)(sn_dtype dtype, const void *src, float *dst, size_t n);
    size_t (*dtype_size)(sn_dtype dtype);
    int32_t (*dtype_block_elems)(sn_dtype dtype);
    /* Records the message for sn_errmsg() and returns status (the core's sn_failv). */
    sn_status (*failv)(sn_status status, const char *fmt, va_list ap);
    /* One log line (may be NULL). */
    void (*log)(int level, const char *msg);
} sn_cuda_host;

/* The "cuda" backend, or NULL when abi or host->abi/size do not match this library (a stale
 * libsensorium_cuda.so next to a newer core). host must outlive every backend opened. */
typedef const sn_backend_ops *(*sn_cuda_backend_entry)(uint32_t abi, const sn_cuda_host *host);
#define SN_CUDA_BACKEND_ENTRY "sn_cuda_backend_ops"
/* The entry itself, for programs that link the library directly (tests, benchmarks); the
 * engine looks it up with dlsym. */
__attribute__((visibility("default"))) const sn_backend_ops *sn_cuda_backend_ops(uint32_t abi, const sn_cuda_host *host);

/* The device probe of device.cu: the number of usable GPUs (0 with the reason in msg), or -1
 * on an error (message in msg). */
typedef int (*sn_cuda_probe_fn)(char *msg, size_t msg_len);
#define SN_CUDA_PROBE_ENTRY "sn_cuda_probe"

#ifdef __cplusplus
}
#endif

#endif /* SN_CUDA_BACKEND_H */
