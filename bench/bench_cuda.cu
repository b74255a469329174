/*
 * bench_cuda.cu - the kernel benchmarks of scripts/gpu-check.sh, as ratios measured in one
 * run: one JSON object per measurement on stdout, then a readable table on stderr.
 *
 *   copy          device-to-device copy bandwidth (bytes read + written per second): the
 *                 roofline of the memory-bound kernels;
 *   decode_attn   paged decode attention: bytes of K and V read per second, and that as a
 *                 fraction of the copy bandwidth (Llama-3-8B layer shape: 32 query heads,
 *                 8 KV heads, head_dim 128; at least 256 MiB of KV per case);
 *   prefill_attn  causal paged prefill attention: TFLOP/s (4 * heads * head_dim * pairs,
 *                 pairs = causal (query, key) pairs), compared with torch's SDPA by
 *                 bench_cuda_torch.py on the same shapes;
 *   sample        fused sampling at vocabulary 128256, batch 1/16/64/256: microseconds per
 *                 call, plain launches and CUDA-graph replays (the graph capture itself is
 *                 checked here: a failure prints an error line); logits uniform in [-8, 8),
 *                 ids 0..63 of each row penalised, as bench_cuda_torch.py's.
 *
 * Usage: bench_cuda [--quick] [--only copy|decode|prefill|sample]
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "sn_cuda_kernels.h"

#define BENCH_CHECK(stmt)                                                                                      \
    do {                                                                                                       \
        cudaError_t e_ = (stmt);                                                                               \
        if (e_ != cudaSuccess) {                                                                               \
            fprintf(stderr, "bench_cuda: %s:%d: %s: %s\n", __FILE__, __LINE__, #stmt, cudaGetErrorString(e_)); \
            printf("{\"bench\":\"error\",\"where\":\"%s:%d\",\"what\":\"%s\"}\n", __FILE__, __LINE__,          \
                   cudaGetErrorString(e_));                                                                    \
            exit(1);                                                                                           \
        }                                                                                                      \
    } while (0)

namespace {

struct Row {
    char text[256];
};
std::vector<Row> table;

template <typename... A> void add_row(const char *fmt, A... a)
{
    Row r;
    snprintf(r.text, sizeof r.text, fmt, a...);
    table.push_back(r);
}

__global__ void fill_bf16(uint16_t *p, size_t n, uint32_t seed, float scale)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        const float v = ((float)(h & 0xffffff) / 16777216.0f * 2.0f - 1.0f) * scale;
        uint32_t u;
        memcpy(&u, &v, 4);
        p[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
    }
}

__global__ void fill_f32(float *p, size_t n, uint32_t seed, float scale)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        p[i] = ((float)(h & 0xffffff) / 16777216.0f * 2.0f - 1.0f) * scale;
    }
}

/* Median over `reps` timed regions (each `inner` back-to-back calls of f between two events,
 * so that the host's launch latency before the first call is spread over `inner` calls, as it
 * is hidden in a stream of real work) of the time per call, after `warm` untimed calls, ms. */
template <typename F> float time_ms(F f, int warm, int reps, int inner = 1)
{
    cudaEvent_t a, b;
    BENCH_CHECK(cudaEventCreate(&a));
    BENCH_CHECK(cudaEventCreate(&b));
    for (int i = 0; i < warm; i++)
        f();
    BENCH_CHECK(cudaDeviceSynchronize());
    std::vector<float> t;
    for (int i = 0; i < reps; i++) {
        BENCH_CHECK(cudaEventRecord(a));
        for (int j = 0; j < inner; j++)
            f();
        BENCH_CHECK(cudaEventRecord(b));
        BENCH_CHECK(cudaEventSynchronize(b));
        float ms = 0;
        BENCH_CHECK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    BENCH_CHECK(cudaEventDestroy(a));
    BENCH_CHECK(cudaEventDestroy(b));
    std::sort(t.begin(), t.end());
    return t[t.size() / 2] / inner;
}

double copy_bandwidth(bool quick)
{
    const size_t bytes = quick ? (256u << 20) : ((size_t)2 << 30);
    void *a, *b;
    BENCH_CHECK(cudaMalloc(&a, bytes));
    BENCH_CHECK(cudaMalloc(&b, bytes));
    BENCH_CHECK(cudaMemset(a, 1, bytes));
    const float ms = time_ms([&] { BENCH_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 3, 10, 4);
    const double gbps = 2.0 * bytes / (ms * 1e-3) / 1e9;
    printf("{\"bench\":\"copy\",\"bytes\":%zu,\"ms\":%.4f,\"GBps_read_plus_write\":%.1f}\n", bytes, ms, gbps);
    add_row("copy       %8.2f GiB D2D             %9.3f ms  %8.0f GB/s (read+write)", bytes / 1073741824.0, ms, gbps);
    BENCH_CHECK(cudaFree(a));
    BENCH_CHECK(cudaFree(b));
    return gbps;
}

struct Paged {
    uint16_t *k = nullptr, *v = nullptr;
    int32_t *tables = nullptr;
    int32_t table_stride = 0;
    size_t pool_elems = 0;
};

/* n_seqs sequences of max_len positions, blocks shuffled through the pool. */
Paged make_paged(int n_seqs, int max_len, int nkv, int hd, uint32_t seed)
{
    Paged p;
    p.table_stride = (max_len + 15) / 16;
    const int n_blocks = n_seqs * p.table_stride;
    p.pool_elems = (size_t)n_blocks * nkv * 16 * hd;
    BENCH_CHECK(cudaMalloc(&p.k, p.pool_elems * 2));
    BENCH_CHECK(cudaMalloc(&p.v, p.pool_elems * 2));
    fill_bf16<<<1024, 256>>>(p.k, p.pool_elems, seed, 1.0f);
    fill_bf16<<<1024, 256>>>(p.v, p.pool_elems, seed + 1, 1.0f);
    BENCH_CHECK(cudaGetLastError());
    std::vector<int32_t> perm(n_blocks);
    for (int i = 0; i < n_blocks; i++)
        perm[i] = i;
    uint64_t s = seed;
    for (int i = n_blocks - 1; i > 0; i--) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        std::swap(perm[i], perm[(s >> 33) % (uint64_t)(i + 1)]);
    }
    BENCH_CHECK(cudaMalloc(&p.tables, (size_t)n_blocks * 4));
    BENCH_CHECK(cudaMemcpy(p.tables, perm.data(), (size_t)n_blocks * 4, cudaMemcpyHostToDevice));
    return p;
}

void free_paged(Paged &p)
{
    BENCH_CHECK(cudaFree(p.k));
    BENCH_CHECK(cudaFree(p.v));
    BENCH_CHECK(cudaFree(p.tables));
}

void bench_decode(double copy_gbps, bool quick)
{
    const int nh = 32, nkv = 8, hd = 128;
    struct {
        int batch, ctx;
    } cases[] = {{1, 131072}, {16, 8192}, {64, 4096}, {256, 1024}, {32, 2056}};
    for (auto c : cases) {
        if (quick && c.batch * (size_t)c.ctx > 70000)
            c.ctx = 70000 / c.batch;
        Paged p = make_paged(c.batch, c.ctx, nkv, hd, 11);
        std::vector<int32_t> rows(c.batch), ctx(c.batch, c.ctx);
        for (int i = 0; i < c.batch; i++)
            rows[i] = i;
        int32_t *d_rows, *d_ctx;
        uint16_t *d_q, *d_out;
        BENCH_CHECK(cudaMalloc(&d_rows, c.batch * 4));
        BENCH_CHECK(cudaMalloc(&d_ctx, c.batch * 4));
        BENCH_CHECK(cudaMemcpy(d_rows, rows.data(), c.batch * 4, cudaMemcpyHostToDevice));
        BENCH_CHECK(cudaMemcpy(d_ctx, ctx.data(), c.batch * 4, cudaMemcpyHostToDevice));
        BENCH_CHECK(cudaMalloc(&d_q, (size_t)c.batch * nh * hd * 2));
        BENCH_CHECK(cudaMalloc(&d_out, (size_t)c.batch * nh * hd * 2));
        fill_bf16<<<256, 256>>>(d_q, (size_t)c.batch * nh * hd, 5, 1.0f);
        const sn_cuda_paged_kv kv = {p.k, p.v, p.tables, p.table_stride, nh, nkv, hd, 1.0f / sqrtf((float)hd)};
        const size_t ws = sn_cuda_attn_decode_workspace(c.batch, nh, hd, nkv, c.ctx);
        void *d_ws = nullptr;
        if (ws)
            BENCH_CHECK(cudaMalloc(&d_ws, ws));
        const float ms = time_ms(
            [&] {
                BENCH_CHECK(sn_cuda_attn_decode(d_out, nh * hd, d_q, nh * hd, &kv, d_rows, d_ctx, c.batch, c.ctx, d_ws, ws, 0));
            },
            3, 10, 10);
        const double kv_bytes = 2.0 * c.batch * (double)c.ctx * nkv * hd * 2;
        const double gbps = kv_bytes / (ms * 1e-3) / 1e9;
        printf("{\"bench\":\"decode_attn\",\"batch\":%d,\"ctx\":%d,\"n_heads\":%d,\"n_kv_heads\":%d,\"head_dim\":%d,"
               "\"kv_bytes\":%.0f,\"ms\":%.4f,\"kv_GBps\":%.1f,\"copy_GBps\":%.1f,\"fraction_of_copy\":%.3f}\n",
               c.batch, c.ctx, nh, nkv, hd, kv_bytes, ms, gbps, copy_gbps, gbps / copy_gbps);
        add_row("decode     batch %3d ctx %6d %4.0f MiB KV %7.3f ms  %8.0f GB/s = %.2f of copy", c.batch, c.ctx,
                kv_bytes / 1048576.0, ms, gbps, gbps / copy_gbps);
        BENCH_CHECK(cudaFree(d_rows));
        BENCH_CHECK(cudaFree(d_ctx));
        BENCH_CHECK(cudaFree(d_q));
        BENCH_CHECK(cudaFree(d_out));
        if (d_ws)
            BENCH_CHECK(cudaFree(d_ws));
        free_paged(p);
    }
}

void bench_prefill(bool quick)
{
    const int nh = 32, nkv = 8, hd = 128;
    struct {
        int batch, len;
    } cases[] = {{1, 4096}, {4, 2048}, {16, 512}};
    for (auto c : cases) {
        if (quick)
            c.len /= 4;
        const int n_tokens = c.batch * c.len;
        Paged p = make_paged(c.batch, c.len, nkv, hd, 21);
        std::vector<int32_t> rows(c.batch), start(c.batch + 1), pos(c.batch, 0);
        for (int i = 0; i < c.batch; i++)
            rows[i] = i;
        for (int i = 0; i <= c.batch; i++)
            start[i] = i * c.len;
        int32_t *d_rows, *d_start, *d_pos;
        uint16_t *d_q, *d_out;
        BENCH_CHECK(cudaMalloc(&d_rows, c.batch * 4));
        BENCH_CHECK(cudaMalloc(&d_start, (c.batch + 1) * 4));
        BENCH_CHECK(cudaMalloc(&d_pos, c.batch * 4));
        BENCH_CHECK(cudaMemcpy(d_rows, rows.data(), c.batch * 4, cudaMemcpyHostToDevice));
        BENCH_CHECK(cudaMemcpy(d_start, start.data(), (c.batch + 1) * 4, cudaMemcpyHostToDevice));
        BENCH_CHECK(cudaMemcpy(d_pos, pos.data(), c.batch * 4, cudaMemcpyHostToDevice));
        BENCH_CHECK(cudaMalloc(&d_q, (size_t)n_tokens * nh * hd * 2));
        BENCH_CHECK(cudaMalloc(&d_out, (size_t)n_tokens * nh * hd * 2));
        fill_bf16<<<1024, 256>>>(d_q, (size_t)n_tokens * nh * hd, 7, 1.0f);
        const sn_cuda_paged_kv kv = {p.k, p.v, p.tables, p.table_stride, nh, nkv, hd, 1.0f / sqrtf((float)hd)};
        const float ms = time_ms(
            [&] {
                BENCH_CHECK(sn_cuda_attn_prefill(d_out, nh * hd, d_q, nh * hd, &kv, d_rows, d_start, d_pos, c.batch,
                                                 n_tokens, 0));
            },
            2, 10, 5);
        const double pairs = (double)c.batch * c.len * (c.len + 1) / 2.0;
        const double tflops = 4.0 * nh * hd * pairs / (ms * 1e-3) / 1e12;
        printf("{\"bench\":\"prefill_attn\",\"batch\":%d,\"len\":%d,\"n_heads\":%d,\"n_kv_heads\":%d,\"head_dim\":%d,"
               "\"causal\":true,\"ms\":%.4f,\"TFLOPs\":%.1f}\n",
               c.batch, c.len, nh, nkv, hd, ms, tflops);
        add_row("prefill    batch %3d len %6d causal      %7.3f ms  %8.1f TFLOP/s", c.batch, c.len, ms, tflops);
        BENCH_CHECK(cudaFree(d_rows));
        BENCH_CHECK(cudaFree(d_start));
        BENCH_CHECK(cudaFree(d_pos));
        BENCH_CHECK(cudaFree(d_q));
        BENCH_CHECK(cudaFree(d_out));
        free_paged(p);
    }
}

void bench_sample(bool quick)
{
    const int vocab = 128256, words = (vocab + 63) / 64;
    const int batches[] = {1, 16, 64, 256};
    for (int batch : batches) {
        float *d_logits, *d_probs = nullptr;
        uint64_t *d_seen;
        int32_t *d_tok;
        sn_cuda_sample_params *d_prm;
        BENCH_CHECK(cudaMalloc(&d_logits, (size_t)batch * vocab * 4));
        fill_f32<<<1024, 256>>>(d_logits, (size_t)batch * vocab, 3, 8.0f);
        /* ids 0..63 of every row under the penalty, as bench_cuda_torch.py's `seen` */
        std::vector<uint64_t> seen((size_t)batch * words, 0);
        for (int i = 0; i < batch; i++)
            seen[(size_t)i * words] = ~(uint64_t)0;
        BENCH_CHECK(cudaMalloc(&d_seen, (size_t)batch * words * 8));
        BENCH_CHECK(cudaMemcpy(d_seen, seen.data(), (size_t)batch * words * 8, cudaMemcpyHostToDevice));
        BENCH_CHECK(cudaMalloc(&d_tok, batch * 4));
        BENCH_CHECK(cudaMalloc(&d_prm, batch * sizeof(sn_cuda_sample_params)));
        std::vector<sn_cuda_sample_params> prm(batch);
        for (int i = 0; i < batch; i++)
            prm[i] = {0.8f, 50, 0.9f, 0.0f, 1.1f, 0, 1234u + i, 0};
        BENCH_CHECK(cudaMemcpy(d_prm, prm.data(), batch * sizeof(prm[0]), cudaMemcpyHostToDevice));
        const size_t ws = sn_cuda_sample_workspace(batch, vocab);
        void *d_ws;
        BENCH_CHECK(cudaMalloc(&d_ws, ws));
        auto launch = [&](cudaStream_t st) {
            return sn_cuda_sample(d_tok, d_probs, d_logits, vocab, nullptr, d_seen, d_prm, batch, vocab, d_ws, ws, st);
        };
        const int n = quick ? 10 : 50;
        const float plain = time_ms([&] { BENCH_CHECK(launch(0)); }, 2 * n, 5, n);
        /* the same call captured once in a graph and replayed */
        cudaStream_t st;
        BENCH_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        BENCH_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        const cudaError_t cap = launch(st);
        BENCH_CHECK(cudaStreamEndCapture(st, &graph));
        BENCH_CHECK(cap);
        BENCH_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        cudaEvent_t a, b;
        BENCH_CHECK(cudaEventCreate(&a));
        BENCH_CHECK(cudaEventCreate(&b));
        for (int i = 0; i < 3; i++)
            BENCH_CHECK(cudaGraphLaunch(exec, st));
        BENCH_CHECK(cudaEventRecord(a, st));
        for (int i = 0; i < n; i++)
            BENCH_CHECK(cudaGraphLaunch(exec, st));
        BENCH_CHECK(cudaEventRecord(b, st));
        BENCH_CHECK(cudaEventSynchronize(b));
        float gms = 0;
        BENCH_CHECK(cudaEventElapsedTime(&gms, a, b));
        gms /= n;
        printf("{\"bench\":\"sample\",\"vocab\":%d,\"batch\":%d,\"top_k\":50,\"top_p\":0.9,\"temperature\":0.8,"
               "\"us\":%.2f,\"graph_us\":%.2f}\n",
               vocab, batch, plain * 1e3, gms * 1e3);
        add_row("sample     batch %3d vocab %6d       %8.1f us (graph %.1f us)", batch, vocab, plain * 1e3, gms * 1e3);
        BENCH_CHECK(cudaGraphExecDestroy(exec));
        BENCH_CHECK(cudaGraphDestroy(graph));
        BENCH_CHECK(cudaStreamDestroy(st));
        BENCH_CHECK(cudaEventDestroy(a));
        BENCH_CHECK(cudaEventDestroy(b));
        BENCH_CHECK(cudaFree(d_logits));
        BENCH_CHECK(cudaFree(d_seen));
        BENCH_CHECK(cudaFree(d_tok));
        BENCH_CHECK(cudaFree(d_prm));
        BENCH_CHECK(cudaFree(d_ws));
    }
}

} // namespace

int main(int argc, char **argv)
{
    bool quick = false;
    const char *only = nullptr;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else {
            fprintf(stderr, "usage: bench_cuda [--quick] [--only copy|decode|prefill|sample]\n");
            return 2;
        }
    }
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("bench_cuda: SKIP: no CUDA device\n");
        return 77;
    }
    cudaDeviceProp prop;
    BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("{\"bench\":\"device\",\"name\":\"%s\",\"sm\":\"%d%d\",\"sms\":%d,\"mem_GiB\":%.1f,\"l2_MiB\":%.1f}\n", prop.name,
           prop.major, prop.minor, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0,
           prop.l2CacheSize / 1048576.0);
    fflush(stdout);
    double copy_gbps = 0;
    if (!only || !strcmp(only, "copy") || !strcmp(only, "decode"))
        copy_gbps = copy_bandwidth(quick);
    fflush(stdout);
    if (!only || !strcmp(only, "decode"))
        bench_decode(copy_gbps, quick);
    fflush(stdout);
    if (!only || !strcmp(only, "prefill"))
        bench_prefill(quick);
    fflush(stdout);
    if (!only || !strcmp(only, "sample"))
        bench_sample(quick);
    fflush(stdout);
    fprintf(stderr, "\nbench_cuda on %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
    for (const Row &r : table)
        fprintf(stderr, "  %s\n", r.text);
    return 0;
}
