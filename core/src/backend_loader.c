/*
 * backend_loader.c - picks the compute backend the engine runs on: the CPU backend (always
 * built in), or the CUDA backend from libsensorium_cuda.so, loaded with dlopen only when the
 * library is found and its probe (cuda/device.cu) sees a GPU.
 *
 * Stage of the pipeline: engine open, before any step. "cpu" opens the CPU backend; "cuda"
 * opens the CUDA backend or fails saying why (`--backend cuda: no CUDA device (...)`);
 * "auto" tries CUDA and otherwise runs on the CPU, logging exactly one line that says why.
 *
 * Without an NVIDIA driver node (/dev/nvidiactl, or /dev/dxg under WSL) the library is not
 * even loaded, unless $SENSORIUM_CUDA_LIB names it. Otherwise it is looked for at
 * $SENSORIUM_CUDA_LIB, then next to the binary that holds this code (libsensorium.so, or the CLI that links the core statically) and in ../cuda and ../lib
 * from there (a build tree keeps it in build/cuda, the CLI in build/bin), then on the
 * loader's search path. The core is built with hidden symbols, so the library gets the core
 * functions it needs as a table (cuda/backend/sn_cuda_backend.h). A loaded library stays
 * loaded for the life of the process (unloading the CUDA runtime mid-process is not safe).
 */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "plugin_impl.h"
#include "sn_cuda_backend.h"

static void cuda_log(int level, const char *msg) { sn_log_emit((sn_log_level)level, "cuda", msg); }

static const sn_cuda_host cuda_host = {
    .abi = SN_CUDA_BACKEND_ABI,
    .size = sizeof(sn_cuda_host),
    .model_config = sn_model_config_of,
    .model_embed = sn_model_embed,
    .model_norm = sn_model_norm,
    .model_lm_head = sn_model_lm_head,
    .model_layer = sn_model_layer,
    .model_rope_factors = sn_model_rope_factors,
    .convert_to_f32 = sn_convert_to_f32,
    .dtype_size = sn_dtype_size,
    .dtype_block_elems = sn_dtype_block_elems,
    .failv = sn_failv,
    .log = cuda_log,
};

/* dlopen of the first candidate that loads; why gets every failure when none does. */
static void *open_library(char *why, size_t why_len)
{
    char paths[4][4096];
    int n = 0;
    const char *env = getenv("SENSORIUM_CUDA_LIB");
    if (env && *env) {
        void *h = dlopen(env, RTLD_NOW | RTLD_LOCAL);
        if (!h)
            snprintf(why, why_len, "no CUDA library (SENSORIUM_CUDA_LIB=%.400s: %.400s)", env, dlerror());
        return h;
    }
    Dl_info info;
    if (dladdr((void *)&sn_backend_open_named, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        int dir_len = slash ? (int)(slash - info.dli_fname) : 1;
        const char *dir = slash ? info.dli_fname : ".";
        snprintf(paths[n++], sizeof paths[0], "%.*s/libsensorium_cuda.so", dir_len, dir);
        snprintf(paths[n++], sizeof paths[0], "%.*s/../cuda/libsensorium_cuda.so", dir_len, dir);
        snprintf(paths[n++], sizeof paths[0], "%.*s/../lib/libsensorium_cuda.so", dir_len, dir);
    }
    snprintf(paths[n++], sizeof paths[0], "libsensorium_cuda.so");
    for (int i = 0; i < n; i++) {
        void *h = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
        if (h)
            return h;
        if (i == n - 1)
            snprintf(why, why_len, "no CUDA library (libsensorium_cuda.so not next to %.400s, nor on the library path; "
                     "set SENSORIUM_CUDA_LIB: %.300s)", n > 1 ? paths[0] : "this binary", dlerror());
    }
    return NULL;
}

/* The CUDA backend's ops, or NULL and why (a phrase: "no CUDA device (...)"). Decided once
 * per process. */
static const sn_backend_ops *cuda_backend(char *why, size_t why_len)
{
    static int decided;
    static const sn_backend_ops *ops;
    static char reason[1024];
    if (!decided) {
        decided = 1;
        /* No NVIDIA driver node: no GPU, and no reason to load the CUDA runtime into this
         * process (which costs time, and memory that leak checkers would report). */
        const char *lib = getenv("SENSORIUM_CUDA_LIB");
        if (!(lib && *lib) && access("/dev/nvidiactl", F_OK) != 0 && access("/dev/dxg", F_OK) != 0) {
            snprintf(reason, sizeof reason, "no CUDA device (no NVIDIA driver: /dev/nvidiactl is missing)");
            snprintf(why, why_len, "%s", reason);
            return NULL;
        }
        void *h = open_library(reason, sizeof reason);
        if (h) {
            sn_cuda_probe_fn probe = (sn_cuda_probe_fn)dlsym(h, SN_CUDA_PROBE_ENTRY);
            sn_cuda_backend_entry entry = (sn_cuda_backend_entry)dlsym(h, SN_CUDA_BACKEND_ENTRY);
            char pmsg[768] = "";
            int count = probe ? probe(pmsg, sizeof pmsg) : -1;
            if (!probe || !entry)
                snprintf(reason, sizeof reason, "no CUDA library (libsensorium_cuda.so lacks %s)",
                         probe ? SN_CUDA_BACKEND_ENTRY : SN_CUDA_PROBE_ENTRY);
            else if (count <= 0)
                snprintf(reason, sizeof reason, "no CUDA device (%.700s)", pmsg[0] ? pmsg : "the probe found none");
            else if (!(ops = entry(SN_CUDA_BACKEND_ABI, &cuda_host)))
                snprintf(reason, sizeof reason, "no CUDA library (libsensorium_cuda.so is from another version: "
                         "backend ABI %d expected; rebuild it)", SN_CUDA_BACKEND_ABI);
        }
    }
    snprintf(why, why_len, "%s", reason);
    return ops;
}

/* One backend, or opts->dp replicas of it. */
static sn_status open_ops(const sn_backend_ops *ops, const sn_model *model, const sn_backend_opts *opts,
                          sn_backend **out)
{
    if (opts->dp > 1)
        return sn_backend_dp_open(ops, model, opts, ops != &sn_cpu_backend, out);
    return ops->open(model, opts, out);
}

sn_status sn_backend_open_named(const char *name, const sn_model *model, const sn_backend_opts *opts,
                                sn_backend **out)
{
    *out = NULL;
    if (strcmp(name, "cpu") == 0)
        return open_ops(&sn_cpu_backend, model, opts, out);
    if (strcmp(name, "cuda") != 0 && strcmp(name, "auto") != 0)
        return sn_fail(SN_ERR_INVALID_ARG, "unknown backend '%s' (auto, cpu or cuda)", name);
    const int required = strcmp(name, "cuda") == 0;
    char why[1024];
    const sn_backend_ops *ops = cuda_backend(why, sizeof why);
    char line[1400];
    if (ops) {
        sn_status st = open_ops(ops, model, opts, out);
        if (st == SN_OK || required)
            return st;
        snprintf(line, sizeof line, "backend auto: the CUDA backend did not open (%.1200s); running on the CPU", sn_errmsg());
        sn_clear_error();
    } else {
        if (required)
            return sn_fail(SN_ERR_UNSUPPORTED, "--backend cuda: %s; use --backend cpu or auto", why);
        snprintf(line, sizeof line, "backend auto: %.1200s; running on the CPU", why);
    }
    sn_log_emit(SN_LOG_INFO, "engine", line);
    return open_ops(&sn_cpu_backend, model, opts, out);
}
