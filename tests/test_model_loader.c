/*
 * test_model_loader.c - models on disk: both layouts, sharded checkpoints, every dtype, tied
 * and untied heads, GQA ratios and odd sizes, and every way a download can be broken, each a
 * clear one-line error naming the file and the tensor.
 *
 * Models come from tests/reference/make_model.py (seeded random Llamas written by numpy);
 * broken ones are made by small python snippets that read, change and rewrite a file, and
 * the values the loader returns are compared with what numpy wrote.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"

static char dir[64];

static void setup(void)
{
    strcpy(dir, "/tmp/sn_model_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

TestSuite(model_loader, .init = setup, .fini = teardown, .timeout = 120);

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Writes a model with make_model.py ARGS into dir/NAME; returns its path (static: one per
 * slot, so a test can hold a few at once). */
static const char *make_model(const char *name, const char *args)
{
    static char paths[4][128];
    static int next;
    char *path = paths[next++ % 4];
    snprintf(path, sizeof paths[0], "%s/%s", dir, name);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "python3 %s/tests/reference/make_model.py %s %s", SN_SOURCE_DIR, path, args);
    cr_assert_eq(system(cmd), 0, "make_model.py failed: %s", cmd);
    return path;
}

/* Python helpers every snippet starts with: P is the model folder. */
static const char PRELUDE[] =
    "import json, os, sys\n"
    "import numpy as np\n"
    "P = sys.argv[1]\n"
    "def path(f): return os.path.join(P, f)\n"
    "def read(f):\n"
    "    b = open(path(f), 'rb').read(); n = int.from_bytes(b[:8], 'little')\n"
    "    return json.loads(b[8:8 + n]), b[8 + n:]\n"
    "def write(f, h, data, pad=True, indent=None):\n"
    "    t = json.dumps(h, indent=indent).encode()\n"
    "    if pad: t += b' ' * ((8 - len(t) % 8) % 8)\n"
    "    open(path(f), 'wb').write(len(t).to_bytes(8, 'little') + t + data)\n"
    "def load_json(f): return json.load(open(path(f)))\n"
    "def save_json(f, o): json.dump(o, open(path(f), 'w'))\n";

/* Runs python code (after PRELUDE) on the model folder. */
static void py(const char *model, const char *code)
{
    char script[128], cmd[512];
    snprintf(script, sizeof script, "%s/snippet.py", dir);
    FILE *f = fopen(script, "w");
    cr_assert_not_null(f);
    fputs(PRELUDE, f);
    fputs(code, f);
    fputs("\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "python3 %s %s", script, model);
    cr_assert_eq(system(cmd), 0, "snippet failed:\n%s", code);
}

/* The values numpy reads for tensor NAME of FILE, as float32 (malloc'd; n set). */
static float *numpy_values(const char *model, const char *file, const char *name, size_t *n)
{
    char code[1024], out[128];
    snprintf(out, sizeof out, "%s/expect.f32", dir);
    snprintf(code, sizeof code,
             "h, data = read('%s'); e = h['%s']; raw = data[e['data_offsets'][0]:e['data_offsets'][1]]\n"
             "a = {'F32': lambda: np.frombuffer(raw, '<f4'),\n"
             "     'F16': lambda: np.frombuffer(raw, '<f2').astype(np.float32),\n"
             "     'BF16': lambda: (np.frombuffer(raw, '<u2').astype(np.uint32) << 16).view(np.float32)}[e['dtype']]()\n"
             "a.astype('<f4').tofile('%s')",
             file, name, out);
    py(model, code);
    FILE *f = fopen(out, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f) / 4;
    fseek(f, 0, SEEK_SET);
    float *v = malloc(*n * sizeof *v + 1);
    cr_assert_eq(fread(v, 4, *n, f), *n);
    fclose(f);
    return v;
}

/* The tensor's values through sn_convert_to_f32 (malloc'd). */
static float *loaded_values(const sn_tensor *t)
{
    size_t n = t->nbytes / sn_dtype_size(t->dtype);
    float *v = malloc(n * sizeof *v + 1);
    sn_convert_to_f32(t->dtype, t->data, v, n);
    return v;
}

/* The tensor's values equal, bit for bit, what numpy reads from the file. */
static void expect_numpy_values(const char *model, const char *file, const sn_tensor *t)
{
    size_t n;
    float *want = numpy_values(model, file, t->name, &n);
    cr_assert_eq(n, t->nbytes / sn_dtype_size(t->dtype), "%s: %zu values", t->name, n);
    float *got = loaded_values(t);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], 4) != 0 && bad++ < 3)
            cr_log_error("%s[%zu]: loaded %.9g, numpy %.9g", t->name, i, got[i], want[i]);
    cr_expect_eq(bad, 0, "%s (%s): %zu of %zu values differ from numpy's", t->name, sn_dtype_name(t->dtype), bad, n);
    free(got);
    free(want);
}

static int64_t elements(const sn_tensor *t)
{
    int64_t n = 1;
    for (int k = 0; k < t->ndim; k++)
        n *= t->shape[k];
    return n;
}

static void expect_shape(const sn_tensor *t, int64_t d0, int64_t d1)
{
    cr_assert_not_null(t);
    cr_expect_eq(t->ndim, d1 ? 2 : 1, "%s: ndim %d", t->name, t->ndim);
    cr_expect_eq(t->shape[0], d0, "%s: shape[0] %lld, want %lld", t->name, (long long)t->shape[0], (long long)d0);
    if (d1)
        cr_expect_eq(t->shape[1], d1, "%s: shape[1] %lld, want %lld", t->name, (long long)t->shape[1],
                     (long long)d1);
    cr_expect_eq(t->nbytes, (size_t)elements(t) * sn_dtype_size(t->dtype), "%s: nbytes", t->name);
    cr_expect_not_null(t->data);
    cr_expect_eq((uintptr_t)t->data % sn_dtype_size(t->dtype), 0, "%s: data misaligned", t->name);
}

/* Every tensor the configuration implies, bound with its shape. */
static void expect_all_shapes(const sn_model *m)
{
    const sn_model_config *c = sn_model_config_of(m);
    int64_t H = c->hidden, I = c->intermediate, Q = (int64_t)c->n_heads * c->head_dim,
            KV = (int64_t)c->n_kv_heads * c->head_dim;
    expect_shape(sn_model_embed(m), c->vocab_size, H);
    expect_shape(sn_model_lm_head(m), c->vocab_size, H);
    expect_shape(sn_model_norm(m), H, 0);
    for (int32_t l = 0; l < c->n_layers; l++) {
        const sn_layer_weights *w = sn_model_layer(m, l);
        cr_assert_not_null(w);
        expect_shape(w->attn_norm, H, 0);
        expect_shape(w->wq, Q, H);
        expect_shape(w->wk, KV, H);
        expect_shape(w->wv, KV, H);
        expect_shape(w->wo, H, Q);
        expect_shape(w->ffn_norm, H, 0);
        expect_shape(w->w_gate, I, H);
        expect_shape(w->w_up, I, H);
        expect_shape(w->w_down, H, I);
    }
    cr_expect_null(sn_model_layer(m, c->n_layers));
    cr_expect_null(sn_model_layer(m, -1));
}

static void layer_tensors(const sn_layer_weights *w, const sn_tensor *out[9])
{
    const sn_tensor *all[9] = {w->attn_norm, w->wq,     w->wk,   w->wv,    w->wo,
                               w->ffn_norm,  w->w_gate, w->w_up, w->w_down};
    memcpy(out, all, sizeof all);
}

static sn_model *open_ok(const char *model)
{
    sn_model *m = NULL;
    sn_status st = sn_model_open(model, &m);
    cr_assert_eq(st, SN_OK, "%s: %s: %s", model, sn_status_str(st), sn_errmsg());
    cr_assert_not_null(m);
    return m;
}

/* Opening fails with status want and a one-line message containing every needle (up to 3;
 * NULL ends the list early). */
static void expect_error(const char *model, sn_status want, const char *n1, const char *n2, const char *n3)
{
    sn_model *m = (sn_model *)&m;
    sn_status st = sn_model_open(model, &m);
    const char *msg = sn_errmsg();
    cr_assert_eq(st, want, "status '%s', want '%s'; message: %s", sn_status_str(st), sn_status_str(want), msg);
    cr_expect_null(m);
    const char *needles[] = {n1, n2, n3};
    for (int i = 0; i < 3 && needles[i]; i++)
        cr_expect_not_null(strstr(msg, needles[i]), "message lacks \"%s\": %s", needles[i], msg);
    cr_expect_null(strchr(msg, '\n'));
    cr_log_info("%s", msg);
}

static long file_size(const char *model, const char *file)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", model, file);
    struct stat sb;
    cr_assert_eq(stat(p, &sb), 0, "%s", p);
    return (long)sb.st_size;
}

/* Log lines the loader emits (the model loader logs unused tensors). */
static char logged[2048];
static int n_logged;

static void log_to_buffer(void *ctx, sn_log_level level, const char *source, const char *msg)
{
    (void)ctx;
    (void)level;
    n_logged++;
    snprintf(logged + strlen(logged), sizeof logged - strlen(logged), "[%s] %s\n", source, msg);
}

/* ---------------------------------------------------------------------------------------- */
/* Loading                                                                                  */
/* ---------------------------------------------------------------------------------------- */

Test(model_loader, hf_folder_binds_every_tensor_with_its_configuration)
{
    const char *model = make_model("hf", "--seed 1");
    sn_model *m = open_ok(model);
    const sn_model_config *c = sn_model_config_of(m);
    cr_expect_eq(c->vocab_size, 300);
    cr_expect_eq(c->hidden, 64);
    cr_expect_eq(c->intermediate, 96);
    cr_expect_eq(c->n_layers, 2);
    cr_expect_eq(c->n_heads, 4);
    cr_expect_eq(c->n_kv_heads, 2);
    cr_expect_eq(c->head_dim, 16);
    cr_expect_eq(c->max_positions, 512);
    cr_expect_float_eq(c->rms_eps, 1e-5f, 1e-12f);
    cr_expect_float_eq(c->rope_theta, 10000.0f, 1e-3f);
    cr_expect_eq(c->tie_embeddings, 0);
    cr_expect_eq(c->rope_llama3, 0);
    expect_all_shapes(m);
    cr_expect_neq(sn_model_lm_head(m), sn_model_embed(m));
    cr_expect_eq(sn_model_embed(m)->dtype, SN_DTYPE_F32);
    cr_expect_str_eq(sn_model_layer(m, 1)->w_up->name, "model.layers.1.mlp.up_proj.weight");
    const char *file = sn_model_norm(m)->file;
    cr_expect_str_eq(file + strlen(file) - strlen("/model.safetensors"), "/model.safetensors");
    expect_numpy_values(model, "model.safetensors", sn_model_embed(m));
    expect_numpy_values(model, "model.safetensors", sn_model_lm_head(m));
    expect_numpy_values(model, "model.safetensors", sn_model_norm(m));
    expect_numpy_values(model, "model.safetensors", sn_model_layer(m, 1)->wk);
    sn_model_close(m);
    sn_model_close(NULL);
}

/* F16 and BF16 tensors read exactly what numpy wrote, and round the float32 model of the same
 * seed to the dtype's precision (so the right bytes are read, not merely some bytes). */
Test(model_loader, every_dtype_reads_the_values_numpy_wrote)
{
    const char *ref_model = make_model("f32", "--seed 3");
    sn_model *ref = open_ok(ref_model);
    const char *dtypes[] = {"f16", "bf16"};
    const sn_dtype want[] = {SN_DTYPE_F16, SN_DTYPE_BF16};
    const double rel[] = {1.0 / 2048, 1.0 / 256}; /* half an ulp of an 11- or 8-bit significand */
    for (int d = 0; d < 2; d++) {
        char args[64];
        snprintf(args, sizeof args, "--seed 3 --dtype %s", dtypes[d]);
        const char *model = make_model(dtypes[d], args);
        sn_model *m = open_ok(model);
        expect_all_shapes(m);
        const sn_tensor *ts[] = {sn_model_embed(m), sn_model_layer(m, 0)->wq, sn_model_layer(m, 1)->w_down,
                                 sn_model_layer(m, 1)->ffn_norm, sn_model_lm_head(m)};
        const sn_tensor *rs[] = {sn_model_embed(ref), sn_model_layer(ref, 0)->wq, sn_model_layer(ref, 1)->w_down,
                                 sn_model_layer(ref, 1)->ffn_norm, sn_model_lm_head(ref)};
        for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) {
            cr_expect_eq(ts[i]->dtype, want[d], "%s: dtype %s", ts[i]->name, sn_dtype_name(ts[i]->dtype));
            expect_numpy_values(model, "model.safetensors", ts[i]);
            float *got = loaded_values(ts[i]);
            const float *f32 = rs[i]->data;
            size_t n = (size_t)elements(ts[i]), bad = 0;
            for (size_t k = 0; k < n; k++)
                bad += !(fabs((double)got[k] - f32[k]) <= rel[d] * fabs(f32[k]) + 0x1p-24);
            cr_expect_eq(bad, 0, "%s %s: %zu values not within rounding of the float32 model", dtypes[d],
                         ts[i]->name, bad);
            free(got);
        }
        sn_model_close(m);
    }
    sn_model_close(ref);
}

Test(model_loader, sharded_checkpoint_binds_tensors_from_every_shard)
{
    const char *single = make_model("one", "--seed 5");
    const char *sharded = make_model("three", "--seed 5 --shards 3");
    sn_model *a = open_ok(single), *b = open_ok(sharded);
    expect_all_shapes(b);
    cr_expect_not_null(strstr(sn_model_embed(b)->file, "model-00001-of-00003.safetensors"));
    cr_expect_not_null(strstr(sn_model_lm_head(b)->file, "model-00003-of-00003.safetensors"));
    int files_seen[3] = {0};
    const sn_model_config *c = sn_model_config_of(b);
    for (int32_t l = 0; l < c->n_layers; l++) {
        const sn_tensor *w[9], *wa[9];
        layer_tensors(sn_model_layer(b, l), w);
        layer_tensors(sn_model_layer(a, l), wa);
        for (size_t s = 0; s < 9; s++) {
            for (int f = 0; f < 3; f++) {
                char shard[64];
                snprintf(shard, sizeof shard, "model-%05d-of-00003.safetensors", f + 1);
                files_seen[f] |= strstr(w[s]->file, shard) != NULL;
            }
            cr_expect_eq(w[s]->nbytes, wa[s]->nbytes);
            cr_expect_eq(memcmp(w[s]->data, wa[s]->data, wa[s]->nbytes), 0, "%s differs from the single file's",
                         w[s]->name);
        }
    }
    for (int f = 0; f < 3; f++)
        cr_expect(files_seen[f], "no layer tensor came from shard %d", f + 1);
    expect_numpy_values(sharded, "model-00003-of-00003.safetensors", sn_model_lm_head(b));
    sn_model_close(a);
    sn_model_close(b);

    /* next to a model.safetensors, an index is not read (transformers' order) */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cp %s/model.safetensors %s/ && echo '{' > %s/model.safetensors.index.json", single,
             sharded, sharded);
    cr_assert_eq(system(cmd), 0);
    b = open_ok(sharded);
    cr_expect_not_null(strstr(sn_model_embed(b)->file, "/model.safetensors"));
    sn_model_close(b);
}

Test(model_loader, sensorium_layout_loads_a_single_file_or_shards)
{
    const char *args[] = {"--layout sensorium --seed 7", "--layout sensorium --seed 7 --shards 2 --dtype bf16"};
    for (int i = 0; i < 2; i++) {
        char name[16];
        snprintf(name, sizeof name, "s%d", i);
        const char *model = make_model(name, args[i]);
        sn_model *m = open_ok(model);
        const sn_model_config *c = sn_model_config_of(m);
        cr_expect_eq(c->vocab_size, 300);
        cr_expect_eq(c->n_layers, 2);
        expect_all_shapes(m);
        cr_expect_eq(sn_model_embed(m)->dtype, i ? SN_DTYPE_BF16 : SN_DTYPE_F32);
        expect_numpy_values(model, i ? "model-00001-of-00002.safetensors" : "model.safetensors", sn_model_embed(m));
        sn_model_close(m);
    }
}

Test(model_loader, tied_head_is_the_embedding_and_untied_needs_lm_head)
{
    sn_set_log_handler(log_to_buffer, NULL);
    const char *tied = make_model("tied", "--tie --seed 9");
    sn_model *m = open_ok(tied);
    cr_expect_eq(sn_model_config_of(m)->tie_embeddings, 1);
    cr_expect_eq(sn_model_lm_head(m), sn_model_embed(m));
    expect_all_shapes(m);
    sn_model_close(m);

    /* a tied checkpoint that also stores lm_head: the embedding is used, nothing logged */
    const char *both = make_model("both", "--seed 9");
    py(both, "c = load_json('config.json'); c['tie_word_embeddings'] = True; save_json('config.json', c)");
    m = open_ok(both);
    cr_expect_eq(sn_model_lm_head(m), sn_model_embed(m));
    cr_expect_eq(n_logged, 0, "logged: %s", logged);
    sn_model_close(m);

    const char *untied = make_model("untied", "--seed 9");
    m = open_ok(untied);
    cr_expect_neq(sn_model_lm_head(m), sn_model_embed(m));
    cr_expect_str_eq(sn_model_lm_head(m)->name, "lm_head.weight");
    sn_model_close(m);
    py(untied, "h, d = read('model.safetensors'); del h['lm_head.weight']; write('model.safetensors', h, d)");
    expect_error(untied, SN_ERR_FORMAT, "model.safetensors: missing tensor 'lm_head.weight'",
                 "tie_word_embeddings is false", NULL);
    sn_set_log_handler(NULL, NULL);
}

Test(model_loader, gqa_ratios_and_odd_sizes)
{
    const struct {
        const char *args;
        int32_t heads, kv, head_dim, hidden;
    } cases[] = {
        {"--heads 4 --kv-heads 4 --seed 11", 4, 4, 16, 64},                  /* ratio 1 */
        {"--heads 4 --kv-heads 2 --seed 12", 4, 2, 16, 64},                  /* ratio 2 */
        {"--heads 8 --kv-heads 2 --head-dim 8 --seed 13", 8, 2, 8, 64},      /* ratio 4 */
        {"--vocab 277 --hidden 36 --intermediate 53 --heads 3 --kv-heads 1 --head-dim 10 --layers 3 --seed 14", 3,
         1, 10, 36}, /* odd everything, heads*head_dim != hidden */
        {"--vocab 1 --hidden 2 --intermediate 1 --heads 1 --kv-heads 1 --head-dim 2 --layers 1 --seed 15 --dtype f16",
         1, 1, 2, 2}, /* sizes of 1 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char name[16];
        snprintf(name, sizeof name, "g%zu", i);
        const char *model = make_model(name, cases[i].args);
        sn_model *m = open_ok(model);
        const sn_model_config *c = sn_model_config_of(m);
        cr_expect_eq(c->n_heads, cases[i].heads, "%s", cases[i].args);
        cr_expect_eq(c->n_kv_heads, cases[i].kv, "%s", cases[i].args);
        cr_expect_eq(c->head_dim, cases[i].head_dim, "%s", cases[i].args);
        cr_expect_eq(c->hidden, cases[i].hidden, "%s", cases[i].args);
        expect_all_shapes(m);
        expect_numpy_values(model, "model.safetensors", sn_model_layer(m, c->n_layers - 1)->wo);
        sn_model_close(m);
    }
}

Test(model_loader, llama3_rope_scaling_is_read)
{
    const char *model = make_model("l3", "--llama3-rope --rope-theta 500000 --seed 17");
    sn_model *m = open_ok(model);
    const sn_model_config *c = sn_model_config_of(m);
    cr_expect_eq(c->rope_llama3, 1);
    cr_expect_float_eq(c->rope_theta, 500000.0f, 1e-2f);
    cr_expect_float_eq(c->rope_factor, 8.0f, 1e-6f);
    cr_expect_float_eq(c->rope_low_freq_factor, 1.0f, 1e-6f);
    cr_expect_float_eq(c->rope_high_freq_factor, 4.0f, 1e-6f);
    cr_expect_eq(c->rope_original_max_positions, 64);
    sn_model_close(m);
}

Test(model_loader, unused_tensors_are_one_log_line)
{
    sn_set_log_handler(log_to_buffer, NULL);
    const char *model = make_model("extra", "--seed 19");
    py(model, "h, d = read('model.safetensors')\n"
              "for name in ['model.layers.0.self_attn.rotary_emb.inv_freq', 'model.layers.1.self_attn.rotary_emb.inv_freq']:\n"
              "    h[name] = {'dtype': 'F32', 'shape': [8], 'data_offsets': [len(d), len(d) + 32]}\n"
              "    d += np.arange(8, dtype='<f4').tobytes()\n"
              "write('model.safetensors', h, d)");
    sn_model *m = open_ok(model);
    expect_all_shapes(m);
    cr_expect_eq(n_logged, 1, "logged: %s", logged);
    cr_expect_not_null(strstr(logged, "2 tensors the model does not use"), "%s", logged);
    cr_expect_not_null(strstr(logged, "rotary_emb.inv_freq"), "%s", logged);
    sn_model_close(m);
    sn_set_log_handler(NULL, NULL);
}

/* A header whose length is not a multiple of the element size leaves tensors misaligned in
 * the mapping; backends read F32 weights in place, so they must still come out aligned. */
Test(model_loader, misaligned_tensors_come_out_aligned)
{
    const char *aligned = make_model("aligned", "--seed 21");
    const char *odd = make_model("odd", "--seed 21");
    py(odd, "h, d = read('model.safetensors'); t = json.dumps(h).encode()\n"
            "t += b' ' * ((1 - len(t)) % 4)\n" /* 8 + len(t) = 1 mod 4 */
            "open(path('model.safetensors'), 'wb').write(len(t).to_bytes(8, 'little') + t + d)");
    sn_model *a = open_ok(aligned), *m = open_ok(odd);
    expect_all_shapes(m);
    cr_expect_eq(memcmp(sn_model_embed(m)->data, sn_model_embed(a)->data, sn_model_embed(a)->nbytes), 0);
    cr_expect_eq(memcmp(sn_model_layer(m, 1)->w_down->data, sn_model_layer(a, 1)->w_down->data,
                        sn_model_layer(a, 1)->w_down->nbytes),
                 0);
    sn_model_close(m);
    sn_model_close(a);
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration                                                                            */
/* ---------------------------------------------------------------------------------------- */

static void parse(const char *text, sn_status want, sn_model_config *c, const char *needle)
{
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);
    cr_assert_not_null(o, "%s: %s", text, jerr.text);
    sn_status st = sn_model_config_parse(o, "config.json", c);
    json_decref(o);
    cr_expect_eq(st, want, "%s: status '%s', want '%s' (%s)", text, sn_status_str(st), sn_status_str(want),
                 sn_errmsg());
    if (needle && st != SN_OK) {
        cr_expect_not_null(strstr(sn_errmsg(), needle), "%s: message lacks \"%s\": %s", text, needle, sn_errmsg());
        cr_expect_eq(strncmp(sn_errmsg(), "config.json: ", 13), 0, "%s", sn_errmsg());
    }
}

#define BASE "\"vocab_size\": 32, \"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 2, "

Test(model_loader, configuration_defaults_follow_transformers)
{
    sn_model_config c;
    parse("{" BASE "\"num_attention_heads\": 4}", SN_OK, &c, NULL);
    cr_expect_eq(c.n_kv_heads, 4);
    cr_expect_eq(c.head_dim, 16);
    cr_expect_eq(c.max_positions, 2048);
    cr_expect_float_eq(c.rms_eps, 1e-6f, 1e-12f);
    cr_expect_float_eq(c.rope_theta, 10000.0f, 1e-3f);
    cr_expect_eq(c.tie_embeddings, 0);
    cr_expect_eq(c.rope_llama3, 0);

    /* nulls are defaults; rope_scaling of type default is no scaling */
    parse("{" BASE "\"num_attention_heads\": 4, \"num_key_value_heads\": null, \"head_dim\": null, "
          "\"rope_scaling\": {\"rope_type\": \"default\"}, \"model_type\": \"llama\", \"hidden_act\": \"silu\", "
          "\"attention_bias\": false}",
          SN_OK, &c, NULL);
    cr_expect_eq(c.n_kv_heads, 4);
    cr_expect_eq(c.rope_llama3, 0);

    /* transformers 5 writes rope_parameters, rope_theta inside; the original context
     * defaults to max_position_embeddings */
    parse("{" BASE "\"num_attention_heads\": 4, \"max_position_embeddings\": 4096, \"rope_parameters\": "
          "{\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, \"factor\": 32.0, \"low_freq_factor\": 1.0, "
          "\"high_freq_factor\": 4.0}}",
          SN_OK, &c, NULL);
    cr_expect_eq(c.rope_llama3, 1);
    cr_expect_float_eq(c.rope_theta, 500000.0f, 1e-2f);
    cr_expect_float_eq(c.rope_factor, 32.0f, 1e-6f);
    cr_expect_eq(c.rope_original_max_positions, 4096);

    /* head_dim given explicitly need not divide hidden_size */
    parse("{\"vocab_size\": 5, \"hidden_size\": 36, \"intermediate_size\": 7, \"num_hidden_layers\": 1, "
          "\"num_attention_heads\": 5, \"num_key_value_heads\": 1, \"head_dim\": 10}",
          SN_OK, &c, NULL);
    cr_expect_eq(c.head_dim, 10);
    cr_expect_eq(c.n_kv_heads, 1);
}

Test(model_loader, configuration_errors_name_the_key)
{
    const struct {
        const char *json;
        sn_status want;
        const char *needle;
    } cases[] = {
        {"{\"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
         SN_ERR_CONFIG, "missing 'vocab_size'"},
        {"{\"vocab_size\": 32, \"hidden_size\": \"64\", \"intermediate_size\": 96, \"num_hidden_layers\": 2, "
         "\"num_attention_heads\": 4}",
         SN_ERR_CONFIG, "'hidden_size' must be a positive integer, found \"64\""},
        {"{\"vocab_size\": 32, \"hidden_size\": 64, \"intermediate_size\": -96, \"num_hidden_layers\": 2, "
         "\"num_attention_heads\": 4}",
         SN_ERR_CONFIG, "'intermediate_size' must be a positive integer, found -96"},
        {"{" BASE "\"num_attention_heads\": 4.5}", SN_ERR_CONFIG, "'num_attention_heads' must be a positive integer"},
        {"{" BASE "\"num_attention_heads\": 4, \"num_key_value_heads\": 3}", SN_ERR_CONFIG,
         "num_attention_heads 4 is not a multiple of num_key_value_heads 3"},
        {"{" BASE "\"num_attention_heads\": 4, \"num_key_value_heads\": 8}", SN_ERR_CONFIG,
         "num_attention_heads 4 is not a multiple of num_key_value_heads 8"},
        {"{\"vocab_size\": 32, \"hidden_size\": 65, \"intermediate_size\": 96, \"num_hidden_layers\": 2, "
         "\"num_attention_heads\": 4}",
         SN_ERR_CONFIG, "hidden_size 65 is not a multiple of num_attention_heads 4 (give head_dim)"},
        {"{" BASE "\"num_attention_heads\": 4, \"head_dim\": 15}", SN_ERR_CONFIG, "head_dim 15 is odd"},
        {"{" BASE "\"num_attention_heads\": 4, \"rms_norm_eps\": -1e-5}", SN_ERR_CONFIG,
         "'rms_norm_eps' must be a positive number"},
        {"{" BASE "\"num_attention_heads\": 4, \"rope_theta\": 0}", SN_ERR_CONFIG,
         "'rope_theta' must be a positive number, found 0"},
        {"{" BASE "\"num_attention_heads\": 4, \"rope_theta\": 1e39}", SN_ERR_CONFIG,
         "'rope_theta' must be a positive number, found 1e39"},
        {"{" BASE "\"num_attention_heads\": 4, \"tie_word_embeddings\": \"yes\"}", SN_ERR_CONFIG,
         "'tie_word_embeddings' must be true or false"},
        {"{" BASE "\"num_attention_heads\": 4, \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}",
         SN_ERR_UNSUPPORTED, "rope_scaling type 'yarn' is not supported"},
        {"{" BASE "\"num_attention_heads\": 4, \"rope_scaling\": {\"rope_type\": \"llama3\", \"low_freq_factor\": 1, "
         "\"high_freq_factor\": 4}}",
         SN_ERR_CONFIG, "missing 'rope_scaling.factor'"},
        {"{" BASE "\"num_attention_heads\": 4, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, "
         "\"low_freq_factor\": 4, \"high_freq_factor\": 1}}",
         SN_ERR_CONFIG, "high_freq_factor (1) must exceed low_freq_factor (4)"},
        {"{" BASE "\"num_attention_heads\": 4, \"rope_scaling\": 3}", SN_ERR_CONFIG,
         "'rope_scaling' must be an object or null"},
        {"{" BASE "\"num_attention_heads\": 4, \"model_type\": \"qwen2\"}", SN_ERR_UNSUPPORTED,
         "model_type 'qwen2' is not one Sensorium runs"},
        {"{" BASE "\"num_attention_heads\": 4, \"model_type\": \"mistral\", \"sliding_window\": 4096}",
         SN_ERR_UNSUPPORTED, "sliding window"},
        {"{" BASE "\"num_attention_heads\": 4, \"attention_bias\": true}", SN_ERR_UNSUPPORTED, "attention_bias"},
        {"{" BASE "\"num_attention_heads\": 4, \"hidden_act\": \"gelu\"}", SN_ERR_UNSUPPORTED, "hidden_act"},
        {"[1, 2]", SN_ERR_CONFIG, "the architecture must be a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        sn_model_config c;
        parse(cases[i].json, cases[i].want, &c, cases[i].needle);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Conversions                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Every one of the 65536 halves, against numpy's float16 -> float32 (bit for bit, so signed
 * zeros, subnormals, infinities and nan payloads included). */
Test(model_loader, every_half_converts_exactly)
{
    char code[512], out[128];
    snprintf(out, sizeof out, "%s/halves.f32", dir);
    snprintf(code, sizeof code, "np.arange(65536, dtype=np.uint32).astype('<u2').view('<f2').astype('<f4').tofile('%s')",
             out);
    py(dir, code);
    FILE *f = fopen(out, "rb");
    cr_assert_not_null(f);
    static float want[65536], got[65536];
    static uint16_t h[65536];
    cr_assert_eq(fread(want, 4, 65536, f), 65536);
    fclose(f);
    for (uint32_t i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    sn_convert_to_f32(SN_DTYPE_F16, h, got, 65536);
    size_t bad = 0;
    for (uint32_t i = 0; i < 65536; i++)
        if (memcmp(&got[i], &want[i], 4) != 0 && bad++ < 5)
            cr_log_error("half 0x%04x: got %a, numpy %a", i, got[i], want[i]);
    cr_expect_eq(bad, 0, "%zu of 65536 halves differ from numpy", bad);
    /* spot checks that do not depend on numpy */
    const uint16_t hs[] = {0x3C00, 0xC100, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x8000};
    const float hf[] = {1.0f, -2.5f, 0x1p-24f, 0x3FFp-24f, 0x1p-14f, 65504.0f, INFINITY, -INFINITY, -0.0f};
    float o[9];
    sn_convert_to_f32(SN_DTYPE_F16, hs, o, 9);
    for (int i = 0; i < 9; i++)
        cr_expect(o[i] == hf[i] && signbit(o[i]) == signbit(hf[i]), "half 0x%04x: %a, want %a", hs[i], o[i], hf[i]);
    uint16_t nan16 = 0x7E00;
    sn_convert_to_f32(SN_DTYPE_F16, &nan16, o, 1);
    cr_expect(isnan(o[0]));
}

Test(model_loader, bfloat16_and_float32_convert_exactly)
{
    /* 1, -2.5, 3.140625, the smallest subnormal, the largest finite, inf, -0, nan */
    const uint16_t b[] = {0x3F80, 0xC020, 0x4049, 0x0001, 0x7F7F, 0x7F80, 0x8000, 0x7FC0};
    const float bf[] = {1.0f, -2.5f, 3.140625f, 0x1p-133f, 0x1.FEp127f, INFINITY, -0.0f, NAN};
    float o[8];
    sn_convert_to_f32(SN_DTYPE_BF16, b, o, 8);
    for (int i = 0; i < 7; i++)
        cr_expect(o[i] == bf[i] && signbit(o[i]) == signbit(bf[i]), "bf16 0x%04x: %a, want %a", b[i], o[i], bf[i]);
    cr_expect(isnan(o[7]));
    /* sources need no alignment */
    unsigned char raw[9] = {0, 0x80, 0x3F, 0x20, 0xC0, 0, 0, 0, 0};
    sn_convert_to_f32(SN_DTYPE_BF16, raw + 1, o, 2);
    cr_expect(o[0] == 1.0f && o[1] == -2.5f);
    const float f[] = {1.5f, -0.0f, 0x1p-149f};
    sn_convert_to_f32(SN_DTYPE_F32, f, o, 3);
    cr_expect_eq(memcmp(o, f, sizeof f), 0);
    cr_expect_eq(sn_dtype_size(SN_DTYPE_F32), 4);
    cr_expect_eq(sn_dtype_size(SN_DTYPE_F16), 2);
    cr_expect_eq(sn_dtype_size(SN_DTYPE_BF16), 2);
    cr_expect_str_eq(sn_dtype_name(SN_DTYPE_F32), "F32");
    cr_expect_str_eq(sn_dtype_name(SN_DTYPE_F16), "F16");
    cr_expect_str_eq(sn_dtype_name(SN_DTYPE_BF16), "BF16");
}

/* ---------------------------------------------------------------------------------------- */
/* Broken models                                                                            */
/* ---------------------------------------------------------------------------------------- */

Test(model_loader, truncated_file_names_the_tensor_cut_off)
{
    const char *model = make_model("cut", "--seed 23");
    long size = file_size(model, "model.safetensors");
    py(model, "f = path('model.safetensors'); os.truncate(f, os.path.getsize(f) - 1000)");
    char want[160];
    snprintf(want, sizeof want, "tensor 'lm_head.weight' ends at byte %ld, past the file's %ld bytes", size,
             size - 1000);
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: ", want, "(truncated download?)");
}

Test(model_loader, header_length_past_the_end_is_a_truncated_file)
{
    const char *model = make_model("short", "--seed 25");
    py(model, "os.truncate(path('model.safetensors'), 100)");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: truncated file: the header length says",
                 "only 92 follow it", NULL);
    py(model, "os.truncate(path('model.safetensors'), 5)");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: truncated file: 5 bytes", NULL, NULL);
    py(model, "os.truncate(path('model.safetensors'), 0)");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: truncated file: 0 bytes", NULL, NULL);
    py(model, "open(path('model.safetensors'), 'wb').write((2**64 - 1).to_bytes(8, 'little') + b'{}')");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: truncated file: the header length says", NULL, NULL);
}

Test(model_loader, malformed_header_json_gives_line_and_column)
{
    const char *model = make_model("badjson", "--seed 27");
    /* '{"__metadata__"...' with its first quote replaced */
    py(model, "f = open(path('model.safetensors'), 'r+b'); f.seek(9); f.write(b'@'); f.close()");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: malformed header JSON at line 1 column", NULL, NULL);
    /* an indented header broken on its third line */
    model = make_model("badjson3", "--seed 27");
    py(model, "h, d = read('model.safetensors'); write('model.safetensors', h, d, indent=1)\n"
              "b = bytearray(open(path('model.safetensors'), 'rb').read())\n"
              "lines = b[8:].split(b'\\n'); at = 8 + len(lines[0]) + len(lines[1]) + 2 + 2\n"
              "b[at] = ord('!'); open(path('model.safetensors'), 'wb').write(b)");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: malformed header JSON at line 3 column 3", NULL, NULL);
    /* valid JSON but not an object */
    py(model, "write('model.safetensors', [1, 2], b'')");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: the header is not a JSON object", NULL, NULL);
    /* duplicate tensor names */
    py(model, "t = b'{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
              "\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}'\n"
              "open(path('model.safetensors'), 'wb').write(len(t).to_bytes(8, 'little') + t + bytes(4))");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: malformed header JSON", "duplicate", NULL);
}

Test(model_loader, tensor_bytes_outside_the_file)
{
    const char *model = make_model("outside", "--seed 29");
    py(model, "h, d = read('model.safetensors')\n"
              "h['model.norm.weight']['data_offsets'] = [len(d) - 128, len(d) + 128]\n"
              "write('model.safetensors', h, d)");
    long size = file_size(model, "model.safetensors");
    char want[160];
    snprintf(want, sizeof want, "tensor 'model.norm.weight' ends at byte %ld, past the file's %ld bytes", size + 128,
             size);
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: ", want, "(truncated download?)");
}

Test(model_loader, header_fields_are_checked)
{
    const char *model = make_model("fields", "--seed 31");
    const struct {
        const char *change;
        sn_status want;
        const char *needle;
    } cases[] = {
        {"e['data_offsets'] = [e['data_offsets'][0], e['data_offsets'][1] - 4]", SN_ERR_FORMAT,
         "tensor 'model.norm.weight' has data_offsets"},
        {"e['shape'] = [65]", SN_ERR_FORMAT, "shape (65) in F32 needs 260 bytes"},
        {"e['shape'] = [-64]", SN_ERR_FORMAT, "tensor 'model.norm.weight': shape entry 0 is not a non-negative integer"},
        {"e['shape'] = [1, 1, 1, 1, 64]", SN_ERR_UNSUPPORTED, "tensor 'model.norm.weight' has 5 dimensions"},
        {"e['shape'] = [2**40, 2**40, 2**40]", SN_ERR_FORMAT, "too large"},
        {"e['data_offsets'] = [256, 0]", SN_ERR_FORMAT, "\"data_offsets\" must be [begin, end]"},
        {"e['data_offsets'] = ['0', 256]", SN_ERR_FORMAT, "\"data_offsets\" must be [begin, end]"},
        {"del e['dtype']", SN_ERR_FORMAT, "tensor 'model.norm.weight' has no \"dtype\" string"},
        {"del e['shape']", SN_ERR_FORMAT, "tensor 'model.norm.weight' has no \"shape\" list"},
        {"h['model.norm.weight'] = 7", SN_ERR_FORMAT, "its header entry is not a JSON object"},
    };
    py(model, "import shutil; shutil.copy(path('model.safetensors'), path('good.safetensors'))");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char code[512];
        snprintf(code, sizeof code,
                 "h, d = read('good.safetensors'); e = h['model.norm.weight']\n%s\nwrite('model.safetensors', h, d)",
                 cases[i].change);
        py(model, code);
        expect_error(model, cases[i].want, "model.safetensors: ", cases[i].needle, NULL);
    }
}

Test(model_loader, shape_that_does_not_match_the_configuration)
{
    const char *model = make_model("shape", "--seed 33");
    py(model, "c = load_json('config.json'); c['intermediate_size'] = 128; save_json('config.json', c)");
    expect_error(model, SN_ERR_FORMAT,
                 "model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' has shape (96, 64) but ",
                 "config.json implies (128, 64)", NULL);
    /* same bytes, another shape: a norm vector stored as a matrix */
    model = make_model("shape2", "--seed 33 --layout sensorium");
    py(model, "h, d = read('model.safetensors'); h['model.layers.1.post_attention_layernorm.weight']['shape'] = [8, 8]\n"
              "write('model.safetensors', h, d)");
    expect_error(model, SN_ERR_FORMAT,
                 "model.safetensors: tensor 'model.layers.1.post_attention_layernorm.weight' has shape (8, 8) but ",
                 "sensorium.json implies (64)", NULL);
    /* only the second dimension wrong, or one dimension too many */
    model = make_model("shape4", "--seed 33");
    py(model, "h, d = read('model.safetensors'); e = h['model.embed_tokens.weight']; e['shape'] = [300, 32]\n"
              "e['data_offsets'][1] = e['data_offsets'][0] + 300 * 32 * 4; write('model.safetensors', h, d)");
    expect_error(model, SN_ERR_FORMAT, "tensor 'model.embed_tokens.weight' has shape (300, 32) but ",
                 "implies (300, 64)", NULL);
    py(model, "h, d = read('model.safetensors'); e = h['model.embed_tokens.weight']; e['shape'] = [300, 64, 1]\n"
              "e['data_offsets'][1] = e['data_offsets'][0] + 300 * 64 * 4; write('model.safetensors', h, d)");
    expect_error(model, SN_ERR_FORMAT, "tensor 'model.embed_tokens.weight' has shape (300, 64, 1) but ",
                 "implies (300, 64)", NULL);
    /* the head count decides k_proj's rows */
    model = make_model("shape3", "--seed 33");
    py(model, "c = load_json('config.json'); c['num_key_value_heads'] = 4; save_json('config.json', c)");
    expect_error(model, SN_ERR_FORMAT, "tensor 'model.layers.0.self_attn.k_proj.weight' has shape (32, 64) but ",
                 "implies (64, 64)", NULL);
}

Test(model_loader, missing_tensor)
{
    const char *model = make_model("missing", "--seed 35");
    py(model, "h, d = read('model.safetensors'); del h['model.layers.1.self_attn.k_proj.weight']\n"
              "write('model.safetensors', h, d)");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors: missing tensor 'model.layers.1.self_attn.k_proj.weight'",
                 NULL, NULL);
    /* sharded: absent from the index, or absent from the shard the index names */
    model = make_model("missing_idx", "--seed 35 --shards 3");
    py(model, "i = load_json('model.safetensors.index.json'); del i['weight_map']['model.layers.0.mlp.up_proj.weight']\n"
              "save_json('model.safetensors.index.json', i)");
    expect_error(model, SN_ERR_FORMAT,
                 "model.safetensors.index.json: missing tensor 'model.layers.0.mlp.up_proj.weight' (not in its weight_map)",
                 NULL, NULL);
    model = make_model("missing_shard_entry", "--seed 35 --shards 3");
    py(model, "f = 'model-00002-of-00003.safetensors'; h, d = read(f)\n"
              "del h[sorted(k for k in h if k != '__metadata__')[0]]; write(f, h, d)");
    expect_error(model, SN_ERR_FORMAT, "model-00002-of-00003.safetensors: missing tensor 'model.layers.",
                 "model.safetensors.index.json places it in this shard", NULL);
}

Test(model_loader, unsupported_dtype)
{
    const char *model = make_model("i8", "--seed 37");
    py(model, "h, d = read('model.safetensors'); e = h['model.norm.weight']\n"
              "e['dtype'] = 'I8'; e['data_offsets'][1] = e['data_offsets'][0] + 64\n"
              "write('model.safetensors', h, d)");
    expect_error(model, SN_ERR_UNSUPPORTED,
                 "model.safetensors: tensor 'model.norm.weight' has dtype I8; Sensorium reads F32, F16 and BF16", NULL,
                 NULL);
}

Test(model_loader, missing_or_broken_configuration_files)
{
    const char *model = make_model("noconfig", "--seed 39");
    py(model, "os.remove(path('config.json'))");
    expect_error(model, SN_ERR_NOT_FOUND, "noconfig: neither sensorium.json nor config.json: not a model folder", NULL,
                 NULL);
    model = make_model("nomanifest", "--seed 39 --layout sensorium");
    py(model, "os.remove(path('sensorium.json'))");
    expect_error(model, SN_ERR_NOT_FOUND, "nomanifest: neither sensorium.json nor config.json", NULL, NULL);
    char nowhere[128];
    snprintf(nowhere, sizeof nowhere, "%s/does-not-exist", dir);
    expect_error(nowhere, SN_ERR_NOT_FOUND, "does-not-exist: no such model folder", NULL, NULL);

    model = make_model("noweights", "--seed 39");
    py(model, "os.remove(path('model.safetensors'))");
    expect_error(model, SN_ERR_NOT_FOUND, "config.json but no model.safetensors or model.safetensors.index.json",
                 NULL, NULL);
    model = make_model("badconfig", "--seed 39");
    py(model, "open(path('config.json'), 'w').write('{\"vocab_size\": 300,\\n  \"hidden_size\": }')");
    expect_error(model, SN_ERR_FORMAT, "config.json:2:", "malformed JSON", NULL);
    model = make_model("badvalue", "--seed 39");
    py(model, "c = load_json('config.json'); c['num_key_value_heads'] = 3; save_json('config.json', c)");
    expect_error(model, SN_ERR_CONFIG, "config.json: num_attention_heads 4 is not a multiple of num_key_value_heads 3",
                 NULL, NULL);

    model = make_model("sensweights", "--seed 39 --layout sensorium");
    py(model, "m = load_json('sensorium.json'); m['weights'] = 'elsewhere.safetensors'; save_json('sensorium.json', m)");
    expect_error(model, SN_ERR_NOT_FOUND, "elsewhere.safetensors: cannot open", NULL, NULL);
    py(model, "m = load_json('sensorium.json'); del m['weights']; save_json('sensorium.json', m)");
    expect_error(model, SN_ERR_CONFIG, "sensorium.json: \"weights\" must name", NULL, NULL);
    py(model, "m = load_json('sensorium.json'); m['weights'] = 'model.safetensors'; m['architecture']['hidden_size'] = 0\n"
              "save_json('sensorium.json', m)");
    expect_error(model, SN_ERR_CONFIG, "sensorium.json: 'hidden_size' must be a positive integer, found 0", NULL, NULL);
}

Test(model_loader, shard_named_in_the_index_that_does_not_exist)
{
    const char *model = make_model("noshard", "--seed 41 --shards 3");
    py(model, "os.remove(path('model-00002-of-00003.safetensors'))");
    expect_error(model, SN_ERR_NOT_FOUND, "model-00002-of-00003.safetensors: cannot open",
                 "(a shard named in ", "model.safetensors.index.json)");
    py(model, "i = load_json('model.safetensors.index.json'); del i['weight_map']; save_json('model.safetensors.index.json', i)");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors.index.json: no \"weight_map\" object", NULL, NULL);
    py(model, "open(path('model.safetensors.index.json'), 'w').write('{\"weight_map\": {')");
    expect_error(model, SN_ERR_FORMAT, "model.safetensors.index.json:1:", "malformed JSON", NULL);
}

Test(model_loader, manifest_without_architecture)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cp %s/models/demo/sensorium.json %s/", SN_SOURCE_DIR, dir);
    cr_assert_eq(system(cmd), 0);
    expect_error(dir, SN_ERR_CONFIG, "sensorium.json: no architecture: this manifest describes only a vocabulary layout",
                 NULL, NULL);
}

Test(model_loader, null_arguments_are_refused)
{
    sn_model *m;
    cr_expect_eq(sn_model_open(NULL, &m), SN_ERR_INVALID_ARG);
    cr_expect_eq(sn_model_open(dir, NULL), SN_ERR_INVALID_ARG);
}
