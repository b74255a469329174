/*
 * bench_cuda_e2e.c - end-to-end decode step time of the CUDA backend on a Llama-3.2-1B-shaped
 * model with random bf16 weights (hidden 2048, 16 layers, 32 heads, 8 KV heads, head_dim 64,
 * FFN 8192, vocab 128256, tied embeddings), at batch 1 and 64, against the bandwidth
 * roofline: the bytes one step must read (every weight once, the LM head included, plus each
 * sequence's KV cache) over the device-to-device copy bandwidth measured in the same run.
 *
 * Drives libsensorium_cuda.so through its function table (cuda/tests/host_model.h) with an
 * in-memory model, so it builds with cuda/ alone on a GPU machine (scripts/gpu-check.sh).
 * A decode step is a full forward_sample() as the engine calls it: host packing, metadata
 * and mask upload, the graph (or eager kernels), the fused sampler on the device (greedy,
 * every id allowed) and one token per sequence copied back to the host.
 *
 * Output: JSON lines on stdout, a readable table on stderr. --quick: fewer steps and no
 * graphs-off comparison. Exit 77 without a GPU.
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "host_model.h"

#define CTX 256        /* prompt length of every sequence before decoding */
#define MAX_SEQS 64
#define CHUNK 2048     /* prefill tokens per step */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define CK(stmt)                                                                                       \
    do {                                                                                               \
        cudaError_t e_ = (stmt);                                                                       \
        if (e_ != cudaSuccess) {                                                                       \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #stmt, cudaGetErrorString(e_));     \
            printf("{\"bench\":\"e2e_error\",\"what\":\"%s\"}\n", cudaGetErrorString(e_));            \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

/* Device-to-device copy bandwidth (read + write bytes per second) over 1 GiB. */
static double copy_bandwidth(void)
{
    const size_t bytes = (size_t)1 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(e0, 0));
    for (int i = 0; i < 10; i++)
        CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0));
    CK(cudaEventRecord(e1, 0));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    CK(cudaFree(a));
    CK(cudaFree(b));
    return 2.0 * 10 * (double)bytes / (ms * 1e-3);
}

typedef struct run {
    const sn_backend_ops *ops;
    sn_backend *b;
    int32_t ctx[MAX_SEQS];
    float *logits;
    uint64_t *allowed;        /* (MAX_SEQS, vocab words): every id */
} run;

static void die(const char *what)
{
    fprintf(stderr, "bench_cuda_e2e: %s: %s\n", what, hm_errbuf);
    printf("{\"bench\":\"e2e_error\",\"what\":\"%s\",\"msg\":\"%s\"}\n", what, hm_errbuf);
    exit(1);
}

/* Prefills MAX_SEQS sequences of CTX tokens, CHUNK tokens a step; the rate counts the steps
 * after the first (the first carries one-time set-up: module loading, cuBLAS's heuristics). */
static void prefill(run *r, const sn_model_config *c, double *tok_per_s)
{
    static int32_t tokens[CHUNK];
    int32_t seq_ids[MAX_SEQS], start[MAX_SEQS + 1], pos[MAX_SEQS];
    uint8_t lf[MAX_SEQS];
    uint64_t seed = 1;
    const int per = CHUNK / CTX;
    double t0 = 0;
    for (int s0 = 0; s0 < MAX_SEQS; s0 += per) {
        if (s0 == per)
            t0 = now_s();
        int n = 0, runs = 0;
        for (int s = s0; s < s0 + per && s < MAX_SEQS; s++) {
            if (r->ops->kv_reserve(r->b, s, CTX) != SN_OK)
                die("kv_reserve");
            seq_ids[runs] = s, start[runs] = n, pos[runs] = 0, lf[runs] = 1;
            for (int i = 0; i < CTX; i++)
                tokens[n++] = (int32_t)(hm_next(&seed) % (uint64_t)c->vocab_size);
            r->ctx[s] = CTX;
            runs++;
        }
        start[runs] = n;
        sn_batch b = {n, tokens, runs, seq_ids, start, pos, lf};
        if (r->ops->forward(r->b, &b, r->logits) != SN_OK)
            die("prefill forward");
    }
    *tok_per_s = (double)(MAX_SEQS - per) * CTX / (now_s() - t0);
}

/* Median seconds of `steps` decode steps over sequences 0..batch-1 (after 3 warm-up steps,
 * which also capture the graph). */
static double decode(run *r, int batch, int steps)
{
    int32_t tokens[MAX_SEQS], seq_ids[MAX_SEQS], start[MAX_SEQS + 1], pos[MAX_SEQS], sampled[MAX_SEQS];
    uint8_t lf[MAX_SEQS];
    sn_sample_row rows[MAX_SEQS];
    for (int s = 0; s < batch; s++)
        rows[s] = (sn_sample_row){.params = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,
                                             .repetition_penalty = 1.0f},
                                  .seed = (uint64_t)s, .step = 0};
    const sn_sample_req req = {rows, r->allowed, NULL};
    double *t = malloc((size_t)steps * sizeof *t);
    for (int k = 0; k < steps + 3; k++) {
        for (int s = 0; s < batch; s++) {
            if (r->ops->kv_reserve(r->b, s, r->ctx[s] + 1) != SN_OK)
                die("kv_reserve");
            tokens[s] = (int32_t)((s * 7919 + k * 31) % 128000), seq_ids[s] = s, start[s] = s, pos[s] = r->ctx[s], lf[s] = 1;
        }
        start[batch] = batch;
        sn_batch b = {batch, tokens, batch, seq_ids, start, pos, lf};
        double t0 = now_s();
        if (r->ops->forward_sample(r->b, &b, &req, sampled, NULL) != SN_OK)
            die("decode forward_sample");
        for (int s = 0; s < batch; s++)
            if (sampled[s] < 0 || sampled[s] >= 128256)
                die("a sampled token out of range");
        if (k >= 3)
            t[k - 3] = now_s() - t0;
        for (int s = 0; s < batch; s++)
            r->ctx[s]++;
    }
    qsort(t, (size_t)steps, sizeof *t, cmp_double);
    double med = t[steps / 2];
    free(t);
    return med;
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0) {
        printf("SKIP: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "none");
        return 77;
    }
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const double bw = copy_bandwidth();

    sn_model_config c = {0};
    c.vocab_size = 128256, c.hidden = 2048, c.intermediate = 8192, c.n_layers = 16, c.n_heads = 32, c.n_kv_heads = 8;
    c.head_dim = 64, c.max_positions = 2048, c.rms_eps = 1e-5f, c.rope_theta = 500000.0f, c.tie_embeddings = 1;
    c.rope_llama3 = 1, c.rope_factor = 32.0f, c.rope_low_freq_factor = 1.0f, c.rope_high_freq_factor = 4.0f;
    c.rope_original_max_positions = 8192;
    double t0 = now_s();
    sn_model *m = hm_model_make(&c, SN_DTYPE_BF16, 5, 1);
    const double make_s = now_s() - t0;

    const int64_t H = c.hidden, hd = c.head_dim;
    const double layer_params = (double)((c.n_heads + 2 * c.n_kv_heads) * hd * H + H * c.n_heads * hd + 3 * H * c.intermediate);
    const double weight_bytes = 2.0 * (layer_params * c.n_layers + (double)c.vocab_size * H);
    const double kv_bytes_per_pos = 2.0 * c.n_layers * c.n_kv_heads * hd * 2.0;
    /* a prefilled token: every layer's GEMMs (2 FLOPs a weight) and its share of the causal
     * attention (4 * heads * head_dim per (query, key) pair, CTX (CTX + 1) / 2 pairs a
     * sequence); the LM head runs on one row per sequence (the last token), not on every token */
    const double prefill_flops_per_token =
        2.0 * layer_params * c.n_layers +
        (4.0 * c.n_heads * hd * c.n_layers * (CTX * (CTX + 1.0) / 2.0) + 2.0 * (double)c.vocab_size * H) / CTX;

    const sn_backend_ops *ops = sn_cuda_backend_ops(SN_CUDA_BACKEND_ABI, &hm_host);
    if (!ops)
        die("sn_cuda_backend_ops");
    sn_backend_opts o = {.tp = 1, .max_seqs = MAX_SEQS, .max_batch_tokens = CHUNK};
    const int steps = quick ? 10 : 40;
    fprintf(stderr, "bench_cuda_e2e: %s, copy %.0f GB/s; model made in %.1f s\n", prop.name, bw / 1e9, make_s);
    fprintf(stderr, "%-10s %-7s %10s %10s %12s %10s\n", "graphs", "batch", "step ms", "tok/s", "roofline ms", "fraction");
    for (int graphs = 1; graphs >= (quick ? 1 : 0); graphs--) {
        setenv("SN_CUDA_GRAPHS", graphs ? "1" : "0", 1);
        run r = {ops, NULL, {0}, NULL, NULL};
        r.logits = malloc((size_t)MAX_SEQS * c.vocab_size * sizeof(float));
        const size_t words = ((size_t)c.vocab_size + 63) / 64;
        r.allowed = malloc((size_t)MAX_SEQS * words * sizeof *r.allowed);
        memset(r.allowed, 0xff, (size_t)MAX_SEQS * words * sizeof *r.allowed);
        for (int s = 0; s < MAX_SEQS; s++)
            if (c.vocab_size % 64)
                r.allowed[(size_t)s * words + words - 1] = ((uint64_t)1 << (c.vocab_size % 64)) - 1;
        t0 = now_s();
        if (ops->open(m, &o, &r.b) != SN_OK)
            die("open");
        const double open_s = now_s() - t0;
        double pf = 0;
        prefill(&r, &c, &pf);
        printf("{\"bench\":\"e2e_prefill\",\"gpu\":\"%s\",\"graphs\":%d,\"tokens_per_s\":%.0f,\"TFLOPs\":%.1f,\"open_s\":%.2f}\n",
               prop.name, graphs, pf, pf * prefill_flops_per_token / 1e12, open_s);
        const int batches[2] = {1, 64};
        for (int i = 0; i < 2; i++) {
            const int batch = batches[i];
            const double sec = decode(&r, batch, steps);
            double ctx_sum = 0;
            for (int s = 0; s < batch; s++)
                ctx_sum += r.ctx[s] - steps / 2.0;
            const double bytes = weight_bytes + ctx_sum * kv_bytes_per_pos;
            const double roof = bytes / bw;
            printf("{\"bench\":\"e2e_decode\",\"gpu\":\"%s\",\"graphs\":%d,\"batch\":%d,\"ctx\":%d,\"step_ms\":%.4f,"
                   "\"tokens_per_s\":%.1f,\"bytes\":%.0f,\"roofline_ms\":%.4f,\"fraction_of_roofline\":%.3f,\"copy_GBps\":%.0f}\n",
                   prop.name, graphs, batch, CTX, sec * 1e3, batch / sec, bytes, roof * 1e3, roof / sec, bw / 1e9);
            fprintf(stderr, "%-10s %-7d %10.3f %10.0f %12.3f %10.2f\n", graphs ? "on" : "off", batch, sec * 1e3,
                    batch / sec, roof * 1e3, roof / sec);
        }
        fflush(stdout);
        ops->close(r.b);
        free(r.logits);
        free(r.allowed);
    }
    hm_model_free(m);
    return 0;
}
