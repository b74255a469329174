/*
 * cuda_backend.cu - the CUDA backend: core/src/backend.h's interface on one or more GPUs, a
 * Llama forward pass over a ragged batch against a paged bf16 KV cache, with the kernels of
 * cuda/kernels/ and cuBLAS GEMMs. Exported from libsensorium_cuda.so through the one entry
 * point sn_cuda_backend_ops (sn_cuda_backend.h); core/src/backend_loader.c loads it.
 *
 * Data flow of forward() on each GPU (the same order as cpu_backend.c's cpu_forward):
 *   host: check and pack the batch (cuda_plan.c), copy the metadata and any new block-table
 *         entries to the device;
 *   embed (f32 residual x) -> per layer: RMSNorm (adds the previous partial into x) -> fused
 *   QKV GEMM (bf16 out) -> RoPE on q and k -> KV store -> attention (decode kernel when every
 *   run is one token, else the prefill kernel for all runs) -> output GEMM (f32 partial) ->
 *   all-reduce (NCCL, where cpu_backend.c calls sum_partials) -> RMSNorm (+ partial) ->
 *   fused gate/up GEMM -> SwiGLU -> down GEMM (f32 partial) -> all-reduce ->
 *   final RMSNorm (+ partial) -> gather the rows that want logits -> LM head GEMM (f32, GPU 0)
 *   -> logits to the host.
 * GEMMs are cublasGemmEx with bf16 operands and CUBLAS_COMPUTE_32F (fp32 accumulation).
 *
 * Weights. Uploaded once at open as bf16: F32, F16 and BF16 tensors directly (round to
 * nearest even); GGUF block types (Q8_0, Q4_0, Q4_1) are dequantised on the host with the
 * core's sn_convert_to_f32 and then rounded to bf16, so a quantised model runs at bf16 size
 * and speed, not as quantised kernels. Per layer and rank the weights are fused: Q, K and V
 * rows of the rank's heads in one (nh + 2 nkv) * head_dim x hidden matrix, gate and up rows
 * in one 2 nf x hidden matrix; the output and down projections are the rank's column slices,
 * stored contiguously. Norm weights stay f32 (the RMSNorm kernel reads f32).
 *
 * Memory. open() allocates everything: weights, activations for max_batch_tokens tokens,
 * logits for max_seqs rows, attention and cuBLAS workspaces, the metadata and block-table
 * mirrors, then the KV pool from the budget (opts->kv_bytes covers all ranks, as the CPU
 * backend's budget covers all shards; 0 means room for max_seqs full contexts, capped to
 * what fits in the GPU's free memory after everything else, less 512 MiB of headroom for
 * graphs and the driver). forward() allocates nothing (captured graphs are instantiated on
 * first use of a batch shape, which is the driver's allocation, not ours).
 *
 * Block tables. The allocator is core/src/kv_cache.c itself (compiled into this library):
 * the same tables as the CPU backend, mirrored on every GPU as a (max_seqs,
 * max_blocks_per_seq) int32 array; forward() uploads the entries that kv_reserve added
 * since the last step (the host tables are page-locked with cudaHostRegister).
 *
 * CUDA graphs. A decode-only batch (every run one token, every run wants logits) runs as a
 * graph keyed by (batch size, power-of-two context bucket): run eagerly the first time,
 * captured the second, replayed from then on. The per-step metadata is copied into fixed
 * device buffers before the launch (outside the graph), so the graph's kernels read the
 * current step's values at the same addresses. SN_CUDA_GRAPHS=0 turns graphs off; they are also off whenever NCCL is in use
 * (tp > 1 or SN_CUDA_NCCL=1), where every step runs eagerly.
 *
 * Data parallelism (core/src/backend_dp.c). Each replica is a backend of its own on GPUs
 * device_first .. device_first + tp - 1, and replicas' forward() calls run at once on threads
 * of their own: every per-rank call first makes its rank's device current (a thread's current
 * device is its own), and graphs are captured in cudaStreamCaptureModeThreadLocal, so that
 * another thread's cudaMalloc or synchronous copy does not invalidate a capture.
 *
 * Tensor parallelism. --tp N uses N consecutive GPUs from device_first, one thread driving
 * all of them, one NCCL communicator per GPU (ncclCommInitAll). Rank s holds exactly the
 * heads and FFN columns of cpu_backend.c's shard s (tp_split.h), keeps a full copy of the
 * residual stream, and the f32 partials of the output and down projections are summed with
 * ncclAllReduce (grouped over the ranks). The LM head runs on rank 0 only. With tp = 1,
 * SN_CUDA_NCCL=1 routes the partials through a one-rank NCCL all-reduce, to test that path on
 * one GPU.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "backend_check.h"
#include "cuda_plan.h"
#include "rope.h"
#include "sn_cuda_backend.h"
#include "sn_cuda_kernels.h"
#include "tp_split.h"

#define SN_CUDA_EXPORT extern "C" __attribute__((visibility("default")))

static const sn_cuda_host *g_host; /* set by sn_cuda_backend_ops; outlives every backend */

/* kv_cache.c and cuda_plan.c (compiled into this library) report errors through sn_fail:
 * forward to the core's, so that sn_errmsg() shows them. */
extern "C" sn_status sn_fail(sn_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sn_status st = g_host->failv(status, fmt, ap);
    va_end(ap);
    return st;
}

static sn_status failf(sn_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static sn_status failf(sn_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sn_status st = g_host->failv(status, fmt, ap);
    va_end(ap);
    return st;
}

static void log_line(int level, const char *msg)
{
    if (g_host->log)
        g_host->log(level, msg);
}

/* Teardown and error-path clean-up: nothing is left to undo when these fail, so a failure
 * is logged (statement, file, line) and the rest of the teardown goes on. */
static void teardown_failed(const char *stmt, const char *file, int line, const char *err)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s:%d: %s: %s (during teardown)", file, line, stmt, err);
    log_line(SN_LOG_WARN, msg);
}
#define TEARDOWN_CUDA(stmt)                                                                    \
    do {                                                                                       \
        cudaError_t td_err_ = (stmt);                                                          \
        if (td_err_ != cudaSuccess)                                                            \
            teardown_failed(#stmt, __FILE__, __LINE__, cudaGetErrorString(td_err_));           \
    } while (0)

/* ---------------------------------------------------------------------------------------- */
/* State                                                                                    */
/* ---------------------------------------------------------------------------------------- */

typedef struct gpu_layer {
    sn_bf16 *wqkv;      /* ((nh + 2 nkv) * hd, hidden) */
    sn_bf16 *wo;        /* (hidden, nh * hd) */
    sn_bf16 *wgu;       /* (2 nf, hidden): gate rows, then up rows */
    sn_bf16 *wdown;     /* (hidden, nf) */
    float *attn_norm;   /* (hidden) */
    float *ffn_norm;    /* (hidden) */
} gpu_layer;

typedef struct graph_entry {
    sn_cuda_graph_key key;
    cudaGraphExec_t exec;
} graph_entry;

/* One rank: everything on one GPU. Owned by the backend; freed in close(). */
typedef struct gpu_rank {
    int dev;
    sn_tp_slice sl;
    int32_t qkv_w;            /* (nh + 2 nkv) * hd: the row width of qkv */
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;            /* cuBLAS workspace (set so that graph capture allocates nothing) */
    gpu_layer *layers;        /* (n_layers) host array of device pointers */
    sn_bf16 *embed;           /* (vocab, hidden) */
    sn_bf16 *lm_head;         /* (vocab, hidden); == embed when tied; rank 0 only */
    float *final_norm;        /* (hidden) */
    float *inv_freq;          /* (head_dim / 2) */
    sn_bf16 *k_cache;         /* (layer, block, nkv, 16, head_dim) */
    sn_bf16 *v_cache;         /* (layer, block, nkv, 16, head_dim) */
    float *x;                 /* (T, hidden) residual stream */
    float *partial;           /* (T, hidden) this rank's output/down projection, then the sum */
    sn_bf16 *xn;              /* (T, hidden) normed activations */
    sn_bf16 *qkv;             /* (T, qkv_w) */
    sn_bf16 *att;             /* (T, nh * hd) */
    sn_bf16 *gu;              /* (T, 2 nf) */
    sn_bf16 *act;             /* (T, nf) */
    sn_bf16 *last;            /* (S, hidden) rows that want logits */
    float *logits;            /* (S, vocab) rank 0 only */
    /* forward_sample, rank 0 only: the rows' masks, penalised ids, parameters and tokens */
    uint64_t *s_allowed, *s_seen; /* (S, vocab words) */
    sn_cuda_sample_params *s_params; /* (S) */
    int32_t *s_tokens;        /* (S) */
    void *sample_ws;
    size_t sample_ws_bytes;
    int32_t *meta;            /* (layout.total) the step's metadata */
    int32_t *tables;          /* (max_seqs, max_blocks_per_seq) block tables */
    void *attn_ws;            /* decode attention workspace */
    size_t attn_ws_bytes;
#ifndef SN_CUDA_NO_NCCL
    ncclComm_t comm;          /* NULL unless NCCL is in use */
#endif
} gpu_rank;

typedef struct cuda_backend {
    sn_backend base;
    const sn_model *model;
    sn_model_config cfg;
    int32_t tp, max_tokens, max_seqs;
    int use_nccl, graphs;
    int32_t n_blocks;
    size_t layer_kv_elems;    /* elements of one layer's K (or V) pool on one rank */
    sn_kv_alloc kv;
    int tables_registered;    /* kv.tables is page-locked */
    int32_t *uploaded;        /* (max_seqs) block-table entries already on the devices */
    gpu_rank *ranks;          /* (tp) */
    sn_cuda_meta_layout lay;
    int32_t *meta_host;       /* (lay.total) pinned */
    float *logits_host;       /* (max_seqs, vocab) pinned */
    uint64_t *masks_host;     /* (2, max_seqs, vocab words) pinned: forward_sample's allowed, seen */
    sn_cuda_sample_params *sparams_host; /* (max_seqs) pinned */
    int32_t *tokens_host;     /* (max_seqs) pinned */
    graph_entry *graph_cache; /* (SN_CUDA_MAX_GRAPHS) rank 0's decode graphs */
    int32_t n_graphs;
    int32_t max_ctx_bucket;   /* the graph bucket of max_positions: sizes the decode workspace */
} cuda_backend;

#define SN_CUDA_MAX_GRAPHS 64
#define BLAS_WS_BYTES ((size_t)32 << 20)
#define HEADROOM_BYTES ((size_t)512 << 20)

extern "C" const sn_backend_ops sn_cuda_backend_ops_v1;

static_assert(SN_CUDA_TOKEN_NONFINITE == SN_TOKEN_NONFINITE, "the kernel's and the engine's NaN-row token agree");

/* ---------------------------------------------------------------------------------------- */
/* Weights                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static inline sn_bf16 f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN stays NaN */
        return (sn_bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (sn_bf16)(u >> 16);
}

/* Host scratch for one upload: a bf16 slice and one f32 row. Owned by open(); freed there. */
typedef struct staging {
    sn_bf16 *bf;
    size_t bf_elems;
    float *row;
    size_t row_elems;
} staging;

/* Copies rows [r0, r0+nr) x columns [c0, c0+nc) of t (a (rows, cols) matrix) as bf16 to
 * dst + dst_row0 * nc on the current device (dst has nc columns). */
static int upload_slice(staging *sg, const sn_tensor *t, int64_t cols, int64_t r0, int64_t nr, int64_t c0,
                        int64_t nc, sn_bf16 *dst, int64_t dst_row0, char *msg, size_t msg_len)
{
    const size_t need = (size_t)nr * (size_t)nc;
    if (need > sg->bf_elems || (size_t)cols > sg->row_elems) {
        snprintf(msg, msg_len, "%s: staging too small (internal error)", t->name);
        return -1;
    }
    const int32_t be = g_host->dtype_block_elems(t->dtype);
    const size_t row_bytes = (size_t)(cols / be) * g_host->dtype_size(t->dtype);
    for (int64_t r = 0; r < nr; r++) {
        const char *src = (const char *)t->data + (size_t)(r0 + r) * row_bytes;
        sn_bf16 *o = sg->bf + (size_t)r * (size_t)nc;
        if (t->dtype == SN_DTYPE_BF16) {
            memcpy(o, (const uint16_t *)src + c0, (size_t)nc * sizeof *o);
        } else if (t->dtype == SN_DTYPE_F32) {
            const float *f = (const float *)src + c0;
            for (int64_t j = 0; j < nc; j++)
                o[j] = f32_to_bf16(f[j]);
        } else {
            g_host->convert_to_f32(t->dtype, src, sg->row, (size_t)cols);
            for (int64_t j = 0; j < nc; j++)
                o[j] = f32_to_bf16(sg->row[c0 + j]);
        }
    }
    CUDA_CHECK(cudaMemcpy(dst + (size_t)dst_row0 * (size_t)nc, sg->bf, need * sizeof(sn_bf16), cudaMemcpyHostToDevice));
    return 0;
}

static int upload_f32(staging *sg, const sn_tensor *t, int64_t n, float *dst, char *msg, size_t msg_len)
{
    if ((size_t)n > sg->row_elems) {
        snprintf(msg, msg_len, "%s: staging too small (internal error)", t->name);
        return -1;
    }
    g_host->convert_to_f32(t->dtype, t->data, sg->row, (size_t)n);
    CUDA_CHECK(cudaMemcpy(dst, sg->row, (size_t)n * sizeof(float), cudaMemcpyHostToDevice));
    return 0;
}

static int dmalloc(void **p, size_t bytes, char *msg, size_t msg_len)
{
    CUDA_CHECK(cudaMalloc(p, bytes ? bytes : 16));
    return 0;
}
#define DMALLOC(ptr, bytes)                                                \
    do {                                                                   \
        if (dmalloc((void **)&(ptr), (bytes), msg, msg_len))               \
            return -1;                                                     \
    } while (0)

/* Uploads rank g's weights (the current device is g's). */
static int upload_weights(cuda_backend *b, gpu_rank *g, staging *sg, char *msg, size_t msg_len)
{
    const sn_model_config *c = &b->cfg;
    const int64_t H = c->hidden, hd = c->head_dim, I = c->intermediate, V = c->vocab_size;
    const sn_tp_slice *s = &g->sl;
    for (int32_t l = 0; l < c->n_layers; l++) {
        const sn_layer_weights *w = g_host->model_layer(b->model, l);
        gpu_layer *gl = &g->layers[l];
        DMALLOC(gl->wqkv, (size_t)g->qkv_w * H * sizeof(sn_bf16));
        DMALLOC(gl->wo, (size_t)H * s->nh * hd * sizeof(sn_bf16));
        DMALLOC(gl->wgu, (size_t)2 * s->nf * H * sizeof(sn_bf16));
        DMALLOC(gl->wdown, (size_t)H * s->nf * sizeof(sn_bf16));
        DMALLOC(gl->attn_norm, (size_t)H * sizeof(float));
        DMALLOC(gl->ffn_norm, (size_t)H * sizeof(float));
        if (upload_slice(sg, w->wq, H, (int64_t)s->h0 * hd, (int64_t)s->nh * hd, 0, H, gl->wqkv, 0, msg, msg_len) ||
            upload_slice(sg, w->wk, H, (int64_t)s->kv0 * hd, (int64_t)s->nkv * hd, 0, H, gl->wqkv,
                         (int64_t)s->nh * hd, msg, msg_len) ||
            upload_slice(sg, w->wv, H, (int64_t)s->kv0 * hd, (int64_t)s->nkv * hd, 0, H, gl->wqkv,
                         (int64_t)(s->nh + s->nkv) * hd, msg, msg_len) ||
            upload_slice(sg, w->wo, (int64_t)c->n_heads * hd, 0, H, (int64_t)s->h0 * hd, (int64_t)s->nh * hd, gl->wo, 0,
                         msg, msg_len) ||
            upload_slice(sg, w->w_gate, H, s->f0, s->nf, 0, H, gl->wgu, 0, msg, msg_len) ||
            upload_slice(sg, w->w_up, H, s->f0, s->nf, 0, H, gl->wgu, s->nf, msg, msg_len) ||
            upload_slice(sg, w->w_down, I, 0, H, s->f0, s->nf, gl->wdown, 0, msg, msg_len) ||
            upload_f32(sg, w->attn_norm, H, gl->attn_norm, msg, msg_len) ||
            upload_f32(sg, w->ffn_norm, H, gl->ffn_norm, msg, msg_len))
            return -1;
    }
    const sn_tensor *embed = g_host->model_embed(b->model), *lm = g_host->model_lm_head(b->model);
    DMALLOC(g->embed, (size_t)V * H * sizeof(sn_bf16));
    DMALLOC(g->final_norm, (size_t)H * sizeof(float));
    /* The embedding in slices of the staging buffer's size (it holds a layer's largest). */
    const int64_t chunk = (int64_t)(sg->bf_elems / (size_t)H);
    for (int64_t r0 = 0; r0 < V; r0 += chunk) {
        const int64_t nr = V - r0 < chunk ? V - r0 : chunk;
        if (upload_slice(sg, embed, H, r0, nr, 0, H, g->embed, r0, msg, msg_len))
            return -1;
    }
    if (g == &b->ranks[0]) {
        if (lm == embed || lm->data == embed->data) {
            g->lm_head = g->embed;
        } else {
            DMALLOC(g->lm_head, (size_t)V * H * sizeof(sn_bf16));
            for (int64_t r0 = 0; r0 < V; r0 += chunk) {
                const int64_t nr = V - r0 < chunk ? V - r0 : chunk;
                if (upload_slice(sg, lm, H, r0, nr, 0, H, g->lm_head, r0, msg, msg_len))
                    return -1;
            }
        }
    }
    return upload_f32(sg, g_host->model_norm(b->model), H, g->final_norm, msg, msg_len);
}

/* ---------------------------------------------------------------------------------------- */
/* Open and close                                                                           */
/* ---------------------------------------------------------------------------------------- */

static int free_rank(gpu_rank *g, int32_t n_layers, char *msg, size_t msg_len)
{
    CUDA_CHECK(cudaSetDevice(g->dev));
    /* Users of the buffers first: the communicator and the cuBLAS handle (which holds blas_ws
     * as its workspace) go before any buffer is freed, the stream they run on last. */
#ifndef SN_CUDA_NO_NCCL
    if (g->comm) {
        ncclResult_t nr = ncclCommDestroy(g->comm);
        if (nr != ncclSuccess)
            teardown_failed("ncclCommDestroy(g->comm)", __FILE__, __LINE__, ncclGetErrorString(nr));
        g->comm = NULL;
    }
#endif
    if (g->blas) {
        cublasStatus_t bs = cublasDestroy(g->blas);
        if (bs != CUBLAS_STATUS_SUCCESS)
            teardown_failed("cublasDestroy(g->blas)", __FILE__, __LINE__, cublasGetStatusString(bs));
        g->blas = NULL;
    }
    if (g->layers) {
        for (int32_t l = 0; l < n_layers; l++) {
            gpu_layer *gl = &g->layers[l];
            TEARDOWN_CUDA(cudaFree(gl->wqkv));
            TEARDOWN_CUDA(cudaFree(gl->wo));
            TEARDOWN_CUDA(cudaFree(gl->wgu));
            TEARDOWN_CUDA(cudaFree(gl->wdown));
            TEARDOWN_CUDA(cudaFree(gl->attn_norm));
            TEARDOWN_CUDA(cudaFree(gl->ffn_norm));
        }
        free(g->layers);
    }
    if (g->lm_head && g->lm_head != g->embed)
        TEARDOWN_CUDA(cudaFree(g->lm_head));
    void *bufs[] = {g->embed, g->final_norm, g->inv_freq, g->k_cache, g->v_cache, g->x, g->partial, g->xn,
                    g->qkv, g->att, g->gu, g->act, g->last, g->logits, g->meta, g->tables, g->attn_ws, g->blas_ws,
                    g->s_allowed, g->s_seen, g->s_params, g->s_tokens, g->sample_ws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        TEARDOWN_CUDA(cudaFree(bufs[i]));
    if (g->stream)
        TEARDOWN_CUDA(cudaStreamDestroy(g->stream));
    return 0;
}

static void cuda_close(sn_backend *base)
{
    cuda_backend *b = (cuda_backend *)base;
    if (!b)
        return;
    char msg[512];
    /* close() may run on another thread than open() (data-parallel replicas): the graphs are
     * rank 0's, so its device is made current before they are destroyed. */
    if (b->ranks && b->n_graphs)
        TEARDOWN_CUDA(cudaSetDevice(b->ranks[0].dev));
    for (int32_t i = 0; i < b->n_graphs; i++)
        if (b->graph_cache[i].exec)
            TEARDOWN_CUDA(cudaGraphExecDestroy(b->graph_cache[i].exec));
    free(b->graph_cache);
    for (int32_t s = 0; b->ranks && s < b->tp; s++)
        if (free_rank(&b->ranks[s], b->cfg.n_layers, msg, sizeof msg))
            log_line(SN_LOG_WARN, msg);
    free(b->ranks);
    if (b->meta_host)
        TEARDOWN_CUDA(cudaFreeHost(b->meta_host));
    if (b->logits_host)
        TEARDOWN_CUDA(cudaFreeHost(b->logits_host));
    if (b->masks_host)
        TEARDOWN_CUDA(cudaFreeHost(b->masks_host));
    if (b->sparams_host)
        TEARDOWN_CUDA(cudaFreeHost(b->sparams_host));
    if (b->tokens_host)
        TEARDOWN_CUDA(cudaFreeHost(b->tokens_host));
    if (b->tables_registered)
        TEARDOWN_CUDA(cudaHostUnregister(b->kv.tables));
    free(b->uploaded);
    sn_kv_alloc_free(&b->kv);
    free(b);
}

/* Activations, workspaces, metadata mirrors and weights of rank g (its device current). */
static int open_rank(cuda_backend *b, gpu_rank *g, staging *sg, const float *inv_freq, char *msg, size_t msg_len)
{
    const sn_model_config *c = &b->cfg;
    const size_t T = (size_t)b->max_tokens, S = (size_t)b->max_seqs, H = (size_t)c->hidden, hd = (size_t)c->head_dim;
    CUDA_CHECK(cudaSetDevice(g->dev));
    CUDA_CHECK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
    BLAS_CHECK(cublasCreate(&g->blas));
    BLAS_CHECK(cublasSetStream(g->blas, g->stream));
    DMALLOC(g->blas_ws, BLAS_WS_BYTES);
    BLAS_CHECK(cublasSetWorkspace(g->blas, g->blas_ws, BLAS_WS_BYTES));
    BLAS_CHECK(cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH));
    g->layers = (gpu_layer *)calloc((size_t)c->n_layers, sizeof *g->layers);
    if (!g->layers) {
        snprintf(msg, msg_len, "out of host memory");
        return -1;
    }
    DMALLOC(g->inv_freq, hd / 2 * sizeof(float));
    CUDA_CHECK(cudaMemcpy(g->inv_freq, inv_freq, hd / 2 * sizeof(float), cudaMemcpyHostToDevice));
    DMALLOC(g->x, T * H * sizeof(float));
    DMALLOC(g->partial, T * H * sizeof(float));
    DMALLOC(g->xn, T * H * sizeof(sn_bf16));
    DMALLOC(g->qkv, T * (size_t)g->qkv_w * sizeof(sn_bf16));
    DMALLOC(g->att, T * (size_t)g->sl.nh * hd * sizeof(sn_bf16));
    DMALLOC(g->gu, T * 2 * (size_t)g->sl.nf * sizeof(sn_bf16));
    DMALLOC(g->act, T * (size_t)g->sl.nf * sizeof(sn_bf16));
    DMALLOC(g->last, S * H * sizeof(sn_bf16));
    if (g == &b->ranks[0]) {
        const size_t words = ((size_t)c->vocab_size + 63) / 64;
        DMALLOC(g->logits, S * (size_t)c->vocab_size * sizeof(float));
        DMALLOC(g->s_allowed, S * words * sizeof(uint64_t));
        DMALLOC(g->s_seen, S * words * sizeof(uint64_t));
        DMALLOC(g->s_params, S * sizeof(sn_cuda_sample_params));
        DMALLOC(g->s_tokens, S * sizeof(int32_t));
        g->sample_ws_bytes = sn_cuda_sample_workspace((int32_t)S, c->vocab_size);
        DMALLOC(g->sample_ws, g->sample_ws_bytes);
    }
    DMALLOC(g->meta, (size_t)b->lay.total * sizeof(int32_t));
    const size_t table_elems = (size_t)b->kv.max_seqs * (size_t)b->kv.max_blocks_per_seq;
    DMALLOC(g->tables, table_elems * sizeof(int32_t));
    CUDA_CHECK(cudaMemset(g->tables, 0, table_elems * sizeof(int32_t)));
    /* The split of a decode step depends on its batch and context (and this GPU's SM count),
     * not monotonically: size for the largest over every batch and bucket a step can have. */
    g->attn_ws_bytes = 0;
    for (int32_t ctx = 256;; ctx *= 2) {
        const int32_t cx = ctx < b->max_ctx_bucket ? ctx : b->max_ctx_bucket;
        for (int32_t n = 1; n <= b->max_seqs; n++) {
            const size_t need = sn_cuda_attn_decode_workspace(n, g->sl.nh, c->head_dim, g->sl.nkv, cx);
            if (need > g->attn_ws_bytes)
                g->attn_ws_bytes = need;
        }
        if (cx == b->max_ctx_bucket)
            break;
    }
    if (g->attn_ws_bytes)
        DMALLOC(g->attn_ws, g->attn_ws_bytes);
    return upload_weights(b, g, sg, msg, msg_len);
}

/* The KV pool on every rank: n_blocks from the budget and the free memory. */
static sn_status open_kv(cuda_backend *b, const sn_backend_opts *opts)
{
    const sn_model_config *c = &b->cfg;
    const size_t per_rank_block = (size_t)2 * c->n_layers * SN_KV_BLOCK * (size_t)b->ranks[0].sl.nkv * c->head_dim * sizeof(sn_bf16);
    const size_t all_block = per_rank_block * (size_t)b->tp;
    size_t want = opts->kv_bytes ? opts->kv_bytes / all_block
                                 : (size_t)opts->max_seqs * (((size_t)c->max_positions + SN_KV_BLOCK - 1) / SN_KV_BLOCK);
    if (want == 0)
        return failf(SN_ERR_CONFIG, "KV-cache budget of %zu bytes holds no block (one block is %zu bytes in bf16)",
                     opts->kv_bytes, all_block);
    size_t fits = SIZE_MAX;
    for (int32_t s = 0; s < b->tp; s++) {
        size_t free_b = 0, total_b = 0;
        if (cudaSetDevice(b->ranks[s].dev) != cudaSuccess || cudaMemGetInfo(&free_b, &total_b) != cudaSuccess)
            return failf(SN_ERR_INTERNAL, "CUDA backend: cudaMemGetInfo failed on GPU %d", b->ranks[s].dev);
        size_t f = free_b > HEADROOM_BYTES ? (free_b - HEADROOM_BYTES) / per_rank_block : 0;
        if (f < fits)
            fits = f;
    }
    if (want > fits) {
        if (opts->kv_bytes)
            return failf(SN_ERR_NOMEM, "KV-cache budget of %zu bytes (%zu blocks) does not fit: the GPU has room for %zu blocks "
                         "after the weights and buffers; lower --kv-mb",
                         opts->kv_bytes, want, fits);
        want = fits;
        if (want == 0)
            return failf(SN_ERR_NOMEM, "no GPU memory left for the KV cache after the weights and buffers");
    }
    if (want > (size_t)(INT32_MAX / SN_KV_BLOCK))
        want = (size_t)(INT32_MAX / SN_KV_BLOCK);
    b->n_blocks = (int32_t)want;
    b->layer_kv_elems = (size_t)b->n_blocks * SN_KV_BLOCK * (size_t)b->ranks[0].sl.nkv * c->head_dim;
    sn_status st = sn_kv_alloc_init(&b->kv, SN_KV_BLOCK, b->n_blocks, opts->max_seqs, c->max_positions);
    if (st != SN_OK)
        return st;
    return SN_OK;
}

static int alloc_kv_pools(cuda_backend *b, char *msg, size_t msg_len)
{
    const size_t bytes = (size_t)b->cfg.n_layers * b->layer_kv_elems * sizeof(sn_bf16);
    for (int32_t s = 0; s < b->tp; s++) {
        gpu_rank *g = &b->ranks[s];
        CUDA_CHECK(cudaSetDevice(g->dev));
        DMALLOC(g->k_cache, bytes);
        DMALLOC(g->v_cache, bytes);
    }
    return 0;
}

static sn_status cuda_open(const sn_model *model, const sn_backend_opts *opts, sn_backend **out)
{
    *out = NULL;
    const sn_model_config *c = g_host->model_config(model);
    const int32_t tp = opts->tp > 0 ? opts->tp : 1;
    if (c->n_heads % tp || c->n_kv_heads % tp || c->intermediate % tp)
        return failf(SN_ERR_CONFIG, "--tp %d does not divide the model: %d query heads, %d KV heads, %d FFN columns must all split evenly",
                     tp, c->n_heads, c->n_kv_heads, c->intermediate);
    if (opts->max_batch_tokens <= 0 || opts->max_seqs <= 0)
        return failf(SN_ERR_INVALID_ARG, "CUDA backend: max_batch_tokens and max_seqs must be positive");
    if (c->head_dim != 64 && c->head_dim != 96 && c->head_dim != 128 && c->head_dim != 256)
        return failf(SN_ERR_UNSUPPORTED, "CUDA backend: head_dim %d (the attention kernels take 64, 96, 128 or 256); use --backend cpu",
                     c->head_dim);
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev <= 0)
        return failf(SN_ERR_UNSUPPORTED, "CUDA backend: no CUDA device (%s)", cudaGetErrorString(e));
    const int32_t first = opts->device_first > 0 ? opts->device_first : 0;
    const int32_t dp = opts->dp > 1 ? opts->dp : 1;
    if (first + tp > n_dev) {
        if (dp > 1)
            return failf(SN_ERR_CONFIG, "--dp %d --tp %d needs %d GPUs; this machine has %d", dp, tp, dp * tp, n_dev);
        return failf(SN_ERR_CONFIG, "--tp %d needs %d GPUs from GPU %d; this machine has %d", tp, tp, first, n_dev);
    }
    const int use_nccl = tp > 1 || sn_cuda_env_flag(getenv("SN_CUDA_NCCL"), 0);
#ifdef SN_CUDA_NO_NCCL
    if (use_nccl)
        return failf(SN_ERR_UNSUPPORTED, "--tp %d: this libsensorium_cuda.so was built without NCCL", tp);
#endif

    cuda_backend *b = (cuda_backend *)calloc(1, sizeof *b);
    if (!b)
        return failf(SN_ERR_NOMEM, "out of memory");
    b->base.ops = &sn_cuda_backend_ops_v1;
    b->model = model;
    b->cfg = *c;
    b->tp = tp;
    b->max_tokens = opts->max_batch_tokens;
    b->max_seqs = opts->max_seqs;
    b->use_nccl = use_nccl;
    b->graphs = !use_nccl && sn_cuda_env_flag(getenv("SN_CUDA_GRAPHS"), 1);
    sn_cuda_meta_layout_init(&b->lay, b->max_tokens, b->max_seqs);
    {
        sn_cuda_step full = {};
        full.decode_only = 1;
        full.n_seqs = full.n_rows = 1;
        full.max_ctx = c->max_positions;
        sn_cuda_graph_key k;
        sn_cuda_graph_key_of(&full, c->max_positions, 1, &k);
        b->max_ctx_bucket = k.ctx_bucket;
    }

    char msg[1024];
    const size_t msg_len = sizeof msg;
    sn_status st = SN_ERR_INTERNAL;
    staging sg = {};
    float *inv_freq = NULL;
    b->ranks = (gpu_rank *)calloc((size_t)tp, sizeof *b->ranks);
    b->uploaded = (int32_t *)calloc((size_t)b->max_seqs, sizeof *b->uploaded);
    b->graph_cache = (graph_entry *)calloc(SN_CUDA_MAX_GRAPHS, sizeof *b->graph_cache);
    inv_freq = (float *)malloc((size_t)(c->head_dim / 2) * sizeof *inv_freq);
    if (!b->ranks || !b->uploaded || !b->graph_cache || !inv_freq) {
        st = failf(SN_ERR_NOMEM, "out of memory");
        goto fail;
    }
    sn_rope_inv_freq(c, g_host->model_rope_factors(model), inv_freq);
    for (int32_t s = 0; s < tp; s++) {
        gpu_rank *g = &b->ranks[s];
        g->dev = first + s;
        sn_tp_split(c->n_heads, c->n_kv_heads, c->intermediate, tp, s, &g->sl);
        g->qkv_w = (g->sl.nh + 2 * g->sl.nkv) * c->head_dim;
    }
    {
        /* Staging: the largest slice of a layer, or 64 Mi elements for the embedding. */
        const size_t H = (size_t)c->hidden, hd = (size_t)c->head_dim;
        const gpu_rank *g0 = &b->ranks[0];
        size_t biggest = (size_t)g0->qkv_w * H;
        if ((size_t)2 * g0->sl.nf * H > biggest)
            biggest = (size_t)2 * g0->sl.nf * H;
        if (H * g0->sl.nh * hd > biggest)
            biggest = H * g0->sl.nh * hd;
        if (biggest < ((size_t)64 << 20))
            biggest = (size_t)64 << 20;
        if (biggest < H)
            biggest = H;
        sg.bf_elems = biggest;
        sg.row_elems = H > (size_t)c->intermediate ? H : (size_t)c->intermediate;
        if ((size_t)c->n_heads * hd > sg.row_elems)
            sg.row_elems = (size_t)c->n_heads * hd;
        sg.bf = (sn_bf16 *)malloc(sg.bf_elems * sizeof *sg.bf);
        sg.row = (float *)malloc(sg.row_elems * sizeof *sg.row);
        if (!sg.bf || !sg.row) {
            st = failf(SN_ERR_NOMEM, "out of host memory staging the weights for upload");
            goto fail;
        }
    }
    /* The block tables first (open_rank sizes their mirror), with a provisional pool; the
     * real pool size comes once the weights are on the GPUs. */
    if ((st = sn_kv_alloc_init(&b->kv, SN_KV_BLOCK, 1, opts->max_seqs, c->max_positions)) != SN_OK)
        goto fail;
    for (int32_t s = 0; s < tp; s++)
        if (open_rank(b, &b->ranks[s], &sg, inv_freq, msg, msg_len)) {
            st = failf(SN_ERR_NOMEM, "CUDA backend (GPU %d): %s", b->ranks[s].dev, msg);
            goto fail;
        }
    sn_kv_alloc_free(&b->kv);
    if ((st = open_kv(b, opts)) != SN_OK)
        goto fail;
    if (alloc_kv_pools(b, msg, msg_len)) {
        st = failf(SN_ERR_NOMEM, "CUDA backend: KV pool of %d blocks: %s", b->n_blocks, msg);
        goto fail;
    }
    if (cudaHostRegister(b->kv.tables, (size_t)b->kv.max_seqs * (size_t)b->kv.max_blocks_per_seq * sizeof(int32_t),
                         cudaHostRegisterPortable) == cudaSuccess)
        b->tables_registered = 1;
    else
        (void)cudaGetLastError(); /* pageable copies then; still correct */
    if (cudaHostAlloc((void **)&b->meta_host, (size_t)b->lay.total * sizeof(int32_t), cudaHostAllocPortable) != cudaSuccess ||
        cudaHostAlloc((void **)&b->logits_host, (size_t)b->max_seqs * (size_t)c->vocab_size * sizeof(float),
                      cudaHostAllocPortable) != cudaSuccess ||
        cudaHostAlloc((void **)&b->masks_host, (size_t)2 * b->max_seqs * (((size_t)c->vocab_size + 63) / 64) * sizeof(uint64_t),
                      cudaHostAllocPortable) != cudaSuccess ||
        cudaHostAlloc((void **)&b->sparams_host, (size_t)b->max_seqs * sizeof(sn_cuda_sample_params),
                      cudaHostAllocPortable) != cudaSuccess ||
        cudaHostAlloc((void **)&b->tokens_host, (size_t)b->max_seqs * sizeof(int32_t), cudaHostAllocPortable) != cudaSuccess) {
        st = failf(SN_ERR_NOMEM, "CUDA backend: out of page-locked host memory for the step buffers");
        goto fail;
    }
#ifndef SN_CUDA_NO_NCCL
    if (use_nccl) {
        ncclComm_t *comms = (ncclComm_t *)calloc((size_t)tp, sizeof *comms);
        int *devs = (int *)calloc((size_t)tp, sizeof *devs);
        ncclResult_t nr = ncclInvalidArgument;
        if (comms && devs) {
            for (int32_t s = 0; s < tp; s++)
                devs[s] = b->ranks[s].dev;
            nr = ncclCommInitAll(comms, tp, devs);
        }
        if (nr == ncclSuccess)
            for (int32_t s = 0; s < tp; s++)
                b->ranks[s].comm = comms[s];
        free(comms);
        free(devs);
        if (nr != ncclSuccess) {
            st = failf(SN_ERR_INTERNAL, "CUDA backend: ncclCommInitAll over %d GPUs: %s", tp, ncclGetErrorString(nr));
            goto fail;
        }
    }
#endif
    for (int32_t s = 0; s < tp; s++) {
        if (cudaSetDevice(b->ranks[s].dev) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) {
            st = failf(SN_ERR_INTERNAL, "CUDA backend: GPU %d: %s", b->ranks[s].dev, cudaGetErrorString(cudaGetLastError()));
            goto fail;
        }
    }
    char gpus[48];
    if (tp > 1)
        snprintf(gpus, sizeof gpus, "GPUs %d-%d", first, first + tp - 1);
    else
        snprintf(gpus, sizeof gpus, "GPU %d", first);
    snprintf(msg, msg_len, "CUDA backend: %s, bf16 weights, %d KV blocks of %d positions, graphs %s, NCCL %s", gpus,
             b->n_blocks, SN_KV_BLOCK, b->graphs ? "on" : "off", use_nccl ? "on" : "off");
    log_line(SN_LOG_INFO, msg);
    free(sg.bf);
    free(sg.row);
    free(inv_freq);
    *out = &b->base;
    return SN_OK;
fail:
    free(sg.bf);
    free(sg.row);
    free(inv_freq);
    cuda_close(&b->base);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* The forward pass                                                                         */
/* ---------------------------------------------------------------------------------------- */

/* y (n, m; type yt) = x (n, k; bf16) . w^T (w (m, k) bf16, row-major), fp32 accumulation. */
static int gemm(gpu_rank *g, const sn_bf16 *x, int32_t n, int32_t k, const sn_bf16 *w, int32_t m, void *y,
                cudaDataType_t yt, char *msg, size_t msg_len)
{
    const float alpha = 1.0f, beta = 0.0f;
    BLAS_CHECK(cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w, CUDA_R_16BF, k, x, CUDA_R_16BF, k,
                            &beta, y, yt, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

#ifndef SN_CUDA_NO_NCCL
/* partial = the sum of every rank's partial (n rows), where cpu_backend.c's sum_partials is. */
static int all_reduce(cuda_backend *b, int32_t n, char *msg, size_t msg_len)
{
    const size_t count = (size_t)n * b->cfg.hidden;
    NCCL_CHECK(ncclGroupStart());
    for (int32_t s = 0; s < b->tp; s++) {
        gpu_rank *g = &b->ranks[s];
        ncclResult_t r = ncclAllReduce(g->partial, g->partial, count, ncclFloat, ncclSum, g->comm, g->stream);
        if (r != ncclSuccess) {
            (void)ncclGroupEnd(); /* closes the group; r is the error reported */
            snprintf(msg, msg_len, "%s:%d: ncclAllReduce (rank %d): %s", __FILE__, __LINE__, s, ncclGetErrorString(r));
            return -1;
        }
    }
    NCCL_CHECK(ncclGroupEnd());
    return 0;
}
#endif

typedef enum phase { PH_EMBED, PH_ATTN, PH_FFN, PH_FINAL } phase;

/* Enqueues one phase of layer l on rank g: everything between two all-reduces. */
static int enqueue_phase(cuda_backend *b, gpu_rank *g, phase ph, int32_t l, const sn_cuda_step *st, int32_t ctx_bucket,
                         char *msg, size_t msg_len)
{
    const sn_model_config *c = &b->cfg;
    const int32_t n = st->n_tokens, H = c->hidden, hd = c->head_dim, nh = g->sl.nh, nkv = g->sl.nkv, nf = g->sl.nf;
    const sn_cuda_meta_layout *L = &b->lay;
    const int32_t *meta = g->meta;
    cudaStream_t s = g->stream;
    switch (ph) {
    case PH_EMBED:
        CUDA_CHECK(sn_cuda_embed(g->x, SN_CUDA_F32, g->embed, SN_CUDA_BF16, meta + L->tokens, n, H, c->vocab_size, s));
        return 0;
    case PH_ATTN: {
        const gpu_layer *w = &g->layers[l];
        /* Layer 0 norms the embedding; later layers first add the previous FFN's sum. */
        CUDA_CHECK(sn_cuda_rmsnorm(g->xn, SN_CUDA_BF16, g->x, l ? g->partial : NULL, SN_CUDA_F32, w->attn_norm, n, H,
                                   c->rms_eps, s));
        if (gemm(g, g->xn, n, H, w->wqkv, g->qkv_w, g->qkv, CUDA_R_16BF, msg, msg_len))
            return -1;
        sn_bf16 *q = g->qkv, *k = g->qkv + (size_t)nh * hd, *v = g->qkv + (size_t)(nh + nkv) * hd;
        CUDA_CHECK(sn_cuda_rope(q, SN_CUDA_BF16, n, nh, hd, g->qkv_w, meta + L->pos, g->inv_freq, c->rope_interleaved, s));
        CUDA_CHECK(sn_cuda_rope(k, SN_CUDA_BF16, n, nkv, hd, g->qkv_w, meta + L->pos, g->inv_freq, c->rope_interleaved, s));
        sn_bf16 *kc = g->k_cache + (size_t)l * b->layer_kv_elems, *vc = g->v_cache + (size_t)l * b->layer_kv_elems;
        /* This batch's keys and values go in first: a prefill chunk attends to its own earlier
         * tokens through the cache, as cpu_backend.c does. */
        CUDA_CHECK(sn_cuda_kv_store(kc, vc, k, v, g->qkv_w, meta + L->slots, n, nkv, hd, s));
        sn_cuda_paged_kv kv;
        kv.k_cache = kc;
        kv.v_cache = vc;
        kv.block_tables = g->tables;
        kv.table_stride = b->kv.max_blocks_per_seq;
        kv.n_heads = nh;
        kv.n_kv_heads = nkv;
        kv.head_dim = hd;
        kv.scale = 1.0f / sqrtf((float)hd);
        if (st->decode_only)
            CUDA_CHECK(sn_cuda_attn_decode(g->att, (int64_t)nh * hd, q, g->qkv_w, &kv, meta + L->seq_rows, meta + L->ctx_lens,
                                           st->n_seqs, ctx_bucket, g->attn_ws, g->attn_ws_bytes, s));
        else
            CUDA_CHECK(sn_cuda_attn_prefill(g->att, (int64_t)nh * hd, q, g->qkv_w, &kv, meta + L->seq_rows,
                                            meta + L->seq_start, meta + L->seq_pos, st->n_seqs, n, s));
        return gemm(g, g->att, n, nh * hd, w->wo, H, g->partial, CUDA_R_32F, msg, msg_len);
    }
    case PH_FFN: {
        const gpu_layer *w = &g->layers[l];
        CUDA_CHECK(sn_cuda_rmsnorm(g->xn, SN_CUDA_BF16, g->x, g->partial, SN_CUDA_F32, w->ffn_norm, n, H, c->rms_eps, s));
        if (gemm(g, g->xn, n, H, w->wgu, 2 * nf, g->gu, CUDA_R_16BF, msg, msg_len))
            return -1;
        CUDA_CHECK(sn_cuda_swiglu(g->act, g->gu, g->gu + nf, SN_CUDA_BF16, n, nf, nf, 2 * (int64_t)nf, 2 * (int64_t)nf, s));
        return gemm(g, g->act, n, nf, w->wdown, H, g->partial, CUDA_R_32F, msg, msg_len);
    }
    case PH_FINAL: {
        CUDA_CHECK(sn_cuda_rmsnorm(g->xn, SN_CUDA_BF16, g->x, g->partial, SN_CUDA_F32, g->final_norm, n, H, c->rms_eps, s));
        if (g != &b->ranks[0] || st->n_rows == 0)
            return 0;
        const sn_bf16 *rows = g->xn;
        if (!st->rows_are_tokens) {
            CUDA_CHECK(sn_cuda_gather_rows(g->last, g->xn, meta + L->out_rows, st->n_rows, H, s));
            rows = g->last;
        }
        return gemm(g, rows, st->n_rows, H, g->lm_head, c->vocab_size, g->logits, CUDA_R_32F, msg, msg_len);
    }
    }
    return 0;
}

/* Enqueues the whole step on every rank (or, in a graph capture, on rank 0 alone). */
static int enqueue_step(cuda_backend *b, const sn_cuda_step *st, int32_t ctx_bucket, int32_t n_ranks, char *msg,
                        size_t msg_len)
{
    for (int32_t s = 0; s < n_ranks; s++) {
        CUDA_CHECK(cudaSetDevice(b->ranks[s].dev));
        if (enqueue_phase(b, &b->ranks[s], PH_EMBED, 0, st, ctx_bucket, msg, msg_len))
            return -1;
    }
    for (int32_t l = 0; l < b->cfg.n_layers; l++) {
        for (int ph = PH_ATTN; ph <= PH_FFN; ph++) {
            for (int32_t s = 0; s < n_ranks; s++) {
                CUDA_CHECK(cudaSetDevice(b->ranks[s].dev));
                if (enqueue_phase(b, &b->ranks[s], (phase)ph, l, st, ctx_bucket, msg, msg_len))
                    return -1;
            }
#ifndef SN_CUDA_NO_NCCL
            if (b->use_nccl && all_reduce(b, st->n_tokens, msg, msg_len))
                return -1;
#endif
        }
    }
    for (int32_t s = 0; s < n_ranks; s++) {
        CUDA_CHECK(cudaSetDevice(b->ranks[s].dev));
        if (enqueue_phase(b, &b->ranks[s], PH_FINAL, 0, st, ctx_bucket, msg, msg_len))
            return -1;
    }
    return 0;
}

/* Runs a decode step as rank 0's graph for its key. The first step of a key runs eagerly
 * (so that one-time work, such as kernels' shared-memory attributes and cuBLAS's lazy
 * set-up, happens outside a capture); the second captures the graph; later ones replay it. */
static int run_graph(cuda_backend *b, const sn_cuda_step *st, const sn_cuda_graph_key *key, char *msg, size_t msg_len)
{
    gpu_rank *g = &b->ranks[0];
    /* The caller's thread may be any replica's worker: launch and capture with rank 0's
     * device current, whatever the uploads before left current. */
    CUDA_CHECK(cudaSetDevice(g->dev));
    graph_entry *ge = NULL;
    for (int32_t i = 0; i < b->n_graphs; i++)
        if (b->graph_cache[i].key.n_seqs == key->n_seqs && b->graph_cache[i].key.ctx_bucket == key->ctx_bucket)
            ge = &b->graph_cache[i];
    if (ge && ge->exec) {
        CUDA_CHECK(cudaGraphLaunch(ge->exec, g->stream));
        return 0;
    }
    if (!ge) {
        if (b->n_graphs < SN_CUDA_MAX_GRAPHS) { /* full: every new shape runs eagerly */
            ge = &b->graph_cache[b->n_graphs++];
            ge->key = *key;
            ge->exec = NULL;
        }
        return enqueue_step(b, st, key->ctx_bucket, 1, msg, msg_len);
    }
    CUDA_CHECK(cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t graph = NULL;
    if (enqueue_step(b, st, key->ctx_bucket, 1, msg, msg_len)) {
        if (cudaStreamEndCapture(g->stream, &graph) == cudaSuccess && graph)
            TEARDOWN_CUDA(cudaGraphDestroy(graph));
        (void)cudaGetLastError(); /* clears the capture's sticky error; msg has the first */
        return -1;
    }
    CUDA_CHECK(cudaStreamEndCapture(g->stream, &graph));
    cudaGraphExec_t exec = NULL;
    cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
    CUDA_CHECK(cudaGraphDestroy(graph));
    CUDA_CHECK(e);
    ge->exec = exec;
    CUDA_CHECK(cudaGraphLaunch(exec, g->stream));
    return 0;
}

/* Runs the step; then, with req, samples each logits row on the device into tokens; copies
 * the logits back when logits is not NULL. */
static int forward_device(cuda_backend *b, const sn_batch *batch, const sn_cuda_step *st, const sn_sample_req *req,
                          int32_t *tokens, float *logits, char *msg, size_t msg_len)
{
    const size_t mbps = (size_t)b->kv.max_blocks_per_seq;
    for (int32_t s = 0; s < b->tp; s++) {
        gpu_rank *g = &b->ranks[s];
        CUDA_CHECK(cudaSetDevice(g->dev));
        CUDA_CHECK(cudaMemcpyAsync(g->meta, b->meta_host, (size_t)b->lay.total * sizeof(int32_t), cudaMemcpyHostToDevice,
                                   g->stream));
        /* The block-table entries kv_reserve added since the last step. */
        for (int32_t r = 0; r < batch->n_seqs; r++) {
            const int32_t seq = batch->seq_ids[r], have = b->kv.n_seq_blocks[seq], done = b->uploaded[seq];
            if (have > done) {
                const size_t off = (size_t)seq * mbps + (size_t)done;
                CUDA_CHECK(cudaMemcpyAsync(g->tables + off, b->kv.tables + off, (size_t)(have - done) * sizeof(int32_t),
                                           cudaMemcpyHostToDevice, g->stream));
            }
        }
    }
    for (int32_t r = 0; r < batch->n_seqs; r++) {
        const int32_t seq = batch->seq_ids[r];
        b->uploaded[seq] = b->kv.n_seq_blocks[seq];
    }
    sn_cuda_graph_key key;
    if (sn_cuda_graph_key_of(st, b->cfg.max_positions, b->graphs, &key)) {
        if (run_graph(b, st, &key, msg, msg_len))
            return -1;
    } else {
        sn_cuda_step full = *st;
        full.decode_only = 1;
        full.n_rows = full.n_seqs;
        sn_cuda_graph_key k2;
        sn_cuda_graph_key_of(&full, b->cfg.max_positions, 1, &k2);
        if (enqueue_step(b, st, k2.ctx_bucket, b->tp, msg, msg_len))
            return -1;
    }
    gpu_rank *g0 = &b->ranks[0];
    CUDA_CHECK(cudaSetDevice(g0->dev));
    const int32_t V = b->cfg.vocab_size, rows = st->n_rows;
    const size_t logit_bytes = (size_t)rows * (size_t)V * sizeof(float);
    if (req && rows) {
        /* Sampling on the device: the masks and parameters go up, one token per row comes
         * back instead of the row. */
        const size_t words = ((size_t)V + 63) / 64, mask_bytes = (size_t)rows * words * sizeof(uint64_t);
        uint64_t *seen_host = b->masks_host + (size_t)b->max_seqs * words;
        memcpy(b->masks_host, req->allowed, mask_bytes);
        if (req->seen)
            memcpy(seen_host, req->seen, mask_bytes);
        for (int32_t r = 0; r < rows; r++) {
            const sn_sample_row *sr = &req->rows[r];
            b->sparams_host[r] = sn_cuda_sample_params{sr->params.temperature, sr->params.top_k, sr->params.top_p,
                                                       sr->params.min_p, sr->params.repetition_penalty, 0u, sr->seed,
                                                       sr->step};
        }
        CUDA_CHECK(cudaMemcpyAsync(g0->s_allowed, b->masks_host, mask_bytes, cudaMemcpyHostToDevice, g0->stream));
        if (req->seen)
            CUDA_CHECK(cudaMemcpyAsync(g0->s_seen, seen_host, mask_bytes, cudaMemcpyHostToDevice, g0->stream));
        CUDA_CHECK(cudaMemcpyAsync(g0->s_params, b->sparams_host, (size_t)rows * sizeof(sn_cuda_sample_params),
                                   cudaMemcpyHostToDevice, g0->stream));
        CUDA_CHECK(sn_cuda_sample(g0->s_tokens, NULL, g0->logits, V, g0->s_allowed, req->seen ? g0->s_seen : NULL,
                                  g0->s_params, rows, V, g0->sample_ws, g0->sample_ws_bytes, g0->stream));
        CUDA_CHECK(cudaMemcpyAsync(b->tokens_host, g0->s_tokens, (size_t)rows * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                   g0->stream));
    }
    if (logits && rows)
        CUDA_CHECK(cudaMemcpyAsync(b->logits_host, g0->logits, logit_bytes, cudaMemcpyDeviceToHost, g0->stream));
    for (int32_t s = b->tp - 1; s >= 0; s--) {
        CUDA_CHECK(cudaSetDevice(b->ranks[s].dev));
        CUDA_CHECK(cudaStreamSynchronize(b->ranks[s].stream));
    }
    if (logits && rows)
        memcpy(logits, b->logits_host, logit_bytes);
    if (req && rows)
        memcpy(tokens, b->tokens_host, (size_t)rows * sizeof(int32_t));
    return 0;
}

static sn_status cuda_forward_sample(sn_backend *base, const sn_batch *batch, const sn_sample_req *req, int32_t *tokens,
                                     float *logits)
{
    cuda_backend *b = (cuda_backend *)base;
    sn_cuda_step st;
    sn_status s = sn_cuda_plan_pack(&b->kv, batch, b->cfg.vocab_size, &b->lay, b->meta_host, &st);
    if (s != SN_OK)
        return s;
    char msg[1024];
    if (forward_device(b, batch, &st, req, tokens, logits, msg, sizeof msg))
        return failf(SN_ERR_INTERNAL, "CUDA backend: %s", msg);
    return SN_OK;
}

static sn_status cuda_forward(sn_backend *base, const sn_batch *batch, float *logits)
{
    return cuda_forward_sample(base, batch, NULL, NULL, logits);
}

/* ---------------------------------------------------------------------------------------- */
/* KV blocks                                                                                */
/* ---------------------------------------------------------------------------------------- */

static sn_status cuda_kv_reserve(sn_backend *base, int32_t seq, int32_t n_positions)
{
    return sn_kv_alloc_reserve(&((cuda_backend *)base)->kv, seq, n_positions);
}

static void cuda_kv_release(sn_backend *base, int32_t seq)
{
    cuda_backend *b = (cuda_backend *)base;
    sn_kv_alloc_release(&b->kv, seq);
    if (seq >= 0 && seq < b->max_seqs)
        b->uploaded[seq] = 0; /* its next blocks are uploaded afresh */
}

static int32_t cuda_kv_free_blocks(const sn_backend *base) { return ((const cuda_backend *)base)->kv.n_free; }

static int32_t cuda_kv_total_blocks(const sn_backend *base) { return ((const cuda_backend *)base)->kv.n_blocks; }

extern "C" const sn_backend_ops sn_cuda_backend_ops_v1 = {
    "cuda", cuda_open, cuda_close, cuda_forward, cuda_forward_sample, cuda_kv_reserve, cuda_kv_release, cuda_kv_free_blocks,
    cuda_kv_total_blocks, NULL, /* kv_domain: one pool */
};

SN_CUDA_EXPORT const sn_backend_ops *sn_cuda_backend_ops(uint32_t abi, const sn_cuda_host *host)
{
    if (abi != SN_CUDA_BACKEND_ABI || !host || host->abi != SN_CUDA_BACKEND_ABI || host->size != sizeof(sn_cuda_host) ||
        !host->model_config || !host->model_embed || !host->model_norm || !host->model_lm_head || !host->model_layer ||
        !host->model_rope_factors || !host->convert_to_f32 || !host->dtype_size || !host->dtype_block_elems || !host->failv)
        return NULL;
    g_host = host;
    return &sn_cuda_backend_ops_v1;
}
