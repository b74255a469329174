/*
 * bench_engine.c - prefill and decode speed of the CPU engine against this machine's memory
 * bandwidth, for random-weight Llama models shaped like the "stories" 15M and 110M models.
 *
 * For each shape it writes a Hugging Face folder (config.json + model.safetensors, f32
 * weights), measures the memory read bandwidth with all threads, then times through the
 * public engine API:
 *   prefill  B sessions each fed a P-token prompt, stepped until every prompt is cached;
 *   decode   B sessions generating (raw ids, greedy), tokens per second over G steps.
 * The roofline of decode at batch 1 is bandwidth / bytes of weights read per token; the
 * ratio printed is measured tokens/s over that. Goals (issue 4): batch-1 decode >= 0.8x the
 * roofline; batch-32 decode throughput >= 10x batch 1. Prints one JSON object per
 * measurement, then a table; exits 1 when a goal is missed.
 *
 * --gguf FILE adds a real model (issue 6: SmolLM2-135M-Instruct, Q4_1, as scripts/test.sh
 * fetches it) at batches 1 and 8, with its roofline from the bytes its quantised weights
 * take: every matrix once per step, the embedding one row (or whole, as the tied head).
 * --models none leaves out the random models.
 *
 * --backend auto|cuda, --tp N and --dp M measure another backend or layout through the same
 * engine steps (a multi-GPU server: --backend cuda --dp 8 spreads the B sessions over 8
 * replicas). The roofline and the goals are the CPU backend's, so they are printed only for
 * --backend cpu without --tp or --dp.
 *
 * usage: bench_engine [--models 15M,110M|none] [--batches 1,8,32,64] [--prompt P] [--gen G]
 *                     [--threads N] [--dir DIR] [--gguf FILE] [--backend B] [--tp N] [--dp M]
 */
#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "model.h"
#include "sensorium/sensorium.h"

typedef struct shape {
    const char *name;
    int dim, layers, heads, kv_heads, ffn, vocab, context;
} shape;

/* Karpathy's llama2.c "stories" models (tinyllamas): dimensions as published. */
static const shape shapes[] = {
    {"15M", 288, 6, 6, 6, 768, 32000, 256},
    {"110M", 768, 12, 12, 12, 2048, 32000, 1024},
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------------------------------- */
/* A random model on disk                                                                   */
/* ---------------------------------------------------------------------------------------- */

typedef struct tensor_spec {
    char name[96];
    int64_t rows, cols; /* cols 0: a vector */
} tensor_spec;

static uint64_t rng = 0x853c49e6748fea9bull;

static float randn(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    double u1 = ((double)(rng >> 11) + 1.0) * 0x1.0p-53;
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    double u2 = (double)(rng >> 11) * 0x1.0p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

/* Writes dir/config.json and dir/model.safetensors; returns the weight bytes. */
static long long write_model(const shape *s, const char *dir)
{
    mkdir(dir, 0755);
    int hd = s->dim / s->heads;
    tensor_spec *t = calloc((size_t)(3 + 9 * s->layers), sizeof *t);
    int n = 0;
    snprintf(t[n].name, sizeof t[n].name, "model.embed_tokens.weight");
    t[n].rows = s->vocab, t[n++].cols = s->dim;
    for (int l = 0; l < s->layers; l++) {
        const char *names[] = {"input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                               "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
        int64_t rows[] = {s->dim, s->dim, (int64_t)s->heads * hd, (int64_t)s->kv_heads * hd,
                          (int64_t)s->kv_heads * hd, s->dim, s->ffn, s->ffn, s->dim};
        int64_t cols[] = {0, 0, s->dim, s->dim, s->dim, (int64_t)s->heads * hd, s->dim, s->dim, s->ffn};
        for (int k = 0; k < 9; k++, n++) {
            snprintf(t[n].name, sizeof t[n].name, "model.layers.%d.%s.weight", l, names[k]);
            t[n].rows = rows[k];
            t[n].cols = cols[k];
        }
    }
    snprintf(t[n].name, sizeof t[n].name, "model.norm.weight");
    t[n].rows = s->dim, t[n++].cols = 0;
    snprintf(t[n].name, sizeof t[n].name, "lm_head.weight");
    t[n].rows = s->vocab, t[n++].cols = s->dim;

    json_t *hdr = json_object();
    long long off = 0;
    for (int i = 0; i < n; i++) {
        long long count = t[i].rows * (t[i].cols ? t[i].cols : 1);
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string("F32"));
        json_t *shp = json_array();
        json_array_append_new(shp, json_integer(t[i].rows));
        if (t[i].cols)
            json_array_append_new(shp, json_integer(t[i].cols));
        json_object_set_new(e, "shape", shp);
        json_t *offs = json_array();
        json_array_append_new(offs, json_integer(off));
        json_array_append_new(offs, json_integer(off + count * 4));
        json_object_set_new(e, "data_offsets", offs);
        json_object_set_new(hdr, t[i].name, e);
        off += count * 4;
    }
    char *text = json_dumps(hdr, JSON_COMPACT);
    json_decref(hdr);
    size_t hlen = strlen(text), padded = (hlen + 7) / 8 * 8;
    char path[2048];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    uint64_t le = padded;
    fwrite(&le, 8, 1, f);
    fwrite(text, 1, hlen, f);
    for (size_t i = hlen; i < padded; i++)
        fputc(' ', f);
    free(text);
    float *buf = malloc(sizeof(float) * 1 << 20);
    for (int i = 0; i < n; i++) {
        long long count = t[i].rows * (t[i].cols ? t[i].cols : 1);
        /* norms near 1; matrices scaled so activations stay O(1) */
        float scale = t[i].cols ? 1.0f / sqrtf((float)t[i].cols) : 0.0f;
        for (long long done = 0; done < count;) {
            long long k = count - done < (1 << 20) ? count - done : (1 << 20);
            for (long long j = 0; j < k; j++)
                buf[j] = t[i].cols ? scale * randn() : 1.0f + 0.1f * randn();
            fwrite(buf, sizeof(float), (size_t)k, f);
            done += k;
        }
    }
    free(buf);
    fclose(f);
    free(t);
    snprintf(path, sizeof path, "%s/config.json", dir);
    f = fopen(path, "w");
    fprintf(f, "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": %d, \"hidden_size\": %d, "
               "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
               "\"num_key_value_heads\": %d, \"max_position_embeddings\": %d, \"rms_norm_eps\": 1e-5, "
               "\"rope_theta\": 10000.0, \"tie_word_embeddings\": false}\n",
            s->vocab, s->dim, s->ffn, s->layers, s->heads, s->kv_heads, s->context);
    fclose(f);
    return off;
}

/* ---------------------------------------------------------------------------------------- */
/* Bandwidth                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Read bandwidth in bytes/s: all threads streaming through a buffer far larger than the
 * caches, best of several passes. The loop keeps eight independent integer accumulators so
 * that it is bound by memory, not by the latency of a chain of adds. Decode reads the
 * weights once per step, so this is its ceiling. */
static double read_bandwidth(void)
{
    size_t n = (size_t)512 << 20 >> 3; /* 512 MiB of 64-bit words */
    uint64_t *a = malloc(n * sizeof *a);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        a[i] = i * 0x9E3779B97F4A7C15ull;
    double best = 0;
    volatile uint64_t sink = 0;
    for (int pass = 0; pass < 5; pass++) {
        double t0 = now();
        uint64_t total = 0;
#pragma omp parallel for reduction(^ : total) schedule(static)
        for (size_t i = 0; i < n; i += 8) {
            uint64_t x = a[i] ^ a[i + 1] ^ a[i + 2] ^ a[i + 3];
            uint64_t y = a[i + 4] ^ a[i + 5] ^ a[i + 6] ^ a[i + 7];
            total ^= x ^ y;
        }
        double t = now() - t0;
        sink ^= total;
        if ((double)(n * sizeof *a) / t > best)
            best = (double)(n * sizeof *a) / t;
    }
    (void)sink;
    free(a);
    return best;
}

/* ---------------------------------------------------------------------------------------- */
/* Measurements                                                                             */
/* ---------------------------------------------------------------------------------------- */

static int die(const char *what)
{
    fprintf(stderr, "bench_engine: %s: %s\n", what, sn_errmsg());
    exit(1);
}

/* Compute ceiling in FLOP/s: OpenBLAS sgemm of 1536^3 on all threads, best of three. A
 * decode batch large enough to be compute-bound cannot beat flops / (2 * parameters)
 * tokens/s: the bound that says how much batching can buy on this machine. */
static double gemm_flops(void)
{
    const int n = 1536;
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b),
          *c = malloc((size_t)n * n * sizeof *c);
    for (size_t i = 0; i < (size_t)n * n; i++) {
        a[i] = (float)(i % 97) * 0.01f;
        b[i] = (float)(i % 89) * 0.01f;
    }
    double best = 0;
    for (int pass = 0; pass < 3; pass++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double t = now() - t0;
        if (2.0 * n * n * n / t > best)
            best = 2.0 * n * n * n / t;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

/* Prefill of `batch` prompts of `prompt` tokens: tokens/s. */
static double bench_prefill(sn_engine *e, int batch, int prompt, int vocab)
{
    sn_session **s = calloc((size_t)batch, sizeof *s);
    int32_t *ids = malloc((size_t)prompt * sizeof *ids);
    for (int i = 0; i < prompt; i++)
        ids[i] = (int32_t)((i * 7919 + 13) % vocab);
    sn_session_opts so = sn_session_opts_default();
    so.no_bos = 1;
    for (int b = 0; b < batch; b++)
        if (sn_session_open(e, &so, &s[b]) != SN_OK || sn_session_feed_tokens(s[b], ids, (size_t)prompt) != SN_OK)
            die("prefill");
    double t0 = now();
    if (sn_engine_run(e) != SN_OK)
        die("prefill");
    double t = now() - t0;
    for (int b = 0; b < batch; b++)
        sn_session_close(s[b]);
    free(s);
    free(ids);
    return (double)batch * prompt / t;
}

/* Decode of `batch` sessions after a short prompt: generated tokens/s over `gen` steps. */
static double bench_decode(sn_engine *e, int batch, int gen, int vocab)
{
    sn_session **s = calloc((size_t)batch, sizeof *s);
    sn_session_opts so = sn_session_opts_default();
    so.no_bos = 1;
    for (int b = 0; b < batch; b++) {
        int32_t ids[4] = {b % vocab, (b + 1) % vocab, (b + 2) % vocab, (b + 3) % vocab};
        if (sn_session_open(e, &so, &s[b]) != SN_OK || sn_session_feed_tokens(s[b], ids, 4) != SN_OK ||
            sn_session_generate(s[b], NULL, 0, gen + 1, 0) != SN_OK)
            die("decode");
    }
    /* The first step prefills the prompts and samples once; time the decode steps after. */
    int32_t n;
    if (sn_engine_step(e, &n) != SN_OK)
        die("decode");
    double t0 = now();
    long long tokens = 0;
    for (;;) {
        if (sn_engine_step(e, &n) != SN_OK)
            die("decode");
        if (n == 0)
            break;
        tokens += n;
    }
    double t = now() - t0;
    for (int b = 0; b < batch; b++)
        sn_session_close(s[b]);
    free(s);
    return (double)tokens / t;
}

/* Bytes of weights one decode step reads: every matrix and norm, one embedding row, and
 * the output head (the whole embedding when tied). */
static double step_bytes(const char *path)
{
    sn_model *m;
    if (sn_model_open(path, &m) != SN_OK)
        die("opening the model");
    const sn_model_config *c = sn_model_config_of(m);
    double bytes = (double)sn_model_embed(m)->nbytes / c->vocab_size + (double)sn_model_norm(m)->nbytes +
                   (double)sn_model_lm_head(m)->nbytes;
    for (int32_t l = 0; l < c->n_layers; l++) {
        const sn_layer_weights *w = sn_model_layer(m, l);
        const sn_tensor *t[] = {w->attn_norm, w->wq, w->wk, w->wv, w->wo, w->ffn_norm, w->w_gate, w->w_up, w->w_down};
        for (size_t k = 0; k < sizeof t / sizeof *t; k++)
            bytes += (double)t[k]->nbytes;
    }
    sn_model_close(m);
    return bytes;
}

/* The backend and layout measured (--backend, --tp, --dp). */
static const char *g_backend = "cpu";
static int g_tp = 1, g_dp = 1;

static int measuring_cpu_reference(void) { return strcmp(g_backend, "cpu") == 0 && g_tp == 1 && g_dp == 1; }

typedef struct report {
    char table[8192];
    size_t len;
    int missed;
    double flops;  /* the machine's sgemm FLOP/s */
} report;

/* Prefill and decode of one model at each batch size, against its roofline; goals checks
 * issue 4's goals. */
static void bench_model(report *r, const char *name, const char *path, double per_token, double bw, int vocab,
                        const int *batches, int n_batches, int prompt, int gen, int threads, int goals)
{
    const double roofline = bw / per_token;
    sn_model *m;
    if (sn_model_open(path, &m) != SN_OK)
        die("opening the model");
    /* multiply-adds per token: every matrix element once (the head included) */
    const sn_model_config *c = sn_model_config_of(m);
    const double params = (double)c->n_layers * ((double)c->hidden * c->head_dim * (c->n_heads * 2 + c->n_kv_heads * 2) +
                                                 3.0 * c->hidden * c->intermediate) +
                          (double)c->vocab_size * c->hidden;
    sn_model_close(m);
    const double ceiling = r->flops / (2 * params);
    double decode1 = 0;
    for (int bi = 0; bi < n_batches; bi++) {
        int batch = batches[bi];
        sn_engine_opts eo = sn_engine_opts_default();
        eo.model_dir = path;
        eo.threads = threads;
        eo.max_sessions = batch;
        eo.max_batch_tokens = prompt * batch < 2048 ? prompt * batch : 2048;
        if (eo.max_batch_tokens < batch)
            eo.max_batch_tokens = batch;
        eo.kv_bytes = (size_t)1 << 30;
        eo.backend = g_backend;
        eo.tp = g_tp;
        eo.dp = g_dp;
        sn_engine *e;
        if (sn_engine_open(&eo, &e) != SN_OK)
            die("opening the engine");
        if (bi == 0)
            fprintf(stderr, "bench_engine: %s\n", sn_engine_describe(e));
        double pf = bench_prefill(e, batch, prompt, vocab);
        double dc = bench_decode(e, batch, gen, vocab);
        sn_engine_close(e);
        if (batch == 1)
            decode1 = dc;
        char note[96] = "";
        if (!measuring_cpu_reference()) {
            if (batch > 1 && decode1 > 0)
                snprintf(note, sizeof note, "%.1fx batch 1", dc / decode1);
        } else if (goals && batch == 1) {
            int met = dc >= 0.8 * roofline;
            r->missed |= !met;
            snprintf(note, sizeof note, "goal >= 0.8x roofline: %s", met ? "met" : "MISSED");
        } else if (goals && batch == 32 && decode1 > 0) {
            int met = dc >= 10 * decode1;
            r->missed |= !met;
            snprintf(note, sizeof note, "goal >= 10x batch 1 (%.1fx; compute ceiling %.1fx): %s", dc / decode1,
                     ceiling / decode1, met ? "met" : "MISSED");
        } else if (batch > 1 && decode1 > 0) {
            snprintf(note, sizeof note, "%.1fx batch 1", dc / decode1);
        }
        printf("{\"bench\": \"engine\", \"model\": \"%s\", \"backend\": \"%s\", \"tp\": %d, \"dp\": %d, "
               "\"step_weight_bytes\": %.0f, \"batch\": %d, \"prompt\": %d, \"prefill_tokens_per_s\": %.1f, "
               "\"decode_tokens_per_s\": %.1f",
               name, g_backend, g_tp, g_dp, per_token, batch, prompt, pf, dc);
        if (measuring_cpu_reference())
            printf(", \"roofline_tokens_per_s\": %.1f, \"decode_roofline_ratio\": %.3f, \"compute_ceiling_tokens_per_s\": %.1f",
                   roofline, dc / roofline, ceiling);
        printf("}\n");
        fflush(stdout);
        char ratio[32] = "-";
        if (measuring_cpu_reference())
            snprintf(ratio, sizeof ratio, "%.2fx", dc / roofline);
        r->len += (size_t)snprintf(r->table + r->len, sizeof r->table - r->len, "%-14s %6d %14.0f %14.1f %16s %s\n",
                                   name, batch, pf, dc, ratio, note);
    }
}

static int parse_list(const char *arg, int *out, int cap)
{
    int n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", arg);
    for (char *save = NULL, *p = strtok_r(buf, ",", &save); p && n < cap; p = strtok_r(NULL, ",", &save))
        out[n++] = atoi(p);
    return n;
}

int main(int argc, char **argv)
{
    const char *models = "15M,110M", *dir = "/tmp/sn_bench_models", *gguf = NULL;
    int batches[8] = {1, 8, 32, 64}, n_batches = 4, prompt = 128, gen = 32, threads = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--models") == 0 && i + 1 < argc) models = argv[++i];
        else if (strcmp(argv[i], "--batches") == 0 && i + 1 < argc) n_batches = parse_list(argv[++i], batches, 8);
        else if (strcmp(argv[i], "--prompt") == 0 && i + 1 < argc) prompt = atoi(argv[++i]);
        else if (strcmp(argv[i], "--gen") == 0 && i + 1 < argc) gen = atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) dir = argv[++i];
        else if (strcmp(argv[i], "--gguf") == 0 && i + 1 < argc) gguf = argv[++i];
        else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc) g_backend = argv[++i];
        else if (strcmp(argv[i], "--tp") == 0 && i + 1 < argc) g_tp = atoi(argv[++i]);
        else if (strcmp(argv[i], "--dp") == 0 && i + 1 < argc) g_dp = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--models 15M,110M|none] [--batches 1,8,32,64] [--prompt P] [--gen G] [--threads N] [--dir DIR] [--gguf FILE]\n"
                            "       [--backend cpu|auto|cuda] [--tp N] [--dp M]\n", argv[0]);
            return 2;
        }
    }
#ifdef _OPENMP
    if (threads > 0)
        omp_set_num_threads(threads);
#endif
    double bw = read_bandwidth();
    report r = {.len = 0, .flops = gemm_flops()};
    printf("{\"bench\": \"machine\", \"read_bandwidth_gbps\": %.2f, \"sgemm_gflops\": %.1f}\n", bw / 1e9, r.flops / 1e9);
    mkdir(dir, 0755);
    r.len += (size_t)snprintf(r.table, sizeof r.table,
                              "\nmemory read bandwidth: %.1f GB/s, sgemm: %.0f GFLOP/s (all threads)\n\n%-14s %6s %14s %14s %16s %s\n",
                              bw / 1e9, r.flops / 1e9, "MODEL", "BATCH", "PREFILL tok/s", "DECODE tok/s", "DECODE/ROOFLINE", "");
    for (size_t m = 0; m < sizeof shapes / sizeof *shapes; m++) {
        const shape *s = &shapes[m];
        if (!strstr(models, s->name))
            continue;
        char path[1024], name[64];
        snprintf(path, sizeof path, "%s/stories%s", dir, s->name);
        snprintf(name, sizeof name, "stories%s", s->name);
        fprintf(stderr, "bench_engine: writing a random %s model to %s\n", s->name, path);
        write_model(s, path);
        bench_model(&r, name, path, step_bytes(path), bw, s->vocab, batches, n_batches, prompt, gen, threads, 1);
        snprintf(path, sizeof path, "%s/stories%s/model.safetensors", dir, s->name);
        unlink(path);
        snprintf(path, sizeof path, "%s/stories%s/config.json", dir, s->name);
        unlink(path);
        snprintf(path, sizeof path, "%s/stories%s", dir, s->name);
        rmdir(path);
    }
    rmdir(dir);
    if (gguf) {
        sn_model *m;
        if (sn_model_open(gguf, &m) != SN_OK)
            die("opening the GGUF");
        int vocab = sn_model_config_of(m)->vocab_size;
        sn_model_close(m);
        const char *base = strrchr(gguf, '/');
        char name[15];
        snprintf(name, sizeof name, "%s", base ? base + 1 : gguf);
        static const int real_batches[] = {1, 8};
        bench_model(&r, name, gguf, step_bytes(gguf), bw, vocab, real_batches, 2, prompt, gen, threads, 0);
    }
    fputs(r.table, stdout);
    printf("\nroofline = memory read bandwidth / weight bytes read per decode step (as stored: f32 for\n"
           "the random models, the GGUF's own quantised bytes); decode at batch B counts B tokens per\n"
           "step; DECODE/ROOFLINE compares with the batch-1 roofline. The compute ceiling of batched\n"
           "decode is sgemm FLOP/s / (2 x parameters) tokens/s: no batch size decodes faster.\n");
    return r.missed ? 1 : 0;
}
